"""The flex target (codegen/flex.py, templates/flex, runtime/flex.py) against the float64 reference.

What is checked, and why:
- every spec of every example agrees with the float64 reference under the accuracy rule (design.md
  section 6: err(flex vs ref64) <= 2 * err(reference in the dtype vs ref64) + atol, NaN always fails)
  in eager flex_attention, for float64 / float32 / bfloat16, on the shapes that break kernels:
  SQ != SKV both ways, lengths that are not multiples of the 128 (or selection) block, a single query
  or key, GQA and MQA, B = 2, DV != D. Data-dependent selections run once, on the reference, and the
  same BlockSelection goes to both targets (design.md section 2);
- fully masked rows give out 0 and lse -inf (the sink logit with a sink), never NaN;
- a representative subset under torch.compile (the path users take by default);
- rownorm weights that are not provably >= 0 are refused by the flex target at the normalize line
  (with a hint naming the targets that accept them), while the reference still compiles them;
  elementwise weights of either sign take one flex_attention call per sign;
- the normalization identities (sink, rownorm, elementwise) against hand-written dense formulas, so
  an identity that the reference shared by mistake would still show;
- the generated module: deterministic, valid Python, and its score_mod / mask_mod factories usable
  directly with flex_attention and create_block_mask, as docs/flex.md shows;
- the argument contract of attention(): a prebuilt block_mask, a selection where none is expected,
  return_lse with an elementwise normalization.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

import attnspec
from attnspec.api import build_module, compile_source, load_program, lower
from attnspec.codegen import passes_for
from attnspec.diagnostics import AttnError
from attnspec.runtime import flex as flex_runtime
from attnspec.fuzz.cases import low_precision
from attnspec.fuzz.accuracy import check
from attnspec.sample import Sizes, sample_arguments

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
F64 = torch.float64
DTYPES = (torch.float64, torch.float32, torch.bfloat16)

# Shapes that break kernels (design.md section 6); none of the lengths is a multiple of 16 or 128.
# Eager flex_attention traces its score_mod / mask_mod (torch.compile with the eager backend) once per
# spec, dtype and shape, about 0.3 s each: every spec runs MAIN_SHAPE in every dtype, plus one edge
# shape in one dtype, rotating so that each (edge shape, dtype) pair meets about three specs.
MAIN_SHAPE = Sizes(B=2, H=4, HKV=2, SQ=100, SKV=130, D=32, DV=24)  # GQA 2, B = 2, DV != D
EDGE_SHAPES = (
    Sizes(B=1, H=1, HKV=1, SQ=1, SKV=37, D=16, DV=16),  # one query, SQ < SKV
    Sizes(B=1, H=4, HKV=1, SQ=257, SKV=100, D=16, DV=8),  # MQA, SQ > SKV
    Sizes(B=2, H=2, HKV=2, SQ=130, SKV=257, D=16, DV=32),  # SQ < SKV across several 128-blocks
    Sizes(B=1, H=2, HKV=1, SQ=37, SKV=1, D=8, DV=8),  # one key
)


def spec_cases(dtypes=DTYPES, edge_shapes=EDGE_SHAPES, main_shape=MAIN_SHAPE) -> list:
    """(file stem, spec name, runs) for every spec of every example (a file may hold several); runs
    lists the (sizes, dtype) pairs of that spec: the main shape in every dtype, one rotating edge case."""
    names = [(path.stem, spec.name) for path in sorted(EXAMPLES.glob("*.attn")) for spec in load_program(path).specs]
    cases = []
    for n, (stem, name) in enumerate(names):
        runs = [(main_shape, dtype) for dtype in dtypes]
        runs.append((edge_shapes[n % len(edge_shapes)], dtypes[n % len(dtypes)]))
        cases.append(pytest.param(stem, name, runs, id=f"{stem}:{name}"))
    return cases


# ------------------------------------------------------------------ helpers


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def find_spec(stem: str, name: str):
    return next(s for s in load_program(EXAMPLES / f"{stem}.attn").specs if s.name == name)


def modules(stem: str, name: str, consts: dict | None = None):
    """(reference module, flex module, the spec lowered for the reference) of one example spec,
    built from each target's own pass pipeline as `attnspec demo` does."""
    spec = find_spec(stem, name)
    source = f"{stem}.attn"
    ref_spec = lower(spec, consts, passes=passes_for("reference"))
    reference = build_module(ref_spec, "reference", source)
    flex = build_module(lower(spec, consts, passes=passes_for("flex")), "flex", source)
    return reference, flex, ref_spec


