"""What generated triton modules call at run time: argument checks, the kernel configuration, the
tile schedule (block tables from tile classes) and the flattening of inputs into kernel arguments.

Kept here rather than in every generated module: one implementation, tested once.
"""

from __future__ import annotations

import functools
import math
import os
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch

from .tiles import FULL, PARTIAL, readable
from .blocks import class_lists

KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


_DROPPED_BITS = {torch.bfloat16: 16, torch.float16: 13}  # float32's 23 mantissa bits against 7 and 10


def upcasts(q) -> int:
    """Whether half tiles compute in float32 (in the interpreter, which has no half-precision products):
    0 where they do not, else how many of float32's mantissa bits q's type lacks, so that the kernels
    round what the GPU casts to that type as the cast would (kernel.operand)."""
    return _DROPPED_BITS.get(q.dtype, 0) if interpreting() else 0


@dataclass(frozen=True)
class Launch:
    """One kernel launch as the host code would make it: what `attnspec.aot` compiles for a GPU."""

    kernel: object  # a triton JITFunction
    grid: tuple
    args: tuple
    meta: dict  # constexprs and launch options (num_warps, num_stages)
    candidate: int  # which of the autotuner's candidates this launch belongs to (0: the first)
    group: int = 0  # which autotuned launch (one per `launch` call; a launch made outside one has its own)


@dataclass
class Recording:
    every_candidate: bool  # record the launches of every autotune candidate, or only the default's
    launches: list
    candidate: int = 0
    capability: int = 90  # the compute capability the launches are compiled for (90: Hopper, sm_90a)
    group: int = 0  # the current autotuned launch (see Launch.group)
    tuning: bool = False  # within one (every launch has the group of its call)


_RECORDING: list[Recording | None] = [None]


@contextmanager
def recording(every_candidate: bool = False, capability: int = 90):
    """Within this block the host code runs as on a GPU of this compute capability (90: Hopper), on
    tensors of any device, but its kernel launches are collected (yielded list of Launch) instead of
    made: nothing is computed, the outputs hold whatever torch.empty gave them."""
    before, _RECORDING[0] = _RECORDING[0], Recording(every_candidate, [], capability=capability)
    try:
        yield _RECORDING[0].launches
    finally:
        _RECORDING[0] = before


def start(kernel, grid, *args, **meta) -> None:
    """Launch a kernel on a grid (or record the launch, see recording)."""
    rec = _RECORDING[0]
    if rec is not None:
        if not rec.tuning:
            rec.group += 1
        rec.launches.append(Launch(kernel, tuple(grid), args, meta, rec.candidate, rec.group))
        return
    kernel[grid](*args, **meta)


def recording_launches():
    """The recording in progress (launches are collected, not made), or None."""
    return _RECORDING[0]


def kernels_run(q) -> bool:
    """Whether kernels launch for these tensors: on CUDA, in the interpreter, or recorded (aot)."""
    return q.device.type == "cuda" or interpreting() or _RECORDING[0] is not None


def _on_gpu(q) -> bool:
    """Whether kernels run (or, recording, would run) compiled for a GPU rather than interpreted."""
    return _RECORDING[0] is not None or (q.device.type == "cuda" and not interpreting())


_POISONED = [False]


@contextmanager
def poisoned_outputs():
    """Within this block, kernel outputs start as NaN, so an element the kernel never writes shows
    (design.md section 6). Used by the tests and `attnspec fuzz`; torch.empty otherwise."""
    before, _POISONED[0] = _POISONED[0], True
    try:
        yield
    finally:
        _POISONED[0] = before


def output_buffer(shape, dtype, device) -> torch.Tensor:
    if _POISONED[0]:
        return torch.full(shape, math.nan, dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def check_launch(name: str, q, k, v, inputs=(), backward_error: str | None = None) -> bool:
    """Clear errors for what the kernel cannot do, before anything is launched; whether the call
    needs gradients (grad mode on, and q, k, v or a float input requires grad)."""
    if q.dtype not in KERNEL_DTYPES:
        raise TypeError(
            f"{name}: the triton kernel computes on float32, bfloat16 or float16 inputs, got {q.dtype}; "
            "the reference target computes in float64"
        )
    if q.device.type != "cuda" and not interpreting() and _RECORDING[0] is None:
        raise RuntimeError(
            f"{name}: the triton target runs on CUDA tensors (q is on {q.device}); on the CPU, set "
            "TRITON_INTERPRET=1 before importing the module to run the kernel in Triton's interpreter"
        )
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, *inputs))
    if needs_grad and backward_error is not None:
        raise NotImplementedError(
            f"{name}: the triton target has no backward for this spec ({backward_error}); train with the "
            "reference or flex target, or call it under torch.no_grad()"
        )
    return needs_grad


