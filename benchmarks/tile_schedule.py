"""Time and peak memory to build the tile schedule: attnspec's tile analysis vs FlexAttention.

attnspec: `classify_tiles` (interval arithmetic, O(tiles x mask nodes)) plus `block_lists()`, the
FlexAttention-style (partial, full) block lists. Anchor, measured in the same run on the same CPU:
`torch.nn.attention.flex_attention.create_block_mask` with a hand-written mask_mod equivalent to
the example, eager (it materializes the [B, H, N, N] mask) and `torch.compile`d (one
`torch.compile(create_block_mask, dynamic=True)` per example, so every size reuses one compile;
its first call is reported as the compile time). SQ = SKV = N, B = 1, H = 8, tiles of 128 x 128
or the spec's own blocks for a static rule; create_block_mask gets H=None (broadcast) when the
mask does not depend on the head, as attnspec does. Example params are the files' defaults,
except image / video dimensions, which follow N (HT x W = N).

Peak memory is the rise of the process's resident set (VmHWM, reset through /proc/self/clear_refs
before each call) over the resident set just before the call: it counts torch's C++ allocations,
which tracemalloc would not see. The script re-executes itself with a fixed glibc mmap threshold
so freed tensors go back to the OS and cannot hide a later call's peak.

A measurement whose time or memory, extrapolated quadratically from the previous size, would pass
--max-seconds or --max-mib is skipped and reported as such. Also prints the compile latency per
example (parse to generated reference source, `attnspec.compile_source`, median of 5).

    python benchmarks/tile_schedule.py [--sizes 4096,16384,65536,131072] [--write] [--no-compiled]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch.nn.attention.flex_attention import create_block_mask

import attnspec
from attnspec.analysis.tiles import classify_tiles
from attnspec.api import load_program, lower, pick_spec
from common import (
    EXAMPLES,
    HEADS,
    ROOT,
    Budget,
    Sample,
    agreement_classes,
    consts_for,
    cpu_model,
    fmt_peak,
    fmt_time,
    mask_inputs,
    mask_mods,
    measure,
    ratio,
    reexec_with_fixed_malloc,
)

BLOCK = 128


# ------------------------------------------------------------------ the examples at N tokens


@dataclass
class Case:
    name: str
    n: int
    spec: object
    bq: int
    bk: int
    runtime: dict
    inputs: dict
    mask_mod: Callable | None = None
    uses_head: bool = False
    note: str = ""

    def schedule(self):
        sizes = {"B": 1, "H": HEADS, "HKV": HEADS // 2, "SQ": self.n, "SKV": self.n, "D": 64}
        tiles = classify_tiles(self.spec, self.bq, self.bk, sizes, self.runtime, self.inputs)
        return tiles, tiles.block_lists()

    def flex(self, fn=create_block_mask):
        return fn(self.mask_mod, 1, HEADS if self.uses_head else None, self.n, self.n, device="cpu",
                  BLOCK_SIZE=(self.bq, self.bk))


def make_case(path: Path, n: int) -> Case:
    name = path.stem
    consts = consts_for(name, n)
    spec = lower(pick_spec(load_program(path), None), consts)
    sel = spec.selection
    bq, bk = (sel.q_block.literal, sel.kv_block.literal) if sel is not None and not sel.dynamic else (BLOCK, BLOCK)
    runtime = {p.name: p.default.literal for p in spec.runtime_params if p.default is not None}
    inputs = mask_inputs(name, n, torch.Generator().manual_seed(n))
    mod = mask_mods(name, n, consts, inputs, spec)
    note = "mask only (selection is data-dependent)" if sel is not None and sel.dynamic else ""
    case = Case(name, n, spec, bq, bk, runtime, inputs, note=note)
    if mod is not None:
        case.mask_mod, case.uses_head = mod
    return case


def agreement(tiles, block_mask) -> str:
    """Share of tiles both classify alike; 'UNSOUND' if attnspec claims FULL / EMPTY where flex disagrees."""
    return agreement_classes(tiles.classes, block_mask)


# ------------------------------------------------------------------ report


def compile_latency(path: Path, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        attnspec.compile_source(path)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="4096,16384,65536,131072")
    parser.add_argument("--max-seconds", type=float, default=60.0)
    parser.add_argument("--max-mib", type=int, default=8192)
    parser.add_argument("--no-compiled", action="store_true", help="skip torch.compile(create_block_mask)")
    parser.add_argument("--only", default="", help="comma-separated example stems")
    parser.add_argument("--write", action="store_true", help="append the tables to benchmarks/RESULTS.md")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    paths = [p for p in EXAMPLES if not args.only or p.stem in args.only.split(",")]
    warnings.filterwarnings("ignore")
    budget = Budget(args.max_seconds, args.max_mib)
    started = time.perf_counter()

    ours_rows, flex_rows, compile_rows = [], [], []
    for path in paths:
        name = path.stem
        latency = compile_latency(path)
        compiled_fn, compile_s = None, None
        cells = []
        for n in sizes:
            case = make_case(path, n)
            ours = budget.run(f"{name}/attnspec", n, case.schedule)
            tiles = None if ours.skipped else ours.result[0]
            density = "" if tiles is None else f"{tiles.density()['visited']:.1%}"
            cells.append(f"{fmt_time(ours)}, {fmt_peak(ours)}" + (f", {density}" if density else ""))
            if case.mask_mod is None:
                ours.result = None
                continue
            if n == sizes[0]:
                make_case(path, 256).flex()  # the first eager call pays for vmap set-up
            eager = budget.run(f"{name}/eager", n, case.flex)
            agree = agreement(tiles, eager.result) if tiles is not None and not eager.skipped else ""
            compiled = Sample(skipped="--no-compiled")
            if not args.no_compiled:
                if compiled_fn is None:
                    torch._dynamo.reset()
                    compiled_fn = torch.compile(create_block_mask, dynamic=True)
                    first = measure(lambda: case.flex(compiled_fn), 1)
                    compile_s = first.seconds
                compiled = budget.run(f"{name}/compiled", n, lambda: case.flex(compiled_fn))
                if not agree and tiles is not None and not compiled.skipped:
                    agree = agreement(tiles, compiled.result)
            flex_rows.append(
                f"| {name} | {n // 1024}k | {HEADS if case.uses_head else 1} | {case.bq}x{case.bk} | {fmt_time(ours)} "
                f"| {fmt_peak(ours)} | {fmt_time(eager)} | {fmt_peak(eager)} | **{ratio(eager, ours)}** "
                f"| {fmt_time(compiled)} | {fmt_peak(compiled)} | **{ratio(compiled, ours)}** | {agree} |"
            )
            print(flex_rows[-1], flush=True)
            ours.result = eager.result = compiled.result = None
        spec0 = make_case(path, sizes[0])
        ours_rows.append(f"| {name} | {spec0.bq}x{spec0.bk} | " + " | ".join(cells) + f" | {spec0.note} |")
        print(ours_rows[-1], flush=True)
        compile_rows.append(
            f"| {name} | {latency * 1e3:.1f} ms | " + ("-" if compile_s is None else f"{compile_s:.1f} s") + " |"
        )
    elapsed = time.perf_counter() - started
    report = render(sizes, ours_rows, flex_rows, compile_rows, elapsed, args)
    print(report)
    if args.write:
        results = ROOT / "benchmarks" / "RESULTS.md"
        results.write_text(results.read_text().rstrip("\n") + "\n\n" + report)


def render(sizes, ours_rows, flex_rows, compile_rows, elapsed, args) -> str:
    size_heads = " | ".join(f"N = {n // 1024}k" for n in sizes)
    date = datetime.date.today().isoformat()
    return "\n".join([
        f"## Tile schedule build time: attnspec tile analysis vs `create_block_mask` ({date})",
        "",
        f"Device: {cpu_model()} ({os.cpu_count()} cores visible), CPU only. torch {torch.__version__}, "
        f"Python {platform.python_version()}, attnspec {attnspec.__version__}. "
        f"Script: `python benchmarks/tile_schedule.py --sizes {','.join(map(str, sizes))}` "
        f"(wall time {elapsed / 60:.1f} min).",
        "",
        "SQ = SKV = N, B = 1, H = 8, tiles 128 x 128 (the spec's own blocks for a static rule). attnspec: "
        "`classify_tiles` + `block_lists()`. Anchor: `create_block_mask` with a hand-written mask_mod, eager and "
        "`torch.compile(create_block_mask, dynamic=True)` (steady state; its first call is the compile time below), "
        "H = None when the mask ignores the head (the H column), as attnspec's classes broadcast too. "
        "Time: best of 3 (one run when a call takes over 2 s; the best, not the median, as other processes "
        "share this machine). Peak: rise of the process's peak resident set "
        "(VmHWM, reset before each call) over its resident set before the call, so torch's C++ allocations count. "
        "Ratio: create_block_mask time / attnspec time (higher: attnspec faster). Agree: share of tiles both "
        "classify alike (attnspec may answer partial where flex knows full or empty; it never may the reverse). "
        f"Skipped: predicted over {args.max_seconds:.0f} s or {args.max_mib // 1024} GiB from the previous size (x N^2).",
        "",
        "| example | N | H | tiles | attnspec | peak | eager | peak | ratio | compiled | peak | ratio | agree |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        *flex_rows,
        "",
        "attnspec alone, every example (time, peak, tiles visited). Example params are the defaults but image / video",
        "dimensions follow N; examples with data-dependent selection classify their mask only.",
        "",
        f"| example | tiles | {size_heads} | note |",
        "|---|---|" + "---|" * len(sizes) + "---|",
        *ours_rows,
        "",
        "Compile latency: parse to generated reference source (`attnspec.compile_source`, median of 5), and the "
        "first call of the compiled `create_block_mask` (dynamo + inductor, cold inductor cache) where measured.",
        "",
        "| example | attnspec compile_source | torch.compile(create_block_mask) first call |",
        "|---|---|---|",
        *compile_rows,
        "",
    ])


if __name__ == "__main__":
    reexec_with_fixed_malloc("tile_schedule_inductor_")
    main()
