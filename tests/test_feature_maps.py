"""Feature maps that mix a row's features (docs/language.md section 3, `prologue`): `sum(x[g] * w[h, g, f]
for g)`, the row times a matrix per batch and head, `softmax(x[, groups])` over the features (Hedgehog,
N17), and `softmax_rows(x)` and `sum_rows(x)` over the tensor's rows (Efficient Attention, N15; InLine,
N05). Checked against hand
formulas in float64 and on every target against the reference, forward and every gradient, fp32 and bf16.
"""

from __future__ import annotations

import pytest
import torch

import attnspec
from attnspec.fuzz.accuracy import check

PROJECTED = """
attention projected {
    input w: float32[H, D, D] learnable
    prologue q[i, f] = sum(q[g] * w[h, g, f] for g)
    mask kv <= q + (SKV - SQ)
}
"""

SOFTMAX_FEATURES = """
attention softmax_features {
    input t: float32[H] learnable
    prologue q = softmax(q * t[h])
    prologue k = softmax(k, 4)
    normalize linear
}
"""

MIXED = """
attention mixed {
    input w: float32[HKV, D, D] learnable
    prologue k[j, f] = 0.5 * sum(exp(0.5 * k[g]) * where(g == f, 1.0, 0.25) * w[h, g, f] for g) + float(f)
    mask kv <= q + (SKV - SQ) and kv + 9 > q + (SKV - SQ)
}
"""

OVER_ROWS = """
attention over_rows {
    input t: float32[HKV] learnable
    prologue k = softmax_rows(k * t[h])
    mask kv <= q + (SKV - SQ)
}
"""

CENTERED = """
attention centered {
    prologue k = relu(k) - sum_rows(relu(k)) / float(SKV)
    normalize linear(normalized = false)
}
"""

SPECS = {"projected": PROJECTED, "softmax_features": SOFTMAX_FEATURES, "mixed": MIXED, "over_rows": OVER_ROWS, "centered": CENTERED}


def _inputs(name, H, HKV, D, gen):
    if name == "centered":
        return {}
    if name == "projected":
        return {"w": torch.randn(H, D, D, generator=gen, dtype=torch.float64) / D ** 0.5}
    if name == "softmax_features":
        return {"t": 0.5 + torch.rand(H, generator=gen, dtype=torch.float64)}
    if name == "over_rows":
        return {"t": 0.5 + torch.rand(HKV, generator=gen, dtype=torch.float64)}
    return {"w": torch.randn(HKV, D, D, generator=gen, dtype=torch.float64) / D ** 0.5}


def _tensors(name, B=2, H=4, HKV=2, SQ=19, SKV=27, D=16, DV=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, SQ, D, generator=gen, dtype=torch.float64)
    k = torch.randn(B, HKV, SKV, D, generator=gen, dtype=torch.float64)
    v = torch.randn(B, HKV, SKV, DV, generator=gen, dtype=torch.float64)
    return (q, k, v), _inputs(name, H, HKV, D, gen)


