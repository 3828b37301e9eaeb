"""The triton target (codegen/triton.py, templates/triton, runtime/triton.py) against the float64 reference.

On a machine without CUDA the kernels run in Triton's CPU interpreter (TRITON_INTERPRET=1, set by
conftest.py before any module is built), at small sizes. What is checked:
- every spec of every example agrees with the float64 reference under the accuracy rule (design.md
  section 6), out and lse, in float32 and bfloat16, on B = 2, GQA 2, SQ = 100, SKV = 130 (neither a
  multiple of the 64-wide tiles nor of the selection blocks) and DV != D, plus one rotating edge
  shape (a single query or key, MQA, SQ > SKV, several tiles);
- fully masked rows give out 0 and lse -inf (the sink logit with a sink), never NaN;
- the kernel helpers keep the language's semantics (floor division and modulo of negative numbers,
  powers, tanh, softplus);
- what the kernel refuses, with clear errors: float64, CPU tensors outside the interpreter (gradients:
  test_triton_backward.py).
Selections are computed once, by the reference, and handed to both targets.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import triton
import triton.language as tl

import attnspec
from attnspec.api import build_module, load_program, lower
from attnspec.codegen import passes_for
from attnspec.runtime import kernel as _kernel, triton as triton_runtime
from attnspec.sample import Sizes, sample_arguments
from test_flex import EXAMPLES, F64, assert_agrees, cast, find_spec, fits, is_elementwise, spec_cases, without_v

pytest.importorskip("triton")
pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    # masked lanes compute log(0) and 0 / 0 before tl.where drops them; numpy says so
    pytest.mark.filterwarnings("ignore::RuntimeWarning:triton.runtime.interpreter"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:triton.runtime.interpreter"),
]

DTYPES = (torch.float32, torch.bfloat16)
MAIN_SHAPE = Sizes(B=2, H=4, HKV=2, SQ=100, SKV=130, D=32, DV=24)
EDGE_SHAPES = (
    Sizes(B=1, H=1, HKV=1, SQ=1, SKV=37, D=16, DV=16),
    Sizes(B=1, H=4, HKV=1, SQ=150, SKV=70, D=16, DV=8),
    Sizes(B=1, H=2, HKV=2, SQ=70, SKV=200, D=64, DV=32),
    Sizes(B=1, H=2, HKV=1, SQ=37, SKV=1, D=8, DV=8),
)


def modules(stem: str, name: str, consts: dict | None = None):
    spec = find_spec(stem, name)
    ref_spec = lower(spec, consts, passes=passes_for("reference"))
    reference = build_module(ref_spec, "reference", f"{stem}.attn")
    kernel = build_module(lower(spec, consts, passes=passes_for("triton")), "triton", f"{stem}.attn")
    return reference, kernel, ref_spec


def run_both(reference, kernel, spec, args64: dict, dtype):
    low = cast(args64, dtype)
    shared = {}
    if spec.selection is not None and spec.selection.dynamic:
        shared["selection"] = reference.select(**without_v(low))
    lse = {} if is_elementwise(spec) else {"return_lse": True}

    def pair(result):
        return result if lse else (result, None)

    with torch.no_grad():
        got = pair(kernel.attention(**low, **shared, **lse))
        low_ref = pair(reference.attention(**low, **shared, **lse))
        ref64 = pair(reference.attention(**args64, **shared, **lse))
    return got, low_ref, ref64


@pytest.mark.parametrize("stem, name, runs", spec_cases(DTYPES, EDGE_SHAPES, MAIN_SHAPE))
def test_example_agrees_with_reference(stem, name, runs):
    reference, kernel, spec = modules(stem, name)
    for seed, (sizes, dtype) in enumerate(runs):
        if not fits(spec, sizes):
            sizes = replace(sizes, H=sizes.HKV * int(spec.gqa_group.literal))
        args64 = sample_arguments(spec, sizes, F64, seed=seed)
        got, low_ref, ref64 = run_both(reference, kernel, spec, args64, dtype)
        assert got[0].dtype == dtype and got[0].shape == (sizes.B, sizes.H, sizes.SQ, sizes.DV)
        assert_agrees(got, low_ref, ref64, f"{name} {dtype} {sizes}")


# ------------------------------------------------------------------ fully masked rows


@pytest.mark.parametrize("dtype", DTYPES)
def test_causal_rows_before_the_first_key_are_empty(dtype):
    _, kernel, spec = modules("b01_causal", "causal")
    args = cast(sample_arguments(spec, Sizes(B=1, H=2, HKV=1, SQ=150, SKV=20, D=16, DV=8), F64), dtype)
    with torch.no_grad():
        out, lse = kernel.attention(**args, return_lse=True)
    assert not torch.isnan(out).any() and not torch.isnan(lse).any()
    assert torch.equal(out[:, :, :130], torch.zeros_like(out[:, :, :130]))
    assert torch.equal(lse[:, :, :130], torch.full_like(lse[:, :, :130], -math.inf))
    assert torch.isfinite(lse[:, :, 130:]).all()


def test_sink_rows_without_keys_give_the_sink_logit():
    reference, kernel, spec = modules("b05_streaming_sink", "streaming_sink", {"sinks": 0})
    sizes = Sizes(B=1, H=4, HKV=2, SQ=160, SKV=20, D=16, DV=8)
    args = sample_arguments(spec, sizes, F64)
    low = cast(args, torch.float32)
    with torch.no_grad():
        out, lse = kernel.attention(**low, return_lse=True)
    first_empty = sizes.SKV + 16 - 1
    assert torch.equal(out[:, :, first_empty:], torch.zeros_like(out[:, :, first_empty:]))
    sink = low["sink_logit"].view(1, -1, 1).expand_as(lse[:, :, first_empty:])
    torch.testing.assert_close(lse[:, :, first_empty:], sink)
    assert_agrees(*run_both(reference, kernel, spec, args, torch.float32), "streaming_sink, sinks = 0")


def test_rownorm_rows_without_weight_are_empty():
    source = "attention rownorm_br {\n    mask kv <= q + (SKV - SQ)\n    normalize rownorm(relu(score) ** 2)\n}\n"
    kernel, reference = attnspec.compile(source, "triton"), attnspec.compile(source, "reference")
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, 2, 50, 16, generator=gen)
    k = torch.randn(1, 2, 30, 16, generator=gen)
    v = torch.randn(1, 2, 30, 8, generator=gen)
    q[:, :, 20] = -k[:, :, 0]  # row 20 keeps key 0 only, with a negative score: sum f = 0
    with torch.no_grad():
        out, lse = kernel.attention(q, k, v, return_lse=True)
        expected = reference.attention(q.double(), k.double(), v.double(), return_lse=True)
    assert torch.equal(out[:, :, :21], torch.zeros_like(out[:, :, :21]))
    assert torch.equal(lse[:, :, :21], torch.full_like(lse[:, :, :21], -math.inf))
    torch.testing.assert_close(out, expected[0].float(), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ the language's semantics in the kernel

SEMANTICS = """attention semantics {
    param W: int = 7
    score = score + float((q - kv) // W) * 0.01 + float((q - kv) % W) * 0.001 + tanh(score) * 0.1
    score = score + softplus(score - 3.0) * 0.1 - (score * 0.1) ** 3 + abs(score) ** 0.5 * 0.01
    mask (q - kv) % W != 3 or kv == q
}
"""


@pytest.mark.parametrize("dtype", DTYPES)
def test_kernel_helpers_keep_the_language_semantics(dtype):
    """Floor division and modulo of negative differences, integer and fractional powers, tanh near 0
    and softplus, in the score mod and in the mask, against the reference."""
    kernel, reference = attnspec.compile(SEMANTICS, "triton"), attnspec.compile(SEMANTICS, "reference")
    spec = lower(load_program(SEMANTICS).specs[0])
    args64 = sample_arguments(spec, Sizes(B=1, H=2, HKV=1, SQ=70, SKV=90, D=16, DV=8), F64)
    assert_agrees(*run_both(reference, kernel, spec, args64, dtype), f"semantics {dtype}")


@triton.jit
def _rounded_kernel(X, Y, N: tl.constexpr, BITS: tl.constexpr):
    i = tl.arange(0, N)
    tl.store(Y + i, _kernel.rounded(tl.load(X + i), BITS))


@pytest.mark.parametrize("dtype, bits", [(torch.bfloat16, 16), (torch.float16, 13)], ids=["bf16", "fp16"])
def test_the_interpreters_rounding_is_the_gpus_cast(dtype, bits):
    """`kernel.rounded` (what the interpreter's float32 products take for the GPU's cast to a half
    type) rounds to nearest, ties to even, as torch's cast does: ties both ways, the type's largest
    value and what rounds past it (bf16: float32's largest; fp16: 65504, and 65520, the first value
    that rounds to infinity), subnormals (float32's; fp16's, spaced 2^-24, ties included, and what
    underflows to 0), infinities, NaN, and random values over twenty decades."""
    ties = torch.tensor([0x3F808000, 0x3F818000, 0x3F807FFF, 0x3F808001, 0x3F801000, 0x3F803000], dtype=torch.int32).view(torch.float32)
    special = torch.tensor([1e-40, -1e-44, 0.0, -0.0, math.inf, -math.inf, math.nan])
    if dtype == torch.bfloat16:
        special = torch.cat([special, torch.tensor([3.4028235e38, -3.4028235e38, 1e30, -7e-30])])
    else:
        special = torch.cat([special, torch.tensor([65504.0, -65504.0, 65519.0, 65520.0, -65520.0, 1e6, 2.0**-14,
                                                    2.0**-14 * (1 - 2.0**-12), 2.0**-24, 2.0**-25, -3 * 2.0**-25, 5 * 2.0**-25, 2.0**-26])])
    gen = torch.Generator().manual_seed(0)
    drawn = torch.randn(512, generator=gen) * 10.0 ** torch.randint(-10, 10, (512,), generator=gen).float()
    x = torch.cat([ties, special, drawn])[:512]
    y = torch.empty_like(x)
    _rounded_kernel[(1,)](x, y, N=512, BITS=bits)
    torch.testing.assert_close(y, x.to(dtype).float(), rtol=0, atol=0, equal_nan=True)
    assert not torch.equal(y[:6], x[:6])  # the ties moved
    if dtype == torch.float16:
        assert torch.isinf(y[x.abs() >= 65520]).all() and (y[(x.abs() < 2.0**-25) & (x != 0)] == 0).all()


@triton.jit
def _tf32_kernel(A, B, Out, N: tl.constexpr, HOW: tl.constexpr):
    i, j = tl.arange(0, N), tl.arange(0, N)
    a, b = tl.load(A + i[:, None] * N + j[None, :]), tl.load(B + i[:, None] * N + j[None, :])
    if HOW == 0:
        c = tl.dot(a, b, input_precision="ieee")
    elif HOW == 1:
        c = tl.dot(a, b)  # Triton's default for float32: TF32
    else:
        c = _kernel.matrix_product(a, b, HOW)
    tl.store(Out + i[:, None] * N + j[None, :], c)


def test_tf32_products_read_their_operands_as_the_tensor_cores_do():
    """In the interpreter a TF32 product ignores its float32 operands' lower 13 mantissa bits, as the
    GPU's tensor cores do (runtime/interpreter.py); IEEE stays exact. kernel.matrix_product's rounded
    operands (2) err by half of that, its three products (3) about as float32."""
    from attnspec.runtime import interpreter

    interpreter.mend()  # as loading a generated module does
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(16, 16, generator=gen), torch.randn(16, 16, generator=gen)
    exact = a.double() @ b.double()
    truncated = (a.view(torch.int32) & -8192).view(torch.float32).double() @ (b.view(torch.int32) & -8192).view(torch.float32).double()
    got = {}
    for how in (0, 1, 2, 3):
        out = torch.empty(16, 16)
        _tf32_kernel[(1,)](a, b, out, N=16, HOW=how)
        got[how] = (out.double() - exact).abs().max().item()
        if how == 1:
            torch.testing.assert_close(out.double(), truncated, rtol=0, atol=1e-5)
    scale = (a.abs().double() @ b.abs().double()).max().item()
    assert got[0] < 1e-6 * scale and got[3] < 1e-6 * scale
    assert 2.0**-14 * scale < got[1] < 2.0**-9 * scale and got[2] < got[1] / 1.5


@triton.jit
def _product_kernel(P, V, Out, N: tl.constexpr, BITS: tl.constexpr, SPLIT: tl.constexpr):
    i, j = tl.arange(0, N), tl.arange(0, N)
    p, v = tl.load(P + i[:, None] * N + j[None, :]), tl.load(V + i[:, None] * N + j[None, :])
    acc = tl.zeros([N, N], dtype=tl.float32)
    if SPLIT:
        acc = _kernel.mma_split(p, v, acc, True, BITS)
    else:
        acc = _kernel.mma(_kernel.operand(p, v, BITS), v, acc, True)
    tl.store(Out + i[:, None] * N + j[None, :], acc)


def test_weights_in_two_half_operands_are_near_float32():
    """`kernel.mma_split` (the forward's weights when a backward sums dS over rows) multiplies float32
    weights by a bf16 tile within float32's rounding of the sum, where one bf16 operand errs by the
    weights' bf16 rounding; in the interpreter both emulate the GPU's casts (`kernel.operand`)."""
    gen = torch.Generator().manual_seed(4)
    p = torch.rand(32, 32, generator=gen)
    v = torch.randn(32, 32, generator=gen).to(torch.bfloat16).float()
    exact = p.double() @ v.double()
    errors = {}
    for split in (False, True):
        out = torch.empty(32, 32)
        _product_kernel[(1,)](p, v, out, N=32, BITS=16, SPLIT=split)
        errors[split] = float((out.double() - exact).abs().max() / exact.abs().max())
    assert errors[False] > 2.0**-11, errors  # the weights rounded to bf16, as the GPU's cast rounds them
    assert errors[True] < 2.0**-17, errors


# the forward keeps these softmaxes in log2 units, log2(e) folded into the mod (codegen/triton.py
# _log2_score): a sink with a non-affine mod, a scale that may be negative, a mod that does not read the
# score, a quotient whose numerator takes log2(e), a param's factor; rows without keys included
LOG2_UNITS = {
    "sink_tanh": "param cap: float = 3.0\n score = cap * tanh(score / cap)\n mask kv <= q - 5\n normalize softmax(sink = 0.5 - float(h))",
    "negative_scale": "param t: float runtime = -0.75\n scale = t\n mask kv <= q",
    "constant_mod": "score = float((q - kv) % 3) - 1.0\n mask kv <= q + 2",
    "quotient": "score = score * log(float(SKV)) / (1.0 + float(h))\n normalize softmax(sink = -1.0)",
}


@pytest.mark.parametrize("name", sorted(LOG2_UNITS))
@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_in_log2_units_agrees_with_reference(name, dtype):
    source = f"attention {name} {{\n {LOG2_UNITS[name]}\n}}\n"
    spec = lower(load_program(source).specs[0], passes=passes_for("triton"))
    assert spec.normalize.kind == "softmax"
    kernel, reference = attnspec.compile(source, "triton"), attnspec.compile(source, "reference")
    assert "LOG2=True" in kernel.__loader__.get_source(kernel.__name__)  # the log2 path is the one tested
    args64 = sample_arguments(spec, Sizes(B=1, H=3, HKV=1, SQ=70, SKV=50, D=16, DV=8), F64)
    assert_agrees(*run_both(reference, kernel, spec, args64, dtype), f"{name} {dtype}")


@pytest.mark.parametrize("name", ["sink_tanh", "quotient"])
def test_gradients_after_a_log2_forward_agree_with_reference(name):
    """The backward reads the forward's row max converted back to natural units."""
    from test_triton_backward import assert_gradients_agree, subject_of

    subject = subject_of(f"attention {name} {{\n {LOG2_UNITS[name]}\n}}\n")
    assert_gradients_agree(subject, Sizes(B=1, H=3, HKV=1, SQ=70, SKV=50, D=16, DV=8), "float32")


def test_full_backward_tiles_without_bounds_never_reach_stored_gradients():
    """A mod that is NaN past the lengths (log of 0 or less): the backward's full tiles keep every pair
    without bounds, so those NaNs must stay in rows of dQ, dK and dV that are never stored."""
    from test_triton_backward import assert_gradients_agree, subject_of

    source = "attention past_lengths {\n score = score + 0.1 * log(float(SQ - q)) + 0.1 * log(float(SKV - kv))\n}\n"
    subject = subject_of(source)
    for sizes in (Sizes(B=1, H=2, HKV=1, SQ=70, SKV=50, D=16, DV=8), Sizes(B=1, H=2, HKV=2, SQ=37, SKV=100, D=16, DV=8)):
        assert_gradients_agree(subject, sizes, "float32")
        assert_gradients_agree(subject, sizes, "bfloat16", seed=4)


# ------------------------------------------------------------------ what the kernel refuses


@pytest.mark.parametrize("mask", ["kv <= q or float(h) < 2.5", "float(h) >= 0.5 and kv <= q + 3"])
def test_float_comparisons_combine_with_boolean_tensors(mask):
    """In the interpreter a float scalar's comparison was not a boolean `|` / `&` take (found by fuzz)."""
    source = f"attention g {{ mask {mask} }}"
    kernel, reference = attnspec.compile(source, "triton"), attnspec.compile(source, "reference")
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 4, 20, 16, generator=gen) for _ in range(3))
    torch.testing.assert_close(kernel.attention(q, k, v), reference.attention(q, k, v), rtol=1e-4, atol=1e-5)


