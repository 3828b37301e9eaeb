"""Gradients of the flex target on the CPU.

FlexAttention has no CPU backward; on a GPU its backward differentiates the score_mod it is given
(tests/test_flex_gpu.py). On the CPU a call that needs gradients computes FlexAttention's dense
definition (attnspec.runtime.flex.dense_flex_attention, checked against flex_attention itself in
tests/test_flex_compile.py), which autograd differentiates as FlexAttention's backward does. So what
attnspec contributes to those gradients is checked here: the score_mod and mask_mod, the log-weight a
non-softmax normalization becomes, the sink and elementwise epilogues, one capture per read of a
float input; the flex module's gradients are held to the accuracy rule against the reference's
(attnspec.fuzz with grad=1).
"""

from __future__ import annotations

import pytest

import attnspec
from attnspec.api import load_program
from attnspec.fuzz.cases import Case
from attnspec.fuzz.compare import OK, Subject, run_case
from attnspec.sample import Sizes
from test_flex import EXAMPLES, fitted

SIZES = Sizes(B=2, H=4, HKV=2, SQ=40, SKV=56, D=16, DV=8)


def assert_flex_gradients_agree(subject: Subject, sizes: Sizes = SIZES, seed: int = 2):
    case = Case("flex", "float32", fitted(subject.spec, sizes), seed=seed, grad=True)
    outcome = run_case(subject, case)
    assert outcome.status == OK, f"{case}: {outcome.detail}"


def example_specs():
    return [
        pytest.param(path, spec.name, id=f"{path.stem}:{spec.name}")
        for path in sorted(EXAMPLES.glob("*.attn"))
        for spec in load_program(path).specs
    ]


@pytest.mark.parametrize("path, name", example_specs())
def test_example_gradients_through_the_flex_module(path, name):
    spec = next(s for s in load_program(path).specs if s.name == name)
    subject = Subject.build(spec, ["flex"], path.name)
    if "flex" in subject.refused:
        pytest.skip(f"the flex target refuses this spec: {subject.refused['flex'].message}")
    assert_flex_gradients_agree(subject)


@pytest.mark.parametrize(
    "body",
    [
        "mask kv <= q - 2\n normalize rownorm(relu(score + 0.2) ** 2)",
        "mask kv <= q + 3\n normalize elementwise(relu(score) * 0.5)",
        "input pos: float32[SKV] learnable\n mask kv <= q\n score = score + pos[q] - pos[kv] * pos[kv]",
        "input sink_logit: float32[H] learnable\n mask kv <= q - 2\n normalize softmax(sink = sink_logit[h])",
    ],
    ids=["rownorm_relu2_empty_rows", "elementwise_relu", "read_twice", "sink_empty_rows"],
)
def test_weights_that_vanish_and_inputs_read_twice(body):
    """A weight that is 0 on some pairs (its log -inf there) gives finite gradients, and an input read at
    two places gets both reads' gradients."""
    assert_flex_gradients_agree(Subject.build(load_program(f"attention g {{\n {body}\n}}").specs[0], ["flex"], "<test>"))


def test_each_read_of_an_input_is_its_own_capture():
    source = "attention g {\n input pos: float32[SKV] learnable\n score = score + pos[q] - pos[kv]\n}"
    text = attnspec.compile_source(source, "flex")
    assert "_pos_read1 = pos.clone() if pos.requires_grad else pos" in text
    assert "_fn.load(pos, q_idx)" in text and "_fn.load(_pos_read1, kv_idx)" in text


def test_gradients_at_huge_logits_keep_the_accuracy_rule():
    """Weights exp(s - lse) carry lse's rounding, |lse| * eps, into every gradient: at huge logits dq and
    dk were 5x over the rule (found by attnspec fuzz --grad); exp(s - m) / l keeps them within it."""
    from attnspec.testing import replay

    case = "target=flex,dtype=float32,B=2,H=1,HKV=1,SQ=1,SKV=255,D=16,DV=16,seed=46570,logits=huge,inputs=typical,trace=static,grad=1"
    assert replay(EXAMPLES / "b01_causal.attn", case, spec="causal").status == OK


