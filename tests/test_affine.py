"""affine_score and base2_logit_scale: which score mods fold into the logit scale, checked numerically.

An affine split is checked by rebuilding the score mod as `coefficient * score + offset`, generating
the reference module of that spec and comparing its outputs with the original spec's (float64,
allclose: the split re-associates products). The base-2 form is checked against a hand-written
exp2 softmax.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from attnspec.analysis.affine import LOG2E, AffineScore, affine_score, base2_logit_scale, default_scale
from attnspec.api import build_module, load_program, lower
from attnspec.frontend import parse_program
from attnspec.ir import Expr, Spec, const, uses, walk
from attnspec.passes import OPTIMIZE
from attnspec.printer import expr_text
from attnspec.runtime.sample import Sizes, evaluate_static, sample_arguments
from attnspec.verify import verify

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"
EXAMPLES = sorted(EXAMPLES_DIR.glob("*.attn"))
SIZES = Sizes(B=2, H=4, HKV=2, SQ=9, SKV=11, D=8, DV=4)


def example(stem: str, passes=None) -> Spec:
    return lower(load_program(EXAMPLES_DIR / f"{stem}.attn").specs[0], passes=passes)


def spec_of(text: str, passes=None) -> Spec:
    return lower(parse_program(text).specs[0], passes=passes)


def rebuilt(spec: Spec, affine: AffineScore) -> Spec:
    """spec with its score mod replaced by coefficient * score + offset."""
    score = Expr("mul", (affine.coefficient, Expr("score")))
    if affine.offset is not None:
        score = Expr("add", (score, affine.offset))
    return verify(dataclasses.replace(spec, score=score))


def outputs(spec: Spec, args: dict) -> torch.Tensor:
    module = build_module(spec, "reference", "test_affine.attn", cache=False)
    args = dict(args)
    q, k, v = args.pop("q"), args.pop("k"), args.pop("v")
    return module.attention(q, k, v, **args)


def assert_affine_split_is_exact(spec: Spec, **runtime) -> AffineScore:
    affine = affine_score(spec)
    assert affine is not None
    assert not uses(affine.coefficient, "score") and not uses(affine.offset, "score")
    assert all(n.op in ("const", "param", "shape") for n in walk(affine.coefficient) if not n.args)
    args = sample_arguments(spec, SIZES, torch.float64, seed=3)
    for name, value in runtime.items():
        args[name] = value
    for name in [n for n in args if spec.input(n) is not None and args[n].is_floating_point()]:
        args[name] = args[name] * 4  # larger biases than the defaults, so offsets matter
    torch.testing.assert_close(outputs(rebuilt(spec, affine), args), outputs(spec, args), rtol=1e-12, atol=1e-12)
    return affine


def test_alibi_is_affine_with_coefficient_one():
    spec = example("b04_alibi")
    affine = assert_affine_split_is_exact(spec)
    assert affine.coefficient == const(1.0)
    assert expr_text(affine.offset) == "-(slope[h] * float(abs(q - kv)))"


def test_temperature_coefficient():
    spec = example("b06_temperature")
    affine = assert_affine_split_is_exact(spec)
    assert affine.offset is None
    assert expr_text(affine.coefficient) == "log(float(SKV)) / (tau * 4.1588830833596715)"
    for tau in (0.7, 0.25, 3.0):
        assert_affine_split_is_exact(spec, tau=tau)
        value = evaluate_static(affine.coefficient, SIZES, {"tau": tau})
        assert value == pytest.approx(math.log(SIZES.SKV) / (tau * math.log(64)), rel=1e-15)


@pytest.mark.parametrize("stem", ["s02_rel_bias_clipped", "s02_rel_table", "m02_natten2d", "m05_swin"])
def test_relative_biases_are_offsets(stem):
    spec = example(stem)
    affine = assert_affine_split_is_exact(spec)
    assert affine.coefficient == const(1.0)
    assert affine.offset is not None and affine.offset.op == "load"
    assert affine.offset == spec.score.args[1], "the bias is the score mod's own subtree"


def test_softcap_is_not_affine():
    assert affine_score(example("b07_softcap")) is None
    assert base2_logit_scale(example("b07_softcap")) is None


@pytest.mark.parametrize("stem", ["b01_causal", "b03_document", "b05_streaming_sink", "m03_dilated_na", "k02_moba", "m20_svg_heads"])
def test_masks_and_inputs_leave_a_plain_score_alone(stem):
    affine = affine_score(example(stem))
    assert affine == AffineScore(const(1.0), None)


DECLS = "param tau: float runtime = 0.7\n param flag: bool runtime = true\n param w: int = 3\n input slope: float32[H]\n input t: float32[]"


@pytest.mark.parametrize(
    "score, coefficient, offset",
    [
        ("score + score", "2.0", None),
        ("-(score - slope[h]) * 2.0", "-2.0", "2.0 * slope[h]"),
        ("score / tau + float(q)", "1.0 / tau", "float(q)"),
        ("(score * float(w) - float(kv)) / tau", "3.0 / tau", "-float(kv) / tau"),
        ("where(flag, score, 2.0 * score)", "where(flag, 1.0, 2.0)", None),
        ("where(q < kv, score + 1.0, score)", "1.0", "where(q < kv, 1.0, 0.0)"),
        ("score * float(SKV) / float(SQ) - 0.5", "float(SKV) / float(SQ)", "-0.5"),
        ("float(q - kv)", "0.0", "float(q - kv)"),
    ],
)
def test_affine_forms(score, coefficient, offset):
    spec = spec_of(f"attention a {{ {DECLS}\n score = {score} }}")
    affine = assert_affine_split_is_exact(spec)
    assert expr_text(affine.coefficient) == coefficient
    assert (None if affine.offset is None else expr_text(affine.offset)) == offset


@pytest.mark.parametrize(
    "score",
    [
        "score * score",
        "score * slope[h]",  # a per-head coefficient
        "score * t",  # an input read (even 0-d) is not one number known to the kernel's launch
        "score * float(q)",
        "where(q < kv, score, 2.0 * score)",  # the coefficient would vary per element
        "relu(score)",
        "exp(score)",
        "min(score, 4.0)",
        "abs(score)",
        "2.0 * tanh(score / 2.0)",
        "score ** 2.0",
        "1.0 / score",
        "where(score > 0.0, score, 0.0)",
    ],
)
def test_not_affine(score):
    spec = spec_of(f"attention a {{ {DECLS}\n score = {score} }}")
    assert affine_score(spec) is None
    assert base2_logit_scale(spec) is None


def test_hoisted_temps_are_read_through():
    """After hoist_and_share the offset may read temps; the coefficient never does."""
    spec = example("b04_alibi", passes=OPTIMIZE)
    affine = assert_affine_split_is_exact(spec)
    assert affine.coefficient == const(1.0)
    spec = spec_of(f"attention a {{ {DECLS}\n score = score * (tau * 2.0) + slope[h] * float(h) }}", passes=OPTIMIZE)
    affine = assert_affine_split_is_exact(spec)
    assert not uses(affine.coefficient, "temp")


# ------------------------------------------------------------------ base 2


def base2_reference(q, k, v, logit_scale: float, offset=None, sink=None, keep=None) -> torch.Tensor:
    """Softmax in base 2, written by hand: w = 2^(l - m) / sum 2^(l - m) (+ 2^(sink - m))."""
    G = q.shape[1] // k.shape[1]
    kx, vx = k.repeat_interleave(G, dim=1), v.repeat_interleave(G, dim=1)
    logits = logit_scale * (q @ kx.transpose(-1, -2))
    if offset is not None:
        logits = logits + offset
    if keep is not None:
        logits = logits.masked_fill(~keep, -math.inf)
    m = logits.amax(-1, keepdim=True)
    if sink is not None:
        m = torch.maximum(m, sink)
    p = torch.exp2(logits - m)
    den = p.sum(-1, keepdim=True) + (torch.exp2(sink - m) if sink is not None else 0)
    return (p / den) @ vx


def test_base2_scale_of_default_scale():
    b2 = base2_logit_scale(example("b01_causal"))
    assert expr_text(b2.scale) == f"1.0 / sqrt(float(D)) * {LOG2E!r}"
    assert evaluate_static(b2.scale, SIZES) == pytest.approx(LOG2E / math.sqrt(SIZES.D), rel=1e-15)
    assert b2.offset is None and b2.sink is None
    assert LOG2E == 1 / math.log(2)


def test_base2_scale_is_a_valid_scale_expression():
    for path in EXAMPLES:
        spec = lower(load_program(path).specs[0])
        b2 = base2_logit_scale(spec)
        if b2 is not None:
            verify(dataclasses.replace(spec, scale=b2.scale))  # no indices, no inputs: one number per program


def test_base2_temperature_matches_the_reference():
    spec = example("b06_temperature")
    b2 = base2_logit_scale(spec)
    args = sample_arguments(spec, SIZES, torch.float64, seed=5)
    for tau in (0.7, 0.3):
        value = evaluate_static(b2.scale, SIZES, {"tau": tau})
        want = (1 / math.sqrt(SIZES.D)) * (math.log(SIZES.SKV) / (tau * math.log(64))) * LOG2E
        assert value == pytest.approx(want, rel=1e-14)
        got = base2_reference(args["q"], args["k"], args["v"], value)
        torch.testing.assert_close(got, outputs(spec, {**args, "tau": tau}), rtol=1e-12, atol=1e-12)


def test_base2_alibi_matches_the_reference():
    spec = example("b04_alibi")
    b2 = base2_logit_scale(spec)
    assert expr_text(b2.offset) == f"-(slope[h] * float(abs(q - kv))) * {LOG2E!r}"
    args = sample_arguments(spec, SIZES, torch.float64, seed=6)
    slope = args["slope"].double().view(1, -1, 1, 1)
    i, j = torch.arange(SIZES.SQ).view(-1, 1), torch.arange(SIZES.SKV).view(1, -1)
    offset = -(slope * (i - j).abs()) * LOG2E  # the hand-written ALiBi bias, in base 2
    got = base2_reference(args["q"], args["k"], args["v"], evaluate_static(b2.scale, SIZES), offset)
    torch.testing.assert_close(got, outputs(spec, args), rtol=1e-12, atol=1e-12)


def test_base2_sink_and_mask_match_the_reference():
    spec = example("b05_streaming_sink")
    b2 = base2_logit_scale(spec)
    assert expr_text(b2.sink) == f"sink_logit[h] * {LOG2E!r}"
    args = sample_arguments(spec, SIZES, torch.float64, seed=7)
    args["sink_logit"] = args["sink_logit"] * 4
    module = build_module(spec, "reference", "b05.attn", cache=False)
    keep = module._token_mask(args["q"], args["k"], sink_logit=args["sink_logit"])
    sink = args["sink_logit"].double().view(1, -1, 1, 1) * LOG2E
    got = base2_reference(args["q"], args["k"], args["v"], evaluate_static(b2.scale, SIZES), sink=sink, keep=keep)
    torch.testing.assert_close(got, outputs(spec, args), rtol=1e-12, atol=1e-12)


def test_base2_explicit_scale():
    spec = spec_of(f"attention a {{ {DECLS}\n scale = 0.5\n score = score / tau }}")
    b2 = base2_logit_scale(spec)
    assert evaluate_static(b2.scale, SIZES, {"tau": 0.7}) == pytest.approx(0.5 / 0.7 * LOG2E, rel=1e-15)
    spec = spec_of("attention a { scale = 2\n score = score * 3.0 }")
    assert base2_logit_scale(spec).scale == const(2.0 * 3.0 * LOG2E)


@pytest.mark.parametrize("stem", ["n01_sigmoid", "n02_relu2_rownorm", "n02_relu_length"])
def test_base2_only_for_softmax(stem):
    spec = example(stem)
    assert affine_score(spec) is not None, "the score mod itself is affine"
    assert base2_logit_scale(spec) is None, "but f is not exp"


def test_default_scale_expression():
    assert expr_text(default_scale()) == "1.0 / sqrt(float(D))"
    assert evaluate_static(default_scale(), SIZES) == 1 / math.sqrt(SIZES.D)
