"""The host side of the triton target's passes over rows (templates/triton/prologue.py.jinja,
row_values.py.jinja, rowmap_backward.py.jinja): one pass over the rows of q, k or v per prologue
statement or per-row value, and autograd through the passes.

The kernels compute the forward. The backward runs the generated backward passes (passes/adjoint.py:
each turns the gradient of a result into those of its row and of the float inputs it reads); where a
row map has no such pass, it differentiates the module's tensor code of the same row maps (which the
reference and flex targets run), recomputed from the saved inputs (tensor_code_backward): a prologue statement alone, or the row maps
together where none has a pass. Under torch.compile the tensor code
runs instead: Inductor fuses it by itself, and a Triton launch would break the graph.
"""

from __future__ import annotations

import functools
from typing import Callable

import torch
import triton
from torch.autograd.function import once_differentiable

from . import triton as _rt
from .launch import jit

VALUES_PER_PROGRAM = 2048  # rows x features of a program's tile: 16 values a thread on 4 warps
# programs of a backward pass that sums a matrix's gradient (over all batches and heads, at least one
# per (batch, head)), each with an [F, F] float32 partial sum: two per multiprocessor of the GPU (this
# many where there is none: the largest GPUs' 132 multiprocessors)
MATRIX_PROGRAMS = 264
# warps of a pass that holds an [F, F] float32 matrix (and in its backward, the matrix's gradient): on
# 4 warps, Hedgehog's backward passes spilled 240 bytes at D = 128 on sm_90a, on 8 none (docs/triton.md)
MATRIX_WARPS = 8


def row_pass(kernel, x: torch.Tensor, args: tuple, matrix: bool = False) -> torch.Tensor:
    """x [B, heads, rows, F] replaced by one launch of a prologue kernel (args: the shape symbols, then
    the inputs and params it reads; `matrix`: the kernel holds an [F, F] matrix); the result is
    contiguous, in x's dtype."""
    y = torch.empty(x.shape, dtype=_stored(x.dtype), device=x.device)
    _launch_rows(kernel, x, (y,), args, matrix=matrix)
    return y.to(x.dtype)


def value_pass(kernel, x: torch.Tensor, args: tuple, skip: bool = False) -> torch.Tensor:
    """A per-row value of x [B, heads, rows, F]: one number per row ([B, heads, rows], float32) by one
    launch of its kernel (args as for row_pass). With `skip`, an empty tensor in its place: the forward
    kernel computes the value itself (runtime/launch.py forward)."""
    if skip:
        return torch.empty((0, 0, 0), dtype=torch.float32, device=x.device)
    y = torch.empty(x.shape[:3], dtype=torch.float32, device=x.device)
    _launch_rows(kernel, x, (y,), args)
    return y


def row_pass_backward(kernel, x: torch.Tensor, dy: torch.Tensor, args: tuple, levels: tuple[str, ...], sites: bool,
                      kept: bool = False, matrix: bool = False):
    """One launch of a row map's backward pass: the gradient of x ([B, heads, rows, F], x's dtype) from
    dy, that of the map's result, and with `sites`, per float load of an input (its level: where the
    kernel sums it, see rowmap_backward.py.jinja), the (partial sums, offsets) add_sites adds; with
    `kept` (an epilogue that reads sum_kept(v)), also the gradient of that sum (float32); `matrix`: the
    kernel holds an [F, F] matrix."""
    batch, heads, rows, features = x.shape
    block_m, block_f = _blocks(features)
    tiles = triton.cdiv(rows, block_m)
    # a load inside a matrix: each program sums its tiles' products into one [F, F] slot, so fewer
    # programs, each walking several tiles, keep those partial sums small
    walkers = min(tiles, triton.cdiv(_matrix_programs(x.device), batch * heads)) if "matrix" in levels else tiles
    slots = {"program": 1, "row": block_m, "feature": block_f, "element": block_m * block_f}
    sizes = [walkers * block_f * block_f if level == "matrix" else tiles * slots[level] for level in levels]
    parts = [(torch.zeros(size * batch * heads if sites else 1, dtype=torch.float32, device=x.device),
              torch.zeros(size * batch * heads if sites else 1, dtype=torch.int64, device=x.device)) for size in sizes]
    dx = torch.empty(x.shape, dtype=_stored(x.dtype), device=x.device)
    dkept = (torch.empty(x.shape, dtype=torch.float32, device=x.device),) if kept else ()
    _launch_rows(kernel, x, (dy.contiguous(), dx), args + tuple(t for part in parts for t in part) + dkept,
                 programs=walkers, matrix=matrix, backward=True, SITES=sites)
    return (dx.to(x.dtype), (parts if sites else [])) + dkept


