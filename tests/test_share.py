"""hoist_and_share / eliminate_dead_bindings: shared and loop-invariant terms become bindings."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

import attnspec
from attnspec.api import build_module, lower, pick_spec
from attnspec.frontend import parse_program
from attnspec.ir import Binding, Expr, inline_bindings, map_exprs, walk
from attnspec.passes import OPTIMIZE, STANDARD
from attnspec.printer import print_spec
from attnspec.sample import Sizes, sample_arguments
from attnspec.verify import verify

EXAMPLES = sorted(Path(__file__).resolve().parent.parent.glob("examples/*.attn"))


def optimized(text: str) -> attnspec.ir.Spec:
    return lower(parse_program(text).specs[0], passes=OPTIMIZE)


def by_name(spec):
    return {b.name: b for b in spec.bindings}


def test_loop_invariant_terms_get_their_level():
    spec = optimized(
        """attention a {
            param W: int = 8
            input slope: float32[H]
            score = score - slope[h] * float(abs(q // W - kv // W))
        }"""
    )
    levels = {print_spec_value(b): b.level for b in spec.bindings}
    assert levels == {"slope[h]": "program", "q // 8": "row", "kv // 8": "col"}


def print_spec_value(binding: Binding) -> str:
    from attnspec.printer import expr_text

    return expr_text(binding.value)


def test_common_subexpressions_are_computed_once():
    spec = optimized("attention a { score = score + float(q - kv) \n mask q - kv < 16 and q - kv >= 0 }")
    shared = [b for b in spec.bindings if print_spec_value(b) == "q - kv"]
    assert len(shared) == 1 and shared[0].level == "element"
    temp = Expr("temp", value=shared[0].name)
    assert sum(n == temp for root in (spec.score, spec.mask) for n in walk(root)) == 3


def test_score_terms_are_never_bound():
    spec = optimized(
        "attention a { score = 30.0 * tanh(score / 30.0) \n normalize rownorm(relu(score) * relu(score)) }"
    )
    assert all("score" not in print_spec_value(b) for b in spec.bindings)


def test_dead_bindings_are_removed():
    spec = optimized("attention a { param W: int = 8 \n mask q // W == kv // W }")
    dead = Binding("t99", Expr("const", value=3), "program")
    from attnspec.passes.share import eliminate_dead_bindings

    cleaned = eliminate_dead_bindings(dataclasses.replace(spec, bindings=spec.bindings + (dead,)))
    assert cleaned.bindings == spec.bindings


def test_output_is_deterministic_and_reparses_to_the_inlined_spec():
    path = next(p for p in EXAMPLES if p.name == "m02_natten2d.attn")
    spec = lower(pick_spec(attnspec.load_program(path), None), passes=OPTIMIZE)
    text = print_spec(spec)
    assert text == print_spec(lower(pick_spec(attnspec.load_program(path), None), passes=OPTIMIZE))
    reparsed = lower(parse_program(text).specs[0])  # the printed lets inline again
    expected = map_exprs(dataclasses.replace(spec, bindings=()), lambda e: inline_bindings(e, spec))
    assert print_spec(reparsed) == print_spec(expected)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_optimized_reference_computes_the_same(path):
    """The optimized IR verifies and, rendered by the reference target, gives the same numbers."""
    spec = pick_spec(attnspec.load_program(path), None)
    plain, fast = lower(spec, passes=STANDARD), lower(spec, passes=OPTIMIZE)
    verify(fast)
    sizes = Sizes(B=2, H=4, HKV=2, SQ=37, SKV=45, D=16, DV=8)
    args = sample_arguments(plain, sizes, torch.float64, seed=3)
    out_plain = build_module(plain, "reference", path.name).attention(**args)
    out_fast = build_module(fast, "reference", path.name).attention(**args)
    torch.testing.assert_close(out_fast, out_plain, rtol=0, atol=0)
