"""Gradients through the flex target's own code, on the CPU.

FlexAttention has no CPU backward; on a GPU its backward differentiates the score_mod it is given
(tests/test_flex_gpu.py). What attnspec contributes to those gradients is checkable here: the
score_mod and mask_mod, the log-weight a non-softmax normalization becomes, the sink and
elementwise epilogues, one capture per read of a float input. The tests below replace
flex_attention by its dense definition (`dense_flex_attention`: every pair of the BlockMask's blocks
that its mask_mod keeps, the score_mod on every pair, softmax, lse; an empty row gives 0 and -inf),
which autograd differentiates as FlexAttention's backward does, and hold the flex module's
gradients to the accuracy rule against the reference's (attnspec.fuzz with grad=1).
"""

from __future__ import annotations

import math

import pytest
import torch

import attnspec
from attnspec.api import load_program
from attnspec.fuzz.cases import Case
from attnspec.fuzz.compare import OK, Subject, run_case
from attnspec.runtime import flex as flex_runtime
from attnspec.runtime.sample import Sizes
from test_flex import EXAMPLES, fitted

SIZES = Sizes(B=2, H=4, HKV=2, SQ=40, SKV=56, D=16, DV=8)


def dense_flex_attention(q, k, v, score_mod, block_mask, scale, need_lse, compiled, needs_grad=False, key="", epilogue=False, name=""):
    """flex_attention's definition, densely: (out, lse)."""
    batch, heads, sq, _ = q.shape
    group = heads // k.shape[1]
    kx, vx = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    b, h, i, j = (torch.arange(n).view([-1 if a == axis else 1 for a in range(4)]) for axis, n in enumerate((batch, heads, sq, k.shape[2])))
    scores = score_mod(torch.matmul(q, kx.transpose(-1, -2)) * scale, b, h, i, j)
    bq, bk = block_mask.BLOCK_SIZE
    blocks = block_mask.to_dense().bool().repeat_interleave(bq, 2).repeat_interleave(bk, 3)[:, :, :sq, : k.shape[2]]
    keep = blocks & block_mask.mask_mod(b, h, i, j)
    logits = torch.where(keep, scores, -math.inf)
    lse = torch.logsumexp(logits, -1)
    weights = torch.exp(logits - torch.where(torch.isfinite(lse), lse, 0.0).unsqueeze(-1))
    return torch.matmul(weights, vx), (lse if need_lse else None)


@pytest.fixture
def dense_flex(monkeypatch):
    monkeypatch.setattr(flex_runtime, "run", dense_flex_attention)


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


@pytest.mark.usefixtures("dense_flex")
@pytest.mark.parametrize("path, name", example_specs())
def test_example_gradients_through_the_flex_module(path, name):
    spec = next(s for s in load_program(path).specs if s.name == name)
    subject = Subject.build(spec, ["flex"], path.name)
    if "flex" in subject.refused:
        pytest.skip(f"the flex target refuses this spec: {subject.refused['flex'].message}")
    assert_flex_gradients_agree(subject)


@pytest.mark.usefixtures("dense_flex")
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
    assert "_load(pos, q_idx)" in text and "_load(_pos_read1, kv_idx)" in text
