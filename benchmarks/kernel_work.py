"""Kernel work before and after the optimizer, per example (a model, not a timing).

Before: every tile visited, every mask and score-mod operation evaluated per (query, key) pair.
After: the tile analysis skips empty tiles and evaluates the mask only on partial tiles, and the
hoist/CSE passes move terms to their level (program, row, column). Prints a markdown table, then a
second one for the examples with row maps (prologues, per-row values, the epilogue): their work as a
prologue pass before the kernel against fused into the kernels, and the model's choice; a third for the
examples with prologues or per-row values: the tensor operations they take as tensor code, forward and
backward (what the reference and flex targets run, counted as dispatched), against the triton target's
generated passes.

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


def row_map_passes(path: Path, rows: int = 64, features: int = 64) -> list[str] | None:
    """The tensor operations of the example's prologue and per-row values as tensor code (those writing
    a tensor of at least half a row block's size), forward and backward (autograd, recomputing the
    forward), against the triton module's passes; None without either."""
    from torch.utils._python_dispatch import TorchDispatchMode

    spec = lower(pick_spec(attnspec.load_program(path), None))
    values = [i for i in spec.inputs if i.computed is not None and i.computed.entry is None]
    if not spec.prologue and not values:
        return None
    module = attnspec.compile(path, "triton")
    sizes = Sizes(B=2, H=4, HKV=2, SQ=rows, SKV=rows, D=features, DV=features)
    args = sample_arguments(spec, sizes, torch.float32)
    leaves = {n: t.detach().clone().requires_grad_(t.is_floating_point()) if isinstance(t, torch.Tensor) else t
              for n, t in args.items()}
    big = sizes.B * sizes.HKV * rows * features // 2
    forward: list[bool] = []
    backward: list[bool] = []
    counted = forward

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            counted.append(isinstance(out, torch.Tensor) and out.numel() >= big)
            return out

    def call(name: str, tensors):
        rest = [leaves[n] for n in list(inspect.signature(getattr(module, name)).parameters)[len(tensors):]]
        return getattr(module, name)(*tensors, *rest)

    with Count():
        q, k, v = call("_prologue", (leaves["q"], leaves["k"], leaves["v"])) if spec.prologue else (leaves["q"], leaves["k"], leaves["v"])
        results = [q, k, v] + (list(call("_row_values", (q, k))) if values else [])
        counted = backward
        wanted = [t for t in leaves.values() if isinstance(t, torch.Tensor) and t.requires_grad]
        changed = [r for r in results if r.grad_fn is not None]
        torch.autograd.grad(changed, wanted, [torch.ones_like(r) for r in changed], allow_unused=True)
    passes = dict(module.KERNELS.row_passes)
    forward_passes = sum(not name.endswith("_bwd") for name in passes)
    return [path.stem, str(len(forward)), str(sum(forward)), str(forward_passes),
            str(len(backward)), str(sum(backward)), str(len(passes) - forward_passes)]


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
    print("\nPrologues and per-row values as tensor code (tensor operations dispatched; those writing at least"
          " half the rows' elements, i.e. passes over memory), forward and backward (autograd of the tensor"
          " code), against the triton target's generated passes (one per statement or value, each way):\n")
    print("| example | forward: tensor operations | of them passes over the rows | triton passes | "
          "backward: tensor operations | of them passes over the rows | triton passes |")
    print("|---|---|---|---|---|---|---|")
    for path in sorted((ROOT / "examples").glob("*.attn")):
        cells = row_map_passes(path)
        if cells is not None:
            print("| " + " | ".join(cells) + " |")

if __name__ == "__main__":
    main()
