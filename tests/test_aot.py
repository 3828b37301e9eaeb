"""Every example's triton kernels compiled for Hopper (sm_90a) on this machine, no GPU needed
(`attnspec aot`, docs/triton.md): properties of the machine code, never timings.

- the forward kernel of every example, at D = 64 and 128 in bf16 (and five of them in fp16), with the
  candidate the autotuner tries first, compiles, multiplies q.k and p.v on the tensor cores (wgmma where the tiles allow it),
  loads its K and V tiles with the copy engine (TMA), spills nothing and fits the shared memory of a block;
- the dQ and dK/dV kernels of the examples with learnable inputs compile and fit the same way;
- the report's rule is the autotuner's, and a recorded launch is the launch the host code makes.

The compile runs in a child process without TRITON_INTERPRET (this suite's kernels are interpreted).
`make aot-sweep` compiles every candidate, fp16/bf16/fp32, for sm_80 and sm_90a.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from attnspec.api import load_program
from attnspec.ir import OTHER_ROW_OPS, walk

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.attn"))
SPECS = [(path.stem, spec.name) for path in EXAMPLES for spec in load_program(path).specs]
# elementwise(score): the product is the weight (linear attention without a denominator or decay)
PLAIN_WEIGHTS = {spec.name for path in EXAMPLES for spec in load_program(path).specs
                 if spec.normalize.kind == "elementwise" and spec.normalize.weight.op == "score"}
LEARNABLE = sorted({path for path in EXAMPLES for spec in load_program(path).specs if any(i.learnable for i in spec.inputs)})


def _aot(tmp_path_factory, name: str, files, *options) -> dict:
    out = tmp_path_factory.mktemp("aot") / f"{name}.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run(
        [sys.executable, "-m", "attnspec", "aot", *map(str, files), "--json", str(out), "-j", "2", *options],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=1800,
    )
    assert out.exists(), done.stderr[-3000:]
    return {"rc": done.returncode, "table": done.stdout, "reports": json.loads(out.read_text())}


@pytest.fixture(scope="module")
def forward(tmp_path_factory):
    return _aot(tmp_path_factory, "forward", EXAMPLES, "--kernel", "forward")


def _reads(step, *ops) -> bool:
    return any(n.op in ops for n in walk(step.value))


def _row_maps(spec) -> int:
    """The passes over rows a spec takes with gradients, and as many backward passes: one per prologue
    statement (not softmax_rows or sum_rows, which read every row: tensor code, differentiated as
    such), per-row value (none for values beside a per-row table: those stay tensor code) and
    epilogue."""
    values = [i.computed for i in spec.inputs if i.computed is not None]
    tables = any(v.entry is not None for v in values)
    rows = [s for s in spec.prologue if not _reads(s, *OTHER_ROW_OPS)] + ([] if tables else values)
    return len(rows) + (spec.epilogue is not None)


ROW_MAPS = sorted({path for path in EXAMPLES for spec in load_program(path).specs if _row_maps(spec)})


@pytest.fixture(scope="module")
def prologues(tmp_path_factory):
    # with gradients every statement is a pass (without, the forward kernel applies q's itself), and
    # so is the backward of every statement and value
    return _aot(tmp_path_factory, "prologue", ROW_MAPS, "--kernel", "prologue", "--backward")


@pytest.fixture(scope="module")
def backward(tmp_path_factory):
    return _aot(tmp_path_factory, "backward", LEARNABLE, "--backward", "--kernel", "dq", "--kernel", "dkdv")


HALF = ["b01_causal", "b04_alibi", "b05_streaming_sink", "m02_natten2d", "b07_softcap"]


@pytest.fixture(scope="module")
def half(tmp_path_factory):
    return _aot(tmp_path_factory, "fp16", [ROOT / "examples" / f"{stem}.attn" for stem in HALF], "--dtype", "fp16")


def _every_built_in() -> str:
    """A spec that calls every built-in of the registry a kernel computes: a new entry is compiled for
    Hopper as soon as it is registered (the interpreter accepts programs the GPU compiler rejects)."""
    from attnspec.ops import OPS

    floats, ints = [], []
    for op in OPS.values():
        if op.rule in ("where", "dot"):
            continue  # where is in every mask below; dot takes pooled vectors (block scores only)
        if op.rule == "int":
            ints.append(f"{op.name}({', '.join(['q - kv', '3', 'kv + 1'][:op.arity])})")
        else:
            floats.append(f"{op.name}({', '.join(['score * 0.5', '0.25', '1.5'][:op.arity])})")
    return (f"attention every_built_in {{\n    score = {' + '.join(floats)}\n"
            f"    mask where({' + '.join(ints)} >= 0, kv <= q, kv >= q)\n}}\n")


@pytest.fixture(scope="module")
def built_ins(tmp_path_factory):
    path = tmp_path_factory.mktemp("built-ins") / "every_built_in.attn"
    path.write_text(_every_built_in())
    return _aot(tmp_path_factory, "built-ins", [path], "--head-dim", "64", "--backward")


def test_every_built_in_compiles_for_hopper_with_its_derivative(built_ins):
    # compiling is the point: fifteen transcendentals in one tile may well spill
    assert built_ins["rc"] == 0, built_ins["table"]
    assert sorted(r["kernel"] for r in built_ins["reports"]) == ["dkdv", "dq", "forward"], built_ins["table"]
    assert all(r["error"] is None for r in built_ins["reports"]), built_ins["table"]


def test_a_compile_error_is_reported_by_its_innermost_cause():
    from attnspec.aot import _first_line

    try:
        try:
            raise ValueError("width is already defined.\nmore")
        except ValueError as inner:
            raise RuntimeError("at 6:8:\n    width: tl.constexpr = 1") from inner
    except RuntimeError as outer:
        assert _first_line(outer) == "ValueError: width is already defined."


def _of(run: dict, spec: str) -> list[dict]:
    return [r for r in run["reports"] if r["spec"] == spec]


def test_every_example_has_learnable_inputs_or_not():
    assert len(LEARNABLE) >= 4  # the backward check below is about something


# kernels at 255 registers whose first shape spills with tensor descriptors (by 48 bytes: N09 holds a
# second accumulator, sum_kept(v), at D = 128): the default is the same shape on pointers, its twin
FIRST_SPILLS = {("affine_scaled", 128)}


@pytest.mark.parametrize("stem, name", SPECS)
def test_forward_compiles_for_hopper_on_tensor_cores_without_spills(forward, stem, name):
    reports = _of(forward, name)
    assert sorted(r["head_dim"] for r in reports) == [64, 128], forward["table"]
    for r in reports:
        where = f"{name} D={r['head_dim']}: {r}"
        assert r["error"] is None, where
        assert r["kernel"] == "forward" and r["arch"] == "sm_90a", where
        twin = (name, r["head_dim"]) in FIRST_SPILLS
        assert r["candidate"] == (1 if twin else 0) and r["tma"] != twin, where
        assert r["spill_stores"] == 0 and r["shared"] <= r["shared_limit"] and r["fits"], where
        # every default tile has 64 rows or more (a selection's blocks do not narrow it): wgmma
        assert r["block_m"] >= 64 and r["mma"] == "wgmma" and r["mma_count"] >= 2, where
        assert r["instructions"] > r["special"], where
        # every normalization takes an exponential or a reciprocal, but the score itself as the weight
        assert r["special"] > 0 or name in PLAIN_WEIGHTS, where


def test_the_passes_over_rows_compile_for_hopper_without_spills(prologues):
    """One pass per prologue statement over q, k or v, per per-row value and for the epilogue, and one
    backward pass of each (runtime/prologue.py): every example's compiles, at both head dims, and holds
    its tile in registers."""
    assert len(ROW_MAPS) >= 6 and prologues["rc"] == 0, prologues["table"]
    passes = sum(2 * _row_maps(spec) for path in ROW_MAPS for spec in load_program(path).specs)
    assert len(prologues["reports"]) == 2 * passes, prologues["table"]
    kinds = {r["kernel"] for r in prologues["reports"]}
    assert {"prologue_q", "prologue_k", "prologue_q_bwd", "value_t", "value_t_bwd", "epilogue", "epilogue_bwd"} <= kinds, kinds
    for r in prologues["reports"]:
        assert r["kernel"].startswith(("prologue_", "value_", "epilogue")) and r["error"] is None, r
        assert r["spill_stores"] == 0 and r["fits"], r


def test_fp16_forward_uses_wgmma_without_spills(half):
    assert half["rc"] == 0 and len(half["reports"]) == 2 * len(HALF), half["table"]
    for r in half["reports"]:
        assert r["dtype"] == "fp16" and r["error"] is None and r["fits"] and r["mma"] == "wgmma", r


IEEE = ["b01_causal", "b04_alibi", "m02_natten2d"]


@pytest.fixture(scope="module")
def ieee(tmp_path_factory):
    return _aot(tmp_path_factory, "ieee", [ROOT / "examples" / f"{stem}.attn" for stem in IEEE], "--dtype", "fp32", "--backward")


def test_ieee_float32_runs_on_fma_without_spills(ieee):
    """float32 under torch's default "highest" precision: products on FMA units (no TF32), and the
    kernels' own candidates (small tiles on many warps) fit where the half-type ones spilled 1.6-82 KB."""
    assert ieee["rc"] == 0 and len(ieee["reports"]) == 3 * 2 * len(IEEE), ieee["table"]
    for r in ieee["reports"]:
        assert r["dtype"] == "fp32" and r["error"] is None and r["mma"] == "fma", r
        assert r["spill_stores"] == 0 and r["fits"], r


