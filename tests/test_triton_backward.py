"""The triton target's backward (templates/triton/backward.py.jinja, codegen/triton_backward.py).

In Triton's CPU interpreter, at small sizes, each case is a fuzz trial with grad=1 (attnspec.fuzz):
out and lse, then dq, dk, dv and the gradient of every float input of <out, dO> + <lse, dlse>, each
held to the accuracy rule against the float64 reference's autograd. What is covered:
- every example spec the triton target accepts, in float32 and bfloat16, on shapes that break
  kernels (lengths off the 64-wide tiles, SQ != SKV, GQA, MQA, DV != D, B = 2);
- every normalization with fully masked rows, a sink, and each index structure of a learnable input
  (per head, per row, per column, per pair; one input read at two places);
- how input gradients are summed: per program, row and column sites in a fixed order, per pair
  atomically; the same gradients on every run;
- nn.Module parameters, torch.compile, and the refusal of a spec without a derivative.
"""

from __future__ import annotations

import pytest
import torch

import attnspec
from attnspec.api import load_program
from attnspec.fuzz.cases import Case
from attnspec.fuzz.compare import OK, Subject, run_case
from attnspec.runtime import triton as triton_runtime
from attnspec.sample import Sizes
from test_flex import EXAMPLES, fitted

pytest.importorskip("triton")
pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.filterwarnings("ignore::RuntimeWarning:triton.runtime.interpreter"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:triton.runtime.interpreter"),
]

MAIN = Sizes(B=2, H=4, HKV=2, SQ=70, SKV=100, D=16, DV=24)
EDGES = (
    Sizes(B=1, H=2, HKV=1, SQ=33, SKV=130, D=32, DV=16),
    Sizes(B=1, H=3, HKV=1, SQ=90, SKV=40, D=16, DV=8),
    Sizes(B=1, H=1, HKV=1, SQ=1, SKV=65, D=8, DV=16),
)


def subject_of(source, name: str = "<test>") -> Subject:
    """The reference and triton modules of a spec, or of the first spec of a .attn text."""
    spec = load_program(source).specs[0] if isinstance(source, str) else source
    return Subject.build(spec, ["triton"], name)


def assert_gradients_agree(subject: Subject, sizes: Sizes, dtype: str = "float32", seed: int = 3, device="cpu", **params):
    case = Case("triton", dtype, fitted(subject.spec, sizes), seed=seed, params=tuple(params.items()), grad=True)
    outcome = run_case(subject, case, device)
    assert outcome.status == OK, f"{case}: {outcome.detail}"
    return outcome


def example_specs():
    found = []
    for n, path in enumerate(sorted(EXAMPLES.glob("*.attn"))):
        for spec in load_program(path).specs:
            found.append(pytest.param(path, spec.name, EDGES[n % len(EDGES)], id=f"{path.stem}:{spec.name}"))
    return found


@pytest.mark.parametrize("path, name, edge", example_specs())
def test_example_gradients_agree_with_reference(path, name, edge):
    spec = next(s for s in load_program(path).specs if s.name == name)
    subject = subject_of(spec, path.name)
    if "triton" in subject.refused:
        pytest.skip(f"the triton target refuses this spec: {subject.refused['triton'].message}")
    assert_gradients_agree(subject, MAIN, "float32")
    assert_gradients_agree(subject, edge, "bfloat16", seed=5)


# ------------------------------------------------------------------ normalizations, masked rows, input structures

HOLES = "mask kv <= q - 2 and h != 1"  # rows 0 and 1 of every head, and all of head 1, hold no key

NORMALIZATIONS = {
    "softmax": "",
    "sink": "input sink_logit: float32[H] learnable\n normalize softmax(sink = 2.0 * sink_logit[h] + float(q % 3))",
    "sigmoid": "input gate: float32[H] learnable\n normalize elementwise(sigmoid(score + gate[h]) * 0.5)",
    "rownorm_relu2": "normalize rownorm(relu(score + 0.3) ** 2)",
    "rownorm_softplus": "input bias: float32[H] learnable\n normalize rownorm(softplus(score * bias[h]))",
    "rownorm_exp": "normalize rownorm(exp(score))",
}


