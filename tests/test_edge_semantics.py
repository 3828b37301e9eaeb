"""Edge semantics every target shares (docs/language.md sections 4, 7 and 8): reads of an input with
no elements, undefined rows (a NaN or +inf logit, weight or sink among the kept pairs), integer
division by zero, and the rownorm check. Each target is compared with the reference, and the
reference with a hand-written expectation."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import attnspec

TARGETS = ["reference", "flex", "triton"]

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def qkv(B=1, H=2, SQ=20, SKV=20, D=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, n, D, generator=gen) for n in (SQ, SKV, SKV))
    return q, k, v


def run(source, target, *args, **kwargs):
    mod = attnspec.compile(source, target)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mod.attention(*args, **kwargs)


# ------------------------------------------------------------------ empty inputs (section 7)

PREFIX = """
attention prefix_bias {
    input prefix_bias: float32[SKV - SQ]
    score = score + where(kv < SKV - SQ, prefix_bias[kv], 0.0)
    mask kv <= q + (SKV - SQ)
}
"""

EMPTY_IN_MASK = """
attention doc_mask {
    input doc: int32[SKV - SQ]
    mask kv <= q + (SKV - SQ) and doc[kv] == 0
}
"""


@pytest.mark.parametrize("target", TARGETS)
def test_a_prefill_reads_an_empty_input_as_zero(target):
    """SQ == SKV: the KV-cache prefix is empty; reads of it are 0, so the bias vanishes."""
    q, k, v = qkv()
    out, lse = run(PREFIX, target, q, k, v, prefix_bias=torch.zeros(0), return_lse=True)
    causal, causal_lse = run("attention c { mask kv <= q }", "reference", q, k, v, return_lse=True)
    torch.testing.assert_close(out, causal, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(lse, causal_lse, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("target", TARGETS)
def test_an_empty_input_in_the_mask_reads_as_zero(target):
    q, k, v = qkv()
    out = run(EMPTY_IN_MASK, target, q, k, v, doc=torch.zeros(0, dtype=torch.int32))
    causal = run("attention c { mask kv <= q }", "reference", q, k, v)
    torch.testing.assert_close(out, causal, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("target", TARGETS)
def test_the_gradient_of_an_empty_input_is_empty(target):
    q, k, v = qkv()
    bias = torch.zeros(0, requires_grad=True)
    out = attnspec.compile(PREFIX, target).attention(q.requires_grad_(), k, v, prefix_bias=bias)
    out.sum().backward()
    assert bias.grad is None or bias.grad.shape == (0,)
    assert q.grad is not None and bool(torch.isfinite(q.grad).all())


@pytest.mark.parametrize("target", TARGETS)
def test_an_input_whose_shape_is_negative_at_the_call_is_named(target):
    """SKV < SQ makes SKV - SQ negative: the call names the input, on every target, before any read."""
    q, k, v = qkv(SQ=20, SKV=12)
    with pytest.raises(ValueError, match=r"prefix_bias: input 'prefix_bias' has declared shape \(-8,\) at these sizes: a dimension is negative"):
        run(PREFIX, target, q, k, v, prefix_bias=torch.zeros(0))


# ------------------------------------------------------------------ undefined rows (section 8)

UNDEFINED = {
    # a NaN score on one kept pair of every row
    "nan_score": "attention s { score = where(kv == 0, sqrt(score - 1000.0), score) }",
    # a +inf score on one kept pair of the rows q >= 1
    "inf_score": "attention s { score = where(kv == 1, 1.0 / 0.0 + score, score)\n mask kv <= q }",
    # a -inf score is a weight of 0, like a masked pair; row 0 keeps only -inf: an empty row
    "neg_inf_score": "attention s { score = where(kv == 0, -1.0 / 0.0, score)\n mask kv <= q }",
    "nan_sink": "attention s { normalize softmax(sink = where(q == 3, sqrt(-1.0), 0.5)) }",
    "inf_sink": "attention s { normalize softmax(sink = where(q == 3, 1.0 / 0.0, 0.5))\n mask kv <= q }",
    "rownorm_nan": "attention s { normalize rownorm(where(kv == q, sqrt(-1.0), relu(score))) }",
    "rownorm_inf": "attention s { normalize rownorm(where(kv == 2, exp(score + 1000.0), relu(score)))\n mask kv <= q }",
    "elementwise_nan": "attention s { normalize elementwise(where(kv == q, sqrt(-1.0), sigmoid(score))) }",
    "elementwise_inf": "attention s { normalize elementwise(where(kv == 2, exp(score + 1000.0), sigmoid(score))) }",
}


def expected_undefined_rows(case: str, SQ: int) -> torch.Tensor:
    """The rows the rule makes NaN, written out by hand."""
    rows = torch.arange(SQ)
    return {
        "nan_score": rows >= 0,
        "inf_score": rows >= 1,
        "neg_inf_score": rows < 0,
        "nan_sink": rows == 3,
        "inf_sink": rows == 3,
        "rownorm_nan": rows >= 0,
        "rownorm_inf": rows >= 2,
        "elementwise_nan": rows >= 0,
        "elementwise_inf": rows >= 0,
    }[case]


def _both(result):
    return result if isinstance(result, tuple) else (result, None)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("case", sorted(UNDEFINED))
def test_undefined_rows_are_nan_on_every_target(case, target):
    source = UNDEFINED[case]
    q, k, v = qkv(SQ=20, SKV=20)
    options = {} if "elementwise" in case else {"return_lse": True}
    try:
        out, lse = _both(run(source, target, q, k, v, **options))
    except attnspec.AttnError as err:  # flex refuses a weight it cannot prove >= 0: not this test's subject
        pytest.skip(f"{target} refuses the spec: {err.message}")
    ref_out, ref_lse = _both(run(source, "reference", q.double(), k.double(), v.double(), **options))
    rows = expected_undefined_rows(case, q.shape[2])
    assert bool(torch.isnan(ref_out[0, :, rows]).all()), "the reference breaks the rule"
    assert not bool(torch.isnan(ref_out[0, :, ~rows]).any())
    assert torch.equal(torch.isnan(out), torch.isnan(ref_out)), "out: NaN rows differ from the reference"
    torch.testing.assert_close(out[0, :, ~rows].double(), ref_out[0, :, ~rows], atol=1e-4, rtol=1e-4)
    if lse is not None:
        assert bool(torch.isnan(ref_lse[0, :, rows]).all())
        assert torch.equal(torch.isnan(lse), torch.isnan(ref_lse)), "lse: NaN rows differ from the reference"
        assert not bool((lse == math.inf).any()), "an lse is never +inf"
        torch.testing.assert_close(lse[0, :, ~rows].double(), ref_lse[0, :, ~rows].double(), atol=1e-4, rtol=1e-4)


def test_a_row_of_neg_inf_logits_is_an_empty_row():
    q, k, v = qkv()
    out, lse = run(UNDEFINED["neg_inf_score"], "reference", q, k, v, return_lse=True)
    assert torch.equal(out[:, :, 0], torch.zeros_like(out[:, :, 0])) and bool(torch.isneginf(lse[:, :, 0]).all())


# ------------------------------------------------------------------ integer division by zero (section 4)

DIVISION = """
attention division {
    param d: int runtime = 0
    score = score + float(q // d) + 0.5 * float(kv % d)
    mask (q // d) <= kv or kv % (d + 2) == 1
}
"""


def hand_division(q, k, v, d):
    SQ, SKV = q.shape[2], k.shape[2]
    i, j = torch.arange(SQ).view(-1, 1), torch.arange(SKV).view(1, -1)

    def div(a, b):
        return a * 0 if b == 0 else a // b

    def mod(a, b):
        return a if b == 0 else a % b

    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + div(i, d) + 0.5 * mod(j, d)
    keep = (div(i, d) <= j) | (mod(j, d + 2) == 1)
    w = torch.softmax(torch.where(keep, s, -math.inf), -1)
    return w @ v


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("d", [0, 3, -2])
def test_integer_division_by_zero_is_zero_and_modulo_by_zero_is_the_dividend(target, d):
    q, k, v = qkv(SQ=17, SKV=19)
    out = run(DIVISION, target, q, k, v, d=d)
    torch.testing.assert_close(out.double(), hand_division(q.double(), k.double(), v.double(), d), atol=2e-5, rtol=1e-4)


# ------------------------------------------------------------------ min and max order signed zeros (section 5)

# float(q - kv) * 0.0 is -0.0 above the diagonal and 0.0 on and below it; max(-0.0, that) is 0.0 exactly where
# q >= kv, and 1.0 / it is +inf there and -inf elsewhere. So these masks keep the causal pairs (relu: every
# pair) if max puts 0.0 above -0.0 in every lane and min -0.0 below 0.0, and other pairs on a target that
# does not.
SIGNED_ZEROS = {
    "max": ("attention z { mask 1.0 / max(-0.0, float(q - kv) * 0.0) > 0.0 }", "mask kv <= q"),
    "min": ("attention z { mask 1.0 / min(0.0, float(kv - q - 1) * 0.0) < 0.0 }", "mask kv <= q"),
    "clamp": ("attention z { mask 1.0 / clamp(float(q - kv) * 0.0, -0.0, 1.0) > 0.0 }", "mask kv <= q"),
    "relu": ("attention z { mask 1.0 / relu(float(q - kv) * 0.0) > 0.0 }", ""),
    "neg": ("attention z { mask 1.0 / -(float(q - kv) * 0.0) < 0.0 }", "mask kv <= q"),
}


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("op", SIGNED_ZEROS)
def test_min_and_max_put_negative_zero_below_zero_on_every_target(op, target):
    q, k, v = qkv(SQ=37, SKV=37)
    spec, expected = SIGNED_ZEROS[op]
    out = run(spec, target, q, k, v)
    torch.testing.assert_close(out, run(f"attention c {{ {expected} }}", "reference", q, k, v), atol=2e-5, rtol=1e-4)


# a quotient of sizes and runtime params, whose divisor is 0 only at run time: IEEE (section 4), never
# Python's ZeroDivisionError (the reference and flex hosts compute such scalars as Python numbers)
ZERO_DIVISORS = {
    "inf": ("attention z { param t: float runtime = 1.0\n mask 1.0 / (t * float(SKV - SQ)) > 0.0 }", ""),
    "neg_inf": ("attention z { param t: float runtime = 1.0\n mask -1.0 / (t * float(SKV - SQ)) < 0.0 }", ""),
    "nan": ("attention z { param t: float runtime = 1.0\n mask 0.0 / (t * float(SKV - SQ)) == 0.0 or kv <= q }",
            "mask kv <= q"),
}


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("case", ZERO_DIVISORS)
def test_a_scalar_divided_by_zero_at_run_time_is_ieee_on_every_target(case, target):
    q, k, v = qkv(SQ=21, SKV=21)
    spec, expected = ZERO_DIVISORS[case]
    out = run(spec, target, q, k, v, t=1.0)
    torch.testing.assert_close(out, run(f"attention c {{ {expected} }}", "reference", q, k, v), atol=2e-5, rtol=1e-4)


# ------------------------------------------------------------------ the rownorm check (section 8)

SIGNED = "attention signed { normalize rownorm(score + 0.5)\n mask kv <= q }"


@pytest.mark.parametrize("target", ["reference", "triton"])
def test_a_negative_rownorm_weight_raises_on_every_target_that_accepts_it(target):
    q, k, v = qkv()
    with pytest.raises(ValueError, match="rownorm\\(f\\) needs f >= 0"):
        run(SIGNED, target, q, k, v)
    positive = run(SIGNED, target, q * 0.01, k * 0.01, v)  # |score| < 0.5: f > 0 everywhere
    torch.testing.assert_close(positive, run(SIGNED, "reference", q * 0.01, k * 0.01, v), atol=2e-5, rtol=1e-4)


def test_flex_refuses_a_rownorm_weight_it_cannot_prove_nonnegative():
    with pytest.raises(attnspec.AttnError, match="not provably >= 0"):
        attnspec.compile(SIGNED, "flex")


# ------------------------------------------------------------------ the fuzzer holds targets to the rule

FUZZED = ["nan_score", "inf_sink", "rownorm_inf"]


@pytest.mark.parametrize("target", ["flex", "triton"])
@pytest.mark.parametrize("case", FUZZED)
def test_the_fuzzer_judges_undefined_rows_instead_of_discarding_them(case, target, tmp_path):
    from attnspec.testing import fuzz

    try:
        attnspec.compile(UNDEFINED[case], target)
    except attnspec.AttnError:
        pytest.skip(f"{target} refuses the spec")
    (report,) = fuzz(UNDEFINED[case], targets=(target,), trials=4, shrink_seconds=5, save_dir=str(tmp_path))
    assert report.status == "ok", report.summary
    trials, discarded = (int(w) for w in report.summary.replace(",", "").split() if w.isdigit())
    assert discarded < trials, f"every case was discarded: {report.summary}"
