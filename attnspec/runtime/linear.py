"""Linear attention through a state carried along the keys (analysis/linear.py, language.md section 3).

For a spec whose weights are w_ij = scale * (q_i . k_j) * decay^|d_ij| (d_ij = i + SKV - SQ - j) under
a causal mask, or over every key, the rows need no score matrix:

    S_t = decay * S_{t-1} + k_t^T v_t,  z_t = decay * z_{t-1} + k_t,
    o_i = scale * q_i S_t / (scale * q_i . z_t)   (t = i + SKV - SQ; without the division where not normalized)

Over every key without a decay, one state of all of them serves every query. With a decay in both
directions the keys after each query's edge are a second causal pass over the mirrored sequence
(`mirror`): its key j > i + SKV - SQ lies j - (i + SKV - SQ) - 1 positions behind its query, so that
pass's sums times decay are the later keys' part, added to the causal pass's (`both_ways`).

- `recurrent`: that recurrence one key at a time in torch (float64 where the inputs are), the
  reference module's `recurrent()`, O(N d dv);
- `chunked`: the Triton kernel (`attnspec aot` reports it as `linear`) that computes it a chunk of C rows at a time: inside a chunk the C x C
  weights as a small matrix, the keys before it through the state, which then takes the chunk's keys
  (one program per batch, head and block of value features, the chunks in order; without gradients, bf16
  inputs take bf16 operands in q k^T and k^T v, `_dot`).
- `attention`: `chunked` as one autograd operation, whose backward runs two more chunked kernels
  (`chunked_backward`): dq with the forward's state (and the decay's gradient, from an age-weighted
  state, where it needs one), dk and dv with a state of the queries carried backwards along the rows
  (both on float32 operands; dk/dv, and dq with the age-weighted state, per block of 16 features).

Both return (out, den): den is the row's sum of weights (the rownorm denominator), and a row whose
sum is NaN or infinite (a NaN or infinite weight) is undefined: NaN, as in the dense form.
"""

from __future__ import annotations

import contextlib
import functools
import math

import torch
import triton
import triton.language as tl

from . import kernel as _kernel, triton as _rt
from .launch import jit, kernel
from .dense import log_denominator
from .tracing import tracing


def recurrent(q, k, v, decay, scale: float, *, causal: bool, normalized: bool):
    """(out [B, H, SQ, DV], den [B, H, SQ]) in q's dtype, one key at a time. q [B, H, SQ, D] and k
    [B, HKV, SKV, D] after their prologues, v [B, HKV, SKV, DV], decay [B, H] (or None: 1; without
    causal, a decay in both directions). GQA: query head h reads kv head h // (H // HKV)."""
    if not causal and decay is not None:  # the keys up to each query's edge, then those after it
        return both_ways(_scan, q, k, v, decay, scale, normalized)
    return _finish(*_scan(q, k, v, decay, scale, causal=causal), normalized)