def fits(spec, sizes: Sizes) -> bool:
    """Whether a spec accepts these sizes (a declared GQA group fixes H / HKV)."""
    if spec.gqa_group is None:
        return True
    return sizes.H == sizes.HKV * int(spec.gqa_group.literal)


def fitted(spec, sizes: Sizes) -> Sizes:
    """These sizes with H set by the spec's declared GQA group, if it declares one."""
    if spec.gqa_group is None:
        return sizes
    return replace(sizes, H=sizes.HKV * int(spec.gqa_group.literal))


# q, k, v (and float64 values) in a dtype; declared float32 inputs stay float32, as a user passes them
cast = low_precision


def without_v(args: dict) -> dict:
    return {name: value for name, value in args.items() if name != "v"}


def is_elementwise(spec) -> bool:
    return spec.normalize.kind == "elementwise"


def run_both(reference, flex, spec, args64: dict, dtype, **flex_options):
    """(flex, reference in dtype, reference in float64) outputs, each (out, lse or None), sharing
    one selection computed on the dtype's arguments (design.md section 2: selection runs once)."""
    low = cast(args64, dtype)
    shared = {}
    if spec.selection is not None:
        shared["selection"] = reference.select(**without_v(low))
    lse = {} if is_elementwise(spec) else {"return_lse": True}

    def pair(result):
        return result if lse else (result, None)

    with torch.no_grad():
        got = pair(flex.attention(**low, **shared, **lse, **flex_options))
        low_ref = pair(reference.attention(**low, **shared, **lse))
        ref64 = pair(reference.attention(**args64, **shared, **lse))
    return got, low_ref, ref64


def assert_agrees(got, low_ref, ref64, what: str) -> None:
    """The accuracy rule on out and (where there is one) lse; no NaN anywhere."""
    for label, index in (("out", 0), ("lse", 1)):
        if ref64[index] is None:
            assert got[index] is None
            continue
        assert not torch.isnan(got[index]).any(), f"{what}: NaN in {label}"
        assert got[index].shape == ref64[index].shape, f"{what}: {label} shape"
        verdict = check(got[index], low_ref[index], ref64[index], label)
        assert verdict.ok, f"{what}: {verdict}"


# ------------------------------------------------------------------ every example, eager


@pytest.mark.parametrize("stem, name, runs", spec_cases())
def test_example_agrees_with_reference_eager(stem, name, runs):
    reference, flex, spec = modules(stem, name)
    for seed, (sizes, dtype) in enumerate(runs):
        if not fits(spec, sizes):  # b09 declares its GQA group
            sizes = replace(sizes, H=sizes.HKV * int(spec.gqa_group.literal))
        args64 = sample_arguments(spec, sizes, F64, seed=seed)
        got, low_ref, ref64 = run_both(reference, flex, spec, args64, dtype, compiled=False)
        assert got[0].dtype == dtype and got[0].shape == (sizes.B, sizes.H, sizes.SQ, sizes.DV)
        assert_agrees(got, low_ref, ref64, f"{name} {dtype} {sizes}")