def tf32_products() -> bool:
    """Whether float32 tile products may use TF32 tensor cores: exactly when torch's own float32
    matmuls on CUDA do (`torch.set_float32_matmul_precision("high")`, `allow_tf32 = True`)."""
    precision = getattr(torch.backends.cuda.matmul, "fp32_precision", "none")
    if precision in ("tf32", "ieee"):
        return precision == "tf32"
    return torch.get_float32_matmul_precision() != "highest"


@dataclass(frozen=True)
class Config:
    block_m: int
    block_n: int
    block_d: int
    block_dv: int
    num_warps: int
    num_stages: int
    ieee: bool  # float32 products without TF32 (unless torch allows TF32, see tf32_products)
    upcast: int  # half tiles computed in float32 (the interpreter): the mantissa bits the half type drops (upcasts)
    fused: bool = False  # the forward kernel applies the q prologue and the epilogue (runtime/launch.py forward)
    tma: bool = False  # K, V (and the dQ kernel's Q, dO) tiles through tensor descriptors (Hopper's copy engine)


def split_weights() -> bool:
    """ATTNSPEC_SPLIT_WEIGHTS: "1" (the default), the forward run for a backward multiplies its weights
    in two half operands (kernel.mma_split), so that the backward's Delta = rowsum(dO * out) matches the
    weights it recomputes; "0", in one, as FlashAttention does: one product fewer per key tile, and the
    gradients that sum dS over pairs carry the forward's rounding (docs/triton.md)."""
    return os.environ.get("ATTNSPEC_SPLIT_WEIGHTS", "1") != "0"


# ---------------------------------------------------------------- tensor descriptors (TMA)


def tma_mode() -> str:
    """ATTNSPEC_TMA: "auto" (the default: tensor descriptors on GPUs with the copy engine, compute
    capability 9 and up), "0" (never), "1" (wherever the tensors allow, the interpreter included)."""
    mode = os.environ.get("ATTNSPEC_TMA", "auto")
    return mode if mode in ("0", "1") else "auto"


def tma_capable(q) -> bool:
    """Whether the kernels for q load their tiles through tensor descriptors: on Hopper and later (or
    recording for it), where Triton has host-side descriptors; never with ATTNSPEC_TMA=0, also in the
    interpreter with ATTNSPEC_TMA=1 (which checks the descriptors' semantics on the CPU)."""
    mode = tma_mode()
    if mode == "0" or not _has_descriptors():
        return False
    rec = _RECORDING[0]
    if rec is not None:
        return rec.capability >= 90
    if q.device.type == "cuda" and not interpreting():
        return capability(q.device) >= 90
    return mode == "1" and interpreting()


def capability(device) -> int:
    """A CUDA device's compute capability as one number (90: Hopper), 0 where CUDA is not available."""
    if not torch.cuda.is_available():
        return 0
    major, minor = torch.cuda.get_device_capability(device)
    return 10 * major + minor


@functools.cache
def _has_descriptors() -> bool:
    """Whether this Triton has host-side tensor descriptors (before them: pointers only)."""
    import importlib.util

    try:
        return importlib.util.find_spec("triton.tools.tensor_descriptor") is not None
    except ImportError:
        return False


def describable(t: torch.Tensor) -> bool:
    """Whether the copy engine can read t [B, H, rows, features] as it is: the features contiguous,
    the start and every other stride 16-byte aligned, no broadcast (stride 0) axis of more than one
    element. Where it cannot, the kernels take pointers (the same tile shapes)."""
    if t.dim() != 4 or t.stride(-1) != 1 or t.data_ptr() % 16:
        return False
    return all(stride > 0 and stride * t.element_size() % 16 == 0 for stride in _packed_strides(t)[:-1])