def test_float64_is_refused():
    _, kernel, spec = modules("b01_causal", "causal")
    args = sample_arguments(spec, Sizes(B=1, H=1, HKV=1, SQ=8, SKV=8, D=8, DV=8), F64)
    with pytest.raises(TypeError, match="float32, bfloat16 or float16"):
        kernel.attention(**args)


def test_cpu_tensors_outside_the_interpreter_are_refused(monkeypatch):
    _, kernel, spec = modules("b01_causal", "causal")
    args = cast(sample_arguments(spec, Sizes(B=1, H=1, HKV=1, SQ=8, SKV=8, D=8, DV=8), F64), torch.float32)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        with torch.no_grad():
            kernel.attention(**args)


# blocks that do not nest with the interpreter's 64 x 64 tiles (24 x 40: tiles hold parts of several
# blocks, and blocks of several tiles) and blocks smaller than any tile (8 x 16), per head, GQA-shared
ODD_BLOCKS = """
attention odd_blocks {
    gqa group = 2
    mask kv <= q + (SKV - SQ)
    select blocks(q = QB, kv = KB) top(2) by dot(mean(q), mean(k)) causal per kv_head always kv_block == 0
}
"""


@pytest.mark.parametrize("blocks", [(24, 40), (8, 16), (16, 16), (128, 8)], ids=lambda b: f"{b[0]}x{b[1]}")
@pytest.mark.parametrize("dtype", DTYPES)
def test_selection_blocks_of_any_size_run_on_the_kernels_tiles(blocks, dtype):
    """A selection's blocks need not nest with the kernel's tiles: a tile that holds parts of several
    blocks is walked as a partial tile whose pairs are looked up in the selection, forward and
    backward, on shapes whose lengths are not multiples of either."""
    source = ODD_BLOCKS.replace("QB", str(blocks[0])).replace("KB", str(blocks[1]))
    program = load_program(source)
    spec = lower(program.specs[0], passes=passes_for("reference"))
    reference = build_module(spec, "reference", "odd_blocks.attn")
    kernel = build_module(lower(program.specs[0], passes=passes_for("triton")), "triton", "odd_blocks.attn")
    assert kernel.SELECTION_BLOCKS == blocks
    for seed, sizes in enumerate([Sizes(B=1, H=4, HKV=2, SQ=150, SKV=201, D=16, DV=8), Sizes(B=2, H=2, HKV=1, SQ=70, SKV=45, D=16, DV=16)]):
        args64 = sample_arguments(spec, sizes, F64, seed=seed)
        got, low_ref, ref64 = run_both(reference, kernel, spec, args64, dtype)
        assert_agrees(got, low_ref, ref64, f"odd_blocks {blocks} {dtype} {sizes}")


