"""What the generated modules call around the spec's expressions, on dense tensors: argument checks,
broadcast index grids, the compute dtype, undefined rows and lse, pooling and the block selection
rules (the oracle's definition, shared by every target so that all attend over the same blocks).

One implementation, imported by every generated module (`_dense.grid(...)`) rather than copied into
each. Errors name the spec: the module passes its SPEC_NAME.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch


class BlockSelection(NamedTuple):
    """Which key blocks each query block visits; handed unchanged to every target."""

    block_mask: torch.Tensor  # [B, H, NQB, NKB] bool
    kv_num_blocks: torch.Tensor  # [B, H, NQB] int32
    kv_indices: torch.Tensor  # [B, H, NQB, NKB] int32, selected blocks first, ascending
    q_block: int
    kv_block: int


# ---------------------------------------------------------------- arguments


def check_qkv(spec_name, q, k, v):
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise ValueError(f"{spec_name}: {name} must be a 4-D tensor [batch, heads, length, dim]")
        if not t.is_floating_point() or t.dtype != q.dtype:
            raise TypeError(f"{spec_name}: q, k and v must share one floating dtype, got {t.dtype} for {name}")
    B, H, SQ, D = q.shape
    if k.shape[0] != B or v.shape[0] != B or k.shape[-1] != D or k.shape[:3] != v.shape[:3]:
        raise ValueError(
            f"{spec_name}: shapes do not fit together: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if k.shape[1] == 0 or H % k.shape[1]:
        raise ValueError(f"{spec_name}: query heads ({H}) must be a multiple of kv heads ({k.shape[1]})")


def check_tensor(spec_name, name, t, shape, kind, device):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{spec_name}: '{name}' must be a torch.Tensor, got {type(t).__name__}")
    if any(size < 0 for size in shape):
        raise ValueError(f"{spec_name}: input '{name}' has declared shape {tuple(shape)} at these sizes: a dimension is negative")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{spec_name}: '{name}' must have shape {tuple(shape)}, got {tuple(t.shape)}")
    found = "bool" if t.dtype == torch.bool else ("float" if t.is_floating_point() else "int")
    if found != kind:
        raise TypeError(f"{spec_name}: '{name}' must hold {kind} values, got {t.dtype}")
    if t.device != device:
        raise ValueError(f"{spec_name}: '{name}' is on {t.device}, q is on {device}")


def check_scalar(spec_name, name, value, kind):
    ok = {
        "bool": isinstance(value, bool),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
    }[kind]
    if not ok:
        raise TypeError(f"{spec_name}: runtime param '{name}' must be {kind}, got {value!r}")
    return float(value) if kind == "float" else value


def check_amount(spec_name, rule, amount):
    if rule == "top" and amount < 0:
        raise ValueError(f"{spec_name}: top(k) needs k >= 0, got {amount}")
    if rule == "share" and not 0 < amount <= 1:
        raise ValueError(f"{spec_name}: share(p) needs 0 < p <= 1, got {amount}")
    return amount


def compute_dtype(q):
    """float64 and float32 compute as they are; half types compute in float32, as kernels do."""
    return torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype


# ---------------------------------------------------------------- grids and rows


def grid(sizes, device):
    """One broadcastable index tensor per axis of a grid of these sizes."""
    grids = []
    for axis, size in enumerate(sizes):
        view = [1] * len(sizes)
        view[axis] = size
        grids.append(torch.arange(size, device=device).view(view))
    return grids


def full(x, shape, dtype, device):
    """Broadcast an expression's value (scalar or tensor) to a full grid."""
    x = x.to(dtype) if isinstance(x, torch.Tensor) else torch.tensor(x, dtype=dtype, device=device)
    return torch.broadcast_to(x, shape)


