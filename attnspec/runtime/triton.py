"""What generated triton modules call at run time: argument checks, the kernel configuration, the
tile schedule (block tables from tile classes) and the flattening of inputs into kernel arguments.

Kept here rather than in every generated module: one implementation, tested once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from ..analysis.tiles import EMPTY, FULL, PARTIAL
from .flex import block_lists

KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def check_launch(name: str, q, k, v, inputs=()) -> None:
    """Clear errors for what the kernel cannot do, before anything is launched."""
    if q.dtype not in KERNEL_DTYPES:
        raise TypeError(
            f"{name}: the triton kernel computes on float32, bfloat16 or float16 inputs, got {q.dtype}; "
            "the reference target computes in float64"
        )
    if q.device.type != "cuda" and not interpreting():
        raise RuntimeError(
            f"{name}: the triton target runs on CUDA tensors (q is on {q.device}); on the CPU, set "
            "TRITON_INTERPRET=1 before importing the module to run the kernel in Triton's interpreter"
        )
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, *inputs)):
        raise NotImplementedError(
            f"{name}: the triton target has no backward kernel yet; use the reference or flex target to "
            "train, or call it under torch.no_grad()"
        )


@dataclass(frozen=True)
class Config:
    block_m: int
    block_n: int
    block_d: int
    block_dv: int
    num_warps: int
    num_stages: int
    ieee: bool  # float32 products without TF32, so float32 inputs keep float32 accuracy
    upcast: bool  # half tiles computed in float32 (the interpreter, which has no half-precision products)


def kernel_config(q, v, tiles=None) -> Config:
    """Tile sizes and launch options for these head dims: the selection's blocks when it fixes them."""
    d, dv = q.shape[-1], v.shape[-1]
    block_d, block_dv = max(16, _next_power_of_two(d)), max(16, _next_power_of_two(dv))
    if tiles is not None:
        block_m, block_n = tiles
    else:
        block_m, block_n = (128, 64) if q.device.type == "cuda" and max(block_d, block_dv) <= 128 else (64, 64)
    warps = 8 if block_m * max(block_d, block_dv) >= 128 * 128 else 4
    upcast = interpreting() and q.dtype != torch.float32
    stages = 2 if max(block_d, block_dv) > 128 else 3
    return Config(block_m, block_n, block_d, block_dv, warps, stages, q.dtype == torch.float32 or upcast, upcast)


def _next_power_of_two(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


@dataclass(frozen=True)
class Tables:
    """Per (b, h, query tile): the full and the partial key tiles, ascending, in int32 tables whose
    batch / head axes may be 1 (broadcast with stride 0)."""

    full_num: torch.Tensor
    full_idx: torch.Tensor
    part_num: torch.Tensor
    part_idx: torch.Tensor

    def arguments(self) -> tuple:
        return (self.full_num, self.full_idx, self.part_num, self.part_idx,
                *_broadcast_strides(self.full_num), *_broadcast_strides(self.full_idx)[:3])


def schedule(classes: torch.Tensor, selected=None, device=None) -> Tables:
    """Block tables from tile classes [B|1, H|1, NQB, NKB]; a selection (bool [B, H, NQB, NKB] at the
    kernel's tiles) drops every tile it does not keep."""
    if selected is not None:
        classes = torch.where(selected.to(classes.device), classes, EMPTY)
    part_num, part_idx = block_lists(classes == PARTIAL)
    full_num, full_idx = block_lists(classes == FULL)
    return Tables(*(t.contiguous().to(device) for t in (full_num, full_idx, part_num, part_idx)))


def _broadcast_strides(t: torch.Tensor) -> tuple[int, int, int]:
    """(batch, head, query tile) strides, 0 along a broadcast (size 1) batch or head axis."""
    return tuple(0 if t.shape[axis] == 1 and axis < 2 else t.stride(axis) for axis in range(3))


def input_arguments(t: torch.Tensor) -> tuple:
    """An input as the kernel takes it: the tensor (bool as int8), then its sizes, then its strides."""
    if t.dtype == torch.bool:
        t = t.to(torch.int8)
    return (t, *t.shape, *t.stride())
