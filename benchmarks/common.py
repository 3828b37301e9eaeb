"""What the benchmarks share: measuring time and peak memory (CPU and GPU, single calls and interleaved
rounds), the skip-by-extrapolation budget, the examples at N tokens with hand-written FlexAttention
mask_mods / score_mods and their dense SDPA masks, BlockMask comparison, formatting, and the sections
of RESULTS.md whose rows merge across runs.

Importing it has no side effects beyond importing torch and attnspec; a script that wants the fixed
glibc mmap threshold (so freed tensors go back to the OS and cannot hide a later call's peak) calls
`reexec_with_fixed_malloc()` first thing in its `__main__` block.
"""

from __future__ import annotations

import math
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Callable

import torch

import attnspec
from attnspec.analysis.tiles import EMPTY, FULL, PARTIAL
from attnspec.api import load_program, lower, pick_spec

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
EXAMPLES = sorted((ROOT / "examples").glob("*.attn"))
HEADS = 8


def reexec_with_fixed_malloc(cache_prefix: str) -> None:
    """Re-execute this script with MALLOC_MMAP_THRESHOLD_ fixed (glibc reads it at start-up only) and
    a fresh inductor cache directory, unless that was done already."""
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        os.environ["MALLOC_MMAP_THRESHOLD_"] = str(1 << 20)
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix=cache_prefix))
        sys.stdout.flush()
        os.execv(sys.executable, [sys.executable] + sys.argv)


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
    median: float | None = None  # median of the runs


def measure(fn: Callable[[], object], repeats: int) -> Sample:
    """Best time of `repeats` calls (one when a call takes over 2 s) and the peak rise of the
    resident set (VmHWM) over the resident set before each call."""
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
    return Sample(min(times), peak, None, result, statistics.median(times))


class Budget:
    """Skip a size whose time or memory, extrapolated from the previous size (x N^2), is too large."""

    def __init__(self, max_seconds: float, max_mib: int, measure_fn: Callable[[Callable, int], Sample] = measure):
        self.max_seconds, self.max_mib, self.measure_fn = max_seconds, max_mib, measure_fn
        self.last: dict[str, tuple[int, Sample]] = {}

    def predict(self, key: str, n: int) -> str | None:
        """Why a call at size n would be skipped, or None."""
        if key not in self.last:
            return None
        prev_n, prev = self.last[key]
        if prev.skipped:
            return "a smaller N was skipped"
        growth = (n / prev_n) ** 2
        if prev.seconds * growth > self.max_seconds:
            return f"~{prev.seconds * growth:.0f} s predicted"
        if prev.peak_mib is not None and prev.peak_mib * growth > self.max_mib:
            return f"~{prev.peak_mib * growth / 1024:.0f} GiB predicted"
        return None

    def record(self, key: str, n: int, sample: Sample) -> Sample:
        self.last[key] = (n, sample)
        return sample

    def run(self, key: str, n: int, fn: Callable[[], object], repeats: int = 3) -> Sample:
        why = self.predict(key, n)
        if why == "a smaller N was skipped":
            return Sample(skipped=why)
        if why:
            return self.record(key, n, Sample(skipped=why))
        try:
            sample = self.measure_fn(fn, repeats)
        except (MemoryError, RuntimeError) as err:  # an allocation the machine cannot hold
            return self.record(key, n, Sample(skipped=f"failed: {type(err).__name__}"))
        return self.record(key, n, sample)


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measure_cuda(fn: Callable[[], object], repeats: int) -> Sample:
    """`measure` for the GPU: wall time around a synchronized call, peak of the caching allocator."""
    times, peaks, result = [], [], None
    for _ in range(repeats):
        result = None
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        start = time.perf_counter()
        result = fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        peaks.append((torch.cuda.max_memory_allocated() - before) / 2**20)
        if times[-1] > 2.0:
            break
    return Sample(min(times), max(peaks), None, result, statistics.median(times))


