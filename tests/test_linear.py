"""`normalize linear` (docs/language.md section 3, `normalize`): linear attention's weights are the
feature maps' products themselves, w_ij = phi(q_i).psi(k_j) (times lambda^|d| with a decay), over their
row sum where normalized. Checked against its causal recurrent form, which is how linear attention is
usually defined and computed: a state S_t = lambda S_{t-1} + psi(k_t)^T v_t (and z_t = lambda z_{t-1} +
psi(k_t) for the denominator), o_t = phi(q_t) S_t / phi(q_t) z_t, evaluated one key at a time in
float64; and on every target against the reference, with gradients.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import attnspec
from attnspec.diagnostics import AttnError
from attnspec.runtime import linear

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


# ---------------------------------------------------------------- the forms that carry a state


NONCAUSAL = """
attention noncausal {
    prologue q = elu(q) + 1.0
    prologue k = elu(k) + 1.0
    normalize linear
}
"""

HAND_WRITTEN = """
attention hand_written {
    input lam: float32[H]
    prologue q = relu(q)
    prologue k = relu(k)
    scale = 0.5
    mask q - kv >= SQ - SKV
    normalize rownorm(score * sigmoid(lam[h]) ** float(abs(kv - (q - SQ + SKV))))
}
"""

SIGNED_DECAY = """
attention signed_decay {
    input lam: float32[H]
    mask kv <= q + (SKV - SQ)
    normalize linear(decay = lam[h] - 0.25, normalized = false)
}
"""

# a decay in both directions (no mask): the causal pass and a second one over the mirrored sequence
BOTH_WAYS = """
attention both_ways {
    input lam: float32[H]
    prologue q = elu(q) + 1.0
    prologue k = elu(k) + 1.0
    normalize linear(decay = sigmoid(lam[h]))
}
"""

BOTH_WAYS_SIGNED = """
attention both_ways_signed {
    input lam: float32[H]
    scale = 0.5
    normalize elementwise(score * (lam[h] - 0.25) ** float(abs(q + SKV - SQ - kv)))
}
"""

STATE_FORMS = [ELU, DECAYED, UNNORMALIZED, NONCAUSAL, HAND_WRITTEN, SIGNED_DECAY, BOTH_WAYS, BOTH_WAYS_SIGNED]
STATE_IDS = ["elu", "decayed", "unnormalized", "noncausal", "hand_written", "signed_decay", "both_ways", "both_ways_signed"]


def _linear_form(source):
    from attnspec.analysis.linear import linear_form
    from attnspec.api import _lowered

    return linear_form(_lowered(source, "triton", None, {})[0])


@pytest.mark.parametrize("source, normalized, causal, decay", [
    (ELU, True, True, False), (DECAYED, True, True, True), (UNNORMALIZED, False, True, True),
    (NONCAUSAL, True, False, False), (HAND_WRITTEN, True, True, True), (SIGNED_DECAY, False, True, True),
    (BOTH_WAYS, True, False, True), (BOTH_WAYS_SIGNED, False, False, True),
], ids=STATE_IDS)
def test_the_linear_form_is_recognized_in_the_ir(source, normalized, causal, decay):
    form = _linear_form(source)
    assert form is not None and (form.normalized, form.causal, form.decay is not None) == (normalized, causal, decay)


@pytest.mark.parametrize("source", [
    ELU.replace("normalize linear", "normalize softmax"),
    ELU.replace("mask kv <= q + (SKV - SQ)", "mask kv <= q + (SKV - SQ) and kv + 8 > q + (SKV - SQ)"),  # a window
    ELU.replace("mask kv <= q + (SKV - SQ)", "mask kv <= q"),  # start-aligned: not the state's order
    HAND_WRITTEN.replace("abs(kv - (q - SQ + SKV))", "abs(kv - q)"),  # another distance
    ELU.replace("normalize linear", "score = score + 1.0\n    normalize linear"),  # a score mod
], ids=["softmax", "window", "start_aligned", "other_distance", "score_mod"])
def test_other_weights_and_masks_have_no_linear_form(source):
    assert _linear_form(source) is None


def _arguments(source, SQ, SKV, seed=0, H=4, HKV=2, lam=None):
    q, k, v, drawn = _tensors(SQ, SKV, seed, H, HKV)
    return q, k, v, ({"lam": drawn if lam is None else lam} if "lam" in source else {})


@pytest.mark.parametrize("source", STATE_FORMS, ids=STATE_IDS)
@pytest.mark.parametrize("SQ, SKV, H, HKV", [(23, 23, 4, 2), (5, 71, 4, 4), (70, 33, 2, 1), (1, 1, 4, 2)])
def test_the_reference_recurrence_is_its_dense_form(source, SQ, SKV, H, HKV):
    """The reference module's recurrent() (one key at a time) against its attention() (the score
    matrix), in float64, with the lse where the form is normalized."""
    q, k, v, inputs = _arguments(source, SQ, SKV, H=H, HKV=HKV)
    module = attnspec.compile(source, "reference")
    if _linear_form(source).normalized:
        dense, lse = module.attention(q, k, v, **inputs, return_lse=True)
        recurrent_out, recurrent_lse = module.recurrent(q, k, v, **inputs, return_lse=True)
        torch.testing.assert_close(recurrent_lse, lse, rtol=1e-6, atol=1e-6)
    else:
        dense, recurrent_out = module.attention(q, k, v, **inputs), module.recurrent(q, k, v, **inputs)
    torch.testing.assert_close(recurrent_out, dense, rtol=1e-10, atol=1e-10 * max(1.0, float(dense.abs().max())))


@pytest.fixture
def chunked_calls(monkeypatch):
    """The calls of the chunked kernel's launcher, counted."""
    calls, original = [], linear.chunked

    def counted(*args, **kwargs):
        calls.append(args[0].shape)
        return original(*args, **kwargs)

    monkeypatch.setattr(linear, "chunked", counted)
    return calls


