"""attnspec specs as HF transformers attention implementations (attnspec/integrations/transformers.py),
on a tiny randomly initialised Llama-style model (no weights downloaded): plain causal softmax gives
transformers' own eager logits, specs with learnable inputs train, and conventions that conflict with the
spec are refused with a clear error."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from attnspec.diagnostics import AttnError  # noqa: E402
from attnspec.integrations import transformers as attnspec_hf  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CAUSAL = ROOT / "examples" / "b01_causal.attn"
SINK = ROOT / "examples" / "b05_streaming_sink.attn"  # sliding window + sinks, a learnable sink logit per head
ALIBI = """
attention causal_alibi {
    input slope: float32[H] learnable
    score = score - slope[h] * float(q + SKV - SQ - kv)
    mask kv <= q + (SKV - SQ)
}
"""


def _config(**more):
    return transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, **more)


def _models(name, config):
    torch.manual_seed(0)
    eager = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    mine = transformers.AutoModelForCausalLM.from_config(config, attn_implementation=name)
    mine.load_state_dict(eager.state_dict(), strict=False)
    return eager, mine


@pytest.mark.parametrize("target, atol", [("reference", 1e-6), ("flex", 1e-5), ("triton", 1e-5)])
def test_causal_softmax_gives_transformers_eager_logits(target, atol):
    name = f"attnspec_causal_{target}"
    attnspec_hf.register(name, CAUSAL, target=target)
    eager, mine = _models(name, _config())
    ids = torch.randint(0, 64, (2, 19), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = eager(ids).logits, mine(ids).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=atol)


@pytest.mark.parametrize("source, target, learnable", [(SINK, "triton", "sink_logit"), (ALIBI, "reference", "slope")],
                         ids=["window_sink", "alibi"])
def test_a_model_with_learnable_spec_inputs_trains(source, target, learnable):
    """Each attention layer owns its spec's learnable inputs (attach, before the optimizer), and a few
    steps of AdamW move them and lower the loss on a repeated batch."""
    name = f"attnspec_train_{learnable}"
    attnspec_hf.register(name, source, target=target)
    model = transformers.AutoModelForCausalLM.from_config(_config(), attn_implementation=name)
    assert attnspec_hf.attach(model, name) == 2
    owned = [p for n, p in model.named_parameters() if n.endswith(f"{attnspec_hf.SUBMODULE}.{learnable}")]
    assert len(owned) == 2 and owned[0] is not owned[1]
    before = [p.detach().clone() for p in owned]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-2)
    ids = torch.randint(0, 64, (2, 24), generator=torch.Generator().manual_seed(2))
    losses = []
    for _ in range(4):
        loss = model(ids, labels=ids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0], losses
    assert all(not torch.equal(p, b) for p, b in zip(owned, before))


def test_padding_is_refused():
    attnspec_hf.register("attnspec_pad", CAUSAL)
    _, mine = _models("attnspec_pad", _config())
    ids = torch.randint(0, 64, (2, 9))
    with pytest.raises(AttnError, match="beyond the causal one"):
        mine(ids, attention_mask=torch.tensor([[1] * 9, [0] * 3 + [1] * 6]))
    mine(ids, attention_mask=torch.ones(2, 9, dtype=torch.long))  # no padding: the causal mask alone


@pytest.mark.parametrize("source, match", [
    ("attention both_ways {\n}\n", "keeps keys after their query"),
    ("attention flat {\n    scale = 1.0\n    mask kv <= q + (SKV - SQ)\n}\n", "scales the logits"),
], ids=["not_causal", "scale"])
def test_a_spec_that_conflicts_with_the_layer_is_refused(source, match):
    name = f"attnspec_conflict_{match.split()[0]}"
    attnspec_hf.register(name, source)
    _, mine = _models(name, _config())
    with pytest.raises(AttnError, match=match):
        mine(torch.randint(0, 64, (1, 8)))


def test_dropout_in_training_is_refused():
    attnspec_hf.register("attnspec_dropout", CAUSAL)
    _, mine = _models("attnspec_dropout", _config(attention_dropout=0.1))
    mine.train()
    with pytest.raises(AttnError, match="dropout"):
        mine(torch.randint(0, 64, (1, 8)))


def test_an_input_transformers_cannot_pass_is_given_at_registration():
    alibi = ROOT / "examples" / "b04_alibi.attn"
    with pytest.raises(AttnError, match="give the spec's input 'slope'"):
        attnspec_hf.register("attnspec_alibi_bare", alibi)
    causal_alibi = alibi.read_text().replace("score = score", "mask kv <= q + (SKV - SQ)\n    score = score")
    attnspec_hf.register("attnspec_alibi", causal_alibi, inputs={"slope": 2.0 ** -torch.arange(1.0, 5.0)})
    _, mine = _models("attnspec_alibi", _config())
    assert torch.isfinite(mine(torch.randint(0, 64, (1, 8))).logits).all()