def test_selection_blocks_of_any_size_have_the_reference_gradients():
    source = ODD_BLOCKS.replace("QB", "24").replace("KB", "40")
    reference, kernel = attnspec.compile(source, "reference"), attnspec.compile(source, "triton")
    gen = torch.Generator().manual_seed(3)
    q, k, v = torch.randn(1, 4, 150, 16, generator=gen), torch.randn(1, 2, 201, 16, generator=gen), torch.randn(1, 2, 201, 8, generator=gen)
    selection = reference.select(q.double(), k.double())
    grads = []
    for module, dtype in [(kernel, torch.float32), (reference, torch.float64)]:
        leaves = [x.detach().to(dtype).requires_grad_() for x in (q, k, v)]
        module.attention(*leaves, selection=selection).square().sum().backward()
        grads.append([x.grad.double() for x in leaves])
    for name, got, exact in zip("qkv", *grads):
        torch.testing.assert_close(got, exact, rtol=1e-4, atol=1e-5 * float(exact.abs().max()), msg=name)


def test_kernel_config_follows_the_head_dims():
    q = torch.empty(1, 1, 4, 40)
    v = torch.empty(1, 1, 4, 100)
    config = triton_runtime.kernel_config(q, v)
    assert (config.block_d, config.block_dv) == (64, 128)


