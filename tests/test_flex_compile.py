"""The flex target inside a caller's torch.compile(..., fullgraph=True), and the dense definition it
computes there on the CPU (docs/flex.md, "Inside torch.compile").

- FlexAttention's dense definition (runtime.flex.dense_flex_attention) is checked against eager
  flex_attention itself on every example: the same out and lse from the same mods and BlockMask.
- attention() and the Module trace with fullgraph=True on the CPU (inductor) and agree with the
  float64 reference under the accuracy rule: masks with and without input tensors, selections, sinks,
  non-softmax normalizations, GQA, half types, float64, return_lse; forward and backward.
- The GPU path (flex_attention and the BlockMask build inside the graph) is traced here with the
  aot_eager backend, the CPU standing in for the GPU: it must trace with fullgraph=True and give eager's
  results.
"""

from __future__ import annotations

import pytest
import torch

import attnspec
from attnspec.runtime import flex as flex_runtime
from attnspec.fuzz.accuracy import check
from attnspec.sample import Sizes, sample_arguments
from test_flex import F64, cast, fitted, modules, spec_cases, without_v

SIZES = Sizes(B=2, H=4, HKV=2, SQ=67, SKV=93, D=16, DV=8)  # GQA, lengths not a multiple of any block

# (example, spec, dtype): a mask without inputs, one reading input tensors, a static block rule, data-
# dependent selections, a sink, elementwise and row-normalized weights, a declared GQA group, half types
COMPILED = [
    ("b01_causal", "causal", torch.float32),
    ("b03_document", "document", torch.float32),
    ("b03_document", "document", torch.bfloat16),
    ("b05_streaming_sink", "streaming_sink", torch.float32),
    ("b08_static_blocks", "static_blocks", torch.float32),
    ("b09_gqa", "gqa2", torch.float16),
    ("k02_moba", "moba", torch.float32),
    ("k05_seer_threshold", "seer_threshold", torch.float64),
    ("n01_sigmoid", "sigmoid_attn", torch.float32),
    ("n02_relu2_rownorm", "relu2_rownorm", torch.float32),
]


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def arguments(spec, dtype, seed=0):
    args64 = sample_arguments(spec, fitted(spec, SIZES), F64, seed=seed)
    return args64, cast(args64, dtype)


def compiled_attention(flex, backend="inductor", **options):
    return torch.compile(lambda args: flex.attention(**args, **options), fullgraph=True, backend=backend)


def selection_of(reference, spec, args):
    return {} if spec.selection is None else {"selection": reference.select(**without_v(args))}


# ---------------------------------------------------------------- the dense definition


@pytest.mark.parametrize("stem, name, runs", spec_cases(dtypes=(torch.float32,), edge_shapes=(SIZES,)))
def test_dense_definition_is_eager_flex_attention(stem, name, runs):
    """dense_flex_attention and eager flex_attention agree on every example: same mods, same BlockMask."""
    _, flex, spec = modules(stem, name)
    args = cast(sample_arguments(spec, fitted(spec, SIZES), F64), torch.float32)
    module_run = flex_runtime.run
    calls = []

    def both(q, k, v, score_mod, block_mask, scale, need_lse, *rest, **options):
        eager = module_run(q, k, v, score_mod, block_mask, scale, True, False)
        dense = flex_runtime.dense_flex_attention(q, k, v, score_mod, block_mask, scale)
        calls.append((eager, dense))
        return module_run(q, k, v, score_mod, block_mask, scale, need_lse, *rest, **options)

    with torch.no_grad(), pytest.MonkeyPatch.context() as patch:
        patch.setattr(flex_runtime, "run", both)
        flex.attention(**args)
    (eager_out, eager_lse), (dense_out, dense_lse) = calls[0]
    torch.testing.assert_close(dense_out, eager_out.to(dense_out.dtype), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(dense_lse, eager_lse, rtol=1e-5, atol=1e-5)


def test_dense_definition_empty_and_undefined_rows():
    """A row without a kept pair gives 0 and -inf; a NaN or +inf score on a kept pair makes its row's lse
    NaN or +inf, which the module turns into an undefined row (language.md section 8)."""
    q, k, v = (torch.randn(1, 1, 4, 8, dtype=F64) for _ in range(3))
    mask = flex_runtime.PairMask(lambda b, h, i, j: (j <= i) & (i != 1), None, (16, 16))
    for poison in (torch.nan, torch.inf):
        score_mod = lambda s, b, h, i, j, p=poison: torch.where((i == 2) & (j == 0), s + p, s)  # noqa: E731
        out, lse = flex_runtime.dense_flex_attention(q, k, v, score_mod, mask, 0.5)
        assert (out[0, 0, 1] == 0).all() and lse[0, 0, 1] == -torch.inf
        assert torch.isnan(lse[0, 0, 2]) or lse[0, 0, 2] == torch.inf
        assert torch.isfinite(lse[0, 0, [0, 3]]).all() and torch.isfinite(out[0, 0, [0, 3]]).all()


# ---------------------------------------------------------------- fullgraph on the CPU (inductor)


@pytest.mark.parametrize("stem, name, dtype", COMPILED, ids=lambda x: str(x).replace("torch.", ""))
def test_attention_traces_with_fullgraph(stem, name, dtype):
    reference, flex, spec = modules(stem, name)
    args64, low = arguments(spec, dtype)
    shared = selection_of(reference, spec, low)
    with torch.no_grad():
        out = compiled_attention(flex)({**low, **shared})
        verdict = check(out, reference.attention(**low, **shared), reference.attention(**args64, **shared), "out")
    assert out.dtype == dtype and verdict.ok, f"{name} {dtype} under torch.compile: {verdict}"


def test_a_score_mod_that_folds_to_a_number_traces_in_a_two_step_mod():
    """The score mod is the constant 0.0 and the weight a function of it (rownorm's log identity): the
    mod's `score` must stay a tensor for the second step (found by attnspec fuzz)."""
    source = "attention z {\n score = 0.0\n mask abs(q - kv) <= 4\n normalize rownorm(relu(score + 0.5) ** 2)\n}"
    flex, reference = attnspec.compile(source, "flex"), attnspec.compile(source, "reference")
    q, k, v = (torch.randn(1, 2, 9, 8) for _ in range(3))
    with torch.no_grad():
        out = compiled_attention(flex)({"q": q, "k": k, "v": v})
        expected = reference.attention(q.double(), k.double(), v.double())
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-6)


