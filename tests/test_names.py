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


LETS = """attention lets {
 input bias: float32[8] learnable
 let p = kv // 4
 let m = q // 4
 mask abs(p - m) <= 1
 score = score + bias[p - m + 4]
}
"""


def test_a_shared_term_equal_to_a_let_keeps_the_let_s_name():
    triton = compile_source(LETS, "triton")
    assert "    p = (_kv // 4)" in triton and "    m = (_q // 4)" in triton  # not _t0: the user's names
    assert "_t0 = (_kv // 4)" not in triton
    grad_pairs = triton.split("def _lets_grad_pairs")[1].split("return")[0]
    assert "_kernel.clamp((_t0 + 4), 0, _bias_n0 - 1) * _d_bias_s0" in grad_pairs  # the index as the forward reads it
    assert "_kernel.clamp((_t0 + 4), 0, _bias_n0 - 1) * _bias_s0" in triton
    flex = compile_source(LETS, "flex")
    assert "p = (kv_idx // 4)" in flex


def test_let_names_that_are_template_locals_do_not_shadow_them():
    """`p` and `m` are also the kernels' weights and running max (as _p and _m): both live side by side."""
    from attnspec.api import load_program, lower
    from attnspec.sample import Sizes, sample_arguments

    spec = lower(load_program(LETS).specs[0])
    args = sample_arguments(spec, Sizes(B=1, H=2, HKV=1, SQ=20, SKV=24, D=16, DV=16), torch.float32, seed=3)
    want = attnspec.compile(LETS, "reference").attention(**{n: t.double() for n, t in args.items()})
    got = attnspec.compile(LETS, "triton").attention(**args)
    torch.testing.assert_close(got.double(), want, rtol=2e-5, atol=2e-5)
