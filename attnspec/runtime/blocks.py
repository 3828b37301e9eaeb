"""Block-level helpers every fast target's module uses: lists of chosen key blocks per query block,
and the tiles that hold a kept pair found without a dense mask."""

from __future__ import annotations

import torch

from .tiles import EMPTY, FULL, PARTIAL, block_lists
from .tracing import tracing


def class_lists(classes: torch.Tensor, selected=None):
    """(partial_num, partial_idx, full_num, full_idx) from tile classes [B|1, H|1, NQB, NKB]; a selection
    (bool [B, H, NQB, NKB] at the same tiles) drops every tile it does not keep."""
    if selected is not None:
        classes = torch.where(selected.to(classes.device), classes, EMPTY)
    return block_lists(classes == PARTIAL) + block_lists(classes == FULL)


def eligible_tiles(classes, block, shape, mask_mod, device, pairs_per_chunk=1 << 22):
    """Which tiles hold at least one kept pair, bool [B, H, NQB, NKB], without the dense mask.

    `classes` (tile classes [B|1, H|1, NQB, NKB], or None where the analysis has none) decide EMPTY
    and FULL tiles outright; `mask_mod` runs only on the pairs of PARTIAL tiles (every tile when
    `classes` is None), a chunk of tiles at a time, so memory stays O(chunk) whatever the lengths.
    A size-1 batch or head axis in `classes` means the mask does not read it: index 0 stands for all.
    Inside a compiled caller, the mask_mod runs on every pair at once instead (O(SQ x SKV) memory)."""
    batch, heads, sq, skv = shape
    bq, bk = block
    nq, nk = -(-sq // bq), -(-skv // bk)
    if tracing():  # inside torch.compile, whose graph cannot hold chunks of data-dependent size
        return _tiles_of_every_pair(block, shape, mask_mod, device)
    if classes is None:
        classes = torch.full((batch, heads, nq, nk), PARTIAL, dtype=torch.int8)
    classes = classes.to(device)
    eligible = classes == FULL
    tiles = (classes == PARTIAL).nonzero()
    rows = torch.arange(bq, device=device).view(1, bq, 1)
    cols = torch.arange(bk, device=device).view(1, 1, bk)
    for chunk in tiles.split(max(1, pairs_per_chunk // (bq * bk))):
        b, h, i, j = (c.view(-1, 1, 1) for c in chunk.unbind(1))
        q_idx, kv_idx = i * bq + rows, j * bk + cols
        inside = (q_idx < sq) & (kv_idx < skv)
        keep = mask_mod(b, h, q_idx.clamp(max=sq - 1), kv_idx.clamp(max=skv - 1)) & inside
        eligible[tuple(chunk.t())] = keep.flatten(1).any(1)
    return eligible.expand(batch, heads, nq, nk).clone()


def _tiles_of_every_pair(block, shape, mask_mod, device):
    """eligible_tiles by the mask_mod on the whole [B, H, SQ, SKV] grid, in one step."""
    batch, heads, sq, skv = shape
    bq, bk = block
    nq, nk = -(-sq // bq), -(-skv // bk)
    keep = torch.broadcast_to(mask_mod(*index_grids(shape, device)), shape)
    padded = torch.nn.functional.pad(keep, (0, nk * bk - skv, 0, nq * bq - sq), value=False)
    return padded.view(batch, heads, nq, bq, nk, bk).any(5).any(3)


def index_grids(shape, device):
    """(b, h, q, kv) index tensors that broadcast to a [B, H, SQ, SKV] grid, as mods are called."""
    views = ((-1, 1, 1, 1), (1, -1, 1, 1), (1, 1, -1, 1), (1, 1, 1, -1))
    return tuple(torch.arange(n, device=device).view(view) for n, view in zip(shape, views))
