"""The prologue and the epilogue as dense tensor code (templates/common/rowmap.py.jinja), shared by
every target: q, k or v replaced row by row before the logit, the output after the normalization
(ir.RowMap).

A step is evaluated on broadcast grids of its tensor's shape: b [B,1,1,1], h [1,H,1,1] (the kv heads
for k and v), the row [1,1,S,1] and the feature [1,1,1,D]; the vector itself is the tensor, so
elementwise code reads like the spec, and reductions over features keep their axis. Autograd carries
every target's gradients through it to q, k, v and the inputs it reads.
"""

from __future__ import annotations

import functools

from attnspec.ir import Expr, RowMap, Spec, factors, walk

from .dense import DenseRenderer, row_values_read


class RowMapRenderer(DenseRenderer):
    """Expressions of one row map: its vector is the tensor named after its target."""

    def __init__(self, spec: Spec, step: RowMap):
        super().__init__(spec)
        self.step = step

    def render_vector(self, e: Expr) -> str:
        # a per-row table is evaluated on a grid with an entry axis before the features
        return e.value if self.step.entry is None else f"{e.value}[..., None, :]"

    def render_row(self, e: Expr) -> str:
        return "_row"

    def render_feature(self, e: Expr) -> str:
        return "_feature"

    def render_entry(self, e: Expr) -> str:
        return "_entry"

    def render_feature_sum(self, e: Expr) -> str:
        """sum(x); in a per-row table, sum(a * b) with b reading the entry and a not is a contraction
        (q . table[r] for every r), never the [rows, entries, features] product."""
        terms = factors(e.args[0])
        of_entry = [f for f in terms if any(n.op == "entry" for n in walk(f))]
        if self.step.entry is not None and of_entry and len(of_entry) < len(terms):
            rest = [f for f in terms if f not in of_entry]
            return f"_fn.feature_dot({self._product(rest)}, {self._product(of_entry)}, {self._like()})"
        return f"_fn.feature_sum({self.render(e.args[0])}, {self._like()})"

    def render_feature_in(self, e: Expr) -> str:
        return "_feature.mT"  # the summed feature of sum(... for g): the matrix's rows, on the axis before the features

    def render_feature_mix(self, e: Expr) -> str:
        row, weight = e.args
        return f"_fn.feature_mix({self.render(row)}, {self.render(weight)}, {self._like()})"

    def render_feature_mix_t(self, e: Expr) -> str:
        grad, weight = e.args
        return f"_fn.feature_mix_t({self.render(grad)}, {self.render(weight)}, {self._like()})"

    def render_feature_outer(self, e: Expr) -> str:
        row, grad = e.args
        return f"_fn.feature_outer({self.render(row)}, {self.render(grad)}, {self._like()})"

    def render_feature_softmax_grad(self, e: Expr) -> str:
        y, grad = e.args
        return f"_fn.feature_softmax_grad({self.render(y)}, {self.render(grad)}, {e.value}, {self._like()})"

    def render_feature_softmax(self, e: Expr) -> str:
        return f"_fn.feature_softmax({self.render(e.args[0])}, {e.value}, {self._like()})"

    def render_row_softmax(self, e: Expr) -> str:
        return f"_fn.row_softmax({self.render(e.args[0])}, {self._like()})"

    def render_row_sum(self, e: Expr) -> str:
        return f"_fn.row_sum({self.render(e.args[0])}, {self._like()})"

    def render_feature_norm(self, e: Expr) -> str:
        return f"_fn.feature_norm({self.render(e.args[0])}, {self._like()})"

    def _like(self) -> str:
        return self.render_vector(Expr("vector", value=self.step.target))

    def _product(self, factors: list[Expr]) -> str:
        return self.render(functools.reduce(lambda a, b: Expr("mul", (a, b), span=a.span), factors))

    def render_rope(self, e: Expr) -> str:
        return f"_fn.rope({', '.join(self.render(a) for a in e.args)})"

    def render_partner(self, e: Expr) -> str:  # passes/adjoint.py's, in a rope angle's gradient
        return f"_fn.partner({self.render(e.args[0])}, {self._like()})"

    def render_first_half(self, e: Expr) -> str:
        return f"_fn.first_half({self._like()})"

    def render_kept_sum(self, e: Expr) -> str:
        return "_vsum"


def prologue_plan(spec: Spec) -> list[dict]:
    """{target, code} of each prologue step, in the order q, k, v."""
    return [dense_step(spec, step) for step in spec.prologue]


def epilogue_plan(spec: Spec) -> dict | None:
    """{target, code, reads, kept_sum} of the epilogue: besides the caller's inputs, it reads the per-row
    values in `reads` and, where kept_sum, _vsum, the sum of v over each row's kept keys."""
    if spec.epilogue is None:
        return None
    kept_sum = reads_kept_sum(spec)
    reads = row_values_read(spec, spec.epilogue.value) + (["_vsum"] if kept_sum else [])
    return {**dense_step(spec, spec.epilogue), "reads": reads, "kept_sum": kept_sum}


def reads_kept_sum(spec: Spec) -> bool:
    """Whether the epilogue reads sum_kept(v), which the attention then computes beside its output."""
    return spec.epilogue is not None and any(n.op == "kept_sum" for n in walk(spec.epilogue.value))


def row_value_plan(spec: Spec) -> list[dict]:
    """{name, target, code, entries} of each per-row value (an input the module computes); entries is the
    code of a per-row table's number of entries, None for one number per row."""
    return [{"name": i.name, **dense_step(spec, i.computed), "entries": _entries(spec, i)}
            for i in spec.inputs if i.computed is not None]


def _entries(spec: Spec, decl) -> str | None:
    return None if decl.computed.entry is None else RowMapRenderer(spec, decl.computed).render(decl.shape[-1])


def dense_step(spec: Spec, step: RowMap) -> dict:
    return {"target": step.target, "code": RowMapRenderer(spec, step).render(step.value)}