def descriptors(use: bool, *tiles) -> tuple:
    """One tensor descriptor per (tensor [B, H, rows, features], rows per tile, features per tile):
    its block is one tile of one (batch, head) matrix, [1, 1, rows, features], the features padded to
    their tile with zeros as the loads' masks would. (None, ...) where `use` is false or any tensor is
    not describable: the kernels then take pointers."""
    tensors = [t for t, _rows, _cols in tiles]
    if not use or not all(describable(t) for t in tensors):
        return (None,) * len(tiles)
    from triton.tools.tensor_descriptor import TensorDescriptor

    return tuple(TensorDescriptor(t, list(t.shape), _packed_strides(t), [1, 1, rows, cols]) for t, rows, cols in tiles)


def _packed_strides(t: torch.Tensor) -> list[int]:
    """t's strides, those of single-element axes (never stepped along, but checked by the copy engine's
    encoding) replaced by the packed stride."""
    strides = list(t.stride())
    for axis in range(t.dim() - 2, -1, -1):
        if t.shape[axis] == 1:
            strides[axis] = strides[axis + 1] * t.shape[axis + 1]
    return strides


def kernel_config(q, v) -> Config:
    """The default tile sizes and launch options for these head dims (the first candidate)."""
    return candidate_configs(q, v)[0]


# (BLOCK_M, BLOCK_N, num_warps, num_stages) tried on a GPU, per padded head dim; the first is the default.
# Chosen from `attnspec aot --all-candidates` for sm_90a in bf16 (docs/triton.md): 128-row tiles on 8 warps
# (two warpgroups of wgmma m64) take 127-205 registers and spill nothing where 4 warps take 239-255 and
# spill up to 908 bytes at D = 128 (B01, B07, M02); the autotuner skips the candidates that do not fit.
_GPU_CANDIDATES = {
    64: ((128, 64, 8, 3), (128, 128, 8, 3), (64, 64, 4, 3), (128, 32, 4, 3), (128, 128, 8, 2)),
    128: ((128, 64, 8, 3), (128, 64, 8, 2), (64, 64, 4, 3), (128, 128, 8, 2), (64, 32, 4, 2)),
    256: ((128, 64, 8, 2), (64, 32, 4, 2), (64, 64, 4, 2), (32, 64, 4, 2)),  # also TF32 float32 at D = 128
}


# the backward kernels hold more tiles at once (q, dO, dq or k, v, dk, dv): smaller tiles, fewer stages.
# Chosen from `attnspec aot --backward --all-candidates` for sm_90a in bf16 (docs/triton.md): at D = 128,
# 64 x 64 tiles on 4 warps spill 80-148 bytes in M02's dQ and dK/dV kernels, 64 x 32 on 4 warps do not.
_GPU_BACKWARD_CANDIDATES = {
    64: ((64, 64, 8, 2), (64, 64, 4, 2), (128, 64, 8, 2), (64, 32, 4, 2), (128, 32, 8, 2)),
    128: ((64, 32, 4, 2), (128, 32, 8, 2), (64, 64, 8, 2), (32, 64, 4, 2)),
    256: ((32, 32, 4, 1), (64, 32, 4, 1), (32, 64, 4, 1)),
}


# A spec whose kernels pick entries of per-row tables for each pair (tl.gather, codegen/table_tiles.py)
# holds more per pair: at D = 128, DeBERTa's two tables spill 124-140 bytes in the backward's 64 x 32
# tiles on 4 warps, and 64 x 16 on 4 warps or 128 x 16 on 8 do not; those come first for such a spec.
_GPU_BACKWARD_NARROW = {64: (), 128: ((64, 16, 4, 2), (128, 16, 8, 2)), 256: ()}


