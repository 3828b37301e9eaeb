"""The triton target on a CUDA GPU, at realistic sizes (skipped without one).

The same accuracy rule as the interpreter tests (tests/test_triton.py), with the kernels compiled for
the GPU: half-precision products, weights rounded to v's dtype, autotuned configurations. Every
example in bf16 / fp16 / fp32 at B = 2, GQA 2, SQ = 1000 and SKV = 1100 (not multiples of any tile),
then the head dims 16 to 256 with DV != D, and a long causal sequence.
"""

from __future__ import annotations

import pytest
import torch

from attnspec.sample import Sizes, sample_arguments
from test_flex import F64, assert_agrees, fits
from test_triton import modules, run_both

pytestmark = pytest.mark.cuda

GPU_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
SHAPE = Sizes(B=2, H=8, HKV=4, SQ=1000, SKV=1100, D=64, DV=64)


def example_specs() -> list:
    from test_flex import EXAMPLES
    from attnspec.api import load_program

    return [(p.stem, s.name) for p in sorted(EXAMPLES.glob("*.attn")) for s in load_program(p).specs]


def on_gpu(args: dict) -> dict:
    return {k: (v.cuda() if isinstance(v, torch.Tensor) else v) for k, v in args.items()}


@pytest.mark.parametrize("stem, name", example_specs(), ids=lambda x: str(x))
@pytest.mark.parametrize("dtype", GPU_DTYPES, ids=lambda d: str(d).removeprefix("torch."))
def test_example_on_gpu(stem, name, dtype):
    reference, kernel, spec = modules(stem, name)
    sizes = SHAPE if fits(spec, SHAPE) else Sizes(B=2, H=4 * int(spec.gqa_group.literal), HKV=4, SQ=1000, SKV=1100, D=64, DV=64)
    args64 = on_gpu(sample_arguments(spec, sizes, F64, seed=0))
    assert_agrees(*run_both(reference, kernel, spec, args64, dtype), f"{name} {dtype} on GPU")


@pytest.mark.parametrize("d, dv", [(16, 16), (32, 64), (64, 32), (128, 128), (96, 80), (256, 256), (256, 128)])
@pytest.mark.parametrize("stem, name", [("b01_causal", "causal"), ("m02_natten2d", "natten2d"), ("b05_streaming_sink", "streaming_sink")])
def test_head_dims_on_gpu(stem, name, d, dv):
    reference, kernel, spec = modules(stem, name)
    args64 = on_gpu(sample_arguments(spec, Sizes(B=1, H=4, HKV=2, SQ=777, SKV=777, D=d, DV=dv), F64, seed=1))
    assert_agrees(*run_both(reference, kernel, spec, args64, torch.bfloat16), f"{name} D={d} DV={dv}")


def test_long_causal_on_gpu():
    reference, kernel, spec = modules("b01_causal", "causal")
    args64 = on_gpu(sample_arguments(spec, Sizes(B=1, H=4, HKV=4, SQ=8192, SKV=8192, D=128, DV=128), F64, seed=2))
    assert_agrees(*run_both(reference, kernel, spec, args64, torch.bfloat16), "causal 8k")


# ------------------------------------------------------------------ gradients


@pytest.mark.parametrize("stem, name", example_specs(), ids=lambda x: str(x))
@pytest.mark.parametrize("dtype", ("bfloat16", "float32"))
def test_example_gradients_on_gpu(stem, name, dtype):
    """dq, dk, dv and every float input's gradient (fuzz trial with grad=1) with the compiled kernels."""
    from test_triton_backward import assert_gradients_agree, subject_of
    from test_flex import EXAMPLES
    from attnspec.api import load_program

    spec = next(s for s in load_program(EXAMPLES / f"{stem}.attn").specs if s.name == name)
    subject = subject_of(spec, f"{stem}.attn")
    if "triton" in subject.refused:
        pytest.skip(subject.refused["triton"].message)
    sizes = Sizes(B=2, H=8, HKV=4, SQ=700, SKV=900, D=64, DV=64)
    assert_gradients_agree(subject, sizes, dtype, device="cuda")
