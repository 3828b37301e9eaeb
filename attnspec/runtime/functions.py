"""The language's built-ins on tensors and Python numbers alike: what the generated reference and flex
modules (and the triton module's host code) compute an expression with (`_fn.softplus(x)`).

Each built-in is its op registry entry's tensor semantics (attnspec/ops.py) lifted so that Python
scalars stay scalars; the rest defines what the language says and torch does not do by itself: an
integer division by 0 (language.md section 4), boolean equality on symbolic shapes, clamped loads.
"""

from __future__ import annotations

import builtins
import math

import torch

from ..ops import OPS, true_divide


def lift(fn, scalar=None):
    """Apply a torch function to tensors, Python scalars alike: scalars stay scalars, computed with the
    op's scalar semantics where it has them (constant folding's, attnspec/ops.py: no tensor round
    trip). Inside torch.compile they take the tensor path and give a 0-dim tensor (no .item(), which
    would break the graph): the scalar semantics' NaN tests cannot be traced inside FlexAttention's
    score_mod, and sizes may be symbolic there."""

    def apply(*args):
        like = next((a for a in args if isinstance(a, torch.Tensor)), None)
        if like is None:
            if torch.compiler.is_compiling():
                return fn(*[torch.tensor(a, dtype=_scalar_dtype(a)) for a in args])
            if scalar is not None:
                return scalar(*args)
            return fn(*[torch.tensor(a, dtype=_scalar_dtype(a)) for a in args]).item()
        return fn(*[a if isinstance(a, torch.Tensor) else _as_tensor(a, like) for a in args])

    return apply


def _scalar_dtype(a):
    if isinstance(a, bool):
        return torch.bool
    return torch.int64 if isinstance(a, int) else torch.float64


def _as_tensor(a, like):
    if isinstance(a, bool):
        dtype = torch.bool
    elif isinstance(a, int):
        dtype = torch.int64 if like.dtype == torch.bool else like.dtype
    else:
        dtype = like.dtype if like.is_floating_point() else torch.float64
    return torch.tensor(a, dtype=dtype, device=like.device)


# Every built-in by its language name (abs, min, where, softplus, ...), from the registry; float(x)
# converts to the compute dtype instead (to_float), so it has no entry here.
globals().update({name: lift(op.tensor, op.scalar) for name, op in OPS.items() if name != "float"})

logical_not = lift(torch.logical_not)
# a / b whose divisor may be 0: IEEE's inf or NaN, also where both are Python numbers (which raise)
truediv = lift(torch.true_divide, true_divide)


