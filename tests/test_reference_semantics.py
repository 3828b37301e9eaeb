"""The generated reference (the oracle) against independent dense formulas written here.

Each test compiles a small inline spec with `attnspec.compile` and compares the module with
PyTorch code written from design.md section 2 (SDPA in float64 where it applies), covering every
normalization, masks and fully masked rows, GQA, scale, inputs, runtime params, validation errors,
low-precision runs and the nn.Module wrapper.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import attnspec

F64 = torch.float64
TOL = dict(rtol=1e-10, atol=1e-12)


def rand(gen, *shape, dtype=F64):
    return torch.randn(*shape, generator=gen, dtype=F64).to(dtype)


def qkv(B=2, H=3, HKV=None, SQ=5, SKV=7, D=8, DV=6, seed=0, dtype=F64):
    gen = torch.Generator().manual_seed(seed)
    HKV = H if HKV is None else HKV
    return rand(gen, B, H, SQ, D, dtype=dtype), rand(gen, B, HKV, SKV, D, dtype=dtype), rand(gen, B, HKV, SKV, DV, dtype=dtype)


def grid(B, H, SQ, SKV):
    return (
        torch.arange(B).view(B, 1, 1, 1),
        torch.arange(H).view(1, H, 1, 1),
        torch.arange(SQ).view(1, 1, SQ, 1),
        torch.arange(SKV).view(1, 1, 1, SKV),
    )


def expand_kv(x, H):
    return x.repeat_interleave(H // x.shape[1], dim=1)


def dense_logits(q, k, scale=None):
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    return torch.einsum("bhid,bhjd->bhij", q, expand_kv(k, q.shape[1])) * scale


def dense_softmax(s, keep, v, sink=None):
    """Softmax over kept keys with an optional sink logit [B, H, SQ] in the denominator; lse float64."""
    keep = keep.expand(s.shape)
    out = torch.zeros(*s.shape[:3], v.shape[-1], dtype=s.dtype)
    lse = torch.full(s.shape[:3], -math.inf, dtype=s.dtype)
    vv = expand_kv(v, s.shape[1])
    B, H, SQ, _ = s.shape
    for b in range(B):
        for h in range(H):
            for i in range(SQ):
                row, kept = s[b, h, i], keep[b, h, i]
                terms = row[kept]
                if sink is not None:
                    terms = torch.cat([terms, sink[b, h, i].reshape(1)])
                if terms.numel() == 0:
                    continue
                lse[b, h, i] = torch.logsumexp(terms, 0)
                w = torch.where(kept, torch.exp(row - lse[b, h, i]), 0.0)
                out[b, h, i] = w @ vv[b, h]
    return out, lse


def compile_(text, **consts):
    return attnspec.compile(text, **consts)


# ------------------------------------------------------------------ softmax against SDPA


def sdpa(q, k, v, keep=None, scale=None):
    H = q.shape[1]
    return F.scaled_dot_product_attention(q, expand_kv(k, H), expand_kv(v, H), attn_mask=keep, scale=scale)


def test_softmax_matches_sdpa():
    q, k, v = qkv()
    mod = compile_("attention plain { }")
    out, lse = mod.attention(q, k, v, return_lse=True)
    torch.testing.assert_close(out, sdpa(q, k, v), **TOL)
    torch.testing.assert_close(lse, torch.logsumexp(dense_logits(q, k), -1).float())
    assert out.dtype == F64 and out.shape == (2, 3, 5, 6)


@pytest.mark.parametrize("SQ, SKV", [(5, 9), (9, 5), (1, 7), (7, 1), (6, 6)])
def test_causal_with_unequal_lengths_matches_sdpa(SQ, SKV):
    q, k, v = qkv(SQ=SQ, SKV=SKV)
    _, _, i, j = grid(1, 1, SQ, SKV)
    mod = compile_("attention causal_top { mask kv <= q }")
    keep = j <= i  # top-left aligned: query i sees keys 0..i; row 0 always sees key 0
    torch.testing.assert_close(mod.attention(q, k, v), sdpa(q, k, v, keep), **TOL)


@pytest.mark.parametrize("SQ, SKV", [(5, 9), (9, 5)])
def test_bottom_right_causal_and_fully_masked_rows(SQ, SKV):
    q, k, v = qkv(SQ=SQ, SKV=SKV)
    _, _, i, j = grid(1, 1, SQ, SKV)
    mod = compile_("attention causal_br { mask kv <= q + (SKV - SQ) }")
    out, lse = mod.attention(q, k, v, return_lse=True)
    keep = j <= i + (SKV - SQ)
    want, want_lse = dense_softmax(dense_logits(q, k), keep, v)
    torch.testing.assert_close(out, want, **TOL)
    torch.testing.assert_close(lse, want_lse.float())
    empty = ~keep.any(-1).expand(2, 3, SQ)
    if SQ > SKV:
        assert empty.any()
    assert torch.equal(out[empty], torch.zeros_like(out[empty]))
    assert bool(torch.isneginf(lse[empty]).all())
    assert not torch.isnan(out).any() and not torch.isnan(lse).any()
    live = ~empty
    torch.testing.assert_close(out[live], sdpa(q, k, v, keep)[live], **TOL)


def test_gqa_reads_kv_head_h_div_g():
    q, k, v = qkv(H=6, HKV=2)
    mod = compile_("attention gqa { mask kv <= q + 2 }")
    _, _, i, j = grid(1, 1, 5, 7)
    want = torch.zeros(2, 6, 5, 6, dtype=F64)
    for h in range(6):  # explicit per-head loop: head h reads kv head h // 3
        want[:, h] = sdpa(q[:, h : h + 1], k[:, h // 3 : h // 3 + 1], v[:, h // 3 : h // 3 + 1], j <= i + 2)[:, 0]
    torch.testing.assert_close(mod.attention(q, k, v), want, **TOL)


def test_declared_gqa_group_is_checked():
    mod = compile_("attention g { param g: int = 3\n gqa group = g }")
    q, k, v = qkv(H=6, HKV=2)
    torch.testing.assert_close(mod.attention(q, k, v), sdpa(q, k, v), **TOL)
    q, k, v = qkv(H=4, HKV=2)
    with pytest.raises(ValueError, match="gqa group"):
        mod.attention(q, k, v)


@pytest.mark.parametrize(
    "scale_text, scale_of",
    [("0.25", lambda D: 0.25), ("1.0 / D", lambda D: 1.0 / D), ("2", lambda D: 2.0), ("sqrt(D) / 4", lambda D: math.sqrt(D) / 4)],
)
def test_scale_override(scale_text, scale_of):
    q, k, v = qkv(D=16)
    mod = compile_(f"attention sc {{ scale = {scale_text}\n mask kv <= q + 1 }}")
    _, _, i, j = grid(1, 1, 5, 7)
    torch.testing.assert_close(mod.attention(q, k, v), sdpa(q, k, v, j <= i + 1, scale=scale_of(16)), **TOL)


def test_runtime_scale_and_score_mod_order():
    """Scale first, then the score mod, then the mask (FlexAttention's convention)."""
    q, k, v = qkv()
    mod = compile_("attention o { param s: float runtime = 0.5\n scale = s\n score = score * score\n mask kv != q }")
    s = dense_logits(q, k, 0.3) ** 2
    _, _, i, j = grid(1, 1, 5, 7)
    want, _ = dense_softmax(s, j != i, v)
    torch.testing.assert_close(mod.attention(q, k, v, s=0.3), want, **TOL)


def test_score_mod_with_index_variables_alibi():
    q, k, v = qkv(B=2, H=3)
    gen = torch.Generator().manual_seed(5)
    slope = torch.rand(3, generator=gen, dtype=F64)
    mod = compile_("attention alibi { input slope: float64[H]\n score = score - slope[h] * abs(q - kv) + float(b) }")
    b, h, i, j = grid(2, 3, 5, 7)
    s = dense_logits(q, k) - slope.view(1, 3, 1, 1) * (i - j).abs() + b
    want, want_lse = dense_softmax(s, torch.ones(1, 1, 1, 1, dtype=torch.bool), v)
    out, lse = mod.attention(q, k, v, slope=slope, return_lse=True)
    torch.testing.assert_close(out, want, **TOL)
    torch.testing.assert_close(lse, want_lse.float())


# ------------------------------------------------------------------ sinks and fully masked rows

SINK_SPEC = """
attention sink {
    param off: int runtime = 0
    input sink_logit: float32[H] learnable
    mask kv <= q - off
    normalize softmax(sink = sink_logit[h])
}
"""


@pytest.mark.parametrize("off", [0, 2, 100])
def test_softmax_with_sink(off):
    q, k, v = qkv(SQ=6, SKV=6)
    sink = torch.tensor([0.5, -1.0, 3.0], dtype=torch.float32)
    mod = compile_(SINK_SPEC)
    out, lse = mod.attention(q, k, v, sink_logit=sink, off=off, return_lse=True)
    _, _, i, j = grid(1, 1, 6, 6)
    keep = j <= i - off
    sink_rows = sink.double().view(1, 3, 1).expand(2, 3, 6)
    want, want_lse = dense_softmax(dense_logits(q, k), keep, v, sink_rows)
    torch.testing.assert_close(out, want, **TOL)
    torch.testing.assert_close(lse, want_lse.float())
    empty = ~keep.any(-1).expand(2, 3, 6)
    # a fully masked row: out = 0, lse = the sink logit (the sink is the only term)
    assert torch.equal(out[empty], torch.zeros_like(out[empty]))
    torch.testing.assert_close(lse[empty], sink_rows[empty].float())
    assert not torch.isnan(out).any() and not torch.isnan(lse).any()


def test_sink_can_depend_on_b_and_q():
    q, k, v = qkv(SQ=4, SKV=4)
    mod = compile_("attention s2 { mask kv < q\n normalize softmax(sink = float(q) * 0.5 - float(b)) }")
    b, _, i, j = grid(2, 1, 4, 4)
    sink = (i[..., 0] * 0.5 - b[..., 0]).expand(2, 3, 4).double()
    want, want_lse = dense_softmax(dense_logits(q, k), j < i, v, sink)
    out, lse = mod.attention(q, k, v, return_lse=True)
    torch.testing.assert_close(out, want, **TOL)
    torch.testing.assert_close(lse, want_lse.float())


def test_fully_masked_rows_give_zero_and_neg_inf():
    q, k, v = qkv(SQ=6, SKV=5)
    mod = compile_("attention holes { mask q >= 2 and kv <= q and h != 1 }")
    out, lse = mod.attention(q, k, v, return_lse=True)
    assert torch.equal(out[:, :, :2], torch.zeros_like(out[:, :, :2]))
    assert torch.equal(out[:, 1], torch.zeros_like(out[:, 1]))
    assert bool(torch.isneginf(lse[:, :, :2]).all()) and bool(torch.isneginf(lse[:, 1]).all())
    assert torch.isfinite(lse[:, 0, 2:]).all() and torch.isfinite(out).all()


def test_everything_masked_and_extreme_scores_never_nan():
    q, k, v = qkv()
    mod = compile_("attention none { mask false }")
    out, lse = mod.attention(q, k, v, return_lse=True)
    assert torch.equal(out, torch.zeros_like(out)) and bool(torch.isneginf(lse).all())
    big = compile_("attention big { score = score * 1e6\n mask kv <= q }")
    out = big.attention(q * 100, k * 100, v)
    assert torch.isfinite(out).all()


# ------------------------------------------------------------------ elementwise and rownorm


def test_elementwise_sigmoid():
    q, k, v = qkv(SQ=5, SKV=8)
    mod = compile_("attention sig { mask kv <= q + (SKV - SQ)\n normalize elementwise(sigmoid(score - log(SKV))) }")
    _, _, i, j = grid(1, 1, 5, 8)
    w = torch.sigmoid(dense_logits(q, k) - math.log(8)) * (j <= i + 3)
    torch.testing.assert_close(mod.attention(q, k, v), w @ expand_kv(v, 3), **TOL)
    with pytest.raises(ValueError, match="lse"):
        mod.attention(q, k, v, return_lse=True)


def test_elementwise_can_be_negative_and_uses_the_modified_score():
    q, k, v = qkv()
    mod = compile_("attention lin { score = score * 2.0\n normalize elementwise(score - 1.0) }")
    w = dense_logits(q, k) * 2.0 - 1.0
    torch.testing.assert_close(mod.attention(q, k, v), w @ expand_kv(v, 3), **TOL)


@pytest.mark.parametrize(
    "f_text, f",
    [("relu(score) ** 2", lambda s: torch.relu(s) ** 2), ("exp(score)", torch.exp), ("softplus(score)", F.softplus)],
)
def test_rownorm(f_text, f):
    q, k, v = qkv(SQ=6, SKV=5)
    mod = compile_(f"attention rn {{ mask kv <= q - 1\n normalize rownorm({f_text}) }}")
    _, _, i, j = grid(1, 1, 6, 5)
    keep = j <= i - 1
    fw = torch.where(keep, f(dense_logits(q, k)), 0.0)
    den = fw.sum(-1, keepdim=True)
    want = torch.where(den > 0, fw / den, 0.0) @ expand_kv(v, 3)
    out, lse = mod.attention(q, k, v, return_lse=True)
    torch.testing.assert_close(out, want, **TOL)
    torch.testing.assert_close(lse, torch.log(den.squeeze(-1)).float())
    assert bool(torch.isneginf(lse[:, :, 0]).all()) and torch.equal(out[:, :, 0], torch.zeros_like(out[:, :, 0]))
    assert lse.dtype == torch.float32


def test_rownorm_rejects_negative_weights():
    q, k, v = qkv()
    mod = compile_("attention rn_bad { normalize rownorm(score) }")
    with pytest.raises(ValueError, match="f >= 0"):
        mod.attention(q, k, v)


def test_rownorm_negative_weights_on_masked_pairs_are_ignored():
    q, k, v = qkv()
    q, k = q.abs(), k.abs()  # all scores > 0
    mod = compile_("attention rn_mask { mask kv <= q\n normalize rownorm(where(kv <= q, score, -1.0)) }")
    out = mod.attention(q, k, v)
    assert torch.isfinite(out).all()


# ------------------------------------------------------------------ inputs


def test_clamped_out_of_range_input_indexing():
    SQ, SKV, H = 4, 9, 2
    q, k, v = qkv(H=H, SQ=SQ, SKV=SKV)
    gen = torch.Generator().manual_seed(3)
    table = torch.randn(H, 2 * SQ - 1, generator=gen, dtype=F64)
    mod = compile_("attention rt { input table: float64[H, 2 * SQ - 1]\n score = score + table[h, kv - q + SQ - 1] + table[h, q - kv - 100] }")
    bias = torch.empty(1, H, SQ, SKV, dtype=F64)
    for h in range(H):
        for i in range(SQ):
            for j in range(SKV):
                bias[0, h, i, j] = table[h, min(max(j - i + SQ - 1, 0), 2 * SQ - 2)] + table[h, 0]
    want, _ = dense_softmax(dense_logits(q, k) + bias, torch.ones(1, 1, 1, 1, dtype=torch.bool), v)
    torch.testing.assert_close(mod.attention(q, k, v, table=table), want, **TOL)


def test_int_and_bool_inputs():
    B, H, SQ, SKV = 2, 3, 6, 7
    q, k, v = qkv(B=B, H=H, SQ=SQ, SKV=SKV)
    doc_q = torch.tensor([[0, 0, 1, 1, 1, 2], [0, 1, 1, 1, 1, 1]], dtype=torch.int32)
    doc_kv = torch.tensor([[0, 0, 0, 1, 1, 2, 2], [1, 1, 1, 1, 1, 1, 1]], dtype=torch.int64)
    open_head = torch.tensor([False, True, False])
    mod = compile_(
        "attention docs { input doc_q: int32[B, SQ]\n input doc_kv: int64[B, SKV]\n input open_head: bool[H]\n"
        " mask doc_q[b, q] == doc_kv[b, kv] or open_head[h] }"
    )
    keep = (doc_q.view(B, 1, SQ, 1) == doc_kv.view(B, 1, 1, SKV)) | open_head.view(1, H, 1, 1)
    want, want_lse = dense_softmax(dense_logits(q, k), keep, v)
    out, lse = mod.attention(q, k, v, doc_q=doc_q, doc_kv=doc_kv, open_head=open_head, return_lse=True)
    torch.testing.assert_close(out, want, **TOL)
    torch.testing.assert_close(lse, want_lse.float())


def test_int32_inputs_use_64_bit_arithmetic():
    """Language integers are 64-bit (folding checks int64 overflow); an int32 input must not wrap at 2**31."""
    q, k, v = qkv(H=2, SQ=3, SKV=3)
    ids = torch.tensor([1, 0], dtype=torch.int32)
    mod = compile_("attention wide { input ids: int32[H]\n mask ids[h] * 4294967296 + kv >= 4294967296 or kv == 0 }")
    keep = mod._token_mask(q, k, ids=ids)
    assert bool(keep[:, 0].all()), "head 0: 1 * 2**32 + kv >= 2**32 holds for every kv"
    assert bool(keep[:, 1, :, 0].all()) and not bool(keep[:, 1, :, 1:].any())


def test_scalar_inputs():
    q, k, v = qkv()
    mod = compile_("attention sc_in { input temp: float32[]\n input offset: int64[]\n input gate: bool[]\n score = score * temp\n mask kv <= q + offset or gate }")
    _, _, i, j = grid(1, 1, 5, 7)
    for gate in (False, True):
        out = mod.attention(q, k, v, temp=torch.tensor(0.5), offset=torch.tensor(1), gate=torch.tensor(gate))
        keep = (j <= i + 1) | gate
        want, _ = dense_softmax(dense_logits(q, k) * 0.5, keep, v)
        torch.testing.assert_close(out, want, **TOL)


def test_float_inputs_are_used_in_the_compute_dtype():
    q, k, v = qkv()
    slope = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float16)
    mod = compile_("attention cast_in { input slope: float16[H]\n score = score + slope[h] }")
    s = dense_logits(q, k) + slope.double().view(1, 3, 1, 1)
    want, _ = dense_softmax(s, torch.ones(1, 1, 1, 1, dtype=torch.bool), v)
    torch.testing.assert_close(mod.attention(q, k, v, slope=slope), want, **TOL)


