"""Typed pieces of expression text for the spec generator (see `attnspec.fuzz.specgen`).

A `Term` is a typed piece of expression text with the set of things it `needs` (index variables, the
score, inputs, runtime params, shape symbols, pooling); the needs tables below say what each place of
a spec allows (docs/language.md, section 5). An `Env` holds every term declared so far, and
`Env.view(allowed)` the ones a place accepts. The shrink-friendly choices (`_pick`, `_chance`,
`_several`), the literals and the random int, float and bool expression builders (`int_expr`,
`float_expr`, `bool_expr`) live here too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import strategies as st

from ...ops import OPS

MAX_DEPTH = 3  # operator levels of a random expression (templates add at most one more)
WILD_INTS = (2**31, 2**31 - 1, 2**32, 2**53 + 1, 2**62, 2**63 - 1)

# The needs a place allows (docs/language.md, section 5). Each term needs index variables, "score",
# "score_let" (a let of the score: score mods only), "load" (inputs), "runtime" (runtime params),
# "shape" (shape symbols) or "pool" (pooled vectors).
TOKEN = frozenset({"b", "h", "q", "kv", "load", "runtime", "shape"})
MASK = TOKEN
# "row_value": a per-row value (`let t per q = ...`), which selections read only pooled (_pooled_value)
SCORE_MOD = TOKEN | {"score", "score_let", "row_value"}
WEIGHT = TOKEN | {"score", "row_value"}
SINK = frozenset({"b", "h", "q", "load", "runtime", "shape", "row_value"})
BLOCK_RULE = frozenset({"b", "h", "q_block", "kv_block", "load", "runtime", "shape"})
BLOCK_SCORE = BLOCK_RULE | {"pool"}
AMOUNT = frozenset({"runtime", "shape"})
SCALE = AMOUNT
SHAPE = frozenset({"shape"})
ROW_MAP = frozenset({"b", "h", "load", "runtime", "shape"})  # a prologue or the epilogue (beside its own row)
CONSTANT = frozenset()


# ------------------------------------------------------------------ terms and scopes


@dataclass(frozen=True)
class Term:
    """A typed piece of expression text and the needs it brings along."""

    text: str
    needs: frozenset = frozenset()
    atomic: bool = True  # usable as an operand without parentheses

    def wrapped(self) -> str:
        return self.text if self.atomic else f"({self.text})"


def compound(template: str, *parts: Term, atomic: bool = False) -> Term:
    """`template` filled with the parts (parenthesised where needed), needing all they need."""
    needs = frozenset().union(*(p.needs for p in parts))
    return Term(template.format(*(p.wrapped() for p in parts)), needs, atomic)


def call(name: str, *args: Term) -> Term:
    needs = frozenset().union(*(a.needs for a in args))
    return Term(f"{name}({', '.join(a.text for a in args)})", needs)


def literal(value) -> Term:
    """A number or bool as source text; a negative number is unary minus, so not atomic."""
    if isinstance(value, bool):
        return Term("true" if value else "false")
    text = repr(value) if isinstance(value, float) else str(value)
    return Term(text, atomic=not text.startswith("-"))


BUILTIN_INTS = (
    Term("q", frozenset({"q"})), Term("kv", frozenset({"kv"})), Term("h", frozenset({"h"})),
    Term("b", frozenset({"b"})), Term("q_block", frozenset({"q_block"})),
    Term("kv_block", frozenset({"kv_block"})),
) + tuple(Term(s, frozenset({"shape"})) for s in ("SQ", "SKV", "H", "HKV", "B", "D"))
POSITIVE_SHAPES = tuple(Term(s, frozenset({"shape"})) for s in ("H", "D", "SQ", "SKV"))
SCORE = Term("score", frozenset({"score"}))


@dataclass
class Env:
    """Everything declared so far: the terms of each type, the params that can serve as knobs, grids."""

    ints: list = field(default_factory=lambda: list(BUILTIN_INTS))
    floats: list = field(default_factory=lambda: [SCORE])
    bools: list = field(default_factory=list)
    divisors: list = field(default_factory=lambda: list(POSITIVE_SHAPES))  # ints that are never 0
    int_knobs: list = field(default_factory=list)  # (Term, default or None, runtime) of int params
    float_knobs: list = field(default_factory=list)
    grids: list = field(default_factory=list)  # ((qy, qx), (ky, kx)) Terms of 2D coordinates
    counter: int = 0

    def fresh(self, stem: str) -> str:
        self.counter += 1
        return f"{stem}{self.counter - 1}"

    def view(self, allowed: frozenset) -> "View":
        def ok(terms):
            return [t for t in terms if t.needs <= allowed]

        return View(allowed, ok(self.ints), ok(self.floats), ok(self.bools), ok(self.divisors))


@dataclass(frozen=True)
class View:
    """The terms of an Env that one place of the spec accepts."""

    allowed: frozenset
    ints: list
    floats: list
    bools: list
    divisors: list


def _pick(draw, *weighted):
    """One value of (weight, value) pairs; the first is where shrinking goes, so make it the simplest."""
    n = draw(st.integers(0, sum(w for w, _ in weighted) - 1))
    for weight, value in weighted:
        if n < weight:
            return value
        n -= weight
    raise AssertionError("unreachable")


def _chance(draw, percent: int) -> bool:
    """True with about `percent` % probability; shrinks to False."""
    return _pick(draw, (100 - percent, False), (percent, True))


_STOP = object()


@st.composite
def _one_more(draw, make, percent: int):
    """make(draw), or _STOP: one draw, so the shrinker can delete the whole of it."""
    return make(draw) if _chance(draw, percent) else _STOP


def _several(draw, make, most: int, percent: int) -> list:
    """Up to `most` values of make(draw), each with its own "one more?" choice in one draw (as in
    st.lists), so that shrinking drops any one of them without disturbing the others."""
    values = []
    while len(values) < most:
        value = draw(_one_more(make, percent))
        if value is _STOP:
            break
        values.append(value)
    return values


def _lines(groups: list) -> list[str]:
    return [line for group in groups for line in group]


# ------------------------------------------------------------------ literals


def _small_int(draw, lo: int = 0, hi: int = 16) -> int:
    return draw(st.integers(lo, hi))


def _int_literal(draw) -> Term:
    """Mostly 0..16; now and then a wild one near the limits of 32 and 64 bits."""
    return literal(_pick(draw, (49, lambda: _small_int(draw)), (1, lambda: draw(st.sampled_from(WILD_INTS))))())


def _tame_int(draw) -> Term:
    """A window, a chunk, a radius: what spec authors write (4..64), now and then 0..3 or 1 << k."""
    value = _pick(
        draw,
        (6, lambda: draw(st.integers(4, 64))),
        (2, lambda: _small_int(draw, 0, 3)),
        (1, lambda: 1 << _small_int(draw, 0, 8)),
    )
    return literal(value())


def _float_text(value: float, style: int) -> str:
    """The same number in the float spellings of the grammar: 0.5, .5, 5.000000e-01, 5.00E-01."""
    if style == 1 and 0 < value < 1:
        return repr(value)[1:]
    if style == 2:
        return f"{value:e}"
    if style == 3:
        return f"{value:.2E}"
    return repr(float(value))


def _float_literal(draw, lo: float = 0.0, hi: float = 4.0) -> Term:
    value = round(draw(st.floats(lo, hi, allow_nan=False)), 3)
    value = abs(value) if lo >= 0 else value  # round() may give -0.0
    text = _float_text(value, _pick(draw, (7, 0), (1, 1), (1, 2), (1, 3)))
    return Term(text, atomic=not text.startswith("-"))


# ------------------------------------------------------------------ expressions


def _leaf(draw, terms: list, fallback) -> Term:
    """A term in scope, or a literal (the fallback, also where shrinking goes)."""
    if not terms or not _chance(draw, 75):
        return fallback(draw)
    return draw(st.sampled_from(terms))


def int_expr(draw, view: View, depth: int = 2) -> Term:
    if depth <= 0 or not _chance(draw, 45):
        return _leaf(draw, view.ints, _int_literal)
    return _int_node(draw, view, depth - 1)


def _int_node(draw, view: View, depth: int) -> Term:
    kind = _pick(draw, (4, "arith"), (2, "div"), (2, "abs"), (1, "minmax"), (1, "clamp"), (1, "where"), (1, "bitand"), (1, "neg"),
                 (1, "ilog2"), (1, "pow2"), (1, "ceildiv"))
    sub = lambda: int_expr(draw, view, depth)  # noqa: E731 (each call draws a new operand)
    if kind == "arith":
        return compound("{} %s {}" % draw(st.sampled_from("+-*")), sub(), sub())
    if kind == "div":
        return compound("{} %s {}" % draw(st.sampled_from(("//", "%"))), sub(), _divisor(draw, view))
    if kind == "abs":
        return call("abs", sub())
    if kind == "minmax":
        return call(draw(st.sampled_from(("min", "max"))), sub(), sub())
    if kind == "clamp":
        return call("clamp", sub(), sub(), sub())
    if kind == "where":
        return call("where", bool_expr(draw, view, depth), sub(), sub())
    if kind == "bitand":
        return call("bitand", sub(), sub())
    if kind == "ilog2":
        return call("ilog2", sub())
    if kind == "pow2":  # a bounded exponent: past 62 the value overflows 64 bits, which no target checks
        return call("pow2", call("clamp", sub(), literal(-2), literal(20)))
    if kind == "ceildiv":
        return call("ceildiv", sub(), _divisor(draw, view))
    return compound("-{}", sub())


def _divisor(draw, view: View) -> Term:
    """Never zero (a zero divisor is only an error at run time): a positive literal or term."""
    return _leaf(draw, view.divisors, lambda d: literal(_small_int(d, 1, 16)))


def bool_expr(draw, view: View, depth: int = 2) -> Term:
    if depth <= 0 or not _chance(draw, 40):
        return _bool_leaf(draw, view, depth)
    kind = _pick(draw, (3, "and"), (3, "or"), (2, "not"), (1, "where"), (1, "eq"))
    if kind in ("and", "or"):
        return compound("{} %s {}" % kind, bool_expr(draw, view, depth - 1), bool_expr(draw, view, depth - 1))
    if kind == "not":
        return compound("not {}", bool_expr(draw, view, depth - 1))
    if kind == "where":
        return call("where", *(bool_expr(draw, view, depth - 1) for _ in range(3)))
    a, b = bool_expr(draw, view, depth - 1), bool_expr(draw, view, depth - 1)
    return compound("{} %s {}" % draw(st.sampled_from(("==", "!="))), a, b)


def _bool_leaf(draw, view: View, depth: int) -> Term:
    kind = _pick(draw, (6, "compare"), (2, "term"), (1, "residue"), (1, "float"), (1, "const"))
    if kind == "term" and view.bools:
        return draw(st.sampled_from(view.bools))
    if kind == "residue":
        return compound("{} % {} == {}", int_expr(draw, view, depth - 1), _divisor(draw, view), literal(_small_int(draw, 0, 3)))
    if kind == "float" and view.floats:
        return compound("{} %s {}" % _comparison(draw), float_expr(draw, view, depth - 1), float_expr(draw, view, depth - 1))
    if kind == "const":
        return literal(draw(st.booleans()))
    return compound("{} %s {}" % _comparison(draw), int_expr(draw, view, depth - 1), int_expr(draw, view, depth - 1))


def _comparison(draw) -> str:
    return draw(st.sampled_from(("<=", "<", ">=", ">", "==", "!=")))


def float_expr(draw, view: View, depth: int = 2) -> Term:
    if depth <= 0 or not _chance(draw, 45):
        return _float_leaf(draw, view)
    return _float_node(draw, view, depth - 1)


def _float_leaf(draw, view: View) -> Term:
    kind = _pick(draw, (3, "literal"), (5, "term"), (1, "int"), (1, "cast"))
    if kind == "term" and view.floats:
        return draw(st.sampled_from(view.floats))
    if kind == "int":
        return int_expr(draw, view, 0)
    if kind == "cast":
        return call("float", int_expr(draw, view, 1))
    return _float_literal(draw)


# every built-in of one number except the conversion, from the op registry
UNARY_FLOAT = tuple(name for name, op in OPS.items() if op.arity == 1 and name != "float" and op.rule != "int")  # ilog2, pow2: ints


def _float_node(draw, view: View, depth: int) -> Term:
    kind = _pick(draw, (4, "arith"), (3, "unary"), (1, "pow"), (1, "where"), (1, "minmax"), (1, "clamp"), (1, "neg"))
    sub = lambda: float_expr(draw, view, depth)  # noqa: E731
    if kind == "arith":
        return compound("{} %s {}" % draw(st.sampled_from("+-*/")), sub(), sub())
    if kind == "unary":
        return call(draw(st.sampled_from(UNARY_FLOAT)), sub())
    if kind == "pow":
        return _power(draw, sub())
    if kind == "where":
        return call("where", bool_expr(draw, view, depth), sub(), sub())
    if kind == "minmax":
        return call(draw(st.sampled_from(("min", "max"))), sub(), sub())
    if kind == "clamp":
        return call("clamp", sub(), _float_literal(draw, -4.0, 0.0), _float_literal(draw, 0.0, 4.0))
    return compound("-{}", sub())


def _power(draw, base: Term) -> Term:
    """A small constant exponent, as `**` or as pow(...)."""
    exponent = draw(st.sampled_from(("2", "3", "0.5", "1.5", "-1", "2.0")))
    if draw(st.booleans()):
        return call("pow", base, Term(exponent, atomic=not exponent.startswith("-")))
    return Term(f"{base.wrapped()} ** {exponent}", base.needs, atomic=False)
