"""passes/derivative.py: symbolic derivatives against torch's autograd of the same expression.

Each expression is a score mod; its derivative with respect to the score (and, below, to a load of
a float input) is rendered with the reference renderer and evaluated on points that include every
kink (0 for relu and abs, ties of min and max, the ends of a clamp): it must equal what torch's
autograd computes for the rendered expression itself, kinks included, since kernels are checked
against the reference's autograd.
"""

from __future__ import annotations

import pytest
import torch

import attnspec
from attnspec.api import load_program, lower
from attnspec.codegen import passes_for
from attnspec.codegen.dense import DenseRenderer
from attnspec.diagnostics import AttnError
from attnspec.ir import Expr
from attnspec.passes.derivative import derivative, float_loads
from attnspec.printer import expr_text

POINTS = torch.tensor([-3.0, -1.5, -1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0], dtype=torch.float64)

SCORE_MODS = [
    "score * 2.0 - 1.0",
    "score / 3.0",
    "tanh(score / 2.0) * 2.0",
    "exp(score) + exp2(score)",
    "log(abs(score) + 1.0) + log2(score * score + 2.0)",
    "sqrt(score * score + 1.0)",
    "sigmoid(score) * softplus(score)",
    "relu(score) ** 2",
    "relu(score) + abs(score)",
    "max(score, 0.5) + min(score, -0.5)",
    "max(score, score)",
    "clamp(score, -1.0, 1.0)",
    "where(score > 0.0, score * 2.0, -score)",
    "score + float(q % 3) * score",
    "pow(abs(score) + 1.0, score)",
    "1.0 / (1.0 + score * score)",
    "score ** 9",
]


def lowered(source: str):
    return lower(load_program(source).specs[0], None, passes=passes_for("reference"))


def evaluate(module, code: str, score: torch.Tensor, extra: dict | None = None):
    names = {"_s": score, "_q": torch.arange(score.shape[-1]), "_dtype": torch.float64, **(extra or {})}
    return eval(code, vars(module), names)  # noqa: S307 - generated from the IR


@pytest.mark.parametrize("mod", SCORE_MODS)
def test_score_derivatives_match_autograd(mod):
    source = f"attention d {{ score = {mod} }}"
    spec, module = lowered(source), attnspec.compile(source)
    r = DenseRenderer(spec)
    x = POINTS.clone().requires_grad_(True)
    (want,) = torch.autograd.grad(evaluate(module, r.render(spec.score), x).sum(), x)
    got = evaluate(module, r.render(derivative(spec.score, Expr("score"), spec)), POINTS)
    got = torch.as_tensor(got, dtype=torch.float64).expand_as(POINTS)
    torch.testing.assert_close(got, want, equal_nan=True, rtol=1e-12, atol=1e-12)


def test_load_derivatives_match_autograd():
    source = "attention d {\n input c: float32[H] learnable\n score = c[h] * tanh(score / c[h]) + c[h] ** 2 + max(score, c[h])\n}"
    spec, module = lowered(source), attnspec.compile(source)
    r = DenseRenderer(spec)
    (load,) = float_loads(spec.score, spec)
    c = torch.tensor([0.7, 0.25, -1.0], dtype=torch.float64, requires_grad=True)
    h = torch.arange(3).view(3, 1)
    x = POINTS.view(1, -1)
    (want,) = torch.autograd.grad(evaluate(module, r.render(spec.score), x, {"c": c, "_h": h}).sum(), c)
    rate = evaluate(module, r.render(derivative(spec.score, load, spec)), x, {"c": c.detach(), "_h": h})
    torch.testing.assert_close(rate.sum(-1), want, rtol=1e-12, atol=1e-12)


def test_loads_with_the_same_indices_are_one_variable():
    spec = lowered("attention d {\n input t: float32[SKV] learnable\n score = score + t[kv] * t[kv] + t[q]\n}")
    loads = float_loads(spec.score, spec)
    assert [expr_text(n) for n in loads] == ["t[kv]", "t[q]"]
    assert expr_text(derivative(spec.score, loads[0], spec)) == "2.0 * t[kv]"


def test_terms_without_the_variable_stay_whole():
    spec = lowered("attention d {\n param w: int = 3\n score = score * float(abs(q - kv) // w + 1)\n}")
    assert expr_text(derivative(spec.score, Expr("score"), spec)) == expr_text(spec.score.args[1])


def test_a_derivative_that_cannot_be_rebuilt_is_an_attn_error(monkeypatch):
    import dataclasses

    import sympy

    from attnspec.ops import OPS

    from attnspec import calculus

    monkeypatch.setattr(calculus, "mystery", lambda x: sympy.Function("mystery")(x), raising=False)
    monkeypatch.setitem(OPS, "relu", dataclasses.replace(OPS["relu"], sympy="mystery"))
    spec = lowered("attention d { score = relu(score) }")
    with pytest.raises(AttnError, match="cannot differentiate"):
        derivative(spec.score, Expr("score"), spec)
