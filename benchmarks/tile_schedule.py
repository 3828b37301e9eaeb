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
import math
import os
import platform
import re
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

if "MALLOC_MMAP_THRESHOLD_" not in os.environ:  # before torch allocates anything
    os.environ["MALLOC_MMAP_THRESHOLD_"] = str(1 << 20)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="tile_schedule_inductor_"))
    os.execv(sys.executable, [sys.executable] + sys.argv)

import torch  # noqa: E402
from torch.nn.attention.flex_attention import create_block_mask  # noqa: E402

import attnspec  # noqa: E402
from attnspec.analysis.tiles import EMPTY, FULL, PARTIAL, classify_tiles  # noqa: E402
from attnspec.api import load_program, lower, pick_spec  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.attn"))
HEADS = 8
BLOCK = 128


# ------------------------------------------------------------------ measuring


def _status(field_name: str) -> float:
    """A /proc/self/status field in MiB."""
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field_name}:\s+(\d+) kB", text).group(1)) / 1024


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


@dataclass
class Sample:
    seconds: float | None = None  # best of the runs
    peak_mib: float | None = None  # max over runs
    skipped: str | None = None
    result: object = None


def measure(fn: Callable[[], object], repeats: int) -> Sample:
    times, peaks, result = [], [], None
    for _ in range(repeats):
        result = None
        resettable = _reset_peak()
        before = _status("VmRSS")
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
        peaks.append(_status("VmHWM") - before if resettable else None)
        if times[-1] > 2.0:  # slow calls: one run is enough
            break
    peak = None if None in peaks else max(peaks)
    return Sample(min(times), peak, None, result)


class Budget:
    """Skip a size whose time or memory, extrapolated from the previous size (x N^2), is too large."""

    def __init__(self, max_seconds: float, max_mib: int):
        self.max_seconds, self.max_mib = max_seconds, max_mib
        self.last: dict[str, tuple[int, Sample]] = {}

    def run(self, key: str, n: int, fn: Callable[[], object], repeats: int = 3) -> Sample:
        if key in self.last:
            prev_n, prev = self.last[key]
            if prev.skipped:
                return Sample(skipped="a smaller N was skipped")
            growth = (n / prev_n) ** 2
            if prev.seconds * growth > self.max_seconds:
                return self._skip(key, n, f"~{prev.seconds * growth:.0f} s predicted")
            if prev.peak_mib is not None and prev.peak_mib * growth > self.max_mib:
                return self._skip(key, n, f"~{prev.peak_mib * growth / 1024:.0f} GiB predicted")
        try:
            sample = measure(fn, repeats)
        except (MemoryError, RuntimeError) as err:  # an allocation the machine cannot hold
            return self._skip(key, n, f"failed: {type(err).__name__}")
        self.last[key] = (n, sample)
        return sample

    def _skip(self, key: str, n: int, why: str) -> Sample:
        sample = Sample(skipped=why)
        self.last[key] = (n, sample)
        return sample


# ------------------------------------------------------------------ the examples at N tokens


def image_dims(n: int) -> tuple[int, int]:
    """(HT, W) with HT * W = n, as square as powers of two allow."""
    width = 2 ** math.ceil(math.log2(n) / 2)
    return n // width, width


def video_dims(n: int) -> tuple[int, int, int]:
    side = 2 ** math.ceil(math.log2(n) / 3)
    return n // (side * side), side, side


def consts_for(name: str, n: int) -> dict:
    """Compile-time params that follow the sequence length; everything else keeps its default."""
    if name in ("m02_natten2d", "m03_dilated_na", "m05_swin", "m06_maxvit_grid", "m08_criss_cross"):
        ht, w = image_dims(n)
        return {"HT": ht, "W": w} if name != "m08_criss_cross" else {"W": w}
    if name == "m02_natten3d":
        t, ht, w = video_dims(n)
        return {"T": t, "HT": ht, "W": w}
    return {}


