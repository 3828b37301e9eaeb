"""The kernel work model: counts follow the tile classes and the binding levels."""

from __future__ import annotations

from attnspec.analysis.cost import naive_work, ops_by_level, optimized_work, per_tile
from attnspec.analysis.tiles import classify_tiles
from attnspec.api import lower
from attnspec.frontend import parse_program
from attnspec.passes import OPTIMIZE, STANDARD

SIZES = {"B": 1, "H": 1, "HKV": 1, "SQ": 64, "SKV": 64, "D": 16}


def specs(text):
    spec = parse_program(text).specs[0]
    return lower(spec, passes=STANDARD), lower(spec, passes=OPTIMIZE)


def test_causal_mask_runs_only_on_diagonal_tiles():
    plain, fast = specs("attention c { mask kv <= q }")
    tiles = classify_tiles(plain, 16, 16, SIZES)
    assert (tiles.count(0), tiles.count(1), tiles.count(2)) == (6, 4, 6)
    before, after = naive_work(plain, tiles), optimized_work(fast, tiles)
    assert before.tiles == 16 and after.tiles == 10
    assert before.mask_ops == 1 * 16 * 16 * 16  # one comparison per pair of every tile
    assert after.mask_ops == 1 * 16 * 16 * 4  # per pair of the 4 partial tiles only


def test_hoisted_terms_cost_per_row_and_column():
    _, fast = specs("attention n { mask q // 8 == kv // 8 }")
    counts = ops_by_level(fast, [fast.mask])
    assert counts == {"program": 0, "row": 1, "col": 1, "element": 1}
    assert per_tile(counts, 16, 32) == 16 * 32 + 16 + 32
