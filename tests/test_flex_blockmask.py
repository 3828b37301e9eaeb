"""The flex target's BlockMask against the dense mask, on random sizes and values.

`build_block_mask` never evaluates the mask per pair where the tile analysis classifies it (docs/flex.md):
these properties check, for every example and random shapes (lengths that are rarely multiples of the
block, SQ != SKV, GQA), random inputs and random selections, that what it builds is still exactly the
mask the reference computes densely (the reference module's `_token_mask`, a different lowering of
the same IR):

- a tile the BlockMask lists neither as partial nor as full holds no kept pair;
- a tile listed as full keeps every pair inside the lengths (tails included): kernels skip the
  mask_mod there;
- the BlockMask's mask_mod equals the dense mask on every pair (eager flex_attention reads only it);
- partial and full lists are disjoint, ascending, and their counts match; seq_lengths and
  BLOCK_SIZE are the lengths and FLEX_BLOCK.

Also: which path each example takes, and the selection's eligible tiles found without a dense mask.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attnspec.analysis.tiles import EMPTY, FULL, PARTIAL
from attnspec.api import build_module, load_program, lower
from attnspec.codegen import passes_for
from attnspec.runtime import blocks as block_runtime
from attnspec.runtime import dense
from attnspec.sample import Sizes, sample_arguments
from test_flex import EXAMPLES, without_v

F64 = torch.float64

# Which BlockMask path each example takes (codegen/flex.py block_mask_path), and its block size.
PATHS = {
    ("b01_causal", "causal"): ("tile analysis", (128, 128)),
    ("b02_sliding_window", "sliding_window"): ("tile analysis", (128, 128)),
    ("b03_document", "document"): ("tile analysis", (128, 128)),
    ("b04_alibi", "alibi"): ("no mask", (128, 128)),
    ("b05_streaming_sink", "streaming_sink"): ("tile analysis", (128, 128)),
    ("b06_temperature", "temperature"): ("no mask", (128, 128)),
    ("b06_query_temperature", "query_temperature"): ("tile analysis", (128, 128)),
    ("b07_softcap", "softcap"): ("tile analysis", (128, 128)),
    ("b08_static_blocks", "static_blocks"): ("tile analysis", (16, 8)),
    ("b09_gqa", "gqa2"): ("tile analysis", (128, 128)),
    ("b10_rope", "rope"): ("tile analysis", (128, 128)),
    ("b10_rope2d", "rope2d"): ("no mask", (128, 128)),
    ("b10_rope_gated", "rope_gated"): ("tile analysis", (128, 128)),
    ("k01_nsa_select", "nsa_select"): ("tile analysis", (16, 16)),
    ("k02_moba", "moba"): ("tile analysis", (16, 16)),
    ("k03_vmoba", "vmoba"): ("no mask", (16, 16)),
    ("k05_seer_threshold", "seer_threshold"): ("tile analysis", (16, 16)),
    ("k08_nabla", "nabla"): ("no mask", (16, 16)),
    ("k10_biformer", "biformer"): ("no mask", (32, 16)),
    ("k12_sample_attention", "sample_attention"): ("tile analysis", (128, 128)),
    ("k14_mosa", "mosa"): ("tile analysis", (128, 128)),
    ("m01_prefix_lm", "prefix_lm"): ("tile analysis", (128, 128)),
    ("m02_natten2d", "natten2d"): ("tile analysis", (128, 128)),
    ("m02_natten3d", "natten3d"): ("tile analysis", (128, 128)),
    ("m03_dilated_na", "dilated_na2d"): ("tile analysis", (128, 128)),
    ("m05_swin", "swin"): ("tile analysis", (128, 128)),
    ("m05_swin_v2_cosine", "swin_v2_cosine"): ("tile analysis", (128, 128)),
    ("m06_maxvit_grid", "maxvit_grid"): ("tile analysis", (128, 128)),
    ("m08_criss_cross", "criss_cross"): ("tile analysis", (128, 128)),
    ("m09_timesformer", "timesformer"): ("tile analysis", (128, 128)),
    # (q * kv) % p: intervals of a product modulo p say "partial" for ~11% of tiles that are full
    # or empty, under the 95% bar, so every pair is evaluated
    ("m12_power_attention", "power_attention"): ("create_block_mask", (128, 128)),
    ("m14_ls_heads", "ls_heads"): ("tile analysis", (128, 128)),
    ("m15_moa", "moa"): ("tile analysis", (128, 128)),
    ("m16_sinklora", "sinklora"): ("tile analysis", (128, 128)),
    ("m18_block_causal", "block_causal"): ("tile analysis", (128, 128)),
    ("m20_svg_heads", "svg_heads"): ("tile analysis", (128, 128)),
    ("n01_sigmoid", "sigmoid_attn"): ("tile analysis", (128, 128)),
    ("n01_softpick", "softpick"): ("tile analysis", (128, 128)),
    ("n02_relu2_rownorm", "relu2_rownorm"): ("tile analysis", (128, 128)),
    ("n02_relu_kept_length", "relu_kept_length"): ("tile analysis", (128, 128)),
    ("n02_relu_length", "relu_length"): ("no mask", (128, 128)),
    ("n09_affine_scaled", "affine_scaled"): ("tile analysis", (128, 128)),
    ("n14_cosine_signed", "cosine_signed"): ("tile analysis", (128, 128)),
    ("n14_linear_elu", "linear_elu"): ("tile analysis", (128, 128)),
    ("n05_inline", "inline"): ("no mask", (128, 128)),
    ("n15_efficient", "efficient"): ("no mask", (128, 128)),
    ("n17_hedgehog", "hedgehog"): ("tile analysis", (128, 128)),
    ("n18_lightning", "lightning"): ("tile analysis", (128, 128)),
    ("o03_moh", "moh"): ("tile analysis", (128, 128)),
    ("s02_deberta", "deberta"): ("no mask", (128, 128)),
    ("s02_log_buckets", "log_buckets"): ("no mask", (128, 128)),
    ("s02_rel_bias_clipped", "rel_bias_clipped"): ("no mask", (128, 128)),
    ("s02_rel_table", "rel_table"): ("no mask", (128, 128)),
}

_MODULES: dict = {}


def example_specs() -> list[tuple[str, str]]:
    return [(path.stem, spec.name) for path in sorted(EXAMPLES.glob("*.attn")) for spec in load_program(path).specs]


def pair(stem: str, name: str):
    """(reference module, flex module, the spec as the reference lowers it), built once per spec."""
    if (stem, name) not in _MODULES:
        spec = next(s for s in load_program(EXAMPLES / f"{stem}.attn").specs if s.name == name)
        ref_spec = lower(spec, passes=passes_for("reference"))
        reference = build_module(ref_spec, "reference", f"{stem}.attn")
        flex = build_module(lower(spec, passes=passes_for("flex")), "flex", f"{stem}.attn")
        _MODULES[stem, name] = reference, flex, ref_spec
    return _MODULES[stem, name]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ------------------------------------------------------------------ the path table


def test_every_example_is_in_the_path_table():
    assert sorted(PATHS) == sorted(example_specs())


@pytest.mark.parametrize("stem, name", sorted(PATHS), ids=lambda x: str(x))
def test_block_mask_path(stem, name):
    _, flex, _ = pair(stem, name)
    assert (flex.BLOCK_MASK_PATH, flex.FLEX_BLOCK) == PATHS[stem, name]


# ------------------------------------------------------------------ random sizes

# lengths near block multiples (16 and 128) and odd ones; heads as plain, GQA 2, MQA
LENGTHS = st.one_of(
    st.integers(1, 300),
    st.sampled_from([1, 15, 16, 17, 127, 128, 129, 255, 256, 257]),
)
HEADS = st.sampled_from([(1, 1), (2, 2), (4, 2), (4, 1)])


@st.composite
def cases(draw):
    h, hkv = draw(HEADS)
    sizes = Sizes(B=draw(st.integers(1, 2)), H=h, HKV=hkv, SQ=draw(LENGTHS), SKV=draw(LENGTHS), D=8, DV=8)
    return sizes, draw(st.integers(0, 2**16))


def dense_truth(reference, spec, args: dict):
    """[B, H, SQ, SKV] bool: the reference's dense mask, within the selection's blocks when the spec
    selects (the selection computed once, by the reference, and handed to the flex module)."""
    low = without_v(args)
    keep = reference._token_mask(**low)
    selection = None
    if spec.selection is not None:
        selection = reference.select(**low)
        sizes = (spec.selection.q_block.literal, spec.selection.kv_block.literal)
        keep = keep & dense.expand_blocks(selection.block_mask, *sizes, keep.shape[2], keep.shape[3])
    return keep, selection


def listed(num: torch.Tensor, indices: torch.Tensor, nk: int) -> torch.Tensor:
    """[b, h, NQB] counts + [b, h, NQB, NKB] indices -> [b, h, NQB, nk] bool; checks the listed prefix ascends."""
    prefix = torch.arange(indices.shape[-1]) < num.unsqueeze(-1).long()
    chosen = torch.where(prefix, indices.long(), indices.shape[-1])
    assert (chosen[..., 1:] > chosen[..., :-1])[prefix[..., 1:]].all(), "listed blocks must ascend"
    out = torch.zeros(*indices.shape[:-1], indices.shape[-1] + 1, dtype=torch.bool)
    return out.scatter(-1, chosen, True)[..., :nk]


def tile_reduce(keep: torch.Tensor, block, how: str) -> torch.Tensor:
    """[B, H, SQ, SKV] -> [B, H, NQB, NKB]: any kept pair ('any'), or every pair inside kept ('all')."""
    bq, bk = block
    B, H, sq, skv = keep.shape
    nq, nk = -(-sq // bq), -(-skv // bk)
    padded = torch.nn.functional.pad(keep, (0, nk * bk - skv, 0, nq * bq - sq), value=how == "all")
    tiles = padded.view(B, H, nq, bq, nk, bk)
    return tiles.any(5).any(3) if how == "any" else tiles.all(5).all(3)


def check_block_mask(bm, keep: torch.Tensor, block) -> None:
    B, H, sq, skv = keep.shape
    nk = -(-skv // block[1])
    assert tuple(bm.seq_lengths) == (sq, skv) and tuple(bm.BLOCK_SIZE) == tuple(block)
    partial = listed(bm.kv_num_blocks, bm.kv_indices, nk)
    full = listed(bm.full_kv_num_blocks, bm.full_kv_indices, nk) if bm.full_kv_num_blocks is not None else partial & False
    partial, full = partial.expand(B, H, -1, -1), full.expand(B, H, -1, -1)
    assert not (partial & full).any(), "a tile is listed both partial and full"
    assert not (tile_reduce(keep, block, "any") & ~(partial | full)).any(), "an unlisted tile holds a kept pair"
    assert not (full & ~tile_reduce(keep, block, "all")).any(), "a full tile drops a pair"
    grid = [torch.arange(n).view([n if i == axis else 1 for i in range(4)]) for axis, n in enumerate(keep.shape)]
    by_mod = torch.broadcast_to(bm.mask_mod(*grid), keep.shape)
    assert torch.equal(by_mod, keep), "the BlockMask's mask_mod differs from the dense mask"


@pytest.mark.parametrize("stem, name", example_specs(), ids=lambda x: str(x))
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=cases())
def test_block_mask_matches_the_dense_mask(stem, name, case):
    sizes, seed = case
    reference, flex, spec = pair(stem, name)
    if spec.gqa_group is not None:  # b09 fixes H / HKV
        sizes = Sizes(B=sizes.B, H=sizes.HKV * int(spec.gqa_group.literal), HKV=sizes.HKV, SQ=sizes.SQ, SKV=sizes.SKV, D=8, DV=8)
    args = sample_arguments(spec, sizes, F64, seed=seed)
    keep, selection = dense_truth(reference, spec, args)
    if spec.selection is not None and spec.selection.dynamic:
        bm = flex.build_block_mask(**without_v(args), selection=selection)
    else:
        bm = flex.build_block_mask(**without_v(args))
    check_block_mask(bm, keep, flex.FLEX_BLOCK)


# ------------------------------------------------------------------ eligible tiles without a dense mask

SELECTING = [(stem, name) for stem, name in example_specs() if hasattr(pair(stem, name)[1], "_eligible_tiles")]


def test_the_selecting_examples_are_all_here():
    assert {stem for stem, _ in SELECTING} == {"k01_nsa_select", "k02_moba", "k03_vmoba", "k05_seer_threshold", "k08_nabla",
                                              "k10_biformer"}


@pytest.mark.parametrize("stem, name", SELECTING, ids=lambda x: str(x))
@settings(max_examples=10, deadline=None)
@given(case=cases())
def test_selection_matches_the_reference(stem, name, case):
    """The flex module finds eligible tiles from the tile classes and partial tiles only; the tiles,
    and so the blocks selected, are the reference's."""
    sizes, seed = case
    reference, flex, spec = pair(stem, name)
    low = without_v(sample_arguments(spec, sizes, F64, seed=seed))
    assert torch.equal(flex._eligible_tiles(**low), reference._eligible_tiles(**low))
    assert torch.equal(flex.select(**low).block_mask, reference.select(**low).block_mask)


