"""The flex target: FlexAttention score_mod / mask_mod functions, the BlockMask they need, and an
attention() that restates the spec's normalization through an exact identity (passes/flex.py).

Three renderers fill the template's plan:
- ModRenderer (mods.py): expressions inside a score_mod / mask_mod, one (b, h, q_idx, kv_idx) pair at a time;
- TileRenderer (tiles.py): the mask over intervals, one (query block, key block) tile at a time, so the
  BlockMask is built from block-level arithmetic (runtime/intervals.py rules), never per pair;
- the dense renderer (dense.py) for the parts shared with the oracle (checks, block selection,
  the sink and the scale).
"""

from __future__ import annotations

from dataclasses import dataclass

from attnspec.analysis.precision import PROBES, tile_agreement
from attnspec.builtins import DTYPES
from attnspec.ir import Expr, Spec, inline_bindings, walk
from attnspec.passes.flex import IDENTITIES, flex_identity, log_weight, signed_parts, token_mask

from .dense import DenseRenderer, ModulePlan, bindings_for, module_plan
from .mods import mod_plan
from .render import template_environment
from .tiles import TileRenderer

DEFAULT_BLOCK = 128  # FlexAttention's block size where the spec does not fix one
ANALYTIC_AGREEMENT = 0.95  # below this share of exactly classified tiles, create_block_mask is used


def generate(spec: Spec, source_name: str = "<string>") -> str:
    """The flex module's source for a verified, optimized spec."""
    identity = flex_identity(spec)  # raises, at the normalization's line, where no identity exists
    template = template_environment().get_template("flex/module.py.jinja")
    return template.render(**flex_plan(spec, identity, source_name).fields())


def flex_block(spec: Spec) -> tuple[int, int]:
    """The BlockMask's block size: the selection's blocks when the spec selects blocks."""
    sel = spec.selection
    if sel is None:
        return DEFAULT_BLOCK, DEFAULT_BLOCK
    return sel.q_block.literal, sel.kv_block.literal


def block_mask_path(spec: Spec) -> tuple[str, float]:
    """("tile analysis" | "create_block_mask" | "no mask", worst agreement on the probes)."""
    mask = token_mask(spec)
    if mask is None:
        return "no mask", 1.0
    bq, bk = flex_block(spec)
    agreement = min(tile_agreement(spec, inline_bindings(mask, spec), bq, bk, p) for p in PROBES)
    return ("tile analysis" if agreement >= ANALYTIC_AGREEMENT else "create_block_mask"), agreement


@dataclass(frozen=True)
class FlexPlan(ModulePlan):
    """The flex module (templates/flex/module.py.jinja): the module plan, the mods, the BlockMask."""

    identity: str  # how attention() restates the normalization (passes/flex.py IDENTITIES)
    identity_text: str
    block: tuple[int, int]  # the BlockMask's block sizes
    path: str  # how the BlockMask is built: tile analysis | create_block_mask | no mask
    eligible_classes: bool  # a selection's eligible tiles from the tile classes
    agreement: str  # the tile analysis's worst agreement on the probes
    score_mod: dict  # codegen/mods.py mod_plan
    negative_mod: dict | None  # rownorm(g, den = f) with g of any sign: log relu(-g), a second call
    denominator_mod: dict | None  # rownorm(g, den = f): log f, a call whose lse is the denominator's
    mask_mod: dict | None
    tile_mask: dict | None  # the mask over intervals (codegen/tiles.py)
    mask_batch: bool  # whether the mask reads the batch index (the BlockMask has B rows)
    mask_head: bool  # or the head index
    float_inputs: list[str]
    sink_bindings: list[tuple[str, str]]


def flex_plan(spec: Spec, identity: str, source_name: str) -> FlexPlan:
    mask = token_mask(spec)
    path, agreement = block_mask_path(spec)
    norm = spec.normalize
    weight, negative = norm.weight, None
    if identity in ("ratio_signed", "elementwise_signed"):
        weight, negative = signed_parts(norm.weight)
    weight = None if weight is None else log_weight(weight, spec)

    def weight_mod(log_w: Expr | None) -> dict | None:
        return None if log_w is None else mod_plan(spec, [spec.score, log_w], True)

    return FlexPlan(
        **module_plan(spec, source_name).fields(),
        identity=identity,
        identity_text=IDENTITIES[identity],
        block=flex_block(spec),
        path=path,
        eligible_classes=path == "tile analysis",
        agreement=f"{agreement:.1%}",
        score_mod=weight_mod(weight) or mod_plan(spec, [spec.score], False),
        negative_mod=weight_mod(None if negative is None else log_weight(negative, spec)),
        denominator_mod=weight_mod(None if norm.denominator is None else log_weight(norm.denominator, spec)),
        mask_mod=None if mask is None else mod_plan(spec, [mask], False),
        tile_mask=None if mask is None else TileRenderer(spec).statements(inline_bindings(mask, spec)),
        mask_batch=mask is not None and _uses_index(spec, mask, "b"),
        mask_head=mask is not None and _uses_index(spec, mask, "h"),
        float_inputs=[i.name for i in spec.inputs if DTYPES[i.dtype] == "float"],
        sink_bindings=bindings_for(spec, [spec.normalize.sink], DenseRenderer(spec)),
    )


def _uses_index(spec: Spec, expr: Expr, name: str) -> bool:
    return any(n.op == "index_var" and n.value == name for n in walk(inline_bindings(expr, spec)))
