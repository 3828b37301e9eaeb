"""examples/train_rel_bias.py: a tiny model whose attention layer comes from an .attn file with a
learnable relative-position table, trained for a few steps.

On the CPU only the reference target can train (FlexAttention has no CPU backward, the triton target no
backward kernel yet); on a GPU the flex target must give the reference's losses.
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


def test_the_flex_target_says_it_cannot_train_on_the_cpu(example):
    with pytest.raises(NotImplementedError, match="no backward pass on the CPU"):
        example.train("flex", steps=1)


@pytest.mark.cuda
def test_flex_on_a_gpu_trains_like_the_reference(example):
    reference = example.train("reference", steps=20, device="cuda")
    flex = example.train("flex", steps=20, device="cuda")
    torch.testing.assert_close(torch.tensor(flex), torch.tensor(reference), rtol=2e-2, atol=2e-2)
