"""What generated flex modules call at run time: BlockMasks from tile classes, and flex_attention.

Kept here rather than in every generated module: one implementation, tested once, working on
every torch version the generated code supports (AuxRequest where it exists, return_lse before).
"""

from __future__ import annotations

import math
import warnings
from typing import Callable, NamedTuple

import torch
from torch.nn.attention import flex_attention as _fa

from .blocks import class_lists, index_grids
from .tracing import dense_in_graph, tracing

try:  # torch >= 2.9 asks for the lse through AuxRequest
    from torch.nn.attention.flex_attention import AuxRequest
except ImportError:  # pragma: no cover - older torch
    AuxRequest = None

_COMPILED: dict[str, object] = {}
DEFAULT_KERNEL_TILE = 128  # FlexAttention's GPU kernels tile queries and keys by at most this


def block_mask_from_classes(classes, block, lengths, mask_mod, device, selected=None):
    """A BlockMask straight from tile classes [B|1, H|1, NQB, NKB]: FULL tiles skip the mask_mod,
    PARTIAL tiles evaluate it, EMPTY tiles are never visited. `selected` (bool, [B, H, NQB, NKB],
    a block selection at the same block size) drops every tile it does not keep, and joins the
    mask_mod as a block lookup (eager flex_attention evaluates only the mask_mod)."""
    if selected is not None:  # kernels skip unlisted blocks, but eager flex_attention reads only the mask_mod
        mask_mod = _and_selected(mask_mod or _fa.noop_mask, selected.to(device), block)
    partial_num, partial_idx, full_num, full_idx = class_lists(classes, selected)
    to = lambda t: t.to(device)  # noqa: E731
    return _fa.BlockMask.from_kv_blocks(
        to(partial_num), to(partial_idx), to(full_num), to(full_idx),
        BLOCK_SIZE=tuple(block), mask_mod=mask_mod, seq_lengths=tuple(lengths),
    )


def dense_block_mask(mask_mod, batch, heads, lengths, block, device, selected=None, compiled=False):
    """The fallback: create_block_mask evaluates mask_mod on every pair. `batch` / `heads` are None
    when the mask ignores that axis. A selection joins the mask_mod as a block lookup."""
    if selected is not None:
        mask_mod = _and_selected(mask_mod, selected.to(device), block)
        batch, heads = selected.shape[0], selected.shape[1]
    build = _compiled("create_block_mask", _fa.create_block_mask) if compiled and not tracing() else _fa.create_block_mask
    return build(mask_mod, batch, heads, lengths[0], lengths[1], device=device, BLOCK_SIZE=tuple(block))


