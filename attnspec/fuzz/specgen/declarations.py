"""The declarations of a generated spec: `param`s, `input`s (`INPUT_KINDS`) and `let`s (`LET_KINDS`).

Each declaration offers what it declares to the `Env` as terms (with their needs), so the statements
drawn after it can read it; the knobs (`_int_knob`, `_float_knob`, `_divisor_knob`) pick a literal or
a param in range for a window, a cap, a chunk, a grid width.
"""

from __future__ import annotations

from hypothesis import strategies as st

from .terms import (
    CONSTANT,
    MASK,
    ROW_MAP,
    SCORE,
    Env,
    Term,
    View,
    _chance,
    _float_literal,
    _pick,
    _tame_int,
    bool_expr,
    compound,
    float_expr,
    int_expr,
    literal,
)

# Safe names (none reserved, with or without a numeric suffix); every declared name gets a suffix
# that is unique in the spec.
PARAM_NAMES = {
    "int": ("window", "chunk", "stride", "radius", "prefix", "sinks", "offset", "width", "span"),
    "float": ("cap", "tau", "slope", "temp", "alpha", "beta", "gain", "margin"),
    "bool": ("flag", "use_bias", "local", "causal_on", "wide"),
}
INPUT_NAMES = ("bias", "table", "doc", "docs", "keep_key", "gate", "kind", "rel", "gains", "shift")
LET_NAMES = ("dist", "near", "band", "seg", "pos", "lag", "part", "cell", "step", "mix")
ROW_VALUE_NAMES = ("warmth", "gain_row", "focus")
ROW_TABLE_NAMES = ("rel_logit", "dist_row")
GRID_NAMES = (("qy", "qx"), ("ky", "kx"))
FLOAT_DTYPES = ("float32", "float16", "bfloat16", "float64")
INT_DTYPES = ("int32", "int64")


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


def _indexed_input(env: Env, pool: list, base: str, index: str, needs: set, declared: str) -> list[str]:
    """Declare `input NAME: DECLARED` and offer its read NAME[INDEX] (which needs `needs`) in `pool`."""
    name = env.fresh(base)
    pool.append(Term(f"{name}[{index}]", frozenset(needs | {"load"})))
    return [f"input {name}: {declared}"]


def _head_bias(draw, env: Env) -> list[str]:
    return _indexed_input(env, env.floats, "bias", "h", {"h"}, f"{_float_dtype(draw)}[H]{_learnable(draw)}")


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
    declared = f"{_float_dtype(draw)}[H, SQ + SKV]{_learnable(draw)}"
    return _indexed_input(env, env.floats, "table", "h, kv - q + SQ", {"h", "q", "kv"}, declared)


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
    return _indexed_input(env, env.bools, "keep_key", "b, kv", {"b", "kv"}, "bool[B, SKV]")


def _head_flag(draw, env: Env) -> list[str]:
    return _indexed_input(env, env.bools, "gate", "h", {"h"}, "bool[H]")


def _head_kind(draw, env: Env) -> list[str]:
    return _indexed_input(env, env.ints, "kind", "h", {"h"}, f"{draw(st.sampled_from(INT_DTYPES))}[H]")


def _query_gain(draw, env: Env) -> list[str]:
    declared = f"{_float_dtype(draw)}[B, H, SQ]{_learnable(draw)}"
    return _indexed_input(env, env.floats, "gains", "b, h, q", {"b", "h", "q"}, declared)


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


def _row_value_let(draw, env: Env) -> list[str]:
    """A number per row of q or k from its vector, offered to the score mod, the weight and (q) the sink."""
    target = draw(st.sampled_from(("q", "k")))
    name = env.fresh(draw(st.sampled_from(ROW_VALUE_NAMES)))
    view = env.view(ROW_MAP)
    value = _pick(
        draw,
        (2, lambda: f"1.0 + softplus(0.1 * sum({target}))"),
        (2, lambda: f"tanh(norm({target}) / sqrt(float(D)))"),
        (1, lambda: f"sigmoid(0.1 * sum({target}) * {_float_knob(draw, env, view, 0.25, 2.0).wrapped()} + "
                    f"{float_expr(draw, view, 1).wrapped()})"),
    )()
    env.floats.append(Term(name, frozenset({"q" if target == "q" else "kv", "row_value"})))
    return [f"let {name} per {target} = {value}"]


def _row_table_let(draw, env: Env) -> list[str]:
    """A table per row of q or k over clipped distances (relative logits with a fixed smooth embedding
    of each distance, as Transformer-XL's sinusoids are), offered to the score mod, the weight and masks as its entry at each pair's
    distance; small tables are picked from tiles by the triton kernels, long ones loaded per pair."""
    target = draw(st.sampled_from(("q", "k")))
    name = env.fresh(draw(st.sampled_from(ROW_TABLE_NAMES)))
    reach = draw(st.sampled_from(("2", "5", "SQ")))  # SQ: a table too long for a tile
    rate = _float_knob(draw, env, env.view(ROW_MAP), 0.05, 0.5)
    distance = "kv - q" if target == "q" else "q - kv"
    line = (f"let {name}[r: 2 * {reach} + 1] per {target}[i, f] = "
            f"sum({target} * tanh({rate.wrapped()} * float((r + 1) * (f + 1) % 7 - 3))) / sqrt(float(D))")
    read = f"{name}[clamp({distance}, -{reach}, {reach}) + {reach}]"
    env.floats.append(Term(read, frozenset({"q", "kv", "row_value"} | ({"shape"} if reach == "SQ" else set()) | rate.needs)))
    return [line]


LET_KINDS = (_plain_let, _grid_let, _tuple_let, _row_value_let, _row_table_let)
