"""Kernel work before and after the optimizer, per example (a model, not a timing).

Before: every tile visited, every mask and score-mod operation evaluated per (query, key) pair.
After: the tile analysis skips empty tiles and evaluates the mask only on partial tiles, and the
hoist/CSE passes move terms to their level (program, row, column). Prints a markdown table.

    python benchmarks/kernel_work.py [--tokens 4096] [--block 128]
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch

import attnspec
from attnspec.analysis.cost import naive_work, optimized_work
from attnspec.analysis.tiles import classify_tiles
from attnspec.api import lower, pick_spec
from attnspec.passes import OPTIMIZE, STANDARD
from attnspec.sample import Sizes, sample_arguments

ROOT = Path(__file__).resolve().parent.parent


def measure(path: Path, tokens: int, block: int) -> tuple[str, list[str]]:
    spec = pick_spec(attnspec.load_program(path), None)
    plain, fast = lower(spec, passes=STANDARD), lower(spec, passes=OPTIMIZE)
    sel = plain.selection
    bq = bk = block
    if sel is not None and not sel.dynamic:
        bq, bk = sel.q_block.literal, sel.kv_block.literal
    sizes = Sizes(B=1, H=4, HKV=1, SQ=tokens, SKV=tokens, D=64, DV=64)
    args = sample_arguments(plain, sizes, torch.float32, seed=0)
    runtime = {p.name: args[p.name] for p in plain.runtime_params}
    inputs = {i.name: args[i.name] for i in plain.inputs}
    tiles = classify_tiles(plain, bq, bk, sizes.symbols(), runtime, inputs)
    # count tiles per (batch, head), whether or not the mask depends on them
    tiles = dataclasses.replace(tiles, classes=tiles.classes.expand(sizes.B, sizes.H, -1, -1))
    before, after = naive_work(plain, tiles), optimized_work(fast, tiles)
    ratio = lambda a, b: f"{a / b:.1f}x" if b else ("-" if not a else "all")  # noqa: E731
    return spec.name, [
        f"{before.tiles}", f"{after.tiles}", f"{before.mask_ops:.3g}", f"{after.mask_ops:.3g}",
        ratio(before.mask_ops, after.mask_ops), f"{before.score_ops:.3g}", f"{after.score_ops:.3g}",
        ratio(before.score_ops, after.score_ops),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--block", type=int, default=128)
    args = parser.parse_args()
    print(f"SQ = SKV = {args.tokens}, tiles of {args.block} (or the spec's static blocks), B=1, H=4 "
          "(tiles counted per batch and head), sample inputs\n")
    print("| example | tiles before | tiles after | mask ops before | mask ops after | mask work cut | "
          "score ops before | score ops after | score work cut |")
    print("|---|---|---|---|---|---|---|---|---|")
    for path in sorted((ROOT / "examples").glob("*.attn")):
        name, cells = measure(path, args.tokens, args.block)
        print(f"| {path.stem} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