# ------------------------------------------------------------------ runtime params

RUNTIME_SPEC = """
attention rt {
    param window: int runtime = 2
    param bias: float runtime = 0.0
    param causal: bool runtime = true
    param need: int runtime
    mask abs(q - kv) <= window + need and (not causal or kv <= q)
    score = score + bias
}
"""


def test_runtime_params_defaults_and_values():
    q, k, v = qkv()
    mod = compile_(RUNTIME_SPEC)
    _, _, i, j = grid(1, 1, 5, 7)
    want, _ = dense_softmax(dense_logits(q, k), ((i - j).abs() <= 2) & (j <= i), v)
    torch.testing.assert_close(mod.attention(q, k, v, need=0), want, **TOL)
    want, _ = dense_softmax(dense_logits(q, k) + 1.0, (i - j).abs() <= 4, v)
    torch.testing.assert_close(mod.attention(q, k, v, need=1, window=3, bias=1, causal=False), want, **TOL)
    with pytest.raises(TypeError):
        mod.attention(q, k, v)  # `need` has no default


@pytest.mark.parametrize(
    "kwargs",
    [dict(window=1.5), dict(window=True), dict(bias=True), dict(bias="0.5"), dict(causal=1), dict(causal=None), dict(need=2.0)],
)
def test_runtime_params_of_the_wrong_type_raise_type_error(kwargs):
    q, k, v = qkv()
    mod = compile_(RUNTIME_SPEC)
    with pytest.raises(TypeError, match="runtime param"):
        mod.attention(q, k, v, **{"need": 0, **kwargs})