# DeBERTa's narrow 64 x 16 backward tiles at D = 128 sit at 254-255 registers: with descriptors they
# spill, so that shape runs on pointers (its twin)
BACKWARD_TWINS = {("deberta", 128)}


@pytest.mark.parametrize("path", LEARNABLE, ids=lambda p: p.stem)
def test_backward_of_learnable_examples_compiles_without_spills(backward, path):
    for spec in load_program(path).specs:
        reports = _of(backward, spec.name)
        assert sorted((r["kernel"], r["head_dim"]) for r in reports) == [("dkdv", 64), ("dkdv", 128), ("dq", 64), ("dq", 128)]
        for r in reports:
            twin = (spec.name, r["head_dim"]) in BACKWARD_TWINS
            assert r["error"] is None and r["fits"] and r["mma"] == "wgmma" and r["tma"] != twin, r
            assert r["candidate"] == (1 if twin else 0), r


LINEAR = sorted(path for path in EXAMPLES if path.stem in ("n14_linear_elu", "n18_lightning"))


# a decay that learns: the dq kernel then also carries the keys' age-weighted state (its gradient)
LEARNED_DECAY = """attention learned_decay {
    input lam: float32[H] learnable
    prologue q = relu(q)
    prologue k = relu(k)
    mask kv <= q + (SKV - SQ)
    normalize linear(decay = sigmoid(lam[h]))
}
"""