# IEEE float32 (torch's "highest" precision) multiplies on FMA units, and Triton's FMA products hold the
# whole contraction of each thread's rows and columns in registers: every candidate above spills there
# (1.6-82 KB at D = 64 and 128, B01, sm_90a). Small tiles on many warps do not (`attnspec aot --dtype
# fp32`, B01, B04, B07, M02, S02 forward; B01, B04, M02 backward): per padded head dim,
_GPU_IEEE_CANDIDATES = {
    64: ((64, 64, 16, 2), (32, 64, 8, 2), (64, 32, 8, 2), (32, 32, 4, 2)),
    128: ((64, 64, 16, 2), (32, 64, 8, 2), (32, 16, 4, 2)),
    256: ((32, 32, 16, 1), (32, 16, 8, 1), (16, 32, 8, 1)),
}
_GPU_IEEE_BACKWARD_CANDIDATES = {
    64: ((32, 32, 16, 1), (32, 16, 8, 1), (16, 32, 8, 1)),
    128: ((32, 16, 8, 1), (16, 32, 8, 1), (32, 32, 16, 1)),  # each spills 44-56 bytes in one of B04, M02's dK/dV
    256: ((32, 32, 16, 1), (32, 16, 8, 1)),
}


def candidate_configs(q, v, backward: bool = False, narrow: bool = False, fusable: bool = False,
                      blocks: tuple[int, int] | None = None) -> list[Config]:
    """The configurations worth trying: on a GPU a small space per head dim, elsewhere the one
    configuration the interpreter runs. A selection's blocks take any tiles (Schedule); on a GPU, blocks
    smaller than a candidate's tiles (`blocks`) also bring that candidate clipped to them, last: tiles
    that hold one block each, with no pair of a dropped block, on narrower products (mma.sync below 64
    rows), which the autotuner times against the wider tiles that look pairs up; with
    `narrow` (per-pair table reads), the backward's narrow key tiles first. With `fusable` (a forward
    without gradients whose kernel can apply the q prologue and the epilogue) each shape also comes
    fused, after the unfused ones on a GPU (the fused kernel holds the rows' vectors and their
    functions in registers too: it is timed where it fits, the default where none of the others
    does) and alone in the interpreter (which has no registers to spill). Where the GPU has the copy
    engine (tma_capable), every candidate comes with tensor descriptors, then with pointers: the
    autotuner takes, per shape, the first version that fits and runs (_chosen)."""
    d, dv = q.shape[-1], v.shape[-1]
    block_d, block_dv = max(16, _next_power_of_two(d)), max(16, _next_power_of_two(dv))
    upcast = upcasts(q)
    ieee = bool(upcast) or (q.dtype == torch.float32 and not tf32_products())
    if not _on_gpu(q):
        shapes = ((64, 64, 4, 1),)
    else:
        shapes = _gpu_shapes(q, max(64, block_d, block_dv), ieee, backward, narrow)
        if blocks is not None:
            shapes = tuple(dict.fromkeys(shapes + tuple(_within(shape, blocks) for shape in shapes)))
    configs = [Config(m, n, block_d, block_dv, warps, stages, ieee, upcast) for m, n, warps, stages in shapes]
    if fusable:
        fused = [replace(c, fused=True) for c in configs]
        configs = configs + fused if _on_gpu(q) else fused
    if not tma_capable(q):
        return configs
    if not _on_gpu(q):
        return [replace(c, tma=True) for c in configs]
    return [version for c in configs for version in (replace(c, tma=True), c)]  # each shape: descriptors, then pointers


def _gpu_shapes(q, width: int, ieee: bool, backward: bool, narrow: bool) -> tuple:
    """The (BLOCK_M, BLOCK_N, warps, stages) tried on a GPU for this padded head dim (`width`)."""
    if ieee:
        return (_GPU_IEEE_BACKWARD_CANDIDATES if backward else _GPU_IEEE_CANDIDATES)[min(width, 256)]
    width = min(width * (2 if q.dtype == torch.float32 else 1), 256)  # by bytes per row: TF32 as a half type of twice the dim
    shapes = (_GPU_BACKWARD_CANDIDATES if backward else _GPU_CANDIDATES)[width]
    if backward and narrow:
        shapes = tuple(dict.fromkeys(_GPU_BACKWARD_NARROW[width] + shapes))
    return shapes


def _within(shape, blocks):
    """A candidate's tiles clipped to a selection's blocks (where those are powers of two of 16 or more:
    tl.dot's smallest tiles), so that each tile lies inside one block; tiles narrower than a
    warpgroup's 64 rows run on mma.sync, with 4 warps at most."""
    m, n, warps, stages = shape
    if any(b < 16 or b & (b - 1) for b in blocks):
        return shape
    m, n = min(m, blocks[0]), min(n, blocks[1])
    return m, n, (warps if m >= 64 else min(warps, 4)), stages


