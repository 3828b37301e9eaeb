"""Closed-form key bands (attnspec/analysis/bands.py), checked against the reference's dense mask.

A band answer must be exact: for every (b, h, q) the union of [lo, hi] (clamped to [0, SKV)) is
the set of kept keys. The oracle is the generated reference module's `_token_mask`, on the
examples and on random masks built from affine comparisons, and/or/not and non-affine terms.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attnspec.analysis.bands import Band, evaluate_bands, key_bands
from attnspec.api import build_module, load_program, lower, pick_spec
from attnspec.diagnostics import NO_SPAN
from attnspec.ir import uses, walk
from attnspec.sample import Sizes, sample_arguments
from attnspec.types import infer

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
BAND_EXAMPLES = [
    "b01_causal", "b02_sliding_window", "b05_streaming_sink", "b07_softcap", "b08_static_blocks",
    "b09_gqa", "k01_nsa_select", "m01_prefix_lm", "m14_ls_heads", "m16_sinklora", "m18_block_causal",
    "n01_sigmoid", "n02_relu2_rownorm", "b04_alibi",
]
NOT_BAND_EXAMPLES = [
    "b03_document", "m02_natten2d", "m02_natten3d", "m03_dilated_na", "m05_swin", "m06_maxvit_grid",
    "m08_criss_cross", "m09_timesformer", "m12_power_attention",
    "m15_moa",  # q - kv < alpha[h] + beta[h] * SKV: a float bound; the IR has no float -> int rounding
]
SIZES = [Sizes(B=2, H=4, HKV=2, SQ=37, SKV=53), Sizes(B=1, H=4, HKV=2, SQ=64, SKV=64), Sizes(B=2, H=4, HKV=2, SQ=70, SKV=23)]


def lowered(source, consts=None):
    return lower(pick_spec(load_program(source), None), consts)


def band_mask(bands, spec, sizes: Sizes, runtime: dict, inputs: dict, q_index=None) -> torch.Tensor:
    """[B, H, len(q_index), SKV] bool from the evaluated bands."""
    q_index = torch.arange(sizes.SQ) if q_index is None else q_index
    kv = torch.arange(sizes.SKV)
    keep = torch.zeros((sizes.B, sizes.H, q_index.numel(), sizes.SKV), dtype=torch.bool)
    for lo, hi in evaluate_bands(bands, spec, q_index, sizes, runtime, inputs):
        assert lo.dtype == hi.dtype == torch.int64 and lo.shape == (sizes.B, sizes.H, q_index.numel())
        keep |= (kv >= lo[..., None]) & (kv <= hi[..., None])
    return keep


def dense_mask(spec, sizes: Sizes, args: dict) -> torch.Tensor:
    module = build_module(spec, "reference", "bands_test.attn")
    kw = {k: v for k, v in args.items() if k not in ("q", "k", "v")}
    return module._token_mask(args["q"], args["k"], **kw)


def check_exact(spec, sizes: Sizes, args: dict | None = None) -> None:
    args = sample_arguments(spec, sizes) if args is None else args
    bands = key_bands(spec.mask, spec)
    assert bands is not None
    kw = {k: v for k, v in args.items() if k not in ("q", "k", "v")}
    runtime = {p.name: kw[p.name] for p in spec.runtime_params}
    inputs = {i.name: kw[i.name] for i in spec.arguments}
    expected = dense_mask(spec, sizes, args)
    assert torch.equal(band_mask(bands, spec, sizes, runtime, inputs), expected)


# ------------------------------------------------------------------ the examples


@pytest.mark.parametrize("name", BAND_EXAMPLES)
@pytest.mark.parametrize("sizes", SIZES, ids=lambda s: f"{s.SQ}x{s.SKV}")
def test_band_examples_match_the_dense_mask(name, sizes):
    check_exact(lowered(EXAMPLES / f"{name}.attn"), sizes)


@pytest.mark.parametrize(
    "name, consts, runtime",
    [
        ("b02_sliding_window", {"causal": True}, {}),
        ("b02_sliding_window", {"window": 0}, {}),
        ("m01_prefix_lm", {}, {"prefix": 0}),
        ("m01_prefix_lm", {}, {"prefix": 45}),
        ("m01_prefix_lm", {}, {"prefix": 500}),
        ("m09_timesformer", {"spatial": True}, {}),  # frame-wise: q // 12 == kv // 12 is a band
        ("m14_ls_heads", {"n_local": 3, "window": 1}, {}),
        ("b05_streaming_sink", {"window": 40, "sinks": 0}, {}),
    ],
)
def test_band_examples_with_other_params(name, consts, runtime):
    spec = lowered(EXAMPLES / f"{name}.attn", consts)
    sizes = Sizes(B=1, H=4, HKV=2, SQ=50, SKV=61)
    check_exact(spec, sizes, {**sample_arguments(spec, sizes), **runtime})


@pytest.mark.parametrize("name", NOT_BAND_EXAMPLES)
def test_masks_that_are_not_bands_give_none(name):
    spec = lowered(EXAMPLES / f"{name}.attn")
    assert key_bands(spec.mask, spec) is None


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.attn")), ids=lambda p: p.stem)
def test_every_band_answer_is_exact(path):
    spec = lowered(path)
    if key_bands(spec.mask, spec) is not None:
        check_exact(spec, SIZES[0])


def test_no_mask_is_one_unbounded_band():
    spec = lowered(EXAMPLES / "b04_alibi.attn")
    assert spec.mask is None and key_bands(None, spec) == (Band(None, None),)


def test_bounds_are_int_ir_without_kv_and_keep_spans():
    for name in BAND_EXAMPLES:
        spec = lowered(EXAMPLES / f"{name}.attn")
        for band in key_bands(spec.mask, spec):
            for bound in (band.lo, band.hi):
                if bound is not None:
                    assert infer(bound, spec) == "int"
                    assert not uses(bound, "index_var", "kv")
                    assert all(n.span != NO_SPAN or n.op == "const" for n in walk(bound)), name


def test_shapes_of_known_bands():
    causal = lowered(EXAMPLES / "b01_causal.attn")
    (band,) = key_bands(causal.mask, causal)
    assert band.lo is None and band.hi is not None
    assert band.hi.span == causal.mask.span  # the comparison it came from
    window = lowered(EXAMPLES / "b02_sliding_window.attn")
    assert len(key_bands(window.mask, window)) == 1  # abs(q - kv) <= w is one band, not two
    sink = lowered(EXAMPLES / "b05_streaming_sink.attn")
    assert len(key_bands(sink.mask, sink)) == 2
    assert len(key_bands(lowered(EXAMPLES / "m01_prefix_lm.attn").mask, lowered(EXAMPLES / "m01_prefix_lm.attn"))) == 2


def test_evaluate_on_chosen_query_rows():
    spec = lowered(EXAMPLES / "b05_streaming_sink.attn")
    sizes = SIZES[0]
    args = sample_arguments(spec, sizes)
    rows = torch.tensor([36, 0, 17, 17, 5])
    got = band_mask(key_bands(spec.mask, spec), spec, sizes, {}, {}, q_index=rows)
    assert torch.equal(got, dense_mask(spec, sizes, args)[:, :, rows])


def test_evaluate_needs_bands():
    spec = lowered(EXAMPLES / "b03_document.attn")
    with pytest.raises(ValueError):
        evaluate_bands(key_bands(spec.mask, spec), spec, torch.arange(3), Sizes(), {}, {})


# ------------------------------------------------------------------ hand-picked masks

DECLS = """
    param w: int runtime = 5
    param c: int runtime = 9
    param f: bool runtime = true
    input tab: int32[SKV]
    input lenb: int32[B]
