"""How close the tile analysis comes to the exact tile classes of a mask, on probe sizes.

The exact classes come from the same interval machinery at tiles of one pair (a point per
index, so every pair is decided exactly), pooled into tiles: any pair kept -> not EMPTY, every
pair kept -> FULL. The flex target uses the agreement to choose how to build its BlockMask.
"""

from __future__ import annotations

import torch

from ..ir import Expr, Spec
from ..runtime.sample import Sizes, sample_arguments
from .tiles import EMPTY, FULL, PARTIAL, classify_tiles

PROBES = (Sizes(B=2, H=4, HKV=2, SQ=1024, SKV=1024), Sizes(B=2, H=4, HKV=2, SQ=700, SKV=1100))


def tile_agreement(spec: Spec, mask: Expr, bq: int, bk: int, sizes: Sizes, seed: int = 0) -> float:
    """Share of tiles the analysis classifies exactly as the element-wise truth does."""
    from dataclasses import replace

    masked = replace(spec, mask=mask, selection=None)
    args = sample_arguments(spec, sizes, torch.float64, seed=seed)
    runtime = {p.name: args[p.name] for p in spec.runtime_params}
    inputs = {i.name: args[i.name] for i in spec.inputs}
    found = classify_tiles(masked, bq, bk, sizes.symbols(), runtime, inputs).classes
    pairs = classify_tiles(masked, 1, 1, sizes.symbols(), runtime, inputs).classes
    exact = _pool_classes(pairs, bq, bk)
    found, exact = torch.broadcast_tensors(found, exact)
    return float((found == exact).double().mean())


def _pool_classes(pairs: torch.Tensor, bq: int, bk: int) -> torch.Tensor:
    """Per-pair classes [.., SQ, SKV] -> per-tile classes [.., NQB, NKB]."""
    *lead, sq, skv = pairs.shape
    bq, bk = min(bq, sq), min(bk, skv)  # a block longer than the axis is one tile, as the axis is
    nq, nk = -(-sq // bq), -(-skv // bk)
    kept = torch.nn.functional.pad((pairs != EMPTY).to(torch.int8), (0, nk * bk - skv, 0, nq * bq - sq))
    sure = torch.nn.functional.pad((pairs == FULL).to(torch.int8), (0, nk * bk - skv, 0, nq * bq - sq), value=1)
    any_kept = kept.view(*lead, nq, bq, nk, bk).amax((-3, -1)) > 0
    all_kept = sure.view(*lead, nq, bq, nk, bk).amin((-3, -1)) > 0
    classes = torch.where(all_kept, FULL, PARTIAL)
    return torch.where(any_kept, classes, EMPTY).to(torch.int8)
