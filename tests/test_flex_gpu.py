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

from attnspec.sample import Sizes, sample_arguments
from test_flex import EXAMPLES, F64, assert_agrees, fits, modules, run_both
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


@pytest.mark.parametrize("stem, name", [
    ("b04_alibi", "alibi"), ("b05_streaming_sink", "streaming_sink"), ("s02_rel_table", "rel_table"),
    ("m02_natten2d", "natten2d"), ("n01_sigmoid", "sigmoid_attn"), ("n02_relu2_rownorm", "relu2_rownorm"),
])
def test_example_gradients_through_flex_on_gpu(stem, name):
    """FlexAttention's own backward, through the module's mods, epilogues and learnable inputs."""
    from attnspec.api import load_program
    from attnspec.fuzz.cases import Case
    from attnspec.fuzz.compare import OK, Subject, run_case
    from attnspec.sample import Sizes

    spec = next(s for s in load_program(EXAMPLES / f"{stem}.attn").specs if s.name == name)
    subject = Subject.build(spec, ["flex"], f"{stem}.attn")
    case = Case("flex", "bfloat16", Sizes(B=2, H=4, HKV=2, SQ=300, SKV=400, D=64, DV=64), seed=1, grad=True)
    outcome = run_case(subject, case, device="cuda")
    assert outcome.status == OK, f"{case}: {outcome.detail}"


def test_an_input_read_twice_through_flex_on_gpu():
    from attnspec.api import load_program
    from attnspec.fuzz.cases import Case
    from attnspec.fuzz.compare import OK, Subject, run_case
    from attnspec.sample import Sizes

    source = "attention g {\n input pos: float32[SKV] learnable\n mask kv <= q\n score = score + pos[q] - pos[kv]\n}"
    subject = Subject.build(load_program(source).specs[0], ["flex"], "<test>")
    case = Case("flex", "float32", Sizes(B=1, H=4, HKV=4, SQ=256, SKV=256, D=64, DV=64), seed=3, grad=True)
    outcome = run_case(subject, case, device="cuda")
    assert outcome.status == OK, f"{case}: {outcome.detail}"
