"""Random `.attn` programs for `attnspec fuzz`: `specs()` draws the text of one spec.

What a drawn spec covers:

- `param` declarations: compile-time int / float / bool params with literal defaults, and `runtime`
  params with or without defaults;
- `input` declarations: per-head float tables, relative-position tables (`t[h, kv - q + SQ]`,
  clipped `t[h, clamp(kv - q, -r, r) + r]`), document ids (`d[b, q] == e[b, kv]`), key-padding and
  per-head bool inputs, per-head int kinds, per-query gains, 0-dim inputs read by bare name, in
  every dtype of their kind, sometimes `learnable`, their declarations sometimes below their use;
- `let` bindings: 2D grids (`let (qy, qx) = (q // W, q % W)`), int, bool and float lets, tuples,
  and lets of the score, each used only where its free variables are allowed;
- masks (zero to three `mask` statements): causal, windows, prefixes, chunks, dilation, sink tokens,
  documents, 2D neighborhoods, and random boolean expressions over the integer terms in scope;
- score mods (zero to three `score =` statements): biases, slopes, soft-caps, temperatures, length
  scaling, `where` gates, and now and then a random (wild) float expression of the score;
- `scale =`, `gqa group =`, every normalization (softmax with or without a sink, elementwise,
  rownorm, now and then a rownorm weight that can be negative) and static and data-dependent block
  selection (top / threshold / share, pooled block scores, causal, per head / kv_head, always).

Every expression is typed as it is drawn (an int, float or bool `Term`) and carries the set of
things it `needs` (index variables, the score, inputs, runtime params, shape symbols, pooling). Each
place of a spec allows a set of needs (the table of docs/language.md section 5); a term is offered
there only when its needs are allowed, so drawn specs type-check and pass the verifier. About 3% of
the specs are broken on purpose by one `FLAWS` line, to exercise the diagnostics; `specs(flaws=False)`
never draws one.

Shrinking: repeated declarations and statements are drawn by `_several`, one hypothesis draw each
(as st.lists does), so the shrinker can drop any of them; every choice is made by `_pick`, whose
first option (drawn by the smallest integer, where hypothesis shrinks to) is the simplest; and
expressions are depth-limited (at most `MAX_DEPTH` levels of operators). A spec that needs a mask
shrinks to `mask kv <= q` alone, one that needs a selection to `select blocks(q = 16, kv = 16)
top(1) by dot(mean(q), mean(k))`.

To extend it: a new statement shape is a template function `(draw, env) -> str` added to the tuple of
its statement kind (`MASK_TEMPLATES`, `SCORE_TEMPLATES`, ...), after the simpler ones; a new input
kind is a function in `INPUT_KINDS` that declares it and offers its reads as terms; a new builtin goes
into the expression builders (`_int_node`, `_float_node`, `_bool_node`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import strategies as st

MAX_DEPTH = 3  # operator levels of a random expression (templates add at most one more)
SPEC_NAME = "gen_spec"

# The needs a place allows (docs/language.md, section 5). Each term needs index variables, "score",
# "score_let" (a let of the score: score mods only), "load" (inputs), "runtime" (runtime params),
# "shape" (shape symbols) or "pool" (pooled vectors).
TOKEN = frozenset({"b", "h", "q", "kv", "load", "runtime", "shape"})
MASK = TOKEN
SCORE_MOD = TOKEN | {"score", "score_let"}
WEIGHT = TOKEN | {"score"}
SINK = frozenset({"b", "h", "q", "load", "runtime", "shape"})
BLOCK_RULE = frozenset({"b", "h", "q_block", "kv_block", "load", "runtime", "shape"})
BLOCK_SCORE = BLOCK_RULE | {"pool"}
AMOUNT = frozenset({"runtime", "shape"})
SCALE = AMOUNT
SHAPE = frozenset({"shape"})
CONSTANT = frozenset()

# Safe names (none reserved, with or without a numeric suffix); every declared name gets a suffix
# that is unique in the spec.
PARAM_NAMES = {
    "int": ("window", "chunk", "stride", "radius", "prefix", "sinks", "offset", "width", "span"),
    "float": ("cap", "tau", "slope", "temp", "alpha", "beta", "gain", "margin"),
    "bool": ("flag", "use_bias", "local", "causal_on", "wide"),
}
INPUT_NAMES = ("bias", "table", "doc", "docs", "keep_key", "gate", "kind", "rel", "gains", "shift")
LET_NAMES = ("dist", "near", "band", "seg", "pos", "lag", "part", "cell", "step", "mix")
GRID_NAMES = (("qy", "qx"), ("ky", "kx"))
FLOAT_DTYPES = ("float32", "float16", "bfloat16", "float64")
INT_DTYPES = ("int32", "int64")
BLOCK_SIZES = (16, 32, 64)
ODD_BLOCK_SIZES = (8, 24, 48, 12, 100)
WILD_INTS = (2**31, 2**31 - 1, 2**32, 2**53 + 1, 2**62, 2**63 - 1)


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
    kind = _pick(draw, (4, "arith"), (2, "div"), (2, "abs"), (1, "minmax"), (1, "clamp"), (1, "where"), (1, "bitand"), (1, "neg"))
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


UNARY_FLOAT = ("tanh", "sigmoid", "softplus", "relu", "abs", "exp", "exp2", "log", "log2", "sqrt")


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


# ------------------------------------------------------------------ params


def _param(draw, env: Env) -> str:
    ptype = draw(st.sampled_from(("int", "float", "bool")))
    name = env.fresh(draw(st.sampled_from(PARAM_NAMES[ptype])))
    runtime = _chance(draw, 35)
    default = None if runtime and _chance(draw, 40) else _param_default(draw, ptype)
    _offer_param(env, name, ptype, runtime, None if default is None else default[1])
    text = f"param {name}: {ptype}" + (" runtime" if runtime else "")
    return text + ("" if default is None else f" = {default[0]}")


def _param_default(draw, ptype: str) -> tuple[str, object]:
    """(text, value) of a literal default, now and then a constant expression."""
    if ptype == "bool":
        value = draw(st.booleans())
        return _bool_default_text(draw, value), value
    if ptype == "int":
        value = int(_tame_int(draw).text)
        if value % 2 == 0 and value > 2 and _chance(draw, 10):
            return f"2 * {value // 2}", value
        return str(value), value
    value = float(_float_literal(draw, 0.0, 50.0).text)
    if value == int(value) and _chance(draw, 20):
        return str(int(value)), value  # an int default is accepted for a float param
    return repr(value), value


def _bool_default_text(draw, value: bool) -> str:
    plain = "true" if value else "false"
    return ("not " + ("false" if value else "true")) if _chance(draw, 10) else plain


def _offer_param(env: Env, name: str, ptype: str, runtime: bool, default) -> None:
    term = Term(name, frozenset({"runtime"}) if runtime else frozenset())
    if ptype == "bool":
        env.bools.append(term)
    elif ptype == "float":
        env.floats.append(term)
        env.float_knobs.append((term, default, runtime))
    else:
        env.ints.append(term)
        env.int_knobs.append((term, default, runtime))
        if not runtime and default > 0:
            env.divisors.append(term)


def _int_knob(draw, env: Env, view: View, positive: bool = False) -> Term:
    """A window-like int: a tame literal or an int param in scope (a positive one if asked)."""
    knobs = [t for t, default, runtime in env.int_knobs if t.needs <= view.allowed]
    knobs = [t for t in knobs if t in env.divisors] if positive else knobs  # divisors: compile-time, > 0
    if knobs and _chance(draw, 50):
        return draw(st.sampled_from(knobs))
    value = _tame_int(draw)
    return literal(max(int(value.text), 1)) if positive else value


def _float_knob(draw, env: Env, view: View, lo: float, hi: float) -> Term:
    """A cap, a temperature, a slope: a literal in [lo, hi] or a float param whose default is there."""
    knobs = [t for t, default, _ in env.float_knobs if t.needs <= view.allowed and default is not None and lo <= default <= hi]
    if knobs and _chance(draw, 50):
        return draw(st.sampled_from(knobs))
    return _float_literal(draw, lo, hi)


# ------------------------------------------------------------------ inputs


def _float_dtype(draw) -> str:
    return _pick(draw, (7, "float32"), (1, "float16"), (1, "bfloat16"), (1, "float64"))


def _learnable(draw) -> str:
    return " learnable" if _chance(draw, 30) else ""


def _head_bias(draw, env: Env) -> list[str]:
    name = env.fresh("bias")
    env.floats.append(Term(f"{name}[h]", frozenset({"h", "load"})))
    return [f"input {name}: {_float_dtype(draw)}[H]{_learnable(draw)}"]


def _scalar(draw, env: Env) -> list[str]:
    """A 0-dim input, read by its bare name."""
    name = env.fresh("gain")
    kind = _pick(draw, (3, "float"), (1, "int"), (1, "bool"))
    term = Term(name, frozenset({"load"}))
    if kind == "float":
        env.floats.append(term)
        return [f"input {name}: {_float_dtype(draw)}[]{_learnable(draw)}"]
    (env.ints if kind == "int" else env.bools).append(term)
    return [f"input {name}: {draw(st.sampled_from(INT_DTYPES)) if kind == 'int' else 'bool'}[]"]


def _rel_table(draw, env: Env) -> list[str]:
    name = env.fresh("table")
    env.floats.append(Term(f"{name}[h, kv - q + SQ]", frozenset({"h", "q", "kv", "load"})))
    return [f"input {name}: {_float_dtype(draw)}[H, SQ + SKV]{_learnable(draw)}"]


def _clipped_table(draw, env: Env) -> list[str]:
    """A T5-style table over the clipped distance; its radius is a literal or a compile-time param."""
    name = env.fresh("rel")
    radius = _int_knob(draw, env, env.view(CONSTANT), positive=True)
    r = radius.wrapped()
    read = f"{name}[h, clamp(kv - q, -{r}, {r}) + {r}]"
    env.floats.append(Term(read, frozenset({"h", "q", "kv", "load"})))
    return [f"input {name}: {_float_dtype(draw)}[H, 2 * {r} + 1]{_learnable(draw)}"]


def _documents(draw, env: Env) -> list[str]:
    doc, docs = env.fresh("doc"), env.fresh("docs")
    env.ints += [Term(f"{doc}[b, q]", frozenset({"b", "q", "load"})), Term(f"{docs}[b, kv]", frozenset({"b", "kv", "load"}))]
    env.bools.append(Term(f"{doc}[b, q] == {docs}[b, kv]", frozenset({"b", "q", "kv", "load"}), atomic=False))
    dtype = draw(st.sampled_from(INT_DTYPES))
    return [f"input {doc}: {dtype}[B, SQ]", f"input {docs}: {dtype}[B, SKV]"]


def _key_padding(draw, env: Env) -> list[str]:
    name = env.fresh("keep_key")
    env.bools.append(Term(f"{name}[b, kv]", frozenset({"b", "kv", "load"})))
    return [f"input {name}: bool[B, SKV]"]


def _head_flag(draw, env: Env) -> list[str]:
    name = env.fresh("gate")
    env.bools.append(Term(f"{name}[h]", frozenset({"h", "load"})))
    return [f"input {name}: bool[H]"]


def _head_kind(draw, env: Env) -> list[str]:
    name = env.fresh("kind")
    env.ints.append(Term(f"{name}[h]", frozenset({"h", "load"})))
    return [f"input {name}: {draw(st.sampled_from(INT_DTYPES))}[H]"]


def _query_gain(draw, env: Env) -> list[str]:
    name = env.fresh("gains")
    env.floats.append(Term(f"{name}[b, h, q]", frozenset({"b", "h", "q", "load"})))
    return [f"input {name}: {_float_dtype(draw)}[B, H, SQ]{_learnable(draw)}"]


INPUT_KINDS = (_head_bias, _scalar, _documents, _rel_table, _clipped_table, _key_padding, _head_flag, _head_kind, _query_gain)


# ------------------------------------------------------------------ lets


def _grid_let(draw, env: Env) -> list[str]:
    """2D coordinates of the query and the key on a grid W wide (natten, swin, criss-cross)."""
    width = _divisor_knob(draw, env)
    lines, grid = [], []
    for axis, (row, col) in zip(("q", "kv"), GRID_NAMES):
        row, col = env.fresh(row), env.fresh(col)
        needs = width.needs | {axis}
        pair = (Term(row, needs), Term(col, needs))
        env.ints.extend(pair)
        grid.append(pair)
        lines.append(f"let ({row}, {col}) = ({axis} // {width.wrapped()}, {axis} % {width.wrapped()})")
    env.grids.append(tuple(grid))
    return lines


def _divisor_knob(draw, env: Env) -> Term:
    """A grid width or a chunk: positive and known at compile time (a literal or a param)."""
    params = [t for t in env.divisors if not t.needs]
    if params and _chance(draw, 50):
        return draw(st.sampled_from(params))
    return literal(draw(st.integers(2, 16)))


def _let_value(draw, env: Env, kind: str) -> Term:
    view = env.view(MASK)
    if kind == "int":
        return int_expr(draw, view, 2)
    if kind == "bool":
        return bool_expr(draw, view, 2)
    if kind == "float":
        return float_expr(draw, view, 2)
    return compound("{} / {}", SCORE, _float_knob(draw, env, view, 1.0, 8.0))


def _offer_let(env: Env, name: str, kind: str, value: Term) -> None:
    needs = value.needs - {"score"} | ({"score_let"} if kind == "score" else set())
    term = Term(name, frozenset(needs))
    {"int": env.ints, "bool": env.bools}.get(kind, env.floats).append(term)


def _plain_let(draw, env: Env) -> list[str]:
    kind = _pick(draw, (3, "int"), (2, "bool"), (2, "float"), (1, "score"))
    value = _let_value(draw, env, kind)
    name = env.fresh(draw(st.sampled_from(LET_NAMES)))
    _offer_let(env, name, kind, value)
    return [f"let {name} = {value.text}"]


def _tuple_let(draw, env: Env) -> list[str]:
    kinds = draw(st.lists(st.sampled_from(("int", "bool", "float")), min_size=2, max_size=3))
    values = [_let_value(draw, env, k) for k in kinds]  # drawn before the names exist: none reads another
    names = [env.fresh(draw(st.sampled_from(LET_NAMES))) for _ in kinds]
    for name, kind, value in zip(names, kinds, values):
        _offer_let(env, name, kind, value)
    return [f"let ({', '.join(names)}) = ({', '.join(v.text for v in values)})"]


LET_KINDS = (_plain_let, _grid_let, _tuple_let)


# ------------------------------------------------------------------ masks


def _causal(draw, env: Env) -> str:
    return _pick(draw, (1, "kv <= q"), (1, "kv <= q + (SKV - SQ)"), (1, "q >= kv"))


def _window(draw, env: Env) -> str:
    w = _int_knob(draw, env, env.view(MASK)).wrapped()
    return _pick(draw, (2, f"abs(q - kv) <= {w}"), (2, f"kv <= q and q - kv < {w}"), (1, f"kv - q <= {w} and q - kv <= {w}"))


def _prefix(draw, env: Env) -> str:
    p = _int_knob(draw, env, env.view(MASK)).wrapped()
    return f"kv <= q or (q < {p} and kv < {p})"


def _chunks(draw, env: Env) -> str:
    c = _divisor_knob(draw, env).wrapped()
    return _pick(draw, (1, f"kv // {c} <= q // {c}"), (1, f"q // {c} == kv // {c}"))


def _dilation(draw, env: Env) -> str:
    d = _divisor_knob(draw, env).wrapped()
    return _pick(draw, (1, f"(q - kv) % {d} == 0"), (1, f"q % {d} == kv % {d} and abs(q - kv) <= 4 * {d}"))


def _sink_tokens(draw, env: Env) -> str:
    s = _int_knob(draw, env, env.view(MASK)).wrapped()
    w = _int_knob(draw, env, env.view(MASK)).wrapped()
    return f"kv <= q and (q - kv < {w} or kv < {s})"


def _neighborhood(draw, env: Env) -> str:
    if not env.grids:
        return _window(draw, env)
    (qy, qx), (ky, kx) = draw(st.sampled_from(env.grids))
    r = _int_knob(draw, env, env.view(MASK)).wrapped()
    return _pick(
        draw,
        (2, f"abs({ky.text} - {qy.text}) <= {r} and abs({kx.text} - {qx.text}) <= {r}"),
        (1, f"{qy.text} == {ky.text} or {qx.text} == {kx.text}"),
        (1, f"abs({ky.text} - clamp({qy.text}, {r}, 8 - 1 - {r})) <= {r}"),
    )


def _random_mask(draw, env: Env) -> str:
    return bool_expr(draw, env.view(MASK), draw(st.integers(1, MAX_DEPTH))).text


def _combined_mask(draw, env: Env) -> str:
    a, b = (_mask_template(draw, env) for _ in range(2))
    return f"({a}) {draw(st.sampled_from(('and', 'or')))} ({b})"


def _bool_term_mask(draw, env: Env) -> str:
    view = env.view(MASK)
    return draw(st.sampled_from(view.bools)).text if view.bools else _causal(draw, env)


MASK_TEMPLATES = (_causal, _window, _prefix, _chunks, _dilation, _sink_tokens, _neighborhood, _bool_term_mask)


def _mask_template(draw, env: Env) -> str:
    template = draw(st.sampled_from(MASK_TEMPLATES))
    return template(draw, env)


def _mask(draw, env: Env) -> str:
    body = _pick(
        draw,
        (6, lambda: _mask_template(draw, env)),
        (2, lambda: _random_mask(draw, env)),
        (2, lambda: _combined_mask(draw, env)),
    )()
    return f"mask {body}"


# ------------------------------------------------------------------ score mods


def _bias(draw, env: Env, view: View) -> str:
    return f"score + {_float_leaf(draw, view).wrapped()}"


def _slope(draw, env: Env, view: View) -> str:
    heads = [t for t in view.floats if t.text.endswith("[h]")]
    m = draw(st.sampled_from(heads)) if heads and _chance(draw, 40) else _float_knob(draw, env, view, 0.01, 1.0)
    return f"score - {m.wrapped()} * abs(q - kv)"


def _softcap(draw, env: Env, view: View) -> str:
    c = _float_knob(draw, env, view, 5.0, 50.0).wrapped()
    return f"{c} * tanh(score / {c})"


def _temperature(draw, env: Env, view: View) -> str:
    t = _float_knob(draw, env, view, 0.25, 4.0).wrapped()
    n_train = draw(st.integers(2, 128))  # log(1) would divide by zero
    return _pick(draw, (2, f"score / {t}"), (1, f"score * {t}"), (1, f"score * log(SKV) / ({t} * log({n_train}))"))


def _gated(draw, env: Env, view: View) -> str:
    cond = bool_expr(draw, view, 1).text
    extra = _float_leaf(draw, view).wrapped()
    return _pick(draw, (1, f"where({cond}, score, score + {extra})"), (1, f"score + where({cond}, 0.0, -1.0)"))


def _small_mod(draw, env: Env, view: View) -> str:
    return f"score + {float_expr(draw, view, 2).wrapped()}"


def _wild_mod(draw, env: Env, view: View) -> str:
    return float_expr(draw, view, MAX_DEPTH).text


SCORE_TEMPLATES = ((4, _bias), (3, _slope), (3, _softcap), (3, _temperature), (2, _gated), (2, _small_mod), (1, _wild_mod))


def _score_mod(draw, env: Env) -> str:
    template = _pick(draw, *SCORE_TEMPLATES)
    return f"score = {template(draw, env, env.view(SCORE_MOD))}"


# ------------------------------------------------------------------ scale, gqa, normalize


def _scale(draw, env: Env) -> str:
    view = env.view(SCALE)
    value = _pick(
        draw,
        (3, lambda: _float_literal(draw, 0.05, 2.0).text),
        (1, lambda: "1 / sqrt(D)"),
        (1, lambda: f"{_float_knob(draw, env, view, 0.1, 4.0).wrapped()} / sqrt(float(D))"),
        (1, lambda: float_expr(draw, view, 2).text),
    )()
    return f"scale = {value}"


def _gqa(draw, env: Env) -> str:
    knobs = [t for t, default, runtime in env.int_knobs if not runtime and default is not None and 1 <= default <= 4]
    value = draw(st.sampled_from(knobs)).text if knobs and _chance(draw, 30) else str(draw(st.integers(1, 4)))
    return f"gqa group = {value}"


ELEMENTWISE = (
    "sigmoid(score - log(SKV))", "relu(score)", "relu(score) / SKV", "sigmoid(score)", "exp(score - 8.0)", "tanh(score)",
)
ROWNORM = (  # f >= 0
    "relu(score) ** 2", "softplus(score)", "exp(score)", "sigmoid(score)", "relu(score) + 1.0", "exp(score / 2.0)",
    "relu(score)",
)
NEGATIVE_ROWNORM = ("score", "tanh(score)", "score - 1.0")


def _sink_value(draw, env: Env) -> str:
    view = env.view(SINK)
    terms = [t for t in view.floats]
    return _pick(
        draw,
        (2, lambda: _float_literal(draw, -4.0, 4.0).text),
        (3, lambda: draw(st.sampled_from(terms)).text if terms else "0.0"),
        (1, lambda: "log(float(SKV))"),
        (2, lambda: float_expr(draw, view, 2).text),
    )()


def _weight(draw, env: Env, fixed: tuple) -> str:
    if _chance(draw, 25):
        return float_expr(draw, env.view(WEIGHT), 2).text
    return draw(st.sampled_from(fixed))


def _normalize(draw, env: Env) -> str | None:
    return _pick(
        draw,
        (1, lambda: None),
        (1, lambda: "normalize softmax"),
        (1, lambda: "normalize softmax()"),
        (4, lambda: f"normalize softmax(sink = {_sink_value(draw, env)})"),
        (4, lambda: f"normalize elementwise({_weight(draw, env, ELEMENTWISE)})"),
        (4, lambda: f"normalize rownorm({draw(st.sampled_from(ROWNORM))})"),
        (1, lambda: f"normalize rownorm({_weight(draw, env, NEGATIVE_ROWNORM)})"),
    )()


# ------------------------------------------------------------------ block selection


def _block_size(draw, env: Env) -> str:
    params = [t.text for t in env.divisors if not t.needs]
    return _pick(
        draw,
        (16, lambda: str(draw(st.sampled_from(BLOCK_SIZES)))),
        (3, lambda: str(draw(st.sampled_from(ODD_BLOCK_SIZES)))),
        (1, lambda: draw(st.sampled_from(params)) if params else "16"),
    )()


def _block_rule(draw, env: Env) -> str:
    n = draw(st.integers(0, 3))
    return _pick(
        draw,
        (2, lambda: "kv_block <= q_block"),
        (2, lambda: f"abs(q_block - kv_block) <= {n}"),
        (1, lambda: "kv_block == 0 or kv_block == q_block"),
        (1, lambda: "(kv_block // 2 <= q_block and q_block - kv_block // 2 < 2) or kv_block == 0"),
        (1, lambda: f"h % 2 == 1 and kv_block % 4 == {n}"),
        (3, lambda: bool_expr(draw, env.view(BLOCK_RULE), 2).text),
    )()


POOLED_Q = ("mean(q)", "max(q)", "min(q)")
POOLED_K = ("mean(k)", "max(k)", "min(k)")


def _vec(draw, side: tuple, view: View) -> Term:
    """A pooled vector, now and then combined with another or scaled by a number."""
    u = Term(draw(st.sampled_from(side)), frozenset({"pool"}))
    kind = _pick(draw, (6, "plain"), (1, "sum"), (1, "scaled"), (1, "divided"), (1, "neg"))
    if kind == "sum":
        return compound("{} %s {}" % draw(st.sampled_from("+-*")), u, Term(draw(st.sampled_from(side)), frozenset({"pool"})))
    if kind == "scaled":
        return compound("{} * {}", _float_leaf(draw, view), u)
    if kind == "divided":
        return compound("{} / {}", u, _float_literal(draw, 0.5, 4.0))
    return compound("-{}", u) if kind == "neg" else u


def _dot(draw, view: View) -> Term:
    return call("dot", _vec(draw, POOLED_Q, view), _vec(draw, POOLED_K, view))


def _block_score(draw, env: Env) -> str:
    view = env.view(BLOCK_SCORE)
    score = _dot(draw, view)
    if _chance(draw, 30):
        score = compound("{} + {}", score, _dot(draw, view))
    if _chance(draw, 30):
        score = compound("{} / sqrt(D)", score)
    if _chance(draw, 20):
        score = compound("{} - {} * float(abs(q_block - kv_block))", score, _float_literal(draw, 0.0, 1.0))
    if _chance(draw, 15):
        score = compound("{} + {}", score, float_expr(draw, view, 1))
    return score.text


def _amount(draw, env: Env, criterion: str) -> str:
    """k of top(k), t of threshold(t), p of share(p): in range when known at compile time."""
    if criterion == "top":
        knobs = [t for t, default, runtime in env.int_knobs if runtime or default >= 1]  # runtime: checked on each call
        return draw(st.sampled_from(knobs)).text if knobs and _chance(draw, 30) else str(draw(st.integers(1, 4)))
    lo, hi = (0.05, 1.0) if criterion == "share" else (-2.0, 2.0)
    return _float_knob(draw, env, env.view(AMOUNT), lo, hi).text


def _options(draw, env: Env) -> list[str]:
    options = []
    if _chance(draw, 50):
        options.append("causal")
    if _chance(draw, 40):
        options.append(f"per {_pick(draw, (1, 'head'), (2, 'kv_head'))}")
    if _chance(draw, 40):
        options.append(f"always {_block_rule(draw, env)}")
    return list(draw(st.permutations(options)))


def _static_select(draw, env: Env) -> str:
    return f"select {_blocks(draw, env)} keep {_block_rule(draw, env)}"


def _dynamic_select(draw, env: Env) -> str:
    criterion = _pick(draw, (3, "top"), (1, "threshold"), (1, "share"))
    head = f"select {_blocks(draw, env)} {criterion}({_amount(draw, env, criterion)}) by {_block_score(draw, env)}"
    return " ".join([head] + _options(draw, env))


def _blocks(draw, env: Env) -> str:
    q, kv = _block_size(draw, env), _block_size(draw, env)
    return f"blocks(kv = {kv}, q = {q})" if _chance(draw, 10) else f"blocks(q = {q}, kv = {kv})"


def _select(draw, env: Env) -> str | None:
    return _pick(draw, (4, lambda: None), (3, lambda: _static_select(draw, env)), (4, lambda: _dynamic_select(draw, env)))()


# ------------------------------------------------------------------ flaws (deliberately invalid specs)

FLAWS = (
    "mask kv <= nosuch0",  # an undefined name
    "mask q + true > 0",  # a bool in arithmetic
    "score = score + (q < kv)",  # a bool score
    "mask 5",  # a number as a condition
    "param need0: int\n    mask abs(q - kv) <= need0",  # a compile-time param with no value
    "select blocks(q = 0, kv = 16) keep kv_block <= q_block",  # a bad block size (and maybe a second select)
    "param sum: int = 1",  # a reserved name
    "normalize softmax(sink = float(kv))",  # kv in a sink (and maybe a second normalize)
    "gqa group = SQ",  # a shape symbol where a constant is needed
    "mask q // 2.0 < kv",  # '//' on a float
    "score = dot(mean(q), mean(k))",  # pooling outside a select
    "let (lhs0, rhs0) = (q, kv, b)",  # a tuple of the wrong length
    "mask abs(q - kv) <= 1e999",  # a float literal that overflows
)


def _flaw(draw, enabled: bool) -> str | None:
    if not enabled:
        return None
    return _pick(draw, (97, None), (3, draw(st.sampled_from(FLAWS))))


# ------------------------------------------------------------------ the spec


@st.composite
def specs(draw, flaws: bool = True) -> str:
    """The text of one random `.attn` spec named `gen_spec` (see the module docstring)."""
    env = Env()
    declarations = _declarations(draw, env)
    lets = _lines(_several(draw, lambda d: d(st.sampled_from(LET_KINDS))(d, env), 3, 45))
    body = _body(draw, env)
    decls_first = not _chance(draw, 15)  # declarations may come below their use
    lines = declarations + lets + body if decls_first else lets + body + declarations
    flaw = _flaw(draw, flaws)
    lines += [flaw] if flaw else []
    return _render(draw, lines)


def _declarations(draw, env: Env) -> list[str]:
    params = _several(draw, lambda d: _param(d, env), 4, 65)
    inputs = _lines(_several(draw, lambda d: d(st.sampled_from(INPUT_KINDS))(d, env), 3, 45))
    return params + inputs


def _body(draw, env: Env) -> list[str]:
    masks = _several(draw, lambda d: _mask(d, env), 3, 75)
    mods = _several(draw, lambda d: _score_mod(d, env), 3, 60)
    singles = [
        _scale(draw, env) if _chance(draw, 12) else None,
        _gqa(draw, env) if _chance(draw, 10) else None,
        _normalize(draw, env),
        _select(draw, env),
    ]
    return masks + mods + [s for s in singles if s]


def _render(draw, lines: list[str]) -> str:
    """The spec text, with a comment now and then (comments and blank lines only separate tokens)."""
    out = [f"attention {SPEC_NAME} {{"]
    for line in lines:
        out.append(f"    {line}" + ("  # generated" if _chance(draw, 5) else ""))
    out.append("}")
    return "\n".join(out) + "\n"
