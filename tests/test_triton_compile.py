"""The triton target inside a caller's torch.compile(..., fullgraph=True) (docs/triton.md, "Inside
torch.compile"): a call is one torch.library custom operator, forward and backward, with fake-tensor
shape functions, so the graph holds it as one node and nothing breaks.

On the CPU the kernels run in Triton's interpreter; the compiled graph (aot_eager: fake tensors,
autograd, functionalization) must give eager's outputs and gradients bit for bit, and
torch._dynamo.explain must count no graph break: examples with inputs, learnable inputs, runtime
params, a data-dependent selection, GQA, elementwise weights.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import attnspec
from attnspec.api import load_program, lower
from attnspec.sample import Sizes, sample_arguments

pytest.importorskip("triton")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the interpreter's NumPy conversions

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SIZES = Sizes(B=1, H=4, HKV=2, SQ=67, SKV=93, D=16, DV=8)
CASES = ["b01_causal", "b03_document", "b05_streaming_sink", "k02_moba", "n01_sigmoid", "s02_rel_table", "m01_prefix_lm"]


def _case(stem: str, requires_grad: bool):
    path = EXAMPLES / f"{stem}.attn"
    spec = lower(load_program(path).specs[0])
    module = attnspec.compile(path, "triton")
    args = sample_arguments(spec, SIZES, torch.float32, seed=3)
    learn = [n for n in ("q", "k", "v")] + [i.name for i in spec.inputs if i.learnable]
    for name in learn if requires_grad else ():
        args[name].requires_grad_(True)
    rest = {n: t for n, t in args.items() if n not in ("q", "k", "v")}
    return module, args, rest, [args[n] for n in learn]


@pytest.mark.parametrize("stem", CASES)
def test_compiled_forward_is_one_graph_and_matches_eager(stem):
    module, args, rest, _ = _case(stem, requires_grad=False)

    def call(q, k, v):
        return module.attention(q, k, v, **rest)

    with torch.no_grad():
        eager = call(args["q"], args["k"], args["v"])
        compiled = torch.compile(call, fullgraph=True, backend="aot_eager")(args["q"], args["k"], args["v"])
        explained = torch._dynamo.explain(call)(args["q"], args["k"], args["v"])
    assert torch.equal(compiled, eager)
    assert explained.graph_break_count == 0 and explained.graph_count == 1


@pytest.mark.parametrize("stem", ["b01_causal", "b05_streaming_sink", "s02_rel_table", "m01_prefix_lm"])
def test_compiled_backward_matches_eager(stem):
    module, args, rest, leaves = _case(stem, requires_grad=True)  # learnable inputs too, through the operator
    spec = load_program(EXAMPLES / f"{stem}.attn").specs[0]

    def loss(q, k, v):
        return module.attention(q, k, v, **rest).square().sum()

    eager = torch.autograd.grad(loss(args["q"], args["k"], args["v"]), leaves)
    compiled_loss = torch.compile(loss, fullgraph=True, backend="aot_eager")
    compiled = torch.autograd.grad(compiled_loss(args["q"], args["k"], args["v"]), leaves)
    for e, c, name in zip(eager, compiled, ["q", "k", "v", *(i.name for i in spec.inputs if i.learnable)]):
        assert torch.equal(c, e), name


def test_a_module_with_learnable_inputs_compiles_whole():
    path = EXAMPLES / "b05_streaming_sink.attn"
    module = attnspec.compile(path, "triton")
    layer = module.Module(H=SIZES.H)
    q, k, v = (torch.randn(1, SIZES.H, 40, 16, requires_grad=True) for _ in range(3))
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    compiled(q, k, v).sum().backward()
    assert all(p.grad is not None for p in layer.parameters())
    assert torch._dynamo.explain(layer)(q, k, v).graph_break_count == 0


def test_the_fake_shapes_are_the_real_ones():
    """The operator's shape function, run on fake tensors, gives what the kernels give."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    module, args, rest, _ = _case("s02_rel_table", requires_grad=False)
    inputs = [rest[n] for n in module.KERNELS.input_names]
    params = [float(rest[n]) for n in module.KERNELS.param_names]
    real = module.OPERATOR(args["q"], args["k"], args["v"], inputs, params, True)
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fake = module.OPERATOR(*(mode.from_tensor(t) for t in (args["q"], args["k"], args["v"])),
                               [mode.from_tensor(t) for t in inputs], params, True)
    assert [(t.shape, t.dtype) for t in fake] == [(t.shape, t.dtype) for t in real]


def test_an_explicit_schedule_still_works_eagerly():
    module, args, rest, _ = _case("b03_document", requires_grad=False)
    schedule = module.build_schedule(args["q"], args["k"], **rest)
    with torch.no_grad():
        assert torch.equal(module.attention(**args, schedule=schedule), module.attention(**args))