def test_the_shape_table_covers_what_breaks_kernels():
    """GQA 2, MQA, plain heads, B = 2, DV != D, SQ on both sides of SKV, a single query and key, and
    every (edge shape, dtype) pair met by at least two specs."""
    shapes = (MAIN_SHAPE, *EDGE_SHAPES)
    assert {1, 2, 4} <= {s.H // s.HKV for s in shapes}
    assert any(s.B == 2 for s in shapes) and any(s.D != s.DV for s in shapes)
    assert any(s.SQ > s.SKV for s in shapes) and any(s.SQ < s.SKV for s in shapes)
    assert {1} <= {s.SQ for s in shapes} & {s.SKV for s in shapes}
    assert all(n % 16 for s in shapes for n in (s.SQ, s.SKV))
    edge_runs = [case.values[2][-1] for case in spec_cases()]
    assert all(edge_runs.count((shape, dtype)) >= 2 for shape in EDGE_SHAPES for dtype in DTYPES)


# ------------------------------------------------------------------ fully masked rows

ROWNORM_BOTTOM_RIGHT = """attention rownorm_bottom_right {
    mask kv <= q + (SKV - SQ)
    normalize rownorm(relu(score) ** 2)
}
"""


def masked_row_outputs(flex, args: dict, elementwise=False):
    with torch.no_grad():
        if elementwise:
            return flex.attention(**args, compiled=False), None
        return flex.attention(**args, compiled=False, return_lse=True)


def check_masked_rows(out, lse, rows: slice, empty_lse) -> None:
    assert not torch.isnan(out).any() and (lse is None or not torch.isnan(lse).any())
    assert torch.equal(out[:, :, rows], torch.zeros_like(out[:, :, rows]))
    if lse is not None:
        assert torch.equal(lse[:, :, rows], empty_lse.expand_as(lse[:, :, rows]))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_causal_rows_before_the_first_key_are_empty(dtype):
    """b01 aligns the last query with the last key: with SQ > SKV the first SQ - SKV rows keep nothing."""
    _, flex, spec = modules("b01_causal", "causal")
    args = cast(sample_arguments(spec, Sizes(B=2, H=4, HKV=2, SQ=150, SKV=20, D=16, DV=8), F64), dtype)
    out, lse = masked_row_outputs(flex, args)
    check_masked_rows(out, lse, slice(0, 130), torch.tensor(-math.inf))
    assert torch.isfinite(lse[:, :, 130:]).all() and (out[:, :, 130:] != 0).any()


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_sigmoid_rows_before_the_first_key_are_empty(dtype):
    _, flex, spec = modules("n01_sigmoid", "sigmoid_attn")
    args = cast(sample_arguments(spec, Sizes(B=1, H=2, HKV=1, SQ=140, SKV=9, D=16, DV=8), F64), dtype)
    out, _ = masked_row_outputs(flex, args, elementwise=True)
    check_masked_rows(out, None, slice(0, 131), None)
    assert (out[:, :, 131:] != 0).any()


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_sink_rows_without_keys_give_the_sink_logit(dtype):
    """b05 with no sink tokens (sinks = 0): rows q >= SKV + window - 1 keep no key; the sink logit alone
    is the denominator, so out = 0 and lse = sink_logit[h]."""
    reference, flex, spec = modules("b05_streaming_sink", "streaming_sink", {"sinks": 0})
    sizes = Sizes(B=2, H=4, HKV=2, SQ=160, SKV=20, D=16, DV=8)
    args = cast(sample_arguments(spec, sizes, F64), dtype)
    out, lse = masked_row_outputs(flex, args)
    first_empty = sizes.SKV + 16 - 1
    sink = args["sink_logit"].float().view(1, -1, 1)
    check_masked_rows(out, lse, slice(first_empty, None), sink)
    assert torch.isfinite(lse).all()
    got, low_ref, ref64 = run_both(reference, flex, spec, sample_arguments(spec, sizes, F64), dtype, compiled=False)
    assert_agrees(got, low_ref, ref64, "streaming_sink, sinks = 0")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_rownorm_rows_without_keys_or_weight_are_empty(dtype):
    """rownorm(relu(s)^2) with a bottom-right causal mask: the first SQ - SKV rows keep nothing, and a row
    whose every kept score is negative has sum f = 0; both give out 0 and lse = log 0 = -inf."""
    flex = attnspec.compile(ROWNORM_BOTTOM_RIGHT, "flex")
    reference = attnspec.compile(ROWNORM_BOTTOM_RIGHT, "reference")
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, 2, 50, 16, generator=gen, dtype=F64)
    k = torch.randn(1, 2, 30, 16, generator=gen, dtype=F64)
    v = torch.randn(1, 2, 30, 8, generator=gen, dtype=F64)
    q[:, :, 20] = -k[:, :, 0]  # row 20 keeps key 0 only, and its score is -|k0|^2 / 4 < 0
    low = cast({"q": q, "k": k, "v": v}, dtype)
    out, lse = masked_row_outputs(flex, low)
    check_masked_rows(out, lse, slice(0, 21), torch.tensor(-math.inf))
    with torch.no_grad():
        got = flex.attention(**low, compiled=False, return_lse=True)
        assert_agrees(got, reference.attention(**low, return_lse=True), reference.attention(q, k, v, return_lse=True), "rownorm")