def test_return_lse_traces_and_agrees():
    reference, flex, spec = modules("b03_document", "document")
    args64, low = arguments(spec, torch.float32)
    with torch.no_grad():
        out, lse = compiled_attention(flex, return_lse=True)(low)
        _, lse_low = reference.attention(**low, return_lse=True)
        _, lse64 = reference.attention(**args64, return_lse=True)
    assert check(lse, lse_low, lse64, "lse").ok


def test_module_with_a_learnable_input_traces_forward_and_backward():
    """The Module owning a learnable sink logit, compiled with fullgraph: its output and every gradient
    (q, k, v, the parameter) are the reference's."""
    reference, flex, spec = modules("b05_streaming_sink", "streaming_sink")
    args = sample_arguments(spec, fitted(spec, SIZES), F64)
    grads = []
    for module in (reference.Module(H=SIZES.H, dtype=F64), flex.Module(H=SIZES.H, dtype=F64)):
        with torch.no_grad():
            module.sink_logit.copy_(args["sink_logit"])
        qkv = [args[n].detach().clone().requires_grad_(True) for n in ("q", "k", "v")]
        step = torch.compile(module, fullgraph=True) if module.__class__.__module__ == flex.__name__ else module
        step(*qkv).square().sum().backward()
        grads.append([t.grad for t in qkv] + [module.sink_logit.grad])
    for got, want in zip(grads[1], grads[0]):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("stem, name", [("b03_document", "document"), ("k02_moba", "moba")])
def test_backward_through_a_compiled_caller(stem, name):
    """A mask reading input tensors and a data-dependent selection: gradients of q, k, v through the
    compiled graph agree with the reference's autograd in float32."""
    reference, flex, spec = modules(stem, name)
    args64, low = arguments(spec, torch.float32)
    shared = selection_of(reference, spec, low)
    cotangent = torch.randn(low["q"].shape[:-1] + low["v"].shape[-1:], dtype=torch.float32)
    grads = []
    for run in (compiled_attention(flex), lambda a: reference.attention(**a)):
        leaves = {k: v.detach().clone().requires_grad_(k in ("q", "k", "v")) for k, v in low.items()}
        (run({**leaves, **shared}) * cotangent).sum().backward()
        grads.append([leaves[n].grad for n in ("q", "k", "v")])
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_a_prebuilt_block_mask_is_accepted_in_the_graph():
    reference, flex, spec = modules("b03_document", "document")
    _, low = arguments(spec, torch.float32)
    block_mask = flex.build_block_mask(**without_v(low))  # outside the graph: a real BlockMask
    with torch.no_grad():
        out = compiled_attention(flex, block_mask=block_mask)(low)
        torch.testing.assert_close(out, reference.attention(**low), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- the GPU path, traced on the CPU


@pytest.mark.parametrize(
    "stem, name", [("b01_causal", "causal"), ("b03_document", "document"), ("k02_moba", "moba"), ("b05_streaming_sink", "streaming_sink")]
)
def test_gpu_path_traces_flex_attention_and_the_block_mask(stem, name, monkeypatch):
    """With the dense stand-in off, the graph holds flex_attention and the BlockMask build (the tile
    analysis, create_block_mask for a mask reading inputs, a selection's eligible tiles), as on a GPU."""
    monkeypatch.setattr(flex_runtime, "dense_in_graph", lambda t: False)
    traced = []
    real = flex_runtime._fa.flex_attention

    def spy(*args, **kwargs):
        traced.append(torch.compiler.is_compiling())
        return real(*args, **kwargs)

    monkeypatch.setattr(flex_runtime._fa, "flex_attention", spy)
    _, flex, spec = modules(stem, name)
    _, low = arguments(spec, torch.float32)
    with torch.no_grad():
        out, lse = compiled_attention(flex, backend="aot_eager", return_lse=True)(low)
        want, want_lse = flex.attention(**low, return_lse=True, compiled=False)
    assert traced[0] is True
    torch.testing.assert_close(out, want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(lse, want_lse, rtol=1e-6, atol=1e-6)