def _scan(q, k, v, decay, scale: float, *, causal: bool = True):
    """(num, den) of the recurrence without the division, one key at a time; not causal: one state of
    every key (no decay)."""
    B, H, SQ, D = q.shape
    HKV, SKV, DV = k.shape[1], k.shape[2], v.shape[-1]
    k, v = k.repeat_interleave(H // HKV, 1), v.repeat_interleave(H // HKV, 1)
    if not causal:  # one state over every key
        num = scale * torch.einsum("bhid,bhde->bhie", q, torch.einsum("bhjd,bhje->bhde", k, v))
        den = scale * torch.einsum("bhid,bhd->bhi", q, k.sum(2))
        return num, den
    lam = None if decay is None else decay.to(q.dtype)[:, :, None]
    state = q.new_zeros(B, H, D, DV)
    norm = q.new_zeros(B, H, D)
    num, den = q.new_zeros(B, H, SQ, DV), q.new_zeros(B, H, SQ)
    offset = SKV - SQ
    for t in range(SKV):
        if lam is not None:
            state, norm = lam[..., None] * state, lam * norm
        state = state + k[:, :, t, :, None] * v[:, :, t, None, :]
        norm = norm + k[:, :, t]
        i = t - offset
        if i >= 0:  # query i sees the keys up to t
            num[:, :, i] = scale * torch.einsum("bhd,bhde->bhe", q[:, :, i], state)
            den[:, :, i] = scale * (q[:, :, i] * norm).sum(-1)
    return num, den


# ---------------------------------------------------------------- a decay in both directions


def mirror(x, rows: int, first: int = 0):
    """x [B, heads, S, F] with its rows reversed, at rows first .. first + S - 1 of a zero tensor of
    `rows` rows (where a later pass reads it, mirror(..)[:, :, first:first + S].flip(2) is x again)."""
    out = x.new_zeros(*x.shape[:2], rows, x.shape[-1])
    out[:, :, first:first + x.shape[2]] = x.flip(2)
    return out


def mirrored_rows(q, k) -> int:
    """The rows of the mirrored pass: the SKV keys after an empty first row, and at least the SQ queries."""
    return max(k.shape[2] + 1, q.shape[2])


def later_keys(pass_, q, k, v, decay, scale: float):
    """(num, den) of the keys after each query's edge, without the division and without one factor
    decay: a causal pass over the mirrored sequence, with no offset (query i at row SQ - 1 - i, key j at
    row SKV - j: it sees the keys j > i + SKV - SQ, each one key nearer than it is). pass_ is _scan or
    _chunked_sums."""
    rows, SQ = mirrored_rows(q, k), q.shape[2]
    num, den = pass_(mirror(q, rows), mirror(k, rows, 1), mirror(v, rows, 1), decay, scale)
    return num[:, :, :SQ].flip(2), den[:, :, :SQ].flip(2)


def both_ways(pass_, q, k, v, decay, scale: float, normalized: bool, later=None):
    """(out, den) of w_ij = scale (q_i . k_j) decay^|d_ij| over every key: the causal pass plus decay
    times the later keys' (`later`: those, where the caller has them)."""
    num, den = pass_(q, k, v, decay, scale)
    later_num, later_den = later_keys(pass_, q, k, v, decay, scale) if later is None else later
    lam = decay.to(num.dtype)
    return _finish(num + lam[:, :, None, None] * later_num, den + lam[:, :, None] * later_den, normalized)


def _finish(num, den, normalized: bool):
    """out = num / den (normalized; 0 / 0 gives 0, as a row without weight does), NaN rows where the
    sum of weights is NaN or infinite."""
    undefined = ~torch.isfinite(den)[..., None]
    out = num / torch.where(den > 0, den, 1.0)[..., None] if normalized else num
    return torch.where(undefined, math.nan, out), den


def kept_sum(v, H: int, SQ: int, *, causal: bool) -> torch.Tensor:
    """sum_kept(v) of a linear form's rows, [B, H, SQ, DV] float32: the sum of v over the keys each query
    keeps (end-aligned up to i + SKV - SQ where causal, every key otherwise; 0 for a row without keys)."""
    B, HKV, SKV, DV = v.shape
    v = v.float().repeat_interleave(H // HKV, 1)
    if not causal:
        return v.sum(2, keepdim=True).expand(B, H, SQ, DV)
    edge = torch.arange(SQ, device=v.device) + (SKV - SQ)  # the last key each query keeps
    prefix = torch.cat([v.new_zeros(B, H, 1, DV), v.cumsum(2)], 2)  # prefix[t] = sum of the keys before t
    return prefix[:, :, (edge + 1).clamp(0, SKV)]


def lse(den) -> torch.Tensor:
    """The rownorm lse, log(den) in float32: -inf for a row without weight, NaN for an undefined row."""
    return torch.where(torch.isfinite(den), log_denominator(den, 0.0), math.nan).float()


_TILES_ONLY = [False]


@contextlib.contextmanager
def tile_kernels():
    """Calls in this block run the tile kernels where the chunks would serve (`attnspec aot` reports both)."""
    before, _TILES_ONLY[0] = _TILES_ONLY[0], True
    try:
        yield
    finally:
        _TILES_ONLY[0] = before


def takes_chunks(schedule, selection) -> bool:
    """Whether the triton module runs the chunked kernels: not with a caller's schedule or selection, nor
    inside torch.compile (which traces the module's custom operator)."""
    return not _TILES_ONLY[0] and schedule is None and selection is None and not tracing()


# ---------------------------------------------------------------- the chunked kernel


@kernel
def _power(log2_abs, sign, n):
    """decay^n for integers n >= 0 (float32): exp2(n log2|decay|), times sign(decay) for odd n, 1 at
    n = 0 (also for decay 0: 0^0 = 1, as pow says)."""
    value = tl.exp2(n * log2_abs)
    value = tl.where(n == 0, 1.0, value)
    return tl.where((n.to(tl.int32) % 2) == 1, value * sign, value)


@kernel
def _tile(base, index, live, columns, row_stride, column_stride, width):
    """Rows `index` (where live, else zeros) and columns `columns` (< width) of a [rows, width] tensor, in
    its own type (arithmetic with a float32 value gives float32; `_dot` casts its operands)."""
    mask = live[:, None] & (columns[None, :] < width)
    return tl.load(base + index[:, None] * row_stride + columns[None, :] * column_stride, mask=mask, other=0.0)


@kernel
def _dot(a, b, PRECISION: tl.constexpr):
    """a @ b in float32. PRECISION "bf16": bfloat16 operands on the tensor cores (a float32 operand, such
    as the decayed keys, rounded to bfloat16, which has float32's range; `_precision` says which
    products); "bf16-emulated": the same operands rounded to bfloat16 (to nearest, even) and multiplied
    in float32, where Triton's interpreter runs the kernels (it has no bfloat16 products); "tf32" or
    "ieee": float32 operands; "tf32-rounded": float32 operands rounded to TF32's precision to nearest
    (kernel.tf32_rounded: 2^-11, where a TF32 product's own reading errs by up to 2^-10)."""
    if PRECISION == "tf32-rounded":
        product = _kernel.matrix_product(a.to(tl.float32), b.to(tl.float32), 2)
    elif PRECISION == "bf16":
        product = tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16))
    elif PRECISION == "bf16-emulated":
        product = tl.dot(_kernel.rounded(a, 16), _kernel.rounded(b, 16), input_precision="ieee")
    else:
        product = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision=PRECISION)
    return product