LARGE_BLOCKS = """
attention large_blocks {
    mask kv <= q + (SKV - SQ)
    select blocks(q = 128, kv = 256) top(2) by dot(mean(q), mean(k)) causal always kv_block == q_block
}
"""


@pytest.mark.parametrize("dtype", DTYPES)
def test_selection_blocks_larger_than_the_tiles_are_walked_tile_by_tile(dtype):
    """Blocks of 128 x 256 run on 64 x 64 kernel tiles (every candidate's tiles divide them): a block is
    several tiles, kept or dropped together, so any block size launches (on a GPU, on wgmma)."""
    spec = lower(load_program(LARGE_BLOCKS).specs[0], passes=passes_for("reference"))
    reference = build_module(spec, "reference", "large_blocks.attn")
    kernel = build_module(lower(load_program(LARGE_BLOCKS).specs[0], passes=passes_for("triton")), "triton", "large_blocks.attn")
    args64 = sample_arguments(spec, Sizes(B=1, H=2, HKV=1, SQ=300, SKV=700, D=16, DV=8), F64)
    config = triton_runtime.kernel_config(args64["q"], args64["v"])
    assert (config.block_m, config.block_n) == (64, 64) and kernel.SELECTION_BLOCKS == (128, 256)
    got, low_ref, ref64 = run_both(reference, kernel, spec, args64, dtype)
    assert_agrees(got, low_ref, ref64, f"large_blocks {dtype}")


