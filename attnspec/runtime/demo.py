"""`attnspec demo`: compile every spec to every target, run it, and check it against the reference."""

from __future__ import annotations

import importlib.util
import os
import warnings
from pathlib import Path

import torch

from ..api import build_module, load_program, lower
from ..codegen import TARGETS, passes_for
from .accuracy import check
from .sample import Sizes, sample_arguments

DTYPES = (torch.float32, torch.bfloat16)
SIZES = Sizes(B=2, H=4, HKV=2, SQ=100, SKV=130, D=32, DV=24)


def run_demo(files: list[str], seed: int = 0) -> bool:
    # the demo's tensors live on the CPU: triton kernels run in Triton's interpreter there
    os.environ.setdefault("TRITON_INTERPRET", "1")
    # masked lanes compute log(0) and 0 / 0 before tl.where drops them; the interpreter's numpy says so
    for category in (RuntimeWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category, module="triton.runtime.interpreter")
    all_ok = True
    print(f"{'spec':<28} {'target':<10} {'dtype':<9} {'out err':>9} {'allowed':>9}  verdict")
    for name in files:
        program = load_program(Path(name))
        for spec in program.specs:
            all_ok &= _demo_spec(spec, Path(name).name, seed)
    print("all targets agree with the float64 reference" if all_ok else "SOME TARGETS DISAGREE")
    return all_ok


def _demo_spec(spec, source_name: str, seed: int) -> bool:
    lowered = lower(spec, passes=passes_for("reference"))
    reference = build_module(lowered, "reference", source_name)
    args64 = sample_arguments(lowered, SIZES, torch.float64, seed=seed)
    ref64 = reference.attention(**args64)
    ok = True
    for target in _available(TARGETS):
        module = build_module(lower(spec, passes=passes_for(target)), target, source_name)
        for dtype in DTYPES:
            low = {k: _cast(v, dtype) for k, v in args64.items()}
            if spec.selection is not None:  # one selection, shared by every run (design.md section 2)
                selection = reference.select(**{k: v for k, v in low.items() if k != "v"})
                low["selection"] = selection
                ref64 = reference.attention(**args64, selection=selection)
            with torch.no_grad():
                out = module.attention(**low, **_target_options(target))
            verdict = check(out, reference.attention(**low), ref64, "out")
            ok &= verdict.ok
            print(
                f"{spec.name:<28} {target:<10} {str(dtype).replace('torch.', ''):<9} "
                f"{verdict.error:>9.2e} {verdict.allowed:>9.2e}  {'ok' if verdict.ok else 'FAIL'}"
            )
    return ok


def _available(targets) -> list[str]:
    """The targets whose runtime is installed (triton is optional)."""
    return [t for t in targets if t != "triton" or importlib.util.find_spec("triton") is not None]


def _target_options(target: str) -> dict:
    """Eager flex_attention on the CPU: compiling every spec would take minutes (tests cover it)."""
    return {"compiled": torch.cuda.is_available()} if target == "flex" else {}


def _cast(value, dtype):
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.to(dtype) if value.dtype == torch.float64 or value.dim() == 4 else value
    return value