def test_runtime_param_given_at_compile_time_is_an_error():
    with pytest.raises(attnspec.AttnError, match="runtime"):
        attnspec.compile(RUNTIME_SPEC, window=3)


# ------------------------------------------------------------------ validation


VALIDATE_SPEC = "attention val { input ids: int32[B, SQ]\n input w: float32[H]\n mask ids[b, q] >= 0\n score = score + w[h] }"


def _valid_inputs():
    q, k, v = qkv()
    return dict(q=q, k=k, v=v, ids=torch.zeros(2, 5, dtype=torch.int32), w=torch.zeros(3))


@pytest.mark.parametrize(
    "change, error, match",
    [
        (dict(ids=torch.zeros(2, 6, dtype=torch.int32)), ValueError, "'ids' must have shape"),
        (dict(w=torch.zeros(3, 1)), ValueError, "'w' must have shape"),
        (dict(ids=torch.zeros(2, 5)), TypeError, "'ids' must hold int"),
        (dict(ids=torch.zeros(2, 5, dtype=torch.bool)), TypeError, "'ids' must hold int"),
        (dict(w=torch.zeros(3, dtype=torch.int64)), TypeError, "'w' must hold float"),
        (dict(w=[0.0, 0.0, 0.0]), TypeError, "must be a torch.Tensor"),
        (dict(q=torch.zeros(2, 3, 5)), ValueError, "4-D"),
        (dict(k=torch.zeros(2, 3, 7, 8)), TypeError, "dtype"),
        (dict(q=torch.zeros(2, 3, 5, 8, dtype=torch.int64)), TypeError, "floating"),
        (dict(k=torch.zeros(2, 3, 7, 9, dtype=F64)), ValueError, "shapes"),
        (dict(v=torch.zeros(2, 3, 6, 6, dtype=F64)), ValueError, "shapes"),
        (dict(v=torch.zeros(1, 3, 7, 6, dtype=F64)), ValueError, "shapes"),
        (dict(k=torch.zeros(2, 2, 7, 8, dtype=F64), v=torch.zeros(2, 2, 7, 6, dtype=F64)), ValueError, "multiple of kv heads"),
    ],
)
def test_input_validation(change, error, match):
    mod = compile_(VALIDATE_SPEC)
    args = {**_valid_inputs(), **change}
    with pytest.raises(error, match=match):
        mod.attention(**args)


