"""The plan of the triton target's backward kernels (templates/triton/backward.py.jinja).

The backward recomputes each tile's scores as the forward does and needs, besides, the derivatives
of the spec's expressions, derived symbolically (passes/derivative.py) and rendered as Triton code:

- d_score: d s' / d x, the score mod's derivative with respect to the scaled product x = scale * q.k;
- d_weight: d f / d s', the weight's derivative (elementwise and rownorm forms), and d_denominator
  that of rownorm's separate denominator term;
- sites: one per float input read by the score mod, the weight or the sink logit (loads with equal
  indices are one site). A site's contribution to the input's gradient is the gradient of what reads
  it times the derivative, summed into the slot its clamped indices name. Where the indices vary
  decides how the sum is taken: per program (b, h only) and per row (also q) in the dQ kernel, per
  column (kv, not q) in the dK/dV kernel, each as partial sums that the host adds in a fixed order
  (deterministic); per pair (q and kv) by atomic adds into the gradient, in the dQ kernel.

A spec whose expressions have no derivative (a built-in without one) still gets its forward
kernel: `backward_error` says why its backward does not exist, and the module raises it when a
gradient is asked for.
"""

from __future__ import annotations

from dataclasses import dataclass

from attnspec.diagnostics import AttnError
from attnspec.ir import Expr, Spec, inline_bindings, level_of, walk
from attnspec.passes.derivative import derivative, float_loads
from attnspec.passes.symbolic import exact_key
from attnspec.stages import differentiated

from .dense import bindings_for
from .render import Plan

_SCORE = Expr("score")


@dataclass(frozen=True)
class BackwardPlan(Plan):
    """The backward kernels (templates/triton/backward.py.jinja and the gradient tile functions), or
    backward_error where the spec cannot be differentiated."""

    backward_error: str | None
    d_score: dict | None  # {code, one}: d s' / d x, rendered with the score before the mod as _x
    d_weight: dict | None  # d f / d s'
    d_denominator: dict | None  # rownorm(g, den = f): d f / d s'
    sites: list[dict]  # one per float input read: {id, input, root, level, kernel, derivative, offset, loads}
    grad_inputs: list[dict]  # {name, rank} of the inputs with a gradient
    row_state: str  # the row statistics the tile functions receive
    grad_out: str  # what the grad_pairs function returns, in order
    element_grads: str  # the gradient buffers (pointer, strides) per-pair sites add into
    element_strides_args: str  # their strides alone
    col_site_bindings: list[tuple[str, str]]  # column bindings the per-column sites index with
    dq_full_bounds: bool  # an input's gradient sums the dQ kernel's pairs: its full tiles keep the length bounds
    dkdv_full_bounds: bool  # the same for the dK/dV kernel (per-column sites)
    split_dv: bool  # a learnable input of v's prologue sums dV: dV's weights in two half operands (docs/triton.md)
    backward_error_literal: str  # module constants: BACKWARD_ERROR, SITE_INPUTS, SITE_KERNELS
    site_inputs: str
    site_kernels: str


def backward_plan(spec: Spec, renderer_class) -> BackwardPlan:
    try:
        parts = {"backward_error": None, **_differentiated(spec, renderer_class(spec), _raw_score(renderer_class)(spec))}
    except AttnError as error:
        parts = {"backward_error": error.message, "d_score": None, "d_weight": None, "d_denominator": None, "sites": [], "grad_inputs": []}
    sites = parts["sites"]
    summed = [s for s in sites if s["level"] != "element"]
    pairs = [s for s in sites if s["root"] != "sink"]
    element_inputs = sorted({s["input"] for s in pairs if s["level"] == "element"}, key=[i.name for i in spec.inputs].index)
    strides = "".join(f" _d_{n}_s{d}," for n in element_inputs for d in range(len(spec.input(n).shape)))
    return BackwardPlan(
        **parts,
        row_state={"softmax": "_mrow, _inv_l, _delta", "rownorm": "_den, _delta"}.get(spec.normalize.kind, "_delta"),
        grad_out=", ".join(["_keep", "_p", "_dx"] + [f"_{kind}{s['id']}" for s in pairs for kind in ("c", "o")[: 1 + (s["level"] == "element")]]),
        element_grads="".join(f" _d_{n}," for n in element_inputs) + strides,
        element_strides_args=strides,
        col_site_bindings=_col_site_bindings(spec, sites, renderer_class(spec)),
        dq_full_bounds=any(s["kernel"] == "dq" for s in pairs),
        dkdv_full_bounds=any(s["kernel"] == "dkdv" for s in sites),
        split_dv=_v_prologue_learns(spec),
        backward_error_literal=repr(parts["backward_error"]),
        site_inputs=repr(tuple(s["input"] for s in summed)),
        site_kernels=repr(tuple((s["kernel"], s["level"]) for s in summed)),
    )