def test_selected_blocks_become_selected_tiles():
    """Tiles inside one block (2 x 4 in 4 x 8 blocks) are kept or dropped whole; tiles across blocks
    (8 x 4 over 4 x 8 blocks; 4 x 4 over 6 x 2 blocks, which do not nest) are kept where any of
    their pairs' blocks is, whole where all are; cells past the lengths count for neither."""
    selected = torch.tensor([[[[True, False], [False, True]]]])
    kept, whole = triton_runtime.selected_tiles(selected, (4, 8), (2, 4), (7, 13))
    expected = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]], dtype=torch.bool)
    assert torch.equal(kept[0, 0], expected) and torch.equal(whole[0, 0], expected)
    kept, whole = triton_runtime.selected_tiles(selected, (4, 8), (8, 4), (7, 13))
    assert torch.equal(kept[0, 0], torch.tensor([[True, True, True, True]]))
    assert not whole.any()
    # rows 0-3 of block row 0 only: SQ = 3 leaves block row 1 outside the lengths
    kept, whole = triton_runtime.selected_tiles(selected, (4, 8), (8, 4), (3, 13))
    assert torch.equal(kept[0, 0], torch.tensor([[True, True, False, False]]))
    assert torch.equal(whole[0, 0], torch.tensor([[True, True, False, False]]))
    # 6 x 2 blocks under 4 x 4 tiles: against a per-pair computation
    blocks = torch.rand(1, 1, 3, 5, generator=torch.Generator().manual_seed(0)) < 0.5
    pairs = blocks.repeat_interleave(6, 2).repeat_interleave(2, 3)[:, :, :14, :9]
    padded = torch.zeros(1, 1, 16, 12, dtype=torch.bool)
    padded[:, :, :14, :9] = pairs
    inside = torch.zeros(16, 12, dtype=torch.bool)
    inside[:14, :9] = True
    kept, whole = triton_runtime.selected_tiles(blocks, (6, 2), (4, 4), (14, 9))
    tiles = padded.view(1, 1, 4, 4, 3, 4)
    assert torch.equal(kept, tiles.any(5).any(3))
    assert torch.equal(whole, (padded | ~inside).view(1, 1, 4, 4, 3, 4).all(5).all(3))


