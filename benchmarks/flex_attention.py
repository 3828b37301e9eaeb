"""The flex target against hand-written FlexAttention and SDPA: BlockMask build time, attention time.

For each variant (causal B01, sliding window B02, document mask B03, ALiBi B04, soft-cap B07,
prefix-LM M01, 2D neighborhood M02), on the CPU and, when `torch.cuda.is_available()`, on the GPU:

(a) BlockMask build: the generated module's `build_block_mask` (tile-interval classification,
    no per-pair work) against `create_block_mask` with a hand-written mask_mod, eager and
    `torch.compile(create_block_mask, dynamic=True)` (one compile per variant reused across sizes;
    its first call is reported as the compile time). B = 1, H = 8, N = 4k, 16k, 64k, 128 x 128
    blocks, H = None in create_block_mask (no mask here reads the head). Time: best of 3 (one run
    past 2 s); peak: the rise of the process's resident set (VmHWM) on the CPU, of
    `torch.cuda.max_memory_allocated` on the GPU. Agree: the share of tiles both BlockMasks class
    alike (empty / partial / full), and whether they visit the same blocks. A measurement predicted
    (x N^2 from the previous size) to pass --max-seconds or --max-mib is skipped and reported so.

(b) Attention: the generated `attention(..., block_mask=prebuilt, compiled=True)` against a
    hand-written FlexAttention (`torch.compile(flex_attention, dynamic=False)`, the mask_mod /
    score_mod written out by hand, its own `create_block_mask` BlockMask) and
    `scaled_dot_product_attention` with a dense mask: boolean [1, 1, N, N] for masks, an additive
    float bias [1, H, N, N] where the score mod is a bias (ALiBi; NATTEN's relative position bias,
    -inf outside the window), the mask alone for soft-cap (tanh capping has no SDPA form, so that
    SDPA computes a different function: a time reference only). CPU: float32, B = 1, H = 8, D = 64,
    N in {1024, 4096}, under torch.no_grad() (compiled flex_attention on the CPU is inference
    only). GPU: bf16, B = 4, H = 16, D in {64, 128}, N in {2k, 4k, 8k, 16k}, CUDA events. The three
    run interleaved, one call each per round, after a compiling first call and a warm-up round;
    the table gives the best round (CPU: this machine is shared) or the median (GPU). Ratio: anchor
    time / attnspec time (> 1: attnspec faster). Also checks the outputs agree (max |diff|).

Params: the example files' defaults, except image dims (HT x W = N, as tile_schedule.py), the
sliding window (256, the file's 8 is a 17-token band) and the prefix-LM prefix (N / 4, runtime).

    python benchmarks/flex_attention.py [--device cpu|cuda|all] [--sizes 4096,16384,65536]
        [--attn-sizes 1024,4096] [--only b01_causal,...] [--parts mask,attn] [--quick] [--write]

--write replaces the "## FlexAttention target" section of benchmarks/RESULTS.md (between its
markers) and, inside it, the block of each device measured; other devices' blocks and the rest of
the file are kept.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

from attnspec.analysis.tiles import EMPTY
from common import (
    HEADS,
    ROOT,
    Budget,
    Sample,
    agreement_classes,
    cpu_model,
    failed,
    flex_classes,
    fmt_peak,
    fmt_time,
    interleaved,
    make_variant,
    measure,
    measure_cuda,
    ratio,
    reexec_with_fixed_malloc,
    sdpa_mask,
    synchronize,
    versions,
)

VARIANTS = (
    "b01_causal", "b02_sliding_window", "b03_document", "b04_alibi", "b07_softcap", "m01_prefix_lm", "m02_natten2d",
)
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
BEGIN, END = "<!-- flex_attention.py: begin -->", "<!-- flex_attention.py: end -->"
DEVICE_BEGIN, DEVICE_END = "<!-- flex_attention.py {}: begin -->", "<!-- flex_attention.py {}: end -->"


@dataclass
class Config:
    """What one device runs."""

    device: str
    dtype: torch.dtype
    mask_sizes: list[int]
    attn_sizes: list[int]
    batch: int
    heads: int
    dims: list[int]
    reps: int
    max_seconds: float
    max_mib: int


# ------------------------------------------------------------------ (a) BlockMask build


def visited(block_mask) -> torch.Tensor:
    classes = flex_classes(block_mask, block_mask.kv_indices.shape)
    return classes != EMPTY


def compare(ours, theirs) -> str:
    """Class agreement per tile, and whether both visit the same blocks."""
    share = agreement_classes(flex_classes(ours, ours.kv_indices.shape), theirs)
    a, b = torch.broadcast_tensors(visited(ours), visited(theirs).to(ours.kv_indices.device))
    extra, missing = int((a & ~b).sum()), int((~a & b).sum())
    if not extra and not missing:
        return f"{share}, same blocks"
    return f"{share}, +{extra} / -{missing} blocks"


def block_mask_rows(cfg: Config, names: list[str], budget: Budget, compiled_cbm: bool):
    rows, compile_rows = [], []
    measure_fn = measure if cfg.device == "cpu" else measure_cuda
    for name in names:
        torch._dynamo.reset()
        compiled_fn, compile_s, attnspec_s = None, None, None
        for n in cfg.mask_sizes:
            v = make_variant(name, n, cfg.device, HEADS, 1)
            attnspec_s = attnspec_s if attnspec_s is not None else v.compile_s
            if v.mask_mod is None:
                rows.append(f"| {name} | {n // 1024}k | no mask: `build_block_mask` lists every block full, "
                            "flex_attention needs no BlockMask | | | | | | | | |")
                break
            q = torch.zeros((), dtype=cfg.dtype, device=cfg.device).expand(1, HEADS, n, 64)  # shapes only

            def ours_fn(v=v, q=q):
                return v.module.build_block_mask(q, q, **v.kwargs)

            def flex_fn(fn=create_block_mask, v=v, n=n):
                return fn(v.mask_mod, 1, None, n, n, device=cfg.device)

            if n == cfg.mask_sizes[0]:  # first calls pay for vmap / CUDA set-up
                small = make_variant(name, 256, cfg.device, HEADS, 1)
                small.module.build_block_mask(q[:, :, :256], q[:, :, :256], **small.kwargs)
                create_block_mask(small.mask_mod, 1, None, 256, 256, device=cfg.device)
            ours = budget.run(f"{name}/attnspec", n, ours_fn)
            eager = budget.run(f"{name}/eager", n, flex_fn)
            compiled = Sample(skipped="not run")
            if compiled_cbm:
                if compiled_fn is None:
                    compiled_fn = torch.compile(create_block_mask, dynamic=True)
                    try:
                        compile_s = measure_fn(lambda: flex_fn(compiled_fn), 1).seconds
                    except Exception as err:  # noqa: BLE001 - reported, the run goes on
                        compiled = failed(err)
                if compile_s is not None:
                    compiled = budget.run(f"{name}/compiled", n, lambda: flex_fn(compiled_fn))
            agree = ""
            if ours.result is not None:
                anchor = eager if eager.result is not None else compiled
                agree = compare(ours.result, anchor.result) if anchor.result is not None else ""
            sparsity = f"{float(visited(ours.result).double().mean()):.1%}" if ours.result is not None else "-"
            rows.append(
                f"| {name} | {n // 1024}k | {sparsity} | {fmt_time(ours)} | {fmt_peak(ours)} | {fmt_time(eager)} "
                f"| {fmt_peak(eager)} | **{ratio(eager, ours)}** | {fmt_time(compiled)} | {fmt_peak(compiled)} "
                f"| **{ratio(compiled, ours)}** | {agree} |"
            )
            print(rows[-1], flush=True)
            ours.result = eager.result = compiled.result = None
        compile_rows.append(
            f"| {name} | {attnspec_s * 1e3:.0f} ms | " + ("-" if compile_s is None else f"{compile_s:.1f} s") + " |"
        )
    return rows, compile_rows


# ------------------------------------------------------------------ (b) attention


def attention_rows(cfg: Config, names: list[str], budget: Budget):
    rows, compile_rows = [], []
    gen = torch.Generator(device=cfg.device).manual_seed(0)
    for name in names:
        torch._dynamo.reset()
        hand_fn = torch.compile(flex_attention, dynamic=False)
        for d in cfg.dims:
            for n in cfg.attn_sizes:
                v = make_variant(name, n, cfg.device, cfg.heads, cfg.batch)
                shape = (cfg.batch, cfg.heads, n, d)
                q, k, val = (torch.randn(shape, generator=gen, device=cfg.device, dtype=cfg.dtype) for _ in range(3))
                skips = {key: budget.predict(f"{name}/{key}/{d}", n) for key in ("attnspec", "flex", "sdpa")}
                fns, samples, firsts, outs = {}, {}, {}, {}
                if not skips["attnspec"]:
                    ours_bm = v.module.build_block_mask(q, k, **v.kwargs)
                    fns["attnspec"] = lambda: v.module.attention(q, k, val, **v.kwargs, block_mask=ours_bm, compiled=True)
                if not skips["flex"]:
                    flex_bm = (create_block_mask(v.mask_mod, None, None, n, n, device=cfg.device)
                               if v.mask_mod is not None else None)
                    fns["flex"] = lambda: hand_fn(q, k, val, score_mod=v.score_mod, block_mask=flex_bm, scale=v.scale)
                if not skips["sdpa"]:
                    try:
                        dense = sdpa_mask(v, cfg.heads, cfg.device, cfg.dtype)
                        fns["sdpa"] = lambda: F.scaled_dot_product_attention(q, k, val, attn_mask=dense, scale=v.scale)
                    except (MemoryError, RuntimeError) as err:
                        samples["sdpa"] = failed(err)
                for key in list(fns):  # the first call compiles
                    try:
                        synchronize(cfg.device)
                        start = time.perf_counter()
                        outs[key] = fns[key]()
                        synchronize(cfg.device)
                        firsts[key] = time.perf_counter() - start
                    except Exception as err:  # noqa: BLE001 - reported, the run goes on
                        samples[key] = failed(err)
                        del fns[key]
                samples.update(interleaved(fns, cfg.device, cfg.reps))
                for key in ("attnspec", "flex", "sdpa"):
                    if skips[key]:
                        samples[key] = Sample(skipped=skips[key])
                    if skips[key] != "a smaller N was skipped":
                        budget.record(f"{name}/{key}/{d}", n, samples[key])
                diff = lambda key: (f"{float((outs['attnspec'].float() - outs[key].float()).abs().max()):.1e}"  # noqa: E731
                                    if "attnspec" in outs and key in outs else "-")
                sdpa_diff = diff("sdpa") if name != "b07_softcap" else "n/a"
                pick = (lambda s: s) if cfg.device == "cpu" else (lambda s: Sample(s.median, skipped=s.skipped))
                ours, flex, sdpa = (pick(samples[key]) for key in ("attnspec", "flex", "sdpa"))
                density = f"{float(visited(ours_bm).double().mean()):.1%}" if "attnspec" in fns else "-"
                rows.append(
                    f"| {name} | {n // 1024 if n >= 1024 else n / 1024:g}k | {d} | {density} | {fmt_time(ours)} "
                    f"| {fmt_time(flex)} | **{ratio(flex, ours)}** | {fmt_time(sdpa)} | **{ratio(sdpa, ours)}** "
                    f"| {v.sdpa_note} | {diff('flex')} / {sdpa_diff} |"
                )
                print(rows[-1], flush=True)
                first = lambda key: f"{firsts[key]:.1f} s" if key in firsts else "-"  # noqa: E731
                compile_rows.append(f"| {name} | {n // 1024 if n >= 1024 else n / 1024:g}k | {d} "
                                    f"| {first('attnspec')} | {first('flex')} |")
                del outs, fns, q, k, val
    return rows, compile_rows


# ------------------------------------------------------------------ report


def render_device(cfg: Config, mask, attn, args, elapsed: float) -> str:
    date = datetime.date.today().isoformat()
    kind = "CPU" if cfg.device == "cpu" else "GPU"
    command = " ".join(["python benchmarks/flex_attention.py", *sys.argv[1:]])
    lines = [
        DEVICE_BEGIN.format(cfg.device),
        f"### {kind}: {cpu_model() if cfg.device == 'cpu' else torch.cuda.get_device_name()} ({date})",
        "",
        f"{versions(cfg.device)}. Script: `{command}` (wall time of this device's part {elapsed / 60:.1f} min).",
        "",
    ]
    if mask is not None:
        rows, compile_rows = mask
        lines += [
            f"**BlockMask build**, B = 1, H = 8 (the masks ignore the head: H = None, one [1, 1, NQB, NKB] "
            "mask), 128 x 128 blocks. attnspec: the generated `build_block_mask`. Anchors: `create_block_mask` "
            "with the hand-written mask_mod, eager and `torch.compile(create_block_mask, dynamic=True)` (steady "
            "state). Time: best of 3 (one run past 2 s). Peak: "
            + ("rise of the process's peak resident set (VmHWM) over the resident set before the call"
               if cfg.device == "cpu" else "`torch.cuda.max_memory_allocated` over the allocated memory before the call")
            + ". Ratio: anchor / attnspec (> 1: attnspec faster). Visited: share of blocks the generated BlockMask "
            "lists. Agree: share of tiles both class alike (empty / partial / full), then whether both visit "
            "the same blocks (+ extra / - missing in the generated one). Skipped: predicted over "
            f"{cfg.max_seconds:.0f} s or {cfg.max_mib / 1024:.0f} GiB from the previous size (x N^2).",
            "",
            "| variant | N | visited | attnspec | peak | eager | peak | ratio | compiled | peak | ratio | agree |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            "Compile: `attnspec.compile(..., 'flex', cache=False)` (parse to loaded module; first size's consts) "
            "and the first call of `torch.compile(create_block_mask)` (dynamo + inductor, fresh inductor cache).",
            "",
            "| variant | attnspec.compile | torch.compile(create_block_mask) first call |",
            "|---|---|---|",
            *compile_rows,
            "",
        ]
    if attn is not None:
        rows, compile_rows = attn
        stat = "best of" if cfg.device == "cpu" else "median of"
        lines += [
            f"**Attention**, {str(cfg.dtype).removeprefix('torch.')}, B = {cfg.batch}, H = {cfg.heads}, SQ = SKV = N. "
            "attnspec: the generated `attention(..., block_mask=prebuilt, compiled=True)`. flex: "
            "`torch.compile(flex_attention, dynamic=False)` with hand-written score_mod / mask_mod and its own "
            "`create_block_mask` BlockMask. SDPA: `scaled_dot_product_attention` with the dense mask in the SDPA "
            f"column. Interleaved rounds (one call of each per round) after a compiling first call and a warm-up "
            f"round; {stat} {cfg.reps} rounds"
            + (", under torch.no_grad()" if cfg.device == "cpu" else ", CUDA events")
            + ". Ratio: anchor / attnspec (> 1: attnspec faster). Visited: share of blocks the generated "
            "BlockMask lists. max |diff|: attnspec's output against flex's / SDPA's.",
            "",
            "| variant | N | D | visited | attnspec | flex | ratio | SDPA | ratio | SDPA mask | max diff flex / SDPA |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            "First call (compile + one run) of the compiled flex_attention, per shape (both compile with "
            "dynamic=False, so every size compiles anew; the generated module's compile runs first, and the two "
            "share the inductor cache directory).",
            "",
            "| variant | N | D | attnspec first call | flex first call |",
            "|---|---|---|---|---|",
            *compile_rows,
            "",
        ]
    lines.append(DEVICE_END.format(cfg.device))
    return "\n".join(lines)


INTRO = """## FlexAttention target