@pytest.mark.parametrize("source", STATE_FORMS, ids=STATE_IDS)
@pytest.mark.parametrize("SQ, SKV, H, HKV", [(23, 23, 4, 2), (5, 71, 4, 4), (70, 33, 2, 1), (65, 97, 2, 2)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_chunked_kernel_agrees_with_the_reference(source, SQ, SKV, H, HKV, dtype, chunked_calls):
    """Without gradients the triton module computes a linear form by chunks (runtime/linear.py): lengths
    that are not a multiple of the chunk, more queries than keys (rows without keys) and fewer, GQA,
    and bf16, under the accuracy rule (fuzz/accuracy.py)."""
    from attnspec.fuzz.accuracy import check

    q, k, v, inputs = _arguments(source, SQ, SKV, H=H, HKV=HKV)
    low = [x.to(dtype) for x in (q, k, v)]
    reference = attnspec.compile(source, "reference")
    exact = reference.attention(q, k, v, **inputs)
    rounded = reference.attention(*low, **{n: t.float() for n, t in inputs.items()})
    got = attnspec.compile(source, "triton").attention(*low, **{n: t.float() for n, t in inputs.items()})
    assert chunked_calls and got.dtype == dtype
    verdict = check(got, rounded, exact, "out")
    assert verdict.ok, verdict


def test_gradients_take_the_chunks_and_a_schedule_the_tile_kernels(chunked_calls):
    """Calls with gradients (for q, k, v and the decay) run the chunked kernels; a call with a caller's
    schedule runs the tile kernels, and agrees with the chunks."""
    q, k, v, inputs = _arguments(DECAYED, 31, 40)
    module = attnspec.compile(DECAYED, "triton")
    args = [x.float() for x in (q, k, v)]
    chunked = module.attention(*args, lam=inputs["lam"].float())
    leaves = [x.clone().requires_grad_() for x in args]
    module.attention(*leaves, lam=inputs["lam"].float().requires_grad_())
    assert len(chunked_calls) == 2
    lam = inputs["lam"].float()
    scheduled = module.attention(*args, lam=lam, schedule=module.build_schedule(args[0], args[1], lam=lam))
    assert len(chunked_calls) == 2
    torch.testing.assert_close(scheduled, chunked, rtol=1e-5, atol=1e-6)


def test_a_normalized_chunked_call_returns_the_lse(chunked_calls):
    q, k, v, _ = _arguments(ELU, 40, 50)
    out, lse = attnspec.compile(ELU, "triton").attention(q.float(), k.float(), v.float(), return_lse=True)
    ref_out, ref_lse = attnspec.compile(ELU, "reference").attention(q, k, v, return_lse=True)
    assert chunked_calls
    torch.testing.assert_close(lse.double(), ref_lse.double(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.double(), ref_out, rtol=1e-5, atol=1e-6)


def test_the_chunked_kernel_keeps_undefined_rows_and_rows_without_keys(chunked_calls):
    """A NaN in a key poisons every row that sees it (and none before it), as in the dense form; with
    more queries than keys the first rows see no key: 0 (and lse -inf where normalized)."""
    q, k, v, _ = _arguments(ELU, 50, 40)
    k[0, 1, 17, 3] = math.nan
    module, reference = attnspec.compile(ELU, "triton"), attnspec.compile(ELU, "reference")
    got, lse = module.attention(q.float(), k.float(), v.float(), return_lse=True)
    exact, exact_lse = reference.attention(q, k, v, return_lse=True)
    assert torch.equal(torch.isnan(got), torch.isnan(exact)) and bool(torch.isnan(got).any())
    assert torch.equal(torch.isinf(lse), torch.isinf(exact_lse)) and bool(torch.isinf(lse).any())
    finite = ~torch.isnan(exact)
    torch.testing.assert_close(got.double()[finite], exact[finite], rtol=1e-5, atol=1e-6)


def test_a_decay_of_zero_keeps_only_the_diagonal(chunked_calls):
    q, k, v, _ = _arguments(UNNORMALIZED, 37, 37)
    lam = torch.zeros(4, dtype=torch.float64)
    got = attnspec.compile(UNNORMALIZED, "triton").attention(q.float(), k.float(), v.float(), lam=lam.float())
    exact = attnspec.compile(UNNORMALIZED, "reference").attention(q, k, v, lam=lam)
    torch.testing.assert_close(got.double(), exact, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- the chunked backward


@pytest.fixture
def backward_calls(monkeypatch):
    """The calls of the chunked backward's launcher, counted."""
    calls, original = [], linear.chunked_backward

    def counted(*args, **kwargs):
        calls.append(args[0].shape)
        return original(*args, **kwargs)

    monkeypatch.setattr(linear, "chunked_backward", counted)
    return calls


def _grads(source, target, qkv, inputs, dtype, weights, lse_weights=None, learnable_decay=False):
    """(out, lse or None, [dq, dk, dv, d<input>...]) of sum(out * weights) (+ sum(lse * lse_weights)); the
    decay's input `lam` takes a gradient where learnable_decay."""
    leaves = [x.to(dtype).clone().requires_grad_() for x in qkv]
    given = {n: t.to(torch.float64 if dtype == torch.float64 else torch.float32).clone().requires_grad_(n != "lam" or learnable_decay)
             for n, t in inputs.items()}
    module = attnspec.compile(source, target)
    if lse_weights is None:
        out, lse = module.attention(*leaves, **given), None
        loss = (out.double() * weights).sum()
    else:
        out, lse = module.attention(*leaves, **given, return_lse=True)
        loss = (out.double() * weights).sum() + (lse.double() * lse_weights).sum()
    loss.backward()
    return out.detach(), lse, [x.grad for x in leaves] + [t.grad for t in given.values() if t.requires_grad]


def _agree(source, qkv, inputs, dtype, lse=False, learnable_decay=False):
    """The triton module's chunked forward and backward against the reference under the accuracy rule."""
    from attnspec.fuzz.accuracy import check

    B, H, SQ = qkv[0].shape[:3]
    weights = torch.randn(B, H, SQ, qkv[2].shape[-1], generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    lse_weights = torch.randn(B, H, SQ, generator=torch.Generator().manual_seed(4), dtype=torch.float64) if lse else None
    got, low, exact = (_grads(source, target, qkv, inputs, dt, weights, lse_weights, learnable_decay)
                       for target, dt in (("triton", dtype), ("reference", dtype), ("reference", torch.float64)))
    assert got[0].dtype == dtype
    verdicts = [check(got[0], low[0], exact[0], "out")]
    names = ["q", "k", "v", *[n for n in inputs if n != "lam" or learnable_decay]]
    verdicts += [check(g, lo, ex, f"d{n}") for n, g, lo, ex in zip(names, got[2], low[2], exact[2])]
    assert len(got[2]) == len(names)
    assert all(v.ok for v in verdicts), [str(v) for v in verdicts]


@pytest.mark.parametrize("source", STATE_FORMS, ids=STATE_IDS)
@pytest.mark.parametrize("SQ, SKV, H, HKV", [(23, 23, 4, 2), (5, 71, 4, 4), (70, 33, 2, 1), (65, 97, 2, 2)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_the_chunked_backward_agrees_with_the_reference(source, SQ, SKV, H, HKV, dtype, chunked_calls, backward_calls):
    """dq, dk and dv from the chunked kernels (runtime/linear.py): lengths off the chunk, more queries
    than keys (rows without keys) and fewer, GQA (dk and dv summed over the group), fp32 and bf16."""
    q, k, v, inputs = _arguments(source, SQ, SKV, H=H, HKV=HKV)
    _agree(source, (q, k, v), inputs, dtype)
    assert chunked_calls and backward_calls


@pytest.mark.parametrize("source", [ELU, DECAYED, NONCAUSAL, BOTH_WAYS], ids=["elu", "decayed", "noncausal", "both_ways"])
def test_the_lse_gradient_reaches_the_chunked_backward(source, backward_calls):
    """A loss that reads the lse (log of the row sum) as well as the output."""
    q, k, v, inputs = _arguments(source, 37, 45, seed=2)
    _agree(source, (q, k, v), inputs, torch.float32, lse=True)
    assert backward_calls


def test_wide_and_padded_features_split_the_value_blocks(backward_calls, launches):
    """D = 40 pads to 64 features; DV = 80 takes two blocks of 64 value features, whose dq and dk
    partials add up (the row-sum terms in the first block only); dK/dV takes three blocks of 16 key
    features (the last padded), whose dv partials add up, and so does dQ where the decay learns, with
    three blocks of 32 value features (its gradient's partials add up)."""
    gen = torch.Generator().manual_seed(7)
    q, k = torch.randn(1, 2, 41, 40, generator=gen, dtype=torch.float64), torch.randn(1, 2, 50, 40, generator=gen, dtype=torch.float64)
    v = torch.randn(1, 2, 50, 80, generator=gen, dtype=torch.float64)
    lam = 0.5 + 0.5 * torch.rand(2, generator=gen, dtype=torch.float64)
    for source, inputs in ((ELU, {}), (DECAYED, {"lam": lam})):
        _agree(source, (q, k, v), inputs, torch.float32, lse=True, learnable_decay=bool(inputs))
    assert len(backward_calls) == 2
    grids = {name: {grid for n, grid, _ in launches if n == name} for name in (linear.chunked_dkdv_kernel.__name__, linear.chunked_dq_kernel.__name__)}
    assert grids == {linear.chunked_dkdv_kernel.__name__: {(2, 2, 3)}, linear.chunked_dq_kernel.__name__: {(2, 2, 1), (2, 3, 3)}}


@pytest.fixture
def launches(monkeypatch):
    """(kernel name, grid, meta) of every launch through the runtime's `start`."""
    from attnspec.runtime import triton as _rt

    seen, original = [], _rt.start

    def recorded(kernel, grid, *args, **meta):
        seen.append((getattr(kernel, "__name__", getattr(getattr(kernel, "fn", None), "__name__", "")), tuple(grid), meta))
        return original(kernel, grid, *args, **meta)

    monkeypatch.setattr(_rt, "start", recorded)
    return seen


def test_bf16_inputs_take_bf16_products_only_without_gradients(launches):
    """Without gradients, bf16 inputs take bf16 products (emulated in the interpreter); with them, the
    forward and both backward kernels take float32 operands (`_float32_precision`)."""
    q, k, v, inputs = _arguments(DECAYED, 40, 40)
    module = attnspec.compile(DECAYED, "triton")
    low = [x.to(torch.bfloat16) for x in (q, k, v)]
    names = [linear.chunked_kernel.__name__, linear.chunked_dq_kernel.__name__, linear.chunked_dkdv_kernel.__name__]
    module.attention(*low, lam=inputs["lam"].float())
    assert [(n, m["PRECISION"]) for n, _, m in launches if n in names] == [(names[0], "bf16-emulated")]
    launches.clear()
    leaves = [x.clone().requires_grad_() for x in low]
    module.attention(*leaves, lam=inputs["lam"].float()).float().sum().backward()
    assert [(n, m["PRECISION"]) for n, _, m in launches if n in names] == [(n, "tf32") for n in names]


LEARNED_FEATURES = """
attention learned_features {
    input g: float32[H, D]
    prologue q[i, f] = elu(q * g[h, f]) + 1.0
    prologue k[j, f] = elu(k * g[h, f]) + 1.0
    mask kv <= q + (SKV - SQ)
    normalize linear
}
"""


def test_a_learnable_feature_map_gets_its_gradient_through_the_chunks(backward_calls):
    """The prologue's parameters get theirs from the chunked dq and dk, through the prologue's backward."""
    q, k, v, _ = _tensors(29, 35, seed=3, H=2, HKV=2)
    g = 0.5 + torch.rand(2, 16, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    _agree(LEARNED_FEATURES, (q, k, v), {"g": g}, torch.float32)
    assert backward_calls


def test_a_decay_of_zero_has_the_diagonal_gradients(backward_calls):
    q, k, v, _ = _arguments(UNNORMALIZED, 37, 37)
    _agree(UNNORMALIZED, (q, k, v), {"lam": torch.zeros(4, dtype=torch.float64)}, torch.float32)
    assert backward_calls


@pytest.mark.parametrize("SQ, SKV", [(1, 2), (5, 71), (40, 40)])
def test_a_strong_decay_never_overflows_past_the_keys(SQ, SKV, backward_calls):
    """Lightning's decay 2^-8: decay^-n on the zero rows past the last key overflowed float32, and 0 * inf
    gave NaN rows where the keys before the queries run through the state (found by attnspec fuzz)."""
    q, k, v, _ = _arguments(UNNORMALIZED, SQ, SKV)
    _agree(UNNORMALIZED, (q, k, v), {"lam": torch.full((4,), 2.0**-8, dtype=torch.float64)}, torch.float32)
    assert backward_calls


def test_hedgehog_trains_through_the_chunks(backward_calls):
    """N17's learned feature maps (a matrix per head, then a softmax over each half of the features):
    the chunked kernels forward and backward, the matrices' gradients through the prologue."""
    from pathlib import Path

    source = (Path(__file__).resolve().parent.parent / "examples" / "n17_hedgehog.attn").read_text()
    q, k, v, _ = _tensors(41, 50, seed=4)
    gen = torch.Generator().manual_seed(9)
    inputs = {"wq": torch.randn(4, 16, 16, generator=gen, dtype=torch.float64) * 0.5,
              "wk": torch.randn(2, 16, 16, generator=gen, dtype=torch.float64) * 0.5}
    for dtype in (torch.float32, torch.bfloat16):
        _agree(source, (q, k, v), inputs, dtype, lse=dtype == torch.float32)
    assert len(backward_calls) == 2


@pytest.mark.parametrize("causal", [False, True], ids=["inline", "causal"])
def test_an_epilogue_follows_the_chunks(causal, chunked_calls, backward_calls):
    """InLine attention (N05): keys centred by sum_rows, + 1/n through an epilogue reading sum_kept(v),
    which the chunked path sums from v itself (a prefix sum where causal: rows without keys get 0)."""
    from pathlib import Path

    source = (Path(__file__).resolve().parent.parent / "examples" / "n05_inline.attn").read_text()
    if causal:
        source = source.replace("    normalize linear", "    mask kv <= q + (SKV - SQ)\n    normalize linear")
    q, k, v, _ = _tensors(45, 38, seed=6)
    for dtype in (torch.float32, torch.bfloat16):
        _agree(source, (q, k, v), {}, dtype)
    assert len(chunked_calls) == 2 and len(backward_calls) == 2


DECAY_FORMS = [(s, i) for s, i in zip(STATE_FORMS, STATE_IDS) if "lam" in s]


@pytest.mark.parametrize("source", [s for s, _ in DECAY_FORMS], ids=[i for _, i in DECAY_FORMS])
@pytest.mark.parametrize("SQ, SKV, H, HKV", [(23, 23, 4, 2), (5, 71, 4, 4), (70, 33, 2, 1), (65, 97, 2, 2)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_a_learnable_decay_gets_its_gradient_from_the_chunks(source, SQ, SKV, H, HKV, dtype, backward_calls):
    """sum_ij d_ij decay^(d_ij - 1) (dL/dw_ij) (q_i . k_j): from the dq kernel, the keys before each chunk
    through their age-weighted state (exact, no difference of large sums), then through the decay's
    expression to its input (a sigmoid, a shift to negative decays)."""
    q, k, v, inputs = _arguments(source, SQ, SKV, H=H, HKV=HKV)
    _agree(source, (q, k, v), inputs, dtype, learnable_decay=True)
    assert backward_calls


@pytest.mark.parametrize("both_ways", [False, True], ids=["causal", "both_ways"])
def test_the_decay_gradient_at_zero_and_far_below_one(both_ways, backward_calls):
    """decay 0 (only the diagonal: its derivative is the next pair's product, on each side where the
    decay reaches both ways) and Lightning's 2^-8 (past the last key, and before the first)."""
    source = UNNORMALIZED.replace("    mask kv <= q + (SKV - SQ)\n", "") if both_ways else UNNORMALIZED
    q, k, v, _ = _arguments(source, 37, 45)
    for value in (0.0, 2.0**-8):
        _agree(source, (q, k, v), {"lam": torch.full((4,), value, dtype=torch.float64)}, torch.float32, learnable_decay=True)
    assert len(backward_calls) == (4 if both_ways else 2)  # both ways: the causal and the mirrored pass


@pytest.mark.parametrize("source", [ELU, DECAYED, UNNORMALIZED], ids=["elu", "decayed", "unnormalized"])
def test_a_query_without_keys_is_zero_whatever_it_holds(source, chunked_calls):
    """With more queries than keys the first rows see no key: their output is 0 even where their q is NaN
    or infinite (the dense form never multiplies it), and nothing of them reaches dk, dv or the decay
    (found by attnspec fuzz: N17 with wild inputs)."""
    q, k, v, inputs = _arguments(source, 40, 9)
    given = {n: t.float().requires_grad_() for n, t in inputs.items()}
    module, reference = attnspec.compile(source, "triton"), attnspec.compile(source, "reference")
    poisoned, clean = q.float().clone(), q.float().clone()
    poisoned[:, :, :31] = math.nan  # rows 0..30 see no key (31 + 9 - 40 = 0 is the first that does)
    clean[:, :, :31] = 0.0
    grads = []
    for rows in (poisoned, clean):
        leaves = [rows.clone().requires_grad_(), k.float().requires_grad_(), v.float().requires_grad_()]
        out = module.attention(*leaves, **given)
        exact = reference.attention(clean.double(), k, v, **{n: t.double() for n, t in inputs.items()})
        torch.testing.assert_close(out.double(), exact, rtol=1e-5, atol=1e-5)
        out.sum().backward()
        grads.append([leaves[1].grad.clone(), leaves[2].grad.clone(), *(t.grad.clone() for t in given.values())])
        for t in given.values():
            t.grad = None
    for poisoned_grad, clean_grad in zip(*grads):
        assert torch.isfinite(poisoned_grad).all() and torch.equal(poisoned_grad, clean_grad)
    assert len(chunked_calls) == 2