# ------------------------------------------------------------------ compiled (torch.compile on the CPU)

COMPILED_CASES = [
    ("b01_causal", "causal", torch.float32),
    ("b01_causal", "causal", torch.bfloat16),
    ("b04_alibi", "alibi", torch.float32),
    ("b03_document", "document", torch.bfloat16),
    ("m02_natten2d", "natten2d", torch.float32),
    ("k02_moba", "moba", torch.float32),
    ("k02_moba", "moba", torch.bfloat16),
    ("m12_power_attention", "power_attention", torch.float32),
    ("n01_sigmoid", "sigmoid_attn", torch.float32),
    ("n01_sigmoid", "sigmoid_attn", torch.bfloat16),
]


@pytest.fixture(scope="module")
def _room_to_recompile():
    """Every torch.compile(flex_attention) shares one code object, and dynamo stops compiling it after
    `recompile_limit` (8) variants in a process, running it eagerly from then on: raised here so these
    tests exercise the compiled kernels whatever ran before them."""
    with torch._dynamo.config.patch(recompile_limit=64):
        yield


@pytest.mark.parametrize("stem, name, dtype", COMPILED_CASES, ids=lambda x: str(x).replace("torch.", ""))
def test_compiled_agrees_with_reference(stem, name, dtype, _room_to_recompile):
    reference, flex, spec = modules(stem, name)
    sizes = Sizes(B=2, H=4, HKV=2, SQ=100, SKV=130, D=16, DV=24)
    args64 = sample_arguments(spec, sizes, F64, seed=1)
    low = cast(args64, dtype)
    shared = {} if spec.selection is None else {"selection": reference.select(**without_v(low))}
    with torch.no_grad():
        out = flex.attention(**low, **shared)  # compiled=True is the default
        verdict = check(out, reference.attention(**low, **shared), reference.attention(**args64, **shared), "out")
    assert not torch.isnan(out).any() and verdict.ok, f"{name} {dtype} compiled: {verdict}"
    # on the CPU only softmax without the lse runs the compiled kernel (sink / elementwise need the lse)
    compiled_key = f"flex_attention:{flex.__name__}"
    assert (compiled_key in flex_runtime._COMPILED) == (spec.normalize.kind == "softmax" and spec.normalize.sink is None)


def test_compiled_with_lse_falls_back_to_eager_and_agrees():
    """return_lse=True with compiled=True: on the CPU the eager kernel runs, with the same results."""
    reference, flex, spec = modules("b03_document", "document")
    args64 = sample_arguments(spec, Sizes(B=2, H=4, HKV=2, SQ=100, SKV=130, D=16, DV=8), F64)
    got, low_ref, ref64 = run_both(reference, flex, spec, args64, torch.float32, compiled=True)
    assert_agrees(got, low_ref, ref64, "document, compiled=True with the lse")


