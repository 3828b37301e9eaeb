"""The annotated picture of a drawing (`attnspec show --png`): the kept pairs over their tile classes, the
block grid, axes in sequence positions, and a title with the spec, the entry drawn and the sizes.

Each drawn pair is one cell, coloured by the class of the tile that holds it (what the tile analysis
proved: every pair kept, some kept, none kept) and darker when the pair is kept, so a glance shows where
the kernels skip work and where they evaluate the mask per pair. A sampled drawing's cells stand for
pairs q_step x kv_step apart, and the axes count positions, not cells. Drawn with matplotlib (the `plot`
extra); without it `attnspec show` writes the bare picture (show.write_png).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .diagnostics import AttnError
from .runtime.tiles import EMPTY, FULL, PARTIAL
from .show import Drawing, TileAnalysis

UNKNOWN = 3  # cells whose tile class was not computed
# (background, kept pair) per class, RGB 0-255
PALETTE = {
    FULL: ((205, 232, 205), (24, 110, 40)),
    PARTIAL: ((255, 228, 176), (196, 110, 0)),
    EMPTY: ((238, 238, 238), (200, 0, 0)),  # a kept pair in a skipped tile would be an unsound analysis
    UNKNOWN: ((255, 255, 255), (0, 0, 0)),
}
LABELS = {FULL: "full tile (no per-pair mask)", PARTIAL: "partial tile (mask per pair)", EMPTY: "skipped tile"}
MAX_GRID_LINES = 64  # block grid lines per axis; a finer grid is left out (the title says so)
MAX_IMAGE_PX = 1600  # pixels per side of the picture area, where a cell has at least one
MARGINS = (90, 40, 50)  # pixels left, right and bottom (the legend); the top holds the title and kv axis


def cell_classes(drawing: Drawing, analysis: TileAnalysis | None) -> torch.Tensor:
    """int8 [rows, cols]: the tile class of each drawn pair, UNKNOWN without tiles."""
    rows, cols = drawing.mask.shape
    if analysis is None or analysis.tiles is None:
        return torch.full((rows, cols), UNKNOWN, dtype=torch.int8)
    classes = analysis.tiles.classes
    grid = classes[min(drawing.batch, classes.shape[0] - 1), min(drawing.head, classes.shape[1] - 1)]
    q_tile = torch.arange(rows) * drawing.q_step // analysis.q_block
    kv_tile = torch.arange(cols) * drawing.kv_step // analysis.kv_block
    return grid[q_tile][:, kv_tile]


def cell_colours(mask: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """uint8 [rows, cols, 3]: each pair's colour, by its tile class (cell_classes) and whether it is kept."""
    background = torch.tensor([PALETTE[c][0] for c in sorted(PALETTE)], dtype=torch.uint8)
    kept = torch.tensor([PALETTE[c][1] for c in sorted(PALETTE)], dtype=torch.uint8)
    classes = classes.long()
    return torch.where(mask[..., None], kept[classes], background[classes])