@pytest.fixture(scope="module")
def linear(tmp_path_factory):
    learned = tmp_path_factory.mktemp("learned") / "learned_decay.attn"
    learned.write_text(LEARNED_DECAY)
    return _aot(tmp_path_factory, "linear", [*LINEAR, learned], "--backward", "--kernel", "linear")


def test_the_chunked_linear_kernels_compile_for_hopper(linear):
    """normalize linear's chunked forward, dq and dk/dv kernels (runtime/linear.py), bf16, at both head
    dims, on tensor cores (wgmma, and mma.sync for dk/dv's blocks of 16 key features), without spills:
    before those blocks, dk/dv spilled 40 bytes at D = 64 and 484 at D = 128 (docs/triton.md); dq with a
    decay that learns (mma.sync: blocks of 16 query and 32 value features) 48 bytes before its blocks of
    32 value features."""
    assert linear["rc"] == 0 and len(LINEAR) == 2, linear["table"]
    for spec in [s for path in LINEAR for s in load_program(path).specs] + list(load_program(LEARNED_DECAY).specs):
        reports = _of(linear, spec.name)
        assert sorted((r["kernel"], r["head_dim"]) for r in reports) == [
            (kind, d) for kind in ("linear", "linear_dkdv", "linear_dq") for d in (64, 128)], linear["table"]
        for r in reports:
            narrow = r["kernel"] == "linear_dkdv" or (r["kernel"] == "linear_dq" and spec.name == "learned_decay")
            tensor_cores = ("mma.sync", "wgmma") if narrow else ("wgmma",)
            assert r["error"] is None and r["mma"] in tensor_cores and r["arch"] == "sm_90a", r
            assert r["spill_stores"] == 0 and r["fits"], r


