"""Block selection in the reference: static rules and data-dependent top / threshold / share.

The expected selections are computed independently here with explicit loops over blocks
(small sizes), from design.md section 2: pool q and k per block over the block's valid rows,
score every (query block, key block) pair, drop ineligible blocks (tile fully masked, or after
the query block when `causal`), choose (ties toward the lower block index), add `always` blocks.
"""

from __future__ import annotations

import math

import pytest
import torch

import attnspec

F64 = torch.float64
TOL = dict(rtol=1e-10, atol=1e-12)


def rand_qkv(B=2, H=2, HKV=None, SQ=10, SKV=11, D=4, DV=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    HKV = H if HKV is None else HKV
    q = torch.randn(B, H, SQ, D, generator=gen, dtype=F64)
    k = torch.randn(B, HKV, SKV, D, generator=gen, dtype=F64)
    v = torch.randn(B, HKV, SKV, DV, generator=gen, dtype=F64)
    return q, k, v


def nblocks(n, size):
    return -(-n // size)


def pool_ref(x, size, how):
    """[B, heads, S, D] -> [B, heads, NB, D], each block reduced over its valid rows only."""
    parts = []
    for start in range(0, x.shape[2], size):
        blk = x[:, :, start : start + size]
        parts.append({"mean": blk.mean(2), "max": blk.amax(2), "min": blk.amin(2)}[how])
    return torch.stack(parts, 2)


def dot_scores(q, k, bq, bk, q_how="mean", k_how="mean"):
    """score[b, h, I, J] = <pool_q(b, h, I), pool_k(b, h // G, J)>, by explicit loops."""
    pq, pk = pool_ref(q, bq, q_how), pool_ref(k, bk, k_how)
    B, H, NQB, _ = pq.shape
    NKB, G = pk.shape[2], H // k.shape[1]
    s = torch.empty(B, H, NQB, NKB, dtype=F64)
    for b in range(B):
        for h in range(H):
            for i in range(NQB):
                for j in range(NKB):
                    s[b, h, i, j] = (pq[b, h, i] * pk[b, h // G, j]).sum()
    return s


def expected_selection(scores, keep, bq, bk, rule, amount, *, causal=False, scope="head", always=None, HKV=None,
                       ranked_globally=False):
    """The selected blocks [B, H, NQB, NKB] bool, computed block by block (ranked per query block, or
    every pair of a head together where ranked_globally)."""
    B, H, SQ, SKV = keep.shape
    NQB, NKB = nblocks(SQ, bq), nblocks(SKV, bk)
    eligible = torch.zeros(B, H, NQB, NKB, dtype=torch.bool)
    for b in range(B):
        for h in range(H):
            for i in range(NQB):
                for j in range(NKB):
                    tile = keep[b, h, i * bq : (i + 1) * bq, j * bk : (j + 1) * bk]
                    ok = bool(tile.any())
                    if causal:  # the key block starts no later than the block's last query, bottom-right aligned
                        ok = ok and j * bk <= min((i + 1) * bq, SQ) - 1 + (SKV - SQ)
                    eligible[b, h, i, j] = ok
    scores = scores.clone()
    if scope == "kv_head":
        G = H // HKV
        for b in range(B):
            for g in range(HKV):
                heads = slice(g * G, (g + 1) * G)
                scores[b, heads] = scores[b, heads].sum(0, keepdim=True)
                eligible[b, heads] = eligible[b, heads].any(0, keepdim=True)
    chosen = torch.zeros(B, H, NQB, NKB, dtype=torch.bool)
    for b in range(B):
        for h in range(H):
            if ranked_globally:  # pair (i, j) is candidate i * NKB + j: ties go to the lower query block, then key block
                cands = [i * NKB + j for i in range(NQB) for j in range(NKB) if eligible[b, h, i, j]]
                row = [float(scores[b, h, i, j]) for i in range(NQB) for j in range(NKB)]
                for c in _choose(rule, amount, cands, row):
                    chosen[b, h, c // NKB, c % NKB] = True
                continue
            for i in range(NQB):
                cands = [j for j in range(NKB) if eligible[b, h, i, j]]
                row = [float(scores[b, h, i, j]) for j in range(NKB)]
                for j in _choose(rule, amount, cands, row):
                    chosen[b, h, i, j] = True
    if always is not None:
        G = 1 if scope == "head" else H // HKV
        for b in range(B):
            for h in range(H):
                group = range(h // G * G, h // G * G + G)  # per kv_head: always holds if it holds for any head of the group
                for i in range(NQB):
                    for j in range(NKB):
                        if any(always(b, g, i, j) for g in group):
                            chosen[b, h, i, j] = True
    return chosen


def _choose(rule, amount, cands, row):
    if rule == "top":
        return sorted(cands, key=lambda j: (-row[j], j))[:amount]
    if rule == "threshold":
        return [j for j in cands if row[j] >= amount]
    assert rule == "share"
    if not cands:
        return []
    top = max(row[j] for j in cands)
    weights = {j: math.exp(row[j] - top) for j in cands}
    total = sum(weights.values())
    picked, mass = [], 0.0
    for j in sorted(cands, key=lambda j: (-weights[j], j)):
        if mass < amount:  # smallest prefix whose cumulative share reaches amount
            picked.append(j)
        mass += weights[j] / total
    return picked


def expand_blocks(blocks, bq, bk, SQ, SKV):
    B, H, NQB, NKB = blocks.shape
    out = torch.zeros(B, H, SQ, SKV, dtype=torch.bool)
    for i in range(SQ):
        for j in range(SKV):
            out[:, :, i, j] = blocks[:, :, i // bq, j // bk]
    return out


def dense_softmax(q, k, v, keep):
    H = q.shape[1]
    kx, vx = k.repeat_interleave(H // k.shape[1], 1), v.repeat_interleave(H // v.shape[1], 1)
    s = q @ kx.transpose(-1, -2) / math.sqrt(q.shape[-1])
    s = s.masked_fill(~keep, -math.inf)
    m = s.amax(-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, 0.0)
    p = torch.exp(s - m)
    den = p.sum(-1, keepdim=True)
    return (p / torch.where(den > 0, den, 1.0)) @ vx


def token_grid(B, H, SQ, SKV):
    return (
        torch.arange(B).view(B, 1, 1, 1),
        torch.arange(H).view(1, H, 1, 1),
        torch.arange(SQ).view(1, 1, SQ, 1),
        torch.arange(SKV).view(1, 1, 1, SKV),
    )


def all_kept(B, H, SQ, SKV):
    return torch.ones(B, H, SQ, SKV, dtype=torch.bool)


# ------------------------------------------------------------------ static rules


def test_static_keep_rule_with_partial_tail_blocks():
    mod = attnspec.compile(
        "attention st { mask kv <= q + 1\n select blocks(q = 4, kv = 3) keep kv_block <= q_block + 1 and (h + kv_block + b) % 2 == 0 }"
    )
    q, k, v = rand_qkv(B=2, H=3, SQ=10, SKV=11)
    sel = mod.select(q, k)
    want = torch.zeros(2, 3, 3, 4, dtype=torch.bool)
    for b in range(2):
        for h in range(3):
            for i in range(3):
                for j in range(4):
                    want[b, h, i, j] = j <= i + 1 and (h + j + b) % 2 == 0
    assert torch.equal(sel.block_mask, want)
    assert (sel.q_block, sel.kv_block) == (4, 3)
    _, _, i, j = token_grid(2, 3, 10, 11)
    keep = (j <= i + 1) & expand_blocks(want, 4, 3, 10, 11)
    torch.testing.assert_close(mod.attention(q, k, v), dense_softmax(q, k, v, keep), **TOL)


def test_static_rule_may_use_compile_time_params_and_shapes():
    mod = attnspec.compile("attention st2 { param w: int = 1\n select blocks(q = 2, kv = 2) keep abs(q_block - kv_block) <= w or kv_block == SKV // 2 - 1 }")
    q, k, v = rand_qkv(SQ=8, SKV=12)
    blocks = mod.select(q, k).block_mask
    for i in range(4):
        for j in range(6):
            assert bool(blocks[0, 0, i, j]) == (abs(i - j) <= 1 or j == 5)


# ------------------------------------------------------------------ top-k


def tie_inputs(c, bk, SQ=8, B=1, H=1):
    """q rows all (1, 0); key block J rows all (c[J], 7): every query block scores block J as c[J]."""
    SKV = len(c) * bk
    q = torch.zeros(B, H, SQ, 2, dtype=F64)
    q[..., 0] = 1.0
    k = torch.zeros(B, H, SKV, 2, dtype=F64)
    for j, value in enumerate(c):
        k[:, :, j * bk : (j + 1) * bk, 0] = value
        k[:, :, j * bk : (j + 1) * bk, 1] = 7.0
    v = torch.randn(B, H, SKV, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    return q, k, v


@pytest.mark.parametrize(
    "c, topk, want",
    [
        ([0.0, 5.0, 1.0, 5.0, 5.0], 2, {1, 3}),
        ([2.0, 2.0, 2.0, 2.0], 3, {0, 1, 2}),
        ([1.0, 3.0, 3.0, 0.0], 1, {1}),
        ([4.0, 4.0, 9.0, 4.0], 2, {0, 2}),
        ([1.0, 1.0], 5, {0, 1}),
    ],
)
def test_top_k_ties_go_to_the_lower_block_index(c, topk, want):
    mod = attnspec.compile(f"attention ties {{ select blocks(q = 4, kv = 4) top({topk}) by dot(mean(q), mean(k)) }}")
    q, k, v = tie_inputs(c, 4)
    blocks = mod.select(q, k).block_mask
    for i in range(blocks.shape[2]):
        assert {j for j in range(len(c)) if blocks[0, 0, i, j]} == want


def test_top_k_skips_ineligible_blocks_even_when_they_score_highest():
    # key block 1 (keys 4..7) is fully masked; among the ties 1, 3, 4 the lower eligible ones win
    mod = attnspec.compile("attention ties2 { mask kv < 4 or kv >= 8\n select blocks(q = 4, kv = 4) top(2) by dot(mean(q), mean(k)) }")
    q, k, v = tie_inputs([0.0, 5.0, 1.0, 5.0, 5.0], 4)
    blocks = mod.select(q, k).block_mask
    for i in range(2):
        assert {j for j in range(5) if blocks[0, 0, i, j]} == {3, 4}


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("bq, bk, topk", [(4, 3, 2), (3, 4, 1), (5, 5, 3)])
def test_top_k_random_against_loops(seed, bq, bk, topk):
    mod = attnspec.compile(f"attention tk {{ mask kv <= q + 2\n select blocks(q = {bq}, kv = {bk}) top({topk}) by dot(mean(q), mean(k)) }}")
    q, k, v = rand_qkv(B=2, H=4, HKV=2, SQ=10, SKV=11, seed=seed)
    _, _, i, j = token_grid(2, 4, 10, 11)
    keep = (j <= i + 2).expand(2, 4, 10, 11)
    want = expected_selection(dot_scores(q, k, bq, bk), keep, bq, bk, "top", topk)
    sel = mod.select(q, k)
    assert torch.equal(sel.block_mask, want)
    torch.testing.assert_close(mod.attention(q, k, v), dense_softmax(q, k, v, keep & expand_blocks(want, bq, bk, 10, 11)), **TOL)


# ------------------------------------------------------------------ threshold and share


def test_threshold_keeps_scores_at_or_above_t():
    mod = attnspec.compile("attention thr { param t: float runtime = 1.0\n select blocks(q = 4, kv = 4) threshold(t) by dot(mean(q), mean(k)) }")
    q, k, v = tie_inputs([0.5, 1.0, 1.5, 0.25, 1.0], 4)
    for t, want in [(1.0, {1, 2, 4}), (0.0, {0, 1, 2, 3, 4}), (1.25, {2}), (2.0, set())]:
        blocks = mod.select(q, k, t=t).block_mask
        assert {j for j in range(5) if blocks[0, 0, 0, j]} == want, t
    out = mod.attention(q, k, v, t=2.0)  # nothing selected: every row fully masked
    assert torch.equal(out, torch.zeros_like(out))


@pytest.mark.parametrize(
    "p, want",
    [(0.3, {0}), (0.5, {0}), (0.6, {0, 1}), (0.79, {0, 1}), (0.81, {0, 1, 2}), (1.0, {0, 1, 2})],
)
def test_share_keeps_the_smallest_prefix_reaching_p(p, want):
    # block probabilities 0.5, 0.3, 0.2 (softmax of their logs), listed out of order
    c = [math.log(0.3), math.log(0.2), math.log(0.5)]
    order = {0: 2, 1: 0, 2: 1}  # rank -> block index
    mod = attnspec.compile(f"attention sh {{ select blocks(q = 4, kv = 4) share({p}) by dot(mean(q), mean(k)) }}")
    q, k, v = tie_inputs(c, 4)
    blocks = mod.select(q, k).block_mask
    assert {j for j in range(3) if blocks[0, 0, 0, j]} == {order[r] for r in want}


def test_share_ties_go_to_the_lower_block_index():
    mod = attnspec.compile("attention sh_tie { select blocks(q = 4, kv = 4) share(0.5) by dot(mean(q), mean(k)) }")
    q, k, v = tie_inputs([1.0, 2.0, 2.0, 2.0], 4)  # three blocks tie at the top: two are needed
    blocks = mod.select(q, k).block_mask
    assert {j for j in range(4) if blocks[0, 0, 0, j]} == {1, 2}


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("rule, amount", [("threshold", 0.1), ("share", 0.6), ("share", 0.95)])
def test_threshold_and_share_random_against_loops(seed, rule, amount):
    mod = attnspec.compile(f"attention ts {{ mask abs(q - kv) <= 5\n select blocks(q = 3, kv = 4) {rule}({amount}) by dot(mean(q), max(k)) / 4 }}")
    q, k, v = rand_qkv(B=2, H=2, SQ=10, SKV=11, seed=seed)
    _, _, i, j = token_grid(2, 2, 10, 11)
    keep = ((i - j).abs() <= 5).expand(2, 2, 10, 11)
    want = expected_selection(dot_scores(q, k, 3, 4, "mean", "max") / 4, keep, 3, 4, rule, amount)
    assert torch.equal(mod.select(q, k).block_mask, want)


# ------------------------------------------------------------------ always, causal, eligibility


def test_always_is_a_union_even_with_ineligible_blocks():
    mod = attnspec.compile(
        "attention alw { mask kv >= 4\n select blocks(q = 4, kv = 4) top(1) by dot(mean(q), mean(k)) always kv_block == 0 or kv_block == q_block }"
    )
    q, k, v = tie_inputs([9.0, 1.0, 5.0, 3.0], 4, SQ=12)
    blocks = mod.select(q, k).block_mask
    for i in range(3):
        # key block 0 is fully masked, so it is never *chosen*, but `always` adds it back
        assert {j for j in range(4) if blocks[0, 0, i, j]} == {0, 2, i}
    keep = mod._token_mask(q, k) & expand_blocks(blocks, 4, 4, 12, 16)
    torch.testing.assert_close(mod.attention(q, k, v), dense_softmax(q, k, v, keep), **TOL)


@pytest.mark.parametrize("SQ, bq, bk", [(10, 4, 3), (12, 4, 4), (7, 2, 5), (9, 3, 2), (13, 4, 3), (16, 4, 4)])
def test_causal_filter_formula(SQ, bq, bk):
    """Eligible iff J * BK <= min((I + 1) * BQ, SQ) - 1 + (SKV - SQ) (bottom-right aligned, like B01)."""
    SKV = 13
    mod = attnspec.compile(f"attention cz {{ select blocks(q = {bq}, kv = {bk}) top(100) by dot(mean(q), mean(k)) causal }}")
    q, k, v = rand_qkv(B=1, H=1, SQ=SQ, SKV=SKV)
    blocks = mod.select(q, k).block_mask
    for i in range(nblocks(SQ, bq)):
        for j in range(nblocks(SKV, bk)):
            assert bool(blocks[0, 0, i, j]) == (j * bk <= min((i + 1) * bq, SQ) - 1 + (SKV - SQ)), (i, j)


@pytest.mark.parametrize("seed", range(3))
def test_fully_masked_tiles_are_never_chosen(seed):
    mod = attnspec.compile(
        "attention elig { input doc: int32[B, SKV]\n mask doc[b, kv] == doc[b, q] and kv <= q\n"
        " select blocks(q = 4, kv = 4) top(100) by dot(mean(q), mean(k)) }"
    )
    q, k, v = rand_qkv(B=2, H=2, SQ=12, SKV=12, seed=seed)
    doc = torch.sort(torch.randint(0, 3, (2, 12), generator=torch.Generator().manual_seed(seed)), -1).values.to(torch.int32)
    blocks = mod.select(q, k, doc=doc).block_mask
    keep = mod._token_mask(q, k, doc=doc)
    for b in range(2):
        for h in range(2):
            for i in range(3):
                for j in range(3):
                    tile_live = bool(keep[b, h, 4 * i : 4 * i + 4, 4 * j : 4 * j + 4].any())
                    assert bool(blocks[b, h, i, j]) == tile_live  # top(100): exactly the eligible ones


# ------------------------------------------------------------------ pooling of partial tail blocks


@pytest.mark.parametrize(
    "how, full, tail, score, t",
    [
        ("mean", 1.0, 2.0, "dot({p}(q), {p}(k))", 1.5),  # padded mean would be 1.0
        ("max", -3.0, -1.0, "-dot({p}(q), {p}(k))", 0.5),  # zero padding would give max 0
        ("min", 3.0, 1.0, "dot({p}(q), {p}(k))", 0.5),  # zero padding would give min 0
    ],
)
@pytest.mark.parametrize("side", ["k", "q"])
def test_tail_blocks_are_pooled_over_valid_rows(how, full, tail, score, t, side):
    # 10 rows in blocks of 4: the tail block holds 2 valid rows
    n, size = 10, 4
    rows = torch.full((1, 1, n, 1), full, dtype=F64)
    rows[:, :, 8:] = tail
    ones = torch.ones(1, 1, n, 1, dtype=F64)
    q, k = (ones, rows) if side == "k" else (rows, ones)
    v = torch.randn(1, 1, n, 2, dtype=F64)
    mod = attnspec.compile(f"attention pool_{how} {{ select blocks(q = {size}, kv = {size}) threshold({t}) by {score.format(p=how)} }}")
    blocks = mod.select(q, k).block_mask
    tail_selected = blocks[0, 0, :, 2] if side == "k" else blocks[0, 0, 2, :]
    assert bool(tail_selected.all()), f"the tail block's {how} must use its 2 valid rows only"
    assert torch.isfinite(mod.attention(q, k, v)).all()


@pytest.mark.parametrize("q_how, k_how", [("mean", "mean"), ("max", "min"), ("min", "max"), ("max", "max")])
def test_pooled_scores_random_against_loops(q_how, k_how):
    mod = attnspec.compile(f"attention pr {{ select blocks(q = 4, kv = 3) threshold(0.0) by dot({q_how}(q), {k_how}(k)) - 0.25 }}")
    q, k, v = rand_qkv(B=1, H=2, SQ=10, SKV=11, seed=7)
    want = expected_selection(dot_scores(q, k, 4, 3, q_how, k_how) - 0.25, all_kept(1, 2, 10, 11), 4, 3, "threshold", 0.0)
    assert torch.equal(mod.select(q, k).block_mask, want)


# ------------------------------------------------------------------ kv_head scope


@pytest.mark.parametrize("rule, amount", [("top", 2), ("threshold", 0.5), ("share", 0.7)])
def test_kv_head_scope_shares_one_selection_and_sums_scores(rule, amount):
    mod = attnspec.compile(
        f"attention kvh {{ mask kv <= q\n select blocks(q = 4, kv = 4) {rule}({amount}) by dot(mean(q), mean(k)) causal per kv_head }}"
    )
    for seed in range(3):
        q, k, v = rand_qkv(B=2, H=6, HKV=2, SQ=13, SKV=13, seed=seed)
        _, _, i, j = token_grid(2, 6, 13, 13)
        keep = (j <= i).expand(2, 6, 13, 13)
        want = expected_selection(dot_scores(q, k, 4, 4), keep, 4, 4, rule, amount, causal=True, scope="kv_head", HKV=2)
        got = mod.select(q, k).block_mask
        assert torch.equal(got, want)
        for g in range(2):
            group = got[:, 3 * g : 3 * g + 3]
            assert torch.equal(group, group[:, :1].expand_as(group)), "one selection per kv head"
        torch.testing.assert_close(mod.attention(q, k, v), dense_softmax(q, k, v, keep & expand_blocks(want, 4, 4, 13, 13)), **TOL)


def test_kv_head_scope_always_is_shared_by_the_group():
    mod = attnspec.compile("attention kvh_alw { select blocks(q = 4, kv = 4) top(1) by dot(mean(q), mean(k)) per kv_head always kv_block == h + 2 }")
    q, k, v = tie_inputs([9.0, 1.0, 1.0, 1.0, 1.0], 4, H=2)
    q, k = q, k[:, :1]  # one kv head shared by both query heads
    blocks = mod.select(q, k).block_mask
    for h in range(2):
        assert {j for j in range(5) if blocks[0, h, 0, j]} == {0, 2, 3}


def test_runtime_amounts_are_range_checked():
    top = attnspec.compile("attention rt_top { param n: int runtime = 1\n select blocks(q = 4, kv = 4) top(n) by dot(mean(q), mean(k)) }")
    share = attnspec.compile("attention rt_share { param p: float runtime = 0.5\n select blocks(q = 4, kv = 4) share(p) by dot(mean(q), mean(k)) }")
    q, k, v = rand_qkv(B=1, H=1, SQ=8, SKV=8)
    with pytest.raises(ValueError, match="top"):
        top.select(q, k, n=-1)
    for p in (0.0, 1.5):
        with pytest.raises(ValueError, match="share"):
            share.attention(q, k, v, p=p)
    assert int(share.select(q, k, p=1.0).block_mask.sum()) == 4


def test_kv_head_scope_eligible_if_any_head_of_the_group_is():
    # head 0 masks every key >= 4, head 1 masks nothing: for the shared selection, block 2 stays eligible
    mod = attnspec.compile("attention kvh2 { mask h == 1 or kv < 4\n select blocks(q = 4, kv = 4) top(100) by dot(mean(q), mean(k)) per kv_head }")
    q, k, v = rand_qkv(B=1, H=2, HKV=1, SQ=4, SKV=12)
    blocks = mod.select(q, k).block_mask
    assert bool(blocks.all())
    per_head = attnspec.compile("attention kvh3 { mask h == 1 or kv < 4\n select blocks(q = 4, kv = 4) top(100) by dot(mean(q), mean(k)) per head }")
    assert per_head.select(q, k).block_mask[0, 0].tolist() == [[True, False, False]]


# ------------------------------------------------------------------ selections handed to attention()

MOBA = "attention moba_t { param topk: int = 2\n mask kv <= q\n select blocks(q = 4, kv = 4) top(topk) by dot(mean(q), mean(k)) causal always kv_block == q_block }"


def test_precomputed_selection_gives_the_same_result():
    mod = attnspec.compile(MOBA)
    q, k, v = rand_qkv(B=2, H=4, HKV=2, SQ=14, SKV=14)
    sel = mod.select(q, k)
    out, lse = mod.attention(q, k, v, return_lse=True)
    out2, lse2 = mod.attention(q, k, v, selection=sel, return_lse=True)
    assert torch.equal(out, out2) and torch.equal(lse, lse2)


def test_a_custom_selection_is_honoured():
    mod = attnspec.compile(MOBA)
    q, k, v = rand_qkv(B=1, H=2, SQ=14, SKV=14)
    sel = mod.select(q, k)
    custom = torch.zeros_like(sel.block_mask)
    custom[..., 0] = True
    forced = sel._replace(block_mask=custom)
    _, _, i, j = token_grid(1, 2, 14, 14)
    want = dense_softmax(q, k, v, (j <= i) & (j < 4))
    torch.testing.assert_close(mod.attention(q, k, v, selection=forced), want, **TOL)


def test_wrong_selections_raise():
    mod = attnspec.compile(MOBA)
    q, k, v = rand_qkv(B=1, H=2, SQ=14, SKV=14)
    sel = mod.select(q, k)
    small = sel._replace(block_mask=sel.block_mask[..., :-1])
    with pytest.raises(ValueError, match="shape"):
        mod.attention(q, k, v, selection=small)
    q2, k2, v2 = rand_qkv(B=1, H=2, SQ=18, SKV=14)
    with pytest.raises(ValueError, match="shape"):
        mod.attention(q2, k2, v2, selection=sel)
    with pytest.raises(ValueError, match="blocks"):
        mod.attention(q, k, v, selection=sel._replace(q_block=8))


@pytest.mark.parametrize(
    "text",
    [
        MOBA,
        "attention st3 { select blocks(q = 3, kv = 2) keep (q_block + kv_block) % 3 != 1 }",
        "attention thr2 { select blocks(q = 4, kv = 3) threshold(0.0) by dot(mean(q), mean(k)) }",
    ],
)
def test_kv_indices_and_counts_agree_with_block_mask(text):
    mod = attnspec.compile(text)
    q, k, v = rand_qkv(B=2, H=2, SQ=14, SKV=13)
    sel = mod.select(q, k)
    assert sel.kv_num_blocks.dtype == torch.int32 and sel.kv_indices.dtype == torch.int32
    assert sel.block_mask.dtype == torch.bool
    B, H, NQB, NKB = sel.block_mask.shape
    assert sel.kv_num_blocks.shape == (B, H, NQB) and sel.kv_indices.shape == (B, H, NQB, NKB)
    for b in range(B):
        for h in range(H):
            for i in range(NQB):
                chosen = [j for j in range(NKB) if sel.block_mask[b, h, i, j]]
                rest = [j for j in range(NKB) if not sel.block_mask[b, h, i, j]]
                assert int(sel.kv_num_blocks[b, h, i]) == len(chosen)
                assert sel.kv_indices[b, h, i].tolist() == chosen + rest


def test_selection_with_runtime_param_and_inputs():
    mod = attnspec.compile(
        "attention seer { param t: float runtime = 0.0\n input gate: bool[H]\n mask kv <= q and (gate[h] or kv < 8)\n"
        " select blocks(q = 4, kv = 4) threshold(t) by (dot(mean(q), max(k)) + dot(mean(q), min(k))) / sqrt(D) causal always kv_block == q_block }"
    )
    q, k, v = rand_qkv(B=1, H=2, SQ=16, SKV=16, seed=3)
    gate = torch.tensor([True, False])
    keep = mod._token_mask(q, k, gate=gate, t=0.0)  # internal helper: every runtime param by name
    scores = (dot_scores(q, k, 4, 4, "mean", "max") + dot_scores(q, k, 4, 4, "mean", "min")) / 2.0
    for t in (-0.5, 0.0, 0.5):
        want = expected_selection(scores, keep, 4, 4, "threshold", t, causal=True, always=lambda b, h, i, j: i == j)
        assert torch.equal(mod.select(q, k, gate=gate, t=t).block_mask, want)
        out = mod.attention(q, k, v, gate=gate, t=t)
        torch.testing.assert_close(out, dense_softmax(q, k, v, keep & expand_blocks(want, 4, 4, 16, 16)), **TOL)


# ------------------------------------------------------------------ names and sizes the generated module relies on


@pytest.mark.parametrize("name", ["BLOCK_KV", "BLOCK_Q"])
def test_user_names_cannot_shadow_the_block_sizes(name):
    """A runtime param named like a generated global must be rejected, or must not change the selection."""
    text = f"attention shadow {{ param {name}: int runtime = 1\n mask kv <= q + {name}\n select blocks(q = 4, kv = 4) top(1) by dot(mean(q), mean(k)) }}"
    try:
        mod = attnspec.compile(text)
    except attnspec.AttnError:
        return
    q, k, v = rand_qkv(B=1, H=1, SQ=8, SKV=8)
    sel = mod.select(q, k)
    assert (sel.q_block, sel.kv_block) == (4, 4) and sel.block_mask.shape == (1, 1, 2, 2)
    assert mod.attention(q, k, v).shape == (1, 1, 8, 3)


def test_block_sizes_from_shape_symbols_are_rejected_or_work():
    """The verifier lets shape symbols into block sizes; then compile must not die with a NameError."""
    text = "attention shaped { select blocks(q = SQ // 2, kv = 4) keep kv_block <= q_block }"
    try:
        mod = attnspec.compile(text)
    except attnspec.AttnError:
        return
    q, k, v = rand_qkv(B=1, H=1, SQ=8, SKV=8)
    assert mod.select(q, k).block_mask.shape == (1, 1, 2, 2)


# ------------------------------------------------------------------ scores after the prologue

ROPE_SELECT = """
attention rope_select {
    input g: float32[HKV, D] learnable
    prologue q[i, f] = rope(q, 0.3 * float(i) * float(f + 1))
    prologue k[j, f] = rope(k * g[h, f], 0.3 * float(j) * float(f + 1))
    prologue v = v * 2.0
    mask kv <= q + (SKV - SQ)
    select blocks(q = 4, kv = 3) top(2) by dot(mean(q), max(k)) causal per kv_head always kv_block == 0
}
"""


def _rotated(x, scale=0.3):
    """rope as docs/language.md defines it, by loops over feature pairs: pair (f, f + D/2) turns by the
    angle at f."""
    out = x.clone()
    half = x.shape[-1] // 2
    for row in range(x.shape[2]):
        for f in range(half):
            a = scale * row * (f + 1)
            c, s = math.cos(a), math.sin(a)
            out[:, :, row, f] = x[:, :, row, f] * c - x[:, :, row, f + half] * s
            out[:, :, row, f + half] = x[:, :, row, f + half] * c + x[:, :, row, f] * s
    return out


def test_block_scores_read_q_and_k_after_their_prologue():
    """A data-dependent selection pools q and k after their prologue statements: select(q, k) takes them
    as attention() does and applies the statements itself."""
    mod = attnspec.compile(ROPE_SELECT)
    q, k, v = rand_qkv(B=1, H=4, HKV=2, SQ=10, SKV=13, D=4, seed=9)
    g = torch.randn(2, 4, generator=torch.Generator().manual_seed(1), dtype=F64)
    pq, pk = _rotated(q), _rotated(k * g[None, :, None, :])
    keep = torch.ones(1, 4, 10, 13, dtype=torch.bool).tril(13 - 10)
    want = expected_selection(dot_scores(pq, pk, 4, 3, "mean", "max"), keep, 4, 3, "top", 2, causal=True,
                              scope="kv_head", always=lambda b, h, i, j: j == 0, HKV=2)
    assert torch.equal(mod.select(q, k, g=g).block_mask, want)
    # attention() selects from the same vectors: passing that selection changes nothing
    out = mod.attention(q, k, v, g=g)
    assert torch.equal(out, mod.attention(q, k, v, g=g, selection=mod.select(q, k, g=g)))


def _gradients_match_the_reference(source: str, target: str, seed: int) -> None:
    """The target's selection, and its gradients of a loss of the output (q, k, v and the gain g),
    against the float64 reference's, from q and k as attention() takes them (H = 4, HKV = 2, D = 16)."""
    reference, module = attnspec.compile(source, "reference"), attnspec.compile(source, target)
    gen = torch.Generator().manual_seed(seed)
    q, k, v = torch.randn(1, 4, 70, 16, generator=gen), torch.randn(1, 2, 90, 16, generator=gen), torch.randn(1, 2, 90, 8, generator=gen)
    g = torch.rand(2, 16, generator=gen) + 0.5
    assert torch.equal(module.select(q, k, g=g).block_mask, reference.select(q.double(), k.double(), g=g.double()).block_mask)
    grads = []
    for mod, dtype in [(module, torch.float32), (reference, F64)]:
        leaves = [x.detach().to(dtype).requires_grad_() for x in (q, k, v, g)]
        mod.attention(*leaves[:3], g=leaves[3]).square().sum().backward()
        grads.append([x.grad.double() for x in leaves])
    for name, got, exact in zip(["q", "k", "v", "g"], *grads):
        torch.testing.assert_close(got, exact, rtol=1e-4, atol=1e-5 * float(exact.abs().max()), msg=name)


@pytest.mark.parametrize("target", ["flex", "triton"])
def test_every_target_selects_after_the_prologue(target, monkeypatch):
    """flex and triton select from q and k as attention() takes them (build_block_mask, build_schedule),
    so they attend over the reference's blocks, forward and backward."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    _gradients_match_the_reference(ROPE_SELECT.replace("blocks(q = 4, kv = 3)", "blocks(q = 16, kv = 32)"), target, 4)


# ------------------------------------------------------------------ pooled per-row values

VALUE_SELECT = """
attention value_select {
    input g: float32[HKV, D] learnable
    prologue k[j, f] = rope(k * g[h, f], 0.3 * float(j) * float(f + 1))
    let kn per k = norm(k)
    let qs per q[i, f] = sum(q) / float(D)
    mask kv <= q + (SKV - SQ)
    select blocks(q = 4, kv = 3) top(2) by dot(mean(q), mean(k)) + mean(kn) - 0.5 * max(qs) + min(kn) causal
    score = score + 0.1 * kn
}
"""


def test_block_scores_pool_per_row_values():
    """mean(t), max(t), min(t) of a per-row value pool its numbers per block (over the valid rows), from
    q and k after the prologue, beside the pooled vectors."""
    mod = attnspec.compile(VALUE_SELECT)
    q, k, v = rand_qkv(B=2, H=2, HKV=1, SQ=10, SKV=14, D=4, seed=11)
    g = torch.randn(1, 4, generator=torch.Generator().manual_seed(2), dtype=F64)
    pk = _rotated(k * g[None, :, None, :])
    kn, qs = pk.norm(dim=-1, keepdim=True), q.sum(-1, keepdim=True) / 4
    scores = (dot_scores(q, pk, 4, 3) + pool_ref(kn, 3, "mean").transpose(-1, -2) - 0.5 * pool_ref(qs, 4, "max")
              + pool_ref(kn, 3, "min").transpose(-1, -2))
    keep = torch.ones(2, 2, 10, 14, dtype=torch.bool).tril(14 - 10)
    want = expected_selection(scores, keep, 4, 3, "top", 2, causal=True)
    assert torch.equal(mod.select(q, k, g=g).block_mask, want)


@pytest.mark.parametrize("target", ["flex", "triton"])
def test_every_target_selects_by_pooled_values(target, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    _gradients_match_the_reference(VALUE_SELECT.replace("blocks(q = 4, kv = 3)", "blocks(q = 16, kv = 32)"), target, 6)


# ------------------------------------------------------------------ ranked over the whole head (global)


@pytest.mark.parametrize("rule, amount", [("top", 4), ("top", 1), ("share", 0.5), ("share", 0.9)])
@pytest.mark.parametrize("scope", ["head", "kv_head"])
def test_global_ranks_every_block_pair_of_a_head_together(rule, amount, scope):
    """`global` (VMoBA's global selection): the k best (query block, key block) pairs of each head, or
    the smallest set of them whose softmax share over the whole head reaches p, instead of per query
    block; eligibility, the causal filter, the kv-head scope and always as without it."""
    source = ("attention g {\n    mask kv <= q + (SKV - SQ)\n"
              f"    select blocks(q = 4, kv = 3) {rule}({amount}) by dot(mean(q), max(k)) causal global per {scope} "
              "always q_block == 0 and kv_block == 0\n}\n")
    mod = attnspec.compile(source)
    q, k, v = rand_qkv(B=2, H=4, HKV=2, SQ=13, SKV=17, D=4, seed=5)
    keep = torch.ones(2, 4, 13, 17, dtype=torch.bool).tril(17 - 13)
    want = expected_selection(dot_scores(q, k, 4, 3, "mean", "max"), keep, 4, 3, rule, amount, causal=True, scope=scope,
                              always=lambda b, h, i, j: i == 0 and j == 0, HKV=2, ranked_globally=True)
    got = mod.select(q, k).block_mask
    assert torch.equal(got, want)
    if rule == "top":  # at most k pairs per head, besides always
        assert int(got[..., 1:, :].sum((-1, -2)).max()) <= amount
    per_block = attnspec.compile(source.replace(" global", ""))
    assert not torch.equal(per_block.select(q, k).block_mask, got)  # not the per-query-block choice


def test_global_top_leaves_query_blocks_without_keys_empty_rows():
    """A query block none of whose pairs ranks in the head's top k attends to nothing: its rows are empty
    (0 under softmax), unless `always` gives it a block."""
    mod = attnspec.compile("attention g {\n    select blocks(q = 4, kv = 4) top(1) by dot(mean(q), mean(k)) global\n}\n")
    q, k, v = rand_qkv(B=1, H=1, SQ=12, SKV=12, D=4, seed=2)
    blocks = mod.select(q, k).block_mask
    assert int(blocks.sum()) == 1
    out = mod.attention(q, k, v)
    empty = ~blocks[0, 0].any(-1)
    rows = empty.repeat_interleave(4)[:12]
    assert torch.equal(out[0, 0, rows], torch.zeros_like(out[0, 0, rows]))


@pytest.mark.parametrize("target", ["flex", "triton"])
def test_every_target_attends_over_the_global_choice(target, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    _gradients_match_the_reference(ROPE_SELECT.replace("blocks(q = 4, kv = 3) top(2)", "blocks(q = 16, kv = 32) top(5)")
                                   .replace(" causal per kv_head", " causal global per kv_head"), target, 5)


# ------------------------------------------------------------------ masks that read per-row values

MASK_VALUE_SELECT = """
attention mask_value_select {
    input g: float32[HKV, D] learnable
    prologue k[j, f] = rope(k * g[h, f], 0.3 * float(j) * float(f + 1))
    let kn per k = norm(k)
    let qs per q[i, f] = sum(q) / float(D)
    mask kv <= q + (SKV - SQ) and kn > 1.6 and qs > -0.6
    select blocks(q = 4, kv = 3) top(2) by dot(mean(q), mean(k)) per kv_head
    score = score + 0.1 * kn
}
"""


def test_a_mask_reading_per_row_values_decides_which_blocks_are_eligible():
    """Beside a data-dependent selection, a mask may read per-row values: select(q, k) computes them from
    q and k after the prologue, and a block whose pairs the values drop is not eligible (per kv head:
    unless another head of the group keeps a pair there)."""
    mod = attnspec.compile(MASK_VALUE_SELECT)
    q, k, v = rand_qkv(B=2, H=4, HKV=2, SQ=10, SKV=14, D=4, seed=3)
    g = torch.randn(2, 4, generator=torch.Generator().manual_seed(5), dtype=F64)
    pk = _rotated(k * g[None, :, None, :])
    kn, qs = pk.norm(dim=-1).repeat_interleave(2, dim=1), q.sum(-1) / 4
    keep = torch.ones(2, 4, 10, 14, dtype=torch.bool).tril(14 - 10) & (kn[:, :, None, :] > 1.6) & (qs[..., None] > -0.6)
    want = expected_selection(dot_scores(q, pk, 4, 3), keep, 4, 3, "top", 2, scope="kv_head", HKV=2)
    assert torch.equal(mod.select(q, k, g=g).block_mask, want)
    causal_only = expected_selection(dot_scores(q, pk, 4, 3), torch.ones_like(keep).tril(14 - 10), 4, 3, "top", 2,
                                     scope="kv_head", HKV=2)
    assert not torch.equal(want, causal_only)  # the values change which blocks are chosen
    out = mod.attention(q, k, v, g=g)
    assert torch.equal(out, mod.attention(q, k, v, g=g, selection=mod.select(q, k, g=g)))


@pytest.mark.parametrize("target", ["flex", "triton"])
def test_every_target_selects_beside_a_mask_of_per_row_values(target, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    source = MASK_VALUE_SELECT.replace("blocks(q = 4, kv = 3)", "blocks(q = 16, kv = 32)").replace("kn > 1.6", "kn > 3.6")
    _gradients_match_the_reference(source, target, 8)


def test_global_is_refused_where_it_changes_nothing():
    with pytest.raises(attnspec.AttnError, match="'global' changes nothing for threshold"):
        attnspec.compile("attention g {\n    select blocks(q = 4, kv = 4) threshold(0.5) by dot(mean(q), mean(k)) global\n}\n")
    with pytest.raises(attnspec.AttnError, match="'global' given twice"):
        attnspec.compile("attention g {\n    select blocks(q = 4, kv = 4) top(2) by dot(mean(q), mean(k)) global global\n}\n")


@pytest.mark.parametrize("line, message", [
    ("select blocks(q = 4, kv = 4) top(1) by mean(t)", "pools only the bare tensor q or k"),  # a table
    ("score = score + mean(kn)", "pools a whole block; it is only allowed in a select score"),
])
def test_pooling_a_table_or_outside_a_block_score_is_refused(line, message):
    source = ("attention p {\n    let kn per k = norm(k)\n    let t[r: 3] per k[j, f] = sum(k) * float(r)\n"
              f"    {line}\n    score = score + t[0] + kn\n}}\n")
    with pytest.raises(attnspec.AttnError, match=message):
        attnspec.compile(source)
