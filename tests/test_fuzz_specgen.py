"""The fuzzer's text strategies: random specs (attnspec.fuzz.specgen) and corrupted text
(attnspec.fuzz.mutate).

Drawn specs must be mostly valid, cover every construct of the language, and fail (when they are
broken on purpose) only with a rendered AttnError; corrupted text must never make the front end or a
code generator raise anything but an AttnError; and front_end_check must report an internal error
when one happens. Example counts are modest: the whole file runs in well under a minute.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, find, given, settings

from attnspec import builtins as bi
from attnspec import frontend
from attnspec.api import load_program, lower
from attnspec.codegen import generator
from attnspec.diagnostics import AttnError, Source, Span
from attnspec.fuzz import mutate, specgen
from attnspec.fuzz.mutate import front_end_check, mutated
from attnspec.fuzz.specgen import specs

# flex generation probes masks with small torch tensors, which more threads only slow down
pytestmark = pytest.mark.usefixtures("one_torch_thread")

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.attn"))
EXAMPLE_TEXTS = [p.read_text() for p in EXAMPLES]
SAMPLE_SIZE = 300
QUICK = settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def draw_sample(strategy, n: int) -> list:
    """n values of a strategy, the same ones on every run."""
    drawn = []

    @settings(max_examples=n, database=None, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
    @given(strategy)
    def collect(value):
        drawn.append(value)

    collect()
    return drawn


def lowered_or_error(text: str):
    """The lowered spec, or the AttnError that stopped it (after checking it renders)."""
    try:
        return lower(load_program(text).specs[0])
    except AttnError as err:
        assert isinstance(err.render(), str) and err.message
        return err


@pytest.fixture(scope="module")
def sample() -> list[str]:
    return draw_sample(specs(), SAMPLE_SIZE)


# ---------------------------------------------------------------- specgen


def test_the_name_pools_hold_no_reserved_name():
    pools = [*specgen.INPUT_NAMES, *specgen.LET_NAMES, *(n for pair in specgen.GRID_NAMES for n in pair)]
    pools += [n for names in specgen.PARAM_NAMES.values() for n in names] + [specgen.SPEC_NAME]
    assert [n for n in pools for suffix in ("", "0", "17") if bi.reserved_reason(n + suffix)] == []


@QUICK
@given(specs())
def test_a_drawn_spec_lowers_and_generates_or_fails_with_a_diagnostic(text):
    result = lowered_or_error(text)
    if isinstance(result, AttnError):
        return
    ast.parse(generator("reference")(result, "fuzz.attn"))


@QUICK
@given(specs(flaws=False))
def test_a_spec_drawn_without_flaws_is_valid(text):
    assert not isinstance(lowered_or_error(text), AttnError), text


def test_most_drawn_specs_are_valid(sample):
    valid = sum(not isinstance(lowered_or_error(t), AttnError) for t in sample)
    assert valid >= 0.85 * len(sample), f"only {valid} of {len(sample)} drawn specs are valid"


COVERAGE = {
    "mask": r"^\s*mask ",
    "score mod": r"^\s*score = ",
    "sink": r"softmax\(sink = ",
    "elementwise": r"normalize elementwise\(",
    "rownorm": r"normalize rownorm\(",
    "linear": r"normalize linear",
    "static select": r"^\s*select blocks\(.*\) keep ",
    "dynamic select": r"^\s*select blocks\(.*\) (top|threshold|share)\(.* by ",
    "runtime param": r"^\s*param \w+: \w+ runtime",
    "input": r"^\s*input ",
    "let": r"^\s*let \w+ = ",
    "tuple let": r"^\s*let \(",
    "scale": r"^\s*scale = ",
    "gqa": r"^\s*gqa group = ",
    "0-dim input": r"^\s*input \w+: \w+\[\]",
    "per scope": r" per (head|kv_head)",
    "global selection": r"^\s*select blocks\(.*\) (top|share)\(.* by .* global",
    "separate denominator": r"normalize rownorm\(.*, den = ",
    "per-row value": r"^\s*let \w+ per (q|k)\b",
    "pooled per-row value": r"^\s*select blocks\(.*\) .* by .*(mean|max|min)\((warmth|gain_row|focus)\d+\)",
    "learnable matrix": r"^\s*prologue (q|k)\[r, f\] = (softmax\()?sum\((q|k)\[g\] \* proj_",
    "sum_kept in the epilogue": r"^\s*epilogue .*sum_kept\(v\)",
    "per-row value in a mask": r"^\s*mask .* and (warmth|gain_row|focus)\d+ >= ",  # ROW_VALUE_NAMES
    # small tables (picked from tiles by the triton kernels) or ones as long as the queries (read per
    # pair from memory; test_row_tables.py checks that form on every target)
    "per-row table": r"^\s*let \w+\[r: 2 \* (\d+|SQ) \+ 1\] per (q|k)\b",
    "per-row table read per pair": r"^\s*(score = |mask ).*(rel_logit|dist_row)\d+\[clamp\(",  # ROW_TABLE_NAMES
}


@pytest.mark.parametrize("construct", COVERAGE)
def test_the_generator_draws_every_construct(sample, construct):
    """In the fixed sample, or for a rare construct (the sample shifts with any change to what the
    generator draws, or in which order), within a bounded search of fresh draws."""
    pattern = re.compile(COVERAGE[construct], re.MULTILINE)
    if any(pattern.search(t) for t in sample):
        return
    search = settings(max_examples=3000, database=None, derandomize=True, deadline=None, phases=[Phase.generate],
                      suppress_health_check=list(HealthCheck))
    find(specs(), lambda text: bool(pattern.search(text)), settings=search)  # raises NoSuchExample if never drawn


def test_the_sample_holds_specs_with_several_masks(sample):
    assert any(len(re.findall(r"^\s*mask ", t, re.MULTILINE)) >= 2 for t in sample)


def test_a_spec_with_a_mask_shrinks_to_the_causal_mask_alone():
    from hypothesis import find

    found = find(specs(), lambda t: "\n    mask " in t, settings=settings(database=None))
    assert found == "attention gen_spec {\n    mask kv <= q\n}\n"


# ---------------------------------------------------------------- mutate



@settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated(EXAMPLE_TEXTS))
def test_corrupted_text_never_causes_an_internal_error(text):
    problem = front_end_check(text)
    assert problem is None, problem


HOSTILE = {
    "null byte": "attention a {\n    mask kv <= q\x00\n}\n",
    "right-to-left override": "attention a {\n    mask kv <= q \u202e\n}\n",
    "emoji name": "attention a😀 {\n}\n",
    "overflowing float": "attention a {\n    mask abs(q - kv) <= 1e999\n}\n",
    "huge int": "attention a {\n    mask abs(q - kv) <= 99999999999999999999999\n}\n",
    "hex and underscores": "attention a {\n    mask kv <= 0x10 + 1_000\n}\n",
    "300 parentheses": "attention a {\n    mask " + "(" * 300 + "kv" + ")" * 300 + " <= q\n}\n",
    "1000 minus signs": "attention a {\n    score = " + "-" * 1000 + "score\n}\n",
    "1000 nots": "attention a {\n    mask " + "not " * 1000 + "kv <= q\n}\n",
    "reserved name": "attention a {\n    param lambda: int = 3\n}\n",
    "truncated": "attention a {\n    mask kv <= (q +",
    "crlf and tabs": "attention a {\r\n\tmask kv <= q\r\n}\r\n",
    "lone surrogate": "attention a {\n    mask kv <= q # \udcff\n}\n",
}


@pytest.mark.parametrize("text", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_text_gets_a_diagnostic(text):
    assert front_end_check(text) is None


@pytest.mark.parametrize("blocks", ["q = 9223372036854775807, kv = 16", "q = 16, kv = 9223372036854775807", "q = 100000000, kv = 100000000"])
def test_a_huge_static_block_size_compiles(blocks):
    """Found by fuzzing: the flex target's probe padded pairs to a multiple of the block size."""
    text = f"attention a {{\n    select blocks({blocks}) keep true\n}}\n"
    assert front_end_check(text) is None


