"""What the benchmarks share: measuring time and peak memory, the skip-by-extrapolation budget, the
examples at N tokens with hand-written FlexAttention mask_mods, BlockMask comparison, formatting.

Importing it has no side effects beyond importing torch and attnspec; a script that wants the fixed
glibc mmap threshold (so freed tensors go back to the OS and cannot hide a later call's peak) calls
`reexec_with_fixed_malloc()` first thing in its `__main__` block.
"""

from __future__ import annotations

import math
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from attnspec.analysis.tiles import EMPTY, FULL, PARTIAL

ROOT = Path(__file__).resolve().parent.parent
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
