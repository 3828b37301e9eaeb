"""Sign proofs: is an expression >= 0 (or > 0) for every score, index and input value?

The interval evaluator (interval.py) runs with every leaf as wide as it can be: the score and
float inputs anywhere on the line, index variables >= 0, shape symbols >= 1, runtime params
unknown. A proof holds for all inputs; "not proved" says nothing.
"""

from __future__ import annotations

import torch

from ..ir import Expr, Spec, inline_bindings
from ..types import infer
from ..runtime.intervals import UNKNOWN, Bool, Num, num
from .interval import Evaluator


def lower_bound(expr: Expr, spec: Spec) -> float:
    """A lower bound of expr over all values of its leaves (-inf when nothing is known)."""
    leaf = lambda e: _leaf(e, spec)  # noqa: E731
    value = Evaluator(leaf, lambda e, idx: _unknown(e, spec), lambda e: infer(e, spec) == "float")(
        inline_bindings(expr, spec)
    )
    return float(value.lo) if isinstance(value, Num) else float("-inf")


def nonnegative(expr: Expr, spec: Spec) -> bool:
    return lower_bound(expr, spec) >= 0


def positive(expr: Expr, spec: Spec) -> bool:
    return lower_bound(expr, spec) > 0


def nonzero(expr: Expr, spec: Spec) -> bool:
    """Provably never 0: > 0 everywhere, or < 0 everywhere."""
    return positive(expr, spec) or positive(Expr("neg", (expr,)), spec)


def _leaf(e: Expr, spec: Spec) -> Num | Bool:
    if e.op in ("index_var", "row", "feature", "entry", "feature_in", "feature_norm"):
        return num(0.0, torch.inf)
    if e.op in ("feature_softmax", "row_softmax"):
        return num(0.0, 1.0)
    if e.op == "shape":
        return num(1.0, torch.inf)
    if e.op == "score" and _products_nonnegative(spec):
        return num(0.0, torch.inf)
    return _unknown(e, spec)


def _products_nonnegative(spec: Spec) -> bool:
    """The score is >= 0 where it is scale * q.k (no score mod) with a scale >= 0 and prologues that make
    every feature of q and of k >= 0 (the positive feature maps of linear attention: elu(x) + 1, relu,
    exp): a dot product of such vectors is >= 0. (A score mod would make `score` mean two things: the
    product in the mod, the modified score in a normalization.)"""
    if spec.score.op != "score" or (spec.scale is not None and not nonnegative(spec.scale, spec)):
        return False
    maps = {step.target: step.value for step in spec.prologue}
    return all(target in maps and nonnegative(maps[target], spec) for target in ("q", "k"))


def _unknown(e: Expr, spec: Spec) -> Num | Bool:
    if infer(e, spec) == "bool":
        return Bool(torch.tensor(True), torch.tensor(True))
    return UNKNOWN
