"""How close the tile analysis comes to the exact tile classes of a mask, on probe sizes.

EMPTY and FULL answers of the analysis are proofs, so they agree with the exact classes by
construction; only its PARTIAL tiles need checking. Their exact class comes from the same interval
machinery at the tile's pairs (a point per index, so every pair is decided exactly): some pair kept
and some dropped -> PARTIAL, the analysis was exact there. The flex target uses the agreement to
choose how to build its BlockMask, a choice between two sound BlockMasks, so the figure steers
speed, never correctness.

Cost: the pairs are evaluated a chunk at a time (memory stays near CHUNK_WORK interval values,
whatever the mask's size), and about PROBE_WORK pair x node evaluations per probe. First
SAMPLED_PAIRS pairs of each PARTIAL tile: one kept and one dropped prove the tile partial (most
are). Only the tiles left unproven need every pair: beyond the budget an evenly spaced sample of
them is checked and the agreement extrapolated from it;
when not one tile fits (a mask of more than PROBE_WORK / (bq x bk) nodes, 4096 at 128 x 128), every
PARTIAL tile counts as inexact (the proven lower bound of the agreement). The
probe's cost is O(tiles x nodes + PROBE_WORK), polynomial in the spec's size.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from ..ir import Expr, Spec, inline_bindings
from ..sample import Sizes, sample_inputs
from ..types import infer
from .interval import Evaluator, Num
from .tiles import PARTIAL, TileGrid, _TileEnv, classify_tiles

PROBES = (Sizes(B=2, H=4, HKV=2, SQ=1024, SKV=1024), Sizes(B=2, H=4, HKV=2, SQ=700, SKV=1100))
PROBE_WORK = 2**20  # pair x node evaluations spent on the exact classes per probe (milliseconds)
SAMPLED_PAIRS = 256  # pairs per PARTIAL tile tried first, drawn at random (a fixed draw) over the tile
CHUNK_WORK = 2**22  # pair x node values alive at once (the evaluator keeps every node's interval)


def tile_agreement(spec: Spec, mask: Expr, bq: int, bk: int, sizes: Sizes, seed: int = 0,
                   work: int | None = None) -> float:
    """Share of tiles the analysis classifies exactly as the element-wise truth does (an estimate
    from a sample of its PARTIAL tiles when checking them all would cost more than `work`, by
    default PROBE_WORK, pair x node evaluations)."""
    work = PROBE_WORK if work is None else work
    masked = replace(spec, mask=mask, selection=None)
    args = sample_inputs(spec, sizes, seed=seed, row_values=True)  # the mask reads inputs and params, never q, k, v
    runtime = {p.name: args[p.name] for p in spec.runtime_params}
    inputs = {i.name: args[i.name] for i in spec.inputs}
    found = classify_tiles(masked, bq, bk, sizes.symbols(), runtime, inputs).classes
    partial = (found == PARTIAL).nonzero()  # [P, 4]: (b, h, query block, key block), Bm / Hm may be 1
    if len(partial) == 0:
        return 1.0
    nodes = mask_nodes(masked)
    env = _PairEnv(masked, bq, bk, sizes.symbols(), runtime, inputs)
    chunk = max(1, CHUNK_WORK // nodes)
    # most PARTIAL tiles are partial, which a few of their pairs prove (one kept, one dropped); only the
    # rest need every pair, within the work budget
    sampled = partial[: work // (SAMPLED_PAIRS * nodes)]
    unproven = torch.cat([sampled[~env.exact_partial(sampled, chunk, SAMPLED_PAIRS)], partial[len(sampled):]])
    tiles = _evenly_spaced(unproven, work // (min(bq, sizes.SQ) * min(bk, sizes.SKV) * nodes))
    exact = env.exact_partial(tiles, chunk)
    inexact = int((~exact).sum()) * len(unproven) / len(tiles) if len(tiles) else len(unproven)
    return (found.numel() - inexact) / found.numel()


def mask_nodes(spec: Spec) -> int:
    """Distinct nodes of the (inlined) mask: the interval evaluator computes each once."""
    seen: set[int] = set()
    stack = [inline_bindings(spec.mask, spec)]
    while stack:
        node = stack.pop()
        if id(node) not in seen:
            seen.add(id(node))
            stack.extend(node.args)
    return len(seen)


def _evenly_spaced(rows: torch.Tensor, count: int) -> torch.Tensor:
    if count >= len(rows):
        return rows
    return rows[(torch.arange(max(count, 0)) * len(rows)) // max(count, 1)]


class _PairGrid(TileGrid):
    """Pairs as points: each index variable is one value per pair, [1, 1, 1, pairs]."""

    def __init__(self, sizes: dict[str, int], bq: int, bk: int, points: dict[str, torch.Tensor], summaries: dict):
        super().__init__(sizes, bq, bk)
        self.points, self.summaries = points, summaries

    def index(self, name: str) -> Num:
        if name not in self.points:
            raise ValueError(f"a mask cannot read '{name}'")
        value = self.points[name].view(1, 1, 1, -1)
        return Num(value, value)


class _PairEnv(_TileEnv):
    """The tile analysis's leaves and loads, over the pairs of chosen tiles."""

    def __init__(self, spec: Spec, bq: int, bk: int, sizes: dict[str, int], runtime: dict, inputs: dict):
        super().__init__(spec, bq, bk, sizes, runtime, inputs)
        self.sizes = sizes
        self.bq, self.bk = min(bq, sizes["SQ"]), min(bk, sizes["SKV"])  # a block longer than the axis is the axis

    def exact_partial(self, tiles: torch.Tensor, chunk: int, sampled: int | None = None) -> torch.Tensor:
        """bool [tiles]: some pair of the tile is kept and some dropped (its exact class is PARTIAL),
        evaluated `chunk` pairs at a time. Pairs past SQ / SKV repeat the tile's last row or column,
        which changes neither. `sampled`: only that many pairs per tile (True is then
        still a proof; False means not proven)."""
        mask = inline_bindings(self.spec.mask, self.spec)
        floats: dict[int, bool] = {}  # per node, across chunks

        def is_float(e: Expr) -> bool:
            if id(e) not in floats:
                floats[id(e)] = infer(e, self.spec) == "float"
            return floats[id(e)]

        summaries: dict = {}
        area = self.bq * self.bk
        if sampled is None or sampled >= area:
            offsets = torch.arange(area)
        else:  # at random: evenly spaced pairs would alias with a dilated or strided mask
            offsets = torch.randperm(area, generator=torch.Generator().manual_seed(0))[:sampled]
        per_tile = len(offsets)
        kept = torch.zeros(len(tiles), dtype=torch.int64)
        dropped = torch.zeros(len(tiles), dtype=torch.int64)
        for start in range(0, len(tiles) * per_tile, chunk):
            pair = torch.arange(start, min(start + chunk, len(tiles) * per_tile))
            tile = torch.div(pair, per_tile, rounding_mode="floor")
            self.grid = _PairGrid(self.sizes, self.bq, self.bk, self.points(tiles[tile], offsets[pair % per_tile]), summaries)
            result = Evaluator(self.leaf, self.load, is_float)(mask)
            may_true, may_false = (torch.broadcast_to(x, (1, 1, 1, len(pair))).reshape(-1) for x in (result.may_true, result.may_false))
            kept.index_add_(0, tile, may_true.long())
            dropped.index_add_(0, tile, may_false.long())
        return (kept > 0) & (dropped > 0)

    def points(self, tiles: torch.Tensor, offset: torch.Tensor) -> dict[str, torch.Tensor]:
        t = tiles.to(torch.float64)
        row, col = torch.div(offset, self.bk, rounding_mode="floor"), offset % self.bk
        return {
            "b": t[:, 0], "h": t[:, 1],
            "q": torch.clamp(t[:, 2] * self.bq + row, max=self.sizes["SQ"] - 1),
            "kv": torch.clamp(t[:, 3] * self.bk + col, max=self.sizes["SKV"] - 1),
        }
