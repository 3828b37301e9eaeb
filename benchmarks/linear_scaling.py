"""Linear attention as the sequence grows: the reference's recurrent form against its dense form.

The reference module of a spec with a linear form (analysis/linear.py) has two evaluations of the same
rows: attention() materializes the [SQ, SKV] weights, O(N^2 D); recurrent() carries the state
S_t = decay * S_{t-1} + k_t^T v_t along the keys, O(N D DV) (one key at a time, so a Python loop per
key: its constant is large, its slope is 1). On the CPU; the chunked triton kernel's timings need a GPU
(in Triton's interpreter they would measure the interpreter). Prints a markdown table: median wall
time of each form per N, the ratio, and the largest difference between them (float32).

    python benchmarks/linear_scaling.py [--example examples/n18_lightning.attn] [--lengths 256 1024 4096]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

import attnspec
from attnspec.api import load_program
from attnspec.sample import Sizes, sample_arguments


def _median_seconds(call, repeats: int) -> float:
    call()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--example", default="examples/n18_lightning.attn")
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096, 8192])
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    spec = load_program(Path(args.example)).specs[0]
    module = attnspec.compile(Path(args.example).read_text(), "reference")
    print(f"`{spec.name}` ({Path(args.example).name}), B=1, H={args.heads}, D=DV={args.head_dim}, float32, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}\n")
    print("| N | dense attention() | recurrent() | dense / recurrent | max difference |")
    print("|---:|---:|---:|---:|---:|")
    for n in args.lengths:
        sizes = Sizes(B=1, H=args.heads, HKV=args.heads, SQ=n, SKV=n, D=args.head_dim, DV=args.head_dim)
        inputs = sample_arguments(spec, sizes, torch.float32, seed=0)
        with torch.no_grad():
            dense = _median_seconds(lambda: module.attention(**inputs), args.repeats)
            recurrent = _median_seconds(lambda: module.recurrent(**inputs), args.repeats)
            difference = float((module.attention(**inputs) - module.recurrent(**inputs)).abs().max())
        print(f"| {n} | {dense * 1e3:.1f} ms | {recurrent * 1e3:.1f} ms | {dense / recurrent:.2f} | {difference:.1e} |", flush=True)


if __name__ == "__main__":
    main()