@pytest.mark.parametrize("norm", sorted(NORMALIZATIONS))
def test_normalizations_with_fully_masked_rows(norm):
    subject = subject_of(f"attention holes {{\n {HOLES}\n {NORMALIZATIONS[norm]}\n}}")
    assert_gradients_agree(subject, Sizes(B=1, H=3, HKV=3, SQ=20, SKV=24, D=8, DV=8))
    assert_gradients_agree(subject, Sizes(B=1, H=3, HKV=1, SQ=66, SKV=17, D=16, DV=8), "bfloat16")


SCORE_MODS = {
    "per_head_gain": ("input gain: float32[H] learnable", "score * gain[h] - 0.1 * float(abs(q - kv))"),
    "per_row": ("input rowb: float32[B, SQ] learnable", "score + rowb[b, q]"),
    "per_column": ("input colb: float32[H, SKV] learnable", "score + colb[h, kv]"),
    "per_diagonal": ("input rel: float32[H, 2 * SQ - 1] learnable", "score + rel[h, kv - q + SQ - 1]"),
    "read_twice": ("input pos: float32[SKV] learnable", "score + pos[q] - pos[kv]"),
    "softcap_gated": ("input w: float32[H] learnable", "tanh(score * w[h] / 4.0) * 4.0"),
    "clamped_max": ("input c: float32[H] learnable", "max(min(score, c[h]), -c[h]) + abs(score) * 0.1"),
    # the optimizer folds the read away: no gradient (None) where the reference's is zeros (found by fuzz)
    "folded_away": ("input bias: float32[H] learnable", "where(b <= b, score, score + bias[h])"),
}


@pytest.mark.parametrize("mod", sorted(SCORE_MODS))
def test_learnable_inputs_of_every_index_structure(mod):
    decl, score = SCORE_MODS[mod]
    subject = subject_of(f"attention m {{\n {decl}\n mask kv <= q + 5\n score = {score}\n}}")
    assert_gradients_agree(subject, Sizes(B=2, H=4, HKV=2, SQ=70, SKV=70, D=16, DV=16))
    assert_gradients_agree(subject, Sizes(B=2, H=2, HKV=1, SQ=40, SKV=40, D=16, DV=8), "bfloat16", seed=1)


@pytest.mark.parametrize(
    "decl, score, sites",
    [
        ("input s: float32[H] learnable", "score * s[h]", (("dq", "program"),)),
        ("input r: float32[B, SQ] learnable", "score + r[b, q]", (("dq", "row"),)),
        ("input c: float32[H, SKV] learnable", "score + c[h, kv]", (("dkdv", "col"),)),
        ("input t: float32[2 * SQ] learnable", "score + t[q - kv + SQ]", ()),
        ("input p: float32[SKV] learnable", "score + p[q] - p[kv]", (("dq", "row"), ("dkdv", "col"))),
    ],
    ids=["program", "row", "col", "pair", "row_and_col"],
)
def test_input_gradients_are_summed_where_the_indices_allow(decl, score, sites):
    """Per-program, per-row and per-column sites are summed in the kernels and added in a fixed order
    (deterministic); only a site whose indices vary with q and kv adds atomically."""
    module = attnspec.compile(f"attention m {{\n {decl}\n score = {score}\n}}", "triton")
    assert module.SITE_KERNELS == sites