_TUNED: dict[tuple, Config] = {}


def autotuning() -> bool:
    """Autotuning runs on CUDA unless ATTNSPEC_AUTOTUNE=0."""
    return os.environ.get("ATTNSPEC_AUTOTUNE", "1") != "0"


def launch(run, name: str, q, v, lengths, backward: bool = False, narrow: bool = False,
           fusable: bool = False, blocks: tuple[int, int] | None = None) -> None:
    """Call run(config) once with the best configuration for this problem: on CUDA the candidates are
    timed on the first call of each (spec, dtype, head dims, length bucket) and the fastest is kept
    for the process (the first, with ATTNSPEC_AUTOTUNE=0). Candidates whose compiled kernels spill or
    exceed the GPU's shared memory are not tried (`fits`), unless none fits. `backward`: the backward
    kernels' candidates (each run recomputes every gradient, so timing runs are harmless); `narrow`:
    the kernels read per-pair entries of per-row tables; `fusable`: the forward kernel may apply the q
    prologue and the epilogue; `blocks`: a data-dependent selection's (candidate_configs)."""
    configs = candidate_configs(q, v, backward, narrow, fusable, blocks)
    if _RECORDING[0] is not None:
        _record(run, configs)
        return
    if len(configs) == 1:
        run(configs[0])
        return
    key = (name, q.dtype, q.shape[-1], v.shape[-1], blocks, *(_next_power_of_two(n) for n in lengths))
    if key not in _TUNED:
        _TUNED[key] = _chosen(run, configs, q.device)
    run(_TUNED[key])


def _chosen(run, configs: list[Config], device) -> Config:
    """The configuration kept for a problem. Per tile shape (a candidate with descriptors and its pointer
    twin), the first version that fits: descriptors where they fit, pointers otherwise. Of those, the
    fastest (a version that fails to run gives way to the next of its shape), or the first without
    autotuning; where no version of any shape fits, the fastest of all that run."""
    shapes: dict[Config, list[Config]] = {}
    for config in configs:
        shapes.setdefault(replace(config, tma=False), []).append(config)
    fitting = []
    for versions in shapes.values():
        first = next((i for i, c in enumerate(versions) if _fits_here(run, c, device)), None)
        if first is not None:
            fitting.append(versions[first:])
    if not fitting:
        return _fastest(run, [[c] for c in configs]) if autotuning() else configs[0]
    return _fastest(run, fitting) if autotuning() else fitting[0][0]


def fits(compiled: bool, spill_stores: int, shared: int, shared_limit: int) -> bool:
    """Whether a kernel configuration is worth launching: it compiled, spills nothing and its shared
    memory fits a block's (the rule of `attnspec aot`'s report, applied here before autotuning)."""
    return compiled and spill_stores == 0 and shared <= shared_limit


def _fits_here(run, config: Config, device) -> bool:
    """Whether every kernel this configuration launches fits this GPU, read from its compiled form
    (compiled now, as the first launch would): spilling candidates are not timed."""
    import triton

    with recording(capability=capability(device)) as launches:
        run(config)
    limit = triton.runtime.driver.active.utils.get_device_properties(device.index or 0)["max_shared_mem"]
    for launch in launches:
        try:
            compiled = launch.kernel.warmup(*launch.args, grid=launch.grid, **launch.meta)
            compiled._init_handles()
        except Exception:  # noqa: BLE001 - out of resources, or a compile error: not a candidate here
            return False
        if not fits(True, compiled.n_spills, compiled.metadata.shared, limit):
            return False
    return True


def _record(run, configs: list[Config]) -> None:
    rec = _RECORDING[0]
    rec.group, rec.tuning = rec.group + 1, True
    for i, config in enumerate(configs if rec.every_candidate else configs[:1]):
        rec.candidate = i
        run(config)
    rec.candidate, rec.tuning = 0, False