def tensor_like(x, like, dtype=None):
    """A mod must return a tensor of its argument's dtype (or `dtype`), even where the spec's expression
    folded to a number, or met a 0-dim float64 constant (what a built-in of sizes or params gives
    while FlexAttention traces the mod: runtime/functions.py lift)."""
    if isinstance(x, torch.Tensor):
        return x.to(dtype or like.dtype)
    return torch.full_like(like, x, dtype=dtype)


def check_nonnegative(f: torch.Tensor, message: str) -> None:
    """The rownorm rule: ValueError(message) where a term is negative. Inside torch.compile the check
    is an asynchronous assert in the graph (a RuntimeError with the message, raised where the graph
    runs), not a data-dependent branch, which would break the graph."""
    if torch.compiler.is_compiling():
        torch._assert_async(~(f < 0).any(), message)
    elif bool((f < 0).any()):
        raise ValueError(message)


def undefined(x, rows):
    """NaN on the undefined rows (a NaN or +inf logit or weight among the kept pairs, language.md
    section 8), x elsewhere; rows broadcasts against x."""
    return torch.where(rows, math.nan, x)


def log_denominator(den, m):
    """lse = log(den) + m, -inf where den is 0 (a row without weight), with a zero gradient there
    rather than the NaN of log's derivative at 0."""
    return torch.where(den > 0, torch.log(torch.where(den > 0, den, 1.0)) + m, -math.inf)


# ---------------------------------------------------------------- block selection


def pool(x, size, how):
    """Pool [B, heads, S, D] over blocks of `size` rows -> [B, heads, ceil(S/size), D]; tails use valid rows."""
    batch, heads, length, dim = x.shape
    blocks = -(-length // size)
    fill = {"mean": 0.0, "max": -math.inf, "min": math.inf}[how]
    padded = torch.nn.functional.pad(x, (0, 0, 0, blocks * size - length), value=fill)
    padded = padded.view(batch, heads, blocks, size, dim)
    if how == "max":
        return padded.amax(3)
    if how == "min":
        return padded.amin(3)
    counts = (length - torch.arange(blocks, device=x.device) * size).clamp(max=size)
    return padded.sum(3) / counts.view(1, 1, blocks, 1).to(x.dtype)


def tile_any(keep, bq, bk):
    """[B, H, SQ, SKV] bool -> [B, H, NQB, NKB]: does the tile hold at least one kept pair?"""
    batch, heads, sq, skv = keep.shape
    nq, nk = -(-sq // bq), -(-skv // bk)
    padded = torch.nn.functional.pad(keep, (0, nk * bk - skv, 0, nq * bq - sq), value=False)
    return padded.view(batch, heads, nq, bq, nk, bk).any(5).any(3)


def expand_blocks(blocks, bq, bk, sq, skv):
    """[B, H, NQB, NKB] -> [B, H, SQ, SKV]."""
    return blocks.repeat_interleave(bq, dim=2)[:, :, :sq].repeat_interleave(bk, dim=3)[..., :skv]


def choose_top(score, eligible, k):
    score = torch.where(eligible, score, -math.inf)
    order = torch.sort(score, dim=-1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(-1, order, torch.arange(order.shape[-1], device=order.device).expand_as(order))
    return eligible & (rank < int(k))


def choose_threshold(score, eligible, t):
    return eligible & (score >= t)


def choose_share(score, eligible, p):
    logits = torch.where(eligible, score, -math.inf)
    any_eligible = eligible.any(-1, keepdim=True)
    probs = torch.where(any_eligible, torch.softmax(torch.where(any_eligible, logits, 0.0), -1), 0.0)
    sorted_probs, order = torch.sort(probs, dim=-1, descending=True, stable=True)
    mass_before = torch.cumsum(sorted_probs, -1) - sorted_probs
    keep = torch.zeros_like(eligible).scatter(-1, order, mass_before < p)
    return eligible & keep


def block_selection(blocks, bq, bk):
    order = torch.sort((~blocks).to(torch.int8), dim=-1, stable=True).indices
    return BlockSelection(blocks, blocks.sum(-1).to(torch.int32), order.to(torch.int32), bq, bk)