def _expand(x, H):
    return x.repeat_interleave(H // x.shape[1], 1)


def _softmax_attention(q, k, v, keep):
    s = q @ _expand(k, q.shape[1]).transpose(-1, -2) / q.shape[-1] ** 0.5
    s = s.masked_fill(~keep, float("-inf"))
    return torch.softmax(s, -1).nan_to_num(0.0) @ _expand(v, q.shape[1])


def _causal(SQ, SKV):
    return torch.arange(SKV)[None, :] <= torch.arange(SQ)[:, None] + (SKV - SQ)


def hand(name, q, k, v, inputs):
    SQ, SKV, D = q.shape[2], k.shape[2], q.shape[-1]
    if name == "projected":
        return _softmax_attention(torch.einsum("bhsd,hde->bhse", q, inputs["w"]), k, v, _causal(SQ, SKV))
    if name == "softmax_features":
        phi_q = torch.softmax(q * inputs["t"][None, :, None, None], -1)
        phi_k = torch.softmax(k.reshape(*k.shape[:-1], 4, D // 4), -1).reshape(k.shape)
        s = phi_q @ _expand(phi_k, q.shape[1]).transpose(-1, -2)
        return (s / s.sum(-1, keepdim=True)) @ _expand(v, q.shape[1])
    if name == "centered":  # k's features less their mean over the keys (InLine attention's, N05)
        centered = torch.relu(k) - torch.relu(k).mean(-2, keepdim=True)
        return q @ _expand(centered, q.shape[1]).transpose(-1, -2) @ _expand(v, q.shape[1])
    if name == "over_rows":  # each feature of k a softmax over the keys (Efficient Attention's rho_k)
        return _softmax_attention(q, torch.softmax(k * inputs["t"][None, :, None, None], -2), v, _causal(SQ, SKV))
    f = torch.arange(D, dtype=torch.float64)
    weight = torch.where(f[:, None] == f[None, :], 1.0, 0.25) * inputs["w"]  # [HKV, g, f]
    mixed = 0.5 * torch.einsum("bhsg,hgf->bhsf", torch.exp(0.5 * k), weight) + f
    edge = torch.arange(SQ)[:, None] + (SKV - SQ)
    keep = (torch.arange(SKV)[None, :] <= edge) & (torch.arange(SKV)[None, :] + 9 > edge)
    return _softmax_attention(q, mixed, v, keep)


@pytest.mark.parametrize("name", SPECS)
@pytest.mark.parametrize("shape", [dict(), dict(SQ=1, SKV=40), dict(H=3, HKV=1, SQ=33, SKV=20, D=12)], ids=["gqa", "decode", "mqa_d12"])
def test_the_reference_is_the_hand_formula(name, shape):
    (q, k, v), inputs = _tensors(name, **shape)
    got = attnspec.compile(SPECS[name], "reference").attention(q, k, v, **inputs)
    torch.testing.assert_close(got, hand(name, q, k, v, inputs), rtol=1e-10, atol=1e-12)


def _run(source, target, qkv, inputs, dtype, weights):
    leaves = [x.detach().clone().to(dtype).requires_grad_() for x in qkv]
    given = {n: t.detach().clone().to(torch.float64 if dtype == torch.float64 else torch.float32).requires_grad_()
             for n, t in inputs.items()}
    out = attnspec.compile(source, target).attention(*leaves, **given)
    (out.double() * weights).sum().backward()
    return out.detach(), [x.grad for x in leaves] + [t.grad for t in given.values()]


@pytest.mark.parametrize("name", SPECS)
@pytest.mark.parametrize("target", ["flex", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_every_target_agrees_forward_and_backward(name, target, dtype):
    """The triton target runs each statement as a pass over the rows (tl.dot for the matrix, grouped
    reductions for the softmax); the gradients of both go through the tensor code."""
    qkv, inputs = _tensors(name, SQ=37, SKV=45, D=16 if name != "softmax_features" else 24, seed=1)
    weights = torch.randn(2, 4, 37, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    got, got_grads = _run(SPECS[name], target, qkv, inputs, dtype, weights)
    low, low_grads = _run(SPECS[name], "reference", qkv, inputs, dtype, weights)
    exact, exact_grads = _run(SPECS[name], "reference", qkv, inputs, torch.float64, weights)
    verdicts = [check(got, low, exact, "out")]
    names = ["q", "k", "v", *inputs]
    verdicts += [check(g, lo, ex, f"d{n}") for n, g, lo, ex in zip(names, got_grads, low_grads, exact_grads)]
    assert all(v.ok for v in verdicts), [str(v) for v in verdicts]


@pytest.mark.parametrize("target", ["reference", "flex", "triton"])
def test_softmax_groups_must_divide_the_features(target):
    (q, k, v), inputs = _tensors("softmax_features", D=18)  # 18 features in 4 groups
    with pytest.raises(ValueError, match="4 equal groups"):
        attnspec.compile(SOFTMAX_FEATURES, target).attention(q.float(), k.float(), v.float(), t=inputs["t"].float())


def test_the_forward_kernel_does_not_take_a_mixing_q_prologue():
    """The forward kernel can apply a q prologue to its resident tile in inference; a matrix or a softmax
    over the features needs the pass's [rows, features] tile, so such a prologue stays a pass."""
    from attnspec.api import _lowered
    from codegen.rowmap_triton import fused_q_prologue

    assert fused_q_prologue(_lowered(PROJECTED, "triton", None, {})[0]) is None
    assert fused_q_prologue(_lowered(PROJECTED.replace("sum(q[g] * w[h, g, f] for g)", "q * w[h, f, f]"), "triton", None, {})[0]) is not None


@pytest.mark.parametrize("name", SPECS)
def test_printing_gives_back_the_same_spec(name):
    """`q[g]`, the summed feature and the matrix's indices come back by their names, softmax's groups too."""
    from attnspec.frontend import parse_program
    from attnspec.printer import print_program

    program = parse_program(SPECS[name], "<string>")
    printed = print_program(program)
    assert parse_program(printed, "<string>") == program, printed
    assert ("for g)" in printed) == (name in ("projected", "mixed")) and ("softmax(k, 4)" in printed) == (name == "softmax_features")