@pytest.mark.parametrize(
    "body, dv",
    [
        ("input r: float32[B, SQ] learnable\n score = score + r[b, q]", False),
        ("mask kv <= q", False),
        ("input a: float32[HKV] learnable\n prologue v = v * a[h]", True),
    ],
    ids=["per_row", "no_input", "v_prologue"],
)
def test_weights_stay_near_float32_where_the_backward_needs_them(body, dv):
    """The forward run for a backward multiplies its weights in two half operands, so that Delta =
    rowsum(dO * out) matches the weights the backward recomputes; where v's prologue reads a learnable
    input, dV's weights too (docs/triton.md, "Precision and the interpreter")."""
    source = attnspec.compile_source(f"attention m {{\n {body}\n}}", "triton")
    assert "_kernel.mma_split(_p, _v, _acc" in source and ("mma_split(tl.trans(_p)" in source) == dv


def test_one_half_operand_for_the_weights_misses_a_per_row_bias_gradient(monkeypatch):
    """What the two operands are for: with the forward's weights in one bf16 operand (FlashAttention's
    forward, ATTNSPEC_SPLIT_WEIGHTS=0), the backward's Delta misses the weights it recomputes, and a
    per-row bias's gradient (dlse alone: its terms cancel over the row) misses the rule by two orders
    of magnitude in the interpreter, which rounds as the GPU does; with them it passes."""
    decl, score = SCORE_MODS["per_row"]
    subject = subject_of(f"attention m {{\n {decl}\n mask kv <= q + 5\n score = {score}\n}}")
    case = Case("triton", "bfloat16", Sizes(B=2, H=2, HKV=1, SQ=40, SKV=40, D=16, DV=8), seed=1, grad=True)
    assert run_case(subject, case).status == OK
    monkeypatch.setenv("ATTNSPEC_SPLIT_WEIGHTS", "0")
    outcome = run_case(subject, case)
    verdict = next(v for v in outcome.verdicts if v.what == "drowb")
    assert outcome.status != OK and verdict.error > 30 * verdict.allowed, outcome.detail


# weights far outside float16's normal numbers (6e-5 to 65504): every pair's weight below 2^-14, or
# above 65504, or of either sign over a tiny denominator
OUT_OF_HALF_RANGE = {
    "tiny": "normalize rownorm(sigmoid(score - 12.0))",
    "huge": "normalize rownorm(exp(score) * 100000.0)",
    "signed": "normalize rownorm(tanh(score) * 0.00001, den = exp(score - 12.0))",
    "elementwise": "normalize elementwise(sigmoid(score - 11.0) * 0.001)",
}


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("form", sorted(OUT_OF_HALF_RANGE))
def test_weights_of_any_size_keep_the_half_types_precision(form, dtype):
    """Elementwise and rownorm weights, and their gradients, enter the products as half operands with
    each row scaled by a power of two into float16's range (kernel.mma_scaled): emulated as the GPU
    casts (float16's range and subnormals too), a weight of 6e-6 kept 3 bits and missed the rule by
    28 times, and one of 1e5 overflowed to infinity."""
    subject = subject_of(f"attention m {{\n mask kv <= q + 3\n {OUT_OF_HALF_RANGE[form]}\n}}")
    assert "mma_scaled(_p, _v, _acc" in attnspec.compile_source(f"attention m {{\n {OUT_OF_HALF_RANGE[form]}\n}}", "triton")
    for seed in (1, 2):
        case = Case("triton", dtype, Sizes(B=1, H=2, HKV=1, SQ=50, SKV=70, D=16, DV=8), seed=seed, grad=True)
        outcome = run_case(subject, case)
        assert outcome.status == OK, f"{case}: {outcome.detail}"


def test_gradients_are_the_same_on_every_run():
    module = attnspec.compile(f"attention m {{\n {SCORE_MODS['read_twice'][0]}\n mask kv <= q\n score = score * 2.0 + pos[q] - pos[kv]\n}}", "triton")
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 50, 16, generator=gen) for _ in range(3))
    pos = torch.randn(50, generator=gen)

    def grads():
        leaves = [t.clone().requires_grad_(True) for t in (q, k, v, pos)]
        module.attention(*leaves[:3], pos=leaves[3]).square().sum().backward()
        return [t.grad for t in leaves]

    for a, b in zip(grads(), grads()):
        assert torch.equal(a, b)


