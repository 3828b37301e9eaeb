"""Every example in examples/ against an independent, hand-written float64 formula.

The generated reference target is the oracle for every other target, so it is checked here against
dense PyTorch code written from each example's header formula (and the catalog), not from the
compiler. Nothing from attnspec is used except `attnspec.compile`.

Layout: shared dense helpers; one small function per formula; input makers; the registry
(id -> file, formula, cases, inputs); the tests.
"""

from __future__ import annotations

import math
import re
import zlib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable

import pytest
import torch

import attnspec

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
F64 = torch.float64
TOL = dict(rtol=1e-10, atol=1e-10)
NEG_INF = float("-inf")


# --------------------------------------------------------------------------------------------------
# Shared dense helpers
# --------------------------------------------------------------------------------------------------


@dataclass
class Result:
    out: torch.Tensor  # [B, H, SQ, DV]
    lse: torch.Tensor | None  # [B, H, SQ]; None for elementwise normalization
    empty: torch.Tensor  # [B, H, SQ] bool: rows whose output must be exactly 0


def grid(q, k):
    """Index tensors b, h, i, j, broadcastable to [B, H, SQ, SKV]."""
    B, H, SQ, _ = q.shape
    SKV = k.shape[2]
    b = torch.arange(B).view(B, 1, 1, 1)
    h = torch.arange(H).view(1, H, 1, 1)
    i = torch.arange(SQ).view(1, 1, SQ, 1)
    j = torch.arange(SKV).view(1, 1, 1, SKV)
    return b, h, i, j


