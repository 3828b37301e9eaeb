"""What generated flex modules call at run time: BlockMasks from tile classes, and flex_attention.

Kept here rather than in every generated module: one implementation, tested once, working on
every torch version the generated code supports (AuxRequest where it exists, return_lse before).
"""

from __future__ import annotations

import warnings

import torch
from torch.nn.attention import flex_attention as _fa

from .blocks import class_lists

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
    build = _compiled("create_block_mask", _fa.create_block_mask) if compiled else _fa.create_block_mask
    return build(mask_mod, batch, heads, lengths[0], lengths[1], device=device, BLOCK_SIZE=tuple(block))


def _and_selected(mask_mod, selected, block):
    bq, bk = block

    def keep(b, h, q_idx, kv_idx):
        return mask_mod(b, h, q_idx, kv_idx) & selected[b, h, q_idx // bq, kv_idx // bk]

    return keep


def run(q, k, v, score_mod, block_mask, scale, need_lse, compiled, needs_grad=False, key="", epilogue=False, name=""):
    """flex_attention, compiled or eager; returns (out, lse or None).

    On the CPU, compiled flex_attention does inference only, without the lse, in float32 and half
    types: where the lse, a gradient or float64 is needed there, the eager implementation runs
    instead (same results, slower). The eager implementation computes in the inputs' dtype, rounding
    scores and weights to bf16 / fp16 where a fused kernel keeps them in float32: half inputs go to
    it in float32, and the output comes back rounded once, as the kernels round it (left in float32
    when an `epilogue` still scales it, so that it is rounded once, after)."""
    gqa = q.shape[1] != k.shape[1]
    needs_grad = torch.is_grad_enabled() and (needs_grad or any(t.requires_grad for t in (q, k, v)))
    if needs_grad and q.device.type == "cpu":  # say so, and what to use, before FlexAttention does
        raise NotImplementedError(
            f"{name}: FlexAttention has no backward pass on the CPU; train there with the reference "
            "target (attnspec.compile(path, 'reference')), on a CUDA GPU with this one, or call it under "
            "torch.no_grad()"
        )
    cpu_limits = q.device.type == "cpu" and (need_lse or needs_grad or q.dtype == torch.float64)
    if not needs_grad:  # FlexAttention refuses a CPU tensor that requires grad even under no_grad
        q, k, v = q.detach(), k.detach(), v.detach()
    use_compiled = compiled and not cpu_limits
    if not use_compiled and q.dtype in (torch.bfloat16, torch.float16):
        out, lse = run(q.float(), k.float(), v.float(), score_mod, block_mask, scale, need_lse, False, needs_grad, key)
        return (out if epilogue else out.to(q.dtype)), lse
    fn = _compiled(f"flex_attention:{key}", _fa.flex_attention) if use_compiled else _fa.flex_attention
    kwargs = dict(score_mod=score_mod, block_mask=block_mask, scale=scale, enable_gqa=gqa)
    if use_compiled and q.is_cuda:
        kwargs["kernel_options"] = kernel_tiles(block_mask)
    with warnings.catch_warnings():  # eager is a choice here (compiled=False or a CPU limit), not a slip
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        if not need_lse:
            return fn(q, k, v, **kwargs), None
        if AuxRequest is not None:
            out, aux = fn(q, k, v, **kwargs, return_aux=AuxRequest(lse=True))
            return out, aux.lse
        return fn(q, k, v, **kwargs, return_lse=True)  # pragma: no cover - older torch


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
