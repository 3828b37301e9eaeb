"""Linear attention on a GPU: the triton target's chunked kernels against its own quadratic tile kernels
and against SDPA's softmax attention (FlashAttention; causal where the spec is), as the sequence grows.

For a spec with a linear form (analysis/linear.py; `lightning`, examples/n18_lightning.attn, by default)
the triton module runs the chunked kernels of runtime/linear.py, forward and backward, in O(N D DV);
`linear.tile_kernels()` makes the same call run the quadratic tile kernels, O(N^2 D). SDPA is the anchor
a model would otherwise use at these lengths (flash-linear-attention's `chunk` kernels, the other
anchor, are not installed where this runs yet). Prints a markdown table: best of
interleaved rounds (CUDA events), forward without gradients and forward + backward, and the largest
difference between the chunked and the tile forward at each length (bf16 outputs).

    python benchmarks/linear_gpu.py [--example examples/n18_lightning.attn] [--lengths 4096 16384 65536] [--dims 64 128]
    python benchmarks/linear_gpu.py --smoke     # tiny sizes on the CPU in Triton's interpreter (no timing)
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

if "--smoke" in sys.argv:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # read when triton is imported

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

import attnspec  # noqa: E402
from attnspec.api import load_program  # noqa: E402
from attnspec.runtime import linear  # noqa: E402
from attnspec.sample import Sizes, sample_arguments  # noqa: E402
from common import fmt_time, interleaved, ratio, versions  # noqa: E402


def _calls(module, args: dict, sdpa_args: tuple, backward: bool, causal: bool) -> dict:
    """The timed calls: chunked, tile (quadratic) and SDPA (causal where the spec is), forward or
    forward + backward."""
    def ours(tiles: bool):
        def call():
            if tiles:
                with linear.tile_kernels():
                    out = module.attention(**args)
            else:
                out = module.attention(**args)
            if backward:
                out.float().sum().backward()
        return call

    def sdpa():
        out = torch.nn.functional.scaled_dot_product_attention(*sdpa_args, is_causal=causal)
        if backward:
            out.float().sum().backward()

    return {"chunks": ours(False), "tiles": ours(True), "sdpa": sdpa}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--example", default="examples/n18_lightning.attn")
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 16384, 65536])
    parser.add_argument("--dims", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU, the kernels in the interpreter")
    args = parser.parse_args()
    if args.smoke:
        args.lengths, args.dims, args.heads, args.reps = [40, 72], [16], 2, 1
    device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    if device == "cpu" and not args.smoke:
        sys.exit("linear_gpu.py times CUDA kernels: no GPU here (--smoke runs it small in Triton's interpreter)")
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    spec = load_program(Path(args.example)).specs[0]
    module = attnspec.compile(Path(args.example).read_text(), "triton")
    causal = spec.mask is not None  # a linear form's mask keeps the keys up to the query; without one, every key
    shape = "causal" if causal else "every key"
    print(f"`{spec.name}` ({Path(args.example).name}), B=1, H={args.heads}, {str(dtype).split('.')[-1]}, {shape}. {versions(device)}\n")
    print("| D | N | fwd chunks | fwd tiles | fwd SDPA | tiles / chunks | SDPA / chunks | fwd+bwd chunks | fwd+bwd tiles | fwd+bwd SDPA | SDPA / chunks | max diff |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for d in args.dims:
        for n in args.lengths:
            sizes = Sizes(B=1, H=args.heads, HKV=args.heads, SQ=n, SKV=n, D=d, DV=d)
            inputs = {name: t.to(device) for name, t in sample_arguments(spec, sizes, dtype, seed=0).items()}
            inputs = {name: (t * 0.1 if name in ("q", "k") else t) for name, t in inputs.items()}  # unnormalized rows stay in range
            with torch.no_grad():
                chunked = module.attention(**inputs)
                with linear.tile_kernels():
                    tiled = module.attention(**inputs)
            diff = float((chunked.float() - tiled.float()).abs().max())
            sdpa_args = tuple(inputs[x] for x in "qkv")
            with torch.no_grad():
                forward = interleaved(_calls(module, inputs, sdpa_args, False, causal), device, args.reps)
            leaves = {name: (t.detach().requires_grad_() if t.is_floating_point() else t) for name, t in inputs.items()}
            both = interleaved(_calls(module, leaves, tuple(leaves[x] for x in "qkv"), True, causal), device, args.reps)
            print(f"| {d} | {n} | {fmt_time(forward['chunks'])} | {fmt_time(forward['tiles'])} | {fmt_time(forward['sdpa'])} | "
                  f"{ratio(forward['tiles'], forward['chunks'])} | {ratio(forward['sdpa'], forward['chunks'])} | "
                  f"{fmt_time(both['chunks'])} | {fmt_time(both['tiles'])} | {fmt_time(both['sdpa'])} | "
                  f"{ratio(both['sdpa'], both['chunks'])} | {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