def test_validation_baseline_runs_and_rejects_a_selection():
    mod = compile_(VALIDATE_SPEC)
    args = _valid_inputs()
    assert mod.attention(**args).shape == (2, 3, 5, 6)
    with pytest.raises(ValueError, match="no block selection"):
        mod.attention(**args, selection=object())
    with pytest.raises(TypeError):
        mod.attention(args["q"], args["k"], args["v"], args["ids"], args["w"])  # inputs are keyword-only


# ------------------------------------------------------------------ precision, lse dtype, module

MIXED_SPEC = """
attention mixed {
    param window: int = 4
    input sink_logit: float32[H] learnable
    input slope: float32[H]
    mask kv <= q + 2 and q - kv < window
    score = score - slope[h] * float(abs(q - kv))
    normalize softmax(sink = sink_logit[h])
}
"""


@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_low_precision_runs_are_close_to_float64(dtype, atol):
    q, k, v = qkv(SQ=9, SKV=11)
    gen = torch.Generator().manual_seed(1)
    inputs = dict(sink_logit=torch.randn(3, generator=gen), slope=torch.rand(3, generator=gen))
    mod = compile_(MIXED_SPEC)
    ref, ref_lse = mod.attention(q, k, v, **inputs, return_lse=True)
    out, lse = mod.attention(q.to(dtype), k.to(dtype), v.to(dtype), **inputs, return_lse=True)
    assert out.dtype == dtype and lse.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref, atol=atol, rtol=0)
    torch.testing.assert_close(lse.double(), ref_lse.double(), atol=atol * 4, rtol=0)