def timed_call(fn: Callable[[], object], device: str) -> float:
    """Seconds of one call: CUDA events on the GPU, the wall clock on the CPU."""
    if device == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(fns: dict[str, Callable[[], object]], device: str, reps: int) -> dict[str, Sample]:
    """One warm-up round, then `reps` rounds calling each function once; best and median per function."""
    times: dict[str, list[float]] = {key: [] for key in fns}
    for round_ in range(reps + 1):
        for key, fn in fns.items():
            seconds = timed_call(fn, device)
            if round_:
                times[key].append(seconds)
    return {key: Sample(min(t), None, None, None, statistics.median(t)) for key, t in times.items()}


def failed(err: BaseException) -> Sample:
    traceback.print_exception(err, file=sys.stderr)
    text = str(err).strip().splitlines()[0][:60] if str(err).strip() else ""
    return Sample(skipped=f"failed: {type(err).__name__}" + (f": {text}" if text else ""))


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
    if name in ("b01_causal", "b09_gqa", "b10_rope"):  # B10 at SQ = SKV: plain causal
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


# ------------------------------------------------------------------ the variants


EXTRA_CONSTS = {"b02_sliding_window": {"window": 256}}  # the file's 8 is a 17-token band


@dataclass
class Variant:
    name: str
    n: int
    module: ModuleType  # the generated flex module
    kwargs: dict  # its inputs and runtime params
    mask_mod: Callable | None  # hand-written
    score_mod: Callable | None  # hand-written
    scale: float | None = None
    bias: bool = False  # the score mod adds a bias(b, h, q, kv): SDPA gets it as a float mask
    sdpa_note: str = ""
    compile_s: float = 0.0  # attnspec.compile, uncached
    params: dict = field(default_factory=dict)
    prologue: Callable | None = None  # (q, k) -> (q, k) in torch before the anchors' attention (B10's RoPE)