def floordiv(a, b):
    """a // b on integers whose divisor may be 0: 0 there (language.md section 4), never an error."""
    if not isinstance(b, torch.Tensor):
        return a // b if b != 0 else a * 0
    return torch.where(b == 0, 0, a // torch.where(b == 0, 1, b))


def floormod(a, b):
    """a % b on integers whose divisor may be 0: a there, so that a == (a // b) * b + a % b."""
    if not isinstance(b, torch.Tensor):
        return a % b if b != 0 else a
    return torch.where(b == 0, a, a % torch.where(b == 0, 1, b))


def ceildiv(a, b):
    """The ceiling of a / b on integers, 0 where b == 0 (as a // 0)."""
    return -floordiv(-a, b)


def log_weight(f):
    """log f of a weight f >= 0 (the flex target's score_mod for rownorm and elementwise weights): -inf
    where f == 0, with gradient 0 there. A weight that is 0 is at its minimum, so f' == 0 and log's
    f' / f would be 0 / 0 (NaN where softplus of a very negative score underflows). A NaN weight
    stays NaN: its row is undefined, not empty."""
    if not isinstance(f, torch.Tensor):
        return math.log(f) if f > 0 else (f if f != f else -math.inf)
    positive = f > 0
    return torch.where(positive, torch.log(torch.where(positive, f, torch.ones_like(f))), torch.where(f == 0, -math.inf, f))


def xor(a, b):
    """a != b for booleans (scalars, tensors, or symbolic shapes while FlexAttention traces)."""
    return (a | b) & logical_not(a & b)


def to_float(x, dtype):
    """float(x): a tensor in the compute dtype, a Python float otherwise."""
    return x.to(dtype) if isinstance(x, torch.Tensor) else builtins.float(x)


def vec(x):
    """A per-block scalar next to pooled vectors gains the trailing feature axis."""
    return x.unsqueeze(-1) if isinstance(x, torch.Tensor) else x


def load(table, *index):
    """Gather from an input tensor; every index is clamped into its dimension's range, and an input
    without elements (a zero-length dimension at this call) reads as 0 (language.md section 7)."""
    if not table.is_floating_point() and table.dtype != torch.bool:
        table = table.long()  # language integers are 64-bit, whatever the input's width
    if not index:
        return table
    if table.numel() == 0:
        table = table.new_zeros((1,) * table.dim())
    clamped = []
    for i, size in zip(index, table.shape):
        i = i if isinstance(i, torch.Tensor) else torch.tensor(i, device=table.device)
        clamped.append(i.long().clamp(0, size - 1))
    return table[tuple(clamped)]


# ---------------------------------------------------------------- the prologue's functions over features


def feature_sum(x, vector: torch.Tensor) -> torch.Tensor:
    """sum(x) in a prologue: over the features of `vector`'s rows, the axis kept ([..., 1])."""
    x = torch.as_tensor(x, dtype=vector.dtype, device=vector.device)
    return torch.broadcast_to(x, torch.broadcast_shapes(x.shape, vector.shape)).sum(-1, keepdim=True)


def feature_dot(x, y, vector: torch.Tensor) -> torch.Tensor:
    """sum(x * y) over the features of `vector`'s rows, as a contraction: where x varies over rows and y
    over a table's entries, the [rows, entries, features] product is never formed."""
    x, y = (torch.as_tensor(t, dtype=vector.dtype, device=vector.device) for t in (x, y))
    if x.dim() == 0 or y.dim() == 0:
        return feature_sum(x * y, vector)
    features = vector.shape[-1]
    x, y = (t.expand(*t.shape[:-1], features) for t in (x, y))  # a factor without the feature axis
    return torch.einsum("...f,...f->...", x, y).unsqueeze(-1)


def feature_norm(x, vector: torch.Tensor) -> torch.Tensor:
    """norm(x): the Euclidean norm over the features, sqrt(sum(x * x))."""
    x = torch.as_tensor(x, dtype=vector.dtype, device=vector.device)
    return torch.sqrt(feature_sum(x * x, vector))


def feature_mix(x, weight, vector: torch.Tensor) -> torch.Tensor:
    """sum(x[g] * w[g, f] for g) in a prologue: x on the grid of `vector`'s rows ([..., D], over g), the
    matrix w on [..., D, D] (over g, then f; broadcast over batches and heads), as one matmul."""
    x = torch.broadcast_to(torch.as_tensor(x, dtype=vector.dtype, device=vector.device), vector.shape)
    return torch.matmul(x, _matrix(weight, vector))


def _matrix(weight, vector: torch.Tensor) -> torch.Tensor:
    """A matrix over (g, f) of a row map of `vector` as a [..., D, D] tensor (broadcast over batches and heads)."""
    features = vector.shape[-1]
    weight = torch.as_tensor(weight, dtype=vector.dtype, device=vector.device)
    weight = weight.reshape((1,) * max(0, 2 - weight.dim()) + tuple(weight.shape))
    return weight.expand(*weight.shape[:-2], features, features)


def feature_mix_t(grad, weight, vector: torch.Tensor) -> torch.Tensor:
    """The gradient of the row in sum(x[g] * w[g, f] for g) from `grad`, that of the result: sum over f
    of grad[f] w[g, f], at g (passes/adjoint.py)."""
    grad = torch.broadcast_to(torch.as_tensor(grad, dtype=vector.dtype, device=vector.device), vector.shape)
    return torch.matmul(grad, _matrix(weight, vector).mT)


def feature_outer(x, grad, vector: torch.Tensor) -> torch.Tensor:
    """The gradient of the matrix in sum(x[g] * w[g, f] for g) from `grad`: sum over the rows of x[g]
    grad[f], [..., D (g), D (f)] (passes/adjoint.py)."""
    x, grad = (torch.broadcast_to(torch.as_tensor(t, dtype=vector.dtype, device=vector.device), vector.shape) for t in (x, grad))
    return torch.matmul(x.mT, grad)


def feature_softmax_grad(y, grad, groups: int, vector: torch.Tensor) -> torch.Tensor:
    """The gradient of x in y = softmax(x, groups) from `grad`, that of y: y (grad - the sum of grad y over
    the feature's group) (passes/adjoint.py)."""
    features = vector.shape[-1]
    y, grad = (torch.broadcast_to(torch.as_tensor(t, dtype=vector.dtype, device=vector.device), vector.shape) for t in (y, grad))
    grouped = (grad * y).reshape(*y.shape[:-1], groups, features // groups)
    return y * (grad - grouped.sum(-1, keepdim=True).expand_as(grouped).reshape(y.shape))


def check_groups(features: int, groups: int) -> int:
    """softmax(x, groups) splits the features into equal groups (a ValueError otherwise, on every target)."""
    if features % groups:
        raise ValueError(f"softmax(x, {groups}) splits the features into {groups} equal groups; there are {features}")
    return features


def feature_softmax(x, groups: int, vector: torch.Tensor) -> torch.Tensor:
    """softmax(x, groups) in a prologue: exp(x_f) / sum of exp(x) over f's group, stably (each group of
    D / groups consecutive features on its own; NaN where the group holds a NaN or only -inf)."""
    features = check_groups(vector.shape[-1], groups)
    x = torch.broadcast_to(torch.as_tensor(x, dtype=vector.dtype, device=vector.device), vector.shape)
    grouped = x.reshape(*x.shape[:-1], groups, features // groups)
    return torch.softmax(grouped, -1).reshape(x.shape)


def row_softmax(x, vector: torch.Tensor) -> torch.Tensor:
    """softmax_rows(x) in a prologue: for each feature, exp(x) over its sum across the tensor's rows (the
    sequence: Efficient Attention's softmax of k over positions), stably; NaN where the column is all -inf."""
    x = torch.broadcast_to(torch.as_tensor(x, dtype=vector.dtype, device=vector.device), vector.shape)
    return torch.softmax(x, -2)


def row_sum(x, vector: torch.Tensor) -> torch.Tensor:
    """sum_rows(x) in a prologue: for each feature, the sum of x over the tensor's rows (the same for every row)."""
    x = torch.broadcast_to(torch.as_tensor(x, dtype=vector.dtype, device=vector.device), vector.shape)
    return x.sum(-2, keepdim=True)


def check_pairs(features: int) -> int:
    """rope pairs the features: their number must be even (a ValueError otherwise, on every target)."""
    if features % 2:
        raise ValueError(f"rope(x, angle) pairs features: it needs an even number of them, got {features}")
    return features


def rope(x: torch.Tensor, angle) -> torch.Tensor:
    """Rotary embedding of the rows of x ([..., D], D even), features paired as (f, f + D/2): pair f
    turns by the angle at feature f (f < D/2), as rotate_half implementations do."""
    features = check_pairs(x.shape[-1])
    half = features // 2
    angle = torch.broadcast_to(torch.as_tensor(angle, dtype=x.dtype, device=x.device), x.shape)[..., :half]
    cos, sin = torch.cos(angle), torch.sin(angle)
    first, second = x[..., :half], x[..., half:]
    return torch.cat([first * cos - second * sin, second * cos + first * sin], dim=-1)


def partner(x, vector: torch.Tensor) -> torch.Tensor:
    """x at each feature's rope partner (f + D/2 or f - D/2) over the features of `vector`'s rows."""
    x = torch.broadcast_to(torch.as_tensor(x, dtype=vector.dtype, device=vector.device), vector.shape)
    half = check_pairs(vector.shape[-1]) // 2
    return torch.cat([x[..., half:], x[..., :half]], dim=-1)


def first_half(vector: torch.Tensor) -> torch.Tensor:
    """Whether each feature of `vector`'s rows is the first of its rope pair (f < D/2)."""
    return torch.arange(vector.shape[-1], device=vector.device) < vector.shape[-1] // 2