def write_figure(drawing: Drawing, analysis: TileAnalysis | None, grid: tuple[int, int], title: str,
                 path: str | Path) -> tuple[int, int]:
    """Write the annotated picture (PNG, or another format by the suffix); returns its width and height
    in pixels."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    rows, cols = drawing.mask.shape
    height, width = rows * drawing.q_step, cols * drawing.kv_step  # in positions
    per_cell = max(1, min(16, MAX_IMAGE_PX // max(rows, cols)))
    image_w, image_h = _image_size(cols * per_cell, rows * per_cell)
    grid_note = _grid_note(grid, width, height)
    title += f"\n({grid_note})" if grid_note else ""
    dpi, (left, right, bottom) = 100, MARGINS
    top = 64 + 15 * (title.count("\n") + 1)  # the title's lines, then the kv axis
    fig_w, fig_h = image_w + left + right, image_h + top + bottom
    fig = Figure(figsize=(fig_w / dpi, fig_h / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((left / fig_w, bottom / fig_h, image_w / fig_w, image_h / fig_h))
    classes = cell_classes(drawing, analysis)
    ax.imshow(cell_colours(drawing.mask, classes).numpy(), extent=(0, width, height, 0), interpolation="nearest",
              aspect="auto")
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(MaxNLocator(integer=True))
    ax.xaxis.tick_top()
    ax.xaxis.set_label_position("top")
    ax.set_xlabel("key position kv")
    ax.set_ylabel("query position q")
    if not grid_note:
        _draw_grid(ax, grid, width, height)
    fig.legend(handles=_legend(classes), loc="lower center", ncol=5, fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10, y=1 - 8 / fig_h, va="top")
    try:
        fig.savefig(path, format=picture_format(path), dpi=dpi)
    except OSError as err:
        raise AttnError(f"cannot write {path}: {err.strerror or err}") from None
    return fig_w, fig_h


def _legend(classes: torch.Tensor) -> list:
    """A patch per tile class drawn, and one for kept pairs in it; one for kept pairs without classes."""
    from matplotlib.patches import Patch

    present = set(classes.unique().tolist())
    handles = []
    for c in (FULL, PARTIAL, EMPTY):
        if c in present:
            handles.append(Patch(facecolor=_rgb(PALETTE[c][0]), edgecolor="0.5", label=LABELS[c]))
            if c != EMPTY:
                handles.append(Patch(facecolor=_rgb(PALETTE[c][1]), edgecolor="0.5", label=f"kept pair ({LABELS[c].split(' (')[0]})"))
    if UNKNOWN in present:
        handles.append(Patch(facecolor="black", edgecolor="0.5", label="kept pair (tiles not analysed)"))
    return handles


def _image_size(width: int, height: int) -> tuple[int, int]:
    """The picture area: the cells at their size, at least 360 pixels on the longer side, and no side
    thinner than 120 pixels (a single query row still shows)."""
    scale = max(1.0, 360 / max(width, height))
    return max(120, round(width * scale)), max(120, round(height * scale))


def _grid_note(grid: tuple[int, int], width: int, height: int) -> str:
    """Why the block grid is left out, or "" when it is drawn."""
    bq, bk = grid
    blocks_q, blocks_kv = -(-height // bq), -(-width // bk)
    if max(blocks_q, blocks_kv) - 1 > MAX_GRID_LINES:
        return f"grid of {bq}x{bk} blocks not drawn: {blocks_q} x {blocks_kv} blocks"
    return ""


def _draw_grid(ax, grid: tuple[int, int], width: int, height: int) -> None:
    bq, bk = grid
    for y in range(bq, height, bq):
        ax.axhline(y, color="0.35", linewidth=0.6)
    for x in range(bk, width, bk):
        ax.axvline(x, color="0.35", linewidth=0.6)


def _rgb(colour: tuple[int, int, int]) -> tuple[float, float, float]:
    return tuple(c / 255 for c in colour)


def plotting() -> bool:
    """Whether matplotlib (the plot extra) is there to draw the annotated picture."""
    import importlib.util

    try:
        return importlib.util.find_spec("matplotlib.backends.backend_agg") is not None
    except (ImportError, ValueError):  # a parent package missing, or set to None in sys.modules
        return False


def picture_format(path: str | Path) -> str:
    """The picture's format from the path's suffix (png without one): what matplotlib writes, or PNG
    alone without it (the bare picture); another suffix is refused before anything is drawn."""
    if plotting():
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        known = FigureCanvasAgg.get_supported_filetypes()
    else:
        known = {"png": "Portable Network Graphics"}
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix and suffix not in known:
        others = [f".{k}" for k in sorted(known) if k not in ("png", "svg", "pdf")]
        raise AttnError(
            f"cannot write {path}: '.{suffix}' is not a picture format attnspec writes"
            + ("" if len(known) > 1 else " without matplotlib"),
            hint="use .png, .svg or .pdf" + (f" (or {', '.join(others)})" if others else "")
            + ("" if len(known) > 1 else "; pip install 'attnspec[plot]' for the others"),
        )
    return suffix or "png"


def title_of(spec_name: str, source_name: str, drawing: Drawing, analysis: TileAnalysis | None) -> str:
    s, kept, total = drawing.sizes, int(drawing.mask.sum()), drawing.mask.numel()
    heads = f" of H={s.H}" + (f" (HKV={s.HKV})" if s.HKV != s.H else "")
    lines = [f"{spec_name} ({source_name}): b={drawing.batch} of B={s.B}, h={drawing.head}{heads}, SQ={s.SQ}, SKV={s.SKV}"]
    sampled = "" if drawing.exact else f", sampled every {drawing.q_step} queries and {drawing.kv_step} keys"
    lines.append(f"{kept} of {total} drawn pairs kept ({100 * kept / max(total, 1):.3g}%){sampled}")
    if analysis is not None and analysis.tiles is not None:
        d = analysis.tiles.density()
        lines.append(f"tiles {analysis.q_block}x{analysis.kv_block}: visited {d['visited']:.1%} "
                     f"(full {d['full']:.1%}, partial {d['partial']:.1%})")
    if drawing.selection_left_out:
        lines.append("(the data-dependent block selection is not drawn at this size)")
    return "\n".join(lines)