def make_variant(name: str, n: int, device: str, heads: int, batch: int) -> Variant:
    """An example at N tokens: its generated flex module, mask inputs, runtime params and the
    hand-written mods (None where none was written)."""
    path = ROOT / "examples" / f"{name}.attn"
    consts = {**consts_for(name, n), **EXTRA_CONSTS.get(name, {})}
    spec = lower(pick_spec(load_program(path), None), consts)
    runtime = {"prefix": n // 4} if name == "m01_prefix_lm" else {}
    p = {**{q.name: q.default.literal for q in spec.params if q.default is not None}, **consts, **runtime}
    inputs = mask_inputs(name, n, torch.Generator().manual_seed(n))
    gen = torch.Generator().manual_seed(0)
    if name == "b04_alibi":  # the usual geometric slopes
        inputs["slope"] = 2.0 ** (-8.0 * torch.arange(1, heads + 1, dtype=torch.float32) / heads)
    if name == "m02_natten2d":
        inputs["rpb"] = torch.randn(heads, 4 * p["r"] + 1, 4 * p["r"] + 1, generator=gen) * 0.5
    inputs = {k: (v.expand(batch, -1) if k.startswith("doc_") else v).contiguous().to(device) for k, v in inputs.items()}

    start = time.perf_counter()
    module = attnspec.compile(path, "flex", cache=False, **consts)
    compile_s = time.perf_counter() - start

    hand = mask_mods(name, n, {**consts, **runtime}, inputs, spec)
    mask_mod = hand[0] if hand is not None else None
    if hand is not None and hand[1]:
        raise NotImplementedError(f"{name}: a head-dependent mask (this script passes H=None)")
    v = Variant(name, n, module, {**inputs, **runtime}, mask_mod, None, compile_s=compile_s, params=p)
    if name == "b04_alibi":
        slope = inputs["slope"]
        v.score_mod = lambda s, b, h, q, kv: s - slope[h] * (q - kv).abs()
        v.bias, v.sdpa_note = True, "float bias [1, H, N, N]"
    elif name == "b07_softcap":
        cap = float(p["cap"])
        v.mask_mod = lambda b, h, q, kv: kv <= q
        v.score_mod = lambda s, b, h, q, kv: cap * torch.tanh(s / cap)
        v.scale, v.sdpa_note = 0.5, "bool mask only: no soft-cap (time reference)"
    elif name == "m02_natten2d":
        rpb, w, r = inputs["rpb"], p["W"], p["r"]

        def natten_bias(s, b, h, q, kv):  # indices clamped: partial tiles evaluate it on masked pairs too
            dy = (kv // w - q // w + 2 * r).clamp(0, 4 * r)
            dx = (kv % w - q % w + 2 * r).clamp(0, 4 * r)
            return s + rpb[h, dy, dx]

        v.score_mod = natten_bias
        v.bias, v.sdpa_note = True, "float bias [1, H, N, N], -inf outside the window"
    elif name == "b10_rope":
        base = float(p["base"])
        v.prologue = lambda q, k: (torch_rope(q, base), torch_rope(k, base))
        v.sdpa_note = "RoPE in torch, then is_causal=True"
    if not v.sdpa_note:
        v.sdpa_note = "bool mask [1, 1, N, N]"
    return v


def torch_rope(x: torch.Tensor, base: float) -> torch.Tensor:
    """RoPE as models apply it before their attention (rotate_half pairing, position i, frequencies
    base^(-2f / D)): B10's prologue for SQ = SKV, written directly in torch."""
    n, d = x.shape[-2], x.shape[-1]
    half = d // 2
    angle = torch.arange(n, device=x.device, dtype=torch.float32)[:, None] * base ** (
        -2.0 * torch.arange(half, device=x.device, dtype=torch.float32) / d)
    cos, sin = angle.cos(), angle.sin()
    first, second = x[..., :half].float(), x[..., half:].float()
    return torch.cat([first * cos - second * sin, second * cos + first * sin], dim=-1).to(x.dtype)


DENSE_CHUNK = 1 << 24  # elements of one row chunk of a dense mask: its int64 temporaries stay ~128 MiB


def _sdpa_mask_rows(v: Variant, heads: int, batch: int, device: str, dtype: torch.dtype, start: int, stop: int):
    """Rows [start, stop) of the dense mask (see sdpa_mask), or None where there is nothing to pass."""
    b = torch.arange(batch, device=device).view(-1, 1, 1, 1)
    h = torch.arange(heads, device=device).view(1, -1, 1, 1)
    q = torch.arange(start, stop, device=device).view(1, 1, -1, 1)
    kv = torch.arange(v.n, device=device).view(1, 1, 1, -1)
    keep = v.mask_mod(b, h, q, kv) if v.mask_mod is not None else None
    if not v.bias:
        return keep
    bias = v.score_mod(torch.zeros((1, 1, 1, 1), device=device), b, h, q, kv)
    if keep is not None:
        bias = bias.masked_fill(~keep, -math.inf)
    return bias.to(dtype)


def sdpa_mask_shape(v: Variant, heads: int, device: str, batch: int = 1) -> tuple[int, ...] | None:
    """The dense mask's shape: [B or 1, H or 1, N, N] as its mods read the batch and head (probed on
    one row), or None where SDPA gets no mask."""
    probe = _sdpa_mask_rows(v, heads, batch, device, torch.float32, 0, 1)
    return None if probe is None else (*probe.shape[:2], v.n, v.n)


def sdpa_mask(v: Variant, heads: int, device: str, dtype: torch.dtype, batch: int = 1) -> torch.Tensor | None:
    """The dense mask SDPA takes: the mods evaluated on the whole [N, N] grid, filled in row chunks.
    Boolean where the mods only mask; where the score mod is a bias, that bias in `dtype` with -inf
    at masked pairs."""
    shape = sdpa_mask_shape(v, heads, device, batch)
    if shape is None:
        return None
    out = torch.empty(shape, dtype=dtype if v.bias else torch.bool, device=device)
    rows = max(1, DENSE_CHUNK // (v.n * shape[0] * shape[1]))
    for start in range(0, v.n, rows):
        stop = min(start + rows, v.n)
        out[:, :, start:stop] = _sdpa_mask_rows(v, heads, batch, device, dtype, start, stop)
    return out


# ------------------------------------------------------------------ comparing BlockMasks


def flex_classes(block_mask, shape) -> torch.Tensor:
    """Dense EMPTY / PARTIAL / FULL per tile from a BlockMask's (partial, full) lists."""
    def dense(num, idx):
        listed = torch.arange(idx.shape[-1], device=idx.device) < num.unsqueeze(-1)
        out = torch.zeros(*idx.shape[:-1], shape[-1] + 1, dtype=torch.bool, device=idx.device)
        return out.scatter(-1, torch.where(listed, idx.long(), shape[-1]), True)[..., : shape[-1]]

    partial = dense(block_mask.kv_num_blocks, block_mask.kv_indices)
    full = dense(block_mask.full_kv_num_blocks, block_mask.full_kv_indices)
    return torch.where(full, FULL, torch.where(partial, PARTIAL, EMPTY))


def agreement_classes(ours: torch.Tensor, block_mask) -> str:
    """Share of tiles classified alike by `ours` (EMPTY / PARTIAL / FULL per tile) and a BlockMask;
    'UNSOUND' if ours claims FULL / EMPTY where the BlockMask disagrees."""
    ours = ours.long()
    theirs = flex_classes(block_mask, ours.shape).to(ours.device)
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


def versions(device: str) -> str:
    where = f"{cpu_model()} ({os.cpu_count()} cores visible)"
    if device == "cuda":
        where = f"{torch.cuda.get_device_name()} (CUDA {torch.version.cuda}), host {where}"
    return (f"Device: {where}. torch {torch.__version__}, Python {platform.python_version()}, "
            f"attnspec {attnspec.__version__}")


# ------------------------------------------------------------------ RESULTS.md sections whose rows merge

PENDING = "pending"


@dataclass(frozen=True)
class Section:
    """The section of RESULTS.md that one script writes, between its markers: a heading and intro, then
    one block per GPU model (a "pending" one until a GPU block exists), each listing the runs that made
    it, the method and its tables. A table's rows merge across runs by (variant, N, D): a row of a new
    run replaces the row of the same key, the others stay; other blocks and the rest of the file are
    kept."""

    script: str  # the script's file name: its markers and run lines name it
    intro: str  # the heading and the paragraph under it
    method: str  # the paragraph above the tables
    tables: tuple[tuple[str, str], ...]  # per table: its header line and the note above it ('' for none)
    order: tuple[str, ...]  # the variants, in the order rows sort by

    @property
    def begin(self) -> str:
        return f"<!-- {self.script}: begin -->"

    @property
    def end(self) -> str:
        return f"<!-- {self.script}: end -->"

    def device_begin(self, key: str) -> str:
        return f"<!-- {self.script} {key}: begin -->"

    def device_end(self, key: str) -> str:
        return f"<!-- {self.script} {key}: end -->"

    @property
    def run_prefix(self) -> str:
        """How the run lines of a block start."""
        return f"- `python benchmarks/{self.script}"

    def pending_block(self) -> str:
        return "\n".join([
            self.device_begin(PENDING),
            "### GPU: pending",
            "",
            f"No GPU run yet: `python benchmarks/{self.script} --write` on a CUDA machine fills this block "
            "(a sweep longer than one sitting splits with --only / --dims / --sizes, or stops in time with "
            "--max-minutes: rows merge by variant, N and D).",
            self.device_end(PENDING),
        ])

    def render(self, key: str, title: str, rows: list[list[str]], runs: list[str]) -> str:
        """A device block: its runs, the method, then each table with its rows."""
        lines = [self.device_begin(key), f"### {title}", "", "Runs:", "", *runs, "", self.method]
        for (header, note), table in zip(self.tables, rows):
            lines += ["", *([note, ""] if note else []), header, "|" + "---|" * (header.count("|") - 1), *table]
        return "\n".join([*lines, self.device_end(key)])

    def blocks(self, text: str) -> dict[str, str]:
        """The device blocks of the section in a RESULTS.md text, by key."""
        if self.begin not in text or self.end not in text:
            return {}
        section = text.split(self.begin, 1)[1].split(self.end, 1)[0]
        name = re.escape(self.script)
        pattern = re.compile(rf"<!-- {name} (.+?): begin -->\n(.*?)<!-- {name} \1: end -->", re.S)
        return {m.group(1): m.group(0) for m in pattern.finditer(section)}

    def merged(self, key: str, title: str, rows: list[list[str]], run: str, path: Path = RESULTS) -> str:
        """This run's rows over the rows of the block already in `path` under the same key, and its
        run line after the ones listed there."""
        old = self.blocks(path.read_text()).get(key, "")
        runs = [line for line in old.splitlines() if line.startswith(self.run_prefix)]
        tables = [self.merge_rows(table_rows(old, header), new) for (header, _), new in zip(self.tables, rows)]
        return self.render(key, title, tables, [*runs, run])

    def row_key(self, row: str) -> tuple:
        """(variant, N, D) of a row, as a sort key: the script's variant order, then D, then N."""
        name, n, d = (cell.strip() for cell in row.strip("|").split("|")[:3])
        name = name.split()[0]
        tokens = float(n[:-1]) * 1024 if n.endswith("k") else float(n)
        return (self.order.index(name) if name in self.order else len(self.order), name, int(d), tokens)

    def merge_rows(self, old: list[str], new: list[str]) -> list[str]:
        rows = {self.row_key(row): row for row in old}
        rows.update({self.row_key(row): row for row in new})
        return [rows[key] for key in sorted(rows)]

    def write(self, blocks: dict[str, str], path: Path = RESULTS) -> None:
        """Replace the section's blocks of these keys (other blocks stay; the pending one goes once a
        GPU block exists); the section goes at the end of the file the first time."""
        text = path.read_text()
        kept = {**self.blocks(text), **blocks}
        if any(key != PENDING for key in kept):
            kept.pop(PENDING, None)
        elif not kept:
            kept[PENDING] = self.pending_block()
        if self.begin in text and self.end in text:
            head, rest = text.split(self.begin, 1)
            tail = rest.split(self.end, 1)[1]
        else:
            head, tail = text.rstrip("\n") + "\n\n", "\n"
        parts = [self.begin, self.intro, ""] + [block + "\n" for block in kept.values()]
        path.write_text(head + "\n".join(parts) + self.end + tail)

    def check_writer(self, key: str, title: str, rows: list[list[str]], run: str, path: Path = RESULTS) -> None:
        """--smoke: write the section twice into a temporary copy of `path` (the second merges into the
        first) and check that rows are not doubled and that the rest of the file is unchanged."""
        original = path.read_text()
        with tempfile.TemporaryDirectory() as tmp:
            copy = Path(tmp) / path.name
            shutil.copy(path, copy)
            for _ in range(2):
                self.write({key: self.merged(key, title, rows, run, copy)}, copy)
            written = copy.read_text()
        span = re.escape(self.begin) + ".*?" + re.escape(self.end)
        outside = lambda text: re.sub(span, "", text, flags=re.S)  # noqa: E731
        block = self.blocks(written)[key]
        assert outside(written).rstrip("\n") == outside(original).rstrip("\n"), f"the rest of {path.name} changed"
        for (header, _), table in zip(self.tables, rows):
            assert len(table_rows(block, header)) == len(table), "merged rows doubled or lost"
        assert block.count(self.run_prefix) == 2, "runs not listed once per write"
        print(f"section writer: ok (checked on a temporary copy of {path.name})")


def table_rows(block: str, header: str) -> list[str]:
    """The rows of the table under `header` in a rendered block."""
    lines = block.splitlines()
    if header not in lines:
        return []
    rows = []
    for line in lines[lines.index(header) + 2:]:
        if not line.startswith("|"):
            break
        rows.append(line)
    return rows
