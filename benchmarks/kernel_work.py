"""Kernel work before and after the optimizer, per example (a model, not a timing).

Before: every tile visited, every mask and score-mod operation evaluated per (query, key) pair.
After: the tile analysis skips empty tiles and evaluates the mask only on partial tiles, and the
hoist/CSE passes move terms to their level (program, row, column). Prints a markdown table, then a
second one for the examples with row maps (prologues, per-row values, the epilogue): their work as a
prologue pass before the kernel against fused into the kernels, and the model's choice; a third for the
examples with prologues: the tensor operations their prologue takes as tensor code (what the reference
and flex targets run, counted as dispatched), against the triton target's generated passes.

    python benchmarks/kernel_work.py [--tokens 4096] [--block 128]
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
from pathlib import Path

import torch

import attnspec
from attnspec.analysis.cost import naive_work, optimized_work, row_map_work
from attnspec.analysis.tiles import classify_tiles
from attnspec.api import lower, pick_spec
from attnspec.passes import OPTIMIZE, STANDARD
from attnspec.sample import Sizes, sample_arguments

ROOT = Path(__file__).resolve().parent.parent


def tiles_of(plain, tokens: int, block: int):
    """The spec's tiles at SQ = SKV = tokens (its static blocks, else block x block), counted per batch
    and head whether or not the mask depends on them; B = 1, H = 4 query heads on HKV = 1."""
    sel = plain.selection
    bq = bk = block
    if sel is not None and not sel.dynamic:
        bq, bk = sel.q_block.literal, sel.kv_block.literal
    sizes = Sizes(B=1, H=4, HKV=1, SQ=tokens, SKV=tokens, D=64, DV=64)
    args = sample_arguments(plain, sizes, torch.float32, seed=0)
    runtime = {p.name: args[p.name] for p in plain.runtime_params}
    inputs = {i.name: args[i.name] for i in plain.inputs if i.computed is None}
    tiles = classify_tiles(plain, bq, bk, sizes.symbols(), runtime, inputs)
    return dataclasses.replace(tiles, classes=tiles.classes.expand(sizes.B, sizes.H, -1, -1))


def row_map_rows(path: Path, tokens: int, block: int) -> list[list[str]]:
    """One line per row map of the example: ops as a prologue, fused (forward, training), the round trip."""
    plain = lower(pick_spec(attnspec.load_program(path), None), passes=STANDARD)
    tiles = tiles_of(plain, tokens, block)
    lines = []
    for w in row_map_work(plain, tiles, features=64, group=4):
        lines.append([
            path.stem, w.what, f"{w.prologue_ops:.3g}", f"{w.fused_forward_ops:.3g}", f"{w.fused_training_ops:.3g}",
            f"{w.fused_forward_ops / w.prologue_ops:.2f}x", f"{w.fused_training_ops / w.prologue_ops:.2f}x",
            f"{w.round_trip:.3g}", f"{w.choice(False)} / {w.choice(True)}",
        ])
    return lines


def prologue_passes(path: Path, rows: int = 64, features: int = 64) -> list[str] | None:
    """The tensor operations of the example's prologue as tensor code (those writing a tensor of at
    least half a row block's size), against the triton module's passes; None without a prologue."""
    from torch.utils._python_dispatch import TorchDispatchMode

    spec = lower(pick_spec(attnspec.load_program(path), None))
    if not spec.prologue:
        return None
    module = attnspec.compile(path, "triton")
    sizes = Sizes(B=2, H=4, HKV=2, SQ=rows, SKV=rows, D=features, DV=features)
    args = sample_arguments(spec, sizes, torch.float32)
    rest = [args[name] for name in list(inspect.signature(module._prologue).parameters)[3:]]
    ops: list[bool] = []
    big = sizes.B * sizes.HKV * rows * features // 2

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            ops.append(isinstance(out, torch.Tensor) and out.numel() >= big)
            return out

    with Count():
        module._prologue(args["q"], args["k"], args["v"], *rest)
    return [path.stem, str(len(ops)), str(sum(ops)), str(len(module.KERNELS.prologue))]


def measure(path: Path, tokens: int, block: int) -> tuple[str, list[str]]:
    spec = pick_spec(attnspec.load_program(path), None)
    plain, fast = lower(spec, passes=STANDARD), lower(spec, passes=OPTIMIZE)
    tiles = tiles_of(plain, tokens, block)
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
    print("\nRow maps, per batch and query head, D = 64 (ops: operations per feature of a row, summed):\n")
    print("| example | row map | ops as a prologue | fused, forward | fused, training | forward ratio | "
          "training ratio | round trip (elements) | cheaper (forward / training) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for path in sorted((ROOT / "examples").glob("*.attn")):
        for cells in row_map_rows(path, args.tokens, args.block):
            print("| " + " | ".join(cells) + " |")
    print("\nPrologues as tensor code (tensor operations dispatched; those writing at least half the rows'"
          " elements, i.e. passes over memory) against the triton target's generated passes (one per"
          " statement):\n")
    print("| example | tensor operations | of them passes over the rows | triton passes |")
    print("|---|---|---|---|")
    for path in sorted((ROOT / "examples").glob("*.attn")):
        cells = prologue_passes(path)
        if cells is not None:
            print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
