"""Values a user gives for a spec's inputs and runtime params (`attnspec show -I NAME=VALUE`, `--inputs
FILE`), in place of the sample values.

A value is a number (`true`/`false` for bools), a comma list or a JSON array of numbers, or a tensor file
(`.pt` saved with torch.save, `.npy`); `--inputs` reads a `.pt` dict or an `.npz` of several. Each value
broadcasts to its input's shape, as in PyTorch; an input given with its full rank also fixes the sizes
its dimensions name (`doc: int32[B, SKV]` given as 3 x 500 means B = 3 and SKV = 500), so a saved tensor is
drawn at its own sizes. Every check points at the input's declaration in the spec.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from .builtins import DTYPES, SHAPE_SYMBOLS
from .diagnostics import AttnError
from .ir import Input, Spec, uses
from .sample import TORCH_DTYPES, Sizes, evaluate_static

TENSOR_FILES = (".pt", ".pth", ".npy")  # a -I value naming a file


@dataclass(frozen=True)
class Given:
    value: torch.Tensor
    origin: str  # where it came from, for messages: "-I doc=..." or "inputs.pt['doc']"


def parse_given(items: list[str], file: str | None = None) -> dict[str, Given]:
    """The values of `--inputs FILE` and then of each `-I NAME=VALUE` (a later one wins)."""
    given = _read_dict(file) if file else {}
    for item in items:
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep or not name.isidentifier() or not text.strip():
            raise AttnError(f"bad -I option '{item}'", hint="write -I NAME=VALUE, e.g. -I slope=0.5, -I doc=0,0,1,1 or -I doc=doc.pt")
        given[name] = Given(_read_value(text.strip(), item), f"-I {item}")
    return given


def _read_value(text: str, item: str) -> torch.Tensor:
    if text.endswith(TENSOR_FILES):
        return _read_tensor_file(Path(text))
    try:
        data = json.loads(text if text.startswith("[") else f"[{text}]")
    except json.JSONDecodeError:
        data = None
    if data is None or not _numbers(data):
        raise AttnError(
            f"bad value in -I {item}",
            hint="a value is a number, true or false, a comma list (0,0,1), a JSON array ([[0,1],[1,1]]), or a .pt / .npy file",
        )
    if not text.startswith("[") and len(data) == 1:
        data = data[0]
    try:
        return torch.tensor(data, dtype=torch.float64 if _has_float(data) else None)
    except (ValueError, TypeError):
        raise AttnError(f"bad value in -I {item}: the rows of the array have different lengths") from None


def _numbers(data) -> bool:
    if isinstance(data, list):
        return all(_numbers(x) for x in data)
    return isinstance(data, (bool, int, float))


def _has_float(data) -> bool:
    return any(_has_float(x) for x in data) if isinstance(data, list) else isinstance(data, float)


def _read_tensor_file(path: Path) -> torch.Tensor:
    value = _load(path)
    if not isinstance(value, torch.Tensor):
        raise AttnError(f"{path} holds a {type(value).__name__}, not a tensor", hint="save one tensor with torch.save(t, path)")
    return value


def _read_dict(file: str) -> dict[str, Given]:
    path = Path(file)
    values = _load(path)
    if not isinstance(values, dict) or not all(isinstance(k, str) for k in values):
        raise AttnError(f"{path} holds a {type(values).__name__}, not a dict of named values",
                        hint="save one with torch.save({'doc': doc, 'slope': slope}, path), or numpy.savez")
    given = {}
    for name, value in values.items():
        if isinstance(value, (bool, int, float)):
            value = torch.tensor(value)
        if not isinstance(value, torch.Tensor):
            raise AttnError(f"{path}['{name}'] is a {type(value).__name__}, not a tensor or a number")
        given[name] = Given(value, f"{path.name}['{name}']")
    return given


def _load(path: Path):
    """A tensor or a dict of them, without running code from the file (no pickled objects)."""
    if not path.is_file():
        raise AttnError(f"cannot read {path}: no such file")
    if path.suffix in (".npy", ".npz"):
        import numpy

        try:
            data = numpy.load(path, allow_pickle=False)
            if path.suffix == ".npy":
                return torch.from_numpy(data)
            with data:
                return {name: torch.from_numpy(data[name]) for name in data.files}
        except (OSError, ValueError, TypeError) as err:
            raise AttnError(f"cannot read {path}: {str(err).splitlines()[0]}") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load reports a bad or unsafe file with several exception types
        raise AttnError(f"cannot read {path}: {str(err).splitlines()[0]}",
                        hint="a .pt file holds a tensor or a dict of tensors saved with torch.save") from None


# ---------------------------------------------------------------- sizes


def given_sizes(spec: Spec, given: dict[str, Given], sq: int | None, skv: int | None, batch: int, head: int,
                group: int) -> Sizes:
    """The drawing's sizes: those asked for (--sq, --skv), those the given inputs fix, and defaults that hold
    the batch entry and head drawn. A conflict between two of them is an error naming both."""
    check_names(spec, given)
    fixed: dict[str, tuple[int, str]] = {}
    if sq is not None:
        fixed["SQ"] = (sq, "--sq")
    if skv is not None:
        fixed["SKV"] = (skv, "--skv")
    for name, g in given.items():
        decl = spec.input(name)
        if decl is None or g.value.dim() > len(decl.shape):
            continue  # a runtime param, or a value that cannot broadcast (given_values says why)
        full_rank = g.value.dim() == len(decl.shape)
        for dim, n in zip(decl.shape[len(decl.shape) - g.value.dim():], g.value.shape):  # aligned from the right
            if dim.op == "shape" and dim.value in SHAPE_SYMBOLS and (n != 1 or full_rank):
                _fix(fixed, dim.value, n, g.origin, decl)
    if "H" in fixed and "HKV" not in fixed and fixed["H"][0] % group == 0:
        fixed["HKV"] = (fixed["H"][0] // group, fixed["H"][1])
    if "HKV" in fixed and "H" not in fixed:
        fixed["H"] = (fixed["HKV"][0] * group, fixed["HKV"][1])
    sq = fixed.get("SQ", (32, ""))[0]
    kv_heads = fixed.get("HKV", (head // group + 1, ""))[0]
    sizes = Sizes(
        B=fixed.get("B", (batch + 1, ""))[0], H=fixed.get("H", (kv_heads * group, ""))[0], HKV=kv_heads,
        SQ=sq, SKV=fixed.get("SKV", (sq, ""))[0], D=fixed.get("D", (Sizes.D, ""))[0],
    )
    if sizes.H != sizes.HKV * group:
        raise AttnError(f"the given inputs have H={sizes.H} and HKV={sizes.HKV}: the spec's gqa group is {group}")
    if batch >= sizes.B or head >= sizes.H:
        what, n, source = ("--batch", batch, fixed["B"][1]) if batch >= sizes.B else ("--head", head, fixed["H"][1])
        raise AttnError(f"{what} {n} is past the sizes of the given inputs ({source} has {sizes.B if what == '--batch' else sizes.H})")
    _check_values(spec, sizes, given)
    return sizes


def _fix(fixed: dict, symbol: str, n: int, origin: str, decl: Input) -> None:
    if n < 1:
        raise AttnError(f"{origin} gives {symbol}={n} (a dimension of '{decl.name}'): sizes are positive", decl.span)
    if symbol in fixed and fixed[symbol][0] != n:
        value, other = fixed[symbol]
        raise AttnError(
            f"{origin} gives {symbol}={n} (a dimension of '{decl.name}'), but {other} gives {symbol}={value}",
            decl.span, hint="give values of the same sizes, or leave out --sq / --skv to draw at the inputs' sizes",
        )
    fixed.setdefault(symbol, (n, origin))


def check_names(spec: Spec, given: dict[str, Given]) -> None:
    takes = [p.name for p in spec.runtime_params] + [i.name for i in spec.arguments]
    for name, g in given.items():
        decl = spec.input(name)
        if decl is not None and decl.computed is not None:
            raise AttnError(f"{g.origin}: '{name}' is computed by the spec from q and k; it cannot be given", decl.span)
        if name not in takes:
            compile_time = any(p.name == name for p in spec.params)
            raise AttnError(
                f"{g.origin}: '{spec.name}' has no input or runtime param '{name}'",
                hint=f"'{name}' is a compile-time param: set it with -D {name}=VALUE" if compile_time
                else (f"it takes: {', '.join(takes)}" if takes else "this spec takes no inputs"),
            )


# ---------------------------------------------------------------- values


def _check_values(spec: Spec, sizes: Sizes, given: dict[str, Given]) -> None:
    """given_values' checks, without broadcasting anything (the sizes may be too large to draw)."""
    for p in spec.runtime_params:
        if p.name in given:
            _scalar(p.name, p.type, given[p.name], p.span)
    for decl in spec.arguments:
        if decl.name in given:
            _tensor(decl, given[decl.name], _shape(decl, sizes), sizes, broadcast=False)