# ------------------------------------------------------------------ what the flex target refuses

REFUSED = {
    "the raw score can be negative": "normalize rownorm(score)",
    "an odd power can be negative": "normalize rownorm(score ** 3)",
    "a negated relu is <= 0": "normalize rownorm(-relu(score))",
    "tanh can be negative": "normalize rownorm(tanh(score))",
}

# elementwise weights of either sign: two flex_attention calls, one per sign (no denominator to keep apart)
SIGNED = {
    "tanh can be negative": "normalize elementwise(tanh(score))",
    "a scaled score can be negative": "normalize elementwise(score * 2.0)",
    "exp minus one can be negative": "normalize elementwise(exp(score) - 1.0)",
}


def refused_source(statement: str) -> str:
    return f"attention refused {{\n    mask kv <= q\n    {statement}\n}}\n"


@pytest.mark.parametrize("why", sorted(REFUSED))
def test_flex_refuses_weights_not_provably_nonnegative(why):
    statement = REFUSED[why]
    source = refused_source(statement)
    with pytest.raises(AttnError) as info:
        attnspec.compile(source, "flex")
    text = info.value.render()
    kind = statement.split()[1].split("(")[0]
    assert text.startswith("<string>:3:5: error: "), text
    assert f"cannot lower {kind}(f)" in text and "not provably >= 0" in text
    assert f"    {statement}\n" in text  # the source line, then carets under the statement
    assert "^" * len(statement) in text
    assert "--target triton" in text and "reference" in text
    assert attnspec.compile(source, "reference").SPEC_NAME == "refused"


@pytest.mark.parametrize("why", sorted(SIGNED))
def test_flex_lowers_elementwise_weights_of_either_sign(why):
    """sum f v = out_+ exp(lse_+) - out_- exp(lse_-), from the softmaxes of log relu(f) and log relu(-f)."""
    source = refused_source(SIGNED[why]).replace("refused", "signed")
    flex, reference = attnspec.compile(source, "flex"), attnspec.compile(source, "reference")
    assert "relu(-f(s))" in flex.NORMALIZATION_IDENTITY
    spec = lower(load_program(source).specs[0])
    args64 = sample_arguments(spec, Sizes(B=1, H=2, HKV=1, SQ=37, SKV=50, D=8, DV=8), F64)
    for dtype in (F64, torch.bfloat16):
        got, low_ref, ref64 = run_both(reference, flex, spec, args64, dtype, compiled=False)
        assert_agrees(got, low_ref, ref64, f"{why} {dtype}")


ACCEPTED = {
    "exp": "normalize elementwise(exp(score - 2.0))",
    "softplus": "normalize rownorm(softplus(score))",
    "relu cubed": "normalize rownorm(relu(score) ** 3)",
    "quotient": "normalize elementwise(relu(score) ** 2 / SKV)",
    "product": "normalize rownorm(sigmoid(score) * relu(score))",
    "constant": "normalize elementwise(0.5)",
}


@pytest.mark.parametrize("why", sorted(ACCEPTED))
def test_flex_lowers_provably_nonnegative_weights(why):
    """Each branch of log_weight (exp, sigmoid, products, quotients, powers, constants, a plain log)."""
    source = refused_source(ACCEPTED[why]).replace("refused", "accepted")
    flex, reference = attnspec.compile(source, "flex"), attnspec.compile(source, "reference")
    spec = lower(load_program(source).specs[0])
    args64 = sample_arguments(spec, Sizes(B=1, H=2, HKV=1, SQ=37, SKV=50, D=8, DV=8), F64)
    for dtype in (F64, torch.bfloat16):
        got, low_ref, ref64 = run_both(reference, flex, spec, args64, dtype, compiled=False)
        assert_agrees(got, low_ref, ref64, f"{why} {dtype}")


