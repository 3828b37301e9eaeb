"""Pictures of a spec's mask: characters for the terminal, a PNG for anything larger."""

from __future__ import annotations

import struct
import zlib
from dataclasses import replace
from pathlib import Path

import torch

from .ir import Spec
from .runtime.sample import Sizes, sample_arguments


def dense_mask(module, spec: Spec, sizes: Sizes, seed: int = 0) -> torch.Tensor:
    """[SQ, SKV] bool: the mask AND the selected blocks for batch 0, head 0, on sample inputs."""
    args = sample_arguments(spec, sizes, torch.float64, seed=seed)
    kwargs = {k: v for k, v in args.items() if k not in ("q", "k", "v")}
    keep = module._token_mask(args["q"], args["k"], **kwargs)
    if spec.selection is not None:
        selection = module.select(args["q"], args["k"], **kwargs)
        keep = keep & module._expand_blocks(
            selection.block_mask, selection.q_block, selection.kv_block, sizes.SQ, sizes.SKV
        )
    return keep[0, 0]


def ascii_mask(mask: torch.Tensor, block: tuple[int, int] | None = None) -> str:
    """One character per pair: '#' kept, '.' masked; block boundaries drawn when given."""
    rows = []
    for i, row in enumerate(mask.tolist()):
        if block and i and i % block[0] == 0:
            rows.append("")
        cells = []
        for j, kept in enumerate(row):
            if block and j and j % block[1] == 0:
                cells.append(" ")
            cells.append("#" if kept else ".")
        rows.append("".join(cells))
    return "\n".join(rows)


def write_png(mask: torch.Tensor, path: str | Path, scale: int = 4) -> None:
    """A grayscale PNG: kept pairs black on white, each pair a scale x scale square."""
    pixels = (~mask).to(torch.uint8) * 255
    pixels = pixels.repeat_interleave(scale, 0).repeat_interleave(scale, 1)
    height, width = pixels.shape
    raw = b"".join(b"\x00" + bytes(row) for row in pixels.tolist())
    png = b"\x89PNG\r\n\x1a\n"
    png += _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    png += _chunk(b"IDAT", zlib.compress(raw, 9))
    png += _chunk(b"IEND", b"")
    Path(path).write_bytes(png)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def tile_report(spec: Spec, sizes: Sizes, block: int, large: int = 4096, large_block: int = 128) -> list[str]:
    """What the tile analysis proves at the drawing's size and at a realistic one, on sample inputs."""
    from .analysis.tiles import classify_tiles

    sel = spec.selection
    if sel is not None and not sel.dynamic:  # a static block rule fixes the tile size
        block = large_block = None
    lines = []
    for size, tile in ((sizes, block), (replace(sizes, B=1, H=4, HKV=1, SQ=large, SKV=large), large_block)):
        bq, bk = (tile, tile) if tile is not None else (sel.q_block.literal, sel.kv_block.literal)
        args = sample_arguments(spec, size, torch.float64)
        tiles = classify_tiles(
            spec, bq, bk, size.symbols(),
            {p.name: args[p.name] for p in spec.runtime_params}, {i.name: args[i.name] for i in spec.inputs},
        )
        d = tiles.density()
        lines.append(
            f"# tiles {bq}x{bk} at SQ={size.SQ}, SKV={size.SKV}: visited {d['visited']:.1%} "
            f"(full {d['full']:.1%}, partial {d['partial']:.1%}); rows never fully masked: "
            f"{'proved' if tiles.rows_never_empty() else 'not proved'}; visited tiles contiguous: "
            f"{'yes' if tiles.contiguous() else 'no'}"
        )
    if spec.inputs:
        lines.append("# (inputs drawn at random: " + ", ".join(i.name for i in spec.inputs) + ")")
    if sel is not None and sel.dynamic:
        lines.append("# (data-dependent block selection is decided at run time, on top of these tiles)")
    return lines


def band_report(spec: Spec, sizes: Sizes) -> list[str]:
    """The mask's closed-form key range per query, and what it proves at these sizes."""
    from .analysis.bands import evaluate_bands, key_bands
    from .printer import expr_text

    bands = key_bands(spec.mask, spec)
    if bands is None:
        return ["# key range per query: no closed form (the tile analysis decides per tile)"]
    text = " or ".join(
        f"[{'0' if b.lo is None else expr_text(b.lo)}, {'SKV - 1' if b.hi is None else expr_text(b.hi)}]" for b in bands
    )
    args = sample_arguments(spec, sizes, torch.float64)
    ranges = evaluate_bands(
        bands, spec, torch.arange(sizes.SQ), sizes,
        {p.name: args[p.name] for p in spec.runtime_params}, {i.name: args[i.name] for i in spec.inputs},
    )
    nonempty = torch.zeros((sizes.B, sizes.H, sizes.SQ), dtype=torch.bool)
    for lo, hi in ranges:
        nonempty |= lo <= hi
    verdict = "proved" if bool(nonempty.all()) else "no: some rows keep no key"
    if spec.selection is not None and spec.selection.dynamic:
        verdict += " (before the data-dependent block selection, which may drop any block)"
    return [f"# keys kept per query (closed form): {text}", f"# every row keeps a key at these sizes: {verdict}"]


def flex_report(spec: Spec) -> list[str]:
    """How the flex target lowers the spec: its BlockMask path and its normalization identity."""
    from .codegen.flex import block_mask_path, flex_block
    from .diagnostics import AttnError
    from .passes.flex import IDENTITIES, flex_identity

    try:
        identity = flex_identity(spec)
    except AttnError as err:
        return [f"# flex target: rejected: {err.message}"]
    path, agreement = block_mask_path(spec)
    bq, bk = flex_block(spec)
    how = {
        "tile analysis": f"built from the tile analysis (block-level arithmetic; {agreement:.1%} of probe tiles exact)",
        "create_block_mask": f"create_block_mask, per pair (the tile analysis classifies only {agreement:.1%} of probe tiles exactly)",
        "no mask": "every block full (no mask)",
    }[path]
    return [f"# flex target: BlockMask {bq}x{bk} {how}", f"# flex target: normalization as {IDENTITIES[identity]}"]


def triton_report(spec: Spec) -> list[str]:
    """How the triton kernel finds its key tiles: closed-form bands, or a block table per call."""
    from .codegen.triton import schedule_bands, selection_tiles
    from .diagnostics import AttnError

    try:
        tiles = selection_tiles(spec)
    except AttnError as err:
        return [f"# triton target: rejected: {err.message}"]
    bands = schedule_bands(spec)
    if bands is not None:
        if not bands:
            return ["# triton target: the mask keeps no pair: the kernel visits no key tile"]
        what = "1 key band" if len(bands) == 1 else f"{len(bands)} key bands"
        return [f"# triton target: key tiles in closed form in the kernel ({what} per row, no table)"]
    source = f"the selection's {tiles[0]}x{tiles[1]} blocks" if tiles else "the tile analysis"
    return [f"# triton target: key tiles from a block table of {source} (built at the call, or once by build_schedule)"]