def test_the_linear_forward_without_gradients_takes_bf16_products(tmp_path_factory):
    """Without gradients the chunked forward takes bf16 operands for q k^T and k^T v (runtime/linear.py
    `_dot`): fewer registers than with the float32 operands a backward needs (N18: 214 and 250 at D = 64
    and 128, against 254 and 255; N14: 164 and 240)."""
    report = _aot(tmp_path_factory, "linear_inference", LINEAR, "--kernel", "linear")
    assert report["rc"] == 0, report["table"]
    for path in LINEAR:
        for spec in load_program(path).specs:
            reports = _of(report, spec.name)
            assert sorted((r["kernel"], r["head_dim"]) for r in reports) == [("linear", 64), ("linear", 128)], report["table"]
            for r in reports:
                assert r["error"] is None and r["mma"] == "wgmma" and r["spill_stores"] == 0, r
                assert r["registers"] < 254 if r["head_dim"] == 64 else r["registers"] <= 250, r


def test_the_command_fails_on_a_kernel_that_does_not_compile(forward):
    assert forward["rc"] == 0, forward["table"]


def test_the_report_rule_is_the_autotuners():
    from attnspec.aot import KernelReport
    from attnspec.runtime.triton import fits

    base = dict(spec="s", kernel="forward", arch="sm_90a", dtype="bf16", head_dim=64, candidate=0, block_m=128, block_n=64,
                num_warps=4, num_stages=3, shared_limit=1000)
    assert KernelReport(**base, shared=1000).fits and fits(True, 0, 1000, 1000)
    assert not KernelReport(**base, shared=1001).fits and not fits(True, 0, 1001, 1000)
    assert not KernelReport(**base, shared=10, spill_stores=4).fits
    assert not KernelReport(**base, error="CompilationError: ...").fits


def test_recorded_launches_are_the_host_codes():
    """Recording runs the host code as on a GPU: its candidates, its grid, its arguments; nothing runs."""
    import attnspec
    from attnspec.api import lower
    from attnspec.runtime import triton as _rt
    from attnspec.sample import Sizes, sample_arguments

    spec = lower(load_program(ROOT / "examples" / "b05_streaming_sink.attn").specs[0])
    module = attnspec.compile(ROOT / "examples" / "b05_streaming_sink.attn", "triton")
    args = sample_arguments(spec, Sizes(B=2, H=4, HKV=2, SQ=300, SKV=300, D=64, DV=64), torch.bfloat16)
    with _rt.recording(every_candidate=True) as launches:
        module.attention(**args)
    with _rt.recording() as one:
        module.attention(**args)
        configs = _rt.candidate_configs(args["q"], args["v"])  # as on a GPU, while recording
    assert [launch.candidate for launch in launches] == list(range(len(configs)))
    assert [(launch.meta["BLOCK_M"], launch.meta["num_warps"]) for launch in launches] == [(c.block_m, c.num_warps) for c in configs]
    assert len(one) == 1 and one[0].grid == (-(-300 // configs[0].block_m), 8)
    assert one[0].args[0] is args["q"] and one[0].meta["BLOCK_D"] == 64


def test_instructions_are_counted_by_opcode():
    from attnspec.aot import instruction_counts

    ptx = """
.visible .entry k(
    .param .u64 k_param_0
)
{
    .reg .f32 %f<4>;
$L__BB0_1:
    // a comment
    ld.global.f32 %f1, [%rd1];
    ex2.approx.f32 %f2, %f1;
    @%p1 div.full.f32 %f3, %f2, %f1;
    @%p2 bra $L__BB0_1;
    tanh.approx.f32 %f3, %f3;
    fma.rn.f32 %f3, %f3, %f1, %f2;
    ret;
}
"""
    assert instruction_counts(ptx) == (7, 3)


def test_unknown_architecture_is_a_clear_error():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-m", "attnspec", "aot", str(EXAMPLES[0]), "--arch", "sm_70"], capture_output=True, text=True, env=env)
    assert done.returncode == 2 and "unknown GPU architecture 'sm_70'" in done.stderr and "sm_90a" in done.stderr