def test_runtime_params_and_selection_in_the_backward():
    subject = subject_of(
        "attention sel {\n param w: int runtime = 20\n param cap: float runtime = 3.0\n mask kv <= q and q - kv < w\n"
        " score = cap * tanh(score / cap)\n select blocks(q = 16, kv = 16) top(2) by dot(mean(q), mean(k)) always kv_block == q_block\n}"
    )
    assert_gradients_agree(subject, Sizes(B=1, H=2, HKV=1, SQ=70, SKV=70, D=16, DV=16), w=33, cap=2.5)


# ------------------------------------------------------------------ cases attnspec fuzz --grad found

FOUND = [
    # the backward's weights from exp(s - lse): lse's own rounding (large logits) spoiled dv; they come
    # from the forward's max and sum now, as the reference's do
    ("b01_causal", "target=triton,dtype=float32,B=1,H=2,HKV=1,SQ=1,SKV=63,D=16,DV=16,seed=26827,logits=huge,inputs=typical,trace=static,grad=1"),
    ("b04_alibi", "target=triton,dtype=float32,B=1,H=1,HKV=1,SQ=1,SKV=129,D=16,DV=16,seed=0,logits=normal,inputs=wild,trace=static,grad=1"),
    # the forward's weights exp2(qk * c - m * c) rounded each product of a huge logit (a 1e-4 error in
    # the sum l); exp2((qk - m) * c) rounds once
    ("k05_seer_threshold", "target=triton,dtype=float32,B=2,H=1,HKV=1,SQ=100,SKV=63,D=8,DV=8,seed=700,logits=huge,inputs=typical,trace=static,param.t=0.0,grad=1"),
    # a score in log2 units against the max converted to natural units: a single key's weight was
    # 1 + 1e-5 at |s| ~ 200; the backward recomputes the forward's log2 scores against its log2 max
    ("b06_query_temperature", "target=triton,dtype=float32,B=1,H=3,HKV=3,SQ=1,SKV=1,D=16,DV=16,seed=35,logits=large,inputs=typical,trace=static,grad=1"),
]


@pytest.mark.parametrize("stem, case", FOUND, ids=[stem for stem, _ in FOUND])
def test_found_gradient_cases_pass(stem, case):
    from attnspec.fuzz.cases import parse_case

    spec = load_program(EXAMPLES / f"{stem}.attn").specs[0]
    outcome = run_case(subject_of(spec, f"{stem}.attn"), parse_case(case))
    assert outcome.status == OK, outcome.detail


# found by the generated specs: a separate denominator's derivative at pairs past the lengths, where
# the mod `(kv / score) * score` is 0 / 0 = NaN, reached dq as 0 * NaN; those pairs now give 0
FOUND_SPEC = """
attention gen_spec {
    input proj_k: float32[HKV, D, D] learnable
    prologue k[r, f] = softmax(sum(k[g] * proj_k[h, g, f] for g) / sqrt(float(D)))
    mask kv <= q or (q < 4 and kv < 4)
    score = score + ((float(min(kv, kv)) / score) * score)
    normalize rownorm(where(D >= H, abs(SQ), tanh(float(pow2(clamp(b, -2, 20))))), den = abs(exp(score) - 1.0))
}
"""


def test_a_found_denominator_derivative_case_passes():
    from attnspec.fuzz.cases import parse_case

    spec = load_program(FOUND_SPEC).specs[0]
    case = "target=triton,dtype=float16,B=2,H=3,HKV=3,SQ=1,SKV=33,D=32,DV=128,seed=1659,logits=huge,inputs=typical,trace=static,grad=1"
    outcome = run_case(subject_of(spec, "found.attn"), parse_case(case))
    assert outcome.status == OK, outcome.detail