def _and_selected(mask_mod, selected, block):
    bq, bk = block

    def keep(b, h, q_idx, kv_idx):
        return mask_mod(b, h, q_idx, kv_idx) & selected[b, h, q_idx // bq, kv_idx // bk]

    return keep


def run(q, k, v, score_mod, block_mask, scale, need_lse, compiled, needs_grad=False, key="", epilogue=False):
    """flex_attention, compiled or eager; returns (out, lse or None).

    On the CPU, compiled flex_attention does inference only, without the lse, in float32 and half
    types: where the lse, a gradient or float64 is needed there, the eager implementation runs
    instead (same results, slower). The eager implementation computes in the inputs' dtype, rounding
    scores and weights to bf16 / fp16 where a fused kernel keeps them in float32: half inputs go to
    it in float32, and the output comes back rounded once, as the kernels round it (left in float32
    when an `epilogue` still scales it, so that it is rounded once, after).

    FlexAttention has no backward pass on the CPU, and compiled into a caller's graph there it has no
    lse, no float64 and no kernel for some masks: on the CPU, a call that needs gradients, and every
    call inside a compiled caller (torch.compile tracing it), computes FlexAttention's dense definition
    instead (dense_flex_attention), which autograd differentiates. On a GPU, flex_attention joins a
    compiled caller's graph."""
    needs_grad = torch.is_grad_enabled() and (needs_grad or any(t.requires_grad for t in (q, k, v)))
    if not needs_grad:  # FlexAttention refuses a CPU tensor that requires grad even under no_grad
        q, k, v = q.detach(), k.detach(), v.detach()
    if dense_in_graph(q) or isinstance(block_mask, PairMask) or (needs_grad and q.device.type == "cpu"):
        out, lse = dense_flex_attention(q, k, v, score_mod, block_mask, scale)
        return (out if epilogue else out.to(q.dtype)), (lse if need_lse else None)
    kwargs = dict(score_mod=score_mod, block_mask=block_mask, scale=scale, enable_gqa=q.shape[1] != k.shape[1])
    if tracing():  # the caller's torch.compile compiles flex_attention into its graph (on a GPU: see above)
        kwargs["kernel_options"] = kernel_tiles(block_mask)
        return _call(_fa.flex_attention, q, k, v, kwargs, need_lse)
    cpu_limits = q.device.type == "cpu" and (need_lse or q.dtype == torch.float64)
    use_compiled = compiled and not cpu_limits
    if not use_compiled and epilogue and q.device.type == "cpu" and q.dtype != torch.float64:
        # an identity's call: its output is rescaled by exp(lse), which multiplies the lse's rounding
        # (|lse| * eps) and the eager implementation's into every row; on the CPU, where that dense
        # implementation runs anyway, it computes in float64 (out and lse come back in float64)
        return run(q.double(), k.double(), v.double(), score_mod, block_mask, scale, need_lse, False, needs_grad, key, epilogue=True)
    if not use_compiled and q.dtype in (torch.bfloat16, torch.float16):
        out, lse = run(q.float(), k.float(), v.float(), score_mod, block_mask, scale, need_lse, False, needs_grad, key)
        return (out if epilogue else out.to(q.dtype)), lse
    fn = _compiled(f"flex_attention:{key}", _fa.flex_attention) if use_compiled else _fa.flex_attention
    if use_compiled and q.is_cuda:
        kwargs["kernel_options"] = kernel_tiles(block_mask)
    with warnings.catch_warnings():  # eager is a choice here (compiled=False or a CPU limit), not a slip
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        return _call(fn, q, k, v, kwargs, need_lse)


def _zero_score(score, b, h, q_idx, kv_idx):
    return torch.zeros_like(score)


def kept_sum(q, k, v, block_mask, compiled, needs_grad=False, key=""):
    """sum_kept(v): v summed over each query row's kept keys [B, H, SQ, DV], in the compute dtype. With
    every score 0, flex_attention returns the mean of the kept v and lse = log(the number kept), so
    out * exp(lse) is their sum (0 for a row without keys)."""
    out, lse = run(q, k, v, _zero_score, block_mask, 1.0, True, compiled, needs_grad, key + ":kept_sum", epilogue=True)
    return rescaled(out, lse).to(torch.float64 if q.dtype == torch.float64 else torch.float32)


def rescaled(out, lse):
    """out * exp(lse) (an identity's sum of weighted values), in float64 where the lse is (the CPU's
    identity calls, see run) and in float32 otherwise."""
    dtype = torch.float64 if lse.dtype == torch.float64 else torch.float32
    return out.to(dtype) * torch.exp(lse.to(dtype)).unsqueeze(-1)


def _call(fn, q, k, v, kwargs, need_lse):
    if not need_lse:
        return fn(q, k, v, **kwargs), None
    if AuxRequest is not None:
        out, aux = fn(q, k, v, **kwargs, return_aux=AuxRequest(lse=True))
        return out, aux.lse
    return fn(q, k, v, **kwargs, return_lse=True)  # pragma: no cover - older torch


class PairMask(NamedTuple):
    """What build_block_mask returns on the CPU inside a compiled caller, in place of a BlockMask: the
    mask_mod (None: every pair) and a selection's blocks (None: every block), evaluated per pair."""

    mask_mod: Callable | None
    selected: torch.Tensor | None  # bool [B, H, NQB, NKB]
    block: tuple[int, int]

    def keep(self, b, h, i, j, sq, skv):
        keep = (i < sq) & (j < skv)  # every pair
        if self.mask_mod is not None:
            keep = keep & self.mask_mod(b, h, i, j)
        if self.selected is not None:
            keep = keep & _expand_tiles(self.selected.to(i.device), self.block, sq, skv)
        return keep


def dense_flex_attention(q, k, v, score_mod, mask, scale):
    """FlexAttention's dense definition in plain tensor operations that torch.compile traces on the
    CPU: scores in float32 (float64 for float64 inputs), the score_mod and mask on broadcast index
    grids. `mask` is a PairMask or a BlockMask (its mask_mod on the tiles it lists). Returns (out, lse in
    natural log), both in that dtype; a row without a kept pair gives out 0 and lse -inf, as
    flex_attention does."""
    dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    group = q.shape[1] // k.shape[1]
    k, v = k.to(dtype).repeat_interleave(group, 1), v.to(dtype).repeat_interleave(group, 1)  # cast, then repeat: a GQA group's gradients add up before one rounding
    sq, skv = q.shape[2], k.shape[2]
    b, h, i, j = index_grids((q.shape[0], q.shape[1], sq, skv), q.device)
    scores = score_mod((q.to(dtype) @ k.transpose(-2, -1)) * scale, b, h, i, j)
    keep = mask.keep(b, h, i, j, sq, skv) if isinstance(mask, PairMask) else _block_mask_keep(mask, b, h, i, j, sq, skv)
    scores = torch.where(keep, scores, -math.inf)
    # weights exp(s - m) / l from the row max m and sum l, not exp(s - lse): lse rounds to |lse| * eps,
    # which at large logits spoils the weights and every gradient (the reference computes them so too)
    peak = scores.amax(-1, keepdim=True).detach()  # softmax does not depend on the shift
    peak = torch.where(peak == -math.inf, 0.0, peak)  # a row without a kept pair
    exps = torch.exp(scores - peak)
    total = exps.sum(-1, keepdim=True)
    empty = total == 0  # no kept pair; a NaN or +inf score leaves total NaN and the row undefined
    total = torch.where(empty, 1.0, total)
    lse = torch.where(empty, -math.inf, torch.log(total) + peak)
    return (exps / total) @ v, lse.squeeze(-1)


def _block_mask_keep(block_mask, b, h, i, j, sq, skv):
    tiles = _expand_tiles(block_mask.to_dense() > 0, block_mask.BLOCK_SIZE, sq, skv)
    return block_mask.mask_mod(b, h, i, j) & tiles


def _expand_tiles(tiles, block, sq, skv):
    """bool [.., NQB, NKB] -> [.., SQ, SKV]: each tile's value on its pairs."""
    bq, bk = block
    return tiles.repeat_interleave(bq, -2)[..., :sq, :].repeat_interleave(bk, -1)[..., :skv]


def kernel_tiles(block_mask) -> dict | None:
    """The GPU kernel's tiles must divide the BlockMask's blocks: small blocks (a selection's 16 x 16)
    need tiles no larger than themselves, which FlexAttention does not pick on its own."""
    bq, bk = block_mask.BLOCK_SIZE
    if bq >= DEFAULT_KERNEL_TILE and bk >= DEFAULT_KERNEL_TILE:
        return None
    return {"BLOCK_M": min(bq, DEFAULT_KERNEL_TILE), "BLOCK_N": min(bk, DEFAULT_KERNEL_TILE)}


def _compiled(name, fn):
    if name not in _COMPILED:
        _COMPILED[name] = torch.compile(fn, dynamic=False)
    return _COMPILED[name]


def ratio(positive, den_lse, negative=None, out_dtype=None):
    """rownorm(g, den = f) from flex_attention calls (docs/flex.md): `positive` = (out, lse) of the
    softmax of log g (log relu(g) when g has both signs), `negative` that of log relu(-g), den_lse the
    lse of the softmax of log f. sum g v / sum f = out_+ exp(lse_+ - lse_f) - out_- exp(lse_- - lse_f);
    0 where sum f = 0. Returns (out in out_dtype, lse = lse_f), the lse NaN where a weight is NaN or
    +inf (an undefined row, which the caller tells by it)."""
    dtype = _compute_dtype(out_dtype, den_lse)
    wide = torch.float64 if den_lse.dtype == torch.float64 else dtype  # see rescaled
    den = den_lse.to(wide)
    live = den > -math.inf  # a row with terms in its denominator

    def part(out, lse):
        lse = lse.to(wide)
        return out.to(wide) * torch.exp(torch.where(live, lse - den, -math.inf)).unsqueeze(-1)

    out, undefined = part(*positive), undefined_rows(positive[1], dtype)
    if negative is not None:
        out, undefined = out - part(*negative), undefined | undefined_rows(negative[1], dtype)
    return out.to(out_dtype or dtype), torch.where(undefined, math.nan, den.to(dtype))


def signed_sum(positive, negative, out_dtype=None):
    """elementwise(f) of either sign from two flex_attention calls: `positive` = (out, lse) of the softmax
    of log relu(f), `negative` that of log relu(-f); sum f v = out_+ exp(lse_+) - out_- exp(lse_-).
    Returns (out in out_dtype, an lse that is NaN where either part says the row is undefined, for the
    caller's check: a NaN or infinite weight, or a sum beyond the compute dtype)."""
    dtype = _compute_dtype(out_dtype, positive[1])
    undefined = undefined_rows(positive[1], dtype) | undefined_rows(negative[1], dtype)
    out = rescaled(*positive) - rescaled(*negative)
    return out.to(out_dtype or dtype), torch.where(undefined, math.nan, torch.zeros_like(positive[1].to(dtype)))


def _compute_dtype(out_dtype, lse) -> torch.dtype:
    """The spec's compute dtype for these outputs: float64 only for float64 inputs (an lse in float64
    may also come from an identity's call on the CPU, see run)."""
    return torch.float64 if (out_dtype or lse.dtype) == torch.float64 else torch.float32


def undefined_rows(lse: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """The rows an lse says are undefined (language.md section 8): NaN or +inf, from a NaN or +inf logit,
    weight or sink. With the compute dtype of weights f (log f the score_mod), also where their sum
    exp(lse) is beyond its range: the reference's weights (or their sum) are +inf there, while the
    log-space lse is finite."""
    undefined = torch.isnan(lse) | (lse == math.inf)
    return undefined if dtype is None else undefined | (lse > math.log(torch.finfo(dtype).max))
