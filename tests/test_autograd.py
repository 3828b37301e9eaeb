"""Gradients through the generated reference: gradcheck in float64 and finiteness with masked rows.

The reference is what training code and kernel backward passes are checked against, so its
gradients with respect to q, k, v and to learnable inputs (bias tables, sink logits) must be
right, and must stay finite when some rows are fully masked.
"""

from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck

import attnspec

F64 = torch.float64


def make(B=1, H=2, HKV=None, SQ=4, SKV=5, D=3, DV=2, seed=0, grad=True):
    gen = torch.Generator().manual_seed(seed)
    HKV = H if HKV is None else HKV
    shapes = [(B, H, SQ, D), (B, HKV, SKV, D), (B, HKV, SKV, DV)]
    return [torch.randn(*s, generator=gen, dtype=F64).requires_grad_(grad) for s in shapes]


def learnable(*shape, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=gen, dtype=F64) * 0.5).requires_grad_(True)


SOFTMAX_BIAS = """
attention sm_bias {
    input rel: float32[H, 2 * SQ - 1] learnable
    mask kv <= q + 1
    score = score + rel[h, kv - q + SQ - 1]
}
"""

SOFTMAX_SINK = """
attention sm_sink {
    input sink_logit: float32[H] learnable
    mask kv <= q - 1
    normalize softmax(sink = sink_logit[h])
}
"""

SIGMOID = """
attention sig {
    input slope: float32[H] learnable
    mask kv <= q + 1
    score = score - slope[h] * float(abs(q - kv))
    normalize elementwise(sigmoid(score - 1.0))
}
"""

ROWNORM = """
attention rn {
    input bias: float32[H] learnable
    mask kv <= q
    normalize rownorm(softplus(score + bias[h]))
}
"""

ROWNORM_RELU2 = """
attention rn2 {
    mask kv <= q
    normalize rownorm(relu(score + 0.3) ** 2)
}
"""