def _v_prologue_learns(spec: Spec) -> bool:
    """Whether v's prologue reads a learnable input: its gradient sums dV . dv'/da over every key and
    feature, where dV's bf16 weights err by 2^-9 each (5 times the bf16 reference's error in a
    per-head gain of v: tests/test_row_maps.py)."""
    read = {n.value for m in spec.prologue if m.target == "v" for n in walk(m.value) if n.op == "load"}
    return any(i.learnable for i in spec.inputs if i.name in read)


def _col_site_bindings(spec: Spec, sites: list[dict], r) -> list[tuple[str, str]]:
    """(name, code) of the column-level bindings the dK/dV kernel's per-column sites index with: their
    offsets are stored once per key tile, after its query tiles."""
    loads = [load for site in sites if site["kernel"] == "dkdv" for load in site["loads"]]
    level = {b.symbol: b.level for b in spec.bindings}
    return [(name, code) for name, code in bindings_for(spec, loads, r) if level[name] == "col"]


def _raw_score(renderer_class):
    """The renderer for the score mod's derivatives: there `score` is the score before the mod (_x);
    in the weight's, it is the modified score (_s)."""

    class RawScoreRenderer(renderer_class):
        def render_score(self, e: Expr) -> str:
            return "_x"

    return RawScoreRenderer


def _differentiated(spec: Spec, r, raw) -> dict:
    norm = spec.normalize
    d_score = _rendered(derivative(spec.score, _SCORE, spec), raw)
    d_weight = None if norm.weight is None else _rendered(derivative(norm.weight, _SCORE, spec), r)
    d_denominator = None if norm.denominator is None else _rendered(derivative(norm.denominator, _SCORE, spec), r)
    roots = [(what, expr, raw if what == "score" else r) for what, expr in differentiated(spec)]
    sites = [_site(spec, rr, root, expr, load) for root, expr, rr in roots for load in float_loads(expr, spec)]
    for number, site in enumerate(sites):
        site["id"] = number
    names = [i.name for i in spec.inputs]
    used = sorted({s["input"] for s in sites}, key=names.index)
    return {"d_score": d_score, "d_weight": d_weight, "d_denominator": d_denominator, "sites": sites, "grad_inputs": [_grad_input(spec, n) for n in used]}


def _rendered(e: Expr, r) -> dict:
    """A derivative as code (broadcast against the tile where it does not vary per pair), and whether
    it is the constant 1 (then nothing multiplies) or 0 (then its term is left out)."""
    constant = e.literal if e.op == "const" else None
    return {"code": r.render(e), "one": constant == 1.0, "zero": constant == 0.0}


def _site(spec: Spec, r, root: str, expr: Expr, load: Expr) -> dict:
    index_level = _level(spec, load.args)  # a sink's reads are program or row level (verify.SINK)
    written = _as_written(spec, expr, load)
    return {
        "input": load.value,
        "root": root,
        "level": index_level,
        "kernel": "dkdv" if index_level == "col" else "dq",
        "derivative": _rendered(derivative(expr, load, spec), r),
        "offset": r.render_offset(written, f"_d_{load.value}_s"),
        "loads": [written],
    }


def _as_written(spec: Spec, expr: Expr, load: Expr) -> Expr:
    """The load as the spec's expressions spell it (its indices through the bindings the forward
    computes), so that the gradient's offset reads the same names as the forward's load."""
    key = exact_key(load)
    for root in [expr] + [b.value for b in spec.bindings]:
        for node in walk(root):
            if node.op == "load" and exact_key(inline_bindings(node, spec)) == key:
                return node
    return load


def _level(spec: Spec, indices) -> str:
    levels = {level_of(i, spec) for i in indices}
    if "element" in levels or {"row", "col"} <= levels:
        return "element"
    return "row" if "row" in levels else "col" if "col" in levels else "program"


def _grad_input(spec: Spec, name: str) -> dict:
    return {"name": name, "rank": len(spec.input(name).shape)}