@pytest.mark.parametrize("mutation", mutate.MUTATIONS, ids=lambda m: m.__name__)
def test_every_mutation_changes_text(mutation):
    from hypothesis import find, strategies as st

    @st.composite
    def once(draw):
        return mutation(draw, EXAMPLE_TEXTS[0])

    find(once(), lambda t: t != EXAMPLE_TEXTS[0], settings=settings(database=None, max_examples=200))


def test_front_end_check_reports_an_internal_error(monkeypatch):
    def broken(self, tree):
        raise KeyError("planted")

    monkeypatch.setattr(frontend._SpecBuilder, "mask_stmt", broken)
    problem = front_end_check("attention a {\n    mask kv <= q\n}\n")
    assert problem is not None and "KeyError" in problem and "planted" in problem and "broken" in problem


def test_front_end_check_reports_generated_code_that_does_not_parse(monkeypatch):
    monkeypatch.setattr(mutate, "generator", lambda target: lambda spec, name: "def broken(:\n")
    problem = front_end_check("attention a {\n}\n")
    assert problem is not None and "SyntaxError" in problem and "generated" in problem


def test_front_end_check_reports_a_diagnostic_outside_the_text(monkeypatch):
    def astray(spec, **kwargs):
        raise AttnError("lost", Span(Source("<fuzz>", "x"), 99, 1, 99, 2))

    monkeypatch.setattr(mutate, "lower", astray)
    assert "line 99" in front_end_check("attention a {\n}\n")


def test_front_end_check_accepts_a_proper_diagnostic():
    assert front_end_check("attention a {\n    mask q + 1\n}\n") is None
    assert front_end_check("attention a {\n    param w: int\n    mask kv <= q + w\n}\n") is None
