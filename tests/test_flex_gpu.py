"""The flex target on a CUDA GPU (skipped without one): torch.compile'd FlexAttention kernels, which
the CPU tests reach only for inference without the lse.

Every example in bf16 (and float32 for a few) at B = 2, GQA 2, SQ = 1000, SKV = 1100 against the
float64 reference, with the lse, through the compiled path: sinks and elementwise forms go through
their epilogues on the fused kernel's output, selections build 16 x 16 BlockMasks (the kernel is asked
for tiles that divide them).
"""

from __future__ import annotations

import pytest
import torch

from attnspec.runtime.sample import Sizes, sample_arguments
from test_flex import F64, assert_agrees, fits, modules, run_both
from test_triton_gpu import example_specs, on_gpu

pytestmark = pytest.mark.cuda

SHAPE = Sizes(B=2, H=8, HKV=4, SQ=1000, SKV=1100, D=64, DV=64)
# B08's static rule selects 16 x 8 blocks: FlexAttention's GPU kernel cannot tile 8 keys (docs/flex.md)
UNTILEABLE = {("b08_static_blocks", "static_blocks")}


@pytest.fixture(scope="module")
def _room_to_recompile():
    with torch._dynamo.config.patch(recompile_limit=256, accumulated_recompile_limit=4096):
        yield


@pytest.mark.parametrize("stem, name", example_specs(), ids=lambda x: str(x))
def test_example_compiled_on_gpu(stem, name, _room_to_recompile):
    reference, flex, spec = modules(stem, name)
    sizes = SHAPE if fits(spec, SHAPE) else Sizes(B=2, H=4 * int(spec.gqa_group.literal), HKV=4, SQ=1000, SKV=1100, D=64, DV=64)
    args64 = on_gpu(sample_arguments(spec, sizes, F64, seed=0))
    if (stem, name) in UNTILEABLE:
        with pytest.raises(Exception):
            run_both(reference, flex, spec, args64, torch.bfloat16, compiled=True)
        return
    for dtype in (torch.bfloat16, torch.float32):
        assert_agrees(*run_both(reference, flex, spec, args64, dtype, compiled=True), f"{name} {dtype} compiled on GPU")