def test_even_power_is_accepted_as_the_hint_says():
    """The refusal hint names even powers: score ** 2 >= 0 whatever the sign of the score."""
    source = refused_source("normalize elementwise(score ** 2)")
    flex, reference = attnspec.compile(source, "flex"), attnspec.compile(source, "reference")
    spec = lower(load_program(source).specs[0])
    args64 = sample_arguments(spec, Sizes(B=1, H=2, HKV=1, SQ=37, SKV=50, D=8, DV=8), F64)
    for dtype in (F64, torch.bfloat16):
        assert_agrees(*run_both(reference, flex, spec, args64, dtype, compiled=False), f"score ** 2 {dtype}")


# ------------------------------------------------------------------ identities against hand-written formulas


def dense_scores(q, k):
    group = q.shape[1] // k.shape[1]
    return q @ k.repeat_interleave(group, 1).transpose(-1, -2) / math.sqrt(q.shape[-1])


def bottom_right_causal(sq, skv):
    return torch.arange(skv)[None, :] <= torch.arange(sq)[:, None] + (skv - sq)


def hand_args(sq=50, skv=70, seed=3):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(2, 4, sq, 16, generator=gen, dtype=F64) * 2
    k = torch.randn(2, 2, skv, 16, generator=gen, dtype=F64)
    v = torch.randn(2, 2, skv, 8, generator=gen, dtype=F64)
    return q, k, v


def test_relu2_rownorm_matches_hand_formula():
    """w = relu(s)^2 / sum_kept relu(s)^2 (0 where the sum is 0), lse = log sum_kept relu(s)^2."""
    flex = attnspec.compile(EXAMPLES / "n02_relu2_rownorm.attn", "flex")
    q, k, v = hand_args(sq=60, skv=60)
    s = dense_scores(q, k)
    keep = torch.ones(60, 60).tril().bool()
    f = torch.where(keep, torch.relu(s) ** 2, 0.0)
    total = f.sum(-1, keepdim=True)
    expected = (torch.where(total > 0, f / total, 0.0)) @ v.repeat_interleave(2, 1)
    with torch.no_grad():
        out, lse = flex.attention(q, k, v, compiled=False, return_lse=True)
    torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(lse, total.squeeze(-1).log().float())


def test_sigmoid_matches_hand_formula():
    """w = sigmoid(s - log SKV) on kept pairs, no row normalization."""
    flex = attnspec.compile(EXAMPLES / "n01_sigmoid.attn", "flex")
    q, k, v = hand_args()
    s = dense_scores(q, k)
    w = torch.where(bottom_right_causal(50, 70), torch.sigmoid(s - math.log(70)), 0.0)
    with torch.no_grad():
        out = flex.attention(q, k, v, compiled=False)
    torch.testing.assert_close(out, w @ v.repeat_interleave(2, 1), rtol=1e-9, atol=1e-10)