def _shape(decl: Input, sizes: Sizes) -> tuple[int, ...]:
    return tuple(max(0, int(evaluate_static(d, sizes))) for d in decl.shape)


def given_values(spec: Spec, sizes: Sizes, given: dict[str, Given], shapes: dict[str, tuple[int, ...]]) -> dict:
    """The given values as arguments at these sizes: inputs broadcast to their shapes in their dtypes,
    runtime params as Python numbers."""
    args = {}
    for p in spec.runtime_params:
        if p.name in given:
            args[p.name] = _scalar(p.name, p.type, given[p.name], p.span)
    for decl in spec.arguments:
        if decl.name in given:
            args[decl.name] = _tensor(decl, given[decl.name], shapes[decl.name], sizes)
    return args


def fits(g: Given, shape: tuple[int, ...]) -> bool:
    """Whether the value broadcasts to the shape (without growing it)."""
    try:
        return torch.broadcast_shapes(tuple(g.value.shape), shape) == shape
    except RuntimeError:
        return False


def _tensor(decl: Input, g: Given, shape: tuple[int, ...], sizes: Sizes, broadcast: bool = True) -> torch.Tensor:
    if not fits(g, shape):
        symbols = sizes.symbols()
        at = ", ".join(f"{k}={symbols[k]}" for k in symbols if any(uses(d, "shape", k) for d in decl.shape))
        raise AttnError(
            f"{g.origin}: '{decl.name}' has shape {list(g.value.shape)}, which does not broadcast to its declared "
            f"shape {list(shape)}" + (f" at {at}" if at else ""),
            decl.span, hint="give a number, a value of the declared shape, or one that broadcasts to it",
        )
    value = _checked(decl.name, DTYPES[decl.dtype], g, decl.span, decl.dtype).to(TORCH_DTYPES[decl.dtype])
    return value.broadcast_to(shape).contiguous() if broadcast else value


