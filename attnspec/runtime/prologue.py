"""The host side of the triton target's prologue kernels (templates/triton/prologue.py.jinja): one pass
over the rows of q, k or v per prologue statement, and autograd through the passes.

The kernels compute the forward; the backward differentiates the module's tensor code of the same
prologue (`_prologue`, which the reference and flex targets run), recomputed from the saved inputs, so
the gradients are the reference's own. Under torch.compile the tensor code runs instead: Inductor fuses
it by itself, and a Triton launch would break the graph.
"""

from __future__ import annotations

from typing import Callable

import torch
import triton

from . import triton as _rt
from .launch import jit

VALUES_PER_PROGRAM = 2048  # rows x features of a program's tile: 16 values a thread on 4 warps


def row_pass(kernel, x: torch.Tensor, args: tuple) -> torch.Tensor:
    """x [B, heads, rows, F] replaced by one launch of a prologue kernel (args: the shape symbols, then
    the inputs and params it reads); the result is contiguous, in x's dtype."""
    batch, heads, rows, features = x.shape
    # the interpreter's float32 -> bf16 conversion truncates: there the kernel stores float32 and torch rounds
    stored = torch.float32 if _rt.interpreting() and x.dtype != torch.float32 else x.dtype
    y = torch.empty((batch, heads, rows, features), dtype=stored, device=x.device)
    if y.numel() == 0:
        return y.to(x.dtype)
    block_f = max(16, triton.next_power_of_2(features))
    block_m = max(1, VALUES_PER_PROGRAM // block_f)
    grid = (triton.cdiv(rows, block_m), batch * heads)
    _rt.start(jit(kernel), grid, x, y, *x.stride(), heads, rows, features, *args,
              BLOCK_M=block_m, BLOCK_F=block_f, num_warps=4)
    return y.to(x.dtype)


def prologue(fused: Callable, dense: Callable, q, k, v, rest: tuple, skip: tuple[str, ...] = ()):
    """q, k, v after the prologue: `fused(q, k, v, *rest)` (the kernels) where they run, differentiated
    through `dense(q, k, v, *rest)` (the tensor code); the tensor code alone under torch.compile or where
    no kernel runs (the attention then says why). The tensors named in `skip` are returned as they are
    (without gradients, the forward kernel applies the q prologue itself)."""
    if torch.compiler.is_compiling() or not _rt.kernels_run(q):
        after = dense(q, k, v, *rest)
        return tuple(x if name in skip else y for name, x, y in zip("qkv", (q, k, v), after))
    tensors = [q, k, v, *rest]
    needs_grad = torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in tensors)
    if not needs_grad:
        return fused(q, k, v, *rest, skip=skip)
    return _Prologue.apply(fused, dense, *tensors)


class _Prologue(torch.autograd.Function):
    """The prologue kernels forward; the tensor code's gradients backward (recomputed)."""

    @staticmethod
    def forward(ctx, fused, dense, *tensors):
        ctx.dense = dense
        ctx.plain = [None if isinstance(t, torch.Tensor) else t for t in tensors]  # runtime params
        ctx.save_for_backward(*(t for t in tensors if isinstance(t, torch.Tensor)))
        return fused(*tensors)

    @staticmethod
    def backward(ctx, *grads):
        saved = iter(ctx.saved_tensors)
        tensors = [next(saved) if plain is None else plain for plain in ctx.plain]
        with torch.enable_grad():
            leaves = [t.detach().requires_grad_(t.requires_grad) if isinstance(t, torch.Tensor) else t for t in tensors]
            outputs = ctx.dense(*leaves)
            wanted = [t for t in leaves if isinstance(t, torch.Tensor) and t.requires_grad]
            pairs = [(o, g) for o, g in zip(outputs, grads) if g is not None and o.requires_grad]
            found = torch.autograd.grad([o for o, _ in pairs], wanted, [g for _, g in pairs], allow_unused=True)
        by_leaf = dict(zip(map(id, wanted), found))
        return (None, None, *(by_leaf.get(id(t)) for t in leaves))