def mask_inputs(name: str, n: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Values for the inputs a mask reads (the other inputs play no part in the schedule)."""
    if name == "b03_document":  # packed documents of random lengths, about 2k tokens each
        cuts = torch.randint(1, n, (max(n // 2048 - 1, 1),), generator=gen).sort().values
        ids = torch.bucketize(torch.arange(n), cuts, right=True).to(torch.int32)[None]
        return {"doc_q": ids, "doc_kv": ids}
    if name == "m15_moa":
        return {"alpha": torch.rand(HEADS, generator=gen) * 960 + 64, "beta": torch.rand(HEADS, generator=gen) * 0.05}
    if name == "m20_svg_heads":
        return {"kind": torch.randint(0, 2, (HEADS,), generator=gen, dtype=torch.int32)}
    return {}


def mask_mods(name: str, n: int, c: dict, inputs: dict, spec) -> tuple[Callable, bool] | None:
    """A hand-written FlexAttention mask_mod equal to the example's mask (and static rule), and
    whether it reads the head index. None where none was written."""
    p = {**{q.name: q.default.literal for q in spec.params if q.default is not None}, **c}
    if name in ("b01_causal", "b09_gqa"):
        return (lambda b, h, q, kv: kv <= q), False
    if name == "b02_sliding_window":
        w = p["window"]
        return (lambda b, h, q, kv: (q - kv).abs() <= w), False
    if name == "b03_document":
        doc = inputs["doc_q"][0]
        return (lambda b, h, q, kv: (doc[q] == doc[kv]) & (kv <= q)), False
    if name == "b05_streaming_sink":
        w, s = p["window"], p["sinks"]
        return (lambda b, h, q, kv: (kv <= q) & ((q - kv < w) | (kv < s))), False
    if name == "b08_static_blocks":
        def static_blocks(b, h, q, kv):
            i, j = q // 16, kv // 8
            keep = ((j // 2 <= i) & (i - j // 2 < 2)) | (j == 0) | ((h % 2 == 1) & (j % 4 == 3))
            return (kv <= q) & keep
        return static_blocks, True
    if name == "m01_prefix_lm":
        pre = p["prefix"]
        return (lambda b, h, q, kv: (kv <= q) | ((q < pre) & (kv < pre))), False
    if name == "m02_natten2d":
        w, ht, r = p["W"], p["HT"], p["r"]
        def natten2d(b, h, q, kv):
            qy, qx, ky, kx = q // w, q % w, kv // w, kv % w
            return ((ky - qy.clamp(r, ht - 1 - r)).abs() <= r) & ((kx - qx.clamp(r, w - 1 - r)).abs() <= r)
        return natten2d, False
    if name == "m08_criss_cross":
        w = p["W"]
        return (lambda b, h, q, kv: (q // w == kv // w) | (q % w == kv % w)), False
    if name == "m12_power_attention":
        bs, n_local, n_sink = p["BS"], p["n_local"], p["n_sink"]
        def power(b, h, q, kv):
            d = q // bs - kv // bs
            return (kv <= q) & ((d < n_local) | ((d & (d - 1)) == 0) | (kv // bs < n_sink))
        return power, False
    if name == "m14_ls_heads":
        n_local, w = p["n_local"], p["window"]
        return (lambda b, h, q, kv: (kv <= q) & ((h >= n_local) | (q - kv < w))), True
    if name == "m16_sinklora":
        gs, sinks = p["GS"], p["sinks"]
        def sinklora(b, h, q, kv):
            sh = torch.where(h >= HEADS // 2, gs // 2, 0)
            return (kv <= q) & (((q + sh) // gs == (kv + sh) // gs) | (kv < sinks))
        return sinklora, True
    if name == "m18_block_causal":
        chunk = p["C"]
        return (lambda b, h, q, kv: kv // chunk <= q // chunk), False
    return None


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


def flex_classes(block_mask, shape) -> torch.Tensor:
    """Dense EMPTY / PARTIAL / FULL per tile from a BlockMask's (partial, full) lists."""
    def dense(num, idx):
        listed = torch.arange(idx.shape[-1]) < num.unsqueeze(-1)
        out = torch.zeros(*idx.shape[:-1], shape[-1] + 1, dtype=torch.bool)
        return out.scatter(-1, torch.where(listed, idx.long(), shape[-1]), True)[..., : shape[-1]]

    partial = dense(block_mask.kv_num_blocks, block_mask.kv_indices)
    full = dense(block_mask.full_kv_num_blocks, block_mask.full_kv_indices)
    return torch.where(full, FULL, torch.where(partial, PARTIAL, EMPTY))


def agreement(tiles, block_mask) -> str:
    """Share of tiles both classify alike; 'UNSOUND' if attnspec claims FULL / EMPTY where flex disagrees."""
    ours = tiles.classes.long()
    theirs = flex_classes(block_mask, ours.shape)
    ours, theirs = torch.broadcast_tensors(ours, theirs)
    wrong = ((ours == FULL) & (theirs != FULL)) | ((ours == EMPTY) & (theirs != EMPTY))
    if bool(wrong.any()):
        return f"UNSOUND ({int(wrong.sum())} tiles)"
    return f"{float((ours == theirs).double().mean()):.1%}"


# ------------------------------------------------------------------ report


def fmt_time(s: Sample) -> str:
    if s.skipped:
        return f"skipped ({s.skipped})"
    return f"{s.seconds * 1e3:.1f} ms" if s.seconds < 10 else f"{s.seconds:.1f} s"


def fmt_peak(s: Sample) -> str:
    if s.skipped or s.peak_mib is None:
        return "-"
    return f"{s.peak_mib:.1f} MiB" if s.peak_mib < 100 else f"{s.peak_mib:.0f} MiB"


def ratio(anchor: Sample, ours: Sample) -> str:
    if anchor.skipped or ours.skipped or not ours.seconds:
        return "-"
    return f"{anchor.seconds / ours.seconds:.1f}x"


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


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
    main()