def test_the_backward_tries_smaller_tiles_on_a_gpu(monkeypatch):
    from types import SimpleNamespace

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    q = SimpleNamespace(shape=(1, 1, 4, 128), dtype=torch.bfloat16, device=SimpleNamespace(type="cuda"))
    forward = triton_runtime.candidate_configs(q, q)
    backward = triton_runtime.candidate_configs(q, q, backward=True)
    assert backward != forward
    assert max(c.block_m * c.block_n for c in backward) < max(c.block_m * c.block_n for c in forward)
    assert all(c.num_stages <= 2 for c in backward)


def test_small_selection_blocks_add_tiles_inside_them_as_later_candidates(monkeypatch):
    """On a GPU the default tiles stay wide (wgmma; tiles across blocks look pairs up); blocks smaller
    than them bring their own tiles as the last candidates, for the autotuner to time; blocks that hold
    whole tiles, or that tl.dot cannot take as tiles, bring none."""
    from types import SimpleNamespace

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    q = SimpleNamespace(shape=(1, 1, 4, 64), dtype=torch.bfloat16, device=SimpleNamespace(type="cuda"))
    plain = triton_runtime.candidate_configs(q, q)
    small = triton_runtime.candidate_configs(q, q, blocks=(16, 16))
    assert small[:len(plain)] == plain and (small[0].block_m, small[0].block_n) == (128, 64)
    assert {(c.block_m, c.block_n, c.num_warps) for c in small[len(plain):]} == {(16, 16, 4)}
    for blocks in [(128, 512), (24, 40), (8, 16)]:
        assert triton_runtime.candidate_configs(q, q, blocks=blocks) == plain, blocks


# ------------------------------------------------------------------ the schedule: closed-form bands or a table

BANDS = {
    "b01_causal", "b02_sliding_window", "b04_alibi", "b05_streaming_sink", "b06_query_temperature", "b06_temperature", "b07_softcap",
    "b09_gqa", "b10_rope", "b10_rope2d", "b10_rope_gated", "m01_prefix_lm", "m14_ls_heads", "m16_sinklora", "m18_block_causal", "n01_sigmoid",
    "n01_softpick", "n02_relu2_rownorm", "n02_relu_kept_length", "n02_relu_length", "n09_affine_scaled", "o03_moh", "n14_cosine_signed", "n05_inline", "n14_linear_elu", "n15_efficient", "n17_hedgehog", "n18_lightning", "s02_deberta", "s02_log_buckets", "s02_rel_bias_clipped", "s02_rel_table",
}


@pytest.mark.parametrize("stem", sorted(p.stem for p in EXAMPLES.glob("*.attn")))
def test_schedule_kind(stem):
    """Masks that are unions of key bands (and no mask) get their key tiles in closed form in the
    kernel; the others, and every data-dependent selection, a block table."""
    kernel = attnspec.compile(EXAMPLES / f"{stem}.attn", "triton")
    assert kernel.SCHEDULE == ("bands" if stem in BANDS else "table")


BAND_CASES = [
    # the sink band [0, sinks) spans several key tiles and overlaps the window band's tiles
    ("b05_streaming_sink", "streaming_sink", {"window": 100, "sinks": 70}, {}, Sizes(B=1, H=2, HKV=1, SQ=300, SKV=300, D=16, DV=8)),
    # bottom-right alignment with SQ < SKV: the window starts in the middle of a key tile
    ("b05_streaming_sink", "streaming_sink", {"window": 40, "sinks": 3}, {}, Sizes(B=1, H=2, HKV=2, SQ=90, SKV=333, D=16, DV=8)),
    # the prefix band [0, prefix) is empty for rows past the prefix, full for those before it
    ("m01_prefix_lm", "prefix_lm", None, {"prefix": 150}, Sizes(B=2, H=2, HKV=1, SQ=200, SKV=200, D=16, DV=8)),
    ("m01_prefix_lm", "prefix_lm", None, {"prefix": 0}, Sizes(B=1, H=2, HKV=1, SQ=130, SKV=130, D=16, DV=8)),
    ("m16_sinklora", "sinklora", None, {}, Sizes(B=1, H=4, HKV=2, SQ=257, SKV=257, D=16, DV=8)),
]


@pytest.mark.parametrize("stem, name, consts, runtime, sizes", BAND_CASES, ids=lambda x: str(x)[:40])
def test_overlapping_and_partial_bands(stem, name, consts, runtime, sizes):
    """Overlapping bands must count each key once; bands starting or ending inside a tile, or empty
    for some rows, must keep exactly the mask's pairs."""
    reference, kernel, spec = modules(stem, name, consts)
    assert kernel.SCHEDULE == "bands"
    args64 = {**sample_arguments(spec, sizes, F64, seed=3), **runtime}
    assert_agrees(*run_both(reference, kernel, spec, args64, torch.float32), f"{name} {consts} {runtime}")