def test_gqa_key_gradients_in_half_types_are_summed_before_rounding():
    """k and v repeated over the GQA group before their cast to float32 rounded each head's gradient to
    bf16 before the sum: dk 1.3x over the rule (found by attnspec fuzz --grad)."""
    from attnspec.testing import replay

    case = "target=flex,dtype=bfloat16,B=1,H=2,HKV=1,SQ=1,SKV=1,D=32,DV=16,seed=1,logits=normal,inputs=typical,trace=static,grad=1"
    assert replay(EXAMPLES / "b09_gqa.attn", case, spec="gqa2").status == OK


def test_a_weight_that_underflows_to_zero_has_a_zero_gradient_not_nan(tmp_path):
    """rownorm(softplus(score)) on huge logits: softplus underflows to 0 on kept pairs, where the score_mod's
    log f had the gradient f' / f = 0 / 0 (found by attnspec fuzz); log_weight gives 0 there."""
    from attnspec.testing import replay

    path = tmp_path / "underflow.attn"
    path.write_text("attention u {\n    mask abs(q - kv) <= 4\n    normalize rownorm(softplus(score))\n}\n")
    report = replay(path, "target=flex,dtype=float32,B=1,H=1,HKV=1,SQ=1,SKV=135,D=16,DV=16,seed=0,logits=huge,"
                          "inputs=typical,trace=static,grad=1")
    assert report.status == "ok"


def test_a_nan_weight_leaves_its_row_undefined_not_empty(tmp_path):
    """rownorm(relu(score) ** 2) with a NaN score: log_weight kept NaN apart from 0, whose log is -inf
    (found by attnspec fuzz: the row came out empty, 0, where the reference's is undefined, NaN)."""
    from attnspec.testing import replay

    path = tmp_path / "nan.attn"
    path.write_text("attention n {\n    score = score + ((0.0 / 0.0) + 0.0)\n    normalize rownorm(relu(score) ** 2)\n}\n")
    report = replay(path, "target=flex,dtype=float32,B=1,H=1,HKV=1,SQ=1,SKV=1,D=16,DV=16,seed=0,logits=normal,"
                          "inputs=typical,trace=static,grad=1")
    assert report.status == "ok"


def test_a_mask_reading_a_per_row_table_of_q_takes_gradients(tmp_path):
    """A mask that reads a per-row table computed from q: the BlockMask's mask_mod held the table with
    its gradient, which FlexAttention's backward cannot vmap over (found by attnspec fuzz). The values a
    mask reads are computed without gradients: a mask is piecewise constant."""
    from attnspec.testing import replay

    path = tmp_path / "table_mask.attn"
    path.write_text(
        "attention t {\n"
        "    let rel[r: 5] per q[i, f] = sum(q * tanh(0.05 * float((r + 1) * (f + 1) % 7 - 3))) / sqrt(float(D))\n"
        "    mask kv <= q and rel[clamp(kv - q, -2, 2) + 2] >= 0.1\n"
        "}\n")
    for sizes in ("B=1,H=1,HKV=1,SQ=1,SKV=1", "B=2,H=2,HKV=1,SQ=37,SKV=40"):
        report = replay(path, f"target=flex,dtype=float32,{sizes},D=16,DV=16,seed=0,logits=normal,"
                              "inputs=typical,trace=static,grad=1")
        assert report.status == "ok", report


def test_a_score_mod_meeting_a_float64_number_keeps_the_weights_dtype(tmp_path):
    """`where(q <= B, 0.0, -1.0)` is a float64 number while FlexAttention traces the mod: a two-step mod
    (score, then the weight) kept the modified score in float64, and the dense definition the backward
    runs on the CPU multiplied float64 weights by float32 values (found by attnspec fuzz --generate)."""
    from attnspec.testing import replay

    path = tmp_path / "float64_mod.attn"
    path.write_text("attention m {\n    mask kv <= q\n    score = score + where(q <= B, 0.0, -1.0)\n"
                    "    normalize rownorm(score, den = 1.0)\n}\n")
    report = replay(path, "target=flex,dtype=float32,B=1,H=2,HKV=1,SQ=9,SKV=9,D=16,DV=16,seed=0,logits=normal,"
                          "inputs=typical,trace=static,grad=1")
    assert report.status == "ok", report
