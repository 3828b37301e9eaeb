"""Closed-form key ranges ("bands") of a mask, derived symbolically with sympy.

`key_bands(mask, spec)` answers, when it can prove it, a union of bands: for every (b, h, q) the
mask keeps key `kv` (in [0, SKV)) exactly iff some band has `lo <= kv <= hi`. A kernel then walks
the key blocks `lo // BK .. hi // BK` of each query block with arithmetic, no block table. `lo` and
`hi` are int IR expressions over b, h, q, shape symbols, params and inputs, never kv; they may lie
outside [0, SKV) and a band may be empty (`lo > hi`), so consumers clamp. A band that holds only
under a kv-free condition `c` (prefix-LM, per-head windows) gets `hi = where(c, hi, -1)`.

How: the mask is walked as a boolean formula (and / or / not, negation pushed to the leaves). A
leaf without kv is a condition. A comparison with kv becomes `D <= 0` over integers (`x < y` is
`x - y + 1 <= 0`) with D in sympy; terms `c * F(..)` of D holding kv are split exactly: `max` /
`min` / `abs` / `clamp` by monotonicity into and / or, `where` by cases, `E // K` (K a positive
constant, c = +-1) into a bound on E. What is left must be `+-kv + R` with R free of kv, giving
`kv <= -R` or `kv >= R`. Anything else (`kv % W`, `kv * q`, `2 * kv`, loads indexed by kv, float
comparisons with kv) raises _NotBand and the answer is None.

Cost: splitting a `where` doubles the work below it, so a sum of n kv-dependent `where` terms has
2^n cases. Their constraints often meet again (`where(a, 1, 0) + where(b, 1, 0)` gives `1 + 0` and
`0 + 1`), so `D <= 0` is solved once per D and a where-condition analysed once: the 62-term
`floor(log2(q - kv))` ladder costs about 2000 subproblems. Where they do not meet (distinct weights)
the analysis gives up ("no closed form": the tile analysis and a block table take over) as soon
as an intermediate union or product exceeds _MAX_PIECES pieces, or after _MAX_WORK steps (terms of
each D scanned plus 8 per D, formula nodes, piece pairs, subset tests). Every step costs a
polynomial in the mask's size, so the analysis does too, whatever the mask.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Callable

import sympy
import torch

from .. import builtins as bi
from .. import ops
from ..diagnostics import NO_SPAN, Span
from ..ir import Expr, Spec, const, inline_bindings, uses
from ..types import infer

MAX_BANDS = 16  # more than this is no band structure a kernel wants
_MAX_PIECES = 64  # cap on intermediate products of and-ed unions
_MAX_WORK = 80_000  # steps before giving up (about 2 s on 62 terms); an example takes at most 131


@dataclass(frozen=True)
class Band:
    """Keys kv with lo <= kv <= hi are kept, for a fixed (b, h, q)."""

    lo: Expr | None  # None: unbounded below (0)
    hi: Expr | None  # None: unbounded above (SKV - 1)


class _NotBand(Exception):
    """The mask is not (provably) a union of bands."""


def key_bands(mask: Expr | None, spec: Spec) -> tuple[Band, ...] | None:
    """The mask as a union of key bands per (b, h, q), or None when it is not provably one."""
    if mask is None:
        return (Band(None, None),)
    return _bands_of(mask, spec, mask.span)


@functools.lru_cache(maxsize=64)
def _bands_of(mask: Expr, spec: Spec, span: Span) -> tuple[Band, ...] | None:
    """key_bands, once per (mask, spec, source span): `show` and the triton target both ask, and the
    answer can take seconds for a long mask (the IR's equality ignores spans, the key does not)."""
    try:
        return _Analyzer(spec, span).bands(inline_bindings(mask, spec))
    except _NotBand:
        return None


# ------------------------------------------------------------------ internal pieces

_KV, _Q = sympy.Symbol("kv", integer=True), sympy.Symbol("q", integer=True)
_MAX, _MIN, _ABS = sympy.Function("imax"), sympy.Function("imin"), sympy.Function("iabs")
_CLAMP, _WHERE, _FLOORDIV = sympy.Function("iclamp"), sympy.Function("iwhere"), sympy.Function("ifloordiv")
_FUNCS = {"max": _MAX, "min": _MIN, "abs": _ABS, "clamp": _CLAMP, "where": _WHERE, "floordiv": _FLOORDIV}
_OPS = {f: op for op, f in _FUNCS.items()}
_NEGATED = {"lt": "ge", "le": "gt", "gt": "le", "ge": "lt", "eq": "ne", "ne": "eq"}


@dataclass(frozen=True)
class _Bound:
    value: sympy.Expr
    span: Span = field(default=NO_SPAN, compare=False)


@dataclass(frozen=True)
class _Piece:
    """All conds hold and max(los) <= kv <= min(his)."""

    conds: tuple[Expr, ...] = ()
    los: tuple[_Bound, ...] = ()
    his: tuple[_Bound, ...] = ()


def _constant(x: sympy.Expr) -> int | None:
    x = sympy.expand(x)
    return int(x) if x.is_Integer else None


def _at_least_zero(x: sympy.Expr) -> bool:
    value = _constant(x)
    return value is not None and value >= 0


def _dominant(bounds: tuple[_Bound, ...], sign: int) -> tuple[_Bound, ...]:
    """Drop bounds a constant away from a tighter one (sign +1: keep the largest, -1: the smallest)."""
    kept: list[_Bound] = []
    for bound in bounds:
        for i, other in enumerate(kept):
            diff = _constant(sign * (bound.value - other.value))
            if diff is not None:
                kept[i] = bound if diff > 0 else other
                break
        else:
            kept.append(bound)
    return tuple(kept)


def _negate(cond: Expr) -> Expr:
    if cond.op == "not":
        return cond.args[0]
    if cond.op == "const":
        return const(not cond.literal, cond.span)
    return Expr("not", (cond,), span=cond.span)


def _tidy(piece: _Piece) -> _Piece | None:
    """The piece simplified, or None when it is provably empty."""
    conds = tuple(dict.fromkeys(c for c in piece.conds if not (c.op == "const" and c.literal)))
    if any(c.op == "const" or _negate(c) in conds for c in conds):
        return None
    los, his = _dominant(piece.los, 1), _dominant(piece.his, -1)
    for lo in los:
        for hi in his:
            gap = _constant(lo.value - hi.value)
            if gap is not None and gap > 0:
                return None
    return _Piece(conds, los, his)


def _within(inner: _Piece, outer: _Piece) -> bool:
    """inner is provably a subset of outer."""
    def tighter(mine, theirs, sign):
        return all(any(_at_least_zero(sign * (m.value - t.value)) for m in mine) for t in theirs)

    return set(outer.conds) <= set(inner.conds) and tighter(inner.los, outer.los, 1) and tighter(inner.his, outer.his, -1)


def _union(a: list[_Piece], b: list[_Piece], spend=lambda steps: None) -> list[_Piece]:
    pieces: list[_Piece] = []
    for piece in a + b:
        spend(2 * len(pieces) + 1)  # the subset tests below
        if any(_within(piece, other) for other in pieces):
            continue
        pieces = [p for p in pieces if not _within(p, piece)] + [piece]
    if len(pieces) > _MAX_PIECES:
        raise _NotBand
    return pieces


def _intersect(a: list[_Piece], b: list[_Piece], spend=lambda steps: None) -> list[_Piece]:
    if len(a) * len(b) > _MAX_PIECES:
        raise _NotBand
    spend(len(a) * len(b))
    both = (_tidy(_Piece(x.conds + y.conds, x.los + y.los, x.his + y.his)) for x in a for y in b)
    return _union([p for p in both if p is not None], [], spend)


# ------------------------------------------------------------------ the analysis


class _Analyzer:
    def __init__(self, spec: Spec, span: Span):
        self.spec, self.span = spec, span
        self.symbols: dict[Expr, sympy.Symbol] = {}  # IR leaves and kv-free opaque nodes
        self.ir: dict[sympy.Symbol, Expr] = {}
        self.types: dict = {}
        self.kv_conds: set[sympy.Symbol] = set()  # markers of where-conditions that read kv
        self.work = 0  # steps taken, against _MAX_WORK
        self.solved: dict[tuple[sympy.Expr, Span], list[_Piece]] = {}  # le0's answers
        self.conditions: dict[tuple[Expr, bool], list[_Piece]] = {}  # where-conditions' pieces

    def spend(self, steps: int = 1) -> None:
        """Count work; past the budget the mask has no closed form we can afford to find."""
        self.work += steps
        if self.work > _MAX_WORK:
            raise _NotBand

    def union(self, a: list[_Piece], b: list[_Piece]) -> list[_Piece]:
        return _union(a, b, self.spend)

    def intersect(self, a: list[_Piece], b: list[_Piece]) -> list[_Piece]:
        return _intersect(a, b, self.spend)

    def bands(self, mask: Expr) -> tuple[Band, ...]:
        pieces = self.formula(mask, False)
        if len(pieces) > MAX_BANDS:
            raise _NotBand
        return tuple(self.band(p) for p in pieces)

    # boolean structure -> pieces
    def formula(self, e: Expr, negate: bool) -> list[_Piece]:
        self.spend()
        if not uses(e, "index_var", "kv"):
            return self.condition(e, negate)
        if e.op == "not":
            return self.formula(e.args[0], not negate)
        if e.op in ("and", "or"):
            a, b = (self.formula(x, negate) for x in e.args)
            return self.intersect(a, b) if (e.op == "and") != negate else self.union(a, b)
        if e.op == "where":
            c, a, b = e.args
            cases = Expr("or", (Expr("and", (c, a), span=e.span), Expr("and", (_negate(c), b), span=e.span)), span=e.span)
            return self.formula(cases, negate)
        if e.op in ("eq", "ne") and self.type(e.args[0]) == "bool":
            a, b = e.args
            same = Expr("or", (Expr("and", (a, b)), Expr("and", (_negate(a), _negate(b)))), span=e.span)
            return self.formula(same, negate != (e.op == "ne"))
        if e.op in bi.COMPARISONS:
            return self.comparison(e, negate)
        raise _NotBand

    def condition(self, e: Expr, negate: bool) -> list[_Piece]:
        cond = _negate(e) if negate else e
        if cond.op == "const":
            return [_Piece()] if cond.literal else []
        return [_Piece(conds=(cond,))]

    def comparison(self, e: Expr, negate: bool) -> list[_Piece]:
        if any(self.type(a) != "int" for a in e.args):
            raise _NotBand
        op = _NEGATED[e.op] if negate else e.op
        d = self.sym(e.args[0]) - self.sym(e.args[1])
        span = e.span
        if op == "eq":
            return self.intersect(self.le0(d, span), self.le0(-d, span))
        if op == "ne":
            return self.union(self.le0(d + 1, span), self.le0(1 - d, span))
        return self.le0({"lt": d + 1, "le": d, "gt": 1 - d, "ge": -d}[op], span)

    def le0(self, d: sympy.Expr, span: Span, expanded: bool = False) -> list[_Piece]:
        """Pieces for the integer constraint d <= 0 (memoized: the cases of a sum of `where` terms
        meet again, `where(a, 1, 0) + where(b, 1, 0) <= 1` asks for `1 + 0` and `0 + 1`)."""
        d = d if expanded else sympy.expand(d)
        key = (d, span)
        if key not in self.solved:
            self.solved[key] = self.solve(d, span)
        return self.solved[key]

    def solve(self, d: sympy.Expr, span: Span) -> list[_Piece]:
        self.spend(8 + len(sympy.Add.make_args(d)))  # a sympy round trip, then a scan of its terms
        for term in sympy.Add.make_args(d):
            coeff, factor = term.as_coeff_Mul()
            if self.has_kv(term) and factor != _KV:
                return self.split(factor, coeff, d - term, span)
        slope = d.coeff(_KV)
        rest = sympy.expand(d - slope * _KV)
        if slope == 0:
            return self.condition(self.at_most_zero(d, span), False)
        if slope == 1:
            return [_Piece(his=(_Bound(-rest, span),))]
        if slope == -1:
            return [_Piece(los=(_Bound(rest, span),))]
        raise _NotBand  # kv with a coefficient other than +-1 would need division

    def split(self, f: sympy.Expr, c, rest: sympy.Expr, span: Span) -> list[_Piece]:
        """Pieces for c * f + rest <= 0 where f is a built-in applied to something holding kv."""
        if not c.is_Integer:
            raise _NotBand
        if f.func is _ABS:
            f = _MAX(f.args[0], -f.args[0])
        if f.func is _CLAMP:
            x, lo, hi = f.args
            f = _MIN(_MAX(x, lo), hi)
        if f.func in (_MAX, _MIN):  # c * max(a, b) + r <= 0: both (c > 0) or either (c < 0)
            parts = [self.le0(self.plus(c * arg, rest), span, True) for arg in f.args]
            return self.intersect(*parts) if (f.func is _MAX) == (c > 0) else self.union(*parts)
        if f.func is _WHERE:
            cond, a, b = f.args
            cond = self.ir[cond]
            yes, no = self.case(cond, False, self.plus(c * a, rest), span), self.case(cond, True, self.plus(c * b, rest), span)
            return self.union(yes, no)
        if f.func is _FLOORDIV and f.args[1].is_Integer and f.args[1] > 0 and c in (1, -1):
            e, k = f.args  # over integers: e // k <= -rest iff e <= k * (1 - rest) - 1; e // k >= rest iff e >= k * rest
            return self.le0(e + k * rest - k + 1 if c == 1 else k * rest - e, span)
        raise _NotBand

    def case(self, cond: Expr, negate: bool, d: sympy.Expr, span: Span) -> list[_Piece]:
        """Pieces for (cond, negated if asked) and d <= 0 (d expanded); a case that cannot hold costs
        nothing more."""
        if (cond, negate) not in self.conditions:
            self.conditions[cond, negate] = self.formula(cond, negate)
        where = self.conditions[cond, negate]
        return self.intersect(where, self.le0(d, span, True)) if where else []

    @staticmethod
    def plus(x: sympy.Expr, rest: sympy.Expr) -> sympy.Expr:
        """expand(x + rest) for an expanded rest (a long sum need not be expanded again)."""
        return sympy.expand(x) + rest

    def has_kv(self, x: sympy.Expr) -> bool:
        return x.has(_KV) or bool(x.free_symbols & self.kv_conds)

    def at_most_zero(self, d: sympy.Expr, span: Span) -> Expr:
        """The kv-free condition d <= 0 as IR, written P <= N with the terms of either sign."""
        if d.is_Integer:
            return const(bool(d <= 0), span)
        terms = sympy.Add.make_args(d)
        positive = sympy.Add(*(t for t in terms if t.as_coeff_Mul()[0] > 0))
        negative = sympy.Add(*(-t for t in terms if t.as_coeff_Mul()[0] < 0))
        return Expr("le", (self.to_ir(positive, span), self.to_ir(negative, span)), span=span)

    # IR <-> sympy
    def type(self, e: Expr) -> str:
        return infer(e, self.spec, self.types)

    def atom(self, e: Expr, integer: bool = True) -> sympy.Symbol:
        if e not in self.symbols:
            name = e.value if e.op in ("index_var", "shape", "param") else f"_{len(self.symbols)}"
            symbol = sympy.Symbol(name, integer=True) if integer else sympy.Symbol(name)
            self.symbols[e], self.ir[symbol] = symbol, e
        return self.symbols[e]

    def sym(self, e: Expr) -> sympy.Expr:
        """An int IR expression in sympy: kv-free non-arithmetic nodes become opaque symbols."""
        if e.op == "const":
            return sympy.Integer(e.literal)
        if e.op in ("add", "sub", "mul", "neg"):
            args = [self.sym(a) for a in e.args]
            return {"add": sympy.Add, "mul": sympy.Mul}.get(e.op, lambda a, b=None: -a if b is None else a - b)(*args)
        if e == Expr("index_var", value="kv") or not uses(e, "index_var", "kv"):
            return self.atom(e)
        if e.op == "where":
            marker = self.atom(e.args[0], integer=False)
            if uses(e.args[0], "index_var", "kv"):
                self.kv_conds.add(marker)
            return _WHERE(marker, *(self.sym(a) for a in e.args[1:]))
        if e.op in _FUNCS:
            return _FUNCS[e.op](*(self.sym(a) for a in e.args))
        raise _NotBand  # kv under %, a load, bitand, ...

    def to_ir(self, x: sympy.Expr, span: Span) -> Expr:
        if x.is_Integer:
            return const(int(x), span)
        if x.is_Symbol:
            return self.ir[x]
        if x.is_Add:
            return self.sum_ir(x.as_ordered_terms(), span)
        if x.is_Mul or x.is_Pow:
            return self.product_ir(x, span)
        if x.func in _OPS:
            return Expr(_OPS[x.func], tuple(self.to_ir(a, span) for a in x.args), span=span)
        raise _NotBand

    def sum_ir(self, terms, span: Span) -> Expr:
        signed = [(bool(t.as_coeff_Mul()[0] < 0), t) for t in terms]
        signed.sort(key=lambda st: (st[0], _Q not in st[1].free_symbols))  # q + SKV - SQ: q, then positives
        negative, first = signed[0]
        out = self.to_ir(-first if negative else first, span)
        out = Expr("neg", (out,), span=span) if negative else out
        for negative, t in signed[1:]:
            out = Expr("sub" if negative else "add", (out, self.to_ir(-t if negative else t, span)), span=span)
        return out

    def product_ir(self, x: sympy.Expr, span: Span) -> Expr:
        coeff, factors = x.as_coeff_mul()
        if not coeff.is_Integer:
            raise _NotBand
        parts = []
        for f in factors:
            base, power = f.as_base_exp()
            if not (power.is_Integer and power > 0):
                raise _NotBand
            parts += [self.to_ir(base, span)] * int(power)
        out = functools.reduce(lambda a, b: Expr("mul", (a, b), span=span), parts)
        if coeff == -1:
            return Expr("neg", (out,), span=span)
        return out if coeff == 1 else Expr("mul", (const(int(coeff), span), out), span=span)

    # pieces -> bands
    def band(self, piece: _Piece) -> Band:
        span = self.span
        lo = self.extreme("max", piece.los)
        hi = self.extreme("min", piece.his)
        if piece.conds:
            cond = functools.reduce(lambda a, b: Expr("and", (a, b), span=span), piece.conds)
            skv_last = Expr("sub", (Expr("shape", value="SKV", span=span), const(1, span)), span=span)
            hi = Expr("where", (cond, skv_last if hi is None else hi, const(-1, span)), span=span)
        return Band(lo, hi)

    def extreme(self, op: str, bounds: tuple[_Bound, ...]) -> Expr | None:
        exprs = [self.to_ir(b.value, b.span) for b in bounds]
        return functools.reduce(lambda a, b: Expr(op, (a, b), span=self.span), exprs) if exprs else None


# ------------------------------------------------------------------ evaluation


def _f64(x: torch.Tensor) -> torch.Tensor:
    return x if x.is_floating_point() else x.double()


def _int_floordiv(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a // b, with a // 0 = 0 on integers (language.md section 4), as the reference."""
    if a.is_floating_point() or b.is_floating_point():
        return torch.div(a, b, rounding_mode="floor")
    return torch.where(b == 0, 0, torch.div(a, torch.where(b == 0, 1, b), rounding_mode="floor"))


def _int_mod(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a % b (sign of the divisor, as Python's %), with a % 0 = a on integers."""
    if a.is_floating_point() or b.is_floating_point():
        return torch.remainder(a, b)
    return torch.where(b == 0, a, torch.remainder(a, torch.where(b == 0, 1, b)))


_OPERATORS = {
    "add": torch.add, "sub": torch.sub, "mul": torch.mul, "neg": torch.neg,
    "truediv": lambda a, b: _f64(a) / _f64(b),
    "floordiv": _int_floordiv, "mod": _int_mod,
    "lt": torch.lt, "le": torch.le, "gt": torch.gt, "ge": torch.ge, "eq": torch.eq, "ne": torch.ne,
    "and": torch.logical_and, "or": torch.logical_or, "not": torch.logical_not,
}


def _function(op: ops.Op) -> Callable:
    """A built-in on tensors, its float arguments in float64."""
    if op.rule != "float":
        return op.tensor
    return lambda *args: op.tensor(*(_f64(a) for a in args))


_TORCH = {**_OPERATORS, **{name: _function(op) for name, op in ops.OPS.items()}}


def evaluate_bands(bands, spec: Spec, q_index: torch.Tensor, sizes, runtime: dict | None = None,
                   inputs: dict | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(lo, hi) per band as int64 [B, H, len(q_index)], clamped to [0, SKV - 1]; empty where lo > hi.

    sizes: the shape symbols (a dict, or attnspec.sample.Sizes); runtime: runtime param values
    (params missing there take their declared default); inputs: the input tensors. Floats are
    computed in float64.
    """
    if bands is None:
        raise ValueError("evaluate_bands: the mask has no band form (key_bands returned None)")
    sizes = sizes.symbols() if hasattr(sizes, "symbols") else dict(sizes)
    values = _Interpreter(spec, q_index, sizes, runtime or {}, inputs or {})
    shape, last = (sizes["B"], sizes["H"], q_index.numel()), sizes["SKV"] - 1
    out = []
    for band in bands:
        lo = values(band.lo) if band.lo is not None else values.tensor(0)
        hi = values(band.hi) if band.hi is not None else values.tensor(last)
        out.append((lo.long().clamp(min=0).broadcast_to(shape), hi.long().clamp(max=last).broadcast_to(shape)))
    return out


class _Interpreter:
    """Evaluates kv-free IR over (b [B,1,1], h [1,H,1], q [1,1,NQ]) with the reference's semantics."""

    def __init__(self, spec: Spec, q_index: torch.Tensor, sizes: dict, runtime: dict, inputs: dict):
        self.spec, self.sizes, self.runtime, self.inputs = spec, sizes, runtime, inputs
        self.device = q_index.device
        self.index = {
            "b": torch.arange(sizes["B"], device=self.device).view(-1, 1, 1),
            "h": torch.arange(sizes["H"], device=self.device).view(1, -1, 1),
            "q": q_index.long().view(1, 1, -1),
        }

    def tensor(self, value) -> torch.Tensor:
        dtype = torch.float64 if isinstance(value, float) else None
        return torch.as_tensor(value, dtype=dtype, device=self.device)

    def __call__(self, e: Expr) -> torch.Tensor:
        op = e.op
        if op == "const":
            return self.tensor(e.literal)
        if op == "index_var":
            if e.value not in self.index:
                raise ValueError(f"a band bound cannot use '{e.value}'")
            return self.index[e.value]
        if op == "shape":
            return self.tensor(self.sizes[e.value])
        if op == "param":
            value = self.runtime.get(e.value)
            return self.tensor(self.spec.param(e.value).default.literal if value is None else value)
        if op == "load":
            return self.load(e)
        if op not in _TORCH:
            raise ValueError(f"cannot evaluate '{op}' in a band bound")
        return _TORCH[op](*(self(a) for a in e.args))

    def load(self, e: Expr) -> torch.Tensor:
        table = self.inputs[e.value].to(self.device)
        table = table.double() if table.is_floating_point() else (table if table.dtype == torch.bool else table.long())
        index = [self(a).long().clamp(0, size - 1) for a, size in zip(e.args, table.shape)]
        return table[tuple(index)] if index else table
