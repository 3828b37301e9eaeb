"""rownorm(g, den = f) (docs/language.md sections 3 and 8): weights g of any sign over the sum of the
terms f >= 0 on the kept keys.

The examples that use it (N01 softpick, N02 over the kept length, N14 signed cosine) are checked
against hand-written formulas in test_examples_formulas.py and on every target by the suites that run
every example. Here: what those do not reach, on the flex and triton targets against the reference:
rows whose denominator is 0 while g is not, learnable inputs read by g and by f (gradient sites of
both), a negative denominator term, a weight that is not finite, the flex target's refusal of an f it
cannot prove >= 0, and the printer.
"""

from __future__ import annotations

import math

import pytest
import torch

import attnspec
from attnspec.diagnostics import AttnError
from attnspec.fuzz.accuracy import check

# g may be negative; f = relu(score - t_h) is 0 on every kept key of a row whose scores stay below t_h
SIGNED = """
attention signed {
    input bias: float32[H] learnable
    input t: float32[H] learnable
    mask kv <= q + (SKV - SQ)
    normalize rownorm(tanh(score + bias[h]), den = relu(score - t[h]))
}
"""


def _arguments(seed=0, SQ=21, SKV=29):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, 2, n, 16, generator=gen) for n in (SQ, SKV, SKV))
    inputs = {"bias": torch.randn(2, generator=gen), "t": torch.tensor([-0.2, 100.0])}  # head 1: no denominator anywhere
    return (q, k, v), inputs


def _hand(q, k, v, bias, t):
    SQ, SKV = q.shape[2], k.shape[2]
    s = q @ k.transpose(-1, -2) / 4.0
    keep = torch.arange(SKV)[None, :] <= torch.arange(SQ)[:, None] + (SKV - SQ)
    g = torch.where(keep, torch.tanh(s + bias[None, :, None, None]), 0.0)
    f = torch.where(keep, torch.relu(s - t[None, :, None, None]), 0.0)
    den = f.sum(-1, keepdim=True)
    return torch.where(den > 0, g @ v / torch.where(den > 0, den, 1.0), 0.0), torch.log(den).squeeze(-1)


def _call(target, qkv, inputs, dtype, grad=False):
    module = attnspec.compile(SIGNED, target)
    qkv = [x.detach().to(dtype).clone().requires_grad_(grad) for x in qkv]
    inputs = {n: x.detach().to(torch.float64 if dtype == torch.float64 else torch.float32).clone().requires_grad_(grad)
              for n, x in inputs.items()}
    out, lse = module.attention(*qkv, **inputs, return_lse=True)
    return out, lse, qkv + list(inputs.values())


def test_the_reference_computes_the_hand_formula_and_zero_rows():
    qkv, inputs = _arguments()
    out, lse, _ = _call("reference", qkv, inputs, torch.float64)
    want_out, want_lse = _hand(*(x.double() for x in qkv), **{n: x.double() for n, x in inputs.items()})
    torch.testing.assert_close(out, want_out, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(lse, want_lse.float())
    assert torch.equal(out[:, 1], torch.zeros_like(out[:, 1])) and (lse[:, 1] == -math.inf).all()


@pytest.mark.parametrize("target", ["flex", "triton"])
def test_forward_and_every_gradient_agree_with_the_reference(target):
    qkv, inputs = _arguments(seed=1)
    out, lse, leaves = _call(target, qkv, inputs, torch.float32, grad=True)
    low, _, low_leaves = _call("reference", qkv, inputs, torch.float32, grad=True)
    ref, ref_lse, ref_leaves = _call("reference", qkv, inputs, torch.float64, grad=True)
    assert check(out, low, ref, "out").ok
    assert torch.equal(lse.isinf(), ref_lse.isinf()) and torch.allclose(lse[lse.isfinite()], ref_lse[ref_lse.isfinite()], atol=1e-5)
    assert torch.equal(out[:, 1], torch.zeros_like(out[:, 1]))  # no denominator: 0, not g
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for result, row_lse in ((out, lse), (low, None), (ref, ref_lse)):
        (result.double() * weights).sum().backward()
    for name, mine, lows, exact in zip(["q", "k", "v", "bias", "t"], leaves, low_leaves, ref_leaves):
        verdict = check(mine.grad, lows.grad, exact.grad, f"d{name}")
        assert verdict.ok, f"{target}: {verdict}"
    assert leaves[3].grad[1] == 0 and leaves[4].grad[1] == 0  # head 1's rows are 0 whatever bias and t


@pytest.mark.parametrize("target", ["reference", "triton"])
def test_a_negative_denominator_term_is_an_error(target):
    module = attnspec.compile("attention n {\n normalize rownorm(score, den = score)\n}", target)
    q = k = torch.randn(1, 1, 8, 16, generator=torch.Generator().manual_seed(3))
    with pytest.raises(ValueError, match=r"rownorm\(g, den = f\) needs f >= 0 on kept pairs"):
        module.attention(q, k, -k)


@pytest.mark.parametrize("target", ["reference", "flex", "triton"])
def test_a_weight_that_is_not_finite_makes_its_row_undefined(target):
    module = attnspec.compile("attention n {\n mask kv <= q\n normalize rownorm(exp(score * 2.0), den = 1.0)\n}", target)
    gen = torch.Generator().manual_seed(4)
    q, k, val = (torch.randn(1, 1, 12, 16, generator=gen) for _ in range(3))
    q[0, 0, 5] = k[0, 0, 2] * 100.0  # row 5 meets a score of 25 |k_2|^2, about 400: exp(2 x that) overflows
    out = module.attention(q, k, val)
    assert torch.isnan(out[0, 0, 5]).all()
    assert not torch.isnan(out[0, 0, :5]).any()  # the other rows' scores stay near 1


def test_flex_refuses_a_denominator_it_cannot_prove_nonnegative():
    source = "attention n {\n    mask kv <= q\n    normalize rownorm(score, den = score + 1.0)\n}\n"
    with pytest.raises(AttnError, match="f is not provably >= 0") as info:
        attnspec.compile(source, "flex")
    assert (info.value.span.line, info.value.span.col) == (3, 36)
    assert "--target triton" in info.value.hint


def test_the_printed_spec_reads_back_with_its_denominator():
    from attnspec.frontend import parse_program
    from attnspec.printer import print_program

    program = parse_program(SIGNED)
    again = parse_program(print_program(program))
    assert again.specs[0].normalize == program.specs[0].normalize
    assert "normalize rownorm(tanh(score + bias[h]), den = relu(score - t[h]))" in print_program(program)


def test_flex_finds_a_denominator_beyond_the_dtype_undefined_as_the_reference_does(tmp_path):
    """A score of about 3.7e5 makes exp(score) +inf on the reference (an undefined row), while flex's
    lse of log f stays finite; flex marks the row undefined from it (found by attnspec fuzz)."""
    from attnspec.testing import replay

    path = tmp_path / "big.attn"
    path.write_text("attention big {\n    score = score + (abs(float(q + 0)) / (score ** 2))\n    score = score + score\n"
                    "    normalize rownorm(1.00E-02, den = exp(score))\n}\n")
    case = "target=flex,dtype=float16,B=1,H=4,HKV=2,SQ=17,SKV=80,D=16,DV=128,seed=8930,logits=normal,inputs=typical,trace=static"
    assert replay(path, case).status == "ok"