@settings(max_examples=30, deadline=None)
@given(sq=LENGTHS, skv=LENGTHS, block=st.sampled_from([(16, 16), (32, 16), (128, 128)]), chunk=st.sampled_from([1, 300, 1 << 22]),
       with_classes=st.booleans())
def test_eligible_tiles_in_chunks(sq, skv, block, chunk, with_classes):
    """runtime.blocks.eligible_tiles: any chunk size, with the classes or without (every tile evaluated)."""

    def band(b, h, q_idx, kv_idx):  # a sliding window of 20 keys, bottom-right aligned, odd per head
        d = q_idx + (skv - sq) - kv_idx
        return (d >= 0) & (d < 20 + h)

    grid = [torch.arange(n).view([n if i == axis else 1 for i in range(4)]) for axis, n in enumerate((1, 2, sq, skv))]
    keep = torch.broadcast_to(band(*grid), (1, 2, sq, skv))
    classes = None
    if with_classes:  # exact classes, as the tile analysis gives for a band
        any_, all_ = tile_reduce(keep, block, "any"), tile_reduce(keep, block, "all")
        classes = torch.where(all_, FULL, torch.where(any_, PARTIAL, EMPTY)).to(torch.int8)
    got = block_runtime.eligible_tiles(classes, block, (3, 2, sq, skv), band, "cpu", pairs_per_chunk=chunk)
    assert got.shape == (3, 2, -(-sq // block[0]), -(-skv // block[1]))
    assert torch.equal(got, tile_reduce(keep, block, "any").expand_as(got))