# ------------------------------------------------------------------ autotuning (the logic; timings are the GPU's)


def test_launch_keeps_the_fastest_configuration_per_problem(monkeypatch):
    """On CUDA every candidate that fits is timed once per (spec, dtype, head dims, length bucket);
    configurations that fail to launch are skipped, and the fastest is reused without timing again.
    Without autotuning, the first candidate that fits runs."""
    import triton.testing

    configs = [triton_runtime.Config(m, 64, 64, 64, 4, 3, False, False) for m in (16, 128, 64, 32)]
    costs = {128: 3.0, 64: 1.0}  # milliseconds per configuration; 32 fails to launch
    launched, timed = [], []
    # 16 spills (by the report's rule, read from its compiled kernels): pruned before any timing
    monkeypatch.setattr(triton_runtime, "_fits_here", lambda run, config, device: config.block_m != 16)

    def run(config):
        launched.append(config)
        if config.block_m == 32:
            raise RuntimeError("out of resources")

    def fake_bench(fn, warmup, rep):
        timed.append(1)
        fn()
        return costs[launched[-1].block_m]

    monkeypatch.setattr(triton_runtime, "candidate_configs", lambda q, v, backward=False, *options: configs)
    monkeypatch.setattr(triton.testing, "do_bench", fake_bench)
    monkeypatch.setattr(triton_runtime, "_TUNED", {})
    q = torch.empty(1, 1, 100, 64)
    triton_runtime.launch(run, "spec", q, q, (100, 130))
    assert launched[-1].block_m == 64 and len(timed) == 3
    triton_runtime.launch(run, "spec", q, q, (120, 150))  # the same length bucket: no timing
    assert launched[-1].block_m == 64 and len(timed) == 3
    monkeypatch.setenv("ATTNSPEC_AUTOTUNE", "0")
    triton_runtime.launch(run, "spec", q, q, (1000, 1000))
    assert launched[-1].block_m == 128 and len(timed) == 3
    assert all(c.block_m != 16 for c in launched)


# ------------------------------------------------------------------ a schedule built once, reused


def test_a_schedule_is_reused_across_calls():
    reference, kernel, spec = modules("k02_moba", "moba")
    args = cast(sample_arguments(spec, Sizes(B=1, H=2, HKV=1, SQ=100, SKV=130, D=16, DV=8), F64, seed=5), torch.float32)
    selection = reference.select(**without_v(args))
    schedule = kernel.build_schedule(**without_v(args), selection=selection)
    assert not schedule.closed_form
    with torch.no_grad():
        first = kernel.attention(**args, schedule=schedule)
        built = dict(schedule._tables)
        second = kernel.attention(**args, schedule=schedule)
        fresh = kernel.attention(**args, selection=selection)
    assert schedule._tables == built and len(built) == 1  # no table was rebuilt
    assert torch.equal(first, second) and torch.equal(first, fresh)


def test_a_schedule_for_other_shapes_or_with_a_selection_is_refused():
    _, kernel, spec = modules("m02_natten2d", "natten2d")
    small = cast(sample_arguments(spec, Sizes(B=1, H=2, HKV=1, SQ=64, SKV=64, D=16, DV=8), F64), torch.float32)
    large = cast(sample_arguments(spec, Sizes(B=1, H=2, HKV=1, SQ=64, SKV=64, D=16, DV=8), F64), torch.float32)
    large = {**large, "q": large["q"][:, :, :32]}
    schedule = kernel.build_schedule(**without_v(small))
    with torch.no_grad(), pytest.raises(ValueError, match="was built for"):
        kernel.attention(**large, schedule=schedule)
    with torch.no_grad(), pytest.raises(TypeError, match="build_schedule"):
        kernel.attention(**small, schedule=object())
    _, moba, moba_spec = modules("k02_moba", "moba")
    args = cast(sample_arguments(moba_spec, Sizes(B=1, H=2, HKV=1, SQ=32, SKV=32, D=16, DV=8), F64), torch.float32)
    sched = moba.build_schedule(**without_v(args))
    with torch.no_grad(), pytest.raises(ValueError, match="pass a selection to build_schedule"):
        moba.attention(**args, schedule=sched, selection=moba.select(**without_v(args)))


def test_a_band_schedule_has_nothing_to_build():
    _, kernel, spec = modules("b01_causal", "causal")
    args = cast(sample_arguments(spec, Sizes(B=1, H=2, HKV=1, SQ=40, SKV=40, D=16, DV=8), F64), torch.float32)
    schedule = kernel.build_schedule(**without_v(args))
    assert schedule.closed_form
    with torch.no_grad():
        assert torch.equal(kernel.attention(**args, schedule=schedule), kernel.attention(**args))


