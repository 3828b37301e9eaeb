"""The statements of a generated spec: masks, score mods, `scale =`, `gqa group =`, normalizations,
block selections, and the `FLAWS` that break a spec on purpose.

Each statement kind is a tuple of template functions `(draw, env) -> str` (`MASK_TEMPLATES`,
`SCORE_TEMPLATES`, ...), simplest first, reading only the terms of the `Env` that its place allows.
"""

from __future__ import annotations

from hypothesis import strategies as st

from .declarations import ROW_VALUE_NAMES, _divisor_knob, _float_knob, _int_knob
from .terms import (
    AMOUNT,
    BLOCK_RULE,
    BLOCK_SCORE,
    MASK,
    MAX_DEPTH,
    ROW_MAP,
    SCALE,
    SCORE_MOD,
    SINK,
    WEIGHT,
    Env,
    Term,
    View,
    _chance,
    _float_leaf,
    _float_literal,
    _pick,
    bool_expr,
    call,
    compound,
    float_expr,
)

BLOCK_SIZES = (16, 32, 64)
ODD_BLOCK_SIZES = (8, 24, 48, 12, 100)


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


def _row_value_mask(draw, env: Env) -> str:
    """Token pruning: a causal mask that also drops the pairs whose per-row value (of the query or the
    key) is below a threshold; a causal mask where no per-row value may be read."""
    values = [t.text for t in env.floats if "row_value" in t.needs]
    if not values:
        return _causal(draw, env)
    return f"{_causal(draw, env)} and {draw(st.sampled_from(values))} >= {_float_literal(draw, -1.0, 1.0).text}"


def _mask(draw, env: Env) -> str:
    body = _pick(
        draw,
        (6, lambda: _mask_template(draw, env)),
        (2, lambda: _random_mask(draw, env)),
        (2, lambda: _combined_mask(draw, env)),
        (3, lambda: _row_value_mask(draw, env)),
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
# linear attention: the weight is the score (positive where prologues make q and k so), decayed per head
LINEAR = ("", "(decay = 0.9)", "(decay = 2.0 ** (-float(h + 1)))", "(normalized = false)",
          "(decay = sigmoid(float(h) - 1.0), normalized = false)")
DENOMINATOR = ("1.0", "abs(score)", "abs(tanh(score))", "exp(score)", "relu(score) + 1.0", "abs(exp(score) - 1.0)")  # f >= 0


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
        (3, lambda: f"normalize rownorm({_weight(draw, env, NEGATIVE_ROWNORM)}, den = {_weight(draw, env, DENOMINATOR)})"),
        (2, lambda: f"normalize linear{draw(st.sampled_from(LINEAR))}"),
    )()


# ------------------------------------------------------------------ prologues and the epilogue

# the names a row map gives its row and feature indices (no declaration is drawn with them)
ROW_INDEX, FEATURE_INDEX = "r", "f"


def _rope(draw, env: Env, target: str) -> str:
    base = draw(st.sampled_from(("10000.0", "100.0", "2.0")))
    angle = f"float({ROW_INDEX}) * {base} ** (-2.0 * float({FEATURE_INDEX}) / float(D))"
    return f"prologue {target}[{ROW_INDEX}, {FEATURE_INDEX}] = rope({target}, {angle})"


def _unit(draw, env: Env, target: str) -> str:
    return f"prologue {target} = {target} / max(norm({target}), 1e-06)"


def _rms(draw, env: Env, target: str) -> str:
    gain = _float_knob(draw, env, env.view(ROW_MAP), 0.25, 2.0)
    return f"prologue {target} = {target} * {gain.wrapped()} / sqrt(sum({target} * {target}) / float(D) + 1e-06)"


def _affine(draw, env: Env, target: str) -> str:
    view = env.view(ROW_MAP)
    shift = float_expr(draw, view, 1)
    return f"prologue {target} = {target} * {_float_knob(draw, env, view, 0.25, 2.0).wrapped()} + tanh({shift.text})"


def _mixed(draw, env: Env, target: str) -> str:
    """The row times a fixed matrix of (g, f) (a learned projection's shape, without an input)."""
    mix = draw(st.sampled_from(("3", "5", "7")))
    return (f"prologue {target}[{ROW_INDEX}, {FEATURE_INDEX}] = sum({target}[g] * tanh(float((g * {mix} + {FEATURE_INDEX} * 2) % 11 - 5))"
            f" for g) / sqrt(float(D))")


def _projection(draw, env: Env, target: str) -> list[str]:
    """The row times a learnable matrix per head (its own input), maybe under a softmax over the features
    (Hedgehog's feature map); q and k only (v's features need not number D)."""
    name, heads = f"proj_{target}", "H" if target == "q" else "HKV"
    value = f"sum({target}[g] * {name}[h, g, {FEATURE_INDEX}] for g) / sqrt(float(D))"
    if draw(st.booleans()):
        value = f"softmax({value})"
    return [f"input {name}: float32[{heads}, D, D] learnable", f"prologue {target}[{ROW_INDEX}, {FEATURE_INDEX}] = {value}"]


