"""Tile classification: for each (query block, key block), is the mask empty, full or partial?

Decided by interval arithmetic over the index expressions (interval.py) on the tile grid of
runtime/tiles.py, for all tiles at once, never by evaluating every element. EMPTY and FULL are proofs; PARTIAL is always allowed. A static
block rule is applied exactly (its block indices are points). Data-dependent selection is not
part of the classification: it is decided at run time and intersected by the kernels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..diagnostics import AttnError
from ..ir import Expr, Spec, inline_bindings
from ..runtime.intervals import Num, num
from ..runtime.tiles import EMPTY, FULL, PARTIAL, TileGrid, block_lists, scalar
from ..types import infer
from .interval import Evaluator

@dataclass(frozen=True)
class Tiles:
    """Tile classes [Bm, Hm, NQB, NKB] (Bm = B if the mask depends on the batch, else 1; Hm likewise)."""

    classes: torch.Tensor  # int8
    q_block: int
    kv_block: int
    sq: int
    skv: int
    run_time_selection: bool = False  # a data-dependent selection may drop any tile at run time

    @property
    def total(self) -> int:
        return self.classes.numel()

    def count(self, kind: int) -> int:
        return int((self.classes == kind).sum())

    def density(self) -> dict[str, float]:
        """Fractions of tiles visited (full + partial), full and partial."""
        full, partial = self.count(FULL), self.count(PARTIAL)
        total = max(self.total, 1)
        return {"visited": (full + partial) / total, "full": full / total, "partial": partial / total}

    def rows_never_empty(self) -> bool:
        """Proof that no query row is fully masked: every query block has a FULL tile (and no
        data-dependent selection can drop it)."""
        return not self.run_time_selection and bool((self.classes == FULL).any(-1).all())

    def contiguous(self) -> bool:
        """Whether each query block's visited tiles form one contiguous range of key blocks (of the
        mask's schedule; a data-dependent selection is a list of its own on top)."""
        visited = self.classes != EMPTY
        count = visited.sum(-1)
        idx = torch.arange(visited.shape[-1])
        first = torch.where(visited, idx, visited.shape[-1]).amin(-1)
        last = torch.where(visited, idx, -1).amax(-1)
        return bool(((count == 0) | (last - first + 1 == count)).all())

    def block_lists(self):
        """FlexAttention-style lists: (partial_num, partial_idx, full_num, full_idx), lower blocks first."""
        return block_lists(self.classes == PARTIAL) + block_lists(self.classes == FULL)


def classify_tiles(
    spec: Spec, q_block: int, kv_block: int, sizes: dict[str, int], runtime: dict | None = None,
    inputs: dict[str, torch.Tensor] | None = None,
) -> Tiles:
    """Classify every tile of a lowered spec at the given sizes, runtime params and input values."""
    if q_block < 1 or kv_block < 1:
        raise AttnError("block sizes must be positive")
    sq, skv = sizes["SQ"], sizes["SKV"]
    nq, nk = -(-sq // q_block), -(-skv // kv_block)
    env = _TileEnv(spec, q_block, kv_block, sizes, runtime or {}, inputs or {})
    classes = torch.full((1, 1, nq, nk), FULL, dtype=torch.int8)
    if spec.mask is not None:
        classes = _combine(classes, env.classes(inline_bindings(spec.mask, spec)))
    sel = spec.selection
    if sel is not None and not sel.dynamic:
        if (sel.q_block.literal, sel.kv_block.literal) != (q_block, kv_block):
            raise AttnError(
                f"the spec selects blocks of ({sel.q_block.literal}, {sel.kv_block.literal}); "
                f"tiles of ({q_block}, {kv_block}) cannot apply its rule exactly"
            )
        classes = _combine(classes, env.classes(sel.keep))
    dynamic = sel is not None and sel.dynamic
    return Tiles(classes.contiguous(), q_block, kv_block, sq, skv, run_time_selection=dynamic)


def _combine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = torch.broadcast_tensors(a, b)
    return torch.minimum(a, b)  # EMPTY < PARTIAL < FULL: the tighter class wins for AND


class _TileEnv:
    def __init__(self, spec: Spec, bq: int, bk: int, sizes: dict[str, int], runtime: dict, inputs: dict):
        self.spec, self.runtime, self.inputs = spec, runtime, inputs
        self.grid = TileGrid(sizes, bq, bk)

    def classes(self, predicate: Expr) -> torch.Tensor:
        """EMPTY / PARTIAL / FULL per tile for a boolean expression."""
        result = Evaluator(self.leaf, self.load, lambda e: infer(e, self.spec) == "float")(predicate)
        return self.grid.classes(result)

    def leaf(self, e: Expr):
        if e.op == "shape":
            return num(self.grid.sizes[e.value])
        if e.op == "param":
            return self._param(e)
        if e.op == "index_var":
            return self.grid.index(e.value)
        raise AttnError(f"cannot analyse '{e.op}' in a mask", e.span)

    def _param(self, e: Expr):
        param = self.spec.param(e.value)
        value = self.runtime.get(e.value, None if param.default is None else param.default.literal)
        if value is None:
            raise AttnError(f"runtime param '{e.value}' needs a value to build the tile schedule", e.span)
        return scalar(value)

    def load(self, e: Expr, indices: list[Num]):
        table = self.inputs.get(e.value)
        if table is None:
            raise AttnError(f"input '{e.value}' needs a value to build the tile schedule", e.span)
        return self.grid.load(e.value, table, indices)
