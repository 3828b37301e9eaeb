"""Tile classification (attnspec/analysis/tiles.py), checked against the reference's dense mask.

The oracle for a tile is the generated reference module: `_token_mask` AND the static block
selection (`select`, expanded to tokens by `dense.expand_blocks`). A tile classified FULL must hold only
kept pairs and a tile classified EMPTY none (design.md section 4: "partial" is always allowed, a
wrong "full" or "empty" never is). On the easy masks (causal, sliding window, prefix-LM, sorted
documents, static blocks) the classes must also be exact. A hypothesis test builds random masks as
.attn text and compares again.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attnspec.runtime.intervals import RULES, Bool, num
from attnspec.analysis.tiles import EMPTY, FULL, PARTIAL, classify_tiles
from attnspec.api import build_module, load_program, lower, pick_spec
from attnspec.diagnostics import AttnError
from attnspec.passes import OPTIMIZE
from attnspec.runtime import dense
from attnspec.sample import Sizes, sample_arguments

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
EXAMPLE_NAMES = sorted(p.stem for p in EXAMPLES.glob("*.attn"))
LENGTHS = (1, 17, 64, 100, 130, 257)
BLOCKS = ((16, 16), (32, 32), (64, 64), (16, 64), (64, 32), (32, 16))
F64 = torch.float64


# ------------------------------------------------------------------ helpers


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def lowered(source, consts=None, passes=None):
    return lower(pick_spec(load_program(source), None), consts, passes=passes)


def both_pipelines(source, consts=None):
    """The spec the reference is generated from (STANDARD) and the one fast targets analyse (OPTIMIZE)."""
    return lowered(source, consts), lowered(source, consts, OPTIMIZE)


def module(spec):
    return build_module(spec, "reference", "test_tiles.attn")


def has_static_rule(spec) -> bool:
    return spec.selection is not None and not spec.selection.dynamic


def spec_blocks(spec) -> tuple[int, int]:
    return spec.selection.q_block.literal, spec.selection.kv_block.literal


def split_args(spec, args: dict) -> tuple[dict, dict]:
    """(runtime params, inputs) of sample or hand-made arguments."""
    return {p.name: args[p.name] for p in spec.runtime_params}, {i.name: args[i.name] for i in spec.arguments}


def dense_keep(spec, mod, q, k, runtime: dict, inputs: dict) -> torch.Tensor:
    """[B, H, SQ, SKV] bool: the mask AND the static block selection, as attention() computes it."""
    inputs = {n: t.to(q.dtype) if t.is_floating_point() else t for n, t in inputs.items()}  # as attention() does
    keep = mod._token_mask(q, k, **inputs, **runtime)
    if has_static_rule(spec):
        bq, bk = spec_blocks(spec)
        blocks = mod.select(q, k, **inputs, **runtime).block_mask
        keep = keep & dense.expand_blocks(blocks, bq, bk, q.shape[2], k.shape[2])
    return keep


def tile_any_all(keep: torch.Tensor, bq: int, bk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per tile: does it hold a kept pair, are all of its (in-range) pairs kept? Counted, not evaluated."""
    batch, heads, sq, skv = keep.shape
    nq, nk = -(-sq // bq), -(-skv // bk)
    padded = torch.zeros(batch, heads, nq * bq, nk * bk, dtype=torch.int32)
    padded[:, :, :sq, :skv] = keep
    kept = padded.view(batch, heads, nq, bq, nk, bk).sum((3, 5))
    rows = (sq - torch.arange(nq) * bq).clamp(max=bq)
    cols = (skv - torch.arange(nk) * bk).clamp(max=bk)
    return kept > 0, kept == rows[:, None] * cols[None, :]


def exact_classes(keep: torch.Tensor, bq: int, bk: int) -> torch.Tensor:
    any_kept, all_kept = tile_any_all(keep, bq, bk)
    return torch.where(all_kept, FULL, torch.where(any_kept, PARTIAL, EMPTY)).to(torch.int8)


def visited_contiguous(visited: torch.Tensor) -> bool:
    """Whether each query block's visited key blocks form one run: at most one run starts per row."""
    starts = visited & ~torch.nn.functional.pad(visited[..., :-1], (1, 0), value=False)
    return bool((starts.sum(-1) <= 1).all())


def describe_wrong(classes, keep, bq, bk, text="") -> str:
    any_kept, all_kept = tile_any_all(keep, bq, bk)
    wrong = ((classes == FULL) & ~all_kept) | ((classes == EMPTY) & any_kept)
    index = tuple(wrong.nonzero()[0].tolist())
    b, h, i, j = index
    kind = "FULL" if classes[index] == FULL else "EMPTY"
    pairs = keep[b, h, i * bq : (i + 1) * bq, j * bk : (j + 1) * bk]
    return (
        f"{int(wrong.sum())} wrong tile(s); first: (b={b}, h={h}, q_block={i}, kv_block={j}) classified {kind} "
        f"but {int(pairs.sum())} of {pairs.numel()} pairs are kept (blocks {bq}x{bk}, "
        f"SQ={keep.shape[2]}, SKV={keep.shape[3]})\n{text}"
    )


def check_sound(keep, tiles, bq, bk, text="") -> torch.Tensor:
    """Never a wrong FULL or EMPTY; the derived properties agree with the classes and the dense mask."""
    batch, heads = keep.shape[:2]
    classes = tiles.classes
    assert classes.dtype == torch.int8 and classes.shape[0] in (1, batch) and classes.shape[1] in (1, heads)
    assert classes.shape[2:] == (-(-keep.shape[2] // bq), -(-keep.shape[3] // bk))
    full = classes.expand(batch, heads, -1, -1)
    any_kept, all_kept = tile_any_all(keep, bq, bk)
    assert not ((full == FULL) & ~all_kept).any() and not ((full == EMPTY) & any_kept).any(), describe_wrong(
        full, keep, bq, bk, text
    )
    check_block_lists(tiles)
    if tiles.rows_never_empty():
        assert keep.any(-1).all(), "rows_never_empty() claimed, but the dense mask has an empty row"
    # contiguous() describes the schedule (the tiles a kernel visits), which holds every dense-visited
    # tile (no wrong EMPTY, checked above); where PARTIAL is imprecise the dense set may have gaps the
    # schedule fills (m12 power attention), which costs work, not correctness.
    visited = classes != EMPTY
    assert tiles.contiguous() == visited_contiguous(visited)
    density = tiles.density()
    assert math.isclose(density["visited"], float(visited.double().mean()))
    assert math.isclose(density["full"] + density["partial"], density["visited"])
    return full


def check_block_lists(tiles) -> None:
    """(partial_num, partial_idx, full_num, full_idx): counts, then the chosen blocks in ascending order."""
    partial_num, partial_idx, full_num, full_idx = tiles.block_lists()
    classes = tiles.classes
    nk = classes.shape[-1]
    for kind, count, idx in ((PARTIAL, partial_num, partial_idx), (FULL, full_num, full_idx)):
        chosen = classes == kind
        assert count.dtype == idx.dtype == torch.int32
        assert count.shape == classes.shape[:3] and idx.shape == classes.shape
        assert torch.equal(count, chosen.sum(-1).to(torch.int32))
        assert torch.equal(idx.long().sort(-1).values, torch.arange(nk).expand_as(idx))  # a permutation
        listed = torch.arange(nk) < count.unsqueeze(-1).long()  # the first `count` entries of each list
        assert torch.equal(chosen.gather(-1, idx.long()), listed), f"{kind}: the lists name other blocks"
        rising = idx[..., 1:] > idx[..., :-1]
        assert bool((rising | ~listed[..., 1:]).all()), "listed blocks are not in ascending order"


def tiles_for(spec, bq, bk, sizes: Sizes, runtime, inputs):
    return classify_tiles(spec, bq, bk, sizes.symbols(), runtime, inputs)


def grid(batch, heads, sq, skv, hkv=None):
    q = torch.zeros(batch, heads, sq, 1, dtype=F64)
    k = torch.zeros(batch, hkv or heads, skv, 1, dtype=F64)
    return q, k


# ------------------------------------------------------------------ soundness on every example


def size_pairs_and_blocks(spec):
    """Every (SQ, SKV) in LENGTHS x LENGTHS, each with two block shapes (BLOCKS in turn, so every
    shape meets every length as SQ and as SKV), or the spec's own blocks for a static rule."""
    for a, sq in enumerate(LENGTHS):
        for b, skv in enumerate(LENGTHS):
            if has_static_rule(spec):
                yield sq, skv, [spec_blocks(spec)]
            else:
                yield sq, skv, [BLOCKS[(a + b + i) % len(BLOCKS)] for i in (0, 3)]


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_examples_never_wrong(name):
    """Both the standard and the optimized IR (bindings, simplified algebra) against the reference."""
    spec, optimized = both_pipelines(EXAMPLES / f"{name}.attn")
    mod = module(spec)
    for seed, (sq, skv, blocks) in enumerate(size_pairs_and_blocks(spec)):
        sizes = Sizes(B=2, H=4, HKV=2, SQ=sq, SKV=skv, D=2, DV=2)
        args = sample_arguments(spec, sizes, seed=seed)
        runtime, inputs = split_args(spec, args)
        keep = dense_keep(spec, mod, args["q"], args["k"], runtime, inputs)
        for n, (bq, bk) in enumerate(blocks):
            for analysed, label in ((spec, "standard"), (optimized, "optimized"))[: 2 if n == 0 else 1]:
                tiles = tiles_for(analysed, bq, bk, sizes, runtime, inputs)
                check_sound(keep, tiles, bq, bk, f"example {name}, {label} IR")


@pytest.mark.parametrize("name", ["m01_prefix_lm", "m15_moa", "m20_svg_heads", "b03_document"])
def test_examples_never_wrong_other_values(name):
    """Runtime params and inputs other than the samples: prefix 0 / past the end, wide MoA windows, ..."""
    spec = lowered(EXAMPLES / f"{name}.attn")
    mod = module(spec)
    gen = torch.Generator().manual_seed(7)
    for sq, skv, bq, bk in ((100, 130, 16, 32), (257, 64, 64, 16), (64, 64, 32, 32)):
        sizes = Sizes(B=2, H=4, HKV=2, SQ=sq, SKV=skv, D=2, DV=2)
        for trial in range(4):
            args = sample_arguments(spec, sizes, seed=trial)
            runtime, inputs = split_args(spec, args)
            if "prefix" in runtime:
                runtime["prefix"] = (0, 1, 40, 1000)[trial]
            if "alpha" in inputs:
                inputs["alpha"] = torch.randn(4, generator=gen) * 40
                inputs["beta"] = torch.rand(4, generator=gen) * (trial / 10)
            if "kind" in inputs:
                inputs["kind"] = torch.randint(0, 2, (4,), generator=gen, dtype=torch.int32)
            if "doc_q" in inputs:  # unsorted ids, and a different document layout per batch
                inputs["doc_q"] = torch.randint(0, 3 + trial, (2, sq), generator=gen, dtype=torch.int32)
                inputs["doc_kv"] = torch.randint(0, 3 + trial, (2, skv), generator=gen, dtype=torch.int32)
            keep = dense_keep(spec, mod, args["q"], args["k"], runtime, inputs)
            check_sound(keep, tiles_for(spec, bq, bk, sizes, runtime, inputs), bq, bk, f"example {name}")


def test_static_rule_needs_its_own_blocks():
    spec = lowered(EXAMPLES / "b08_static_blocks.attn")
    with pytest.raises(AttnError, match="cannot apply its rule exactly"):
        classify_tiles(spec, 16, 16, Sizes(SQ=64, SKV=64).symbols())


def test_batch_and_head_axes_only_when_used():
    sizes = Sizes(B=2, H=4, HKV=2, SQ=64, SKV=64).symbols()
    causal = classify_tiles(lowered(EXAMPLES / "b01_causal.attn"), 16, 16, sizes)
    assert causal.classes.shape == (1, 1, 4, 4)
    heads = classify_tiles(lowered(EXAMPLES / "m14_ls_heads.attn"), 16, 16, sizes)
    assert heads.classes.shape == (1, 4, 4, 4)
    doc = lowered(EXAMPLES / "b03_document.attn")
    ids = torch.zeros(2, 64, dtype=torch.int32)
    docs = classify_tiles(doc, 16, 16, sizes, {}, {"doc_q": ids, "doc_kv": ids})
    assert docs.classes.shape == (2, 1, 4, 4)


# ------------------------------------------------------------------ precision on the easy cases


def check_exact(spec, mod, sizes: Sizes, bq, bk, runtime=None, inputs=None) -> None:
    runtime, inputs = runtime or {}, inputs or {}
    q, k = grid(sizes.B, sizes.H, sizes.SQ, sizes.SKV)
    keep = dense_keep(spec, mod, q, k, runtime, inputs)
    tiles = tiles_for(spec, bq, bk, sizes, runtime, inputs)
    full = check_sound(keep, tiles, bq, bk)
    expected = exact_classes(keep, bq, bk)
    assert torch.equal(full, expected), (
        f"{spec.name}: {int((full != expected).sum())} tiles not exact "
        f"(SQ={sizes.SQ}, SKV={sizes.SKV}, blocks {bq}x{bk}, runtime {runtime})"
    )
    assert tiles.contiguous() == visited_contiguous(expected != EMPTY)


def all_sizes_and_blocks():
    return [(sq, skv, bq, bk) for sq in LENGTHS for skv in LENGTHS for bq, bk in BLOCKS]


def test_causal_exact():
    spec = lowered(EXAMPLES / "b01_causal.attn")
    mod = module(spec)
    for sq, skv, bq, bk in all_sizes_and_blocks():
        check_exact(spec, mod, Sizes(B=1, H=1, HKV=1, SQ=sq, SKV=skv), bq, bk)


@pytest.mark.parametrize("window, causal", [(0, False), (8, False), (20, True), (100, False), (3, True)])
def test_sliding_window_exact(window, causal):
    spec = lowered(EXAMPLES / "b02_sliding_window.attn", {"window": window, "causal": causal})
    mod = module(spec)
    for sq, skv, bq, bk in all_sizes_and_blocks()[::2]:
        check_exact(spec, mod, Sizes(B=1, H=1, HKV=1, SQ=sq, SKV=skv), bq, bk)


def test_prefix_lm_exact_on_square_tiles():
    """Exact when every tile is square (SQ == SKV, BQ == BK). On other tiles `causal or prefix` can be
    FULL while both halves are PARTIAL (rows q >= prefix see only keys before them), and intervals,
    which judge the halves separately, answer PARTIAL there: allowed, so not checked."""
    spec = lowered(EXAMPLES / "m01_prefix_lm.attn")
    mod = module(spec)
    for n in LENGTHS:
        for block in (16, 32, 64):
            for prefix in (0, 1, 16, 40, 64, 300):
                check_exact(spec, mod, Sizes(B=1, H=1, HKV=1, SQ=n, SKV=n), block, block, {"prefix": prefix})


def sorted_documents(batch, length, gen) -> torch.Tensor:
    """Sorted ids with documents of random lengths (1 token up to most of the sequence)."""
    rows = []
    for _ in range(batch):
        cuts = torch.randint(0, length + 1, (int(torch.randint(0, 8, (), generator=gen)),), generator=gen)
        rows.append(torch.bucketize(torch.arange(length), cuts.sort().values, right=True))
    return torch.stack(rows).to(torch.int32)


def test_document_exact_with_sorted_ids():
    spec = lowered(EXAMPLES / "b03_document.attn")
    mod = module(spec)
    gen = torch.Generator().manual_seed(3)
    for n in LENGTHS:
        for bq, bk in BLOCKS:
            ids = sorted_documents(2, n, gen)
            check_exact(spec, mod, Sizes(B=2, H=1, HKV=1, SQ=n, SKV=n), bq, bk, {}, {"doc_q": ids, "doc_kv": ids})


def test_static_blocks_exact():
    spec = lowered(EXAMPLES / "b08_static_blocks.attn")
    mod = module(spec)
    bq, bk = spec_blocks(spec)
    for sq in LENGTHS:
        for skv in LENGTHS:
            check_exact(spec, mod, Sizes(B=1, H=4, HKV=4, SQ=sq, SKV=skv), bq, bk)


# ------------------------------------------------------------------ floats, NaN, undefined block rules


def test_nan_in_float_input_never_wrong():
    spec = lowered("attention nan_bound {\n input alpha: float32[H]\n mask not (q - kv < alpha[h])\n}")
    sizes = Sizes(B=1, H=2, HKV=2, SQ=8, SKV=8)
    inputs = {"alpha": torch.tensor([float("nan"), 2.0])}
    q, k = grid(1, 2, 8, 8)
    keep = dense_keep(spec, module(spec), q, k, {}, inputs)
    check_sound(keep, tiles_for(spec, 4, 4, sizes, {}, inputs), 4, 4)


@pytest.mark.parametrize("rule", ["(kv_block + 1) / q_block < 1.0", "kv_block / q_block < 1.0"])
def test_static_rule_with_division_by_zero_never_wrong(rule):
    """At q_block = 0 the rule divides by zero: x / 0 = inf (a definite False), 0 / 0 = NaN (False too).
    The classifier may refuse the rule (AttnError) but never call a tile FULL that the rule drops."""
    spec = lowered(f"attention div0 {{\n select blocks(q = 4, kv = 4) keep {rule}\n}}")
    sizes = Sizes(B=1, H=1, HKV=1, SQ=8, SKV=8)
    q, k = grid(1, 1, 8, 8)
    keep = dense_keep(spec, module(spec), q, k, {}, {})
    try:
        tiles = tiles_for(spec, 4, 4, sizes, {}, {})
    except AttnError:
        return
    check_sound(keep, tiles, 4, 4)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_float_bound_rounding_never_wrong(dtype):
    """`kv <= 0.7 * SKV` at SKV = 90: 62.99999999999999 in float64, 63.0 in float32 (a float32 run)."""
    spec = lowered("attention sized_prefix {\n mask kv <= 0.7 * SKV\n}")
    sizes = Sizes(B=1, H=1, HKV=1, SQ=4, SKV=90)
    q, k = (t.to(dtype) for t in grid(1, 1, 4, 90))
    keep = dense_keep(spec, module(spec), q, k, {}, {})
    check_sound(keep, tiles_for(spec, 1, 1, sizes, {}, {}), 1, 1)


def test_moa_float32_run_never_wrong():
    """MoA with alpha = 0, beta = 1/3, SKV = 3: the bound is 1.0000000298 in float64 and 1.0 in float32,
    so in a float32 run the pair (q=3, kv=2) is masked."""
    spec = lowered(EXAMPLES / "m15_moa.attn")
    sizes = Sizes(B=1, H=1, HKV=1, SQ=4, SKV=3)
    inputs = {"alpha": torch.tensor([0.0]), "beta": torch.tensor([1 / 3])}
    q, k = (t.float() for t in grid(1, 1, 4, 3))
    keep = dense_keep(spec, module(spec), q, k, {}, inputs)  # float32: the mask as attention() computes it
    check_sound(keep, tiles_for(spec, 1, 1, sizes, {}, inputs), 1, 1)


def test_float32_cancellation_never_wrong():
    """(alpha + 4096) - 4096 with alpha = 1.0001 is 1.0 in float32 (4097.0001 rounds to 4097): a float32 run
    masks (q=1, kv=0), but a slack of 2**-20 relative to 1.0001 keeps the bound above 1."""
    spec = lowered("attention cancel {\n input alpha: float32[H]\n mask q - kv < (alpha[h] + 4096.0) - 4096.0\n}")
    sizes = Sizes(B=1, H=1, HKV=1, SQ=2, SKV=2)
    inputs = {"alpha": torch.tensor([1.0001])}
    q, k = (t.float() for t in grid(1, 1, 2, 2))
    keep = dense_keep(spec, module(spec), q, k, {}, inputs)
    check_sound(keep, tiles_for(spec, 1, 1, sizes, {}, inputs), 1, 1)


def test_rows_never_empty_respects_data_dependent_selection():
    """Every query block has a FULL tile (key block 0), but top(1) picks key block 2 here, which holds the
    keys of only a quarter of the rows: the others are fully masked (lse = -inf) in the reference."""
    text = """attention pick_one {
    mask kv < 4 or kv // 4 == q % 4 + 1
    select blocks(q = 4, kv = 4) top(1) by dot(mean(q), mean(k))
}"""
    spec = lowered(text)
    mod = module(spec)
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, 1, 8, 2, generator=gen, dtype=F64) + 1
    k = torch.randn(1, 1, 20, 2, generator=gen, dtype=F64)
    k[:, :, 8:12] += 5  # key block 2 scores highest for both query blocks
    assert mod.select(q, k).block_mask[0, 0, :, 2].all()
    _, lse = mod.attention(q, k, torch.zeros(1, 1, 20, 1, dtype=F64), return_lse=True)
    tiles = tiles_for(spec, 4, 4, Sizes(B=1, H=1, HKV=1, SQ=8, SKV=20), {}, {})
    if tiles.rows_never_empty():
        assert torch.isfinite(lse).all(), f"rows_never_empty() claimed, but lse = {lse.flatten().tolist()}"


# ------------------------------------------------------------------ interval rules, one at a time

INT_RULES = {
    "add": (2, lambda a, b: a + b), "sub": (2, lambda a, b: a - b), "mul": (2, lambda a, b: a * b),
    "floordiv": (2, lambda a, b: a // b), "mod": (2, lambda a, b: a % b), "neg": (1, lambda a: -a),
    "abs": (1, abs), "min": (2, min), "max": (2, max), "clamp": (3, lambda x, lo, hi: min(max(x, lo), hi)),
    "bitand": (2, lambda a, b: a & b),
    "lt": (2, lambda a, b: a < b), "le": (2, lambda a, b: a <= b), "gt": (2, lambda a, b: a > b),
    "ge": (2, lambda a, b: a >= b), "eq": (2, lambda a, b: a == b), "ne": (2, lambda a, b: a != b),
}
BOOL_RULES = {
    "and": (2, lambda a, b: a and b), "or": (2, lambda a, b: a or b), "not": (1, lambda a: not a),
    "eq": (2, lambda a, b: a == b), "ne": (2, lambda a, b: a != b),
}


def box_values(intervals):
    return itertools.product(*(range(lo, hi + 1) for lo, hi in intervals))


def contains(result, values) -> bool:
    if isinstance(result, Bool):
        return all(bool(result.may_true) if v else bool(result.may_false) for v in values)
    return all(float(result.lo) <= v <= float(result.hi) for v in values)


small_interval = st.tuples(st.one_of(st.integers(-40, 40), st.integers(-400, 400)), st.integers(0, 12)).map(
    lambda t: (t[0], t[0] + t[1])
)
bool_interval = st.sampled_from([(True, False), (False, True), (True, True)])


@pytest.mark.parametrize("op", sorted(INT_RULES))
@settings(max_examples=120, deadline=None)
@given(data=st.data())
def test_interval_rule_contains_every_value(op, data):
    """Each integer rule over a box of small intervals contains the value at every point of the box."""
    arity, exact = INT_RULES[op]
    intervals = [data.draw(small_interval) for _ in range(arity)]
    if op in ("floordiv", "mod") and data.draw(st.booleans()):  # also divisors on one side of zero
        lo = data.draw(st.integers(1, 9))
        intervals[1] = (lo, lo + data.draw(st.integers(0, 5))) if data.draw(st.booleans()) else (-lo - 5, -lo)
    values = [exact(*v) for v in box_values(intervals) if not (op in ("floordiv", "mod") and v[1] == 0)]
    result = RULES[op](*(num(lo, hi) for lo, hi in intervals))
    assert contains(result, values), f"{op}{tuple(intervals)} -> {result}, values {sorted(set(values))}"


@pytest.mark.parametrize("op", sorted(BOOL_RULES))
@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_boolean_rule_contains_every_value(op, data):
    arity, exact = BOOL_RULES[op]
    flags = [data.draw(bool_interval) for _ in range(arity)]
    choices = [[v for v, ok in ((True, t), (False, f)) if ok] for t, f in flags]
    values = [exact(*v) for v in itertools.product(*choices)]
    result = RULES[op](*(Bool(torch.tensor(t), torch.tensor(f)) for t, f in flags))
    assert contains(result, values), f"{op}{tuple(flags)} -> {result}"


@settings(max_examples=150, deadline=None)
@given(cond=bool_interval, a=small_interval, b=small_interval, flags=st.tuples(bool_interval, bool_interval))
def test_where_rule_contains_every_value(cond, a, b, flags):
    picks = [value for value, possible in zip((True, False), cond) if possible]
    c = Bool(torch.tensor(cond[0]), torch.tensor(cond[1]))
    numbers = [v for pick in picks for v in range(*((a[0], a[1] + 1) if pick else (b[0], b[1] + 1)))]
    assert contains(RULES["where"](c, num(*a), num(*b)), numbers), f"where({cond}, {a}, {b})"
    x, y = (Bool(torch.tensor(t), torch.tensor(f)) for t, f in flags)
    bools = [v for pick in picks for v, ok in zip((True, False), flags[0] if pick else flags[1]) if ok]
    assert contains(RULES["where"](c, x, y), bools), f"where({cond}, {flags})"


@pytest.mark.parametrize("a, b", [((-math.inf, math.inf), (-math.inf, math.inf)), ((-math.inf, -1.0), (2.0, math.inf)),
                                  ((0.0, math.inf), (0.0, 3.0)), ((-math.inf, 0.0), (0.0, 0.0))])
def test_products_of_unbounded_intervals_stay_unbounded(a, b):
    """An infinite bound stays infinite: as the largest finite double it left `elu(q * g[h, f]) + 1.0 >= 0`
    unproved (elu of a finite bound is not -1). 0 * inf is 0, the factor 0 winning."""
    result = RULES["mul"](num(*a), num(*b))
    values = [x * y for x in a for y in b if not (x == 0 or y == 0)] + ([0.0] if 0.0 in a + b else [])
    assert float(result.lo) == min(values) and float(result.hi) == max(values)


# ------------------------------------------------------------------ random masks (hypothesis)

FUZZ_HEADER = """attention fuzz {{
    param p: int = {p}
    param r: int runtime = 0
    param flag: bool runtime = false
    input tq: int32[SQ]
    input tk: int32[SKV]
    input tbq: int32[B, SQ]
    input t2: int32[SQ, SKV]
    input th: int32[H]
"""
TOKEN_LEAVES = ("q", "kv") * 4 + ("h", "b", "p", "r", "SQ", "SKV")
BLOCK_LEAVES = ("q_block", "kv_block") * 3 + ("h", "b", "p", "r")
COMPARISONS = ("<", "<=", ">", ">=", "==", "!=")


@st.composite
def int_expr(draw, leaves, depth, loads=True):
    """Integer expressions whose magnitudes stay far below 2**53 (no overflow, exact in float64)."""
    if depth <= 0 or draw(st.integers(0, 4)) == 0:
        if draw(st.integers(0, 4)) < 3:
            return draw(st.sampled_from(leaves))
        return draw(constant())
    sub = lambda: draw(int_expr(leaves, depth - 1, loads))  # noqa: E731
    kind = draw(st.sampled_from(
        ["add", "sub"] * 3
        + ["scale", "mul", "floordiv", "mod", "abs", "min", "max", "clamp", "where", "bitand", "neg"]
        + (["load"] * 3 if loads else [])
    ))
    if kind in ("add", "sub"):
        return f"({sub()} {'+' if kind == 'add' else '-'} {sub()})"
    if kind == "scale":
        return f"({sub()} * {draw(st.integers(-4, 4))})"
    if kind == "mul":  # two leaves: products of products could overflow int64 in the reference
        return f"({draw(st.sampled_from(leaves))} * {draw(st.sampled_from(leaves))})"
    if kind in ("floordiv", "mod"):
        op = "//" if kind == "floordiv" else "%"
        return f"({sub()} {op} {draw(divisor(leaves, depth - 1, loads))})"
    if kind in ("abs", "neg"):
        return f"abs({sub()})" if kind == "abs" else f"(-{sub()})"
    if kind in ("min", "max", "bitand"):
        return f"{kind}({sub()}, {sub()})"
    if kind == "clamp":
        return f"clamp({sub()}, {sub()}, {sub()})"
    if kind == "where":
        return f"where({draw(bool_expr(leaves, depth - 1, loads))}, {sub()}, {sub()})"
    return draw(load(leaves, depth - 1))


@st.composite
def constant(draw) -> str:
    """Mostly small constants (boundaries of %, //, bitand and comparisons), sometimes large ones."""
    return str(draw(st.one_of(st.integers(-3, 10), st.integers(-3, 10), st.integers(-20, 320))))


@st.composite
def divisor(draw, leaves, depth, loads):
    """Never zero: a nonzero constant, or +-(abs(e) + k) with k >= 1."""
    if draw(st.booleans()):
        return str(draw(st.sampled_from([1, 2, 3, 4, 5, 7, 8, 16, 33, -1, -2, -3, -7, -16])))
    body = f"(abs({draw(int_expr(leaves, depth, loads))}) + {draw(st.integers(1, 9))})"
    return body if draw(st.booleans()) else f"(-{body})"


@st.composite
def load(draw, leaves, depth):
    """A read of an int32 table, by its natural index (q, kv, (b, q), h) or by any integer expression."""
    table = draw(st.sampled_from(["tq", "tk", "tbq", "t2", "th"]))
    natural = {"tq": ["q"], "tk": ["kv"], "tbq": ["b", "q"], "t2": ["q", "kv"], "th": ["h"]}[table]
    index = [n if draw(st.integers(0, 2)) else draw(int_expr(leaves, depth, loads=False)) for n in natural]
    return f"{table}[{', '.join(index)}]"


@st.composite
def bool_expr(draw, leaves, depth, loads=True):
    if depth <= 0 or draw(st.integers(0, 3)) == 0:
        choice = draw(st.integers(0, 5))
        if choice == 0:
            return draw(st.sampled_from(["flag", "true", "false"]))
        a = draw(int_expr(leaves, draw(st.integers(0, 2)), loads))
        b = draw(constant()) if draw(st.booleans()) else draw(int_expr(leaves, 1, loads))
        return f"({a} {draw(st.sampled_from(COMPARISONS))} {b})"
    sub = lambda: draw(bool_expr(leaves, depth - 1, loads))  # noqa: E731
    kind = draw(st.sampled_from(["cmp", "cmp", "and", "or", "not", "where", "booleq"]))
    if kind == "cmp":
        a = draw(int_expr(leaves, depth - 1, loads))
        b = draw(constant()) if draw(st.booleans()) else draw(int_expr(leaves, depth - 1, loads))
        return f"({a} {draw(st.sampled_from(COMPARISONS))} {b})"
    if kind in ("and", "or"):
        return f"({sub()} {kind} {sub()})"
    if kind == "not":
        return f"(not {sub()})"
    if kind == "where":
        return f"where({sub()}, {sub()}, {sub()})"
    return f"({sub()} {draw(st.sampled_from(['==', '!=']))} {sub()})"


@st.composite
def fuzz_case(draw):
    masks = [draw(bool_expr(TOKEN_LEAVES, draw(st.integers(1, 4)))) for _ in range(draw(st.integers(1, 2)))]
    static = draw(st.integers(0, 3)) == 3
    bq, bk = draw(st.sampled_from([1, 2, 3, 8, 16, 17, 32, 64, 100])), draw(st.sampled_from([1, 2, 4, 7, 16, 32, 129]))
    text = FUZZ_HEADER.format(p=draw(st.integers(-5, 50))) + "".join(f"    mask {m}\n" for m in masks)
    if static:
        keep = draw(bool_expr(BLOCK_LEAVES, draw(st.integers(1, 3)), loads=False))
        text += f"    select blocks(q = {bq}, kv = {bk}) keep {keep}\n"
    text += "}\n"
    configs = []
    for _ in range(2):  # two size / block configurations per compiled spec
        heads = draw(st.integers(1, 3))
        sizes = Sizes(B=draw(st.integers(1, 2)), H=heads, HKV=heads, SQ=draw(st.integers(1, 300)),
                      SKV=draw(st.integers(1, 300)), D=1, DV=1)
        if not static:
            bq = draw(st.sampled_from([1, 2, 3, 5, 16, 32, 64, 128, draw(st.integers(1, 300))]))
            bk = draw(st.sampled_from([1, 2, 4, 7, 16, 32, 64, 128, draw(st.integers(1, 300))]))
        runtime = {"r": draw(st.integers(-10, 300)), "flag": draw(st.booleans())}
        tables = dict(seed=draw(st.integers(0, 2**31)), low=draw(st.integers(-5, 0)), high=draw(st.integers(1, 20)),
                      sort=draw(st.booleans()))
        configs.append((sizes, bq, bk, runtime, tables))
    return text, configs


def fuzz_tables(sizes: Sizes, seed, low, high, sort) -> dict:
    gen = torch.Generator().manual_seed(seed)
    shapes = {"tq": (sizes.SQ,), "tk": (sizes.SKV,), "tbq": (sizes.B, sizes.SQ), "t2": (sizes.SQ, sizes.SKV),
              "th": (sizes.H,)}
    tables = {}
    for name, shape in shapes.items():
        t = torch.randint(low, high + 1, shape, generator=gen, dtype=torch.int32)
        tables[name] = t.sort(-1).values if sort else t
    return tables


@settings(max_examples=160, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(fuzz_case())
def test_random_masks_never_wrong(case):
    text, configs = case
    spec, optimized = both_pipelines(text)
    mod = module(spec)
    for n, (sizes, bq, bk, runtime, tables) in enumerate(configs):
        inputs = fuzz_tables(sizes, **tables)
        q, k = grid(sizes.B, sizes.H, sizes.SQ, sizes.SKV)
        keep = dense_keep(spec, mod, q, k, runtime, inputs)
        analysed, label = (spec, "standard") if n == 0 else (optimized, "optimized")
        tiles = tiles_for(analysed, bq, bk, sizes, runtime, inputs)
        check_sound(keep, tiles, bq, bk, f"{label} IR, runtime {runtime}, tables {tables}, sizes {sizes}\n{text}")