def _softmax(draw, env: Env, target: str) -> str:
    view = env.view(ROW_MAP)
    return f"prologue {target} = softmax({target} * {_float_knob(draw, env, view, 0.25, 2.0).wrapped()})"


def _softmax_rows(draw, env: Env, target: str) -> str:
    return f"prologue {target} = softmax_rows({target})"


PROLOGUE_TEMPLATES = ((3, _rope), (2, _unit), (1, _rms), (2, _affine), (1, _mixed), (1, _softmax), (1, _softmax_rows),
                      (2, _projection))


def _prologues(draw, env: Env) -> list[str]:
    """Zero to three prologues (a data-dependent selection pools q and k after theirs)."""
    lines = []
    for target in ("q", "k", "v"):
        if not _chance(draw, 12):
            continue
        # rope pairs D features, a projection is D x D
        templates = PROLOGUE_TEMPLATES[1:-1] if target == "v" else PROLOGUE_TEMPLATES
        found = _pick(draw, *templates)(draw, env, target)
        lines += [found] if isinstance(found, str) else found  # a template may declare its input
    return lines


def _epilogue(draw, env: Env) -> str | None:
    if not _chance(draw, 10):
        return None
    view = env.view(ROW_MAP)
    return _pick(
        draw,
        (2, lambda: f"epilogue out = out * sigmoid({float_expr(draw, view, 1).text})"),
        (1, lambda: "epilogue out = out / max(norm(out), 1e-06)"),
        (1, lambda: f"epilogue out[{ROW_INDEX}, {FEATURE_INDEX}] = out + 0.01 * float({FEATURE_INDEX} + {ROW_INDEX})"),
        (3, lambda: _affine_epilogue(draw, env)),
    )()


def _affine_epilogue(draw, env: Env) -> str:
    """N09's form: out scaled and shifted by sum_kept(v), with per-query values where there are some."""
    per_query = [t.text for t in env.floats if t.needs == frozenset({"q", "row_value"})]
    factors = per_query + ["0.5", "2.0", "-1.0"]
    alpha, beta = draw(st.sampled_from(factors)), draw(st.sampled_from(factors + ["0.1"]))
    return f"epilogue out = {alpha} * out + {beta} * sum_kept(v)"


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


def _pooled_value(draw, env: Env) -> tuple[list[str], str]:
    """(lines, term): a per-row value pooled per block, `+ 0.5 * mean(t)`, of a value the spec has, or of
    one declared here (its `let` line), or nothing."""
    values = [t.text for t in env.floats if "row_value" in t.needs]
    if not _chance(draw, 40):
        return [], ""
    lines = []
    if not values or _chance(draw, 30):
        target = draw(st.sampled_from(("q", "k")))
        name = env.fresh(draw(st.sampled_from(ROW_VALUE_NAMES)))
        lines.append(f"let {name} per {target} = tanh(norm({target}) / sqrt(float(D)))")
        values = [name]
    return lines, f" + 0.5 * {draw(st.sampled_from(('mean', 'max', 'min')))}({draw(st.sampled_from(values))})"


def _amount(draw, env: Env, criterion: str) -> str:
    """k of top(k), t of threshold(t), p of share(p): in range when known at compile time."""
    if criterion == "top":
        knobs = [t for t, default, runtime in env.int_knobs if runtime or default >= 1]  # runtime: checked on each call
        return draw(st.sampled_from(knobs)).text if knobs and _chance(draw, 30) else str(draw(st.integers(1, 4)))
    lo, hi = (0.05, 1.0) if criterion == "share" else (-2.0, 2.0)
    return _float_knob(draw, env, env.view(AMOUNT), lo, hi).text


def _options(draw, env: Env, criterion: str) -> list[str]:
    options = []
    if _chance(draw, 50):
        options.append("causal")
    if criterion != "threshold" and _chance(draw, 25):  # global changes nothing for a threshold
        options.append("global")
    if _chance(draw, 40):
        options.append(f"per {_pick(draw, (1, 'head'), (2, 'kv_head'))}")
    if _chance(draw, 40):
        options.append(f"always {_block_rule(draw, env)}")
    return list(draw(st.permutations(options)))


def _static_select(draw, env: Env) -> str:
    return f"select {_blocks(draw, env)} keep {_block_rule(draw, env)}"


def _dynamic_select(draw, env: Env) -> list[str]:
    criterion = _pick(draw, (3, "top"), (1, "threshold"), (1, "share"))
    lets, pooled = _pooled_value(draw, env)
    head = f"select {_blocks(draw, env)} {criterion}({_amount(draw, env, criterion)}) by {_block_score(draw, env)}{pooled}"
    return lets + [" ".join([head] + _options(draw, env, criterion))]


def _blocks(draw, env: Env) -> str:
    q, kv = _block_size(draw, env), _block_size(draw, env)
    return f"blocks(kv = {kv}, q = {q})" if _chance(draw, 10) else f"blocks(q = {q}, kv = {kv})"


def _select(draw, env: Env) -> str | list[str] | None:
    """No selection, a static one, or a data-dependent one (with the let of a per-row value its score
    pools, where it declares one)."""
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