@pytest.mark.parametrize("text", ["attention sm { }", "attention rnorm { normalize rownorm(exp(score)) }", MIXED_SPEC])
def test_lse_is_float32_with_shape_b_h_sq(text):
    q, k, v = qkv()
    mod = compile_(text)
    kwargs = {"sink_logit": torch.zeros(3), "slope": torch.zeros(3)} if "mixed" in text else {}
    out, lse = mod.attention(q, k, v, return_lse=True, **kwargs)
    assert lse.dtype == torch.float32 and lse.shape == (2, 3, 5)
    assert out.dtype == F64 and mod.attention(q, k, v, **kwargs).shape == out.shape


def test_module_owns_learnable_inputs():
    mod = compile_(MIXED_SPEC)
    layer = mod.Module(H=3)
    assert isinstance(layer, torch.nn.Module) and mod.Module is mod.MixedAttention
    params = dict(layer.named_parameters())
    assert list(params) == ["sink_logit"] and params["sink_logit"].shape == (3,)
    assert torch.equal(params["sink_logit"], torch.zeros(3))
    with torch.no_grad():
        layer.sink_logit.copy_(torch.tensor([1.0, -2.0, 0.5]))
    q, k, v = qkv()
    slope = torch.rand(3)
    got = layer(q, k, v, slope=slope)  # the non-learnable input stays an argument
    want = mod.attention(q, k, v, sink_logit=layer.sink_logit.detach(), slope=slope)
    torch.testing.assert_close(got, want, **TOL)
    got.sum().backward()
    assert layer.sink_logit.grad is not None and torch.isfinite(layer.sink_logit.grad).all()


