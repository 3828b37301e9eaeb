"""A work model of a flash-style kernel: how many operations its mask and score mod cost.

Each IR operation (a non-leaf node) costs one evaluation wherever it is computed: per element of
a visited tile, per row, per column, or once per program. Without the optimizer every operation is
evaluated per element of every tile; with it, bindings move to their level, shared terms are
computed once, full tiles skip the mask and empty tiles are skipped altogether.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..ir import LEAF_OPS, Expr, Spec, walk
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