def test_sink_matches_hand_formula():
    """w = exp(s) / (sum_kept exp(s) + exp(c_h)), lse = log(sum_kept exp(s) + exp(c_h))."""
    flex = attnspec.compile(EXAMPLES / "b05_streaming_sink.attn", "flex")
    q, k, v = hand_args(sq=70, skv=70)
    sink = torch.tensor([-1.0, 0.0, 2.0, 5.0])
    s = dense_scores(q, k)
    i, j = torch.arange(70)[:, None], torch.arange(70)[None, :]
    keep = (j <= i) & ((i - j < 16) | (j < 4))
    e = torch.where(keep, s.exp(), 0.0)
    denominator = e.sum(-1, keepdim=True) + sink.double().exp().view(1, 4, 1, 1)
    with torch.no_grad():
        out, lse = flex.attention(q, k, v, sink_logit=sink, compiled=False, return_lse=True)
    torch.testing.assert_close(out, (e / denominator) @ v.repeat_interleave(2, 1), rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(lse, denominator.squeeze(-1).log().float())


# ------------------------------------------------------------------ the generated module

MODULE_SAMPLES = ["b03_document", "b05_streaming_sink", "k02_moba", "m02_natten2d", "m12_power_attention", "n01_sigmoid"]


@pytest.mark.parametrize("stem", MODULE_SAMPLES)
def test_generated_module_is_deterministic_python(stem):
    path = EXAMPLES / f"{stem}.attn"
    text = compile_source(path, "flex")
    assert compile_source(path, "flex") == text
    compile(text, f"{stem}_flex.py", "exec")
    header = text.splitlines()[0]
    assert header.startswith(f"# Generated by attnspec {attnspec.__version__} from {stem}.attn") and "flex target" in header


def test_documented_hand_written_path_reproduces_attention():
    """docs/flex.md: the document mask_mod with create_block_mask and flex_attention, by hand."""
    doc = attnspec.compile(EXAMPLES / "b03_document.attn", "flex")
    gen = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, 2, 200, 16, generator=gen) for _ in range(3))
    ids = torch.randint(0, 4, (1, 200), generator=gen).sort(-1).values
    with torch.no_grad():
        expected = doc.attention(q, k, v, doc_q=ids, doc_kv=ids, compiled=False)
        mask_mod = doc.document_mask_mod(doc_q=ids, doc_kv=ids, SQ=200, SKV=200)
        block_mask = create_block_mask(mask_mod, 1, None, 200, 200, device="cpu")
        by_hand = flex_attention(q, k, v, block_mask=block_mask)
    torch.testing.assert_close(by_hand, expected, rtol=0, atol=0)


def test_factories_with_captures_reproduce_attention():
    """natten2d: a score_mod reading an input (rpb) and a mask_mod, with GQA, used by hand."""
    mod = attnspec.compile(EXAMPLES / "m02_natten2d.attn", "flex")
    spec = lower(load_program(EXAMPLES / "m02_natten2d.attn").specs[0])
    args = sample_arguments(spec, Sizes(B=2, H=4, HKV=2, SQ=64, SKV=64, D=16, DV=8), F64)
    q, k, v, rpb = args["q"], args["k"], args["v"], args["rpb"]
    with torch.no_grad():
        expected = mod.attention(q, k, v, rpb=rpb, compiled=False)
        block_mask = create_block_mask(mod.natten2d_mask_mod(), None, None, 64, 64, device="cpu")
        score_mod = mod.natten2d_score_mod(rpb=rpb, dtype=F64)
        by_hand = flex_attention(q, k, v, score_mod=score_mod, block_mask=block_mask, enable_gqa=True)
    torch.testing.assert_close(by_hand, expected, rtol=0, atol=0)


# ------------------------------------------------------------------ attention()'s arguments


def test_prebuilt_block_mask_gives_the_same_result():
    reference, flex, spec = modules("b03_document", "document")
    args = sample_arguments(spec, Sizes(B=2, H=4, HKV=2, SQ=150, SKV=140, D=16, DV=8), F64)
    block_mask = flex.build_block_mask(**without_v(args))
    with torch.no_grad():
        expected = flex.attention(**args, compiled=False, return_lse=True)
        reused = flex.attention(**args, block_mask=block_mask, compiled=False, return_lse=True)
    torch.testing.assert_close(reused, expected, rtol=0, atol=0)


def test_prebuilt_block_mask_carries_the_selection():
    """A BlockMask built with a selection needs no selection at the call: it holds the blocks."""
    reference, flex, spec = modules("k02_moba", "moba")
    args = sample_arguments(spec, Sizes(B=2, H=4, HKV=2, SQ=100, SKV=130, D=16, DV=8), F64, seed=4)
    selection = reference.select(**without_v(args))
    block_mask = flex.build_block_mask(**without_v(args), selection=selection)
    with torch.no_grad():
        expected = reference.attention(**args, selection=selection)
        reused = flex.attention(**args, block_mask=block_mask, compiled=False)
    assert check(reused, expected, expected, "out").ok


