"""A work model of a flash-style kernel: how many operations its mask and score mod cost.

Each IR operation (a non-leaf node) costs one evaluation wherever it is computed: per element of
a visited tile, per row, per column, or once per program. Without the optimizer every operation is
evaluated per element of every tile; with it, bindings move to their level, shared terms are
computed once, full tiles skip the mask and empty tiles are skipped altogether.

Row maps (prologues, per-row values, the epilogue: ir.RowMap) cost one evaluation per feature of a
row wherever the row is transformed: once per row in a prologue pass before the kernel, whose result
makes a round trip through memory, or fused into each kernel program that loads the row's tile.
A query row is loaded once per forward program but once per visited key tile by the dK/dV kernel;
a key row once per visited tile by the forward and dQ kernels (row_map_work).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..ir import LEAF_OPS, Expr, RowMap, Spec, walk
from ..sample import Sizes, evaluate_static
from .tiles import EMPTY, FULL, PARTIAL, Tiles


@dataclass(frozen=True)
class Work:
    tiles: int  # tiles visited
    mask_ops: float  # mask operations evaluated
    score_ops: float  # score-mod operations evaluated


def ops_by_level(spec: Spec, roots: list[Expr | None]) -> dict[str, int]:
    """Operations per level needed by the roots: their own nodes are per element; bindings at theirs."""
    counts = {"program": 0, "row": 0, "col": 0, "element": 0}
    needed, pending = set(), [r for r in roots if r is not None]
    for root in pending:
        counts["element"] += _ops(root)
    while pending:
        for node in walk(pending.pop()):
            if node.op == "temp" and node.value not in needed:
                needed.add(node.value)
                binding = spec.binding(node.value)
                counts[binding.level] += _ops(binding.value)
                pending.append(binding.value)
    return counts


def _ops(expr: Expr) -> int:
    return sum(1 for n in walk(expr) if n.op not in LEAF_OPS)


def per_tile(counts: dict[str, int], bq: int, bk: int) -> int:
    return counts["element"] * bq * bk + counts["row"] * bq + counts["col"] * bk + counts["program"]


def naive_work(spec: Spec, tiles: Tiles) -> Work:
    """Every tile visited, every operation per element (what an unanalysed kernel does)."""
    bq, bk, n = tiles.q_block, tiles.kv_block, tiles.total
    mask = _ops(spec.mask) * bq * bk if spec.mask is not None else 0
    return Work(n, float(mask * n), float(_ops(spec.score) * bq * bk * n))


def optimized_work(spec: Spec, tiles: Tiles) -> Work:
    """Empty tiles skipped, the mask only on partial tiles, bindings at their level."""
    bq, bk = tiles.q_block, tiles.kv_block
    partial, visited = tiles.count(PARTIAL), tiles.count(PARTIAL) + tiles.count(FULL)
    mask = per_tile(ops_by_level(spec, [spec.mask]), bq, bk) if spec.mask is not None else 0
    score = per_tile(ops_by_level(spec, [spec.score]), bq, bk)
    assert EMPTY == 0
    return Work(visited, float(mask * partial), float(score * visited))


@dataclass(frozen=True)
class RowMapWork:
    """One row map's operations per (batch, query head), as a prologue pass or fused into the kernels,
    for the forward alone and for training (forward and backward kernels), and the elements the
    prologue pass writes and reads back (what fusing saves)."""

    what: str  # "prologue q", "per-row value t of k", "epilogue out"
    prologue_ops: float  # once per row (its derivative, the same either way, is not counted)
    fused_forward_ops: float
    fused_training_ops: float
    round_trip: float

    def choice(self, training: bool) -> str:
        fused = self.fused_training_ops if training else self.fused_forward_ops
        return "fused" if fused <= self.prologue_ops else "prologue"


def row_map_work(spec: Spec, tiles: Tiles, features: int, group: int = 1) -> list[RowMapWork]:
    """The work of each row map of the spec (prologues, per-row values, epilogue) on these tiles, with
    `features` per row and `group` query heads per kv head (a key row's prologue serves the group)."""
    heads = tiles.classes.shape[0] * tiles.classes.shape[1]
    visited = (tiles.count(FULL) + tiles.count(PARTIAL)) / heads  # per (batch, head)
    steps = [(f"prologue {s.target}", s, s.target, 1) for s in spec.prologue]
    steps += [(f"per-row value {i.name} of {i.computed.target}", i.computed, i.computed.target + "_value", _entries(i, tiles, features))
              for i in spec.inputs if i.computed is not None]
    steps += [("epilogue out", spec.epilogue, "out", 1)] if spec.epilogue is not None else []
    return [_row_map_work(what, step, kind, tiles, visited, features, group, entries) for what, step, kind, entries in steps]


def _entries(decl, tiles: Tiles, features: int) -> int:
    """How many numbers a per-row value holds per row: a table's entries, else 1."""
    if decl.computed.entry is None:
        return 1
    sizes = Sizes(SQ=tiles.sq, SKV=tiles.skv, D=features, DV=features)
    return int(evaluate_static(decl.shape[-1], sizes))


def _row_map_work(what: str, step: RowMap, kind: str, tiles: Tiles, visited: float, features: int, group: int,
                  entries: int = 1) -> RowMapWork:
    per_row = _ops(step.value) * features * entries  # a table's value is computed for each entry
    width = entries if kind.endswith("_value") else features  # a per-row value stores its numbers per row
    if kind.startswith("q") or kind == "out":
        rows = tiles.sq
        forward = per_row * rows  # each query tile is loaded once per forward program
        # the epilogue runs once, after the normalization; q's tile is loaded again by the dQ kernel
        # once per program and by the dK/dV kernel once per visited tile
        training = forward if kind == "out" else forward + per_row * rows + per_row * visited * tiles.q_block
    else:
        rows = tiles.skv / group
        forward = per_row * visited * tiles.kv_block  # each visited key tile, per query head
        training = 2 * forward + per_row * tiles.skv  # the dQ kernel visits the same tiles; dK/dV once per key tile
    return RowMapWork(what, float(per_row * rows), float(forward), float(training), float(2 * rows * width))