def test_random_specs_differentiate_like_the_reference(tmp_path):
    """CI's share of `attnspec fuzz --generate N --grad`: random specs (every normalization, learnable
    inputs of every kind, selections) through the backward kernels."""
    from attnspec.fuzz.runner import Options, fuzz_generated

    options = Options(targets=("triton",), trials=1, max_len=80, shrink_seconds=30, save_dir=str(tmp_path), seed=21, grad=True)
    report = fuzz_generated(6, options)
    assert report.status == OK, "\n".join(report.lines)


# ------------------------------------------------------------------ modules, torch.compile, refusals


def test_module_parameters_receive_gradients():
    source = EXAMPLES / "s02_rel_table.attn"
    kernel, reference = attnspec.compile(source, "triton"), attnspec.compile(source, "reference")
    gen = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 2, 40, 16, generator=gen) for _ in range(3))
    layers = [m.Module(H=2, SQ=40) for m in (kernel, reference)]
    for layer in layers:
        with torch.no_grad():
            layer.table.copy_(torch.linspace(-1, 1, layer.table.numel()).view_as(layer.table))
        layer(q, k, v).square().sum().backward()
    torch.testing.assert_close(layers[0].table.grad, layers[1].table.grad, rtol=1e-4, atol=1e-5)


def test_torch_compile_runs_forward_and_backward():
    module = attnspec.compile(EXAMPLES / "b07_softcap.attn", "triton")
    gen = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(1, 2, 40, 16, generator=gen).requires_grad_(True) for _ in range(3))
    eager = torch.autograd.grad(module.attention(q, k, v).sum(), (q, k, v))
    compiled = torch.compile(lambda q, k, v: module.attention(q, k, v).sum(), backend="eager")
    for got, want in zip(torch.autograd.grad(compiled(q, k, v), (q, k, v)), eager):
        torch.testing.assert_close(got, want)


def test_a_spec_without_a_backward_is_refused_only_when_a_gradient_is_asked_for():
    q = torch.randn(1, 1, 4, 8, requires_grad=True)
    with pytest.raises(NotImplementedError, match="no backward for this spec .because."):
        triton_runtime.check_launch("m", q, q, q, (), "because")
    with torch.no_grad():
        assert triton_runtime.check_launch("m", q, q, q, (), "because") is False
    assert triton_runtime.check_launch("m", q, q, q, (), None) is True


def test_a_second_derivative_is_refused_not_silently_wrong():
    module = attnspec.compile(EXAMPLES / "b01_causal.attn", "triton")
    q, k, v = (torch.randn(1, 1, 20, 16).requires_grad_(True) for _ in range(3))
    (dq,) = torch.autograd.grad(module.attention(q, k, v).sum(), q, create_graph=True)
    with pytest.raises(RuntimeError):
        dq.sum().backward()


@pytest.mark.parametrize("mod", ["score * 7.0", "score + 0.5 * float(kv)", "30.0 * tanh(score / 30.0)"])
def test_a_row_with_one_key_has_weight_exactly_one_in_the_backward(mod):
    """With one key per row the weight is exactly 1, so dv = dO and dq = dk = 0 (dS = P (dP - Delta)
    with Delta = dP). The backward recomputes a modified score in log2 units by the forward's own code
    against the forward's max in those units: converted to natural units the max would be off by
    |s| ulps, which at |s| ~ 200 is a relative error of 1e-5 in every gradient."""
    module = attnspec.compile(f"attention one {{ score = {mod} }}", "triton")
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 3, 1, 16, generator=gen) * 8.0 for _ in range(3))
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    out = module.attention(*leaves)
    d_out = torch.randn(out.shape, generator=gen)
    (out * d_out).sum().backward()
    assert (q @ k.transpose(-1, -2)).abs().max() > 100  # large logits
    torch.testing.assert_close(leaves[2].grad, d_out, rtol=0, atol=0)
    assert leaves[0].grad.abs().max() <= 1e-6 and leaves[1].grad.abs().max() <= 1e-6
