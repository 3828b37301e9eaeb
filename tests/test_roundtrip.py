"""Round trips: parse -> print -> parse gives the same IR, and printing is a fixed point.

Covers every examples/*.attn file, a list of hand-written specs that stress precedence and every
statement form, and random well-typed expression trees generated with hypothesis (the IR built
directly must come back unchanged from its printed text).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attnspec.api import load_program, lower
from attnspec.frontend import parse_program
from attnspec.ir import Expr, Program, const
from attnspec.printer import expr_text, print_program

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.attn"))


def roundtrip(text: str, name: str = "<string>") -> tuple[Program, str]:
    """Check the round-trip properties for one source text; return the parsed program and its print."""
    program = parse_program(text, name)
    printed = print_program(program)
    again = parse_program(printed, name)
    assert again == program, f"parse(print(ir)) != ir\n--- printed:\n{printed}"
    assert print_program(again) == printed, "print is not a fixed point after one round"
    return program, printed


# ------------------------------------------------------------------ examples


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_roundtrip(path: Path):
    program, printed = roundtrip(path.read_text(encoding="utf-8"), str(path))
    assert program.specs, "an example defines at least one spec"
    load_program(printed)  # the printed text is itself a valid (verified) program


def test_examples_present_or_skip():
    if not EXAMPLES:
        pytest.skip("no examples/*.attn yet")
    assert all(p.suffix == ".attn" for p in EXAMPLES)


# ------------------------------------------------------------------ hand-written tricky specs

TRICKY = {
    "neg_pow": """
        attention a {
            score = score + -2 ** 2 + (-2) ** 2 + 2 ** -1 + 2 ** 3 ** 2 + (2 ** 3) ** 2
        }
    """,
    "sub_assoc": """
        attention a {
            param a: int = 1
            param c: int = 3
            mask (q - a) - c <= kv and q - (a - c) >= kv and q - a - c != kv
        }
    """,
    "div_assoc": """
        attention a {
            mask q // 2 // 3 == kv // (2 // 3 + 1) and q % (kv + 1) % 3 == 0 and q * (kv * 2) == (q * kv) * 2
        }
    """,
    "mixed_arith": """
        attention a {
            score = score * 2 - score / (3 + h) + -score * -1.5 - (score - 1) * (score + 1)
        }
    """,
    "not_eq": """
        attention a {
            param flag: bool = true
            mask not q == kv and (not flag) == (q < kv) and not (q < kv or kv == 0) and not not flag
        }
    """,
    "bool_assoc": """
        attention a {
            mask (q < 1 or q < 2) or q < 3
            mask q < 1 or (q < 2 or q < 3)
            mask (q < 1 and q < 2) and (q < 3 and q < 4)
            mask q < 1 and (q < 2 or q < 3) or q < 4
        }
    """,
    "nested_where": """
        attention a {
            param w: int = 4
            score = where(q < w, where(kv < w, score, 0.5 * score), where(h == 0, -score, score + 1))
            mask where(q > kv, q - kv, kv - q) <= where(h % 2 == 0, w, 2 * w)
        }
    """,
    "let_tuples": """
        attention a {
            param W: int = 8
            let (qy, qx) = (q // W, q % W)
            let (ky, kx) = (kv // W, kv % W)
            let d = abs(qy - ky) + abs(qx - kx)
            let (near, far) = (d <= 2, d > 6)
            mask near or far
            score = score - float(d) / 10
        }
    """,
    "score_compose": """
        attention a {
            param cap: float = 30.0
            input slope: float32[H]
            score = score - slope[h] * abs(q - kv)
            let bias = score * 0.5
            score = cap * tanh(score / cap)
            score = score + bias
        }
    """,
    "multi_mask": """
        attention a {
            param window: int = 16
            mask kv <= q
            mask q - kv < window or kv < 4
            mask kv != 3
        }
    """,
    "softmax_sink": """
        attention a {
            input sink_logit: float32[H] learnable
            mask kv <= q
            normalize softmax(sink = sink_logit[h] - 1.0)
        }
    """,
    "softmax_explicit": """
        attention a {
            normalize softmax
        }
    """,
    "softmax_empty_parens": """
        attention a {
            normalize softmax()
        }
    """,
    "elementwise": """
        attention a {
            mask kv <= q + (SKV - SQ)
            normalize elementwise(sigmoid(score - log(SKV)))
        }
    """,
    "rownorm": """
        attention a {
            param p: float = 2.0
            normalize rownorm(relu(score) ** p + softplus(score) * 0.0)
        }
    """,
    "scale_gqa": """
        attention a {
            param g: int = 2
            scale = 1.0 / sqrt(D) * 0.5
            gqa group = g
            mask kv <= q
        }
    """,
    "select_keep": """
        attention a {
            mask kv <= q
            select blocks(q = 16, kv = 8) keep (kv_block // 2 <= q_block and q_block - kv_block // 2 < 2) or kv_block == 0
        }
    """,
    "select_top_all_options": """
        attention a {
            param n: int = 2
            mask kv <= q
            select blocks(kv = 32, q = 16) top(n + 1) by dot(mean(q), mean(k)) * 2 - dot(max(q), min(k)) causal per kv_head always kv_block == 0 or kv_block == q_block
        }
    """,
    "select_top_per_head": """
        attention a {
            select blocks(q = 64, kv = 64) top(3) by dot(mean(q) - min(q), max(k) * 0.5) per head
        }
    """,
    "select_threshold": """
        attention a {
            param t: float runtime = -0.25
            select blocks(q = 16, kv = 16) threshold(t) by (dot(mean(q), max(k)) + dot(mean(q), min(k))) / sqrt(D) causal always kv_block == q_block
        }
    """,
    "select_share": """
        attention a {
            param p: float = 0.7
            select blocks(q = 16, kv = 16) share(p) by dot(mean(q) / 2, -mean(k)) always abs(q_block - kv_block) <= 1
        }
    """,
    "params": """
        attention a {
            param neg_f: float = -1.5
            param neg_small: float = -2.5e-3
            param neg_i: int = -3
            param f_from_int: float = 2
            param big: int = 9223372036854775807
            param tiny: float = 1e-300
            param huge: float = 1.5e300
            param flag: bool = false
            param rt: float runtime = -0.5
            param rt_nodefault: int runtime
            param rt_bool: bool runtime = true
            score = score * neg_f + neg_small + float(neg_i) + f_from_int + tiny + huge * 0.0 + rt
            mask (kv < big or flag or rt_bool) and kv >= rt_nodefault
        }
    """,
    "scalar_inputs": """
        attention a {
            input temp: float32[]
            input offset: int64[]
            input gate: bool[]
            input table: float64[H, 2 * SQ - 1] learnable
            input ids: int32[B, SKV]
            score = score * temp + table[h, kv - q + SQ - 1]
            mask kv <= q + offset and (gate or ids[b, kv] > 0)
        }
    """,
    "float_literals": """
        attention a {
            score = score + 0.1 + 1e16 + 1e-7 + .5 + 3. + 5e-324 + 1.7976931348623157e308 + 0.0
        }
    """,
    "keyword_like_names": """
        attention a {
            param by: int = 1
            param per: int = 2
            param always: int = 3
            param causal: bool = true
            param keep: int = 4
            param group: int = 1
            mask kv < by + per + always + keep and causal
            gqa group = group
        }
    """,
    "keyword_like_names_in_selection": """
        attention a {
            param by: int = 1
            param per: int = 2
            param always: int = 0
            param head: int = 1
            param keep: bool = true
            select blocks(q = 4, kv = 4) top(by) by dot(mean(q), mean(k)) * float(per + head) causal per kv_head always kv_block == always and keep
        }
    """,
    "functions": """
        attention a {
            input bits: int32[H]
            score = exp(score) + exp2(score) + log(abs(score) + 1) + log2(2.0) + sqrt(4) + pow(score, 2)
            score = score + min(score, 1) + max(0, score) + clamp(score, -1, 1) + relu(score) + float(bitand(q, bits[h]))
        }
    """,
    "two_specs": """
        attention first {
            mask kv <= q
        }
        attention second {
            param w: int = 2
            mask abs(q - kv) <= w
            normalize elementwise(sigmoid(score))
        }
    """,
    "empty_spec": """
        attention nothing {
        }
    """,
}


@pytest.mark.parametrize("name", sorted(TRICKY))
def test_tricky_roundtrip(name: str):
    program, printed = roundtrip(TRICKY[name])
    load_program(TRICKY[name])  # every tricky spec is valid, not only parseable
    load_program(printed)


def test_empty_program_roundtrip():
    program, printed = roundtrip("# only a comment\n")
    assert program.specs == () and printed == ""


def _only(text: str):
    return parse_program(text).specs[0]


@pytest.mark.parametrize(
    "source, expected",
    [
        ("-2 ** 2", Expr("neg", (Expr("pow", (const(2), const(2))),))),
        ("(-2) ** 2", Expr("pow", (Expr("neg", (const(2),)), const(2)))),
        ("2 ** 3 ** 2", Expr("pow", (const(2), Expr("pow", (const(3), const(2)))))),
        ("2 ** -1", Expr("pow", (const(2), Expr("neg", (const(1),))))),
        ("1 - 2 - 3", Expr("sub", (Expr("sub", (const(1), const(2))), const(3)))),
        ("1 - (2 - 3)", Expr("sub", (const(1), Expr("sub", (const(2), const(3)))))),
        ("-1 * 2", Expr("mul", (Expr("neg", (const(1),)), const(2)))),
        ("-(1 * 2)", Expr("neg", (Expr("mul", (const(1), const(2))),))),
    ],
)
def test_precedence_parses_as_python(source, expected):
    """The grammar gives these the Python meaning; the printer reproduces the same text."""
    spec = _only(f"attention a {{ score = score + float({source}) }}")
    got = spec.score.args[1].args[0]
    assert got == expected
    assert expr_text(got) == source
    # Python agrees on the value of the text (sanity of the intended reading).
    assert eval(source) == _py_eval(expected)  # noqa: S307 - literal arithmetic only


def _py_eval(e: Expr):
    if e.op == "const":
        return e.literal
    a = [_py_eval(x) for x in e.args]
    return {
        "neg": lambda: -a[0],
        "pow": lambda: a[0] ** a[1],
        "sub": lambda: a[0] - a[1],
        "mul": lambda: a[0] * a[1],
    }[e.op]()


def test_not_binds_looser_than_comparison():
    spec = _only("attention a { param f: bool = true\n mask not q == kv and (not f) == true }")
    left, right = spec.mask.args
    assert left == Expr("not", (Expr("eq", (Expr("index_var", value="q"), Expr("index_var", value="kv"))),))
    assert right.op == "eq" and right.args[0].op == "not"


def test_multiple_masks_are_a_conjunction_in_order():
    spec = _only("attention a { mask q < 1\n mask q < 2\n mask q < 3 }")
    assert spec.mask.op == "and" and spec.mask.args[0].op == "and"
    assert [m.args[1].literal for m in (spec.mask.args[0].args[0], spec.mask.args[0].args[1], spec.mask.args[1])] == [1, 2, 3]


def test_score_statements_compose():
    spec = _only("attention a { score = score + 1.0\n score = score * 2.0 }")
    inner = Expr("add", (Expr("score"), const(1.0)))
    assert spec.score == Expr("mul", (inner, const(2.0)))


def test_let_captures_the_score_at_its_position():
    """`let s0 = score` holds the score as of that line; later score statements must not rewrite it."""
    spec = _only("attention a { let s0 = score\n score = score * 2.0\n score = score + s0 }")
    doubled = Expr("mul", (Expr("score"), const(2.0)))
    assert spec.score == Expr("add", (doubled, Expr("score")))


def test_negative_param_defaults_are_folded_constants():
    spec = _only("attention a { param f: float = -1.5\n param i: int = -3\n param g: float = -2 }")
    assert [p.default for p in spec.params] == [const(-1.5), const(-3), const(-2.0)]


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_lowered_ir_prints_to_an_equivalent_program(path: Path):
    """What `show` prints after lowering (folded constants, casts, bound params) reads back to the same IR."""
    lowered = lower(load_program(path).specs[0])
    again = lower(load_program(print_program(Program((lowered,)))).specs[0])
    assert again == lowered


def test_int64_min_default_roundtrips():
    """-2**63 is a valid folded value but not a literal: the printer must not write -9223372036854775808."""
    roundtrip("attention a {\n    param x: int = -9223372036854775807 - 1\n    mask kv > x\n}\n")


def test_nan_constants_compare_equal():
    """Parsing the same text twice gives equal IR, also when a constant folds to NaN (IR equality is
    what round trips, caches and CSE rely on; a fresh float('nan') != float('nan'))."""
    text = "attention a {\n    param x: float = 0.0 * (1.0 / 0.0)\n    score = score * x\n}\n"
    assert parse_program(text) == parse_program(text)
    roundtrip(text)


# ------------------------------------------------------------------ random expression trees

_DECLS = """
    param n: int = 3
    param m: int runtime = 2
    param f: float = 0.5
    param flag: bool = true
    input tab: float32[H, 4]
    input idx: int32[SQ]
    input ok: bool[H]
    input temp: float32[]
"""

_INT_VARS = [Expr("index_var", value=v) for v in ("q", "kv", "h", "b")]
_INT_VARS += [Expr("shape", value=s) for s in ("B", "H", "SQ", "SKV", "D", "HKV")]
_INT_VARS += [Expr("param", value="n"), Expr("param", value="m")]

_ints = st.integers(min_value=0, max_value=2**63 - 1) | st.integers(min_value=0, max_value=40)
_floats = st.floats(min_value=0.0, allow_nan=False, allow_infinity=False).filter(lambda x: math.copysign(1.0, x) > 0)


def _node(op, *args):
    return Expr(op, tuple(args))


def _expressions(with_score: bool):
    """(int, float, bool) strategies of well-typed expression trees the parser can produce."""
    int_leaf = st.one_of(_ints.map(const), st.sampled_from(_INT_VARS))
    float_leaf = st.one_of(
        _floats.map(const),
        st.just(Expr("score") if with_score else const(1.25)),
        st.just(Expr("param", value="f")),
        st.just(Expr("load", value="temp")),
    )
    bool_leaf = st.one_of(
        st.booleans().map(const), st.just(Expr("param", value="flag"))
    )

    ints = st.deferred(lambda: st.one_of(int_leaf, int_leaf, int_node))
    floats = st.deferred(lambda: st.one_of(float_leaf, float_leaf, float_node))
    bools = st.deferred(lambda: st.one_of(bool_leaf, bool_node))
    nums = st.one_of(ints, floats)

    int_node = st.one_of(
        st.tuples(st.sampled_from(["add", "sub", "mul", "floordiv", "mod", "min", "max", "bitand"]), ints, ints).map(lambda t: _node(*t)),
        st.tuples(st.sampled_from(["neg", "abs", "relu"]), ints).map(lambda t: _node(*t)),
        st.tuples(ints, ints, ints).map(lambda t: _node("clamp", *t)),
        st.tuples(bools, ints, ints).map(lambda t: _node("where", *t)),
        ints.map(lambda i: Expr("load", (i,), "idx")),
    )
    float_node = st.one_of(
        st.tuples(st.sampled_from(["add", "sub", "mul", "truediv", "pow", "min", "max"]), floats, nums).map(lambda t: _node(*t)),
        st.tuples(st.sampled_from(["add", "sub", "mul", "truediv", "pow"]), ints, floats).map(lambda t: _node(*t)),
        st.tuples(
            st.sampled_from(["neg", "abs", "relu", "exp", "exp2", "log", "log2", "sqrt", "tanh", "sigmoid", "softplus"]),
            floats,
        ).map(lambda t: _node(*t)),
        ints.map(lambda i: _node("float", i)),
        st.tuples(floats, nums, nums).map(lambda t: _node("clamp", *t)),
        st.tuples(bools, floats, nums).map(lambda t: _node("where", *t)),
        st.tuples(nums, nums).map(lambda t: _node("pow", *t)),
        st.tuples(ints, ints).map(lambda t: Expr("load", t, "tab")),
    )
    bool_node = st.one_of(
        st.tuples(st.sampled_from(["lt", "le", "gt", "ge", "eq", "ne"]), nums, nums).map(lambda t: _node(*t)),
        st.tuples(st.sampled_from(["eq", "ne", "and", "or"]), bools, bools).map(lambda t: _node(*t)),
        bools.map(lambda b: _node("not", b)),
        ints.map(lambda i: Expr("load", (i,), "ok")),
    )
    return ints, floats, bools


INTS, FLOATS, _ = _expressions(with_score=True)
_, _, BOOLS = _expressions(with_score=False)  # masks cannot read the score
HYP = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@HYP
@given(score=FLOATS, mask=BOOLS)
def test_random_expressions_roundtrip(score: Expr, mask: Expr):
    text = f"attention a {{{_DECLS}\n    score = {expr_text(score)}\n    mask {expr_text(mask)}\n}}\n"
    spec = parse_program(text).specs[0]
    assert spec.score == score, text
    assert spec.mask == mask, text
    program, printed = roundtrip(text)
    assert program.specs[0] == spec


@HYP
@given(e=INTS)
def test_random_int_expressions_roundtrip(e: Expr):
    text = f"attention a {{{_DECLS}\n    mask {expr_text(e)} == 0\n}}\n"
    spec = parse_program(text).specs[0]
    assert spec.mask == Expr("eq", (e, const(0))), text
    roundtrip(text)


@settings(max_examples=60, deadline=None)
@given(score=FLOATS, mask=BOOLS)
def test_random_expressions_verify(score: Expr, mask: Expr):
    """The generated trees are well typed: the verifier accepts them (so the round trip above covers real specs)."""
    text = f"attention a {{{_DECLS}\n    score = {expr_text(score)}\n    mask {expr_text(mask)}\n}}\n"
    load_program(text)