@kernel
def _absorb(state, norm, k_tile, v_tile, length, ahead, log2_abs, sign, HAS_DECAY: tl.constexpr, PRECISION: tl.constexpr):
    """The state after a chunk of `length` keys: decay^length * S + sum_j decay^(ahead_j) k_j^T v_j, where
    ahead_j is how many keys of the chunk follow key j (keys outside the chunk are zero rows)."""
    if HAS_DECAY:
        carried = _power(log2_abs, sign, tl.zeros((1,), tl.float32) + length)
        state, norm = state * carried[:, None], norm * carried
        # keys past the chunk's end are zero rows, but decay^(negative) may overflow (0 * inf)
        k_tile = k_tile * _power(log2_abs, sign, tl.maximum(ahead, 0).to(tl.float32))[:, None]
    state = state + _dot(tl.trans(k_tile), v_tile, PRECISION)
    norm = norm + tl.sum(k_tile.to(tl.float32), 0)
    return state, norm


@kernel
def _decay(Decay, index, HAS_DECAY: tl.constexpr):
    """(log2 |decay|, sign(decay)) of this program's head, (0, 1) without a decay."""
    if HAS_DECAY:
        lam = tl.load(Decay + index)
        return tl.log2(tl.abs(lam)), tl.where(lam < 0, -1.0, 1.0)
    return 0.0, 1.0


@kernel
def _age(aged, aged_norm, state, norm, k_tile, v_tile, length, ahead, log2_abs, sign, PRECISION: tl.constexpr):
    """The age-weighted state S' = sum_j age_j decay^age_j k_j^T v_j (and z') after a chunk of `length`
    keys, from both states before it: every older key ages by `length`, key j of the chunk is ahead_j old."""
    length = tl.zeros((1,), tl.float32) + length
    carried = _power(log2_abs, sign, length)
    aged = (aged + length[:, None] * state) * carried[:, None]
    aged_norm = (aged_norm + length * norm) * carried
    ahead = tl.maximum(ahead, 0).to(tl.float32)
    weighted = k_tile * (ahead * _power(log2_abs, sign, ahead))[:, None]
    aged += _dot(tl.trans(weighted), v_tile, PRECISION)
    aged_norm += tl.sum(weighted, 0)
    return aged, aged_norm


@kernel
def _shared_keys(K, V, offset, SKV, rows, feats, vfeats, skn, skd, svn, svd, D, DV, log2_abs, sign,
                 HAS_DECAY: tl.constexpr, AGED: tl.constexpr, PRECISION: tl.constexpr, BLOCK_D: tl.constexpr,
                 BLOCK_DV: tl.constexpr):
    """The state (S, z) of the keys every query sees, decayed to the last of them: the first `offset`
    keys (causal with SKV > SQ: SKV - SQ of them; without a mask: all of them); with AGED also their
    age-weighted state (S', z'), zeros otherwise."""
    state = tl.zeros((BLOCK_D, BLOCK_DV), tl.float32)
    norm = tl.zeros((BLOCK_D,), tl.float32)
    aged = tl.zeros((BLOCK_D, BLOCK_DV), tl.float32)
    aged_norm = tl.zeros((BLOCK_D,), tl.float32)
    for p0 in range(0, tl.maximum(offset, 0), rows.shape[0]):
        keys = p0 + rows
        live = keys < tl.minimum(offset, SKV)
        k_tile = _tile(K, keys, live, feats, skn, skd, D)
        v_tile = _tile(V, keys, live, vfeats, svn, svd, DV)
        end = tl.minimum(p0 + rows.shape[0], offset)
        if AGED:
            aged, aged_norm = _age(aged, aged_norm, state, norm, k_tile, v_tile, end - p0, end - 1 - keys, log2_abs, sign, PRECISION)
        state, norm = _absorb(state, norm, k_tile, v_tile, end - p0, end - 1 - keys, log2_abs, sign, HAS_DECAY, PRECISION)
    return state, norm, aged, aged_norm


