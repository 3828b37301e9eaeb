"""Ahead-of-time compilation of a spec's triton kernels for a GPU this machine need not have, and what
the machine code says about them (docs/triton.md, "Compiled for a GPU you do not have").

The host code runs as it would on that GPU, on CPU tensors, with its launches recorded instead of made
(runtime/triton.py `recording`): so the kernels compiled are exactly the ones a call would launch,
with the same arguments, constexprs and autotune candidates. Each is compiled by Triton for the named
architecture (Triton's compiler and the ptxas of its wheel run on any machine) and read:

- ptxas's own account: registers per thread, spill stores and loads, the stack frame;
- Triton's: the shared memory the launch needs, against the architecture's limit per block;
- the PTX: whether the tile products use the tensor cores (`wgmma` on sm_90a, `mma.sync` from sm_80)
  or scalar FMA loops, and whether any load goes through the tensor-memory copy engine (TMA,
  `cp.async.bulk.tensor`, sm_90a).

`fits` is the rule the autotuner applies on a GPU too (runtime/triton.py): a candidate that spills or
needs more shared memory than a block may have is not tried.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass

import torch

from .diagnostics import AttnError
from .runtime.linear import chunked_dkdv_kernel, chunked_dq_kernel, chunked_kernel, tile_kernels
from .runtime.triton import fits

# shared memory one block may use (opt-in maximum), bytes
ARCHS = {
    "sm_90a": (90, 232448),  # H100, H200: 227 KiB
    "sm_80": (80, 166912),  # A100: 163 KiB
    "sm_86": (86, 101376),  # RTX 30xx, A10, A40: 99 KiB
    "sm_89": (89, 101376),  # RTX 40xx, L4, L40: 99 KiB
}

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass(frozen=True)
class KernelReport:
    """One kernel of one autotune candidate, compiled for one architecture."""

    spec: str
    kernel: str  # forward, dq, dkdv, kept, or a pass over rows: prologue_q ..., value_t ..., prologue_q_bwd ..., value_t_bwd ...
    arch: str
    dtype: str
    head_dim: int
    candidate: int  # the autotuner's order: 0 is tried first (the report's default: the first that fits)
    block_m: int
    block_n: int | None  # None: a kernel over chunks of rows only (linear attention's)
    num_warps: int
    num_stages: int
    error: str | None = None  # the compiler's message when it failed
    registers: int = 0
    spill_stores: int = 0  # bytes
    spill_loads: int = 0
    shared: int = 0  # bytes of shared memory a launch needs
    shared_limit: int = 0
    mma: str = ""  # wgmma, mma.sync or fma: how q.k and p.v are multiplied
    mma_count: int = 0  # tensor-core instructions in the PTX
    tma: bool = False  # any load through the tensor-memory copy engine
    instructions: int = 0  # PTX instructions (a proxy for the machine code's size, not its run time)
    special: int = 0  # of them, those on the special-function units: exponentials, reciprocals, roots, ...
    seconds: float = 0.0  # compile time on this machine

    @property
    def fits(self) -> bool:
        return fits(self.error is None, self.spill_stores, self.shared, self.shared_limit)  # the autotuner's rule

    def as_dict(self) -> dict:
        return {**asdict(self), "fits": self.fits}


# ---------------------------------------------------------------- which launches


def recorded_launches(module, spec, dtype: torch.dtype, head_dim: int, *, backward: bool, every_candidate: bool, length: int = 1024,
                      arch: str = "sm_90a"):
    """The kernel launches one call of a generated triton module makes (its backward's too) at these
    sizes on a GPU of this architecture, recorded for every autotune candidate or only the default one."""
    from .runtime import triton as _rt
    from .sample import Sizes, sample_arguments

    sizes = Sizes(B=2, H=4, HKV=2, SQ=length, SKV=length, D=head_dim, DV=head_dim)
    args = sample_arguments(spec, sizes, dtype)
    tensors = [args[name] for name in ("q", "k", "v")] + [args[i.name] for i in spec.arguments if args[i.name].is_floating_point()]
    for t in tensors:
        t.requires_grad_(backward)
    with _rt.recording(every_candidate, ARCHS[arch][0]) as launches, torch.set_grad_enabled(backward):
        _call(module, args, backward)
        if any(launch.kernel.__name__ == chunked_kernel.__name__ for launch in launches):
            with tile_kernels():  # a linear form's chunks: the tile kernels run its other calls
                _call(module, args, backward)
    return launches


def _call(module, args, backward: bool) -> None:
    out = module.attention(**args)
    if backward:
        out.float().sum().backward()


# ---------------------------------------------------------------- compiling one launch


def compile_launch(launch, arch: str):
    """Triton's compiled kernel of a recorded launch for an architecture (raises what the compiler raises)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.compiler import compile as triton_compile
    from triton.runtime.jit import create_function_from_signature

    fn = launch.kernel
    if not hasattr(fn, "params"):
        raise RuntimeError("the kernels were built for Triton's interpreter (TRITON_INTERPRET=1); unset it to compile for a GPU")
    target = GPUTarget("cuda", ARCHS[arch][0], 32)
    backend = make_backend(target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, options = binder(*launch.args, **launch.meta)
    options, signature, constexprs, attrs = fn._pack_args(backend, dict(launch.meta), bound, specialization, options)
    return triton_compile(ASTSource(fn, signature, constexprs, attrs), target=target, options=options.__dict__)


def ptxas_usage(ptx: str, arch: str) -> dict:
    """Registers and spills, as ptxas -v reports them for this PTX (the ptxas of Triton's wheel)."""
    from triton.backends.nvidia.compiler import get_ptxas

    with tempfile.TemporaryDirectory() as tmp:
        source = os.path.join(tmp, "kernel.ptx")
        with open(source, "w", encoding="utf-8") as f:
            f.write(ptx)
        done = subprocess.run(
            [get_ptxas(ARCHS[arch][0]).path, "-v", f"--gpu-name={arch}", source, "-o", os.path.join(tmp, "kernel.cubin")],
            capture_output=True, text=True, check=True,
        )
    log = done.stdout + done.stderr
    number = lambda pattern: int(m.group(1)) if (m := re.search(pattern, log)) else 0  # noqa: E731
    return {
        "registers": number(r"Used (\d+) registers"),
        "spill_stores": number(r"(\d+) bytes spill stores"),
        "spill_loads": number(r"(\d+) bytes spill loads"),
    }


def products(ptx: str) -> tuple[str, int]:
    """How the tile products are computed: tensor-core instructions by kind, or none (FMA loops)."""
    for kind, pattern in (("wgmma", "wgmma.mma_async"), ("mma.sync", "mma.sync.aligned")):
        count = ptx.count(pattern)
        if count:
            return kind, count
    return "fma", 0


# PTX opcodes that run on the special-function units (MUFU): approximate transcendentals, reciprocals,
# roots, and the approximate division (a reciprocal and a multiply)
SPECIAL_OPCODES = ("ex2", "lg2", "sin", "cos", "rcp", "sqrt", "rsqrt", "tanh", "div.full", "div.approx")


def instruction_counts(ptx: str) -> tuple[int, int]:
    """The PTX's instructions, and those on the special-function units (SPECIAL_OPCODES)."""
    total = special = 0
    for line in ptx.splitlines():
        text = line.strip()
        if text.startswith("@"):  # a predicated instruction
            text = text.split(None, 1)[1] if " " in text else ""
        if not text or not text[0].isalpha() or text.endswith(":"):
            continue  # directives, labels, braces, comments
        total += 1
        opcode = text.split()[0]
        special += opcode.startswith(SPECIAL_OPCODES)
    return total, special


def report_launch(launch, spec_name: str, kernel: str, arch: str, dtype: str, head_dim: int) -> KernelReport:
    meta = launch.meta
    head = dict(
        spec=spec_name, kernel=kernel, arch=arch, dtype=dtype, head_dim=head_dim, candidate=launch.candidate,
        block_m=meta["BLOCK_M"], block_n=meta.get("BLOCK_N", meta.get("BLOCK_F")), num_warps=meta["num_warps"],
        num_stages=meta.get("num_stages", 3),  # a prologue kernel (rows x features) is launched with Triton's default
        shared_limit=ARCHS[arch][1],
    )
    started = time.perf_counter()
    try:
        compiled = compile_launch(launch, arch)
    except Exception as err:  # noqa: BLE001 - the compiler's message is the report
        return KernelReport(**head, error=_first_line(err), seconds=time.perf_counter() - started)
    ptx = compiled.asm["ptx"]
    mma, count = products(ptx)
    instructions, special = instruction_counts(ptx)
    return KernelReport(
        **head, **ptxas_usage(ptx, arch), shared=compiled.metadata.shared, mma=mma, mma_count=count,
        tma="cp.async.bulk.tensor" in ptx, instructions=instructions, special=special,
        seconds=time.perf_counter() - started,
    )


def _first_line(err: Exception) -> str:
    """The compiler's own message: Triton wraps the error of a called function in one CompilationError
    per caller, whose first line is only a position; the innermost exception says what is wrong."""
    while err.__cause__ is not None:
        err = err.__cause__
    text = str(err).strip() or type(err).__name__
    lines = [line for line in text.splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[0] if lines else text}"[:300]


# ---------------------------------------------------------------- a spec's report


def report(path_or_source, *, spec: str | None = None, consts: dict | None = None, archs=("sm_90a",), dtypes=("bf16",),
           head_dims=(64, 128), backward: bool = False, every_candidate: bool = False, kernels=None,
           tf32: bool = False) -> list[KernelReport]:
    """Every kernel a call of one spec (and with backward, its gradient) launches, compiled for each
    architecture, dtype and head dim: the default candidate (the one a launch without autotuning runs:
    the first that fits, see _default), or every autotune candidate. kernels:
    only these (forward, dq, dkdv, kept: sum_kept(v)'s gradient, prologue: the passes over rows, reported
    as prologue_q ... for the prologue's statements, value_t ... for per-row values, and with backward,
    prologue_q_bwd ..., value_t_bwd ... for their backward passes). tf32: float32 products as under set_float32_matmul_precision("high")."""
    from . import api

    if tf32:
        torch.set_float32_matmul_precision("high")  # this process compiles reports only (a worker, or the CLI)

    _check_names(archs, dtypes)
    lowered, source_name = api._lowered(path_or_source, "triton", spec, consts or {})
    module = api.build_module(lowered, "triton", source_name)
    if backward and module.BACKWARD_ERROR is not None:
        raise AttnError(f"{lowered.name}: the triton target has no backward for this spec ({module.BACKWARD_ERROR})")
    kinds = (("forward", module.KERNELS.forward), ("dq", module.KERNELS.dq), ("dkdv", module.KERNELS.dkdv), ("kept", module.KERNELS.kept))
    names = {getattr(f, "__name__", None): kind for kind, f in kinds}
    names.update({fn.__name__: name for name, fn in module.KERNELS.row_passes})  # prologue_q, value_t, prologue_q_bwd ...
    # normalize linear's chunks, where the spec has a linear form
    names.update({chunked_kernel.__name__: "linear", chunked_dq_kernel.__name__: "linear_dq", chunked_dkdv_kernel.__name__: "linear_dkdv"})
    reports, seen = [], set()
    for dtype in dtypes:
        for head_dim in head_dims:
            for arch in archs:  # the candidates differ by architecture (tensor descriptors from sm_90)
                launches = recorded_launches(module, lowered, DTYPES[dtype], head_dim, backward=backward,
                                             every_candidate=True, arch=arch)
                wanted = [launch for launch in launches
                          if kernels is None or _kind(names[launch.kernel.fn.__name__]) in kernels]

                def compile_one(launch, arch=arch, dtype=dtype, head_dim=head_dim):
                    return report_launch(launch, lowered.name, names[launch.kernel.fn.__name__], arch, dtype, head_dim)

                for group in dict.fromkeys(launch.group for launch in wanted):
                    tried = [launch for launch in wanted if launch.group == group]
                    found = [compile_one(launch) for launch in tried] if every_candidate else _default(tried, compile_one)
                    for r in found:
                        key = (r.kernel, dtype, head_dim, arch, r.candidate)
                        if key not in seen:  # with --backward, the forward's launch is the one the backward reads
                            seen.add(key)
                            reports.append(r)
    return reports


def _kind(name: str) -> str:
    """What --kernel calls a reported kernel: forward, dq, dkdv, kept, linear, or prologue for every pass over
    rows (prologue statements, per-row values, the epilogue, and their backward passes)."""
    kind = name.split("_")[0]
    return "prologue" if kind in ("value", "epilogue") else kind


def _default(launches, compile_one) -> list[KernelReport]:
    """The reports of the candidate a launch without autotuning runs (runtime/triton.py `_chosen`): the
    first whose kernels all fit, in the autotuner's order (tensor descriptors first on sm_90a); the
    first candidate where none fits. Candidates are compiled in order until one fits."""
    first = None
    for candidate in dict.fromkeys(launch.candidate for launch in launches):
        found = [compile_one(launch) for launch in launches if launch.candidate == candidate]
        if all(r.fits for r in found):
            return found
        first = first or found
    return first or []


def report_files(paths, *, jobs: int = 1, **options) -> list[KernelReport]:
    """report() of every spec of every file, in `jobs` processes."""
    from . import api

    tasks = [(str(path), name) for path in paths for name in (s.name for s in api.load_program(path).specs)]
    if jobs <= 1 or len(tasks) <= 1:
        return [r for path, name in tasks for r in report(path, spec=name, **options)]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(report, path, spec=name, **options) for path, name in tasks]
        return [r for f in futures for r in f.result()]


def _check_names(archs, dtypes) -> None:
    for arch in archs:
        if arch not in ARCHS:
            raise AttnError(f"unknown GPU architecture '{arch}'", hint=f"one of: {', '.join(ARCHS)}")
    for dtype in dtypes:
        if dtype not in DTYPES:
            raise AttnError(f"unknown dtype '{dtype}'", hint=f"one of: {', '.join(DTYPES)}")


def render_table(reports: list[KernelReport]) -> str:
    """One line per kernel and candidate."""
    header = (f"{'spec':<16} {'kernel':<15} {'arch':<7} {'dtype':<5} {'D':>4} {'cand':>4} {'tile':>8} {'w/s':>4}  {'regs':>4} "
              f"{'spill':>6} {'smem KiB':>9}  {'mma':<13} {'tma':<3} {'ptx':>6} {'sfu':>5}  result")
    lines = [header, "-" * len(header)]
    for r in reports:
        tile = f"{r.block_m}" if r.block_n is None else f"{r.block_m}x{r.block_n}"
        ws = f"{r.num_warps}/{r.num_stages}"
        head = f"{r.spec[:16]:<16} {r.kernel:<15} {r.arch:<7} {r.dtype:<5} {r.head_dim:>4} {r.candidate:>4} {tile:>8} {ws:>4}"
        if r.error is not None:
            lines.append(f"{head}  {'':>4} {'':>6} {'':>9}  {'':<13} {'':<3} {'':>6} {'':>5}  error: {r.error}")
            continue
        mma = f"{r.mma} x{r.mma_count}" if r.mma_count else r.mma
        verdict = "ok" if r.fits else ("spills" if r.spill_stores else "too much shared memory")
        smem = f"{r.shared / 1024:.0f}/{r.shared_limit // 1024}"
        lines.append(f"{head}  {r.registers:>4} {r.spill_stores:>6} {smem:>9}  {mma:<13} {'yes' if r.tma else 'no':<3} "
                     f"{r.instructions:>6} {r.special:>5}  {verdict}")
    return "\n".join(lines)