CASES = {
    "softmax_bias": (SOFTMAX_BIAS, {"rel": (2, 7)}),
    "softmax_sink": (SOFTMAX_SINK, {"sink_logit": (2,)}),
    "elementwise_sigmoid": (SIGMOID, {"slope": (2,)}),
    "rownorm_softplus": (ROWNORM, {"bias": (2,)}),
    "rownorm_relu2": (ROWNORM_RELU2, {}),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("gqa", [False, True], ids=["mha", "gqa"])
def test_gradcheck(case, gqa):
    text, extra = CASES[case]
    mod = attnspec.compile(text)
    q, k, v = make(H=2, HKV=1 if gqa else 2)
    tables = {name: learnable(*shape) for name, shape in extra.items()}
    names = list(tables)

    def fn(q, k, v, *values):
        return mod.attention(q, k, v, **dict(zip(names, values)))

    assert gradcheck(fn, (q, k, v, *tables.values()), eps=1e-6, atol=1e-8, rtol=1e-6)


def test_gradcheck_through_lse_with_a_sink():
    """lse is float32 by contract, so check its gradient against float64 finite differences loosely."""
    mod = attnspec.compile(SOFTMAX_SINK)
    q, k, v = make()
    sink = learnable(2)
    _, lse = mod.attention(q, k, v, sink_logit=sink, return_lse=True)
    lse.sum().backward()
    grads = [t.grad.clone() for t in (q, k, sink)]
    with torch.no_grad():
        # d lse / d sink_h = sum over rows of h of exp(sink_h - lse)
        want = torch.exp(sink.view(1, 2, 1) - lse.double()).sum((0, 2))
    torch.testing.assert_close(grads[2], want, rtol=1e-5, atol=1e-6)
    assert all(torch.isfinite(g).all() for g in grads)


def test_gradcheck_with_a_fixed_block_selection():
    mod = attnspec.compile(
        "attention moba_g { mask kv <= q\n select blocks(q = 2, kv = 2) top(1) by dot(mean(q), mean(k)) causal always kv_block == q_block }"
    )
    q, k, v = make(SQ=6, SKV=6)
    sel = mod.select(q.detach(), k.detach())
    assert gradcheck(lambda q, k, v: mod.attention(q, k, v, selection=sel), (q, k, v), eps=1e-6, atol=1e-8, rtol=1e-6)


def test_gradcheck_runtime_scale_and_softcap():
    mod = attnspec.compile("attention cap { param cap: float runtime = 2.0\n scale = 0.5\n score = cap * tanh(score / cap)\n mask kv <= q }")
    q, k, v = make()
    assert gradcheck(lambda q, k, v: mod.attention(q, k, v, cap=1.5), (q, k, v), eps=1e-6, atol=1e-8, rtol=1e-6)


# ------------------------------------------------------------------ fully masked rows

HOLES = "mask kv <= q - 2 and h != 1"  # rows 0 and 1 of every head, and all of head 1, are fully masked


@pytest.mark.parametrize(
    "norm, extra",
    [
        ("", {}),
        ("normalize softmax(sink = sink_logit[h])", {"sink_logit": (3,)}),
        ("normalize elementwise(sigmoid(score))", {}),
        ("normalize rownorm(relu(score) ** 2)", {}),
        ("normalize rownorm(exp(score))", {}),
    ],
    ids=["softmax", "sink", "sigmoid", "rownorm_relu2", "rownorm_exp"],
)
def test_gradients_finite_with_fully_masked_rows(norm, extra):
    decls = "\n".join(f"input {n}: float32[H] learnable" for n in extra)
    mod = attnspec.compile(f"attention holes {{ {decls}\n {HOLES}\n {norm} }}")
    q, k, v = make(B=2, H=3, SQ=6, SKV=6)
    tables = {name: learnable(*shape) for name, shape in extra.items()}
    out = mod.attention(q, k, v, **tables)
    assert torch.isfinite(out).all()
    (out * torch.randn_like(out)).sum().backward()
    for t in (q, k, v, *tables.values()):
        assert t.grad is not None and torch.isfinite(t.grad).all()
    if "sink" not in norm and "elementwise" not in norm:
        assert torch.equal(q.grad[:, :, :2], torch.zeros_like(q.grad[:, :, :2])), "a fully masked row has no gradient"
        assert torch.equal(q.grad[:, 1], torch.zeros_like(q.grad[:, 1]))


@pytest.mark.parametrize("norm", ["", "normalize rownorm(exp(score))", "normalize softmax(sink = 0.5)"])
def test_gradients_finite_through_lse_with_fully_masked_rows(norm):
    mod = attnspec.compile(f"attention holes_lse {{ {HOLES}\n {norm} }}")
    q, k, v = make(B=1, H=3, SQ=6, SKV=6)
    out, lse = mod.attention(q, k, v, return_lse=True)
    loss = out.sum() + torch.where(torch.isfinite(lse), lse, 0.0).sum()
    loss.backward()
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()


def test_module_parameters_receive_gradients():
    mod = attnspec.compile(SOFTMAX_BIAS)
    layer = mod.Module(H=2, SQ=4, dtype=F64)
    q, k, v = make()
    layer(q, k, v).pow(2).sum().backward()
    assert layer.rel.grad is not None and torch.isfinite(layer.rel.grad).all()
    assert layer.rel.grad.abs().sum() > 0
    # entries of the table no (query, key) pair reads get exactly zero gradient: index kv - q + SQ - 1 <= SQ
    assert torch.equal(layer.rel.grad[:, 5:], torch.zeros_like(layer.rel.grad[:, 5:]))


# ------------------------------------------------------------------ every example with learnable inputs


def _learnable_examples() -> list:
    from conftest import example_files

    return [p for p in example_files() if any(i.learnable for s in attnspec.load_program(p).specs for i in s.inputs)]


@pytest.mark.parametrize("path", _learnable_examples(), ids=lambda p: p.stem)
def test_gradcheck_every_example_with_learnable_inputs(path):
    """q, k, v and every learnable input of every example that declares one, in float64 (issue: the
    reference is what every target's gradients will be checked against)."""
    from attnspec.api import lower
    from attnspec.sample import Sizes, sample_arguments

    spec = lower(attnspec.load_program(path).specs[0])
    mod = attnspec.compile(path, "reference")
    args = sample_arguments(spec, Sizes(B=1, H=2, HKV=1, SQ=11, SKV=13, D=4, DV=3), F64, seed=3)
    learn = [i.name for i in spec.inputs if i.learnable]
    names = ["q", "k", "v", *learn]
    tensors = tuple(args[n].double().requires_grad_(True) for n in names)
    fixed = {n: v for n, v in args.items() if n not in names}

    def fn(*values):
        return mod.attention(**dict(zip(names, values)), **fixed)

    assert learn and gradcheck(fn, tensors, eps=1e-6, atol=1e-8, rtol=1e-6)
