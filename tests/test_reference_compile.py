"""The reference target inside torch.compile (docs/triton.md, "torch.compile"): no graph break, and the
compiled module computes what the eager one does.

Built-ins applied to sizes or params (`log(float(SKV))`, `exp(t)` of a runtime param) give Python numbers
eagerly but 0-dim tensors under torch.compile (their .item() broke the graph), and rownorm's check of a
negative term is an asynchronous assert in the graph rather than a data-dependent branch. The examples
below are those that broke the graph before.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

import attnspec
from attnspec.api import load_program, lower
from attnspec.sample import Sizes, sample_arguments

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
BROKE = ["b06_temperature", "k05_seer_threshold", "k08_nabla", "n01_sigmoid", "n01_softpick", "n02_relu2_rownorm",
         "n02_relu_kept_length", "n14_cosine_signed"]


def _arguments(stem):
    spec = load_program(EXAMPLES / f"{stem}.attn").specs[0]
    args = sample_arguments(lower(spec), Sizes(B=1, H=2, HKV=1, SQ=40, SKV=40, D=16, DV=16), torch.float32, seed=0)
    return attnspec.compile(EXAMPLES / f"{stem}.attn", "reference"), args


@pytest.mark.parametrize("stem", BROKE)
def test_the_reference_compiles_whole_and_agrees_with_eager(stem):
    module, args = _arguments(stem)
    expected = module.attention(**args)
    torch._dynamo.reset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        explained = torch._dynamo.explain(lambda **a: module.attention(**a))(**args)
        assert explained.graph_break_count == 0, [str(b.reason)[:200] for b in explained.break_reasons]
        torch._dynamo.reset()
        compiled = torch.compile(lambda **a: module.attention(**a), fullgraph=True, backend="aot_eager")
        torch.testing.assert_close(compiled(**args), expected, rtol=1e-6, atol=1e-6)


def test_a_negative_rownorm_term_still_stops_a_compiled_reference():
    module = attnspec.compile("attention n {\n    normalize rownorm(score)\n}\n", "reference")
    q = torch.randn(1, 1, 8, 16, generator=torch.Generator().manual_seed(0))
    torch._dynamo.reset()
    compiled = torch.compile(lambda q, k, v: module.attention(q, k, v), fullgraph=True, backend="aot_eager")
    with pytest.raises(RuntimeError, match=r"rownorm\(f\) needs f >= 0"):
        compiled(q, -q, q)
