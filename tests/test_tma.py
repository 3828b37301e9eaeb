"""Tiles through tensor descriptors (TMA on Hopper, runtime/triton.py `descriptors`), checked on the CPU.

Triton's interpreter reads a descriptor's block as the copy engine would (zeros past the tensor's
ends), so with ATTNSPEC_TMA=1 the kernels take the descriptor path here and must agree with the float64
reference exactly as the pointer path does: forward and gradients, lengths off the tiles, SQ != SKV,
GQA, head dims that are not their tiles', bf16. The sm_90a machine code (`cp.async.bulk.tensor`) is
checked by test_aot.py. What else is checked: which tensors the copy engine can read (and the pointer
path for the others), the tiers of the autotuner, and the candidates per architecture.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from attnspec.api import load_program
from attnspec.runtime import triton as triton_runtime
from attnspec.sample import Sizes, sample_arguments
from test_flex import F64, assert_agrees, cast
from test_triton import modules, run_both
from test_triton_backward import assert_gradients_agree, subject_of

pytest.importorskip("triton")
pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.filterwarnings("ignore::RuntimeWarning:triton.runtime.interpreter"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:triton.runtime.interpreter"),
]

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

# a closed-form schedule, a sink, block tables, a data-dependent selection, an elementwise
# normalization, GQA, a prologue (q fused without gradients), per-row tables
CASES = [
    ("b01_causal", "causal"), ("b05_streaming_sink", "streaming_sink"), ("b03_document", "document"),
    ("k02_moba", "moba"), ("n01_sigmoid", "sigmoid_attn"), ("b09_gqa", "gqa2"), ("b10_rope", "rope"),
    ("s02_deberta", "deberta"),
]
SHAPES = (
    Sizes(B=2, H=4, HKV=2, SQ=100, SKV=130, D=24, DV=16),  # head dims padded to their tiles with zeros
    Sizes(B=1, H=2, HKV=1, SQ=1, SKV=70, D=64, DV=32),  # one query row: a single-row axis
)


@pytest.fixture
def described(monkeypatch):
    """ATTNSPEC_TMA=1, and the TMA flag of every attention kernel launched (prologue passes have none)."""
    monkeypatch.setenv("ATTNSPEC_TMA", "1")
    flags = []
    start = triton_runtime.start

    def spy(kernel, grid, *args, **meta):
        if "TMA" in meta:
            flags.append(meta["TMA"])
        return start(kernel, grid, *args, **meta)

    monkeypatch.setattr(triton_runtime, "start", spy)
    return flags


@pytest.mark.parametrize("stem, name", CASES)
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16))
def test_the_forward_through_descriptors_agrees_with_reference(described, stem, name, dtype):
    reference, kernel, spec = modules(stem, name)
    for seed, sizes in enumerate(SHAPES):
        args64 = sample_arguments(spec, sizes, F64, seed=seed)
        got, low_ref, ref64 = run_both(reference, kernel, spec, args64, dtype)
        assert_agrees(got, low_ref, ref64, f"{name} {dtype} {sizes}")
    assert described and all(described), described


@pytest.mark.parametrize("stem, name", [("b01_causal", "causal"), ("b04_alibi", "alibi"), ("k02_moba", "moba"), ("m01_prefix_lm", "prefix_lm")])
def test_the_gradients_through_descriptors_agree_with_reference(described, stem, name):
    spec = next(s for s in load_program(EXAMPLES / f"{stem}.attn").specs if s.name == name)
    subject = subject_of(spec, f"{stem}.attn")
    assert_gradients_agree(subject, Sizes(B=2, H=4, HKV=2, SQ=70, SKV=100, D=16, DV=24), "float32")
    assert_gradients_agree(subject, Sizes(B=1, H=3, HKV=1, SQ=90, SKV=40, D=16, DV=8), "bfloat16", seed=5)
    assert len(described) >= 6 and all(described), described  # forward, dQ, dK/dV, twice


def test_tensors_the_copy_engine_cannot_read_take_pointers(described):
    """A k that starts off a 16-byte boundary is not describable: the same kernel runs on pointers."""
    reference, kernel, spec = modules("b01_causal", "causal")
    sizes = Sizes(B=1, H=2, HKV=2, SQ=40, SKV=40, D=16, DV=16)
    args = cast(sample_arguments(spec, sizes, F64, seed=2), torch.float32)
    wide = torch.randn(1, 2, 40, 17)
    args["k"] = wide[..., 1:].copy_(args["k"])  # the same values, 4 bytes past an aligned start
    assert not triton_runtime.describable(args["k"])
    with torch.no_grad():
        got = kernel.attention(**args)
        want = reference.attention(**{n: t.double() if torch.is_tensor(t) and t.is_floating_point() else t for n, t in args.items()})
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)
    assert described == [False]


def test_which_tensors_are_describable():
    t = torch.zeros(2, 4, 64, 32, dtype=torch.bfloat16)
    assert triton_runtime.describable(t)
    assert triton_runtime.describable(t.transpose(1, 2).contiguous().transpose(1, 2))  # [B, S, H, D] storage
    assert not triton_runtime.describable(t.transpose(-1, -2))  # features not contiguous
    assert triton_runtime.describable(t[..., :4])  # 4 features of rows 64 bytes apart: the tile pads them
    assert not triton_runtime.describable(torch.zeros(2, 4, 64, 4, dtype=torch.bfloat16))  # rows 8 bytes apart
    assert not triton_runtime.describable(torch.zeros(1, 4, 64, 32).expand(3, 4, 64, 32))  # a broadcast batch
    one_row = torch.zeros(2, 4, 1, 32)
    assert triton_runtime.describable(one_row)
    assert triton_runtime._packed_strides(one_row.as_strided(one_row.shape, (128, 32, 1, 1))) == [128, 32, 32, 1]


def test_describable_views_keep_their_strides():
    base = torch.zeros(2, 64, 4, 32)  # [B, S, H, D]: q.transpose(1, 2) as many models hold it
    q = base.transpose(1, 2)
    (desc,) = triton_runtime.descriptors(True, (q, 64, 32))
    assert desc.shape == [2, 4, 64, 32] and desc.strides == list(q.stride()) and desc.block_shape == [1, 1, 64, 32]
    assert triton_runtime.descriptors(False, (q, 64, 32)) == (None,)
    assert triton_runtime.descriptors(True, (q, 64, 32), (q[..., 1:], 64, 32)) == (None, None)  # all or none


def test_candidates_come_with_descriptors_first_on_hopper_only(monkeypatch):
    monkeypatch.delenv("ATTNSPEC_TMA", raising=False)
    q = torch.zeros(1, 1, 128, 64, dtype=torch.bfloat16)
    with triton_runtime.recording(capability=90):
        hopper = triton_runtime.candidate_configs(q, q)
    with triton_runtime.recording(capability=80):
        ampere = triton_runtime.candidate_configs(q, q)
    assert not any(c.tma for c in ampere) and len(hopper) == 2 * len(ampere)
    assert all(c.tma for c in hopper[0::2]) and not any(c.tma for c in hopper[1::2])  # each shape, then its twin
    assert hopper[1::2] == ampere and [replace(c, tma=False) for c in hopper[0::2]] == ampere
    monkeypatch.setenv("ATTNSPEC_TMA", "0")
    with triton_runtime.recording(capability=90):
        assert not any(c.tma for c in triton_runtime.candidate_configs(q, q))


def test_the_autotuner_takes_descriptors_per_shape_where_they_fit_and_run(monkeypatch):
    """Per tile shape the descriptor version, unless it does not fit (then its pointer twin is the
    shape's) or fails to run (then its twin is timed instead)."""
    import triton.testing

    configs = [triton_runtime.Config(m, 64, 64, 64, 4, 3, False, False, tma=tma) for tma in (True, False) for m in (128, 64)]
    fails, timed = set(), []

    def run(config):
        if (config.block_m, config.tma) in fails:
            raise RuntimeError("illegal instruction")
        timed.append(config)

    def bench(fn, warmup, rep):
        fn()
        return {128: 2.0, 64: 1.0}[timed[-1].block_m] + (0.0 if timed[-1].tma else 5.0)

    monkeypatch.setattr(triton_runtime, "_fits_here", lambda run, config, device: True)
    monkeypatch.setattr(triton.testing, "do_bench", bench)
    assert triton_runtime._chosen(run, configs, None) == configs[1]
    assert all(c.tma for c in timed)
    fails.update({(128, True), (64, True)})  # no descriptor candidate runs here: the pointer tier
    timed.clear()
    assert triton_runtime._chosen(run, configs, None) == configs[3]
    fails.clear()
    timed.clear()  # 64 x 64 does not fit with descriptors: its pointer twin (6.0) against 128 x 64's 2.0
    monkeypatch.setattr(triton_runtime, "_fits_here", lambda run, config, device: (config.block_m, config.tma) != (64, True))
    assert triton_runtime._chosen(run, configs, None) == configs[0]
    assert sorted((c.block_m, c.tma) for c in timed) == [(64, False), (128, True)]
    monkeypatch.setenv("ATTNSPEC_AUTOTUNE", "0")
    monkeypatch.setattr(triton_runtime, "_fits_here", lambda run, config, device: not config.tma)
    assert triton_runtime._chosen(run, configs, None) == configs[2]