`python benchmarks/flex_attention.py`: the `flex` target's generated module against a hand-written
FlexAttention and SDPA, measured in the same run: (a) building the BlockMask (generated
`build_block_mask`, tile-interval classification, vs `create_block_mask` eager and compiled),
(b) attention with a prebuilt BlockMask (generated `attention(..., compiled=True)` vs
`torch.compile(flex_attention)` with hand-written mods vs `scaled_dot_product_attention` with a dense
mask). Variants: B01 causal, B02 sliding window (window 256), B03 document mask (random documents of
about 2k tokens), B04 ALiBi, B07 soft-cap, M01 prefix-LM (prefix N / 4), M02 2D neighborhood (5 x 5,
image HT x W = N). Ratios are anchor time / attnspec time: above 1, attnspec is faster."""

PENDING = {
    "cuda": "### GPU: pending\n\nNo GPU run yet: `python benchmarks/flex_attention.py --device cuda --write` "
            "on a CUDA machine fills this block.",
}


def write_section(blocks: dict[str, str]) -> None:
    text = RESULTS.read_text()
    old = ""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        old, tail = rest.split(END, 1)
    else:
        head, tail = text.rstrip("\n") + "\n\n", "\n"
    parts = [BEGIN, INTRO, ""]
    for device in ("cpu", "cuda"):
        begin, end = DEVICE_BEGIN.format(device), DEVICE_END.format(device)
        if device in blocks:
            parts += [blocks[device], ""]
        elif begin in old and end in old:
            parts += [begin + old.split(begin, 1)[1].split(end, 1)[0] + end, ""]
        elif device in PENDING:
            parts += [begin, PENDING[device], end, ""]
    RESULTS.write_text(head + "\n".join(parts) + END + tail)


# ------------------------------------------------------------------ main


def configs(args) -> list[Config]:
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    if "cuda" in devices and not torch.cuda.is_available():
        if args.device == "cuda":
            sys.exit("--device cuda: torch.cuda.is_available() is False")
        devices.remove("cuda")
    ints = lambda s: [int(x) for x in s.split(",")] if s else None  # noqa: E731
    out = []
    for device in devices:
        cpu = device == "cpu"
        if args.quick:
            mask_sizes, attn_sizes, dims, reps = [1024, 4096], ([256, 1024] if cpu else [1024, 2048]), [64], 2
        else:
            mask_sizes, attn_sizes = [4096, 16384, 65536], ([1024, 4096] if cpu else [2048, 4096, 8192, 16384])
            dims, reps = ([64] if cpu else [64, 128]), (5 if cpu else 20)
        max_mib = args.max_mib or (8192 if cpu else int(torch.cuda.get_device_properties(0).total_memory / 2**21))
        out.append(Config(
            device, torch.float32 if cpu else torch.bfloat16, ints(args.sizes) or mask_sizes,
            ints(args.attn_sizes) or attn_sizes, 1 if cpu else 4, HEADS if cpu else 16, ints(args.dims) or dims,
            args.reps or reps, args.max_seconds, max_mib,
        ))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda", "all"), default="all",
                        help="all: the CPU, and the GPU when torch.cuda.is_available()")
    parser.add_argument("--sizes", default="", help="BlockMask build sizes (default 4096,16384,65536)")
    parser.add_argument("--attn-sizes", default="", help="attention sizes (default CPU 1024,4096; GPU 2k..16k)")
    parser.add_argument("--dims", default="", help="head dims for attention (default CPU 64; GPU 64,128)")
    parser.add_argument("--reps", type=int, default=0, help="timed rounds for attention (default CPU 5, GPU 20)")
    parser.add_argument("--only", default="", help="comma-separated variants (example stems)")
    parser.add_argument("--parts", default="mask,attn", help="mask (BlockMask build), attn (attention), or both")
    parser.add_argument("--no-compiled", action="store_true", help="skip torch.compile(create_block_mask)")
    parser.add_argument("--max-seconds", type=float, default=60.0)
    parser.add_argument("--max-mib", type=int, default=0, help="default 8 GiB on the CPU, half the GPU's memory")
    parser.add_argument("--quick", action="store_true", help="a smoke run: small sizes, 2 rounds")
    parser.add_argument("--write", action="store_true", help="update the FlexAttention section of RESULTS.md")
    args = parser.parse_args()
    names = [n for n in VARIANTS if not args.only or n in args.only.split(",")]
    parts = args.parts.split(",")
    warnings.filterwarnings("ignore")
    torch._dynamo.config.recompile_limit = 64  # one variant compiles every (N, D) twice: never fall back to eager
    torch._dynamo.config.accumulated_recompile_limit = 4096
    blocks = {}
    with torch.no_grad():
        for cfg in configs(args):
            started = time.perf_counter()
            print(f"== {cfg.device}: {versions(cfg.device)}", flush=True)
            measure_fn = measure if cfg.device == "cpu" else measure_cuda
            mask = attn = None
            if "mask" in parts:
                budget = Budget(cfg.max_seconds, cfg.max_mib, measure_fn)
                mask = block_mask_rows(cfg, names, budget, not args.no_compiled)
            if "attn" in parts:
                attn = attention_rows(cfg, names, Budget(cfg.max_seconds, cfg.max_mib, measure_fn))
            blocks[cfg.device] = render_device(cfg, mask, attn, args, time.perf_counter() - started)
            print(blocks[cfg.device], flush=True)
    if args.write:
        write_section(blocks)
        print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    reexec_with_fixed_malloc("flex_attention_inductor_")
    main()
