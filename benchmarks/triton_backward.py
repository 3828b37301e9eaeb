"""The triton target's backward against torch.compile'd FlexAttention and SDPA on a CUDA GPU.

The backward alone and forward + backward, and the agreement of the gradients. Variants: causal B01,
sliding window B02 (window 256), ALiBi B04, soft-cap B07, 2D neighborhood M02 (5 x 5 on an HT x W = N
image); the params of triton_attention.py. S02's relative-position table is not among them:
benchmarks/common.py has no hand-written FlexAttention form of it. Default sizes: bf16, B = 4, H = 16,
D in {64, 128}, SQ = SKV = N in {2k, 4k, 8k}. q, k, v (standard normal) require grad, and so do the
variant's float inputs (ALiBi's slopes, the neighborhood's relative position bias table), the very
tensors every contender reads. Three contenders, set up as in triton_attention.py:

- triton: the generated module's `attention(q, k, v, **inputs)` (`attnspec.compile(path, "triton")`):
  with inputs that require grad it is one autograd operation, whose backward runs the module's
  `_<spec>_backward_dq` and `_<spec>_backward_dkdv` kernels (gradients of q, k, v and the float inputs).
  A call includes its schedule's host work, as in the forward benchmark.
- flex: `torch.compile(flex_attention, dynamic=False)` with the hand-written mask_mod / score_mod of
  benchmarks/common.py and its own `create_block_mask` BlockMask, built once outside the timing; its
  score_mod captures the same float inputs, so its backward computes their gradients too. Donated
  buffers are off (`torch._functorch.config.donated_buffer = False`): a compiled backward that donates
  its saved tensors cannot run twice on one graph, which the backward-alone timing does.
- SDPA: `scaled_dot_product_attention` in the forward benchmark's form: is_causal=True (FlashAttention /
  cuDNN); a dense boolean [1, 1, N, N] mask, or a dense bias [1, H, N, N] in q's dtype (-inf at masked
  pairs) for ALiBi and the neighborhood (memory-efficient / cuDNN). The mask or bias is a constant:
  SDPA computes the gradients of q, k, v only, not those of the float inputs. Soft-cap: is_causal with
  the spec's scale and no capping (a time reference, not the same function). A dense mask over
  --max-mib is skipped; the column names the backend the dispatcher picked.

Per contender, with one dO (standard normal, q's dtype) for all:
(a) bwd: the forward run once outside the timing, then timed
    `torch.autograd.grad(out, inputs, dO, retain_graph=True)`, the same graph every call;
(b) fwd+bwd: timed `torch.autograd.grad(attention(...), inputs, dO)`.
A first forward + backward of each (reported apart: triton's autotunes its forward and compiles its
kernels, flex's compiles forward and backward), one warm-up round, then --reps interleaved rounds, one
bwd and one fwd+bwd call of each contender per round, timed with CUDA events; the table gives the
median. A contender predicted (x N^2 from the previous N) to take over --max-seconds a fwd+bwd call or
--max-mib of memory, or whose smaller N was skipped, is skipped. kept: the share of the (b, h, q, kv)
pairs the mask keeps, counted exactly. Ratio: anchor time / triton time (> 1: triton faster).
max |diff| of dq / dk / dv: triton's (from the first call) against flex's, and against SDPA's where it
computes the same function; the float inputs' gradients: max |diff| against flex's over max |flex's|.

    python benchmarks/triton_backward.py [--sizes 2048,4096] [--dims 64,128] [--batch 4] [--heads 16]
        [--reps 20] [--only b01_causal,...] [--max-seconds 10] [--max-mib N] [--max-minutes M] [--write]
    python benchmarks/triton_backward.py --smoke [--only b01_causal,...]

The triton forward that runs for the backward multiplies its weights in two half operands (docs/triton.md,
"Precision and the interpreter"); `ATTNSPEC_SPLIT_WEIGHTS=0` before the command times FlashAttention's one
operand instead (without --write: the rows would merge with the default's).

Needs a CUDA GPU, attnspec importable (installed, or the repository root on PYTHONPATH) and its
dependencies; without CUDA it exits, except with --smoke. --write updates the "## Triton backward"
section of benchmarks/RESULTS.md (between its markers; appended at the end of the file the first time),
the block of this GPU model, merging rows by (variant, N, D) as triton_attention.py does.

--smoke: tiny sizes (B = 1, H = 2, D = 32, N in {128, 256}, float32, 1 round; by default the variants
b01_causal and b04_alibi) on the CPU, the kernels in Triton's interpreter (TRITON_INTERPRET=1, set
before any module is built). Compiled FlexAttention has no backward on the CPU: flex is reported
"n/a (no CPU backward)", triton and SDPA run every step but the CUDA events. It prints the table,
checks the section writer on a temporary copy of RESULTS.md, and never writes RESULTS.md.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch._functorch.config

from common import (
    Budget,
    Sample,
    Section,
    failed,
    fmt_time,
    interleaved,
    ratio,
    reexec_with_fixed_malloc,
    synchronize,
    versions,
)
from triton_attention import (
    CONTENDERS,
    Cell,
    Config,
    first_calls,
    fmt_cell_time,
    fmt_seconds,
    make_cell,
    parse_args,
    prepare,
    report,
    run_sweep,
    size_label,
    variant_label,
)

VARIANTS = ("b01_causal", "b02_sliding_window", "b04_alibi", "b07_softcap", "m02_natten2d")
SMOKE_VARIANTS = ("b01_causal", "b04_alibi")
SIZES = (2048, 4096, 8192)  # N by default on a GPU
NO_CPU_BACKWARD = "n/a (no CPU backward)"
TIME_HEADER = ("| variant | N | D | kept | triton bwd | flex bwd | ratio | SDPA bwd | ratio | triton fwd+bwd "
               "| flex fwd+bwd | ratio | SDPA fwd+bwd | ratio | SDPA form (backend) "
               "| max diff dq / dk / dv: flex; SDPA | inputs' grads vs flex |")
FIRST_HEADER = "| variant | N | D | schedule | triton first fwd+bwd | flex first fwd+bwd | SDPA first fwd+bwd |"


@dataclass
class Grad:
    """A contender's forward and the gradients of `inputs` under `grad_out`. Called: forward and
    backward, the graph freed. backward_only(): the forward run once, then a call of the backward
    alone that keeps the graph for the next."""

    forward: Callable
    inputs: list[torch.Tensor]
    grad_out: torch.Tensor

    def __call__(self) -> tuple[torch.Tensor, ...]:
        return torch.autograd.grad(self.forward(), self.inputs, self.grad_out)

    def backward_only(self) -> Callable[[], tuple[torch.Tensor, ...]]:
        out = self.forward()
        return lambda: torch.autograd.grad(out, self.inputs, self.grad_out, retain_graph=True)


# ------------------------------------------------------------------ one cell: a variant at (N, D)


def learnable(cell: Cell) -> dict[str, torch.Tensor]:
    """The variant's float inputs, by name (the contenders and the hand-written mods read these very
    tensors)."""
    return {key: t for key, t in cell.v.kwargs.items() if torch.is_tensor(t) and t.is_floating_point()}


def with_grads(cell: Cell, q, k, val, grad_out) -> None:
    """Make q, k, v and the float inputs require grad (in place: every contender's call holds them) and
    turn each contender's call into its Grad; SDPA's inputs are q, k, v only (its mask is a constant)."""
    inputs = learnable(cell)
    for t in (q, k, val, *inputs.values()):
        t.requires_grad_(True)

    def grad(key: str, fn: Callable) -> Grad:
        return Grad(fn, [q, k, val, *([] if key == "sdpa" else inputs.values())], grad_out)

    cell.fns = {key: grad(key, fn) for key, fn in cell.fns.items()}
    cell.fallbacks = {key: (grad(key, fn), label) for key, (fn, label) in cell.fallbacks.items()}


def timed_calls(cell: Cell, device: str) -> dict[str, Callable]:
    """Per contender still running: '<key> bwd' (its forward run here, once) and '<key> fwd+bwd'."""
    calls = {}
    for key in list(cell.fns):
        try:
            calls[f"{key} bwd"] = cell.fns[key].backward_only()
        except Exception as err:  # noqa: BLE001 - reported, the run goes on
            cell.skipped[key] = failed(err)
            del cell.fns[key]
            continue
        calls[f"{key} fwd+bwd"] = cell.fns[key]
    synchronize(device)
    return calls


def timed_rounds(calls: dict[str, Callable], cfg: Config) -> dict[str, Sample]:
    """Median (and best) of the interleaved rounds per call."""
    try:
        return interleaved(calls, cfg.device, cfg.reps)
    except Exception as err:  # noqa: BLE001 - one failing call fails the rounds of all
        sample = failed(err)
        return {key: sample for key in calls}


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


def qkv_diffs(grads: dict, key: str) -> str:
    """max |diff| of dq / dk / dv: triton's against the contender's."""
    if "triton" not in grads or key not in grads:
        return "-"
    return " / ".join(f"{max_abs_diff(a, b):.1e}" for a, b in zip(grads["triton"][:3], grads[key][:3]))


def input_diffs(grads: dict, names: list[str]) -> str:
    """Per float input: max |diff| of its gradient, triton's against flex's, over max |flex's|."""
    if not names:
        return "none"
    if "triton" not in grads or "flex" not in grads:
        return "-"
    parts = []
    for name, ours, theirs in zip(names, grads["triton"][3:], grads["flex"][3:]):
        scale = float(theirs.float().abs().max()) or 1.0
        parts.append(f"d{name} {max_abs_diff(ours, theirs) / scale:.1e} rel.")
    return ", ".join(parts)


# ------------------------------------------------------------------ rows


def time_row(cell: Cell, bwd: dict[str, Sample], both: dict[str, Sample], diffs: str) -> str:
    t, f, s = (bwd[key] for key in CONTENDERS)
    tt, ff, ss = (both[key] for key in CONTENDERS)
    return (f"| {cell.label} | {size_label(cell.v.n)} | {cell.d} | {cell.kept / cell.pairs:.1%} "
            f"| {fmt_cell_time(t)} | {fmt_cell_time(f)} | **{ratio(f, t)}** | {fmt_cell_time(s)} | **{ratio(s, t)}** "
            f"| {fmt_cell_time(tt)} | {fmt_cell_time(ff)} | **{ratio(ff, tt)}** | {fmt_cell_time(ss)} "
            f"| **{ratio(ss, tt)}** | {cell.sdpa_form} | {diffs} |")


def first_row(cell: Cell, seconds: dict) -> str:
    first = lambda key: fmt_seconds(seconds[key]) if key in seconds else "-"  # noqa: E731
    return (f"| {cell.label} | {size_label(cell.v.n)} | {cell.d} | {cell.triton.SCHEDULE} "
            f"| {first('triton')} | {first('flex')} | {first('sdpa')} |")


def failed_rows(name: str, n: int, d: int, sample: Sample) -> tuple[str, str]:
    """Both rows of a cell whose inputs could not be set up."""
    label, why = f"| {variant_label(name)} | {size_label(n)} | {d} |", fmt_time(sample)
    return f"{label} - | {why} |" + " - |" * 12, f"{label} - | {why} | - | - |"


# ------------------------------------------------------------------ the sweep


def split(cell: Cell, samples: dict[str, Sample], kind: str) -> dict[str, Sample]:
    """Per contender, its '<key> <kind>' median, or why it did not run."""
    out = {}
    for key in CONTENDERS:
        s = samples.get(f"{key} {kind}") or cell.skipped[key]
        out[key] = s if s.skipped else Sample(s.median, s.peak_mib)
    return out


def is_fixed(sample: Sample) -> bool:
    """Skipped for a reason that holds at every N (no form of the variant, a dense mask too large)."""
    why = sample.skipped or ""
    return why.startswith("n/a") or why.startswith("dense mask")


def measure_cell(cfg: Config, name: str, n: int, d: int, gen, hand_fn: Callable, budget: Budget) -> tuple[str, str]:
    """One (variant, N, D): first forward + backward calls, interleaved rounds, the budget's record;
    its two rows."""
    skips = {key: budget.predict(f"{name}/{key}/{d}", n) for key in CONTENDERS}
    if cfg.smoke:
        skips["flex"] = NO_CPU_BACKWARD
    try:
        cell, q, k, val = make_cell(cfg, name, n, d, gen, hand_fn, skips)
        grad_out = torch.randn(q.shape, generator=gen, device=cfg.device, dtype=cfg.dtype)
        with_grads(cell, q, k, val, grad_out)
    except Exception as err:  # noqa: BLE001 - inputs, masks or pair count out of reach: the sweep goes on
        sample = failed(err)
        for key in CONTENDERS:
            budget.record(f"{name}/{key}/{d}", n, sample)
        if cfg.device == "cuda":
            torch.cuda.empty_cache()
        return failed_rows(name, n, d, sample)
    seconds, peaks, grads = first_calls(cell, cfg.device)
    sdpa = qkv_diffs(grads, "sdpa") if cell.sdpa_same else "n/a"
    diffs = f"{qkv_diffs(grads, 'flex')}; {sdpa} | {input_diffs(grads, list(learnable(cell)))}"
    del grads
    samples = timed_rounds(timed_calls(cell, cfg.device), cfg)
    bwd, both = split(cell, samples, "bwd"), split(cell, samples, "fwd+bwd")
    for key in CONTENDERS:
        sample = samples.get(f"{key} fwd+bwd") or cell.skipped[key]
        if sample.seconds is not None:
            sample = Sample(sample.seconds, peaks.get(key))
        if skips[key] != "a smaller N was skipped" and not is_fixed(sample):  # a fixed reason says nothing of N
            budget.record(f"{name}/{key}/{d}", n, sample)
    rows = time_row(cell, bwd, both, diffs), first_row(cell, seconds)
    del cell, q, k, val, grad_out, samples
    if cfg.device == "cuda":
        torch.cuda.empty_cache()  # a dense mask and retained graphs of this cell must not crowd the next one
    return rows


# ------------------------------------------------------------------ RESULTS.md

INTRO = """## Triton backward

`python benchmarks/triton_backward.py` (CUDA only): the `triton` target's backward kernels (dQ and
dK/dV, run by the generated module's autograd) against `torch.compile(flex_attention)` with the
hand-written mods of `benchmarks/common.py` and against SDPA (fused backends only), on the same inputs
and the same dO in the same run: the backward alone and forward + backward. Variants: B01 causal, B02
sliding window (window 256), B04 ALiBi (learnable slopes), B07 soft-cap, M02 2D neighborhood (5 x 5,
image HT x W = N, learnable relative position bias). Ratios are anchor time / triton time: above 1,
the triton module is faster. One block per GPU model; its rows merge across runs by (variant, N, D),
and the runs that made them are listed."""

METHOD = (
    "SQ = SKV = N, q, k, v and dO standard normal, sizes and dtype as the run that made the row says; q, k, "
    "v and the float inputs (ALiBi's slopes, the neighborhood's bias table) require grad. triton: the "
    "generated `attention(q, k, v, **inputs)`, its host-side schedule included. flex: "
    "`torch.compile(flex_attention, dynamic=False)` with the hand-written mods (capturing the same float "
    "inputs) and a prebuilt `create_block_mask` BlockMask, donated buffers off. SDPA: the form in its "
    "column, the backend the dispatcher picked in parentheses; its mask or bias is a constant (gradients of "
    "q, k, v only); a dense mask over the memory budget is skipped. bwd: the forward run once outside the "
    "timing, then `torch.autograd.grad(out, inputs, dO, retain_graph=True)`; fwd+bwd: "
    "`torch.autograd.grad(attention(...), inputs, dO)`. A first forward + backward of each (below), a "
    "warm-up round, then interleaved rounds, one bwd and one fwd+bwd of each per round, CUDA events; the "
    "median. kept: share of the (b, h, q, kv) pairs the mask keeps. Ratio: anchor / triton (> 1: triton "
    "faster). max |diff|: dq / dk / dv, triton's against flex's; SDPA's (n/a: SDPA computes another "
    "function); the float inputs' gradients against flex's, relative to max |flex's|. Skipped: predicted "
    "over the run's --max-seconds per fwd+bwd call or --max-mib from the previous N (x N^2), or a smaller "
    "N skipped or failed."
)

FIRST_NOTE = (
    "First forward + backward per shape: triton's autotunes its forward and compiles its kernels; flex's "
    "compiles the forward and the backward (dynamic=False: every shape anew, a fresh inductor cache per "
    "run); SDPA's is a plain call."
)
SECTION = Section("triton_backward.py", INTRO, METHOD, ((TIME_HEADER, ""), (FIRST_HEADER, FIRST_NOTE)), VARIANTS)


# ------------------------------------------------------------------ main


def main() -> None:
    args = parse_args(__doc__, SIZES, "Triton backward")
    cfg, names = prepare(args, "triton_backward.py", VARIANTS, SMOKE_VARIANTS, SIZES)
    torch._functorch.config.donated_buffer = False  # the backward-alone timing runs one graph's backward again
    started = time.perf_counter()
    print(f"== {versions(cfg.device)}", flush=True)
    time_rows, first_rows, stopped = run_sweep(cfg, names, started, measure_cell)
    report(SECTION, cfg, names, [time_rows, first_rows], time.perf_counter() - started, stopped, args.write)


if __name__ == "__main__":
    reexec_with_fixed_malloc("triton_backward_inductor_")
    main()