def per_query_head(x, H):
    """Repeat kv heads so that query head h reads kv head h // (H / HKV)."""
    return x.repeat_interleave(H // x.shape[1], dim=1)


def logits(q, k, scale=None):
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    return scale * torch.matmul(q, per_query_head(k, q.shape[1]).transpose(-1, -2))


def full_shape(s, keep):
    return keep.expand(s.shape)


def softmax_attn(s, keep, v, sink=None):
    """w = exp(s) / (sum_kept exp(s) + exp(sink)); lse = log of the denominator."""
    keep = full_shape(s, keep)
    vv = per_query_head(v, s.shape[1])
    masked = s.masked_fill(~keep, NEG_INF)
    m = masked.amax(dim=-1, keepdim=True)
    if sink is not None:
        sink = sink.expand(m.shape)
        m = torch.maximum(m, sink)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    e = torch.exp(masked - m)
    denom = e.sum(dim=-1, keepdim=True)
    if sink is not None:
        denom = denom + torch.exp(sink - m)
    out = torch.matmul(e, vv) / torch.where(denom > 0, denom, torch.ones_like(denom))
    lse = (m + torch.log(denom)).squeeze(-1)
    return Result(out, lse, ~keep.any(dim=-1))


def elementwise_attn(w, keep, v):
    """w = f(s) on kept pairs, 0 elsewhere; no row normalization."""
    keep = full_shape(w, keep)
    w = torch.where(keep, w, torch.zeros_like(w))
    return Result(torch.matmul(w, per_query_head(v, w.shape[1])), None, ~keep.any(dim=-1))


def rownorm_attn(f, keep, v):
    """w = f / sum_kept f (0 where the sum is 0); lse = log(sum_kept f)."""
    keep = full_shape(f, keep)
    f = torch.where(keep, f, torch.zeros_like(f))
    z = f.sum(dim=-1, keepdim=True)
    out = torch.matmul(f, per_query_head(v, f.shape[1])) / torch.where(z > 0, z, torch.ones_like(z))
    return Result(out, torch.log(z).squeeze(-1), (z == 0).squeeze(-1))


def ratio_attn(g, f, keep, v):
    """w = g / sum_kept f (g of any sign; 0 where the sum is 0); lse = log(sum_kept f)."""
    keep = full_shape(g, keep)
    g = torch.where(keep, g, torch.zeros_like(g))
    z = torch.where(keep, f.expand(g.shape), torch.zeros_like(g)).sum(dim=-1, keepdim=True)
    out = torch.matmul(g, per_query_head(v, g.shape[1])) / torch.where(z > 0, z, torch.ones_like(z))
    return Result(out, torch.log(z).squeeze(-1), (z == 0).squeeze(-1))


def clamped_window(c_i, c_j, r, n):
    """NATTEN 1D window: start = clamp(c_i - r, 0, n - (2r + 1)); keep start <= c_j < start + 2r + 1."""
    start = (c_i - r).clamp(min=0).clamp(max=n - (2 * r + 1))
    return (start <= c_j) & (c_j < start + 2 * r + 1)


def yx(t, W):
    return t // W, t % W


# --------------------------------------------------------------------------------------------------
# Block selection, written out directly (pooling, eligibility, top-k / threshold / share, always)
# --------------------------------------------------------------------------------------------------


def pool_blocks(x, size, how):
    """[B, Hx, S, D] -> [B, Hx, ceil(S / size), D], pooled over each block's valid rows."""
    blocks = []
    for start in range(0, x.shape[2], size):
        chunk = x[:, :, start : start + size]
        if how == "mean":
            blocks.append(chunk.mean(dim=2))
        elif how == "max":
            blocks.append(chunk.amax(dim=2))
        else:
            blocks.append(chunk.amin(dim=2))
    return torch.stack(blocks, dim=2)


def dot(u, w):
    """u [B, H, nQ, D], w [B, H, nK, D] -> [B, H, nQ, nK]."""
    return (u[:, :, :, None, :] * w[:, :, None, :, :]).sum(dim=-1)


def choose(scores, candidates, criterion, value):
    order = sorted(candidates, key=lambda J: (-scores[J], J))
    if criterion == "top":
        return order[:value]
    if criterion == "threshold":
        return [J for J in candidates if scores[J] >= value]
    # share: softmax over the eligible scores, smallest prefix (descending) reaching the mass
    if not candidates:
        return []
    top = max(scores[J] for J in candidates)
    weights = {J: math.exp(scores[J] - top) for J in candidates}
    total = sum(weights.values())
    chosen, acc = [], 0.0
    for J in order:
        chosen.append(J)
        acc += weights[J] / total
        if acc >= value:
            break
    return chosen


def select_blocks(q, k, keep, *, bq, bk, score, criterion, value, causal=False, per_kv_head=False, always=None,
                  whole_head=False):
    """Token-level keep AND (the pair's key block is selected for its query block); whole_head: the
    criterion ranks every (I, J) of a head together (`global`)."""
    B, H, SQ, _ = q.shape
    HKV, SKV = k.shape[1], k.shape[2]
    nq, nk = -(-SQ // bq), -(-SKV // bk)
    qp = {how: pool_blocks(q, bq, how) for how in ("mean", "max", "min")}
    kp = {how: per_query_head(pool_blocks(k, bk, how), H) for how in ("mean", "max", "min")}
    block_score = score(qp, kp, q.shape[-1])
    if per_kv_head:
        G = H // HKV
        block_score = block_score.view(B, HKV, G, nq, nk).sum(dim=2, keepdim=True)
        block_score = block_score.expand(B, HKV, G, nq, nk).reshape(B, H, nq, nk)
    keep = keep.expand(B, H, SQ, SKV)
    selected = torch.zeros(B, H, nq, nk, dtype=torch.bool)

    def eligible(b, h, I, J):
        has_pair = keep[b, h, I * bq : (I + 1) * bq, J * bk : (J + 1) * bk].any().item()
        return has_pair and (not causal or J * bk <= min((I + 1) * bq, SQ) - 1 + (SKV - SQ))

    for b in range(B):
        for h in range(H):
            if whole_head:  # candidate I * nk + J, scores in that order
                candidates = [I * nk + J for I in range(nq) for J in range(nk) if eligible(b, h, I, J)]
                for c in choose(block_score[b, h].flatten().tolist(), candidates, criterion, value):
                    selected[b, h, c // nk, c % nk] = True
                continue
            for I in range(nq):
                candidates = [J for J in range(nk) if eligible(b, h, I, J)]
                for J in choose(block_score[b, h, I].tolist(), candidates, criterion, value):
                    selected[b, h, I, J] = True
    if always is not None:
        bb = torch.arange(B).view(B, 1, 1, 1)
        hh = torch.arange(H).view(1, H, 1, 1)
        II = torch.arange(nq).view(1, 1, nq, 1)
        JJ = torch.arange(nk).view(1, 1, 1, nk)
        selected = selected | always(bb, hh, II, JJ).expand(B, H, nq, nk)
    _, _, i, j = grid(q, k)
    return keep & selected[:, :, i[0, 0, :, 0] // bq][:, :, :, j[0, 0, 0, :] // bk]


# --------------------------------------------------------------------------------------------------
# One formula per example (parameter defaults are the example's defaults)
# --------------------------------------------------------------------------------------------------


def f_causal(q, k, v):
    _, _, i, j = grid(q, k)
    return softmax_attn(logits(q, k), j <= i + (k.shape[2] - q.shape[2]), v)


def f_sliding_window(q, k, v, window=8, causal=False):
    _, _, i, j = grid(q, k)
    keep = (i - j).abs() <= window
    if causal:
        keep = keep & (j <= i)
    return softmax_attn(logits(q, k), keep, v)


def f_document(q, k, v, doc_q, doc_kv):
    _, _, i, j = grid(q, k)
    same_doc = doc_q.long()[:, None, :, None] == doc_kv.long()[:, None, None, :]
    return softmax_attn(logits(q, k), same_doc & (j <= i + (k.shape[2] - q.shape[2])), v)


def f_alibi(q, k, v, slope):
    _, _, i, j = grid(q, k)
    s = logits(q, k) - slope.to(F64).view(1, -1, 1, 1) * (i - j).abs()
    return softmax_attn(s, torch.ones_like(s, dtype=torch.bool), v)


def f_streaming_sink(q, k, v, sink_logit, window=16, sinks=4):
    _, _, i, j = grid(q, k)
    keep = (j <= i) & ((i - j < window) | (j < sinks))
    return softmax_attn(logits(q, k), keep, v, sink=sink_logit.to(F64).view(1, -1, 1, 1))


def f_temperature(q, k, v, tau=0.7, n_train=64):
    s = logits(q, k) * math.log(k.shape[2]) / (tau * math.log(n_train))
    return softmax_attn(s, torch.ones_like(s, dtype=torch.bool), v)


def f_softcap(q, k, v, cap=2.0):
    _, _, i, j = grid(q, k)
    s = logits(q, k, scale=0.5)
    return softmax_attn(cap * torch.tanh(s / cap), j <= i, v)


def f_static_blocks(q, k, v):
    _, h, i, j = grid(q, k)
    I, J = i // 16, j // 8
    band = (J // 2 <= I) & (I - J // 2 < 2)
    block_keep = band | (J == 0) | ((h % 2 == 1) & (J % 4 == 3))
    return softmax_attn(logits(q, k), (j <= i) & block_keep, v)


def f_gqa2(q, k, v):
    assert q.shape[1] == 2 * k.shape[1]
    _, _, i, j = grid(q, k)
    return softmax_attn(logits(q, k), j <= i, v)


def f_rel_bias_clipped(q, k, v, rel, maxd=8):
    _, _, i, j = grid(q, k)
    idx = ((j - i).clamp(-maxd, maxd) + maxd)[0, 0]  # [SQ, SKV]
    s = logits(q, k) + rel.to(F64)[:, idx][None]
    return softmax_attn(s, torch.ones_like(s, dtype=torch.bool), v)


def f_rel_table(q, k, v, table):
    _, _, i, j = grid(q, k)
    SQ = q.shape[2]
    idx = (j - i + SQ - 1).clamp(0, 2 * SQ - 2)[0, 0]
    s = logits(q, k) + table.to(F64)[:, idx][None]
    return softmax_attn(s, torch.ones_like(s, dtype=torch.bool), v)


def f_deberta(q, k, v, kr, qr, W=8):
    """Written per pair as in the paper: each (i, j) gathers its relative embedding rows and dots them."""
    _, _, i, j = grid(q, k)
    H, HKV, D = q.shape[1], k.shape[1], q.shape[-1]
    to_ij = (i - j + W).clamp(0, 2 * W - 1)[0, 0]  # delta(i, j), [SQ, SKV]
    to_ji = (j - i + W).clamp(0, 2 * W - 1)[0, 0]  # delta(j, i)
    kx = per_query_head(k, H)
    qr_of_head = qr.to(F64)[torch.arange(H) // (H // HKV)]  # each query head reads its kv head's table
    c2p = torch.einsum("bhid,hijd->bhij", q, kr.to(F64)[:, to_ij])
    p2c = torch.einsum("bhjd,hijd->bhij", kx, qr_of_head[:, to_ji])
    s = (torch.matmul(q, kx.transpose(-1, -2)) + c2p + p2c) / math.sqrt(3 * D)
    return softmax_attn(s, torch.ones_like(s, dtype=torch.bool), v)


def f_log_buckets(q, k, v, table, NE=8, NB=16):
    _, _, i, j = grid(q, k)
    d = (i - j).abs()[0, 0]  # [SQ, SKV]
    far = NE + torch.floor(torch.log2(d.clamp(min=1).double())).long() - int(math.log2(NE))
    bucket = torch.where(d < NE, d, far.clamp(max=NB - 1)) + NB * (j > i)[0, 0]
    s = logits(q, k) + table.to(F64)[:, bucket][None]
    return softmax_attn(s, torch.ones_like(s, dtype=torch.bool), v)


def rotate_half_rope(x, angles):
    """RoPE as rotate_half implementations write it: x * cos(emb) + rotate_half(x) * sin(emb), with emb
    the pair angles [S, D/2] repeated for both halves."""
    emb = torch.cat([angles, angles], dim=-1).to(F64)
    first, second = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return x * torch.cos(emb) + torch.cat([-second, first], dim=-1) * torch.sin(emb)


def f_query_temperature(q, k, v, w):
    t = 1.0 + torch.nn.functional.softplus((q * w.to(F64)[None, :, None, :]).sum(-1))  # [B, H, SQ]
    _, _, i, j = grid(q, k)
    return softmax_attn(logits(q, k) * t[..., None], j <= i + (k.shape[2] - q.shape[2]), v)


def f_affine_scaled(q, k, v, w_alpha, w_beta):
    alpha = 1.0 + torch.tanh((q * w_alpha.to(F64)[None, :, None, :]).sum(-1, keepdim=True))  # [B, H, SQ, 1]
    beta = 0.25 * torch.tanh((q * w_beta.to(F64)[None, :, None, :]).sum(-1, keepdim=True))
    _, _, i, j = grid(q, k)
    keep = j <= i + (k.shape[2] - q.shape[2])
    soft = softmax_attn(logits(q, k), keep, v)
    kept_v = torch.matmul(keep.to(F64).expand(q.shape[0], q.shape[1], -1, -1), per_query_head(v, q.shape[1]))
    return Result(alpha * soft.out + beta * kept_v, soft.lse, soft.empty)


def f_rope(q, k, v, base=10000.0):
    SQ, SKV, D = q.shape[2], k.shape[2], q.shape[-1]
    inv_freq = 1.0 / base ** (torch.arange(0, D, 2, dtype=F64) / D)
    qr = rotate_half_rope(q, torch.outer(torch.arange(SQ, dtype=F64) + (SKV - SQ), inv_freq))
    kr = rotate_half_rope(k, torch.outer(torch.arange(SKV, dtype=F64), inv_freq))
    _, _, i, j = grid(q, k)
    return softmax_attn(logits(qr, kr), j <= i + (SKV - SQ), v)


def f_rope_gated(q, k, v, gate, base=10000.0):
    result = f_rope(q, k, v, base)
    gated = result.out * torch.sigmoid(gate.to(F64)).unsqueeze(-1)
    return Result(gated, result.lse, result.empty)


def f_sample_attention(q, k, v, stripe, window_percent=8):
    _, _, i, j = grid(q, k)
    SKV = k.shape[2]
    edge = i + (SKV - q.shape[2])
    window = -(-SKV * window_percent // 100)
    return softmax_attn(logits(q, k), (j <= edge) & ((edge - j < window) | stripe[:, :, None, :]), v)


def f_mosa(q, k, v, pos_q, pos_kv, weight):
    keep = pos_kv.long()[:, :, None, :] <= pos_q.long()[:, :, :, None]
    routed = softmax_attn(logits(q, k), keep, v)
    return Result(routed.out * weight.to(F64).unsqueeze(-1), routed.lse, routed.empty)


def f_moh(q, k, v, route):
    _, _, i, j = grid(q, k)
    g = route.to(F64)
    routed = softmax_attn(logits(q, k), (j <= i + (k.shape[2] - q.shape[2])) & (g[..., None] > 0), v)
    return Result(routed.out * g.unsqueeze(-1), routed.lse, routed.empty)


def f_rope2d(q, k, v, W=8, base=100.0):
    D = q.shape[-1]
    inv_freq = 1.0 / base ** (torch.arange(0, D // 2, 2, dtype=F64) / (D // 2))  # D/4 frequencies per axis

    def axial(n):
        t = torch.arange(n, dtype=F64)
        return torch.cat([torch.outer(torch.floor(t / W), inv_freq), torch.outer(t % W, inv_freq)], dim=-1)

    qr, kr = rotate_half_rope(q, axial(q.shape[2])), rotate_half_rope(k, axial(k.shape[2]))
    s = logits(qr, kr)
    return softmax_attn(s, torch.ones_like(s, dtype=torch.bool), v)


def f_swin_v2_cosine(q, k, v, tau, W=8, M=4):
    qn = q / q.norm(dim=-1, keepdim=True).clamp(min=1e-6)
    kn = k / k.norm(dim=-1, keepdim=True).clamp(min=1e-6)
    s = logits(qn, kn, scale=1.0) / tau.to(F64).clamp(min=0.01).view(1, -1, 1, 1)
    _, _, i, j = grid(q, k)
    keep = (i // W // M == j // W // M) & (i % W // M == j % W // M)
    return softmax_attn(s, keep, v)


def f_prefix_lm(q, k, v, prefix=16):
    _, _, i, j = grid(q, k)
    return softmax_attn(logits(q, k), (j <= i) | ((i < prefix) & (j < prefix)), v)


def f_natten2d(q, k, v, rpb, W=8, HT=8, r=2):
    _, h, i, j = grid(q, k)
    (qy, qx), (ky, kx) = yx(i, W), yx(j, W)
    keep = clamped_window(qy, ky, r, HT) & clamped_window(qx, kx, r, W)
    dy = (ky - qy + 2 * r).clamp(0, 4 * r)
    dx = (kx - qx + 2 * r).clamp(0, 4 * r)
    bias = rpb.to(F64)[h, dy, dx]  # [1, H, SQ, SKV]
    return softmax_attn(logits(q, k) + bias, keep, v)


def f_natten3d(q, k, v, T=4, HT=5, W=6, rt=1, r=1):
    _, _, i, j = grid(q, k)

    def coords(n):
        return n // (HT * W), (n // W) % HT, n % W

    (qt, qy, qx), (kt, ky, kx) = coords(i), coords(j)
    keep = clamped_window(qt, kt, rt, T) & clamped_window(qy, ky, r, HT) & clamped_window(qx, kx, r, W)
    return softmax_attn(logits(q, k), keep, v)


def f_dilated_na2d(q, k, v, W=8, HT=8, dil=2, r=1):
    _, _, i, j = grid(q, k)

    def dilated_window(c_i, c_j, n):
        residue = c_i % dil
        class_len = -(-(n - residue) // dil)  # ceil((n - residue) / dil)
        start = (c_i // dil - r).clamp(min=0)
        start = torch.minimum(start, class_len - (2 * r + 1))
        a_j = c_j // dil
        return (c_j % dil == residue) & (start <= a_j) & (a_j < start + 2 * r + 1)

    (qy, qx), (ky, kx) = yx(i, W), yx(j, W)
    keep = dilated_window(qy, ky, HT) & dilated_window(qx, kx, W)
    return softmax_attn(logits(q, k), keep, v)


def f_swin(q, k, v, bias, W=8, HT=8, M=4, shift=2, use_bias=True):
    _, h, i, j = grid(q, k)
    (qy, qx), (ky, kx) = yx(i, W), yx(j, W)
    keep = ((qy + shift) // M == (ky + shift) // M) & ((qx + shift) // M == (kx + shift) // M)
    s = logits(q, k)
    if use_bias:
        dy = (ky - qy + M - 1).clamp(0, 2 * M - 2)
        dx = (kx - qx + M - 1).clamp(0, 2 * M - 2)
        s = s + bias.to(F64)[h, dy, dx]
    return softmax_attn(s, keep, v)


def f_maxvit_grid(q, k, v, W=8, HT=8, NG=4):
    _, _, i, j = grid(q, k)
    (qy, qx), (ky, kx) = yx(i, W), yx(j, W)
    keep = (qy % (HT // NG) == ky % (HT // NG)) & (qx % (W // NG) == kx % (W // NG))
    return softmax_attn(logits(q, k), keep, v)


def f_criss_cross(q, k, v, W=7):
    _, _, i, j = grid(q, k)
    (qy, qx), (ky, kx) = yx(i, W), yx(j, W)
    return softmax_attn(logits(q, k), (qy == ky) | (qx == kx), v)


def f_timesformer(q, k, v, HT=3, W=4, spatial=False):
    _, _, i, j = grid(q, k)
    frame_i, frame_j = (i - 1) // (HT * W), (j - 1) // (HT * W)
    pos_i, pos_j = (i - 1) % (HT * W), (j - 1) % (HT * W)
    same = (frame_i == frame_j) if spatial else (pos_i == pos_j)
    return softmax_attn(logits(q, k), (i == 0) | (j == 0) | same, v)


def f_power_attention(q, k, v, BS=8, n_local=2, n_sink=1):
    _, _, i, j = grid(q, k)
    d = i // BS - j // BS
    powers = torch.tensor([2**e for e in range(12)])
    power_of_two = (d == 0) | torch.isin(d, powers)
    keep = (j <= i) & ((d < n_local) | power_of_two | (j // BS < n_sink))
    return softmax_attn(logits(q, k), keep, v)


def f_ls_heads(q, k, v, n_local=2, window=8):
    _, h, i, j = grid(q, k)
    return softmax_attn(logits(q, k), (j <= i) & ((h >= n_local) | (i - j < window)), v)


def f_moa(q, k, v, alpha, beta, sinks=2):
    _, _, i, j = grid(q, k)
    span = alpha.to(F64).view(1, -1, 1, 1) + beta.to(F64).view(1, -1, 1, 1) * k.shape[2]
    keep = (j <= i) & ((j < sinks) | (i - j < span))
    return softmax_attn(logits(q, k), keep, v)


def f_sinklora(q, k, v, GS=16, sinks=2):
    _, h, i, j = grid(q, k)
    H = q.shape[1]
    sh = torch.where(h >= H // 2, GS // 2, 0)
    keep = (j <= i) & (((i + sh) // GS == (j + sh) // GS) | (j < sinks))
    return softmax_attn(logits(q, k), keep, v)


def f_block_causal(q, k, v, C=12):
    _, _, i, j = grid(q, k)
    return softmax_attn(logits(q, k), j // C <= i // C, v)


def f_svg_heads(q, k, v, kind, S=16, n_text=4):
    _, h, i, j = grid(q, k)
    spatial_head = kind.long()[h] == 0  # [1, H, 1, 1]
    same_frame = (i - n_text) // S == (j - n_text) // S
    same_pos = (i - n_text) % S == (j - n_text) % S
    keep = (i < n_text) | (j < n_text) | torch.where(spatial_head, same_frame, same_pos)
    return softmax_attn(logits(q, k), keep, v)


def f_sigmoid(q, k, v):
    _, _, i, j = grid(q, k)
    w = torch.sigmoid(logits(q, k) - math.log(k.shape[2]))
    return elementwise_attn(w, j <= i + (k.shape[2] - q.shape[2]), v)


def f_relu2_rownorm(q, k, v):
    _, _, i, j = grid(q, k)
    return rownorm_attn(torch.relu(logits(q, k)) ** 2, j <= i, v)


def f_relu_length(q, k, v):
    s = logits(q, k)
    return elementwise_attn(torch.relu(s) / k.shape[2], torch.ones_like(s, dtype=torch.bool), v)


def f_softpick(q, k, v):
    _, _, i, j = grid(q, k)
    e = torch.exp(logits(q, k)) - 1.0
    return ratio_attn(torch.relu(e), e.abs(), j <= i + (k.shape[2] - q.shape[2]), v)


def f_relu_kept_length(q, k, v):
    _, _, i, j = grid(q, k)
    s = logits(q, k)
    return ratio_attn(torch.relu(s), torch.ones_like(s), j <= i + (k.shape[2] - q.shape[2]), v)


def f_cosine_signed(q, k, v):
    qn = q / q.norm(dim=-1, keepdim=True).clamp(min=1e-6)
    kn = k / k.norm(dim=-1, keepdim=True).clamp(min=1e-6)
    s = logits(qn, kn, scale=1.0)
    _, _, i, j = grid(q, k)
    return ratio_attn(s, torch.ones_like(s), j <= i + (k.shape[2] - q.shape[2]), v)


def f_linear_elu(q, k, v):
    phi = lambda x: torch.nn.functional.elu(x) + 1.0  # noqa: E731
    s = logits(phi(q), phi(k), scale=1.0)
    _, _, i, j = grid(q, k)
    return rownorm_attn(s, j <= i + (k.shape[2] - q.shape[2]), v)


def f_inline(q, k, v):
    """The weights as the paper writes them: each pair's product minus the row's mean product plus 1/n."""
    s = logits(torch.relu(q), torch.relu(k), scale=1.0)
    n = k.shape[2]
    return elementwise_attn(s - s.mean(-1, keepdim=True) + 1.0 / n, torch.ones(1, dtype=torch.bool), v)


def f_efficient(q, k, v):
    """rho_q(Q) (rho_k(K)^T V): the product of the two normalized maps, in the paper's order."""
    rho_q, rho_k = torch.softmax(q, -1), per_query_head(torch.softmax(k, -2), q.shape[1])
    return elementwise_attn(rho_q @ rho_k.transpose(-1, -2), torch.ones(1, dtype=torch.bool), v)


def f_hedgehog(q, k, v, wq, wk):
    """phi(x) = [softmax(x W), softmax(-x W)] with W the first D/2 columns of the head's matrix."""
    half = q.shape[-1] // 2

    def phi(x, w):
        y = torch.einsum("bhsd,hde->bhse", x, w.to(F64)[:, :, :half])
        return torch.cat([torch.softmax(y, -1), torch.softmax(-y, -1)], -1)

    _, _, i, j = grid(q, k)
    return rownorm_attn(logits(phi(q, wq), phi(k, wk), scale=1.0), j <= i + (k.shape[2] - q.shape[2]), v)


def f_lightning(q, k, v):
    _, H, SQ, _ = q.shape
    _, h, i, j = grid(q, k)
    decay = 2.0 ** (-8.0 * (h + 1).double() / H)
    behind = i + (k.shape[2] - SQ) - j
    return elementwise_attn(logits(q, k, scale=1.0) * decay ** behind.abs().double(), behind >= 0, v)


def f_nsa_select(q, k, v, n=2):
    _, _, i, j = grid(q, k)
    keep = select_blocks(
        q, k, j <= i + (k.shape[2] - q.shape[2]), bq=16, bk=16,
        score=lambda qp, kp, D: dot(qp["mean"], kp["mean"]),
        criterion="top", value=n, causal=True, per_kv_head=True,
        always=lambda b, h, I, J: (J == 0) | (J == I),
    )
    return softmax_attn(logits(q, k), keep, v)


def f_moba(q, k, v, topk=2):
    _, _, i, j = grid(q, k)
    keep = select_blocks(
        q, k, j <= i + (k.shape[2] - q.shape[2]), bq=16, bk=16,
        score=lambda qp, kp, D: dot(qp["mean"], kp["mean"]),
        criterion="top", value=topk, causal=True,
        always=lambda b, h, I, J: J == I,
    )
    return softmax_attn(logits(q, k), keep, v)


def f_seer_threshold(q, k, v, t=0.0):
    _, _, i, j = grid(q, k)
    keep = select_blocks(
        q, k, j <= i + (k.shape[2] - q.shape[2]), bq=16, bk=16,
        score=lambda qp, kp, D: (dot(qp["mean"], kp["max"]) + dot(qp["mean"], kp["min"])) / math.sqrt(D),
        criterion="threshold", value=t, causal=True,
        always=lambda b, h, I, J: J == I,
    )
    return softmax_attn(logits(q, k), keep, v)


def f_nabla(q, k, v, p=0.7):
    s = logits(q, k)
    keep = select_blocks(
        q, k, torch.ones_like(s, dtype=torch.bool), bq=16, bk=16,
        score=lambda qp, kp, D: dot(qp["mean"], kp["mean"]) / math.sqrt(D),
        criterion="share", value=p,
        always=lambda b, h, I, J: (I - J).abs() <= 1,
    )
    return softmax_attn(s, keep, v)


def f_vmoba(q, k, v, tau=0.25):
    s = logits(q, k)
    keep = select_blocks(
        q, k, torch.ones_like(s, dtype=torch.bool), bq=16, bk=16,
        score=lambda qp, kp, D: dot(qp["mean"], kp["mean"]) / math.sqrt(D),
        criterion="share", value=tau, whole_head=True,
        always=lambda b, h, I, J: I == J,
    )
    return softmax_attn(s, keep, v)


def f_biformer(q, k, v, topk=3):
    s = logits(q, k)
    keep = select_blocks(
        q, k, torch.ones_like(s, dtype=torch.bool), bq=32, bk=16,
        score=lambda qp, kp, D: dot(qp["mean"], kp["mean"]),
        criterion="top", value=topk,
    )
    return softmax_attn(s, keep, v)


# --------------------------------------------------------------------------------------------------
# Cases and input makers
# --------------------------------------------------------------------------------------------------


@dataclass
class Case:
    name: str
    B: int = 2
    H: int = 4
    HKV: int = 2
    SQ: int = 37
    SKV: int = 37
    D: int = 16
    DV: int = 24
    consts: dict = field(default_factory=dict)  # compile-time params passed to attnspec.compile
    runtime: dict = field(default_factory=dict)  # runtime params passed to attention()
    empty_rows: bool = False  # the case must contain rows whose output is 0
    tweak: Callable | None = None  # (q, k, v) -> None, edits the random inputs in place


SELF = Case("self")
SQ_LT = Case("sq<skv", SQ=21, SKV=50)
SQ_GT = Case("sq>skv", SQ=63, SKV=29)
MQA = Case("mqa", B=1, H=3, HKV=1, SQ=17, SKV=17, D=8, DV=8)
STANDARD = [SELF, SQ_LT, SQ_GT, MQA]


def const(case, name, default):
    return case.consts.get(name, default)


def randn(gen, *shape, dtype=torch.float32):
    return torch.randn(*shape, generator=gen, dtype=dtype)


def no_inputs(case, gen):
    return {}


def document_inputs(case, gen):
    def sorted_ids(n, high):
        return torch.sort(torch.randint(0, high, (case.B, n), generator=gen), dim=1).values.to(torch.int32)

    doc_kv = sorted_ids(case.SKV, 4)
    if case.SQ <= case.SKV:  # chunked prefill: the queries are the last SQ tokens
        doc_q = doc_kv[:, case.SKV - case.SQ :].clone()
    else:  # more queries than keys: some query documents have no key at all
        doc_q = sorted_ids(case.SQ, 7)
    return {"doc_q": doc_q, "doc_kv": doc_kv}


def alibi_inputs(case, gen):
    return {"slope": torch.tensor([2.0 ** (-8.0 * (h + 1) / case.H) for h in range(case.H)], dtype=torch.float32)}


def sink_inputs(case, gen):
    return {"sink_logit": randn(gen, case.H)}


def rel_clipped_inputs(case, gen):
    return {"rel": randn(gen, case.H, 2 * const(case, "maxd", 8) + 1)}


def rel_table_inputs(case, gen):
    return {"table": randn(gen, case.H, 2 * case.SQ - 1)}


def deberta_inputs(case, gen):
    W = const(case, "W", 8)
    return {"kr": randn(gen, case.H, 2 * W, case.D) * 0.5, "qr": randn(gen, case.HKV, 2 * W, case.D) * 0.5}


def log_bucket_inputs(case, gen):
    return {"table": randn(gen, case.H, 2 * const(case, "NB", 16))}


def hedgehog_inputs(case, gen):
    return {"wq": randn(gen, case.H, case.D, case.D) * 0.5, "wk": randn(gen, case.HKV, case.D, case.D) * 0.5}


def query_weight_inputs(case, gen):
    return {"w": randn(gen, case.H, case.D) * 0.5}


def affine_inputs(case, gen):
    return {"w_alpha": randn(gen, case.H, case.D) * 0.5, "w_beta": randn(gen, case.H, case.D) * 0.5}


def gate_inputs(case, gen):
    return {"gate": randn(gen, case.B, case.H, case.SQ) * 3}


def stripe_inputs(case, gen):
    """SampleAttention's kept key columns: about one in eight, per batch and head."""
    return {"stripe": torch.rand(case.B, case.H, case.SKV, generator=gen) < 0.125}


def expert_choice_inputs(case, gen):
    """MoSA: each head's chosen tokens of a sequence of 3 * SKV, in their original order (the keys; the
    queries are the last SQ of them, or, with more queries than keys, other tokens whose earliest ones
    precede every key), and each query's router weight sigmoid(x . w_r)."""
    def chosen(n, start=0):
        return torch.stack([torch.randperm(3 * max(case.SQ, case.SKV), generator=gen)[:n].sort().values
                            for _ in range(case.B * case.H)]).view(case.B, case.H, n) + start

    pos_kv = chosen(case.SKV, 5)
    pos_q = pos_kv[:, :, case.SKV - case.SQ:] if case.SQ <= case.SKV else chosen(case.SQ)
    return {"pos_q": pos_q.to(torch.int32).contiguous(), "pos_kv": pos_kv.to(torch.int32),
            "weight": torch.sigmoid(randn(gen, case.B, case.H, case.SQ))}


def route_inputs(case, gen):
    """MoH's routing weights: the first head shared (weight 0.5), the others routed to by a top-2 softmax
    over their router logits (weights summing to 0.5, 0 for the heads a token skips)."""
    logits = randn(gen, case.B, case.H - 1, case.SQ)
    top = logits.topk(min(2, case.H - 1), dim=1).indices
    chosen = torch.full_like(logits, float("-inf")).scatter(1, top, logits.gather(1, top))
    routed = 0.5 * torch.softmax(chosen, dim=1)
    return {"route": torch.cat([torch.full((case.B, 1, case.SQ), 0.5), routed], 1).float()}


def temperature_inputs(case, gen):
    return {"tau": torch.rand(case.H, generator=gen, dtype=F64) + 0.005}  # some below the 0.01 floor


def rpb_inputs(case, gen):
    r = const(case, "r", 2)
    return {"rpb": randn(gen, case.H, 4 * r + 1, 4 * r + 1)}


def swin_inputs(case, gen):
    M = const(case, "M", 4)
    return {"bias": randn(gen, case.H, 2 * M - 1, 2 * M - 1)}


def moa_inputs(case, gen):
    alpha = 1.0 + 7.0 * torch.rand(case.H, generator=gen)
    beta = 0.15 * torch.rand(case.H, generator=gen)
    return {"alpha": alpha.float(), "beta": beta.float()}


def svg_inputs(case, gen):
    return {"kind": (torch.arange(case.H) % 2).to(torch.int32)}


def identical_key_blocks(q, k, v):
    """Every 16-key block equal, so all block scores tie and the lower block index must win."""
    k.copy_(k[:, :, torch.arange(k.shape[2]) % 16])


def first_row_sees_only_negative_scores(q, k, v):
    """Row 0 of a causal mask sees key 0 only; make that score negative so relu(score) = 0."""
    q[:, :, 0] = -per_query_head(k, q.shape[1])[:, :, 0]


# --------------------------------------------------------------------------------------------------
# Registry: id (catalog key) -> example
# --------------------------------------------------------------------------------------------------


@dataclass
class Example:
    file: str
    formula: Callable[..., Result]
    cases: list[Case]
    inputs: Callable = no_inputs
    lse: bool = True  # False for elementwise normalization (return_lse is not allowed)
    sink: bool = False  # a sink logit: fully masked rows have lse = sink instead of -inf


REGISTRY: dict[str, Example] = {
    "B01": Example("b01_causal.attn", f_causal, [
        SELF, SQ_LT, MQA, Case("sq>skv", SQ=63, SKV=29, empty_rows=True), Case("decode", SQ=1, SKV=40),
    ]),
    "B02": Example("b02_sliding_window.attn", f_sliding_window, [
        SELF, SQ_LT, MQA, Case("sq>skv", SQ=63, SKV=29, empty_rows=True),
        Case("causal", consts={"causal": True, "window": 5}),
    ]),
    "B03": Example("b03_document.attn", f_document, [
        SELF, Case("chunked", SQ=21, SKV=50), MQA, Case("sq>skv", SQ=63, SKV=29, empty_rows=True),
    ], document_inputs),
    "B04": Example("b04_alibi.attn", f_alibi, STANDARD, alibi_inputs),
    "B05": Example("b05_streaming_sink.attn", f_streaming_sink, [
        Case("self", SQ=50, SKV=50), SQ_LT, SQ_GT, MQA, Case("small", consts={"window": 3, "sinks": 1}),
        Case("no-sink-tokens", SQ=63, SKV=29, consts={"sinks": 0}, empty_rows=True),
    ], sink_inputs, sink=True),
    "B06": Example("b06_temperature.attn", f_temperature, [
        Case("self", runtime={"tau": 0.5}), SQ_LT, Case("sq>skv", SQ=63, SKV=29, runtime={"tau": 1.3}), MQA,
        Case("n_train", consts={"n_train": 32}, runtime={"tau": 0.25}),
    ]),
    "B06-query": Example("b06_query_temperature.attn", f_query_temperature,
                         STANDARD + [Case("decode", SQ=1, SKV=40)], query_weight_inputs),
    "B07": Example("b07_softcap.attn", f_softcap, STANDARD + [Case("cap", consts={"cap": 0.5})]),
    "B08": Example("b08_static_blocks.attn", f_static_blocks, STANDARD + [Case("long", SQ=100, SKV=100, D=8, DV=8)]),
    "B09": Example("b09_gqa.attn", f_gqa2, [
        SELF, Case("b1", B=1, H=2, HKV=1, SQ=20, SKV=33), Case("sq>skv", SQ=63, SKV=29),
    ]),
    "S02-clipped": Example("s02_rel_bias_clipped.attn", f_rel_bias_clipped,
                           STANDARD + [Case("maxd", consts={"maxd": 3})], rel_clipped_inputs),
    "S02-table": Example("s02_rel_table.attn", f_rel_table, STANDARD, rel_table_inputs),
    "S02-deberta": Example("s02_deberta.attn", f_deberta, STANDARD + [
        Case("W", consts={"W": 3}), Case("decode", SQ=1, SKV=40),
    ], deberta_inputs),
    "B10": Example("b10_rope.attn", f_rope, STANDARD + [
        Case("decode", SQ=1, SKV=40), Case("base", D=32, DV=8, consts={"base": 500.0}),
    ]),
    "B10-gated": Example("b10_rope_gated.attn", f_rope_gated, STANDARD + [Case("decode", SQ=1, SKV=40)], gate_inputs),
    "B10-2d": Example("b10_rope2d.attn", f_rope2d, [
        Case("8x8", SQ=64, SKV=64), Case("6x5", SQ=30, SKV=30, D=8, consts={"W": 5}), MQA,
        Case("sq<skv", SQ=24, SKV=64, D=32, DV=8, consts={"base": 10000.0}),
    ]),
    "S02-log": Example("s02_log_buckets.attn", f_log_buckets, STANDARD + [
        Case("long", SQ=150, SKV=150, D=8, DV=8), Case("few-buckets", SQ=70, SKV=40, consts={"NE": 4, "NB": 6}),
    ], log_bucket_inputs),
    "M01": Example("m01_prefix_lm.attn", f_prefix_lm, [
        SELF, Case("prefix", runtime={"prefix": 10}), Case("sq<skv", SQ=21, SKV=50),
        Case("sq>skv", SQ=63, SKV=29, runtime={"prefix": 40}), Case("mqa", B=1, H=3, HKV=1, SQ=17, SKV=17, runtime={"prefix": 0}),
    ]),
    "M02-2d": Example("m02_natten2d.attn", f_natten2d, [
        Case("8x8", SQ=64, SKV=64),
        Case("9x7", SQ=63, SKV=63, consts={"W": 7, "HT": 9}),
        Case("6x10-r1", H=4, HKV=1, SQ=60, SKV=60, consts={"W": 10, "HT": 6, "r": 1}),
        Case("sq<skv", SQ=50, SKV=64),
        Case("sq>skv", SQ=60, SKV=20, consts={"W": 10, "HT": 6, "r": 1}, empty_rows=True),
    ], rpb_inputs),
    "M02-3d": Example("m02_natten3d.attn", f_natten3d, [
        Case("4x5x6", SQ=120, SKV=120, D=8, DV=8),
        Case("3x3x4", SQ=36, SKV=36, consts={"T": 3, "HT": 3, "W": 4}),
        Case("sq<skv", SQ=50, SKV=120, D=8, DV=8),
    ]),
    "M03": Example("m03_dilated_na.attn", f_dilated_na2d, [
        Case("8x8", SQ=64, SKV=64),
        Case("7x9", SQ=63, SKV=63, consts={"W": 9, "HT": 7}),
        Case("9x9-dil3", SQ=81, SKV=81, D=8, DV=8, consts={"W": 9, "HT": 9, "dil": 3}),
    ]),
    "M05": Example("m05_swin.attn", f_swin, [
        Case("8x8", SQ=64, SKV=64),
        Case("no-bias", SQ=64, SKV=64, consts={"use_bias": False}),
        Case("6x12-M3", SQ=72, SKV=72, consts={"W": 12, "HT": 6, "M": 3, "shift": 1}),
        Case("sq<skv", SQ=40, SKV=64),
    ], swin_inputs),
    "M05-v2": Example("m05_swin_v2_cosine.attn", f_swin_v2_cosine, [
        Case("8x8", SQ=64, SKV=64), Case("6x12-M3", SQ=72, SKV=72, consts={"W": 12, "M": 3}), MQA, SQ_LT,
    ], temperature_inputs),
    "M06": Example("m06_maxvit_grid.attn", f_maxvit_grid, [
        Case("8x8", SQ=64, SKV=64), Case("9x6", SQ=54, SKV=54, consts={"HT": 9, "W": 6, "NG": 3}), MQA,
    ]),
    "M08": Example("m08_criss_cross.attn", f_criss_cross, [
        Case("9x7", SQ=63, SKV=63), Case("w5", SQ=37, SKV=37, consts={"W": 5}), SQ_LT, SQ_GT, MQA,
    ]),
    "M09": Example("m09_timesformer.attn", f_timesformer, [
        Case("temporal", SQ=49, SKV=49),
        Case("spatial", SQ=49, SKV=49, consts={"spatial": True}),
        Case("2x5", SQ=31, SKV=31, consts={"HT": 2, "W": 5}),
        Case("mqa", B=1, H=3, HKV=1, SQ=25, SKV=25, consts={"spatial": True}),
    ]),
    "M12": Example("m12_power_attention.attn", f_power_attention, [
        Case("self", SQ=100, SKV=100, D=8, DV=8),
        Case("bs4", SQ=70, SKV=70, consts={"BS": 4, "n_local": 1, "n_sink": 2}),
        SQ_LT, MQA,
    ]),
    "M14": Example("m14_ls_heads.attn", f_ls_heads, STANDARD + [Case("small", consts={"n_local": 1, "window": 3})]),
    "M15": Example("m15_moa.attn", f_moa, [Case("self", SQ=60, SKV=60), SQ_LT, SQ_GT, MQA], moa_inputs),
    "M16": Example("m16_sinklora.attn", f_sinklora, [
        SELF, Case("long", SQ=70, SKV=70), Case("g8", consts={"GS": 8, "sinks": 0}), MQA,
    ]),
    "M18": Example("m18_block_causal.attn", f_block_causal, STANDARD + [Case("c5", consts={"C": 5})]),
    "M20": Example("m20_svg_heads.attn", f_svg_heads, [
        Case("4x16", SQ=68, SKV=68), Case("s6", SQ=38, SKV=38, consts={"S": 6, "n_text": 2}), SQ_LT,
    ], svg_inputs),
    "N01": Example("n01_sigmoid.attn", f_sigmoid, [
        SELF, SQ_LT, MQA, Case("sq>skv", SQ=63, SKV=29, empty_rows=True),
    ], lse=False),
    "N02-rownorm": Example("n02_relu2_rownorm.attn", f_relu2_rownorm, STANDARD + [
        Case("zero-row", empty_rows=True, tweak=first_row_sees_only_negative_scores),
    ]),
    "N02-len": Example("n02_relu_length.attn", f_relu_length, STANDARD, lse=False),
    "N09": Example("n09_affine_scaled.attn", f_affine_scaled, STANDARD + [
        Case("sq>skv", SQ=63, SKV=29, empty_rows=True), Case("decode", SQ=1, SKV=40),
    ], affine_inputs),
    "N02-kept": Example("n02_relu_kept_length.attn", f_relu_kept_length, STANDARD + [
        Case("sq>skv", SQ=63, SKV=29, empty_rows=True),
    ]),
    "N01-softpick": Example("n01_softpick.attn", f_softpick, STANDARD + [
        Case("sq>skv", SQ=63, SKV=29, empty_rows=True),
    ]),
    "N14-cosine": Example("n14_cosine_signed.attn", f_cosine_signed, STANDARD + [Case("decode", SQ=1, SKV=40)]),
    "N14-linear": Example("n14_linear_elu.attn", f_linear_elu, STANDARD + [Case("decode", SQ=1, SKV=40)]),
    "N05": Example("n05_inline.attn", f_inline, STANDARD + [Case("decode", SQ=1, SKV=40)], lse=False),
    "N15": Example("n15_efficient.attn", f_efficient, STANDARD + [Case("decode", SQ=1, SKV=40)], lse=False),
    "N17": Example("n17_hedgehog.attn", f_hedgehog, STANDARD + [Case("decode", SQ=1, SKV=40)], hedgehog_inputs),
    "N18": Example("n18_lightning.attn", f_lightning, STANDARD + [Case("decode", SQ=1, SKV=40)], lse=False),
    "K12": Example("k12_sample_attention.attn", f_sample_attention, [
        SELF, SQ_LT, MQA, Case("sq>skv", SQ=63, SKV=29, empty_rows=True), Case("decode", SQ=1, SKV=40),
        Case("window 30%", SQ=50, SKV=50, consts={"window_percent": 30}),
    ], stripe_inputs),
    "K14": Example("k14_mosa.attn", f_mosa, [
        SELF, SQ_LT, MQA, Case("sq>skv", SQ=63, SKV=29, empty_rows=True), Case("decode", SQ=1, SKV=40),
    ], expert_choice_inputs),
    "O03": Example("o03_moh.attn", f_moh, [
        Case("self", empty_rows=True), Case("sq<skv", SQ=21, SKV=50, empty_rows=True), Case("decode", SQ=1, SKV=40),
        Case("mqa", H=4, HKV=1, SQ=63, SKV=63, empty_rows=True),
    ], route_inputs),
    "K01": Example("k01_nsa_select.attn", f_nsa_select, [
        Case("self", SQ=100, SKV=100, D=8, DV=8),
        Case("mqa", H=4, HKV=1, SQ=63, SKV=63),
        Case("sq<skv", SQ=37, SKV=80),
        Case("n1", SQ=63, SKV=63, consts={"n": 1}),
    ]),
    "K02": Example("k02_moba.attn", f_moba, [
        Case("self", SQ=100, SKV=100, D=8, DV=8), Case("63", SQ=63, SKV=63),
        Case("sq<skv", SQ=37, SKV=80), Case("sq>skv", SQ=80, SKV=37), MQA,
        Case("top1", SQ=63, SKV=63, consts={"topk": 1}),
        Case("ties", SQ=64, SKV=64, tweak=identical_key_blocks),
    ]),
    "K03": Example("k03_vmoba.attn", f_vmoba, [
        Case("self", SQ=100, SKV=100, D=8, DV=8), Case("sq<skv", SQ=37, SKV=80), Case("sq>skv", SQ=100, SKV=70), MQA,
        Case("tau0.6", SQ=63, SKV=63, consts={"tau": 0.6}), Case("ties", SQ=64, SKV=64, tweak=identical_key_blocks),
    ]),
    "K05": Example("k05_seer_threshold.attn", f_seer_threshold, [
        Case("self", SQ=100, SKV=100, D=8, DV=8), Case("t", SQ=63, SKV=63, runtime={"t": 0.1}),
        Case("sq<skv", SQ=37, SKV=80, runtime={"t": -0.1}), MQA,
    ]),
    "K08": Example("k08_nabla.attn", f_nabla, [
        Case("self", SQ=100, SKV=100, D=8, DV=8), Case("sq<skv", SQ=37, SKV=80), Case("sq>skv", SQ=100, SKV=70),
        Case("p0.3", SQ=63, SKV=63, consts={"p": 0.3}), Case("p0.95", SQ=100, SKV=100, consts={"p": 0.95}),
    ]),
    "K10": Example("k10_biformer.attn", f_biformer, [
        Case("self", SQ=100, SKV=100, D=8, DV=8), Case("sq<skv", SQ=37, SKV=80), Case("sq>skv", SQ=100, SKV=70),
        Case("mqa-top1", B=1, H=3, HKV=1, SQ=17, SKV=40, D=8, DV=8, consts={"topk": 1}),
        Case("top1", SQ=63, SKV=63, consts={"topk": 1}),
        Case("ties", SQ=40, SKV=96, tweak=identical_key_blocks),
    ]),
}


# --------------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------------


@lru_cache(maxsize=None)
def compiled(file, consts_items):
    return attnspec.compile(str(EXAMPLES / file), target="reference", **dict(consts_items))


def make_qkv(case, gen):
    q = randn(gen, case.B, case.H, case.SQ, case.D, dtype=F64)
    k = randn(gen, case.B, case.HKV, case.SKV, case.D, dtype=F64)
    v = randn(gen, case.B, case.HKV, case.SKV, case.DV, dtype=F64)
    if case.tweak is not None:
        case.tweak(q, k, v)
    return q, k, v


def check_case(key, example, case):
    gen = torch.Generator().manual_seed(zlib.crc32(f"{key}/{case.name}".encode()))
    q, k, v = make_qkv(case, gen)
    kwargs = {**example.inputs(case, gen), **case.runtime}
    expected = example.formula(q, k, v, **case.consts, **kwargs)
    mod = compiled(example.file, tuple(sorted(case.consts.items())))

    out = mod.attention(q, k, v, **kwargs)
    assert out.dtype == F64 and out.shape == (case.B, case.H, case.SQ, case.DV)
    torch.testing.assert_close(out, expected.out, **TOL)
    assert torch.all(out[expected.empty] == 0)
    if case.empty_rows:
        assert expected.empty.any(), "the case was meant to have fully masked rows"

    if example.lse:
        out2, lse = mod.attention(q, k, v, **kwargs, return_lse=True)
        torch.testing.assert_close(out2, expected.out, **TOL)
        assert lse.shape == (case.B, case.H, case.SQ) and lse.dtype in (torch.float32, F64)
        tol = TOL if lse.dtype == F64 else dict(rtol=2e-6, atol=2e-6)
        torch.testing.assert_close(lse.to(F64), expected.lse, **tol)
        if not example.sink:
            assert torch.all(lse[expected.empty] == NEG_INF)


@pytest.mark.parametrize("key", list(REGISTRY))
def test_example_matches_formula(key):
    example = REGISTRY[key]
    for case in example.cases:
        try:
            check_case(key, example, case)
        except AssertionError as err:
            raise AssertionError(f"{key} [{example.file}] case {case.name!r}: {err}") from err


def test_every_example_has_a_formula():
    files = {p.name for p in EXAMPLES.glob("*.attn")}
    covered = {example.file for example in REGISTRY.values()}
    assert files - covered == set(), "examples without a hand-written formula"
    assert covered - files == set(), "formulas for examples that do not exist"


@pytest.mark.parametrize("key", list(REGISTRY))
def test_example_header(key):
    example = REGISTRY[key]
    lines = (EXAMPLES / example.file).read_text().splitlines()
    match = re.match(r"# ([A-Z]\d\d): \S", lines[0])
    assert match, f"line 1 must be '# <KEY>: <description>': {lines[0]!r}"
    assert key.split("-")[0] == match.group(1)
    assert lines[1].startswith("# formula: ")
    # every param has a default: at least one case compiles the file without compile-time arguments
    assert any(not case.consts for case in example.cases)


def test_gqa_group_mismatch_is_rejected():
    mod = compiled("b09_gqa.attn", ())
    q = torch.randn(1, 4, 8, 16, dtype=F64)
    k = torch.randn(1, 1, 8, 16, dtype=F64)
    with pytest.raises(Exception):
        mod.attention(q, k, k)
