"""Range-min/max summaries of input tensors, so interval analysis can read inputs per tile.

For a table T and index intervals per dimension, `bounds(T, lows, highs)` returns tensors that
bound T over the box. Dimensions whose index is a single point are gathered exactly; one ranged
dimension is answered by a sparse table (O(n log n) to build, O(1) per query); several ranged
dimensions fall back to the table's global min and max (still correct, less precise).
"""

from __future__ import annotations

import torch


class RangeSummary:
    """Sparse tables of one tensor: level k holds min/max over windows of 2**k along each dim."""

    def __init__(self, table: torch.Tensor):
        self.table = table.to(torch.float64)
        self.levels: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}

    def _tables(self, dim: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if dim not in self.levels:
            lo = hi = self.table
            levels = [(lo, hi)]
            width = 1
            while 2 * width <= self.table.shape[dim]:
                n = lo.shape[dim] - width
                lo = torch.minimum(lo.narrow(dim, 0, n), lo.narrow(dim, width, n))
                hi = torch.maximum(hi.narrow(dim, 0, n), hi.narrow(dim, width, n))
                levels.append((lo, hi))
                width *= 2
            self.levels[dim] = levels
        return self.levels[dim]

    def bounds(self, lows: list[torch.Tensor], highs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Min and max of the table over the index box (indices already clamped, float64 tensors)."""
        if self.table.dim() == 0:
            return self.table, self.table
        ranged = [d for d, (lo, hi) in enumerate(zip(lows, highs)) if not bool((lo == hi).all())]
        if len(ranged) > 1:
            return self.table.min(), self.table.max()
        if not ranged:
            index = tuple(lo.long() for lo in torch.broadcast_tensors(*lows))
            value = self.table[index]
            return value, value
        return self._range_query(ranged[0], lows, highs)

    def _range_query(self, dim: int, lows, highs) -> tuple[torch.Tensor, torch.Tensor]:
        start, end = lows[dim].long(), highs[dim].long()
        length = end - start + 1
        level = torch.floor(torch.log2(length.to(torch.float64))).long()
        levels = self._tables(dim)
        out_lo, out_hi = None, None
        for k, (lo_table, hi_table) in enumerate(levels):
            use = level == k
            if not bool(use.any()):
                continue
            first = _gather(lo_table, hi_table, lows, dim, start)
            second = _gather(lo_table, hi_table, lows, dim, end - (1 << k) + 1)
            lo = torch.minimum(first[0], second[0])
            hi = torch.maximum(first[1], second[1])
            out_lo = lo if out_lo is None else torch.where(use, lo, out_lo)
            out_hi = hi if out_hi is None else torch.where(use, hi, out_hi)
        return out_lo, out_hi


def _gather(lo_table, hi_table, lows, dim, position):
    index = [lo.long() for lo in lows]
    index[dim] = position.clamp(0, lo_table.shape[dim] - 1)
    index = tuple(torch.broadcast_tensors(*index))
    return lo_table[index], hi_table[index]
