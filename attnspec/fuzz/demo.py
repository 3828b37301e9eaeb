"""`attnspec demo`: compile every spec to every target, run it, and check it against the reference.

One fixed case per (spec, target, dtype), judged exactly as `attnspec fuzz` judges a trial (out and lse
under the accuracy rule, outputs NaN-poisoned, selections computed once by the reference).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ..api import load_program
from ..sample import Sizes
from .cases import Case
from .compare import OK, Subject, run_case
from .runner import available_targets, prepare_device

DTYPES = ("float32", "bfloat16")
SIZES = Sizes(B=2, H=4, HKV=2, SQ=100, SKV=130, D=32, DV=24)


def run_demo(files: list[str], seed: int = 0) -> bool:
    prepare_device("cpu")  # the demo's tensors live on the CPU: triton kernels run in Triton's interpreter
    all_ok = True
    print(f"{'spec':<28} {'target':<10} {'dtype':<9} {'out err':>9} {'allowed':>9}  verdict")
    for name in files:
        program = load_program(Path(name))
        for spec in program.specs:
            all_ok &= _demo_spec(spec, Path(name).name, seed)
    print("all targets agree with the float64 reference" if all_ok else "SOME TARGETS DISAGREE")
    return all_ok


def _demo_spec(spec, source_name: str, seed: int) -> bool:
    subject = Subject.build(spec, available_targets(), source_name)
    ok = True
    for target, err in subject.refused.items():
        print(f"{spec.name:<28} {target:<10} {'':<9} {'':>9} {'':>9}  not accepted: {err.message}")
    sizes = SIZES if spec.gqa_group is None else replace(SIZES, H=SIZES.HKV * int(spec.gqa_group.literal))
    for target in subject.modules:
        for dtype in DTYPES:
            outcome = run_case(subject, Case(target, dtype, sizes, seed), "cpu")
            ok &= outcome.status == OK
            out = next((v for v in outcome.verdicts if v.what == "out"), None)
            error, allowed = (f"{out.error:>9.2e}", f"{out.allowed:>9.2e}") if out else ("", "")
            verdict = "ok" if outcome.status == OK else f"FAIL: {outcome.detail}"
            print(f"{spec.name:<28} {target:<10} {dtype:<9} {error:>9} {allowed:>9}  {verdict}")
    return ok
