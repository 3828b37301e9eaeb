"""Generated code reads like the spec: compile-time params are named constants that host code and kernels
use by name (kernels through a tl.constexpr global), whatever value they were compiled with."""

from __future__ import annotations

import torch

import attnspec
from attnspec.api import compile_source

WINDOWED = "attention w {\n param window: int = 8\n mask abs(q - kv) <= window\n}\n"


def test_a_compile_time_param_is_used_by_name_on_every_target():
    reference = compile_source(WINDOWED, "reference")
    assert "window = 8  # compile-time param" in reference and "<= window)" in reference
    flex = compile_source(WINDOWED, "flex")
    assert "<= window)" in flex and "_tiles.scalar(window)" in flex
    triton = compile_source(WINDOWED, "triton")
    assert "WINDOW = tl.constexpr(window)" in triton and "<= WINDOW)" in triton


def test_the_value_given_at_compile_time_is_the_constant_s():
    source = compile_source(WINDOWED, "reference", window=3)
    assert "window = 3  # compile-time param" in source and "<= window)" in source


def test_a_capitalized_name_that_is_taken_keeps_the_value_inline():
    spec = "attention w {\n param w: int = 2\n param W: int = 5\n mask q - kv <= w and kv <= q + W\n}\n"
    triton = compile_source(spec, "triton")
    assert "= tl.constexpr(" not in triton  # w's capital is W, a param: both stay literals in kernels
    assert "<= 2)" in triton and "(_q + 5)" in triton


def test_the_cache_tells_a_named_constant_from_the_same_literal():
    named = attnspec.compile("attention c {\n param w: int = 1\n mask kv <= q + w\n}\n", "reference")
    literal = attnspec.compile("attention c {\n param w: int = 1\n mask kv <= q + 1\n}\n", "reference")
    assert named is not literal
    q = torch.randn(1, 1, 5, 4, dtype=torch.float64)
    torch.testing.assert_close(named.attention(q, q, q), literal.attention(q, q, q), rtol=0, atol=0)
