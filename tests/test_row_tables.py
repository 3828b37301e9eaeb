"""Per-row tables (`let t[r: N] per q|k = ...`, docs/language.md section 3): N numbers per row of q or
k, read per pair at an entry, as relative logits q_i . rel[i - j] are.

The DeBERTa example (tables of q and of k) is checked against its hand formula in
test_examples_formulas.py and on every target by the suites that run every example. Here: Shaw-style
relative logits with causal decode alignment, GQA and SQ != SKV, a table read by the mask and the
epilogue, a table too long for a tile (read from memory), on every target against the float64
reference, forward and every gradient; the contraction the dense code uses; the printed form.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import attnspec
from attnspec.api import lower, pick_spec
from attnspec.frontend import parse_program
from attnspec.fuzz.accuracy import check
from attnspec.printer import print_program
from attnspec.runtime import functions as fn
from codegen.table_tiles import table_tiles

W = 3

# Shaw et al.'s relative logits: q_i . rel[h, clip(j - i, -W, W) + W], causal (decode-aligned); the
# table also gates the output through its middle entry, and its entry W + 1 drops pairs from the mask
SHAW = f"""
attention shaw {{
    param W: int = {W}
    input rel: float32[H, 2 * W + 1, D] learnable
    let qr[r: 2 * W + 1] per q[i, f] = sum(q * rel[h, r, f])
    mask kv <= q + (SKV - SQ) and qr[W + 1] > -2.5
    score = score + qr[clamp(kv - q - (SKV - SQ), -W, W) + W]
    epilogue out[i, f] = out * sigmoid(qr[W])
}}
"""

# a table of k as long as the queries allow: its extent is not a compile-time constant, so the kernels
# read it from memory pair by pair
LONG = """
attention long {
    input pos: float32[HKV, 2 * SQ - 1, D] learnable
    let kp[r: 2 * SQ - 1] per k[j, f] = 0.5 * sum(pos[h, r, f] * k)
    score = score + kp[kv - q + SQ - 1]
}
"""


def _arguments(spec: str, seed=0, SQ=19, SKV=23):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(2, 4, SQ, 16, generator=gen)
    k = torch.randn(2, 2, SKV, 16, generator=gen)
    v = torch.randn(2, 2, SKV, 8, generator=gen)
    if spec is SHAW:
        return (q, k, v), {"rel": torch.randn(4, 2 * W + 1, 16, generator=gen) * 0.5}
    return (q, k, v), {"pos": torch.randn(2, 2 * SQ - 1, 16, generator=gen) * 0.5}


def _hand_shaw(q, k, v, rel):
    """Written per pair: each (i, j) dots q_i with its clipped relative row of the table."""
    SQ, SKV = q.shape[2], k.shape[2]
    i, j = torch.arange(SQ)[:, None], torch.arange(SKV)[None, :]
    offset = (j - i - (SKV - SQ)).clamp(-W, W) + W  # [SQ, SKV]
    pairs = torch.einsum("bhid,hijd->bhij", q, rel[:, offset])
    table = torch.einsum("bhid,hrd->bhir", q, rel)  # [B, H, SQ, 2W + 1]
    k, v = k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1)
    s = q @ k.transpose(-1, -2) / 4.0 + pairs
    keep = (j <= i + (SKV - SQ)) & (table[..., W + 1:W + 2] > -2.5)
    w = torch.softmax(s.masked_fill(~keep, -torch.inf), -1).nan_to_num(0.0)  # an empty row: 0
    return (w @ v) * torch.sigmoid(table[..., W:W + 1])


def _hand_long(q, k, v, pos):
    SQ, SKV = q.shape[2], k.shape[2]
    i, j = torch.arange(SQ)[:, None], torch.arange(SKV)[None, :]
    index = (j - i + SQ - 1).clamp(0, 2 * SQ - 2)
    kx, vx = k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1)
    pos_of_head = pos.repeat_interleave(2, dim=0)  # a query head reads its kv head's table
    pairs = 0.5 * torch.einsum("bhjd,hijd->bhij", kx, pos_of_head[:, index])
    return torch.softmax(q @ kx.transpose(-1, -2) / 4.0 + pairs, -1) @ vx


def _call(spec, target, qkv, inputs, dtype, grad=False):
    module = attnspec.compile(spec, target)
    qkv = [x.detach().to(dtype).clone().requires_grad_(grad) for x in qkv]
    own = torch.float64 if dtype == torch.float64 else torch.float32
    inputs = {n: x.detach().to(own).clone().requires_grad_(grad) for n, x in inputs.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = module.attention(*qkv, **inputs)
    return out, qkv + list(inputs.values())


@pytest.mark.parametrize("spec, hand", [(SHAW, _hand_shaw), (LONG, _hand_long)], ids=["shaw", "long"])
@pytest.mark.parametrize("SQ, SKV", [(19, 23), (23, 19), (1, 23)], ids=["sq<skv", "sq>skv", "decode"])
def test_the_reference_computes_the_hand_formula(spec, hand, SQ, SKV):
    qkv, inputs = _arguments(spec, SQ=SQ, SKV=SKV)
    out, _ = _call(spec, "reference", qkv, inputs, torch.float64)
    expected = hand(*(x.double() for x in qkv), *(x.double() for x in inputs.values()))
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)


def test_the_mask_reading_the_table_empties_some_rows():
    """The case above is about something: the table's entry drops every key of some rows."""
    qkv, inputs = _arguments(SHAW)
    q, rel = qkv[0].double(), inputs["rel"].double()
    dropped = torch.einsum("bhid,hd->bhi", q, rel[:, W + 1]) <= -2.5
    assert dropped.any() and not dropped.all()


