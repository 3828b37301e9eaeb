"""The stage registry (attnspec/stages.py): every top-level expression of a spec is a declared slot,
and the verifier, casts, CSE and the backward read the declarations rather than naming slots."""

from __future__ import annotations

import dataclasses

import pytest

from attnspec import stages
from attnspec.api import load_program, lower
from attnspec.diagnostics import AttnError
from attnspec.ir import Expr, Normalize, Selection, Spec, const
from attnspec.passes import OPTIMIZE

FULL = """
attention full {
  param window: int = 8
  input slope: float32[H] learnable
  input sink_logit: float32[H]
  gqa group = 2
  scale = 0.5
  score = score - slope[h] * float(q - kv)
  mask kv <= q and q - kv < window
  normalize softmax(sink = sink_logit[h])
  select blocks(q = 16, kv = 16) top(2) by dot(mean(q), mean(k))
}
"""


def _expression_paths(cls, prefix=()) -> set[tuple[str, ...]]:
    """Paths of the Spec record's fields that hold one expression (through nested spec nodes)."""
    found = set()
    for f in dataclasses.fields(cls):
        kind = str(f.type)
        if kind.startswith("Expr"):
            found.add(prefix + (f.name,))
        elif kind.startswith(("Normalize", "Selection")):
            found |= _expression_paths({"Normalize": Normalize, "Selection": Selection}[kind.split(" ")[0]], prefix + (f.name,))
    return found


def test_every_expression_of_a_spec_is_a_declared_slot():
    assert _expression_paths(Spec) == {s.path for s in stages.SLOTS}


def test_slots_are_read_in_stage_order():
    spec = load_program(FULL).specs[0]
    assert [s.name for s, _ in stages.filled(spec)] == [
        "scale", "score", "mask", "gqa_group", "sink", "q_block", "kv_block", "block_score", "amount",
    ]


def test_with_slots_replaces_nested_slots_and_keeps_the_rest():
    spec = load_program(FULL).specs[0]
    changed = stages.with_slots(spec, {"sink": const(1.0), "amount": const(3)})
    assert changed.normalize.sink == const(1.0) and changed.selection.amount == const(3)
    assert changed.normalize.kind == spec.normalize.kind and changed.selection.score == spec.selection.score
    assert spec.normalize.sink != const(1.0)  # pure: the original is unchanged


def test_float_slots_cse_roots_and_differentiated_slots():
    spec = lower(load_program(FULL).specs[0], passes=OPTIMIZE)
    floats = stages.float_slots(spec)
    assert any(e is spec.normalize.sink for e in floats) and any(e is spec.selection.score for e in floats)
    assert not any(e is spec.mask for e in floats)
    assert list(stages.cse_roots(spec)) == ["score", "mask", "sink"]
    assert [what for what, _ in stages.differentiated(spec)] == ["score", "weight", "denominator", "sink"]


@pytest.mark.parametrize("slot, expr, message", [
    ("mask", Expr("score"), "'score' is not available in a mask"),
    ("sink", Expr("index_var", value="kv"), "'kv' is not available in a sink logit"),
    ("amount", const(2.5), "a selection amount must be an integer"),
    ("q_block", const(0), "a block size must be positive"),
])
def test_the_verifier_applies_each_slot_s_declaration(slot, expr, message):
    from attnspec.verify import verify

    spec = load_program(FULL).specs[0]
    with pytest.raises(AttnError, match=message):
        verify(stages.with_slots(spec, {slot: expr}))