def tensor_code_backward(dense: Callable, tensors: tuple, grads: tuple, needs: tuple) -> tuple:
    """The gradients of `tensors` (those `needs` marks; None for the others) from `grads`, those of the
    results of `dense(*tensors)` (the tensor code; None for a result without one), by autograd, the
    tensor code recomputed: the row maps where none has a backward pass, or a prologue statement
    without one among statements with one (its result's gradient alone)."""
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_(need) if isinstance(t, torch.Tensor) else t for t, need in zip(tensors, needs)]
        outputs = _results(dense(*leaves))
        wanted = [t for t in leaves if isinstance(t, torch.Tensor) and t.requires_grad]
        pairs = [(o, g) for o, g in zip(outputs, grads) if g is not None and o.requires_grad]
        found = torch.autograd.grad([o for o, _ in pairs], wanted, [g for _, g in pairs], allow_unused=True) if pairs else [None] * len(wanted)
    by_leaf = dict(zip(map(id, wanted), found))
    return tuple(by_leaf.get(id(t)) for t in leaves)


def add_sites(grads: dict, sites: tuple, parts: list) -> None:
    """Add each site's partial sums into its input's gradient (float32, made at the first site of the
    input), in a fixed order (runtime/triton.py add_partials)."""
    for (name, tensor), part in zip(sites, parts):
        if name not in grads:
            grads[name] = torch.zeros(tensor.shape, dtype=torch.float32, device=tensor.device)
        _rt.add_partials([grads[name]], [part])


def _matrix_programs(device: torch.device) -> int:
    if device.type == "cuda":
        return 2 * torch.cuda.get_device_properties(device).multi_processor_count
    return MATRIX_PROGRAMS


def summed(grad: torch.Tensor | None, more: torch.Tensor) -> torch.Tensor:
    """A gradient that several row maps add to (a per-row value's to its row, which others read too)."""
    return more if grad is None else grad + more


def _stored(dtype: torch.dtype) -> torch.dtype:
    """What a pass stores for a tensor of this dtype: the interpreter's float32 -> bf16 conversion
    truncates, so there the kernel stores float32 and torch rounds."""
    return torch.float32 if _rt.interpreting() and dtype != torch.float32 else dtype