def test_selection_for_a_spec_without_selection_is_refused():
    _, flex, spec = modules("b01_causal", "causal")
    _, moba, moba_spec = modules("k02_moba", "moba")
    args = sample_arguments(spec, Sizes(B=1, H=2, HKV=2, SQ=32, SKV=32, D=8, DV=8), F64)
    selection = moba.select(args["q"], args["k"])
    with pytest.raises(ValueError, match="has no block selection"):
        flex.attention(**args, selection=selection, compiled=False)
    with pytest.raises(ValueError, match="has no block selection"):
        flex.build_block_mask(args["q"], args["k"], selection=selection)


def test_selection_of_the_wrong_shape_is_refused():
    _, moba, spec = modules("k02_moba", "moba")
    small = sample_arguments(spec, Sizes(B=1, H=2, HKV=2, SQ=32, SKV=32, D=8, DV=8), F64)
    large = sample_arguments(spec, Sizes(B=1, H=2, HKV=2, SQ=64, SKV=64, D=8, DV=8), F64)
    with pytest.raises(ValueError, match="selection block_mask must have shape"):
        moba.attention(**large, selection=moba.select(small["q"], small["k"]), compiled=False)


def test_elementwise_has_no_lse():
    _, flex, spec = modules("n01_sigmoid", "sigmoid_attn")
    args = sample_arguments(spec, Sizes(B=1, H=2, HKV=2, SQ=16, SKV=16, D=8, DV=8), F64)
    with pytest.raises(ValueError, match="no lse"):
        flex.attention(**args, return_lse=True, compiled=False)


def test_small_blocks_ask_the_gpu_kernel_for_small_tiles():
    """A selection's 16 x 16 BlockMask: FlexAttention's GPU kernel needs tiles that divide the blocks."""
    _, moba, spec = modules("k02_moba", "moba")
    args = sample_arguments(spec, Sizes(B=1, H=2, HKV=2, SQ=64, SKV=64, D=8, DV=8), F64)
    small = moba.build_block_mask(args["q"], args["k"], selection=moba.select(args["q"], args["k"]))
    assert flex_runtime.kernel_tiles(small) == {"BLOCK_M": 16, "BLOCK_N": 16}
    _, causal, spec = modules("b01_causal", "causal")
    assert flex_runtime.kernel_tiles(causal.build_block_mask(args["q"], args["k"])) is None


@pytest.mark.parametrize("learnable_only", [False, True])
def test_gradients_on_the_cpu_come_from_the_dense_definition(learnable_only, monkeypatch):
    """FlexAttention has no CPU backward: a call that needs gradients computes its dense definition,
    never flex_attention, and its gradients are the reference's."""
    reference, flex, spec = modules("b05_streaming_sink", "streaming_sink")
    args = sample_arguments(spec, Sizes(B=1, H=2, HKV=1, SQ=20, SKV=20, D=16, DV=8), F64)
    grads = []
    for module in (reference, flex):
        leaves = {k: v.detach().clone().requires_grad_(k == "sink_logit" or not learnable_only) for k, v in args.items()}
        module.attention(**leaves).square().sum().backward()
        grads.append({k: v.grad for k, v in leaves.items() if v.grad is not None})
    assert grads[0].keys() == grads[1].keys() and "sink_logit" in grads[1]
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-9, atol=1e-11)
    monkeypatch.setattr(flex_runtime._fa, "flex_attention", None)  # not called where gradients are needed
    leaves = {k: v.detach().clone().requires_grad_(k == "q") for k, v in args.items()}
    flex.attention(**leaves).sum().backward()
