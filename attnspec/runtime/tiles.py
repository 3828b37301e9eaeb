"""The tile grid at run time: interval values of the index variables per (query block, key block) tile,
input loads bounded per tile through range summaries, and the tile classes (EMPTY / PARTIAL / FULL) of a
boolean interval. Generated modules classify their tiles with it at every call; the compile-time
analysis (attnspec/analysis/tiles.py) uses the same grid.
"""

from __future__ import annotations

import torch

from .intervals import Bool, Num, bounded, num
from .summaries import RangeSummary

EMPTY, PARTIAL, FULL = 0, 1, 2


class TileGrid:
    """The tile grid of one problem size: interval values of the index variables per tile, input
    loads through range summaries, and the class of a boolean interval per tile. Used by the
    analysis below and by generated code that classifies tiles at run time."""

    def __init__(self, sizes: dict[str, int], bq: int, bk: int):
        self.sizes, self.bq, self.bk = sizes, bq, bk
        self.nq, self.nk = -(-sizes["SQ"] // bq), -(-sizes["SKV"] // bk)
        self.summaries: dict[str, RangeSummary] = {}

    def index(self, name: str) -> Num:
        if name == "b":
            return _axis(self.sizes["B"], 0)
        if name == "h":
            return _axis(self.sizes["H"], 1)
        if name in ("q_block", "kv_block"):
            return _axis(self.nq, 2) if name == "q_block" else _axis(self.nk, 3)
        size, length, axis = (self.bq, self.sizes["SQ"], 2) if name == "q" else (self.bk, self.sizes["SKV"], 3)
        start = torch.arange(self.nq if name == "q" else self.nk, dtype=torch.float64) * size
        end = torch.clamp(start + size, max=length) - 1
        shape = [1, 1, 1, 1]
        shape[axis] = start.numel()
        return Num(start.view(shape), end.view(shape))

    def load(self, name: str, table: torch.Tensor, indices: list[Num]) -> Num | Bool:
        """Bounds of table[indices] per tile; indices are clamped into range as the targets do."""
        table = readable(table)
        summary = self.summaries.get(name)
        if summary is None:
            summary = self.summaries[name] = RangeSummary(table.detach().cpu())
        lows, highs = [], []
        for index, size in zip(indices, table.shape):
            lows.append(index.lo.clamp(0, size - 1))
            highs.append(index.hi.clamp(0, size - 1))
        lo, hi = summary.bounds(lows, highs)
        if table.dtype == torch.bool:
            return Bool(hi > 0, lo < 1)
        return bounded(lo, hi)  # a NaN in the table may be anything

    def classes(self, result: Bool) -> torch.Tensor:
        """EMPTY / PARTIAL / FULL per tile, int8 [B|1, H|1, NQB, NKB]."""
        may_true, may_false = torch.broadcast_tensors(result.may_true, result.may_false)
        classes = torch.where(may_false, PARTIAL, FULL)
        classes = torch.where(may_true, classes, EMPTY).to(torch.int8)
        while classes.dim() < 4:
            classes = classes.unsqueeze(0)
        return classes.expand(*classes.shape[:2], self.nq, self.nk)


def readable(table: torch.Tensor) -> torch.Tensor:
    """An input as every target reads it: one without elements (a zero-length dimension at this
    call) is a single 0 of its rank, the value each of its reads gives (language.md section 7)."""
    return table if table.numel() else table.new_zeros((1,) * table.dim())


def scalar(value) -> Num | Bool:
    """A run-time scalar (shape symbol or runtime param) as a point interval."""
    return Bool(torch.tensor(bool(value)), torch.tensor(not value)) if isinstance(value, bool) else num(float(value))


def block_lists(chosen: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[.., NQB, NKB] bool -> (count [.., NQB] int32, indices [.., NQB, NKB] int32, chosen blocks first, ascending)."""
    order = torch.sort((~chosen).to(torch.int8), dim=-1, stable=True).indices
    return chosen.sum(-1).to(torch.int32), order.to(torch.int32)


def _axis(count: int, axis: int) -> Num:
    shape = [1, 1, 1, 1]
    shape[axis] = count
    values = torch.arange(count, dtype=torch.float64).view(shape)
    return Num(values, values)
