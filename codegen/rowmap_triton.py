"""The prologue as Triton kernels (templates/triton/prologue.py.jinja): the triton target replaces q, k
or v in one pass over their rows, one kernel per prologue statement, instead of a chain of tensor
operations. The kernel-work model (analysis/cost.py row_map_work, benchmarks/RESULTS.md) says a pass
is cheaper than fusing a k or v prologue into every kernel that loads a key tile.

A program holds a [BLOCK_M rows, BLOCK_F features] tile of one (batch, head): `_x` is the row's vector
at the feature `_f`, `_row` its position. `rope` pairs feature f with its partner `_fp` (f + F/2 or
f - F/2), so an expression under rope is also rendered at the partner (`_xp`, `_fp`): the renderer's
`partner` view. Reductions over features sum the tile's row (padding excluded).
"""

from __future__ import annotations

from attnspec.ir import Expr, RowMap, Spec, inline_bindings, walk

from .triton import TritonRenderer


class RowMapKernelRenderer(TritonRenderer):
    """A prologue statement's value as Triton code over the tile, at its own features or, with
    `partner`, at each feature's rope partner."""

    def __init__(self, spec: Spec, partner: bool = False):
        super().__init__(spec)
        self.partner = partner
        self.tables = {}  # a prologue reads no per-row table

    def at_partner(self) -> "RowMapKernelRenderer":
        return RowMapKernelRenderer(self.spec, not self.partner)

    def render_vector(self, e: Expr) -> str:
        return "_xp" if self.partner else "_x"

    def render_row(self, e: Expr) -> str:
        return "_row"

    def render_feature(self, e: Expr) -> str:
        return "_fp" if self.partner else "_f"

    def render_kept_sum(self, e: Expr) -> str:
        return "_vsum"  # the forward kernel's sum of v over the row's kept keys

    def render_feature_sum(self, e: Expr) -> str:
        return f"_kernel.feature_sum({self.render(e.args[0])}, _in_f)"

    def render_feature_norm(self, e: Expr) -> str:
        x = self.render(e.args[0])
        return f"tl.sqrt(_kernel.feature_sum({x} * {x}, _in_f))"

    def render_rope(self, e: Expr) -> str:
        """Pair (f, f + F/2) turns by the angle at its first feature: x cos a - x' sin a there, and
        x cos a + x' sin a at the second, x' the value at the partner."""
        x, angle = e.args
        other = self.at_partner()
        first = "(_fp < _HALF)" if self.partner else "(_f < _HALF)"
        angle_first = f"tl.where({first}, {self.render(angle)}, {other.render(angle)})"
        return f"_kernel.rope_pair({self.render(x)}, {other.render(x)}, {angle_first}, {first})"


def prologue_kernel_plan(spec: Spec) -> list[dict]:
    """{target, code, inputs, params, rope} of each prologue statement's kernel: the Triton code of its
    value, the inputs ({name, rank}) and runtime params ({name, bool}) it reads, and whether it pairs
    features (rope)."""
    return [_kernel_step(spec, step) for step in spec.prologue]


def fused_q_prologue(spec: Spec) -> dict | None:
    """{code, rope} of the q prologue as the forward kernel applies it to its resident Q tile when no
    gradient is needed (the kernel-work model's choice in inference: the pass's round trip saved, the
    same operations). None without a q prologue, or where per-row values of q need q after it anyway."""
    step = next((s for s in spec.prologue if s.target == "q"), None)
    if step is None or any(i.computed is not None and i.computed.target == "q" for i in spec.inputs):
        return None
    return _fused(spec, step)


def fused_epilogue(spec: Spec) -> dict | None:
    """{code, rope} of the epilogue as the forward kernel applies it before its store when no gradient is
    needed (in training the kernel stores the output the backward reads, and the epilogue follows)."""
    return None if spec.epilogue is None else _fused(spec, spec.epilogue)


def _fused(spec: Spec, step: RowMap) -> dict:
    """{code, rope}: the statement's value as Triton code over a tile, and whether it pairs features."""
    value = inline_bindings(step.value, spec)
    return {"code": RowMapKernelRenderer(spec).render(value), "rope": any(n.op == "rope" for n in walk(value))}


def _kernel_step(spec: Spec, step: RowMap) -> dict:
    nodes = list(walk(inline_bindings(step.value, spec)))
    return {
        **_fused(spec, step),
        "target": step.target,
        "inputs": [{"name": i.name, "rank": len(i.shape)} for i in spec.inputs
                   if any(n.op == "load" and n.value == i.name for n in nodes)],
        "params": [{"name": p.name, "bool": p.type == "bool"} for p in spec.runtime_params
                   if any(n.op == "param" and n.value == p.name for n in nodes)],
    }
