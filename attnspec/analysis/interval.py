"""Interval arithmetic over IR expressions, evaluated for every tile at once (the rules of each operation
are in attnspec/runtime/intervals.py, which generated modules also call at run time).

A numeric value is an interval [lo, hi] of float64 tensors (integers up to 2**53 are exact); a
boolean is the pair (may_be_true, may_be_false). Each leaf is a tensor broadcast over the tile grid
([B|1, H|1, NQB, NKB]), so one pass over the expression classifies every tile: the cost is
O(tiles x nodes), never O(pairs). Results are conservative: an interval always contains every
value the expression takes on the tile; NaN widens to the whole line.

Input loads use per-dimension range-min/max summaries (sparse tables) built at run time from the
input tensor, so `doc[b, q] == doc[b, kv]` is decided per tile exactly when the documents align.
"""

from __future__ import annotations

from typing import Callable

from ..ir import WHOLE_ROW_OPS, Expr
from ..runtime.intervals import Bool, Num, apply, boolean, num

# what the evaluator's `leaf` bounds: the variables, a prologue's vectors, indices and functions over
# features (ir.RowMap), and the flex lowering's log of a weight, which no interval rule covers
LEAVES = ("index_var", "shape", "param", "score", "pool", "vector", "row", "feature", "entry", "feature_in", "feature_sum", "feature_norm",
          "rope", "kept_sum", "log_weight") + WHOLE_ROW_OPS


class Evaluator:
    """Evaluate expressions over intervals; `leaf(expr)` gives the value of index vars, params, ..."""

    def __init__(
        self, leaf: Callable[[Expr], Num | Bool], load: Callable[[Expr, list[Num]], Num | Bool],
        is_float: Callable[[Expr], bool] = lambda e: False,
    ):
        self.leaf = leaf
        self.load = load
        self.is_float = is_float
        self.memo: dict[int, tuple[Expr, Num | Bool]] = {}

    def __call__(self, expr: Expr) -> Num | Bool:
        key = id(expr)
        if key not in self.memo:
            self.memo[key] = (expr, self._eval(expr))
        return self.memo[key][1]

    def _eval(self, e: Expr):
        if e.op == "const":
            return boolean(e.literal) if isinstance(e.literal, bool) else num(float(e.literal))
        if e.op in LEAVES:
            return self.leaf(e)
        args = [self(a) for a in e.args]
        if e.op == "load":
            return self.load(e, args)
        floats = any(self.is_float(a) for a in e.args)
        return apply(e.op, *args, float_operands=floats, float_result=self.is_float(e))