def _blocks(features: int) -> tuple[int, int]:
    block_f = max(16, triton.next_power_of_2(features))
    return max(16, VALUES_PER_PROGRAM // block_f), block_f  # 16 rows at least: tl.dot (a matrix over features)


def _matrix_products(dtype: torch.dtype, features: int, backward: bool) -> int:
    """How a pass multiplies by its matrix (kernel.matrix_product's TF32): float32 as torch's own
    matmuls (1: TF32 where torch allows it, 0: IEEE); half types, whose reference multiplies in float32
    before it rounds, in three TF32 products (3, near float32: one truncated TF32 product moved N17's
    bf16 feature maps by an ulp often enough that its lse missed the rule by 1.7 times), except the
    backward passes of more than 64 features, in one TF32 product on operands rounded to nearest (2:
    2^-11; three products held 304 KiB of shared memory at D = 128, past Hopper's 227)."""
    if dtype == torch.float32:
        return int(_rt.tf32_products())
    return 2 if backward and features > 64 else 3


def _launch_rows(kernel, x: torch.Tensor, outputs: tuple, args: tuple, programs: int | None = None,
                 matrix: bool = False, backward: bool = False, **constants) -> None:
    """One program per BLOCK_M rows of one (batch, head) of x, with all the features (or `programs`
    programs per (batch, head), each walking every programs-th tile of rows); MATRIX_WARPS warps for a
    kernel that holds an [F, F] matrix, whose TF32 constexpr says how it multiplies (_matrix_products)."""
    batch, heads, rows, features = x.shape
    if x.numel() == 0:
        return
    block_m, block_f = _blocks(features)
    grid = (programs or triton.cdiv(rows, block_m), batch * heads)
    if matrix:
        constants["TF32"] = _matrix_products(x.dtype, features, backward)
    _rt.start(jit(kernel), grid, x, *outputs, *x.stride(), heads, rows, features, *args,
              BLOCK_M=block_m, BLOCK_F=block_f, num_warps=MATRIX_WARPS if matrix else 4, **constants)


def row_maps(fused: Callable, dense: Callable, backward: Callable | None, tensors: tuple, skip: tuple[str, ...] = ()) -> tuple:
    """Row maps of `tensors` (the prologue, the per-row values or the epilogue): `fused(*tensors)` (their
    kernels) where kernels run, differentiated by `backward` (their backward passes) or else through
    `dense(*tensors)` (the tensor code); the tensor code alone under torch.compile or where no kernel
    runs (the attention then says why). Without gradients, the kernels leave out the results named in
    `skip` (the forward kernel computes them). Returns a tuple of results."""
    if torch.compiler.is_compiling() or not _rt.kernels_run(tensors[0]):
        return _results(dense(*tensors))
    if not _needs_grad(tensors):
        return fused(*tensors, skip=skip) if skip else fused(*tensors)
    return _RowMaps.apply(fused, dense, backward, *tensors)


def prologue(fused: Callable, dense: Callable, q, k, v, rest: tuple, skip: tuple[str, ...] = (), backward: Callable | None = None):
    """q, k, v after the prologue (row_maps). The tensors named in `skip` are returned as they are
    (without gradients, the forward kernel applies the q prologue itself)."""
    after = row_maps(functools.partial(fused, skip=skip), dense, backward, (q, k, v, *rest))
    return tuple(x if name in skip else y for name, x, y in zip("qkv", (q, k, v), after))


def _needs_grad(tensors: tuple) -> bool:
    return torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in tensors)


class _RowMaps(torch.autograd.Function):
    """Row maps by their kernels forward; backward, their backward passes, or the tensor code's
    gradients (recomputed)."""

    @staticmethod
    def forward(ctx, fused, dense, backward, *tensors):
        ctx.dense, ctx.backward = dense, backward
        ctx.plain = [None if isinstance(t, torch.Tensor) else t for t in tensors]  # runtime params
        ctx.save_for_backward(*(t for t in tensors if isinstance(t, torch.Tensor)))
        return fused(*tensors)

    @staticmethod
    @once_differentiable  # the passes' gradients are not differentiated again: a second derivative is refused
    def backward(ctx, *grads):
        saved = iter(ctx.saved_tensors)
        tensors = [next(saved) if plain is None else plain for plain in ctx.plain]
        needs = ctx.needs_input_grad[3:]
        if ctx.backward is not None:
            found = ctx.backward(tuple(tensors), grads, needs)
            return (None, None, None, *(g.to(t.dtype) if need and g is not None else None
                                        for g, t, need in zip(found, tensors, needs)))
        return (None, None, None, *tensor_code_backward(ctx.dense, tuple(tensors), grads, needs))


def _results(found) -> tuple:
    """Row maps' results as a tuple (the epilogue's tensor code returns the output alone)."""
    return found if isinstance(found, tuple) else (found,)
