"""`normalize linear` (docs/language.md section 3, `normalize`): linear attention's weights are the
feature maps' products themselves, w_ij = phi(q_i).psi(k_j) (times lambda^|d| with a decay), over their
row sum where normalized. Checked against its causal recurrent form, which is how linear attention is
usually defined and computed: a state S_t = lambda S_{t-1} + psi(k_t)^T v_t (and z_t = lambda z_{t-1} +
psi(k_t) for the denominator), o_t = phi(q_t) S_t / phi(q_t) z_t, evaluated one key at a time in
float64; and on every target against the reference, with gradients.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import attnspec
from attnspec.diagnostics import AttnError

ELU = """
attention elu_features {
    prologue q = elu(q) + 1.0
    prologue k = elu(k) + 1.0
    mask kv <= q + (SKV - SQ)
    normalize linear
}
"""

DECAYED = """
attention decayed {
    input lam: float32[H]
    prologue q = relu(q)
    prologue k = relu(k)
    mask kv <= q + (SKV - SQ)
    normalize linear(decay = sigmoid(lam[h]))
}
"""

UNNORMALIZED = """
attention unnormalized {
    input lam: float32[H]
    mask kv <= q + (SKV - SQ)
    normalize linear(decay = lam[h], normalized = false)
}
"""


def recurrent(q, k, v, phi, decay=None, normalized=True):
    """Causal linear attention one key at a time (GQA: kv head h // G), end-aligned: query i sees the
    keys up to i + SKV - SQ."""
    B, H, SQ, _ = q.shape
    HKV, SKV, DV = k.shape[1], k.shape[2], v.shape[-1]
    k, v = k.repeat_interleave(H // HKV, 1), v.repeat_interleave(H // HKV, 1)
    lam = torch.ones(H, dtype=q.dtype) if decay is None else decay.to(q.dtype)
    state = torch.zeros(B, H, q.shape[-1], DV, dtype=q.dtype)
    norm = torch.zeros(B, H, q.shape[-1], dtype=q.dtype)
    out = torch.zeros(B, H, SQ, DV, dtype=q.dtype)
    for t in range(SKV):
        kt = phi(k[:, :, t])
        state = lam[None, :, None, None] * state + kt[..., :, None] * v[:, :, t, None, :]
        norm = lam[None, :, None] * norm + kt
        i = t - (SKV - SQ)
        if i >= 0:
            qi = phi(q[:, :, i])
            num = torch.einsum("bhd,bhde->bhe", qi, state)
            den = (qi * norm).sum(-1, keepdim=True)
            out[:, :, i] = num / torch.where(den > 0, den, 1.0) if normalized else num
    return out


def _tensors(SQ, SKV, seed=0, H=4, HKV=2):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(2, H, SQ, 16, generator=gen, dtype=torch.float64)
    k = torch.randn(2, HKV, SKV, 16, generator=gen, dtype=torch.float64)
    v = torch.randn(2, HKV, SKV, 8, generator=gen, dtype=torch.float64)
    lam = 0.5 + 0.5 * torch.rand(H, generator=gen, dtype=torch.float64)
    return q, k, v, lam


def _elu1(x):
    return torch.nn.functional.elu(x) + 1.0


@pytest.mark.parametrize("SQ, SKV", [(23, 23), (5, 31), (1, 40)])
def test_the_reference_is_the_recurrent_form(SQ, SKV):
    q, k, v, lam = _tensors(SQ, SKV)
    elu = attnspec.compile(ELU, "reference").attention(q, k, v)
    torch.testing.assert_close(elu, recurrent(q, k, v, _elu1), rtol=1e-10, atol=1e-12)
    decayed = attnspec.compile(DECAYED, "reference").attention(q, k, v, lam=lam)
    torch.testing.assert_close(decayed, recurrent(q, k, v, torch.relu, torch.sigmoid(lam)), rtol=1e-10, atol=1e-12)
    plain = attnspec.compile(UNNORMALIZED, "reference").attention(q, k, v, lam=lam)
    torch.testing.assert_close(plain, recurrent(q, k, v, lambda x: x, lam, normalized=False), rtol=1e-10, atol=1e-12)


def test_the_scale_is_one_unless_written():
    q, k, v, lam = _tensors(9, 9)
    scaled = UNNORMALIZED.replace("mask", "scale = 0.25\n    mask")
    half = attnspec.compile(scaled, "reference").attention(q, k, v, lam=lam)
    torch.testing.assert_close(half, 0.25 * attnspec.compile(UNNORMALIZED, "reference").attention(q, k, v, lam=lam))


@pytest.mark.parametrize("target", ["flex", "triton"])
@pytest.mark.parametrize("source", [ELU, DECAYED, UNNORMALIZED], ids=["elu", "decayed", "unnormalized"])
def test_every_target_agrees_with_the_reference_forward_and_backward(target, source):
    q, k, v, lam = _tensors(19, 23, seed=1)
    inputs = {"lam": lam} if "lam" in source else {}
    results = {}
    for name, dtype in ((target, torch.float32), ("reference", torch.float64)):
        leaves = [x.to(dtype).clone().requires_grad_() for x in (q, k, v, *inputs.values())]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = attnspec.compile(source, name).attention(*leaves[:3], **dict(zip(inputs, leaves[3:])))
        out.square().sum().backward()
        results[name] = [out.detach()] + [x.grad for x in leaves]
    for what, got, exact in zip(["out", "q", "k", "v", *inputs], results[target], results["reference"]):
        torch.testing.assert_close(got.double(), exact, rtol=1e-4, atol=1e-5 * max(1.0, float(exact.abs().max())), msg=what)


def test_the_normalized_form_needs_products_of_one_sign():
    """Feature maps that are not positive can make the row sum 0 or negative: the normalized form
    refuses a negative product (rownorm's rule); normalized = false takes any sign."""
    q, k, v, _ = _tensors(7, 7)
    identity = ELU.replace("elu(q) + 1.0", "q").replace("elu(k) + 1.0", "k")
    with pytest.raises(ValueError, match=">= 0"):
        attnspec.compile(identity, "reference").attention(q, k, v)


def test_flex_refuses_a_normalized_form_whose_weights_it_cannot_prove_nonnegative():
    """FlexAttention sums exp(log w): the normalized form needs w >= 0 proved at compile time (here the
    decay is an input of unknown sign; sigmoid(lam[h]) is accepted); the error names the targets that can."""
    with pytest.raises(AttnError, match="--target triton or --target reference"):
        attnspec.compile(DECAYED.replace("sigmoid(lam[h])", "lam[h]"), "flex")


def test_a_decay_reading_the_query_is_an_error():
    with pytest.raises(AttnError, match="one number per batch and head"):
        attnspec.compile(DECAYED.replace("lam[h]", "lam[h] * float(q)"), "reference")