@pytest.mark.parametrize("stem, name", [("k02_moba", "moba"), ("k05_seer_threshold", "seer_threshold"), ("k10_biformer", "biformer")])
def test_the_module_selects_as_the_reference_does(stem, name):
    """Without a selection passed in, the triton module runs its own select() (eligible tiles from the
    tile classes, the mask on partial tiles only) and attends over the reference's blocks."""
    reference, kernel, spec = modules(stem, name)
    args64 = sample_arguments(spec, Sizes(B=2, H=4, HKV=2, SQ=100, SKV=130, D=16, DV=8), F64, seed=7)
    low = cast(args64, torch.float32)
    assert torch.equal(kernel.select(**without_v(low)).block_mask, reference.select(**without_v(low)).block_mask)
    with torch.no_grad():
        got = kernel.attention(**low, return_lse=True)
        expected = reference.attention(**low, return_lse=True)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ random band masks (hypothesis)

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

BAND_MASKS = (
    "kv <= q + (SKV - SQ) + {a} and q + (SKV - SQ) - kv < {w}",
    "(kv <= q and q - kv < {w}) or kv < {s}",
    "kv // {c} <= q // {c}",
    "kv <= q or (q < {p} and kv < {p})",
    "abs(q - kv) <= {w} or (kv >= {p} and kv < {p} + {s})",
    "kv >= q - {w} and kv <= q + {a} and kv != q + 1",
)


@settings(max_examples=24, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pattern=st.sampled_from(BAND_MASKS),
    a=st.integers(-40, 40), w=st.integers(1, 150), s=st.integers(0, 90), c=st.integers(1, 70),
    p=st.integers(0, 200), sq=st.integers(1, 200), skv=st.integers(1, 200),
)
def test_random_band_masks_keep_exactly_the_mask(pattern, a, w, s, c, p, sq, skv):
    """Band schedules for random windows, offsets, sinks, chunks and prefixes: the key tiles the kernel
    computes in closed form keep exactly the mask's pairs, each once (bands overlap freely here)."""
    mask = pattern.format(a=a, w=w, s=s, c=c, p=p)
    source = f"attention banded {{\n    mask {mask}\n}}\n"
    kernel, reference = attnspec.compile(source, "triton"), attnspec.compile(source, "reference")
    gen = torch.Generator().manual_seed(sq * 1000 + skv)
    q = torch.randn(1, 2, sq, 16, generator=gen, dtype=F64)
    k = torch.randn(1, 1, skv, 16, generator=gen, dtype=F64)
    v = torch.randn(1, 1, skv, 8, generator=gen, dtype=F64)
    with torch.no_grad():
        got = kernel.attention(q.float(), k.float(), v.float(), return_lse=True)
        low = reference.attention(q.float(), k.float(), v.float(), return_lse=True)
        ref64 = reference.attention(q, k, v, return_lse=True)
    assert kernel.SCHEDULE == "bands", mask
    assert_agrees(got, low, ref64, mask)


@pytest.mark.parametrize("d, dv", [(128, 128), (256, 96), (80, 200), (8, 256)])
def test_head_dims_up_to_256(d, dv):
    """Head dims are padded to powers of two >= 16 and masked: D and DV up to 256, DV != D."""
    reference, kernel, spec = modules("b05_streaming_sink", "streaming_sink")
    args64 = sample_arguments(spec, Sizes(B=1, H=2, HKV=1, SQ=70, SKV=90, D=d, DV=dv), F64, seed=d + dv)
    for dtype in DTYPES:
        assert_agrees(*run_both(reference, kernel, spec, args64, dtype), f"D={d} DV={dv} {dtype}")


def test_weights_that_ignore_the_score_leave_q_and_k_without_gradient():
    """Weights that never read the score (a constant elementwise weight): the output does not depend
    on q and k, whose gradients are None as autograd gives them on the reference, not zeros (found
    by fuzzing); v and a learnable gate still get theirs."""
    source = """
attention constant_weights {
    input gate: float32[H] learnable
    mask kv <= q + (SKV - SQ)
    normalize elementwise(0.25)
    epilogue out = out * sigmoid(gate[h])
}"""
    gen = torch.Generator().manual_seed(0)
    q, k, v, gate = torch.randn(1, 2, 9, 16, generator=gen), torch.randn(1, 2, 9, 16, generator=gen), torch.randn(1, 2, 9, 8, generator=gen), torch.randn(2, generator=gen)
    found = {}
    for target, dtype in [("triton", torch.float32), ("reference", torch.float64)]:
        leaves = [x.detach().to(dtype).requires_grad_() for x in (q, k, v, gate)]
        attnspec.compile(source, target).attention(*leaves[:3], gate=leaves[3]).square().sum().backward()
        found[target] = [x.grad for x in leaves]
    assert found["reference"][0] is None and found["reference"][1] is None
    assert found["triton"][0] is None and found["triton"][1] is None
    for got, exact in zip(found["triton"][2:], found["reference"][2:]):
        torch.testing.assert_close(got.double(), exact, rtol=1e-5, atol=1e-6)
