"""Reverse-mode derivatives of row maps (ir.RowMap: prologues and per-row values), for the triton
target's backward passes over rows.

`row_map_adjoint(step, spec, per_row)` is what a pass over the rows needs to turn the gradient of a row map's
result (a leaf standing for it: a vector over the features, or one number per row) into the gradients of what it reads: its vector (the row of q, k or v before the map) and each
float input it loads. It is a pure function of the IR; the results are IR expressions over the same
leaves as the row map (the vector, its rope partner inside `rope`, positions, features, inputs) and
the seed, rendered by codegen/rowmap_triton.py.

The walk goes from the result down to the leaves, one node at a time:
- a built-in or operator takes each argument's partial derivative from passes/derivative.py (the
  other arguments stand for themselves), so kinks follow torch's autograd as the reference does;
- `sum(a)` hands its (per-row) gradient to every feature of a; `norm(a)` is `sqrt(sum(a * a))`, so a
  row of zeros has the reference's gradient (NaN through sqrt at 0, unless masked above it);
- `rope(a, angle)` is a rotation per feature pair: its transpose, `rope(g, -angle)`, carries g to a;
- a per-row quantity (a reduction, an input not indexed by the feature) read inside a vector
  expression gathers its gradient from every feature: `sum(g * partial)`;
- `softmax(a, G)` hands a `feature_softmax_grad(y, g)`, y (g - the sum of g y over each group) with y
  the softmax itself, to a;
- `sum(x[g] * w[g, f] for g)`, the row times a matrix: the row gets `feature_mix_t(g, w)`, the product
  of g with the matrix's transpose, and the matrix `feature_outer(x, g)`, the sum over the rows of a
  program of the outer products x[g] g[f]: a gradient on the matrix's [g, f] grid, which the walk
  carries down the matrix's expression to its loads (`Adjoint.matrix`), not gathered over the features
  (each (g, f) is its own value; the pass adds them up at the loads' offsets).

The epilogue's `sum_kept(v)` is a leaf too, whose gradient (`Adjoint.kept_sum`) the attention's
backward takes on. NotRepresentable is raised for what has no rule here (a per-row table, the sum of a
number that does not vary over the features, a softmax or a sum over the rows): the caller then
differentiates the dense tensor code instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..diagnostics import AttnError
from ..ir import WHOLE_ROW_OPS, Expr, RowMap, Spec, const, inline_bindings, substitute, walk
from ..types import infer
from .derivative import derivative
from .symbolic import NotRepresentable, exact_key

SEED = "_seed"  # Expr("vector", value=SEED): the result's gradient at the feature
ROW_SEED = "_seed_row"  # the same for a result that is one number per row (a per-row value)
_REDUCTIONS = ("feature_sum", "feature_norm")
# the gradients' own operations over a row's features (their dense forms in runtime/functions.py)
ADJOINT_ROW_OPS = ("feature_mix_t", "feature_softmax_grad")


@dataclass(frozen=True)
class Adjoint:
    """The gradients a row map hands back: `vector` to its row (None where it does not read it), and
    per float load of an input (loads with equal indices are one), the gradient of that load's value
    at each (row, feature) the map reads it."""

    vector: Expr | None
    loads: tuple[tuple[Expr, Expr], ...]
    kept_sum: Expr | None = None  # the epilogue's: to sum_kept(v), a vector over the features
    # per float load inside a matrix (sum(x[g] * w[g, f] for g)), its gradient on the matrix's [g, f]
    # grid (g as `feature_in`), summed over a program's rows by the `feature_outer` it holds
    matrix: tuple[tuple[Expr, Expr], ...] = ()


def row_map_adjoint(step: RowMap, spec: Spec, per_row: bool = False) -> Adjoint:
    """The gradients of what `step` reads, given its result's gradient: the leaf named SEED for a
    prologue or the epilogue (a vector, even where the value is the same at every feature), ROW_SEED
    for a per-row value (`per_row`: one number per row). NotRepresentable where a construct has no rule
    here."""
    if step.entry is not None:
        raise NotRepresentable("a per-row table")
    walker = _Walker(spec, step.target)
    expr = _expanded(inline_bindings(step.value, spec))
    walker.push(expr, Expr("vector", value=ROW_SEED if per_row else SEED, span=expr.span))
    vector = _total(walker.found.get(("vector", step.target)))

    def at(kind: str) -> tuple:
        return tuple((walker.leaves[key], _total(parts)) for key, parts in walker.found.items() if key[0] == kind)

    return Adjoint(vector, at("load"), _total(walker.found.get(("kept_sum",))), at("matrix"))


def varies(e: Expr) -> bool:
    """Whether e differs between the features of one row (outside a reduction over them)."""
    if e.op in _REDUCTIONS or (e.op == "vector" and e.value == ROW_SEED):
        return False
    if e.op in ("vector", "feature", "rope", "kept_sum", "partner", "first_half") + WHOLE_ROW_OPS + ADJOINT_ROW_OPS:
        return True
    return any(varies(a) for a in e.args)


class _Walker:
    def __init__(self, spec: Spec, target: str):
        self.spec, self.target = spec, target
        self.found: dict[tuple, list[Expr]] = {}
        self.leaves: dict[tuple, Expr] = {}
        self._depends: dict[tuple, bool] = {}
        self.in_matrix = False  # walking a matrix's expression: gradients on its [g, f] grid

    def is_variable(self, e: Expr) -> bool:
        if e.op == "vector":
            return e.value == self.target
        if e.op == "kept_sum":
            return True
        return e.op == "load" and infer(e, self.spec) == "float"

    def depends(self, e: Expr) -> bool:
        key = exact_key(e)
        if key not in self._depends:
            self._depends[key] = any(self.is_variable(n) for n in walk(e))
        return self._depends[key]

    def push(self, e: Expr, grad: Expr) -> None:
        """Hand `grad` (the gradient of e's value, at the feature or per row) down to e's leaves."""
        if not self.depends(e):
            return
        if self.is_variable(e):
            load = "matrix" if self.in_matrix else "load"
            key = ("vector", e.value) if e.op == "vector" else ("kept_sum",) if e.op == "kept_sum" else (load, exact_key(e))
            self.leaves.setdefault(key, e)
            self.found.setdefault(key, []).append(grad)
            return
        method = getattr(self, f"_{e.op}", None)
        if self.in_matrix and (method is not None or e.op in WHOLE_ROW_OPS):
            raise NotRepresentable(f"no derivative of '{e.op}' inside a matrix")
        if method is not None:
            return method(e, grad)
        if e.op in ("entry", "pool", "score") + WHOLE_ROW_OPS:
            raise NotRepresentable(f"no row-map derivative for '{e.op}'")
        self._elementwise(e, grad)

    def _feature_softmax(self, e: Expr, grad: Expr) -> None:
        (arg,) = e.args
        self.push(arg, Expr("feature_softmax_grad", (e, grad), e.value, e.span))

    def _feature_mix(self, e: Expr, grad: Expr) -> None:
        row, weight = e.args
        self.push(row, Expr("feature_mix_t", (grad, weight), e.value, e.span))
        if self.depends(weight):
            self.in_matrix = True
            try:
                self.push(weight, Expr("feature_outer", (row, grad), e.value, e.span))
            finally:
                self.in_matrix = False

    def _feature_sum(self, e: Expr, grad: Expr) -> None:
        (arg,) = e.args
        if not varies(arg):
            raise NotRepresentable("the sum over features of a number that does not vary over them")
        self.push(arg, grad)  # every feature of the row gets the row's gradient

    def _rope(self, e: Expr, grad: Expr) -> None:
        x, angle = e.args
        self.push(x, Expr("rope", (grad, _neg(angle)), span=e.span))  # the rotation's transpose
        if self.depends(angle):
            # pair (f, f + F/2) turns by the angle at f: d/d angle of rope(x, angle) is
            # rope(x, angle + pi/2), and the angle at f gathers the pair's two features
            turned = Expr("mul", (grad, Expr("rope", (x, Expr("add", (angle, const(math.pi / 2)), span=e.span)), span=e.span)), span=e.span)
            pair = Expr("add", (turned, Expr("partner", (turned,), span=e.span)), span=e.span)
            self.push(angle, Expr("where", (Expr("first_half", span=e.span), pair, const(0.0)), span=e.span))

    def _elementwise(self, e: Expr, grad: Expr) -> None:
        """Each float argument that depends on a variable gets grad * d e / d argument."""
        # booleans and integers are piecewise constant: only float arguments that depend on a variable
        # become holes, each differentiated while the others stand for themselves
        wanted = [self.depends(a) and infer(a, self.spec) == "float" for a in e.args]
        holes = tuple(Expr("vector", value=f"_arg{i}", span=a.span) if w else a
                      for i, (a, w) in enumerate(zip(e.args, wanted)))
        shell = Expr(e.op, holes, e.value, e.span, e.name)
        back = {h.value: a for h, a, w in zip(holes, e.args, wanted) if w}
        for hole, arg, w in zip(holes, e.args, wanted):
            if not w:
                continue
            try:
                partial = derivative(shell, hole, self.spec)
            except AttnError as error:
                raise NotRepresentable(error.message) from None
            partial = substitute(partial, lambda n: back.get(n.value) if n.op == "vector" else None)
            # on a matrix's grid each (g, f) is its own value: nothing is gathered over the features
            product = _mul(grad, partial)
            self.push(arg, product if self.in_matrix else _gathered(product, arg, e.span))


def _expanded(e: Expr) -> Expr:
    """norm(a) as sqrt(sum(a * a)): the reference's own chain, so its gradient at a row of zeros."""
    def expand(node: Expr):
        if node.op != "feature_norm":
            return None
        (arg,) = node.args
        arg = _expanded(arg)
        return Expr("sqrt", (Expr("feature_sum", (Expr("mul", (arg, arg), span=node.span),), span=node.span),), span=node.span)
    return substitute(e, expand)


def _gathered(grad: Expr, arg: Expr, span) -> Expr:
    """A gradient that varies over the features, for an argument that does not: summed over them."""
    return Expr("feature_sum", (grad,), span=span) if varies(grad) and not varies(arg) else grad


def _is(e: Expr, number: float) -> bool:
    return e.op == "const" and isinstance(e.literal, (int, float)) and not isinstance(e.literal, bool) and e.literal == number


def _mul(a: Expr, b: Expr) -> Expr:
    if _is(b, 1.0):
        return a
    if _is(a, 1.0):
        return b
    if _is(b, -1.0):
        return _neg(a)
    return Expr("mul", (a, b), span=a.span)


def _neg(a: Expr) -> Expr:
    return a.args[0] if a.op == "neg" else Expr("neg", (a,), span=a.span)


def _total(parts: list[Expr] | None) -> Expr | None:
    if not parts:
        return None
    total = parts[0]
    for part in parts[1:]:
        total = Expr("add", (total, part), span=total.span)
    return total