def _scalar(name: str, kind: str, g: Given, span):
    if g.value.numel() != 1:
        raise AttnError(f"{g.origin}: '{name}' is a runtime {kind} param: give one number, not {list(g.value.shape)}", span)
    value = _checked(name, kind, g, span, kind).item()
    return {"int": int, "float": float, "bool": bool}[kind](value)


def _checked(name: str, kind: str, g: Given, span, dtype: str) -> torch.Tensor:
    """The value in float64 (or bool), refused where it cannot be read as `kind` without changing it."""
    value = g.value
    if value.dtype == torch.bool:
        value = value.to(torch.int64) if kind != "bool" else value
    if kind == "bool":
        if value.dtype != torch.bool and not bool(((value == 0) | (value == 1)).all()):
            raise AttnError(f"{g.origin}: '{name}' is {dtype}: give true/false or 0/1", span)
        return value.to(torch.bool)
    if not (value.dtype.is_floating_point or value.dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)):
        raise AttnError(f"{g.origin}: '{name}' cannot be read from a {value.dtype} tensor", span)
    if kind == "int":
        real = value.to(torch.float64)
        info = torch.iinfo(TORCH_DTYPES.get(dtype, torch.int64))
        fraction = ~torch.isfinite(real) | (real != real.round())
        outside = (real < info.min) | (real > info.max)
        for bad, what in ((fraction, "is not an integer"), (outside, f"is outside {dtype}'s range, {info.min} to {info.max}")):
            if bool(bad.any()):
                raise AttnError(f"{g.origin}: '{name}' is {dtype}: {_number(real[bad].flatten()[0].item())} {what}", span)
        return value.to(torch.int64)
    return value.to(torch.float64)


def _number(x: float) -> str:
    return repr(int(x)) if math.isfinite(x) and x == int(x) else repr(x)
