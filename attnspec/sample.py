"""Random but meaningful arguments for a spec: q, k, v, its inputs and its runtime params.

Used when a spec is compiled (the flex target's tile-agreement probe), by `attnspec show`, `demo`
and `fuzz`, and by tests; never by generated modules at run time. Integer inputs get small sorted ids
(so a document table looks like documents), float inputs small normals, bools coin flips.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .builtins import DTYPES
from .diagnostics import AttnError
from .ir import Expr, Spec, const, substitute
from .passes.fold import fold_expr

TORCH_DTYPES = {
    "float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32,
    "float64": torch.float64, "int32": torch.int32, "int64": torch.int64, "bool": torch.bool,
}


@dataclass(frozen=True)
class Sizes:
    B: int = 2
    H: int = 4
    HKV: int = 2
    SQ: int = 100
    SKV: int = 130
    D: int = 32
    DV: int = 24

    def symbols(self) -> dict[str, int]:
        return {"B": self.B, "H": self.H, "HKV": self.HKV, "SQ": self.SQ, "SKV": self.SKV, "D": self.D}


def evaluate_static(expr: Expr, sizes: Sizes, runtime: dict | None = None):
    """Value of an expression over shape symbols (and runtime params) only."""
    values = sizes.symbols()
    runtime = runtime or {}

    def bind(node: Expr):
        if node.op == "shape":
            return const(values[node.value], node.span)
        if node.op == "param" and node.value in runtime:
            return const(runtime[node.value], node.span)
        return None

    folded = fold_expr(substitute(expr, bind))
    if folded.op != "const":
        raise AttnError("expression is not a constant for these sizes", expr.span)
    return folded.literal


def sample_arguments(spec: Spec, sizes: Sizes = Sizes(), dtype=torch.float64, device="cpu", seed: int = 0) -> dict:
    """q, k, v and every input / runtime param of a lowered spec, as keyword arguments."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    args = {
        "q": _normal(gen, (sizes.B, sizes.H, sizes.SQ, sizes.D), dtype, device),
        "k": _normal(gen, (sizes.B, sizes.HKV, sizes.SKV, sizes.D), dtype, device),
        "v": _normal(gen, (sizes.B, sizes.HKV, sizes.SKV, sizes.DV), dtype, device),
    }
    args.update(_params_and_inputs(spec, sizes, gen, device))
    return args


def sample_inputs(spec: Spec, sizes: Sizes = Sizes(), device="cpu", seed: int = 0, row_values: bool = False) -> dict:
    """Every input and runtime param of a lowered spec, without q, k and v (whose size grows with the
    lengths and the head dim). Drawn from a stream of their own: not the values sample_arguments gives.
    With row_values, also stand-ins for the per-row values the module computes from q and k (random
    floats of their shapes), for analyses of a mask that reads them."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    args = _params_and_inputs(spec, sizes, gen, device)
    if row_values:
        for decl in spec.inputs:
            if decl.computed is not None:
                args[decl.name] = _tensor(decl.dtype, tuple(int(evaluate_static(d, sizes)) for d in decl.shape), gen, device)
    return args


def input_shapes(spec: Spec, sizes: Sizes) -> dict[str, tuple[int, ...]]:
    """The shape of every input at these sizes; a negative dimension is the spec's mistake."""
    shapes = {}
    for decl in spec.arguments:
        shape = tuple(int(evaluate_static(d, sizes)) for d in decl.shape)
        if any(n < 0 for n in shape):
            raise AttnError(
                f"input '{decl.name}' has shape {list(shape)} at {_sizes_text(sizes)}: a dimension is negative",
                decl.span,
            )
        shapes[decl.name] = shape
    return shapes


def _sizes_text(sizes: Sizes) -> str:
    return ", ".join(f"{k}={v}" for k, v in sizes.symbols().items())


def _params_and_inputs(spec: Spec, sizes: Sizes, gen, device) -> dict:
    args = {}
    for p in spec.runtime_params:
        args[p.name] = p.default.literal if p.default is not None else _scalar(p.type, gen)
    for name, shape in input_shapes(spec, sizes).items():
        args[name] = _tensor(spec.input(name).dtype, shape, gen, device)
    return args


def _normal(gen, shape, dtype, device):
    return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype=dtype, device=device)


def _scalar(kind: str, gen):
    value = torch.rand((), generator=gen, dtype=torch.float64).item()
    return {"int": int(value * 8) + 1, "float": value, "bool": value > 0.5}[kind]


def _tensor(dtype: str, shape, gen, device):
    kind = DTYPES[dtype]
    if kind == "float":
        t = torch.randn(shape, generator=gen, dtype=torch.float64) * 0.5
    elif kind == "int":
        t = torch.randint(0, 4, shape, generator=gen)
        t = t.sort(dim=-1).values if t.dim() else t
    else:
        t = torch.rand(shape, generator=gen) > 0.5
    return t.to(dtype=TORCH_DTYPES[dtype], device=device)
