"""Interval arithmetic: the rules of every operator and built-in over intervals, for every tile at once.

A numeric value is an interval [lo, hi] of float64 tensors (integers up to 2**53 are exact); a
boolean is the pair (may_be_true, may_be_false). Each value is a tensor broadcast over the tile grid
([B|1, H|1, NQB, NKB]), so one rule application classifies every tile: the cost is O(tiles x nodes),
never O(pairs). Results are conservative: an interval always contains every value the operation takes
on the tile; NaN widens to the whole line.

Used at compile time by the analyses (attnspec/analysis/interval.py evaluates IR expressions with these
rules) and at run time by generated modules, whose tile code calls `apply` one operation at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .. import ops

INF = float("inf")


@dataclass(frozen=True)
class Num:
    lo: torch.Tensor
    hi: torch.Tensor


@dataclass(frozen=True)
class Bool:
    may_true: torch.Tensor
    may_false: torch.Tensor


def num(lo, hi=None) -> Num:
    lo = torch.as_tensor(lo, dtype=torch.float64)
    hi = lo if hi is None else torch.as_tensor(hi, dtype=torch.float64)
    return bounded(lo, hi)


def bounded(lo: torch.Tensor, hi: torch.Tensor) -> Num:
    """NaN bounds widen to the whole line: an unknown value may be anything."""
    return Num(torch.nan_to_num(lo, nan=-INF, posinf=INF, neginf=-INF), torch.nan_to_num(hi, nan=INF, posinf=INF, neginf=-INF))


def boolean(value) -> Bool:
    value = torch.as_tensor(value, dtype=torch.bool)
    return Bool(value, ~value)


UNKNOWN = Num(torch.tensor(-INF, dtype=torch.float64), torch.tensor(INF, dtype=torch.float64))


def apply(op: str, *args, float_operands: bool = False, float_result: bool = False):
    """One operator over intervals. Float arithmetic is rounded outward, as the target may compute
    it in float32: comparisons of floats widen their operands, float results widen by a slack
    that scales with the operands (cancellation included). Generated tile code calls this too."""
    if op in _COMPARISONS and float_operands:
        args = tuple(_widen(a) for a in args)
    result = RULES[op](*args)
    if isinstance(result, Num) and float_result:
        result = _widen(result, _magnitude(args))
    return result


_COMPARISONS = ("lt", "le", "gt", "ge", "eq", "ne")
FLOAT_SLACK = 2.0**-20  # relative: float32 rounding of a few operations, with a wide margin


def _widen(a: Num, magnitude: torch.Tensor | None = None) -> Num:
    """Bounds moved outward by a slack relative to the values (and operands) involved, so a float
    computed in lower precision, cancellation included, stays inside."""
    size = torch.maximum(a.lo.abs(), a.hi.abs())
    if magnitude is not None:
        size = torch.maximum(size, magnitude)
    slack = torch.nan_to_num(size * FLOAT_SLACK + 1e-30, posinf=0.0)
    # rounding is monotone and keeps zero, so a computed value never crosses zero
    lo = torch.where(a.lo >= 0, torch.clamp(a.lo - slack, min=0.0), a.lo - slack)
    hi = torch.where(a.hi <= 0, torch.clamp(a.hi + slack, max=0.0), a.hi + slack)
    return Num(lo, hi)


def _magnitude(args) -> torch.Tensor:
    sizes = [torch.maximum(a.lo.abs(), a.hi.abs()) for a in args if isinstance(a, Num)]
    return torch.stack(torch.broadcast_tensors(*sizes)).amax(0) if sizes else torch.tensor(0.0, dtype=torch.float64)


# ---------------------------------------------------------------- numeric rules


def _add(a: Num, b: Num) -> Num:
    return bounded(a.lo + b.lo, a.hi + b.hi)


def _sub(a: Num, b: Num) -> Num:
    return bounded(a.lo - b.hi, a.hi - b.lo)


def _neg(a: Num) -> Num:
    return Num(-a.hi, -a.lo)


def _hull_of(values: list[torch.Tensor]) -> Num:
    stacked = torch.broadcast_tensors(*values)
    cleaned = [torch.nan_to_num(v, nan=0.0, posinf=INF, neginf=-INF) for v in stacked]  # 0 * inf: the factor 0 wins
    return Num(torch.stack(cleaned).amin(0), torch.stack(cleaned).amax(0))


def _mul(a: Num, b: Num) -> Num:
    return _hull_of([a.lo * b.lo, a.lo * b.hi, a.hi * b.lo, a.hi * b.hi])


def _nonzero(b: Num) -> torch.Tensor:
    return (b.lo > 0) | (b.hi < 0)


def _quotients(a: Num, b: Num) -> Num:
    q = _hull_of([a.lo / b.lo, a.lo / b.hi, a.hi / b.lo, a.hi / b.hi])
    ok = _nonzero(b)
    return bounded(torch.where(ok, q.lo, -INF), torch.where(ok, q.hi, INF))


def _truediv(a: Num, b: Num) -> Num:
    return _quotients(a, b)


def _floordiv(a: Num, b: Num) -> Num:
    q = _quotients(a, b)
    return Num(torch.floor(q.lo), torch.floor(q.hi))


def _mod(a: Num, b: Num) -> Num:
    """Python modulo: the result has the sign of the divisor; a where the divisor is 0."""
    point = b.lo == b.hi
    c = b.lo
    same_period = torch.floor(a.lo / c) == torch.floor(a.hi / c)
    exact = point & (c != 0) & same_period
    exact_lo = a.lo - torch.floor(a.lo / c) * c
    exact_hi = a.hi - torch.floor(a.hi / c) * c
    wide_lo = torch.where(b.lo > 0, 0.0, torch.minimum(b.lo + 1, torch.zeros_like(b.lo)))
    wide_hi = torch.where(b.hi < 0, 0.0, torch.maximum(b.hi - 1, torch.zeros_like(b.hi)))
    lo = torch.where(exact, torch.minimum(exact_lo, exact_hi), wide_lo)
    hi = torch.where(exact, torch.maximum(exact_lo, exact_hi), wide_hi)
    zero = ~_nonzero(b)  # a % 0 == a (language.md section 4)
    return bounded(torch.where(zero, torch.minimum(lo, a.lo), lo), torch.where(zero, torch.maximum(hi, a.hi), hi))


def _pow(a: Num, b: Num) -> Num:
    """x ** e for a point exponent e: rising on x >= 0 (e >= 0), falling there (e < 0), |x| ** e for an
    even integer e, rising everywhere for an odd one; for any exponent, >= 0 on a base >= 0, and at
    most 1 on a base in [0, 1] with exponents >= 0; anything else is unbounded."""
    e = b.lo
    point_e = b.lo == b.hi
    integer = point_e & (torch.floor(e) == e) & torch.isfinite(e)
    even = integer & (torch.remainder(e, 2) == 0) & (e >= 0)
    odd = integer & (torch.remainder(e, 2) == 1) & (e > 0)
    rising = (point_e & (a.lo >= 0) & (e >= 0)) | odd
    falling = point_e & (a.lo > 0) & (e < 0)
    m = _abs(a)
    lo = torch.where(rising, torch.pow(a.lo, e), torch.where(falling, torch.pow(a.hi, e), -INF))
    hi = torch.where(rising, torch.pow(a.hi, e), torch.where(falling, torch.pow(a.lo, e), INF))
    lo = torch.where(even, torch.pow(m.lo, e), lo)
    hi = torch.where(even, torch.pow(m.hi, e), hi)
    # any exponent: a base >= 0 gives >= 0 (0 ** -e = inf), a base in [0, 1] with exponents >= 0 at most 1
    # (a decay lambda ** distance)
    lo = torch.where(a.lo >= 0, torch.maximum(lo, torch.zeros_like(lo)), lo)
    hi = torch.where((a.lo >= 0) & (a.hi <= 1) & (b.lo >= 0), torch.minimum(hi, torch.ones_like(hi)), hi)
    both_points = (a.lo == a.hi) & point_e
    exact = torch.pow(a.lo, e)
    return bounded(torch.where(both_points, exact, lo), torch.where(both_points, exact, hi))


def _abs(a: Num) -> Num:
    lo = torch.where(a.lo >= 0, a.lo, torch.where(a.hi <= 0, -a.hi, 0.0))
    hi = torch.maximum(a.hi.abs(), a.lo.abs())
    return Num(lo, hi)


def _min(a: Num, b: Num) -> Num:
    return Num(torch.minimum(a.lo, b.lo), torch.minimum(a.hi, b.hi))


def _max(a: Num, b: Num) -> Num:
    return Num(torch.maximum(a.lo, b.lo), torch.maximum(a.hi, b.hi))


def _clamp(x: Num, lo: Num, hi: Num) -> Num:
    return _min(_max(x, lo), hi)


def _monotone(fn) -> Callable[[Num], Num]:
    return lambda a: bounded(fn(a.lo), fn(a.hi))


def _domain(fn, low_ok: float) -> Callable[[Num], Num]:
    """A rising function defined on [low_ok, inf): outside it the value may be NaN."""

    def apply(a: Num) -> Num:
        inside = a.lo >= low_ok
        return bounded(torch.where(inside, fn(a.lo), -INF), torch.where(inside, fn(a.hi), INF))

    return apply


def _bitand(a: Num, b: Num) -> Num:
    points = (a.lo == a.hi) & (b.lo == b.hi)
    exact = torch.bitwise_and(_int(a.lo), _int(b.lo)).to(torch.float64)
    nonneg = (a.lo >= 0) & (b.lo >= 0)
    lo = torch.where(points, exact, torch.where(nonneg, 0.0, -INF))
    hi = torch.where(points, exact, torch.where(nonneg, torch.minimum(a.hi, b.hi), INF))
    return Num(lo, hi)


def _ceildiv(a: Num, b: Num) -> Num:
    """ceildiv(a, b) == -((-a) // b), 0 where b == 0 as for //."""
    return _neg(_floordiv(_neg(a), b))


def _int(x: torch.Tensor) -> torch.Tensor:
    return torch.nan_to_num(x, nan=0.0, posinf=2.0**62, neginf=-(2.0**62)).to(torch.int64)


# ---------------------------------------------------------------- boolean rules


def _lt(a: Num, b: Num) -> Bool:
    return Bool(a.lo < b.hi, a.hi >= b.lo)


def _le(a: Num, b: Num) -> Bool:
    return Bool(a.lo <= b.hi, a.hi > b.lo)


def _gt(a: Num, b: Num) -> Bool:
    return _lt(b, a)


def _ge(a: Num, b: Num) -> Bool:
    return _le(b, a)


def _eq(a, b) -> Bool:
    if isinstance(a, Bool):
        return Bool((a.may_true & b.may_true) | (a.may_false & b.may_false),
                    (a.may_true & b.may_false) | (a.may_false & b.may_true))
    overlap = (a.lo <= b.hi) & (b.lo <= a.hi)
    same_point = (a.lo == a.hi) & (b.lo == b.hi) & (a.lo == b.lo)
    return Bool(overlap, ~same_point)


def _ne(a, b) -> Bool:
    eq = _eq(a, b)
    return Bool(eq.may_false, eq.may_true)


def _and(a: Bool, b: Bool) -> Bool:
    return Bool(a.may_true & b.may_true, a.may_false | b.may_false)


def _or(a: Bool, b: Bool) -> Bool:
    return Bool(a.may_true | b.may_true, a.may_false & b.may_false)


def _not(a: Bool) -> Bool:
    return Bool(a.may_false, a.may_true)


def _where(c: Bool, a, b):
    surely_true = c.may_true & ~c.may_false
    surely_false = c.may_false & ~c.may_true
    if isinstance(a, Bool):
        pick = lambda x, y, hull: torch.where(surely_true, x, torch.where(surely_false, y, hull))  # noqa: E731
        return Bool(pick(a.may_true, b.may_true, a.may_true | b.may_true),
                    pick(a.may_false, b.may_false, a.may_false | b.may_false))
    lo = torch.where(surely_true, a.lo, torch.where(surely_false, b.lo, torch.minimum(a.lo, b.lo)))
    hi = torch.where(surely_true, a.hi, torch.where(surely_false, b.hi, torch.maximum(a.hi, b.hi)))
    return Num(lo, hi)


# the rules operators and some built-ins (by their registry entry's interval name) are computed with
_NAMED_RULES = {
    "add": _add, "sub": _sub, "mul": _mul, "truediv": _truediv, "floordiv": _floordiv, "mod": _mod,
    "pow": _pow, "neg": _neg, "abs": _abs, "min": _min, "max": _max, "clamp": _clamp, "bitand": _bitand,
    "ceildiv": _ceildiv,
    "lt": _lt, "le": _le, "gt": _gt, "ge": _ge, "eq": _eq, "ne": _ne,
    "and": _and, "or": _or, "not": _not, "where": _where,
}


def _function_rule(op: ops.Op) -> Callable:
    """A built-in's rule from its registry entry: rising, rising on a domain, one of the rules above, or
    nothing known."""
    if op.interval == ops.INCREASING:
        return _monotone(op.tensor)
    if isinstance(op.interval, ops.Domain):
        return _domain(op.tensor, op.interval.low)
    if isinstance(op.interval, str):
        return _NAMED_RULES[op.interval]
    return lambda *args: UNKNOWN


RULES = {**_NAMED_RULES, **{name: _function_rule(op) for name, op in ops.OPS.items()}}