def _fastest(run, candidates: list[list[Config]]) -> Config:
    """The fastest of the candidates, each timed in its first version that runs."""
    from triton.testing import do_bench

    timed = []
    for versions in candidates:
        for config in versions:
            try:
                timed.append((do_bench(lambda: run(config), warmup=3, rep=10), config.block_m, config.block_n, config))
                break
            except Exception:  # noqa: BLE001 - out of shared memory or registers: not a version that runs here
                continue
    if not timed:
        raise RuntimeError("no kernel configuration runs on this GPU for these head dims")
    return min(timed, key=lambda t: t[:3])[-1]


def _next_power_of_two(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


@dataclass(frozen=True)
class Tables:
    """Per (b, h, query tile): the full and the partial key tiles, ascending, in int32 tables whose
    batch / head axes may be 1 (broadcast with stride 0)."""

    full_num: torch.Tensor
    full_idx: torch.Tensor
    part_num: torch.Tensor
    part_idx: torch.Tensor

    # a data-dependent selection per block (int8 [B, H, NQB, NKB], contiguous), which a kernel tile
    # that holds parts of several blocks looks its pairs up in
    selected: torch.Tensor | None = None

    def arguments(self) -> tuple:
        found = (self.full_num, self.full_idx, self.part_num, self.part_idx,
                 *_broadcast_strides(self.full_num), *_broadcast_strides(self.full_idx)[:3])
        return found if self.selected is None else found + (self.selected, *self.selected.stride()[:3])


def schedule(classes: torch.Tensor, selected=None, device=None, per_block=None) -> Tables:
    """Block tables from tile classes [B|1, H|1, NQB, NKB]; a selection (bool [B, H, NQB, NKB] at the
    kernel's tiles) drops every tile it does not keep; `per_block`: the selection the kernels look
    pairs up in (Tables.selected)."""
    part_num, part_idx, full_num, full_idx = class_lists(classes, selected)
    return Tables(*(t.contiguous().to(device) for t in (full_num, full_idx, part_num, part_idx)), per_block)


class Schedule:
    """The key-tile schedule of one problem (shapes, inputs, params, selection): block tables per tile
    size, built on first use and kept; a closed-form (band) schedule needs none for the forward.
    The backward's dK/dV kernel walks the transposed tables: per key tile, its query tiles."""

    def __init__(self, classify, selected, problem, device, closed_form: bool = False, blocks=None):
        self.classify, self.selected, self.problem, self.device = classify, selected, tuple(problem), device
        self.closed_form = closed_form
        self.blocks = blocks  # the selection's (query, key) block sizes: `selected` is per block
        self.per_block = None if selected is None else selected.to(device=device, dtype=torch.int8).contiguous()
        self._tables: dict[tuple[int, int, bool], Tables] = {}

    def tables(self, block_m: int, block_n: int) -> Tables:
        return self._built(block_m, block_n, False)

    def transposed(self, block_m: int, block_n: int) -> Tables:
        """Per (b, h, key tile of block_n keys): the full and the partial query tiles of block_m rows."""
        return self._built(block_m, block_n, True)

    def _built(self, block_m: int, block_n: int, transposed: bool) -> Tables:
        key = (block_m, block_n, transposed)
        if key not in self._tables:
            classes, selected = _last_tile_partial(self.classify(block_m, block_n), self.problem[3], block_n), self.selected
            if transposed:  # likewise the last query tile for the dK/dV kernel, which sums over rows
                classes = _last_tile_partial(classes, self.problem[2], block_m, axis=-2)
            if selected is not None:  # a tile that holds kept and dropped pairs: partial (the kernel looks them up)
                selected, whole = selected_tiles(selected, self.blocks, (block_m, block_n), self.problem[2:])
                classes = torch.where(whole.to(classes.device) | (classes != FULL), classes, PARTIAL)
            if transposed:
                classes = classes.transpose(-1, -2)
                selected = None if selected is None else selected.transpose(-1, -2)
            self._tables[key] = schedule(classes, selected, self.device, self.per_block)
        return self._tables[key]


def _last_tile_partial(classes: torch.Tensor, length: int, block: int, axis: int = -1) -> torch.Tensor:
    """The tile that reaches past a length (SKV for key tiles, axis -1; SQ for query tiles, axis -2) is
    walked as a partial tile, where the kernel applies the length bound: full tiles then need none (no
    per-element arithmetic at all)."""
    if length % block == 0 or classes.shape[axis] == 0:
        return classes
    classes = classes.clone()
    last = classes.select(axis, -1)
    last.copy_(torch.where(last == FULL, PARTIAL, last))
    return classes


def selected_tiles(selected: torch.Tensor, blocks, tiles, lengths) -> tuple[torch.Tensor, torch.Tensor]:
    """A selection per block (bool [B, H, NQB, NKB]) per kernel tile of any size: (kept, whole), bool
    [B, H, NQT, NKT], whether the selection keeps some of the tile's pairs inside the lengths, and
    all of them. Blocks and tiles meet on a grid of their greatest common divisors; a tile inside one
    block is kept or dropped whole, one across several blocks may be kept in part (the kernel then
    looks each pair's block up)."""
    (qb, kb), (bm, bn), (sq, skv) = blocks, tiles, lengths
    (gq, gk), (nqt, nkt) = (math.gcd(qb, bm), math.gcd(kb, bn)), (-(-sq // bm), -(-skv // bn))
    rows, cols = nqt * (bm // gq), nkt * (bn // gk)
    cells = selected.repeat_interleave(qb // gq, 2).repeat_interleave(kb // gk, 3)[:, :, :rows, :cols]
    cells = torch.nn.functional.pad(cells.to(torch.uint8), (0, cols - cells.shape[-1], 0, rows - cells.shape[-2])).bool()
    inside = (torch.arange(rows, device=cells.device) * gq < sq)[:, None] & (torch.arange(cols, device=cells.device) * gk < skv)[None, :]
    shape = (*cells.shape[:2], nqt, bm // gq, nkt, bn // gk)
    kept = (cells & inside).view(shape).any(5).any(3)
    whole = (cells | ~inside).view(shape).all(5).all(3)
    return kept, whole


def check_schedule(name: str, sched, problem, device) -> None:
    if not isinstance(sched, Schedule):
        raise TypeError(f"{name}: schedule must come from build_schedule, got {type(sched).__name__}")
    if sched.problem != tuple(problem) or sched.device != device:
        raise ValueError(
            f"{name}: this schedule was built for (B, H, SQ, SKV) = {sched.problem} on {sched.device}, "
            f"the call has {tuple(problem)} on {device}"
        )


def _broadcast_strides(t: torch.Tensor) -> tuple[int, int, int]:
    """(batch, head, query tile) strides, 0 along a broadcast (size 1) batch or head axis."""
    return tuple(0 if t.shape[axis] == 1 and axis < 2 else t.stride(axis) for axis in range(3))


def input_arguments(t: torch.Tensor) -> tuple:
    """An input as the kernel takes it: the tensor (bool as int8), then its sizes, then its strides."""
    t = readable(t)
    if t.dtype == torch.bool:
        t = t.to(torch.int8)
    return (t, *t.shape, *t.stride())


def input_gradient(grad: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The gradient of input t from its kernel buffer (shaped like readable(t)): zeros where t has
    no elements (its reads were 0 whatever it held)."""
    return grad.to(t.dtype) if grad.shape == t.shape else torch.zeros_like(t)


# ---------------------------------------------------------------- gradients of inputs


def site_buffers(kernels, problem, block_m: int, block_n: int, device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(partial sums float32, element offsets int64) per summed gradient site, (kernel, level) each:
    one slot per dQ program ("program"), per row of each dQ program ("row"), or per key of each
    (head, key tile) of the dK/dV kernel ("col")."""
    batch, heads, sq, skv = problem
    nq, nk = -(-sq // block_m), -(-skv // block_n)
    slots = {"program": batch * heads * nq, "row": batch * heads * nq * block_m, "col": batch * heads * nk * block_n}
    return [
        (torch.zeros(slots[level], dtype=torch.float32, device=device), torch.zeros(slots[level], dtype=torch.int64, device=device))
        for _kernel, level in kernels
    ]


def add_partials(grads, parts) -> None:
    """Add each site's partial sums into its input's gradient at their offsets, in a fixed order
    (index_put_ with accumulate sorts on CUDA: no atomics, the same result every run)."""
    for grad, (partials, offsets) in zip(grads, parts):
        grad.view(-1).index_put_((offsets,), partials, accumulate=True)