@pytest.mark.parametrize("target", ["flex", "triton"])
@pytest.mark.parametrize("spec", [SHAW, LONG], ids=["shaw", "long"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_forward_and_every_gradient_agree_with_the_reference(target, spec, dtype):
    qkv, inputs = _arguments(spec, seed=1)
    out, leaves = _call(spec, target, qkv, inputs, dtype, grad=True)
    low, low_leaves = _call(spec, "reference", qkv, inputs, dtype, grad=True)
    ref, ref_leaves = _call(spec, "reference", qkv, inputs, torch.float64, grad=True)
    assert out.dtype == dtype
    assert check(out, low, ref, "out").ok
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for result in (out, low, ref):
        (result.double() * weights).sum().backward()
    for name, mine, lows, exact in zip(["q", "k", "v", *inputs], leaves, low_leaves, ref_leaves):
        verdict = check(mine.grad, lows.grad, exact.grad, f"d{name}")
        assert verdict.ok, f"{target} {dtype}: {verdict}"


def _lowered(source: str):
    return lower(pick_spec(parse_program(source), None))


def test_small_tables_are_read_from_tiles_and_long_ones_from_memory():
    """A table with a constant, small number of entries is loaded once per tile of rows and each pair
    picks its entry with tl.gather; one sized by the lengths is read pair by pair."""
    shaw = table_tiles(_lowered(SHAW))
    assert list(shaw) == ["qr"] and shaw["qr"].axis == 1 and shaw["qr"].entries == 8  # 7 padded
    assert table_tiles(_lowered(LONG)) == {}
    source = attnspec.compile_source(SHAW, "triton")
    assert "tl.gather(_tile_qr, " in source and "table_tiles=True" in source
    assert "tl.gather" not in attnspec.compile_source(LONG, "triton")


def test_a_table_is_a_contraction_not_a_product_over_its_entries():
    """q . rel[r] for every entry r: the dense code contracts the features (einsum) and never forms
    the [rows, entries, features] product; the result equals the summed product."""
    source = attnspec.compile_source(SHAW, "reference")
    assert "_fn.feature_dot(q[..., None, :], _fn.load(rel, _h, _entry, _feature)" in source
    gen = torch.Generator().manual_seed(4)
    x, y = torch.randn(2, 3, 5, 1, 8, generator=gen, dtype=torch.float64), torch.randn(1, 3, 1, 7, 8, generator=gen, dtype=torch.float64)
    like = torch.empty(2, 3, 5, 1, 8, dtype=torch.float64)
    torch.testing.assert_close(fn.feature_dot(x, y, like), (x * y).sum(-1, keepdim=True), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fn.feature_dot(x, 2.0, like), 2.0 * x.sum(-1, keepdim=True), rtol=1e-12, atol=1e-12)
    no_features = y[..., :1]  # a factor without the feature axis broadcasts over it
    torch.testing.assert_close(fn.feature_dot(x, no_features, like), (x * no_features).sum(-1, keepdim=True))


def test_the_printed_spec_reads_back_as_the_same_tables():
    program = parse_program(SHAW)
    printed = print_program(program)
    assert "let qr[r: 2 * W + 1] per q[i, f] = sum(q * rel[h, r, f])" in printed
    again = parse_program(printed)
    assert again.specs[0] == program.specs[0]
