"""Pictures of a spec's mask: characters for the terminal, a PNG for anything larger.

Memory stays bounded whatever the lengths. While SQ x SKV x H is at most DENSE_PAIRS (and each side at
most MAX_SIDE), the picture is the reference module's own dense mask, block selection included. Beyond
that it samples every n-th query and key: the reference code of a spec rewritten to those pairs
(`point_spec`) evaluates them, so the SQ x SKV mask never exists. The reports below that grow with the
lengths have budgets of their own and say so when they skip a check.
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass, field, replace
from functools import reduce
from pathlib import Path

import torch

from .diagnostics import AttnError
from .given import Given, fits, given_sizes, given_values
from .ir import Expr, Spec, const, inline_bindings, substitute, uses, walk
from .runtime import dense as _dense
from .sample import Sizes, evaluate_static, input_shapes, sample_arguments, sample_inputs

MAX_LENGTH = 2**31 - 1  # longest --sq / --skv: indices stay within 32 bits
MAX_SIDE = 2048  # cells per side of a picture; longer axes are sampled
DENSE_PAIRS = 1 << 22  # SQ x SKV x H up to which the reference's dense mask is drawn
MAX_INPUT_ELEMENTS = 1 << 24  # sample inputs (all of them) a drawing may allocate
MAX_TILES = 1 << 20  # tiles (x heads and batches the mask tells apart) the tile analysis classifies for a report
MAX_SUMMARY = 1 << 21  # elements of an input the tile analysis summarizes (O(n log n) tables)
MAX_ROWS = 1 << 23  # B x H x SQ rows the band check evaluates
PNG_SIDE = 4096  # pixels per side of a PNG at most


def gqa_group(spec: Spec) -> int:
    return 1 if spec.gqa_group is None else int(evaluate_static(spec.gqa_group, Sizes()))


def drawing_sizes(spec: Spec, sq: int | None, skv: int | None, batch: int = 0, head: int = 0,
                  given: dict[str, Given] | None = None) -> Sizes:
    """The sizes asked for and those the given inputs fix; otherwise the fewest batches and heads that hold
    (batch, head): whole gqa groups of query heads (one kv head per group)."""
    return given_sizes(spec, given or {}, sq, skv, batch, head, gqa_group(spec))


@dataclass(frozen=True)
class Drawing:
    """The picture of one batch and head: mask[i, j] is the pair (i * q_step, j * kv_step)."""

    mask: torch.Tensor  # bool [rows, cols]
    sizes: Sizes
    args: dict = field(repr=False)  # the sample inputs and runtime params it was drawn with
    q_step: int = 1
    kv_step: int = 1
    selection_left_out: bool = False  # a data-dependent selection the sampled picture cannot apply
    batch: int = 0
    head: int = 0

    @property
    def exact(self) -> bool:
        return self.q_step == self.kv_step == 1

    def describe(self) -> list[str]:
        s, kept = self.sizes, int(self.mask.sum())
        heads = f" (of H={s.H}, HKV={s.HKV}: gqa group {s.H // s.HKV})" if s.H > 1 else ""
        where = f"# mask for b={self.batch}, h={self.head}{heads}, SQ={s.SQ}, SKV={s.SKV}"
        if self.exact and not self.selection_left_out:
            return [f"{where}: {kept} of {self.mask.numel()} pairs kept"]
        rows, cols = self.mask.shape
        lines = [
            f"{where}, sampled: queries {_steps(self.q_step)}, keys {_steps(self.kv_step)} ({rows} x {cols} pairs): "
            f"{kept} of {self.mask.numel()} kept (about {100 * kept / self.mask.numel():.3g}%)"
        ]
        if self.selection_left_out:
            lines.append(
                "# (the data-dependent block selection is not drawn: it needs the dense mask, drawn only up to "
                f"SQ x SKV x H = {DENSE_PAIRS} and {MAX_SIDE} per side)"
            )
        return lines


def _steps(step: int) -> str:
    return f"0, {step}, {2 * step}, ..."


def draw_mask(spec: Spec, sizes: Sizes, source_name: str, seed: int = 0, batch: int = 0, head: int = 0,
              given: dict[str, Given] | None = None) -> Drawing:
    """The picture of a lowered spec at these sizes for one batch and (query) head, in bounded memory (see
    the module docstring), on sample inputs and the values given in their place."""
    from .api import build_module

    check_inputs(spec, sizes)
    values = given_values(spec, sizes, given or {}, input_shapes(spec, sizes))
    q_step, kv_step = -(-sizes.SQ // MAX_SIDE), -(-sizes.SKV // MAX_SIDE)
    if q_step == kv_step == 1 and sizes.SQ * sizes.SKV * sizes.H * sizes.B <= DENSE_PAIRS:
        args = {**sample_arguments(spec, sizes, torch.float64, seed=seed), **values}
        mask = dense_mask(build_module(spec, "reference", source_name), spec, sizes, args, batch, head)
        return Drawing(mask, sizes, args, batch=batch, head=head)
    args = {**sample_inputs(spec, sizes, seed=seed), **values}
    dynamic = spec.selection is not None and spec.selection.dynamic
    mask = sampled_mask(spec, sizes, args, q_step, kv_step, source_name, batch, head)
    return Drawing(mask, sizes, args, q_step, kv_step, selection_left_out=dynamic, batch=batch, head=head)


def check_inputs(spec: Spec, sizes: Sizes) -> None:
    """The sample inputs must fit in memory: an input that grows with the lengths stops the drawing."""
    shapes = input_shapes(spec, sizes)
    total = sum(math.prod(shape) for shape in shapes.values())
    if total > MAX_INPUT_ELEMENTS:
        largest = max(shapes, key=lambda name: math.prod(shapes[name]))
        raise AttnError(
            f"the inputs of '{spec.name}' hold {total} elements at SQ={sizes.SQ}, SKV={sizes.SKV} "
            f"(input '{largest}': {list(shapes[largest])}): too many to draw, at most {MAX_INPUT_ELEMENTS}",
            spec.input(largest).span,
            hint="draw at a smaller --sq / --skv" if any(uses(d, "shape") for d in spec.input(largest).shape) else None,
        )


def _extras(args: dict) -> dict:
    return {k: v for k, v in args.items() if k not in ("q", "k", "v")}


def dense_mask(module, spec: Spec, sizes: Sizes, args: dict, batch: int = 0, head: int = 0) -> torch.Tensor:
    """[SQ, SKV] bool: the mask AND the selected blocks for one batch and head, on sample arguments."""
    kwargs = _extras(args)
    keep = module._token_mask(args["q"], args["k"], **kwargs)
    if spec.selection is not None:
        selection = module.select(args["q"], args["k"], **kwargs)
        keep = keep & _dense.expand_blocks(
            selection.block_mask, selection.q_block, selection.kv_block, sizes.SQ, sizes.SKV
        )
    return keep[min(batch, keep.shape[0] - 1), min(head, keep.shape[1] - 1)]  # a mask that reads no b (h) broadcasts


def sampled_mask(spec: Spec, sizes: Sizes, args: dict, q_step: int, kv_step: int, source_name: str,
                 batch: int = 0, head: int = 0) -> torch.Tensor:
    """[ceil(SQ / q_step), ceil(SKV / kv_step)] bool: the mask (and a static block rule) of one batch and
    head at the pairs (i * q_step, j * kv_step), computed by the reference code of `point_spec`."""
    from .api import build_module

    module = build_module(point_spec(spec, sizes, q_step, kv_step, batch, head), "reference", source_name)
    rows, cols = -(-sizes.SQ // q_step), -(-sizes.SKV // kv_step)
    q = torch.zeros((1, 1, rows, sizes.D), dtype=torch.float64)  # a mask never reads q or k
    k = torch.zeros((1, 1, cols, sizes.D), dtype=torch.float64)
    return module._token_mask(q, k, **_extras(args))[0, 0]


def point_spec(spec: Spec, sizes: Sizes, q_step: int, kv_step: int, batch: int = 0, head: int = 0) -> Spec:
    """A spec whose mask at (0, 0, i, j) is the mask of the lowered `spec`, AND its static block rule,
    at (b=batch, h=head, q=i * q_step, kv=j * kv_step) of these sizes. Shape symbols become these sizes, so
    inputs keep their full shapes while q and k hold one row per sample."""
    from .passes.fold import fold_expr
    from .verify import verify

    q = _scaled("q", q_step)
    kv = _scaled("kv", kv_step)
    points = {("index_var", "b"): const(batch), ("index_var", "h"): const(head), ("index_var", "q"): q, ("index_var", "kv"): kv}
    points.update({("shape", name): const(value) for name, value in sizes.symbols().items()})
    sel = spec.selection
    rule = sel is not None and not sel.dynamic
    if rule:
        points[("index_var", "q_block")] = Expr("floordiv", (q, sel.q_block))
        points[("index_var", "kv_block")] = Expr("floordiv", (kv, sel.kv_block))

    def at(e: Expr) -> Expr:
        return fold_expr(substitute(inline_bindings(e, spec), lambda n: points.get((n.op, n.value))))

    parts = [at(e) for e in (spec.mask, sel.keep if rule else None) if e is not None]
    mask = reduce(lambda a, b: Expr("and", (a, b)), parts) if parts else None
    inputs = tuple(replace(i, shape=tuple(at(d) for d in i.shape)) for i in spec.arguments)
    return verify(Spec(spec.name, params=spec.params, inputs=inputs, mask=mask, span=spec.span))


def _scaled(name: str, step: int) -> Expr:
    index = Expr("index_var", value=name)
    return index if step == 1 else Expr("mul", (index, const(step)))


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


def png_scale(mask: torch.Tensor) -> int:
    """Pixels per pair: 4, fewer for a picture wider than PNG_SIDE / 4."""
    return max(1, min(4, PNG_SIDE // max(mask.shape)))


def write_png(mask: torch.Tensor, path: str | Path, scale: int = 4) -> None:
    """A grayscale PNG: kept pairs black on white, each pair a scale x scale square."""
    pixels = (~mask).to(torch.uint8) * 255
    pixels = pixels.repeat_interleave(scale, 0).repeat_interleave(scale, 1)
    height, width = pixels.shape
    rows = torch.cat([torch.zeros((height, 1), dtype=torch.uint8), pixels], 1)  # filter type 0 per row
    raw = rows.contiguous().numpy().tobytes()
    png = b"\x89PNG\r\n\x1a\n"
    png += _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    png += _chunk(b"IDAT", zlib.compress(raw, 9))
    png += _chunk(b"IEND", b"")
    Path(path).write_bytes(png)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


@dataclass(frozen=True)
class TileAnalysis:
    """The tile classes at one size, or why they were not computed."""

    size: Sizes
    q_block: int
    kv_block: int
    tiles: object = None  # analysis.tiles.Tiles, None when skipped
    coarser: str = ""  # why the tiles are coarser than asked
    skipped: str = ""  # why there are no tiles

    def line(self) -> str:
        head = f"# tiles {self.q_block}x{self.kv_block} at SQ={self.size.SQ}, SKV={self.size.SKV}"
        if self.tiles is None:
            return f"{head}: not analysed ({self.skipped})"
        d = self.tiles.density()
        return (
            f"{head}{self.coarser}: visited {d['visited']:.1%} (full {d['full']:.1%}, partial {d['partial']:.1%}); "
            f"rows never fully masked: {'proved' if self.tiles.rows_never_empty() else 'not proved'}; "
            f"visited tiles contiguous: {'yes' if self.tiles.contiguous() else 'no'}"
        )


def analyse_tiles(spec: Spec, size: Sizes, tile: int, args: dict) -> TileAnalysis:
    """The tile analysis at one size and arguments; tiles coarser than asked when there would be more than
    MAX_TILES (x heads), and none when an input the mask reads is too large to summarize."""
    from .analysis.tiles import classify_tiles

    sel = spec.selection
    fixed = sel is not None and not sel.dynamic  # a static block rule fixes the tile size
    bq, bk = (sel.q_block.literal, sel.kv_block.literal) if fixed else (tile, tile)
    coarser = ""
    if bq < 1:
        raise AttnError("block sizes must be positive")
    while not fixed and _tile_count(spec, size, bq, bk) > MAX_TILES and bq < max(size.SQ, size.SKV):
        bq, bk = 2 * bq, 2 * bk
        coarser = f" (tiles of {tile} would be more than {MAX_TILES})"
    if _tile_count(spec, size, bq, bk) > MAX_TILES:
        return TileAnalysis(size, bq, bk, skipped=f"{_tile_count(spec, size, bq, bk)} tiles, more than {MAX_TILES}")
    summarized = [i for i in spec.arguments if _reads(spec, i.name) and args[i.name].numel() > MAX_SUMMARY]
    if summarized:
        name = summarized[0].name
        return TileAnalysis(size, bq, bk, skipped=f"input '{name}' has {args[name].numel()} elements, more than {MAX_SUMMARY}")
    tiles = classify_tiles(
        spec, bq, bk, size.symbols(),
        {p.name: args[p.name] for p in spec.runtime_params}, {i.name: args[i.name] for i in spec.arguments},
    )
    return TileAnalysis(size, bq, bk, tiles, coarser)


def tile_report(spec: Spec, drawn: TileAnalysis, large: int = 4096, large_block: int = 128,
                given: dict[str, Given] | None = None) -> list[str]:
    """What the tile analysis proves at the drawing's size (on its arguments) and at a realistic one (on
    sample inputs, and the given values that still fit there)."""
    sel, given, sizes = spec.selection, given or {}, drawn.size
    big = replace(sizes, B=1, H=sizes.H if spec.gqa_group is not None else 4, HKV=1, SQ=large, SKV=large)
    lines = [drawn.line()]
    try:
        check_inputs(spec, big)
        shapes = input_shapes(spec, big)
        kept = {n: g for n, g in given.items() if n not in shapes or fits(g, shapes[n])}
        big_args = {**sample_inputs(spec, big), **given_values(spec, big, kept, shapes)}
        lines.append(analyse_tiles(spec, big, large_block, big_args).line())
        if len(kept) < len(given):
            lines.append("# (at that size, drawn at random in place of the values given: "
                         + ", ".join(n for n in given if n not in kept) + ")")
    except AttnError as err:  # the inputs do not fit at the realistic size
        lines.append(f"# tiles at SQ={large}, SKV={large}: not analysed ({err.message})")
    drawn_names = [i.name for i in spec.arguments if i.name not in given] + [
        p.name for p in spec.runtime_params if p.name not in given and p.default is None
    ]
    if drawn_names:
        lines.append("# (inputs drawn at random: " + ", ".join(drawn_names) + (f"; given: {', '.join(given)})" if given else ")"))
    if sel is not None and sel.dynamic:
        lines.append("# (data-dependent block selection is decided at run time, on top of these tiles)")
    return lines


def _tile_count(spec: Spec, size: Sizes, bq: int, bk: int) -> int:
    """Tiles the analysis classifies: per batch and head only where the mask or block rule reads b or h."""
    sel = spec.selection
    roots = [inline_bindings(e, spec) for e in (spec.mask, sel.keep if sel is not None else None) if e is not None]
    per = {v: any(uses(e, "index_var", v) for e in roots) for v in ("b", "h")}
    return -(-size.SQ // bq) * -(-size.SKV // bk) * (size.B if per["b"] else 1) * (size.H if per["h"] else 1)


def _reads(spec: Spec, name: str) -> bool:
    """Whether the mask or the static block rule reads the input (the tile analysis summarizes those)."""
    sel = spec.selection
    roots = [spec.mask, sel.keep if sel is not None else None]
    return any(n.op == "load" and n.value == name for e in roots if e is not None for n in walk(inline_bindings(e, spec)))


def band_report(spec: Spec, sizes: Sizes, args: dict) -> list[str]:
    """The mask's closed-form key range per query, and what it proves at these sizes."""
    from .analysis.bands import evaluate_bands, key_bands
    from .printer import expr_text

    bands = key_bands(spec.mask, spec)
    if bands is None:
        return ["# key range per query: no closed form (the tile analysis decides per tile)"]
    text = " or ".join(
        f"[{'0' if b.lo is None else expr_text(b.lo)}, {'SKV - 1' if b.hi is None else expr_text(b.hi)}]" for b in bands
    )
    rows = sizes.B * sizes.H * sizes.SQ
    if rows > MAX_ROWS:
        return [f"# keys kept per query (closed form): {text}", f"# every row keeps a key at these sizes: not checked ({rows} rows, more than {MAX_ROWS})"]
    ranges = evaluate_bands(
        bands, spec, torch.arange(sizes.SQ), sizes,
        {p.name: args[p.name] for p in spec.runtime_params}, {i.name: args[i.name] for i in spec.arguments},
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

    blocks = selection_tiles(spec)
    bands = schedule_bands(spec)
    if bands is not None:
        if not bands:
            return ["# triton target: the mask keeps no pair: the kernel visits no key tile"]
        what = "1 key band" if len(bands) == 1 else f"{len(bands)} key bands"
        return [f"# triton target: key tiles in closed form in the kernel ({what} per row, no table)"]
    source = f"the tile analysis and the selection's {blocks[0]}x{blocks[1]} blocks" if blocks else "the tile analysis"
    return [f"# triton target: key tiles from a block table of {source} (built at the call, or once by build_schedule)"]


def row_map_report(spec: Spec) -> list[str]:
    """How the triton target runs the prologue, the per-row values and the epilogue, each way: a
    generated pass over the rows, or the module's tensor code (and autograd of it)."""
    from .codegen import rowmap_triton as plans

    backward = plans.backward_kernel_plan(spec)
    with_pass = {s["target"] for s in backward["prologue"] if not s["dense"]}
    inference = " (or, without gradients, in the forward kernel)"
    parts = []
    for step in plans.prologue_kernel_plan(spec):
        if step["dense"]:
            parts.append(f"prologue {step['target']}: tensor code both ways (it reads other rows)")
            continue
        fused = inference if step["target"] == "q" and plans.fused_q_prologue(spec) else ""
        back = "a backward pass" if step["target"] in with_pass else "autograd of its tensor code"
        parts.append(f"prologue {step['target']}: a pass{fused}, {back}")
    values = [i.name for i in spec.inputs if i.computed is not None]
    if values and not plans.row_value_kernel_plan(spec):
        parts.append(f"per-row {', '.join(values)}: tensor code both ways (a per-row table among them)")
    elif values:
        fused = {v["name"] for v in plans.fused_q_values(spec)}
        back = "backward passes" if backward["row_values"] else "autograd of their tensor code"
        where = f" (or, without gradients, in the forward kernel: {', '.join(sorted(fused))})" if fused else ""
        parts.append(f"per-row {', '.join(values)}: passes{where}, {back}")
    if spec.epilogue is not None:
        fused = inference if plans.fused_epilogue(spec) else ""
        parts.append(f"epilogue: a pass{fused}, a backward pass" if plans.epilogue_kernel_plan(spec) else "epilogue: tensor code both ways")
    return [f"# triton target: {part}" for part in parts]