"""


def spec_with_mask(mask: str):
    return lowered(f"attention t {{ {DECLS}\n    mask {mask}\n}}")


BANDS = [
    "kv <= q + (SKV - SQ)", "q - kv < w", "kv >= q - w + 1", "kv < c", "abs(q - kv) <= w", "abs(q - kv) >= w",
    "abs(kv - q) > 3 and kv < q + w", "not (kv < q)", "not (q - kv < w or kv > c)", "kv == q", "kv != q",
    "kv <= q or (q < c and kv < c)", "h < 1 and kv <= q", "f and kv > q or not f and kv < q", "h < 1",
    "min(q, c) >= kv", "max(kv, q - w) <= q", "clamp(kv, q - 3, q + 3) == kv", "where(q < c, kv, q) <= 5",
    "where(kv < c, 1, 0) + q >= 10", "(kv < q) == (q < 20)", "(kv + 2) // 5 <= q // 5", "-kv >= -q",
    "kv <= lenb[b]", "kv + lenb[b] < q", "q // 3 * 3 <= kv", "kv - kv < q", "2 * (kv - q) - (kv - q) <= 0",
    "true", "false", "kv < 0", "kv >= SKV", "where(f, kv <= q, kv >= q)",
]
NOT_BANDS = [
    "kv % 4 == 0", "kv * kv < q", "tab[kv] > q", "float(kv) < 0.5 * float(q)", "2 * kv <= q", "kv // w <= q",
    "bitand(kv, 3) == 0", "2 * (kv // 3) <= q", "kv * q < 100", "(q - kv) % 8 == 0 and kv <= q",
]


@pytest.mark.parametrize("mask", BANDS)
def test_band_masks_are_found_and_exact(mask):
    spec = spec_with_mask(mask)
    assert key_bands(spec.mask, spec) is not None
    for sizes in (Sizes(B=2, H=2, HKV=1, SQ=30, SKV=41), Sizes(B=1, H=2, HKV=2, SQ=41, SKV=7)):
        check_exact(spec, sizes)


@pytest.mark.parametrize("mask", NOT_BANDS)
def test_non_band_masks_give_none(mask):
    spec = spec_with_mask(mask)
    assert key_bands(spec.mask, spec) is None


# ------------------------------------------------------------------ random masks

OTHERS = ["q", "w", "c", "SQ", "SKV", "h", "lenb[b]"]


@st.composite
def affine(draw, kv=True) -> str:
    """A sum of a few variables with small coefficients; kv mostly with coefficient +-1."""
    terms = []
    kv_coef = draw(st.sampled_from([1, -1, 1, -1, 1, -1, 0, 2])) if kv else 0
    if kv_coef:
        terms.append((kv_coef, "kv"))
    terms += [(draw(st.sampled_from([1, -1, 1, 2, -3])), v) for v in draw(st.lists(st.sampled_from(OTHERS), max_size=2, unique=True))]
    text = str(draw(st.integers(-12, 12)))
    for coef, var in terms:
        text += (" + " if coef > 0 else " - ") + (var if abs(coef) == 1 else f"{abs(coef)} * {var}")
    return f"({text})"


def int_exprs(conds):
    nonaffine = st.sampled_from(["(kv % 7)", "(kv * q)", "tab[kv]", "(kv // max(w, 1))", "bitand(kv, 5)"])
    leaves = st.one_of(affine(), affine(), affine(), affine(), affine(kv=False), nonaffine)

    def extend(inner):
        return st.one_of(
            st.builds(lambda a: f"abs({a})", inner),
            st.builds(lambda a, b: f"min({a}, {b})", inner, inner),
            st.builds(lambda a, b: f"max({a}, {b})", inner, inner),
            st.builds(lambda a, b, d: f"clamp({a}, {b}, {d})", inner, inner, inner),
            st.builds(lambda c, a, b: f"where({c}, {a}, {b})", conds, inner, inner),
            st.builds(lambda a, k: f"({a} // {k})", inner, st.integers(1, 5)),
            st.builds(lambda a, b: f"({a} + {b})", inner, inner),
            st.builds(lambda a, b: f"({a} - {b})", inner, inner),
        )

    return st.recursive(leaves, extend, max_leaves=3)


OPS = st.sampled_from(["<", "<=", ">", ">=", "==", "!="])
KV_FREE = st.sampled_from(["f", "h < 1", "lenb[b] > q", "q < c", "b == 0"])


def comparisons(conds=st.just("f")):
    """Mostly an expression with kv against a kv-free one, sometimes two expressions with kv."""
    ints = int_exprs(conds)
    one_sided = st.builds(lambda a, op, b: f"{a} {op} {b}", ints, OPS, affine(kv=False))
    return st.one_of(one_sided, one_sided, one_sided, st.builds(lambda a, op, b: f"{a} {op} {b}", ints, OPS, ints))


def masks():
    atoms = st.one_of(comparisons(), comparisons(), comparisons(comparisons()), KV_FREE)

    def extend(inner):
        return st.one_of(
            st.builds(lambda a: f"not ({a})", inner),
            st.builds(lambda a, b: f"({a}) and ({b})", inner, inner),
            st.builds(lambda a, b: f"({a}) or ({b})", inner, inner),
            st.builds(lambda c, a, b: f"where({c}, {a}, {b})", inner, inner, inner),
            st.builds(lambda a, b: f"({a}) == ({b})", inner, inner),
        )

    return st.recursive(atoms, extend, max_leaves=4)


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    mask=masks(),
    sq=st.integers(1, 300),
    skv=st.integers(1, 300),
    w=st.integers(-5, 40),
    c=st.integers(-5, 300),
    f=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_random_masks_bands_are_exact(mask, sq, skv, w, c, f, seed):
    spec = spec_with_mask(mask)
    bands = key_bands(spec.mask, spec)
    if bands is None:
        return
    sizes = Sizes(B=2, H=2, HKV=1, SQ=sq, SKV=skv, D=4, DV=4)
    gen = torch.Generator().manual_seed(seed)
    args = sample_arguments(spec, sizes)
    args.update(w=w, c=c, f=f, tab=torch.randint(0, 300, (skv,), generator=gen, dtype=torch.int32),
                lenb=torch.randint(-3, 300, (2,), generator=gen, dtype=torch.int32))
    check_exact(spec, sizes, args)
