"""The kernel work model: counts follow the tile classes and the binding levels."""

from __future__ import annotations

from attnspec.analysis.cost import naive_work, ops_by_level, optimized_work, per_tile, row_map_work
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


def test_row_maps_cost_once_per_row_as_a_prologue_and_per_visited_tile_fused():
    plain, _ = specs("""attention r {
        prologue q[i, f] = q * 2.0 + 1.0
        prologue k[j, f] = k * 3.0
        mask kv <= q
    }""")
    tiles = classify_tiles(plain, 16, 16, SIZES)  # 10 of 16 tiles visited
    q_work, k_work = row_map_work(plain, tiles, features=8)
    assert q_work.what == "prologue q" and k_work.what == "prologue k"
    assert q_work.prologue_ops == 2 * 8 * 64 == q_work.fused_forward_ops  # a query tile is loaded once
    assert q_work.fused_training_ops == 2 * 8 * (64 + 64 + 10 * 16)  # dQ once, dK/dV per visited tile
    assert k_work.prologue_ops == 1 * 8 * 64
    assert k_work.fused_forward_ops == 1 * 8 * 10 * 16  # every visited tile loads its keys again
    assert (q_work.choice(training=False), q_work.choice(training=True)) == ("fused", "prologue")
    assert k_work.choice(training=False) == "prologue"
    assert q_work.round_trip == 2 * 64 * 8


def test_per_row_values_and_the_epilogue_are_counted():
    plain, _ = specs("""attention r {
        input w: float32[H, D]
        let t per k[j, f] = sum(k * w[h, f])
        score = score * t
        epilogue out = out * 0.5
    }""")
    tiles = classify_tiles(plain, 16, 16, SIZES)
    value, epilogue = row_map_work(plain, tiles, features=16)
    assert value.what == "per-row value t of k" and value.round_trip == 2 * 64  # one number per row
    assert epilogue.what == "epilogue out" and epilogue.fused_training_ops == epilogue.prologue_ops