@kernel
def chunked_kernel(
    Q, K, V, Out, Den, Decay,
    sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sob, soh, som, sod, sdb, sdh, sdm,
    H, HKV, SQ, SKV, D, DV, scale,
    HAS_DECAY: tl.constexpr, CAUSAL: tl.constexpr, NORMALIZED: tl.constexpr, PRECISION: tl.constexpr, FLOAT32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    bh = tl.program_id(0)
    b, h = bh // H, bh % H
    hk = h // (H // HKV)
    dv0 = tl.program_id(1) * BLOCK_DV
    rows, feats, vfeats = tl.arange(0, BLOCK_M), tl.arange(0, BLOCK_D), dv0 + tl.arange(0, BLOCK_DV)
    Q += b * sqb + h * sqh
    K += b * skb + hk * skh
    V += b * svb + hk * svh
    log2_abs, sign = _decay(Decay, b * H + h, HAS_DECAY)
    offset = SKV - SQ if CAUSAL else SKV
    state, norm, _, _ = _shared_keys(K, V, offset, SKV, rows, feats, vfeats, skn, skd, svn, svd, D, DV, log2_abs, sign,
                                     HAS_DECAY, False, PRECISION, BLOCK_D, BLOCK_DV)
    for i0 in range(0, SQ, BLOCK_M):
        queries = i0 + rows
        # a query without keys (more queries than keys) is read as zeros: its row is 0 whatever q holds
        q_tile = _tile(Q, queries, (queries < SQ) & (queries + offset >= 0), feats, sqm, sqd, D)
        num = _dot(q_tile, state, FLOAT32)  # float32 operands where a rounded operand errs as much as the sum
        den = tl.sum(q_tile * norm[None, :], 1)
        if CAUSAL:
            t0 = i0 + offset  # the chunk's first query sees the keys up to t0; the state holds those before t0
            keys = t0 + rows
            live = (keys >= 0) & (keys < SKV)
            k_tile = _tile(K, keys, live, feats, skn, skd, D)
            v_tile = _tile(V, keys, live, vfeats, svn, svd, DV)
            behind = rows[:, None] - rows[None, :]  # d_ij = (t0 + i) - (t0 + j)
            weights = _dot(q_tile, tl.trans(k_tile), PRECISION)
            if HAS_DECAY:
                carried = _power(log2_abs, sign, (rows + 1).to(tl.float32))  # the state's keys are i + 1 .. behind
                num, den = num * carried[:, None], den * carried
                weights = weights * _power(log2_abs, sign, tl.maximum(behind, 0).to(tl.float32))
            weights = tl.where((behind >= 0) & live[None, :], weights, 0.0)
            num += _dot(weights, v_tile, FLOAT32)
            den += tl.sum(weights, 1)
            state, norm = _absorb(state, norm, k_tile, v_tile, BLOCK_M, BLOCK_M - 1 - rows, log2_abs, sign, HAS_DECAY, PRECISION)
        num, den = num * scale, den * scale
        undefined = ~(tl.abs(den) < float("inf"))  # NaN or infinite: a weight that is
        if NORMALIZED:
            num = num / tl.where(den > 0, den, 1.0)[:, None]
        num = tl.where(undefined[:, None], float("nan"), num)
        live_rows = queries < SQ
        tl.store(Out + b * sob + h * soh + queries[:, None] * som + vfeats[None, :] * sod, num,
                 mask=live_rows[:, None] & (vfeats[None, :] < DV))
        if tl.program_id(1) == 0:
            tl.store(Den + b * sdb + h * sdh + queries * sdm, den, mask=live_rows)


CHUNK = 32
# Blocks of features in the backward (sm_90a, float32 operands): dK/dV's of key features, where 32
# and 64 spilled 28 to 76 bytes at D = 64 and 128 and 16 spills nothing; dQ's of query features where
# it also carries the age-weighted state (the decay's gradient: 16 took bf16's spills from 176 and 704
# bytes to 48, 32 to 104), else every feature in one block (no spills); that dQ also takes blocks of 32
# value features (64 left 48 bytes of spills in bf16 and fp16; 32: none, 254 registers)
KEY_FEATURES = 16
FEATURES_WITH_AGES = 16
VALUES_WITH_AGES = 32


def _meta(q, D: int, DV: int, for_backward: bool = False):
    """The chunked kernels' launch parameters: (grid's value blocks, meta); float32 products for a
    backward and the forward before it (`_float32_precision`)."""
    block_d = max(16, triton.next_power_of_2(D))
    block_dv = min(64, max(16, triton.next_power_of_2(DV)))
    meta = dict(PRECISION=_float32_precision(q, for_backward) if for_backward else _precision(q), BLOCK_M=CHUNK, num_warps=8, num_stages=1,
                BLOCK_D=block_d, BLOCK_DV=block_dv)
    return triton.cdiv(DV, block_dv), meta


def _precision(q) -> str:
    """The operands (`_dot`) of a forward's products of the inputs (q k^T, k^T v) without gradients: the
    inputs' bfloat16 (emulated in the interpreter), else float32 ones. Its products with float32 sums
    (q S, w v) take `_float32_precision` (FLOAT32): bfloat16 weights missed the accuracy rule by up to 3
    times on unnormalized ones."""
    if q.dtype == torch.bfloat16:
        return "bf16-emulated" if _rt.interpreting() else "bf16"
    return _float32_precision(q)


def _float32_precision(q, for_backward: bool = False) -> str:
    """Float32 operands: IEEE where the inputs are float32 and torch does not allow TF32, else TF32 (on
    half inputs too); for a backward of float16 inputs, and the forward it follows, TF32 on operands
    rounded to nearest ("tf32-rounded"). The backward and the forward it follows take these whatever
    the inputs: dL/da_ij = dn_i . v_j + dz_i, with dz_i = -dn_i . o_i, cancels where a row's sum of
    weights is small (dn_i = dO_i / z_i is then large), so an error of o or of a product's operand
    grows by 1 / z_i; bfloat16 operands gave errors up to 12 times the accuracy rule's there
    (emulated). TF32 operands as the tensor cores read them (truncated: 2^-10, emulated) stay within
    bfloat16's rule but not float16's, whose gradients round to 2^-11: N17's dq missed it by 3.6 times
    at SQ = SKV = 1. Three TF32 products (near float32) spilled 470 to 1560 bytes in the three kernels."""
    if q.dtype == torch.float32:
        return "tf32" if _rt.tf32_products() else "ieee"
    return "tf32-rounded" if for_backward and q.dtype == torch.float16 else "tf32"


def _decay_argument(decay, q):
    return torch.zeros(1, dtype=torch.float32, device=q.device) if decay is None else decay.detach().to(torch.float32).contiguous()


def chunked(q, k, v, decay, scale: float, *, causal: bool, normalized: bool, for_backward: bool = False):
    """(out [B, H, SQ, DV] float32, den [B, H, SQ] float32) from the chunked kernel. q, k after their
    prologues (float32, bfloat16 or float16), decay [B, H] float32 or None (only with causal);
    for_backward: float32 products (`_meta`)."""
    B, H, SQ, D = q.shape
    HKV, SKV, DV = k.shape[1], k.shape[2], v.shape[-1]
    out = torch.empty(B, H, SQ, DV, dtype=torch.float32, device=q.device)
    den = torch.empty(B, H, SQ, dtype=torch.float32, device=q.device)
    blocks, meta = _meta(q, D, DV, for_backward)
    _rt.start(
        jit(chunked_kernel), (B * H, blocks), q, k, v, out, den, _decay_argument(decay, q),
        *q.stride(), *k.stride(), *v.stride(), *out.stride(), *den.stride(),
        H, HKV, SQ, SKV, D, DV, float(scale), HAS_DECAY=decay is not None, CAUSAL=causal, NORMALIZED=normalized,
        FLOAT32=_float32_precision(q, for_backward), **meta,
    )
    return out, den


# ---------------------------------------------------------------- the chunked backward
#
# With a_ij = scale * decay^d_ij * (q_i . k_j) on the kept pairs, the loss reaches a_ij through
# dL/da_ij = dn_i . v_j + dz_i: dn_i = dO_i / z_i and dz_i = (dlse_i - dO_i . o_i) / z_i where
# normalized (z_i > 0; a row without weight, or an undefined one, keeps dn_i = dO_i and dz_i = 0, as
# its output is the undivided sum), dn_i = dO_i and dz_i = 0 otherwise. Then
#
#     dq_i = scale sum_j decay^d_ij (dn_i . v_j + dz_i) k_j       the forward's state S and z, read by dn_i and dz_i
#     dk_j = scale sum_i decay^d_ij (dn_i . v_j + dz_i) q_i       R = sum_i decay^.. q_i^T dn_i and r = sum_i decay^.. dz_i q_i,
#     dv_j = scale sum_i decay^d_ij (q_i . k_j) dn_i              carried from the last row backwards, read by v_j and k_j
#
# Each kernel takes one block of value features (dz only in the first), so dq and dk are sums of
# partials over the blocks; dk/dv also takes one block of key features (the state R is [BLOCK_D,
# BLOCK_DV]; at D = 128 a whole row of them spills), so dv is a sum of partials over those blocks, as
# q_i . k_j is. dk and dv are per query head, summed over a GQA group on the host.


@kernel
def chunked_dq_kernel(
    Q, K, V, DN, DZ, DQ, DL, Decay,
    sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd, snb, snh, snm, snd, szb, szh, szm, sgp, sgb, sgh, sgm, sgd,
    H, HKV, SQ, SKV, D, DV,
    HAS_DECAY: tl.constexpr, CAUSAL: tl.constexpr, DECAY_GRAD: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    bh = tl.program_id(0)
    b, h = bh // H, bh % H
    hk = h // (H // HKV)
    block, part = tl.program_id(1), tl.program_id(2)  # a block of value features, one of query features
    dv0, d0 = block * BLOCK_DV, part * BLOCK_D
    rows, feats, vfeats = tl.arange(0, BLOCK_M), d0 + tl.arange(0, BLOCK_D), dv0 + tl.arange(0, BLOCK_DV)
    Q += b * sqb + h * sqh
    K += b * skb + hk * skh
    V += b * svb + hk * svh
    DN += b * snb + h * snh
    log2_abs, sign = _decay(Decay, b * H + h, HAS_DECAY)
    offset = SKV - SQ if CAUSAL else SKV
    state, norm, aged, aged_norm = _shared_keys(K, V, offset, SKV, rows, feats, vfeats, skn, skd, svn, svd, D, DV,
                                                log2_abs, sign, HAS_DECAY, DECAY_GRAD, PRECISION, BLOCK_D, BLOCK_DV)
    dl = tl.zeros((1,), tl.float32)  # this block's share of the loss's derivative by the decay
    for i0 in range(0, SQ, BLOCK_M):
        queries = i0 + rows
        live_rows = queries < SQ
        dn = _tile(DN, queries, live_rows, vfeats, snm, snd, DV)
        dz = tl.load(DZ + b * szb + h * szh + queries * szm, mask=live_rows & (block == 0), other=0.0)
        dq = _dot(dn, tl.trans(state), PRECISION) + dz[:, None] * norm[None, :]
        if CAUSAL:
            t0 = i0 + offset
            keys = t0 + rows
            live = (keys >= 0) & (keys < SKV)
            k_tile = _tile(K, keys, live, feats, skn, skd, D)
            v_tile = _tile(V, keys, live, vfeats, svn, svd, DV)
            behind = rows[:, None] - rows[None, :]
            raw = _dot(dn, tl.trans(v_tile), PRECISION) + dz[:, None]  # dL/da_ij
            if DECAY_GRAD:
                dl += _decay_grad(Q, queries, live_rows & (keys >= 0), feats, sqm, sqd, D, rows, behind, live, raw, dq, dn, dz,
                                  aged, aged_norm, k_tile, log2_abs, sign, PRECISION)
                aged, aged_norm = _age(aged, aged_norm, state, norm, k_tile, v_tile, BLOCK_M, BLOCK_M - 1 - rows, log2_abs, sign, PRECISION)
            grads = raw
            if HAS_DECAY:
                dq = dq * _power(log2_abs, sign, (rows + 1).to(tl.float32))[:, None]
                grads = grads * _power(log2_abs, sign, tl.maximum(behind, 0).to(tl.float32))
            grads = tl.where((behind >= 0) & live[None, :], grads, 0.0)
            dq += _dot(grads, k_tile, PRECISION)
            state, norm = _absorb(state, norm, k_tile, v_tile, BLOCK_M, BLOCK_M - 1 - rows, log2_abs, sign, HAS_DECAY, PRECISION)
        tl.store(DQ + block * sgp + b * sgb + h * sgh + queries[:, None] * sgm + feats[None, :] * sgd, dq,
                 mask=live_rows[:, None] & (feats[None, :] < D))
    if DECAY_GRAD:
        tl.store(DL + (block * tl.num_programs(2) + part) * tl.num_programs(0) + bh + tl.arange(0, 1), dl)


@kernel
def _decay_grad(Q, queries, live_rows, feats, sqm, sqd, D, rows, behind, live, raw, across, dn, dz, aged, aged_norm,
                k_tile, log2_abs, sign, PRECISION: tl.constexpr):
    """A chunk's rows' share of sum_ij d_ij decay^(d_ij - 1) (dL/da_ij) (q_i . k_j) (times scale on the host),
    the loss's derivative by the decay: for the keys before the chunk, decay^r ((r + 1) S + S') read by
    row r (`across` is dn S^T + dz z, S' the age-weighted state); for the chunk's own, each pair's."""
    q_tile = _tile(Q, queries, live_rows, feats, sqm, sqd, D)
    r = rows.to(tl.float32)
    older = _dot(dn, tl.trans(aged), PRECISION) + dz[:, None] * aged_norm[None, :]
    before = tl.sum(q_tile * ((r + 1.0)[:, None] * across + older), 1) * _power(log2_abs, sign, r)
    steps = behind.to(tl.float32)
    slope = steps * _power(log2_abs, sign, tl.maximum(steps - 1.0, 0.0))  # d decay^d / d decay
    pairs = _dot(q_tile, tl.trans(k_tile), PRECISION) * raw * slope
    pairs = tl.where((behind >= 1) & live[None, :] & live_rows[:, None], pairs, 0.0)
    return tl.sum(before, 0) + tl.sum(tl.sum(pairs, 1), 0)


@kernel
def _key_grads(dk_ptrs, dv_ptrs, k_tile, v_tile, dk, dv, state, norm, factor, live, D, DV, feats, vfeats, PRECISION: tl.constexpr):
    """Stores dk and dv of a tile of keys: those from the queries' state (times factor per key) added
    to the given ones (from the queries of the keys' own chunk)."""
    dk += (_dot(v_tile, tl.trans(state), PRECISION) + norm[None, :]) * factor[:, None]
    dv += _dot(k_tile, state, PRECISION) * factor[:, None]
    tl.store(dk_ptrs, dk, mask=live[:, None] & (feats[None, :] < D))
    tl.store(dv_ptrs, dv, mask=live[:, None] & (vfeats[None, :] < DV))


@kernel
def chunked_dkdv_kernel(
    Q, K, V, DN, DZ, DK, DVout, Decay,
    sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd, snb, snh, snm, snd, szb, szh, szm,
    sgp, sgb, sgh, sgn, sgd, swp, swb, swh, swn, swd,
    H, HKV, SQ, SKV, D, DV,
    HAS_DECAY: tl.constexpr, CAUSAL: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    bh = tl.program_id(0)
    b, h = bh // H, bh % H
    hk = h // (H // HKV)
    block, part = tl.program_id(1), tl.program_id(2)  # a block of value features, one of key features
    dv0, d0 = block * BLOCK_DV, part * BLOCK_D
    rows, feats, vfeats = tl.arange(0, BLOCK_M), d0 + tl.arange(0, BLOCK_D), dv0 + tl.arange(0, BLOCK_DV)
    Q += b * sqb + h * sqh
    K += b * skb + hk * skh
    V += b * svb + hk * svh
    DN += b * snb + h * snh
    DK += block * sgp + b * sgb + h * sgh
    DVout += part * swp + b * swb + h * swh
    log2_abs, sign = _decay(Decay, b * H + h, HAS_DECAY)
    # R and r of the queries after the current chunk, decayed to the key just after the chunk's last
    state = tl.zeros((BLOCK_D, BLOCK_DV), tl.float32)
    norm = tl.zeros((BLOCK_D,), tl.float32)
    offset = SKV - SQ if CAUSAL else SKV
    chunks = tl.cdiv(SQ, BLOCK_M)
    for n in range(0, chunks):  # the chunks of rows from the last
        i0 = (chunks - 1 - n) * BLOCK_M
        queries = i0 + rows
        live_rows = queries < SQ
        q_tile = _tile(Q, queries, live_rows & (queries + offset >= 0), feats, sqm, sqd, D)  # rows without keys: zeros
        dn = _tile(DN, queries, live_rows, vfeats, snm, snd, DV)
        dz = tl.load(DZ + b * szb + h * szh + queries * szm, mask=live_rows & (block == 0), other=0.0)
        if CAUSAL:  # the keys t0 + c this chunk's rows reach last: their gradients are complete
            t0 = i0 + offset
            keys = t0 + rows
            live = (keys >= 0) & (keys < SKV)
            k_tile = _tile(K, keys, live, feats, skn, skd, D)
            v_tile = _tile(V, keys, live, vfeats, svn, svd, DV)
            behind = rows[None, :] - rows[:, None]  # [key, row]: how far row r lies past key c
            within = tl.where((behind >= 0) & live_rows[None, :], 1.0, 0.0)
            if HAS_DECAY:
                within = within * _power(log2_abs, sign, tl.maximum(behind, 0).to(tl.float32))
            grads = (_dot(v_tile, tl.trans(dn), PRECISION) + dz[None, :]) * within
            products = _dot(k_tile, tl.trans(q_tile), PRECISION) * within
            dk = _dot(grads, q_tile, PRECISION)
            dv = _dot(products, dn, PRECISION)
            factor = _power(log2_abs, sign, (BLOCK_M - rows).to(tl.float32)) if HAS_DECAY else tl.full((BLOCK_M,), 1.0, tl.float32)
            _key_grads(DK + keys[:, None] * sgn + feats[None, :] * sgd, DVout + keys[:, None] * swn + vfeats[None, :] * swd,
                       k_tile, v_tile, dk, dv, state, norm, factor, live, D, DV, feats, vfeats, PRECISION)
        # the state takes the chunk's rows, decayed to t0 (row r lies r keys past it)
        if HAS_DECAY:
            carried = _power(log2_abs, sign, tl.zeros((1,), tl.float32) + BLOCK_M)
            state, norm = state * carried[:, None], norm * carried
            q_tile = q_tile * _power(log2_abs, sign, rows.to(tl.float32))[:, None]
        state += _dot(tl.trans(q_tile), dn, PRECISION)
        norm += tl.sum(q_tile * dz[:, None], 0)
    # the keys every query sees (causal with SKV > SQ: the first SKV - SQ; without a mask: all of them),
    # decay^(offset - j) from the first query's edge
    for p0 in range(0, tl.maximum(offset, 0), BLOCK_M):
        keys = p0 + rows
        live = keys < tl.minimum(offset, SKV)
        k_tile = _tile(K, keys, live, feats, skn, skd, D)
        v_tile = _tile(V, keys, live, vfeats, svn, svd, DV)
        factor = _power(log2_abs, sign, tl.maximum(offset - keys, 0).to(tl.float32)) if HAS_DECAY else tl.full((BLOCK_M,), 1.0, tl.float32)
        _key_grads(DK + keys[:, None] * sgn + feats[None, :] * sgd, DVout + keys[:, None] * swn + vfeats[None, :] * swd,
                   k_tile, v_tile, tl.zeros((BLOCK_M, BLOCK_D), tl.float32), tl.zeros((BLOCK_M, BLOCK_DV), tl.float32),
                   state, norm, factor, live, D, DV, feats, vfeats, PRECISION)


def seeds(out, den, dout, dlse, normalized: bool):
    """(dn [B, H, SQ, DV], dz [B, H, SQ]) float32: dL/dw_ij = dn_i . v_j + dz_i (above)."""
    dout = dout.float()
    if not normalized:
        return dout.contiguous(), torch.zeros(den.shape, dtype=torch.float32, device=den.device)
    positive = (den > 0) & torch.isfinite(den)
    inv = 1.0 / torch.where(positive, den, 1.0)
    dz = -(dout * out).sum(-1) if dlse is None else dlse.float() - (dout * out).sum(-1)
    return (dout * inv[..., None]).contiguous(), torch.where(positive, dz * inv, 0.0).contiguous()


def _split_features(flags: dict, D: int, widest):
    """(flags, blocks): a kernel's blocks of D features, each at most `widest` wide (None: one block)."""
    if widest is None or widest >= flags["BLOCK_D"]:
        return flags, 1
    return dict(flags, BLOCK_D=widest), triton.cdiv(D, widest)


def chunked_backward(q, k, v, decay, scale: float, out, den, dout, dlse, *, causal: bool, normalized: bool,
                     decay_grad: bool = False):
    """(dq, dk, dv, ddecay) in float32 from the chunked backward kernels; out and den are the forward's
    (float32), dlse the lse's gradient (None: zero; normalized forms only); ddecay [B, H] with
    `decay_grad` (the dq kernel then also carries the keys' age-weighted state), else None."""
    B, H, SQ, D = q.shape
    HKV, SKV, DV = k.shape[1], k.shape[2], v.shape[-1]
    dn, dz = seeds(out, den, dout, dlse, normalized)
    blocks, meta = _meta(q, D, DV, for_backward=True)
    lam = _decay_argument(decay, q)
    flags = dict(HAS_DECAY=decay is not None, CAUSAL=causal, **meta)
    dk = torch.empty(blocks, B, H, SKV, D, dtype=torch.float32, device=q.device)
    decay_grad = decay_grad and decay is not None
    query_flags, query_parts = _split_features(flags, D, FEATURES_WITH_AGES if decay_grad else None)
    query_blocks = blocks
    if decay_grad and VALUES_WITH_AGES < meta["BLOCK_DV"]:
        query_flags, query_blocks = dict(query_flags, BLOCK_DV=VALUES_WITH_AGES), triton.cdiv(DV, VALUES_WITH_AGES)
    key_flags, parts = _split_features(flags, D, KEY_FEATURES)
    dv = torch.empty(parts, B, H, SKV, DV, dtype=torch.float32, device=q.device)
    dq = torch.empty(query_blocks, B, H, SQ, D, dtype=torch.float32, device=q.device)
    dl = torch.zeros(query_blocks * query_parts, B * H, dtype=torch.float32, device=q.device)
    _rt.start(jit(chunked_dq_kernel), (B * H, query_blocks, query_parts), q, k, v, dn, dz, dq, dl, lam,
              *q.stride(), *k.stride(), *v.stride(), *dn.stride(), *dz.stride(), *dq.stride(), H, HKV, SQ, SKV, D, DV,
              DECAY_GRAD=decay_grad, **query_flags)
    _rt.start(jit(chunked_dkdv_kernel), (B * H, blocks, parts), q, k, v, dn, dz, dk, dv, lam,
              *q.stride(), *k.stride(), *v.stride(), *dn.stride(), *dz.stride(), *dk.stride(), *dv.stride(),
              H, HKV, SQ, SKV, D, DV, **key_flags)
    group = H // HKV
    dk = dk.sum(0).view(B, HKV, group, SKV, D).sum(2)
    ddecay = dl.sum(0).view(B, H) * scale if decay_grad else None
    return dq.sum(0) * scale, dk * scale, dv.sum(0).view(B, HKV, group, SKV, DV).sum(2) * scale, ddecay


def _results(ctx, q, out, den, normalized: bool):
    """(out in q's dtype, lse) of a chunked autograd operation: the lse has a gradient only where normalized."""
    row_lse = lse(den)
    if not normalized:
        ctx.mark_non_differentiable(row_lse)
    return out.to(q.dtype), row_lse


class _Chunked(torch.autograd.Function):
    """The chunked forward as one autograd operation; its backward runs the chunked dq and dk/dv kernels."""

    @staticmethod
    def forward(ctx, q, k, v, decay, scale, causal, normalized):
        out, den = chunked(q, k, v, decay, scale, causal=causal, normalized=normalized, for_backward=True)
        ctx.save_for_backward(q, k, v, decay, out, den)
        ctx.form = (scale, causal, normalized)
        return _results(ctx, q, out, den, normalized)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout, dlse):
        q, k, v, decay, out, den = ctx.saved_tensors
        scale, causal, normalized = ctx.form
        dq, dk, dv, ddecay = chunked_backward(q, k, v, decay, scale, out, den, dout, dlse if normalized else None,
                                              causal=causal, normalized=normalized, decay_grad=ctx.needs_input_grad[3])
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), ddecay, None, None, None


def _chunked_sums(q, k, v, decay, scale: float, for_backward: bool = False):
    """(num, den) float32 of the causal form from the chunked kernel, without the division."""
    return chunked(q, k, v, decay, scale, causal=True, normalized=False, for_backward=for_backward)


class _BothWays(torch.autograd.Function):
    """A decay in both directions as one autograd operation: the causal and the mirrored chunked passes
    forward; backward, the chunked backward of each (the mirrored pass's output gradients times the
    decay) and the decay's own share, sum_i dn_i . later_num_i + dz_i later_den_i."""

    @staticmethod
    def forward(ctx, q, k, v, decay, scale, normalized):
        sums = functools.partial(_chunked_sums, for_backward=True)
        later = later_keys(sums, q, k, v, decay, scale)
        out, den = both_ways(sums, q, k, v, decay, scale, normalized, later)
        ctx.save_for_backward(q, k, v, decay, out, den, *later)
        ctx.form = (scale, normalized)
        return _results(ctx, q, out, den, normalized)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout, dlse):
        q, k, v, decay, out, den, later_num, later_den = ctx.saved_tensors
        scale, normalized = ctx.form
        dlse = dlse if normalized else None
        grad_decay = ctx.needs_input_grad[3]
        dq, dk, dv, ddecay = chunked_backward(q, k, v, decay, scale, out, den, dout, dlse, causal=True,
                                              normalized=normalized, decay_grad=grad_decay)
        rows, SQ, SKV = mirrored_rows(q, k), q.shape[2], k.shape[2]
        lam = decay.float()
        dout_m = mirror(dout.float() * lam[:, :, None, None], rows)
        dlse_m = None if dlse is None else mirror((dlse.float() * lam[:, :, None])[..., None], rows)[..., 0]
        mq, mk, mv, mdecay = chunked_backward(
            mirror(q, rows), mirror(k, rows, 1), mirror(v, rows, 1), decay, scale, mirror(out, rows),
            mirror(den[..., None], rows)[..., 0], dout_m, dlse_m, causal=True, normalized=normalized, decay_grad=grad_decay)
        dq += mq[:, :, :SQ].flip(2)
        dk += mk[:, :, 1:SKV + 1].flip(2)
        dv += mv[:, :, 1:SKV + 1].flip(2)
        if grad_decay:
            dn, dz = seeds(out, den, dout, dlse, normalized)
            ddecay = ddecay + mdecay + (dn * later_num).sum((2, 3)) + (dz * later_den).sum(2)
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), ddecay, None, None


def attention(q, k, v, decay, scale: float, *, causal: bool, normalized: bool):
    """(out [B, H, SQ, DV] in q's dtype, lse [B, H, SQ] float32) from the chunked kernels, differentiable
    with respect to q, k, v and the decay ([B, H] float32 or None). q, k after their prologues; a decay
    without causal is one in both directions."""
    grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (q, k, v, decay))
    if not causal and decay is not None:
        if grad:
            return _BothWays.apply(q, k, v, decay, scale, normalized)
        out, den = both_ways(_chunked_sums, q, k, v, decay, scale, normalized)
        return out.to(q.dtype), lse(den)
    if grad:
        return _Chunked.apply(q, k, v, decay, scale, causal, normalized)
    out, den = chunked(q, k, v, decay, scale, causal=causal, normalized=normalized)
    return out.to(q.dtype), lse(den)
