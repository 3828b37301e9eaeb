"""examples/train_rel_bias.py: a tiny model whose attention layer comes from an .attn file with a
learnable relative-position table, trained for a few steps.

On the CPU the reference target trains, and the triton target (in Triton's interpreter, which
conftest.py turns on) and the flex target (through FlexAttention's dense definition, as FlexAttention
has no CPU backward) must give its losses. On a GPU the flex and triton targets must give the
reference's losses.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parent.parent / "examples" / "train_rel_bias.py"


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("train_rel_bias", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_loss_decreases_with_the_reference_target(example):
    losses = example.train("reference", steps=40)
    assert losses[-1] < 0.25 * losses[0], losses


def test_the_bias_table_is_a_parameter_that_learns(example):
    model = example.TinyModel("reference")
    assert any(p is model.attn.table for p in model.parameters())
    tokens, wanted = example.batch(torch.Generator().manual_seed(0))
    loss = torch.nn.functional.cross_entropy(model(tokens).flatten(0, 1), wanted.flatten())
    loss.backward()
    assert model.attn.table.grad is not None and model.attn.table.grad.abs().sum() > 0


@pytest.mark.filterwarnings("ignore::RuntimeWarning:triton.runtime.interpreter")
@pytest.mark.filterwarnings("ignore::DeprecationWarning:triton.runtime.interpreter")
def test_the_triton_target_trains_like_the_reference(example):
    reference = example.train("reference", steps=10, batch_size=4)
    triton = example.train("triton", steps=10, batch_size=4)
    assert triton[-1] < triton[0], triton
    torch.testing.assert_close(torch.tensor(triton), torch.tensor(reference), rtol=1e-3, atol=1e-4)


def test_the_flex_target_trains_like_the_reference_on_the_cpu(example):
    reference = example.train("reference", steps=10, batch_size=4)
    flex = example.train("flex", steps=10, batch_size=4)
    assert flex[-1] < flex[0], flex
    torch.testing.assert_close(torch.tensor(flex), torch.tensor(reference), rtol=1e-4, atol=1e-5)


@pytest.mark.cuda
@pytest.mark.parametrize("target", ["flex", "triton"])
def test_fast_targets_on_a_gpu_train_like_the_reference(example, target):
    reference = example.train("reference", steps=20, device="cuda")
    fast = example.train(target, steps=20, device="cuda")
    torch.testing.assert_close(torch.tensor(fast), torch.tensor(reference), rtol=2e-2, atol=2e-2)
