"""Prologues and the epilogue (docs/language.md sections 3 and 8): q, k or v replaced row by row before
the logit, the output after the normalization.

The examples that use them (B10, M05-v2) are checked against hand-written formulas in
test_examples_formulas.py and on every target by the suites that run every example. Here: what
those do not reach (a prologue of v, GQA heads, learnable inputs read only by a prologue or the
epilogue, half precision, torch.compile, run-time errors), on every target against the float64
reference.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import attnspec
from attnspec.fuzz.accuracy import check

TARGETS = ["reference", "flex", "triton"]

# an RMS norm with a learnable per-head gain on q, a per-kv-head affine map on v, GQA (2 query heads
# per kv head), per-row values of q and k read by the score mod, and an output gate per token with a
# per-feature offset
GAIN = """
attention gain {
    input g: float32[H, D] learnable
    input a: float32[HKV] learnable
    input gate: float32[B, H, SQ] learnable
    prologue q[i, f] = q * g[h, f] / sqrt(sum(q * q) / float(D) + 1e-6)
    prologue k[j, f] = rope(k, float(j) * 0.1 * float(f + 1))
    prologue v = v * a[h] + float(h)
    let kg per k = tanh(0.1 * sum(k) + a[h])
    let qt per q[i, f] = 1.0 + 0.1 * float(i % 3) + sigmoid(sum(q * g[h, f]))
    mask kv <= q + (SKV - SQ)
    score = score * qt + kg
    epilogue out[i, f] = out * sigmoid(gate[b, h, i]) + 0.01 * float(f) / norm(out + 1.0)
}
"""


def _arguments(dtype=torch.float32, seed=0, SQ=19, SKV=23):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(2, 4, SQ, 16, generator=gen)
    k = torch.randn(2, 2, SKV, 16, generator=gen)
    v = torch.randn(2, 2, SKV, 8, generator=gen)
    inputs = {"g": torch.randn(4, 16, generator=gen), "a": torch.randn(2, generator=gen),
              "gate": torch.randn(2, 4, SQ, generator=gen)}
    return (q, k, v), inputs


def _hand_gain(q, k, v, g, a, gate):
    """GAIN written directly with torch."""
    SQ, SKV = q.shape[2], k.shape[2]
    q = q * g[None, :, None, :] / torch.sqrt((q * q).mean(-1, keepdim=True) + 1e-6)
    angle = torch.arange(SKV, dtype=k.dtype)[:, None] * 0.1 * torch.arange(1, 9, dtype=k.dtype)[None, :]
    first, second = k[..., :8], k[..., 8:]
    k = torch.cat([first * angle.cos() - second * angle.sin(), second * angle.cos() + first * angle.sin()], -1)
    v = v * a[None, :, None, None] + torch.arange(2, dtype=v.dtype)[None, :, None, None]
    kg = torch.tanh(0.1 * k.sum(-1) + a[None, :, None])  # [B, HKV, SKV], from k after its prologue
    qt = 1.0 + 0.1 * (torch.arange(SQ) % 3).to(q.dtype) + torch.sigmoid((q * g[None, :, None, :]).sum(-1))
    k, v, kg = k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1), kg.repeat_interleave(2, dim=1)
    s = (q @ k.transpose(-1, -2) / 4.0) * qt[..., None] + kg[:, :, None, :]
    keep = torch.arange(SKV)[None, :] <= torch.arange(SQ)[:, None] + (SKV - SQ)
    out = torch.softmax(s.masked_fill(~keep, -torch.inf), -1) @ v
    return out * torch.sigmoid(gate)[..., None] + 0.01 * torch.arange(8, dtype=out.dtype) / (out + 1.0).norm(dim=-1, keepdim=True)


def _call(target, qkv, inputs, dtype, grad=False):
    module = attnspec.compile(GAIN, target)
    qkv = [x.detach().to(dtype).clone().requires_grad_(grad) for x in qkv]  # leaves of this call only
    own = dtype if dtype == torch.float64 else torch.float32
    inputs = {n: x.detach().to(own).clone().requires_grad_(grad) for n, x in inputs.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = module.attention(*qkv, **inputs)
    return out, qkv, inputs


def test_the_reference_computes_the_hand_formula():
    qkv, inputs = _arguments()
    out, _, _ = _call("reference", qkv, inputs, torch.float64)
    expected = _hand_gain(*(x.double() for x in qkv), **{n: x.double() for n, x in inputs.items()})
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("target", ["flex", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_forward_and_every_gradient_agree_with_the_reference(target, dtype):
    qkv, inputs = _arguments(seed=1)
    out, args, ins = _call(target, qkv, inputs, dtype, grad=True)
    low, low_args, low_ins = _call("reference", qkv, inputs, dtype, grad=True)
    ref, ref_args, ref_ins = _call("reference", qkv, inputs, torch.float64, grad=True)
    assert out.dtype == dtype
    assert check(out, low, ref, "out").ok
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for result, leaves in ((out, args + list(ins.values())), (low, low_args + list(low_ins.values())),
                           (ref, ref_args + list(ref_ins.values()))):
        (result.double() * weights).sum().backward()
    names = ["q", "k", "v", *ins]
    for name, mine, lows, exact in zip(names, args + list(ins.values()), low_args + list(low_ins.values()),
                                       ref_args + list(ref_ins.values())):
        verdict = check(mine.grad, lows.grad, exact.grad, f"d{name}")
        assert verdict.ok, f"{target} {dtype}: {verdict}"


@pytest.mark.parametrize("target", ["flex", "triton"])
def test_the_prologue_traces_with_the_attention_under_torch_compile(target):
    qkv, inputs = _arguments(seed=3)
    module = attnspec.compile(GAIN, target)
    expected = module.attention(*qkv, **inputs)
    torch._dynamo.reset()
    compiled = torch.compile(lambda *a, **kw: module.attention(*a, **kw), fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(*qkv, **inputs), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("target", TARGETS)
def test_rope_with_an_odd_number_of_features_is_a_clear_error(target):
    module = attnspec.compile("attention r {\n prologue q[i, f] = rope(q, float(i))\n}", target)
    q = k = v = torch.randn(1, 1, 4, 15)
    with pytest.raises(ValueError, match="rope.*even number of them, got 15"):
        module.attention(q, k, v)


def test_the_printed_spec_reads_back_as_the_same_prologue():
    from attnspec.frontend import parse_program
    from attnspec.printer import print_program

    program = parse_program(GAIN)
    again = parse_program(print_program(program))
    assert again.specs[0].prologue == program.specs[0].prologue
    assert again.specs[0].epilogue == program.specs[0].epilogue
    assert "prologue q[i, f] = q * g[h, f] / sqrt(sum(q * q) / float(D) + 1e-06)" in print_program(program)
    assert "epilogue out[i, f] = out * sigmoid(gate[b, h, i]) + 0.01 * float(f) / norm(out + 1.0)" in print_program(program)


# token pruning: a mask that reads per-row values of q and k (after k's prologue); rows whose keys are
# all pruned are empty
PRUNED = """
attention pruned {
    param ratio: float runtime = 0.8
    input g: float32[HKV, D] learnable
    prologue k[j, f] = k * g[h, f]
    let kn per k = norm(k)
    let qn per q = norm(q)
    mask kv <= q + (SKV - SQ) and kn >= ratio * qn
    score = score + 0.1 * kn
}
"""


def _pruned_arguments(seed=0, SQ=19, SKV=23):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(2, 4, SQ, 16, generator=gen)
    k = torch.randn(2, 2, SKV, 16, generator=gen)
    v = torch.randn(2, 2, SKV, 8, generator=gen)
    return (q, k, v), {"g": torch.rand(2, 16, generator=gen) + 0.5}


def _hand_pruned(q, k, v, g, ratio):
    SQ, SKV = q.shape[2], k.shape[2]
    k = k * g[None, :, None, :]
    kn = k.norm(dim=-1).repeat_interleave(2, dim=1)[:, :, None, :]  # [B, H, 1, SKV]
    qn = q.norm(dim=-1)[..., None]  # [B, H, SQ, 1]
    k, v = k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1)
    s = q @ k.transpose(-1, -2) / 4.0 + 0.1 * kn
    keep = (torch.arange(SKV)[None, :] <= torch.arange(SQ)[:, None] + (SKV - SQ)) & (kn >= ratio * qn)
    w = torch.softmax(s.masked_fill(~keep, -torch.inf), -1).nan_to_num(0.0)  # an empty row: 0
    return w @ v, keep.any(-1)


def _pruned_call(target, qkv, inputs, dtype, ratio, grad=False):
    module = attnspec.compile(PRUNED, target)
    qkv = [x.detach().to(dtype).clone().requires_grad_(grad) for x in qkv]
    inputs = {n: x.detach().to(torch.float64 if dtype == torch.float64 else torch.float32).clone().requires_grad_(grad)
              for n, x in inputs.items()}
    return module.attention(*qkv, **inputs, ratio=ratio), qkv + list(inputs.values())


@pytest.mark.parametrize("ratio", [0.8, 1.3])
def test_a_mask_reading_per_row_values_computes_the_hand_formula(ratio):
    qkv, inputs = _pruned_arguments()
    out, _ = _pruned_call("reference", qkv, inputs, torch.float64, ratio)
    expected, nonempty = _hand_pruned(*(x.double() for x in qkv), inputs["g"].double(), ratio)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    if ratio > 1:
        assert not nonempty.all()  # some rows lose every key


@pytest.mark.parametrize("target", ["flex", "triton"])
@pytest.mark.parametrize("ratio", [0.8, 1.3])
def test_a_mask_reading_per_row_values_agrees_on_every_target(target, ratio):
    qkv, inputs = _pruned_arguments(seed=1)
    out, leaves = _pruned_call(target, qkv, inputs, torch.float32, ratio, grad=True)
    low, low_leaves = _pruned_call("reference", qkv, inputs, torch.float32, ratio, grad=True)
    ref, ref_leaves = _pruned_call("reference", qkv, inputs, torch.float64, ratio, grad=True)
    assert check(out, low, ref, "out").ok
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for result in (out, low, ref):
        (result.double() * weights).sum().backward()
    for name, mine, lows, exact in zip(["q", "k", "v", "g"], leaves, low_leaves, ref_leaves):
        verdict = check(mine.grad, lows.grad, exact.grad, f"d{name}")
        assert verdict.ok, f"{target}: {verdict}"


def test_the_block_mask_and_schedule_take_q_and_k_as_attention_does():
    """build_block_mask / build_schedule compute the mask's per-row values from the q and k the caller
    passes (after the prologue); built once and passed back, they give attention's own result."""
    qkv, inputs = _pruned_arguments(seed=3, SQ=40, SKV=40)
    flex, triton = attnspec.compile(PRUNED, "flex"), attnspec.compile(PRUNED, "triton")
    block_mask = flex.build_block_mask(qkv[0], qkv[1], **inputs, ratio=1.1)
    torch.testing.assert_close(flex.attention(*qkv, **inputs, ratio=1.1, block_mask=block_mask),
                               flex.attention(*qkv, **inputs, ratio=1.1), rtol=0, atol=0)
    schedule = triton.build_schedule(qkv[0], qkv[1], **inputs, ratio=1.1)
    torch.testing.assert_close(triton.attention(*qkv, **inputs, ratio=1.1, schedule=schedule),
                               triton.attention(*qkv, **inputs, ratio=1.1), rtol=0, atol=0)
