"""The triton target against torch.compile'd FlexAttention and SDPA on a CUDA GPU: attention time,
TFLOP/s over the pairs the mask keeps, agreement of the outputs.

Variants: causal B01, sliding window B02 (window 256), ALiBi B04, soft-cap B07, document mask B03
(random documents of about 2k tokens), prefix-LM M01 (prefix N / 4), 2D neighborhood M02 (5 x 5 on an
HT x W = N image), sigmoid N01, MoBA K02 (top-k key blocks of 16), causal RoPE B10 (the triton module
applies RoPE in its prologue pass; flex and SDPA get q and k rotated by torch inside each timed call,
as a model does); the params of flex_attention.py.
Default sizes: bf16, B = 4, H = 16, D in {64, 128}, SQ = SKV = N in {2k, 4k, 8k, 16k, 32k}. Three
contenders run on the same q, k, v:

- triton: the generated module's `attention(q, k, v, **inputs)` (`attnspec.compile(path, "triton")`).
  A call includes its schedule's host work (the block table where SCHEDULE = "table"; none for
  "bands"). Its first call per (variant, N, D) autotunes among a few tile configurations.
- flex: `torch.compile(flex_attention, dynamic=False)` with the hand-written mask_mod / score_mod of
  benchmarks/common.py and its own `create_block_mask` BlockMask, built once outside the timing.
  Sigmoid and MoBA have no hand-written form: they run attnspec's flex module,
  `attention(..., block_mask=prebuilt, compiled=True)`. MoBA's block selection is computed once (the
  flex module's `select(q, k)`; the triton module's is the same code) and the same one is handed to
  both, so both visit the same blocks.
- SDPA: `scaled_dot_product_attention`. Causal: is_causal=True (FlashAttention / cuDNN backends). A
  mask: a dense boolean [1, 1, N, N] mask (MoBA: [B, H, N, N], the selection's blocks and the causal
  mask) on the memory-efficient / cuDNN backends. A bias (ALiBi, the neighborhood's relative position
  bias): a dense bias [1, H, N, N] in q's dtype, -inf at masked pairs. Soft-cap: is_causal with the
  spec's scale and no capping (a time reference, not the same function). Sigmoid: no SDPA form (n/a).
  A dense mask over --max-mib (counting SDPA's additive copy of a boolean mask) is skipped. The
  column names the backend the dispatcher picked.

Timing: a first call of each (reported apart: triton's autotunes and compiles its kernels, flex's
compiles), one warm-up round, then --reps interleaved rounds, one call of each contender per round,
timed with CUDA events; the table gives the median. A contender predicted (x N^2 from the previous N)
to take over --max-seconds a call or --max-mib of memory, or whose smaller N was skipped, is skipped.
TFLOP/s: 4 * kept * D / time (the two products, 2 flops a multiply-add), kept = the (b, h, q, kv)
pairs the mask and selection keep, counted exactly by evaluating the mask in row chunks, never as a
dense N x N tensor; the same count for every contender (SDPA with a dense mask computes every pair:
its figure is the rate on the pairs that count). Ratio: anchor time / triton time (> 1: triton
faster). max |diff|: triton's output against flex's / SDPA's (SDPA's where it computes the same
function).

    python benchmarks/triton_attention.py [--sizes 2048,4096] [--dims 64,128] [--batch 4] [--heads 16]
        [--reps 20] [--only b01_causal,...] [--max-seconds 10] [--max-mib N] [--max-minutes M] [--write]
    python benchmarks/triton_attention.py --smoke [--only b01_causal,...]

Needs a CUDA GPU, attnspec importable (installed, or the repository root on PYTHONPATH) and its
dependencies (lark parses the .attn files); without CUDA it exits, except with --smoke.
--write updates the "## Triton target" section of benchmarks/RESULTS.md (between its markers), the
block of this GPU model: a row of this run replaces the row of the same (variant, N, D), the others
stay, so a sweep longer than one sitting can be split with --only / --dims / --sizes (--max-minutes
stops starting new cells past a wall-time limit and writes what was measured). Other GPUs' blocks and
the rest of the file are kept.

--smoke: tiny sizes (B = 1, H = 2, D = 32, N in {128, 256}, float32, 1 round; by default the
variants b01_causal, b04_alibi, k02_moba) on the CPU, the kernels in Triton's interpreter
(TRITON_INTERPRET=1, set before any module is built), compiled flex_attention on the CPU: every step
but the CUDA events. It prints the table, checks the section writer on a temporary copy of
RESULTS.md, and never writes RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import inspect
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass, field, replace
from types import ModuleType
from typing import Callable

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

import attnspec
from common import (
    EXTRA_CONSTS,
    RESULTS,
    ROOT,
    Budget,
    Sample,
    Section,
    Variant,
    consts_for,
    failed,
    fmt_time,
    interleaved,
    make_variant,
    ratio,
    reexec_with_fixed_malloc,
    sdpa_mask,
    sdpa_mask_shape,
    synchronize,
    versions,
)

VARIANTS = (
    "b01_causal", "b02_sliding_window", "b04_alibi", "b07_softcap", "b03_document", "m01_prefix_lm",
    "m02_natten2d", "n01_sigmoid", "k02_moba", "b10_rope",
)
GENERATED_FLEX = ("n01_sigmoid", "k02_moba")  # no hand-written FlexAttention form: attnspec's flex module runs
SMOKE_VARIANTS = ("b01_causal", "b04_alibi", "k02_moba")
CONTENDERS = ("triton", "flex", "sdpa")
COUNT_CHUNK = 1 << 24  # mask elements evaluated at once when counting kept pairs
SELECTION_CHECK_MAX = 1 << 28  # compare the two modules' selections while the dense mask stays this small
SIZES = (2048, 4096, 8192, 16384, 32768)  # N by default on a GPU
TIME_HEADER = ("| variant | N | D | kept | triton | TFLOP/s | flex | TFLOP/s | ratio | SDPA | TFLOP/s | ratio "
               "| SDPA form (backend) | max diff flex / SDPA |")
FIRST_HEADER = "| variant | N | D | schedule | triton config | triton first call | flex first call | SDPA first call |"


@dataclass
class Config:
    """What this run measures."""

    device: str
    dtype: torch.dtype
    sizes: list[int]
    dims: list[int]
    batch: int
    heads: int
    reps: int
    max_seconds: float
    max_mib: int
    max_minutes: float
    smoke: bool


# ------------------------------------------------------------------ the modules and masks

_TRITON_MODULES: dict[tuple, ModuleType] = {}


def triton_module(name: str, n: int) -> ModuleType:
    """The generated triton module at N tokens, built once per distinct set of compile-time params."""
    consts = {**consts_for(name, n), **EXTRA_CONSTS.get(name, {})}
    key = (name, tuple(sorted(consts.items())))
    if key not in _TRITON_MODULES:
        _TRITON_MODULES[key] = attnspec.compile(ROOT / "examples" / f"{name}.attn", "triton", cache=False, **consts)
    return _TRITON_MODULES[key]


def generated_mod(flex_module: ModuleType, kind: str, n: int, dtype: torch.dtype = torch.float32) -> Callable | None:
    """The flex module's own mask_mod or score_mod (kind), bound to SQ = SKV = n: the factories take
    the size symbols their mod reads, as keywords. None where the module has no such factory."""
    factory = getattr(flex_module, f"{flex_module.SPEC_NAME}_{kind}", None)
    if factory is None:
        return None
    sizes = {"SQ": n, "SKV": n, "dtype": dtype}
    return factory(**{key: sizes[key] for key in inspect.signature(factory).parameters if key in sizes})


def with_selection(mask_mod: Callable | None, selection) -> Callable:
    """A mask_mod that also keeps only the selection's blocks (it then reads the batch and head)."""
    blocks, bq, bk = selection.block_mask, selection.q_block, selection.kv_block

    def keep(b, h, q, kv):
        inside = blocks[b, h, q // bq, kv // bk]
        return inside if mask_mod is None else mask_mod(b, h, q, kv) & inside

    return keep


def kept_pairs(mask_mod: Callable | None, n: int, batch: int, heads: int, device: str) -> int:
    """The (b, h, q, kv) pairs the mask keeps, counted exactly over row chunks: a mask that ignores the
    batch or head is evaluated once and counted for every one."""
    if mask_mod is None:
        return batch * heads * n * n
    b = torch.arange(batch, device=device).view(-1, 1, 1, 1)
    h = torch.arange(heads, device=device).view(1, -1, 1, 1)
    kv = torch.arange(n, device=device).view(1, 1, 1, -1)
    probe = mask_mod(b, h, torch.zeros((1, 1, 1, 1), dtype=torch.long, device=device), kv)
    planes = probe.shape[0] * probe.shape[1]
    rows = max(1, COUNT_CHUNK // (n * planes))
    total = 0
    for start in range(0, n, rows):
        q = torch.arange(start, min(start + rows, n), device=device).view(1, 1, -1, 1)
        total += int(mask_mod(b, h, q, kv).sum())
    return total * (batch * heads // planes)


# ------------------------------------------------------------------ one cell: a variant at (N, D)


@dataclass
class Cell:
    """The inputs of one (variant, N, D) and what each contender calls."""

    v: Variant
    triton: ModuleType
    d: int
    kept: int = 0  # (b, h, q, kv) pairs the mask and selection keep
    pairs: int = 0  # all (b, h, q, kv) pairs
    fns: dict[str, Callable] = field(default_factory=dict)
    sdpa_form: str = ""
    sdpa_same: bool = True  # SDPA computes the spec's function (else a time reference only)
    skipped: dict[str, Sample] = field(default_factory=dict)
    fallbacks: dict[str, tuple[Callable, str]] = field(default_factory=dict)  # call and label, if the first fails
    label: str = ""  # the variant column: the name, and what the flex contender is where not hand-written


def sdpa_backends(is_causal: bool) -> list:
    """Fused backends only: the math backend would materialize [B, H, N, N] scores."""
    if is_causal:
        return [SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION]
    return [SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]


def backend_name(q, k, val, mask, is_causal: bool, scale) -> str:
    """The backend SDPA's dispatcher picks for these arguments (a private torch function: '?' where
    it is missing)."""
    try:
        choice = torch._fused_sdp_choice(q, k, val, mask, 0.0, is_causal, scale=scale)
        return SDPBackend(choice).name.lower().removesuffix("_attention")
    except Exception:  # noqa: BLE001 - informative only
        return "?"


def dense_mask_mib(v: Variant, heads: int, batch: int, device: str, dtype: torch.dtype) -> float:
    """MiB of SDPA's dense mask: a bias in q's dtype, or a boolean mask plus the additive copy in q's
    dtype that SDPA makes of it."""
    shape = sdpa_mask_shape(v, heads, device, batch)
    per_element = dtype.itemsize if v.bias else 1 + dtype.itemsize
    return math.prod(shape) * per_element / 2**20


def add_sdpa(cell: Cell, cfg: Config, q, k, val, token_mask: Callable | None) -> None:
    """SDPA's call for this variant, or why there is none."""
    v, name = cell.v, cell.v.name
    if name == "n01_sigmoid":
        cell.sdpa_form, cell.sdpa_same = "n/a: sigmoid attention has no SDPA form", False
        cell.skipped["sdpa"] = Sample(skipped="n/a")
        return
    causal = name in ("b01_causal", "b07_softcap", "b10_rope")
    if causal:
        mask, form = None, "is_causal=True"
        if name == "b07_softcap":
            form, cell.sdpa_same = f"is_causal=True, scale {v.scale}, no soft-cap (time reference)", False
    else:
        dense = v if token_mask is None or name not in GENERATED_FLEX else replace(v, mask_mod=token_mask)
        shape = sdpa_mask_shape(dense, cfg.heads, cfg.device, cfg.batch)
        axes = f"[{'B' if shape[0] > 1 else 1}, {'H' if shape[1] > 1 else 1}, N, N]"
        form = f"{str(cfg.dtype).removeprefix('torch.')} bias {axes}" if dense.bias else f"bool mask {axes}"
        mib = dense_mask_mib(dense, cfg.heads, cfg.batch, cfg.device, cfg.dtype)
        if mib > cfg.max_mib:
            cell.sdpa_form = form
            cell.skipped["sdpa"] = Sample(skipped=f"dense mask {mib / 1024:.0f} GiB")
            return
        mask = sdpa_mask(dense, cfg.heads, cfg.device, cfg.dtype, cfg.batch)
    backends = sdpa_backends(causal) if cfg.device == "cuda" else None
    limit = (lambda: sdpa_kernel(backends)) if backends else contextlib.nullcontext  # CPU: its own dispatch

    def call():
        with limit():
            qr, kr = v.prologue(q, k) if v.prologue else (q, k)
            return F.scaled_dot_product_attention(qr, kr, val, attn_mask=mask, is_causal=causal, scale=v.scale)

    with limit():
        cell.sdpa_form = f"{form} ({backend_name(q, k, val, mask, causal, v.scale)})"
    cell.fns["sdpa"] = call


def add_flex(cell: Cell, cfg: Config, q, k, val, selection, hand_fn: Callable) -> None:
    """The flex call: hand-written mods with their own BlockMask, or attnspec's flex module."""
    v = cell.v
    if v.name in GENERATED_FLEX:
        extra = {} if selection is None else {"selection": selection}
        block_mask = v.module.build_block_mask(q, k, **v.kwargs, **extra)
        cell.fns["flex"] = lambda: v.module.attention(q, k, val, **v.kwargs, block_mask=block_mask, compiled=True)
        # flex_attention's CUDA kernel refuses a BlockMask of blocks smaller than its tiles (MoBA's are 16)
        # unless kernel_options say so: the module passes them (runtime.flex.kernel_tiles); should that
        # fail, its mods run by hand with them (the spec's default scale, as MoBA's; captured floats in
        # float32, as the module binds them for float32 and half inputs)
        score_mod = generated_mod(v.module, "score_mod", v.n)
        bq, bk = block_mask.BLOCK_SIZE
        options = {"BLOCK_M": bq, "BLOCK_N": bk}
        cell.fallbacks["flex"] = (
            lambda: hand_fn(q, k, val, score_mod=score_mod, block_mask=block_mask, kernel_options=options),
            f"{v.name} (flex: attnspec's flex module's BlockMask and mods, kernel_options {bq} x {bk})",
        )
        return
    # eager create_block_mask holds [N, N] int64 temporaries (8 GiB each at 32k): past 16k it compiles
    build = lambda: create_block_mask(v.mask_mod, None, None, v.n, v.n, device=cfg.device,  # noqa: E731
                                      _compile=cfg.device == "cuda" and v.n > 16384)
    block_mask = build() if v.mask_mod else None
    rotated = v.prologue or (lambda q, k: (q, k))
    cell.fns["flex"] = lambda: hand_fn(*rotated(q, k), val, score_mod=v.score_mod, block_mask=block_mask, scale=v.scale)


def check_selection(triton: ModuleType, selection, q, k) -> None:
    """The triton module's own `select` must pick the blocks the flex module's did (checked while its
    dense mask is small)."""
    if q.shape[0] * q.shape[1] * q.shape[2] * k.shape[2] > SELECTION_CHECK_MAX:
        return
    try:
        same = torch.equal(triton.select(q, k).block_mask, selection.block_mask)
    except Exception as err:  # noqa: BLE001 - the benchmark hands both the flex module's selection anyway
        failed(err)
        same = False
    if not same:
        print(f"warning: {triton.SPEC_NAME}: the triton module's select failed or differs from the flex "
              f"module's at N = {q.shape[2]}", file=sys.stderr)


def make_cell(cfg: Config, name: str, n: int, d: int, gen: torch.Generator, hand_fn: Callable, skips: dict) -> tuple:
    """The cell's inputs and calls; returns (cell, q, k, val)."""
    v = make_variant(name, n, cfg.device, cfg.heads, cfg.batch)
    cell = Cell(v, triton_module(name, n), d, label=variant_label(name))
    shape = (cfg.batch, cfg.heads, n, d)
    q, k, val = (torch.randn(shape, generator=gen, device=cfg.device, dtype=cfg.dtype) for _ in range(3))
    selection = None
    token_mask = v.mask_mod if name not in GENERATED_FLEX else generated_mod(v.module, "mask_mod", n)
    if cell.triton.SELECTION_BLOCKS is not None:  # a block selection: computed once, handed to both
        selection = v.module.select(q, k)
        check_selection(cell.triton, selection, q, k)
        token_mask = with_selection(token_mask, selection)
    cell.kept = kept_pairs(token_mask, n, cfg.batch, cfg.heads, cfg.device)
    cell.pairs = cfg.batch * cfg.heads * n * n
    extra = {} if selection is None else {"selection": selection}
    for key in CONTENDERS:
        if skips[key]:
            cell.skipped[key] = Sample(skipped=skips[key])
    if "triton" not in cell.skipped:
        cell.fns["triton"] = lambda: cell.triton.attention(q, k, val, **v.kwargs, **extra)
    for key, add in (("flex", lambda: add_flex(cell, cfg, q, k, val, selection, hand_fn)),
                     ("sdpa", lambda: add_sdpa(cell, cfg, q, k, val, token_mask))):
        if key in cell.skipped:
            continue
        try:
            add()
        except Exception as err:  # noqa: BLE001 - a BlockMask or dense mask that cannot be built: reported
            cell.skipped[key] = failed(err)
    return cell, q, k, val


# ------------------------------------------------------------------ measuring


def first_calls(cell: Cell, device: str) -> tuple[dict, dict, dict]:
    """One call of each (triton's autotunes, flex's compiles): seconds, peak MiB and output per
    contender; a contender that fails is dropped from cell.fns and marked failed."""
    seconds, peaks, outs = {}, {}, {}
    for key in list(cell.fns):
        while key in cell.fns:
            try:
                seconds[key], peaks[key], outs[key] = first_call(cell.fns[key], device)
                break
            except Exception as err:  # noqa: BLE001 - reported, the run goes on
                if key in cell.fallbacks:
                    cell.fns[key], cell.label = cell.fallbacks.pop(key)
                    print(f"{key}: {type(err).__name__}: {str(err).strip()[:200]}; trying instead: {cell.label}",
                          file=sys.stderr)
                    continue
                cell.skipped[key] = failed(err)
                del cell.fns[key]
    return seconds, peaks, outs


def first_call(fn: Callable, device: str) -> tuple[float, float | None, object]:
    """Seconds (the wall clock around a synchronized call), peak MiB over the allocated memory (CUDA
    only) and the output of one call."""
    synchronize(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    start = time.perf_counter()
    out = fn()
    synchronize(device)
    seconds = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated() - before) / 2**20 if device == "cuda" else None
    return seconds, peak, out


def timed_rounds(cell: Cell, cfg: Config, peaks: dict) -> dict[str, Sample]:
    """Median (and best) of the interleaved rounds per contender, with its first call's peak."""
    try:
        samples = interleaved(cell.fns, cfg.device, cfg.reps)
    except Exception as err:  # noqa: BLE001 - one failing call fails the rounds of all
        return {key: failed(err) for key in cell.fns}
    for key, sample in samples.items():
        sample.peak_mib = peaks.get(key)
    return samples


def max_diff(outs: dict, key: str) -> str:
    if "triton" not in outs or key not in outs:
        return "-"
    return f"{float((outs['triton'].float() - outs[key].float()).abs().max()):.1e}"


def tuned_config(cell: Cell, cfg: Config, n: int) -> str:
    """The tile configuration triton's autotuning kept for this shape (read from the runtime's table;
    '-' where it was not tuned: one candidate, or the interpreter)."""
    from attnspec.runtime import triton as runtime

    bucket = 1 << max(0, n - 1).bit_length()
    for key, config in getattr(runtime, "_TUNED", {}).items():
        if key[0] == cell.triton.SPEC_NAME and key[1] == cfg.dtype and key[2] == cell.d and key[-2:] == (bucket, bucket):
            return f"{config.block_m}x{config.block_n}, {config.num_warps} warps, {config.num_stages} stages"
    return "-"


# ------------------------------------------------------------------ rows


def size_label(n: int) -> str:
    return f"{n // 1024}k" if n % 1024 == 0 else str(n)


def tflops(cell: Cell, sample: Sample) -> str:
    if sample.skipped or not sample.seconds:
        return "-"
    return f"{4 * cell.kept * cell.d / sample.seconds / 1e12:.3g}"


def fmt_seconds(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds >= 1 else f"{seconds * 1e3:.0f} ms"


def fmt_cell_time(sample: Sample) -> str:
    """The time, or "n/a ..." where the contender has no form of this variant (the reason, if given)."""
    return sample.skipped if (sample.skipped or "").startswith("n/a") else fmt_time(sample)


def time_row(cell: Cell, samples: dict[str, Sample], outs: dict) -> str:
    n = cell.v.n
    t, f, s = (samples[key] for key in CONTENDERS)
    sdpa_diff = max_diff(outs, "sdpa") if cell.sdpa_same else "n/a"
    return (f"| {cell.label} | {size_label(n)} | {cell.d} | {cell.kept / cell.pairs:.1%} "
            f"| {fmt_cell_time(t)} | {tflops(cell, t)} | {fmt_cell_time(f)} | {tflops(cell, f)} | **{ratio(f, t)}** "
            f"| {fmt_cell_time(s)} | {tflops(cell, s)} | **{ratio(s, t)}** | {cell.sdpa_form} "
            f"| {max_diff(outs, 'flex')} / {sdpa_diff} |")


def failed_rows(name: str, n: int, d: int, sample: Sample) -> tuple[str, str]:
    """Both rows of a cell whose inputs could not be set up."""
    label, why = f"| {variant_label(name)} | {size_label(n)} | {d} |", fmt_time(sample)
    return (f"{label} - | {why} | - | - | - | - | - | - | - | - | - |",
            f"{label} - | - | {why} | - | - |")


def first_row(cell: Cell, cfg: Config, seconds: dict) -> str:
    first = lambda key: fmt_seconds(seconds[key]) if key in seconds else "-"  # noqa: E731
    return (f"| {cell.label} | {size_label(cell.v.n)} | {cell.d} | {cell.triton.SCHEDULE} "
            f"| {tuned_config(cell, cfg, cell.v.n)} | {first('triton')} | {first('flex')} | {first('sdpa')} |")


def variant_label(name: str) -> str:
    return f"{name} (flex: attnspec's flex module)" if name in GENERATED_FLEX else name


# ------------------------------------------------------------------ the sweep


def measure_cell(cfg: Config, name: str, n: int, d: int, gen, hand_fn: Callable, budget: Budget) -> tuple[str, str]:
    """One (variant, N, D): first calls, interleaved rounds, the budget's record; its two rows."""
    skips = {key: budget.predict(f"{name}/{key}/{d}", n) for key in CONTENDERS}
    try:
        cell, q, k, val = make_cell(cfg, name, n, d, gen, hand_fn, skips)
    except Exception as err:  # noqa: BLE001 - inputs, selection or pair count out of reach: the sweep goes on
        sample = failed(err)
        for key in CONTENDERS:
            budget.record(f"{name}/{key}/{d}", n, sample)
        if cfg.device == "cuda":
            torch.cuda.empty_cache()
        return failed_rows(name, n, d, sample)
    seconds, peaks, outs = first_calls(cell, cfg.device)
    timed = timed_rounds(cell, cfg, peaks)
    samples = {**cell.skipped, **timed}
    for key in CONTENDERS:
        sample = samples[key]
        not_measured = sample.skipped == "n/a" or (sample.skipped or "").startswith("dense mask")
        if skips[key] != "a smaller N was skipped" and not not_measured:  # a fixed reason says nothing of N
            budget.record(f"{name}/{key}/{d}", n, sample)
    shown = {key: s if s.skipped else Sample(s.median, s.peak_mib) for key, s in samples.items()}  # the median
    rows = time_row(cell, shown, outs), first_row(cell, cfg, seconds)
    del outs, cell, q, k, val
    if cfg.device == "cuda":
        torch.cuda.empty_cache()  # a dense mask of this cell must not crowd the next one
    return rows


def run_sweep(cfg: Config, names: list[str], started: float,
              measure: Callable | None = None) -> tuple[list[str], list[str], str]:
    """Every variant, D and N (N ascending: the budget extrapolates from the previous one), each cell
    measured by `measure` (default measure_cell; same arguments, same two rows). Returns the table rows,
    the first-call rows, and why the sweep stopped early ('' when it did not)."""
    measure = measure or measure_cell
    budget = Budget(cfg.max_seconds, cfg.max_mib)
    gen = torch.Generator(device=cfg.device).manual_seed(0)
    time_rows, first_rows = [], []
    for name in names:
        torch._dynamo.reset()
        hand_fn = torch.compile(flex_attention, dynamic=False)
        for d in cfg.dims:
            for n in cfg.sizes:
                if cfg.max_minutes and time.perf_counter() - started > cfg.max_minutes * 60:
                    return time_rows, first_rows, (f"stopped at --max-minutes {cfg.max_minutes:g} before "
                                                   f"{name}, N = {size_label(n)}, D = {d}")
                time_line, first_line = measure(cfg, name, n, d, gen, hand_fn, budget)
                time_rows.append(time_line)
                first_rows.append(first_line)
                print(time_line, flush=True)
    return time_rows, first_rows, ""


# ------------------------------------------------------------------ RESULTS.md

INTRO = """## Triton target

`python benchmarks/triton_attention.py` (CUDA only): the `triton` target's generated module against
`torch.compile(flex_attention)` with the hand-written mods of `benchmarks/common.py` (attnspec's own flex
module for sigmoid and MoBA, which have none) and against SDPA (fused backends only: FlashAttention /
cuDNN with is_causal, memory-efficient / cuDNN with a dense mask or bias), on the same inputs in the same
run. Variants: B01 causal, B02 sliding window (window 256), B04 ALiBi, B07 soft-cap, B03 document mask
(documents of about 2k tokens), M01 prefix-LM (prefix N / 4), M02 2D neighborhood (5 x 5, image
HT x W = N), N01 sigmoid, K02 MoBA (top-2 key blocks of 16 plus the diagonal one, causal). TFLOP/s count
only the pairs the mask keeps. Ratios are anchor time / triton time: above 1, the triton module is
faster. One block per GPU model; its rows merge across runs by (variant, N, D), and the runs that made
them are listed."""

METHOD = (
    "SQ = SKV = N, q, k, v standard normal, sizes and dtype as the run that made the row says. triton: the "
    "generated `attention(q, k, v, **inputs)`, its host-side schedule included (a block table where the "
    "schedule column says `table`). flex: `torch.compile(flex_attention, dynamic=False)` with the "
    "hand-written mods and a prebuilt `create_block_mask` BlockMask, or where the variant says so "
    "attnspec's flex module (`attention(..., block_mask=prebuilt, compiled=True)`); MoBA's selection is "
    "computed once and handed to both. SDPA: the form in its column, the backend the dispatcher picked in "
    "parentheses; a dense mask over the memory budget is skipped. A first call of each (below: triton's "
    "autotunes and compiles, flex's compiles), a warm-up round, then interleaved rounds, one call of each "
    "per round, CUDA events; the median. kept: share of the (b, h, q, kv) pairs the mask (and selection) "
    "keeps, counted exactly; TFLOP/s = 4 * kept pairs * D / time for every contender (SDPA with a dense mask "
    "computes every pair: its figure is its rate on the pairs that count). Ratio: anchor / triton (> 1: "
    "triton faster). max |diff|: triton's output against flex's / SDPA's (n/a: SDPA computes another "
    "function). Skipped: predicted over the run's --max-seconds per call or --max-mib from the previous N "
    "(x N^2), or a smaller N skipped or failed."
)


FIRST_NOTE = (
    "First call per shape: triton's autotunes (config: the tile configuration it kept) and compiles its "
    "kernels; flex's compiles (dynamic=False: every shape anew, a fresh inductor cache per run); SDPA's "
    "is a plain call."
)
SECTION = Section("triton_attention.py", INTRO, METHOD, ((TIME_HEADER, ""), (FIRST_HEADER, FIRST_NOTE)), VARIANTS)


def run_line(cfg: Config, names: list[str], elapsed: float, stopped: str, script: str) -> str:
    """The run line of a block: the command, date, device, versions and settings."""
    command = " ".join([f"python benchmarks/{script}", *sys.argv[1:]])
    where = versions(cfg.device).removeprefix("Device: ")
    import triton

    return (f"- `{command}` ({datetime.date.today().isoformat()}; {where}, triton {triton.__version__}; "
            f"{str(cfg.dtype).removeprefix('torch.')}, B = {cfg.batch}, H = {cfg.heads}, rounds {cfg.reps}, "
            f"--max-seconds {cfg.max_seconds:g}, --max-mib {cfg.max_mib}; {len(names)} variants; "
            f"{elapsed / 60:.1f} min" + (f"; {stopped}" if stopped else "") + ")")


# ------------------------------------------------------------------ main


def config(args, sizes: tuple[int, ...] = SIZES) -> Config:
    """The run's settings from the flags; `sizes`: the default N on a GPU."""
    ints = lambda s: [int(x) for x in s.split(",")] if s else None  # noqa: E731
    if args.smoke:
        return Config("cpu", torch.float32, ints(args.sizes) or [128, 256], ints(args.dims) or [32],
                      args.batch or 1, args.heads or 2, args.reps or 1, args.max_seconds, args.max_mib or 1024,
                      args.max_minutes, True)
    max_mib = args.max_mib or int(torch.cuda.get_device_properties(0).total_memory / 2**21)  # half the GPU
    return Config("cuda", torch.bfloat16, ints(args.sizes) or list(sizes),
                  ints(args.dims) or [64, 128], args.batch or 4, args.heads or 16, args.reps or 20,
                  args.max_seconds, max_mib, args.max_minutes, False)


def parse_args(doc: str = __doc__, sizes: tuple[int, ...] = SIZES, section: str = "Triton"):
    """The flags; `doc`: the script's docstring, `sizes`: its default N, `section`: what --write updates."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--sizes", default="",
                        help=f"N = SQ = SKV (default {sizes[0]},...,{sizes[-1]}; smoke 128,256)")
    parser.add_argument("--dims", default="", help="head dims (default 64,128; smoke 32)")
    parser.add_argument("--batch", type=int, default=0, help="B (default 4; smoke 1)")
    parser.add_argument("--heads", type=int, default=0, help="H (default 16; smoke 2)")
    parser.add_argument("--reps", type=int, default=0, help="timed rounds (default 20; smoke 1)")
    parser.add_argument("--only", default="", help="comma-separated variants (example stems)")
    parser.add_argument("--max-seconds", type=float, default=10.0, help="skip a call predicted to take longer")
    parser.add_argument("--max-mib", type=int, default=0,
                        help="skip a call predicted to use more, or a dense SDPA mask over it (default half the GPU)")
    parser.add_argument("--max-minutes", type=float, default=0.0,
                        help="start no new cell past this wall time (0: no limit); what was measured is kept")
    parser.add_argument("--write", action="store_true", help=f"update the {section} section of RESULTS.md")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes on the CPU in Triton's interpreter; never writes RESULTS.md")
    return parser.parse_args()


def prepare(args, script: str, known: tuple[str, ...], smoke_default: tuple[str, ...],
            sizes: tuple[int, ...] = SIZES) -> tuple[Config, list[str]]:
    """The run's settings and variants (in `known`'s order) from the flags. --smoke: Triton's interpreter,
    set before any module is built (@triton.jit reads it); otherwise a CUDA GPU, or the script exits."""
    if args.smoke:
        if args.write:
            sys.exit("--smoke never writes RESULTS.md: drop --write")
        os.environ["TRITON_INTERPRET"] = "1"
    elif not torch.cuda.is_available():
        sys.exit(f"{script} times CUDA kernels and torch.cuda.is_available() is False here; "
                 "--smoke checks the script on the CPU (Triton's interpreter, tiny sizes, nothing written)")
    cfg = config(args, sizes)
    names = args.only.split(",") if args.only else list(smoke_default if cfg.smoke else known)
    unknown = [name for name in names if name not in known]
    if unknown:
        sys.exit(f"unknown variants {', '.join(unknown)}; known: {', '.join(known)}")
    warnings.filterwarnings("ignore")
    torch._dynamo.config.recompile_limit = 64  # every (N, D) compiles anew: never fall back to eager
    torch._dynamo.config.accumulated_recompile_limit = 4096
    return cfg, [name for name in known if name in names]


def report(section: Section, cfg: Config, names: list[str], rows: list[list[str]], elapsed: float, stopped: str,
           write: bool) -> None:
    """Print this run's block; --smoke checks the section writer on a copy, --write merges the block into
    RESULTS.md."""
    if stopped:
        print(stopped, flush=True)
    run = run_line(cfg, names, elapsed, stopped, section.script)
    key = "smoke" if cfg.smoke else torch.cuda.get_device_name()
    title = "Smoke: CPU, Triton interpreter (not a timing)" if cfg.smoke else f"GPU: {key}"
    print(section.render(key, title, rows, [run]), flush=True)
    if cfg.smoke:
        section.check_writer(key, title, rows, run)
    elif write:
        section.write({key: section.merged(key, title, rows, run)})
        print(f"wrote {RESULTS.relative_to(ROOT)}")


def main() -> None:
    args = parse_args()
    cfg, names = prepare(args, "triton_attention.py", VARIANTS, SMOKE_VARIANTS)
    started = time.perf_counter()
    print(f"== {versions(cfg.device)}", flush=True)
    with torch.no_grad():
        time_rows, first_rows, stopped = run_sweep(cfg, names, started)
    report(SECTION, cfg, names, [time_rows, first_rows], time.perf_counter() - started, stopped, args.write)


if __name__ == "__main__":
    reexec_with_fixed_malloc("triton_attention_inductor_")
    main()