def test_module_sizes_follow_the_declared_shapes():
    mod = compile_("attention tab { param w: int = 2\n input table: float32[H, 2 * SQ - 1 + w] learnable\n score = score + table[h, kv - q + SQ - 1] }")
    layer = mod.Module(H=4, SQ=5, dtype=F64)
    assert layer.table.shape == (4, 11) and layer.table.dtype == F64
    with pytest.raises(TypeError):
        mod.Module(H=4)  # SQ is needed to allocate the table
    plain = compile_("attention nothing_learnable { mask kv <= q }").Module()
    assert list(plain.parameters()) == []
    q, k, v = qkv()
    torch.testing.assert_close(plain(q, k, v), sdpa(q, k, v, torch.ones(5, 7, dtype=torch.bool).tril()), **TOL)


def test_score_statements_and_lets_compose_in_order():
    """A let captures the score at its position; later score statements build on the previous one."""
    q, k, v = qkv()
    mod = compile_("attention comp { score = score * 2.0\n let s1 = score\n score = score + 1.0\n score = score * s1\n mask kv <= q }")
    s = dense_logits(q, k)
    _, _, i, j = grid(1, 1, 5, 7)
    want, _ = dense_softmax((2 * s + 1) * (2 * s), j <= i, v)
    torch.testing.assert_close(mod.attention(q, k, v), want, **TOL)


def test_picking_one_spec_of_a_file():
    text = "attention first { mask kv <= q }\nattention second { mask kv >= q }"
    with pytest.raises(attnspec.AttnError, match="2 specs"):
        attnspec.compile(text)
    q, k, v = qkv(SQ=5, SKV=5)
    _, _, i, j = grid(1, 1, 5, 5)
    torch.testing.assert_close(attnspec.compile(text, spec="second").attention(q, k, v), sdpa(q, k, v, j >= i), **TOL)
