"""attnspec fuzz (attnspec/fuzz, attnspec/testing.py): the fuzzer itself, and the examples fuzzed.

What is checked:
- a case survives its own text (the --case line a report prints is the case that failed);
- one trial judges right: a correct target passes; a wrong value, NaN, an unwritten element, a wrong
  dtype or an exception fails with a description; cases the reference refuses are discarded;
- the search shrinks a failure to the smallest case, and the printed command and Python snippet
  replay exactly that case;
- the command line: reports, exit status, clean errors for bad options;
- the pytest fixture, as a user's test suite sees it;
- every example on every target that accepts it, a few cases each (CI's bounded share; `make fuzz`
  runs more).
"""

from __future__ import annotations

import io
import math
import shlex
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings

from attnspec.api import load_program
from attnspec.runtime import launch
from attnspec.cli import main
from attnspec.diagnostics import AttnError
from attnspec.fuzz.cases import Case, case_arguments, cases, parse_case
from attnspec.fuzz.compare import DISCARD, FAIL, OK, Subject, run_case
from attnspec.fuzz.progress import Progress
from attnspec.fuzz.runner import Options, available_targets, fuzz_file, fuzz_generated, fuzz_mutations
from attnspec.sample import Sizes
from attnspec.testing import FuzzFailure, fuzz, replay

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.filterwarnings("ignore::RuntimeWarning:triton.runtime.interpreter"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:triton.runtime.interpreter"),
]

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
CAUSAL = "attention causal_t {\n    mask kv <= q + (SKV - SQ)\n}\n"
TOPK = (
    "attention topk_t {\n    param k_blocks: int runtime = 2\n    mask kv <= q\n"
    "    select blocks(q = 16, kv = 16) top(k_blocks) by dot(mean(q), mean(k))\n}\n"
)
SMALL = Sizes(B=1, H=2, HKV=1, SQ=20, SKV=33, D=16, DV=8)


def example_files() -> list[Path]:
    return sorted(EXAMPLES.glob("*.attn"))


def subject_of(text: str, targets=("flex",)) -> Subject:
    return Subject.build(load_program(text).specs[0], targets, "t.attn")


class Broken:
    """A target module that computes the reference's answer, then spoils it in one way."""

    def __init__(self, reference, how: str):
        self.reference, self.how = reference, how

    def attention(self, q, k, v, **kwargs):
        kwargs.pop("compiled", None)
        out, lse = self.reference.attention(q, k, v, **kwargs)
        if self.how == "raise":
            raise IndexError("tile index out of range")
        out = out.to(q.dtype).clone()
        if self.how == "value":
            out[0, -1, -1, 0] += 0.5
        elif self.how == "nan":
            out[0, 0, 0, 0] = math.nan
        elif self.how == "dtype":
            out = out.double()
        return out, lse.float()


# ------------------------------------------------------------------ cases


@settings(max_examples=60, deadline=None)
@given(case=cases(load_program(TOPK).specs[0], "triton", ("float32", "bfloat16", "float16")))
def test_a_case_survives_its_own_text(case):
    assert parse_case(str(case)) == case


@pytest.mark.parametrize("text", ["", "target=flex", "target=flex,dtype=float8,B=1,H=1,HKV=1,SQ=1,SKV=1,D=16,DV=16",
                                  "nonsense", "target=flex,target=flex", "dtype=float32,B=1,H=1,HKV=1,SQ=1,SKV=1,D=16,DV=16,target=flex,colour=red"])
def test_a_bad_case_line_is_a_clean_error(text):
    with pytest.raises(AttnError) as err:
        parse_case(text)
    assert "case" in err.value.message and err.value.hint


def test_wild_inputs_hold_masked_biases_and_unclamped_indices():
    spec = load_program("attention w {\n input bias: float32[H, SKV]\n input doc: int32[B, SQ]\n"
                        " score = score + bias[h, kv]\n mask doc[b, q] >= 0\n}\n").specs[0]
    case = Case("flex", "float32", Sizes(B=2, H=4, HKV=2, SQ=64, SKV=64, D=16, DV=16), seed=3, inputs="wild")
    args = case_arguments(spec, case)
    assert torch.isneginf(args["bias"]).any() and args["bias"][torch.isfinite(args["bias"])].abs().max() > 5
    assert args["doc"].min() < 0 and args["doc"].max() >= 64


# ------------------------------------------------------------------ one trial


def test_a_correct_target_passes_on_every_dtype():
    subject = subject_of(CAUSAL)
    for dtype in ("float32", "bfloat16", "float16"):
        outcome = run_case(subject, Case("flex", dtype, SMALL, seed=1, logits="large"), "cpu")
        assert outcome.status == OK, outcome.detail
        assert [v.what for v in outcome.verdicts] == ["out", "lse"]


def test_the_rule_allows_half_an_ulp_of_the_type_but_not_more():
    """The accuracy rule's atol holds half an ulp of the largest value in the reference's dtype (times
    the fudge): a bf16 result an ulp of its largest value away passes where the reference's own error
    is a fraction of that, 2.5 ulps fail, and float32 keeps its 1e-5."""
    from attnspec.fuzz.accuracy import check, rounding_floor

    ref64 = torch.tensor([3.0, -0.5, 1.0 / 3.0], dtype=torch.float64)
    low = ref64.to(torch.bfloat16)
    assert rounding_floor(low, ref64) == 2.0**-8 * 2  # half an ulp of 3.0 in bf16
    assert rounding_floor(ref64.float(), ref64) == 2.0**-24 * 2 and rounding_floor(low, torch.zeros(3)) == 0.0
    ulp = 2.0**-6  # of 3.0 in bf16
    assert check(ref64 + ulp, low, ref64, "out").ok
    assert not check(ref64 + 2.5 * ulp, low, ref64, "out").ok
    assert not check(ref64.float() + 1e-4, ref64.float(), ref64, "out").ok


@pytest.mark.parametrize("how, words", [("value", "out: FAIL"), ("nan", "NaN at (0, 0, 0, 0)"),
                                        ("dtype", "expected torch.float32"), ("raise", "IndexError: tile index")])
def test_a_wrong_target_fails_and_says_why(how, words):
    subject = subject_of(CAUSAL)
    subject.modules["flex"] = Broken(subject.reference, how)
    outcome = run_case(subject, Case("flex", "float32", SMALL), "cpu")
    assert outcome.status == FAIL and words in outcome.detail


def test_a_reference_that_crashes_is_a_failure_not_a_crash():
    subject = subject_of(CAUSAL)

    class Crashing:
        def attention(self, *args, **kwargs):
            raise IndexError("gather out of range")

    subject.reference = Crashing()
    outcome = run_case(subject, Case("flex", "float32", SMALL), "cpu")
    assert outcome.status == FAIL and "the reference raised IndexError" in outcome.detail


@pytest.mark.skipif("triton" not in available_targets(), reason="needs triton")
def test_an_unwritten_kernel_output_shows_as_nan(monkeypatch):
    """Outputs start as NaN during a trial: a kernel that skips a row cannot pass on stale memory."""
    subject = subject_of(CAUSAL, ("triton",))
    module = subject.modules["triton"]
    real = launch.jit(module.KERNELS.forward)

    class SkipsLastBlock:
        def __getitem__(self, grid):
            return lambda *args, **kw: real[(max(grid[0] - 1, 1), *grid[1:])](*args, **kw)

    skipping = replace(module.KERNELS, forward=SkipsLastBlock())
    monkeypatch.setattr(module, "KERNELS", skipping)
    monkeypatch.setattr(module, "OPERATOR", launch.operator(skipping, "skips_last_block"))  # what attention() calls
    outcome = run_case(subject, Case("triton", "float32", replace(SMALL, SQ=100)), "cpu")
    assert outcome.status == FAIL and "NaN" in outcome.detail


def test_cases_the_reference_refuses_are_discarded():
    subject = subject_of(TOPK)
    outcome = run_case(subject, Case("flex", "float32", SMALL, params=(("k_blocks", -1),)), "cpu")
    assert outcome.status == DISCARD and "top(k) needs k >= 0" in outcome.detail


def test_a_runtime_division_by_zero_is_a_defined_case():
    """a // 0 == 0 on every target (language.md section 4): the case is judged like any other."""
    divides = subject_of("attention d {\n param s: int runtime = 1\n mask q // s <= kv\n}\n")
    assert run_case(divides, Case("flex", "float32", SMALL, params=(("s", 0),)), "cpu").status == OK


# ------------------------------------------------------------------ search, shrinking, replay


def spoiled_beyond(limit: int):
    """A flex module that is wrong whenever SQ > limit (and right otherwise)."""

    def build(subject):
        broken = Broken(subject.reference, "value")
        good = subject.modules["flex"]

        class Module:
            def attention(self, q, k, v, **kwargs):
                chosen = broken if q.shape[2] > limit else good
                return chosen.attention(q, k, v, **kwargs)

        return Module()

    return build


@pytest.fixture
def spoiled(monkeypatch):
    """Subject.build gives flex modules that fail above SQ = 40."""
    real = Subject.build.__func__

    def build(cls, *args, **kwargs):
        subject = real(cls, *args, **kwargs)
        if "flex" in subject.modules:
            subject.modules["flex"] = spoiled_beyond(40)(subject)
        return subject

    monkeypatch.setattr(Subject, "build", classmethod(build))


def test_a_failure_shrinks_to_the_smallest_case(spoiled, tmp_path):
    options = Options(targets=("flex",), trials=30, dtypes=("float32", "bfloat16"), save_dir=str(tmp_path))
    [report] = fuzz_file(Path(EXAMPLES / "b01_causal.attn"), options)
    assert report.status == FAIL
    case = parse_case(report.lines[0].split(": ", 1)[1])
    # the smallest failing length of either branch: any length (41) or one that breaks kernels (63)
    assert case.sizes.SQ in (41, 63) and case.sizes.SKV == 1 and case.sizes.B == 1 and case.sizes.HKV == 1
    assert case.dtype == "float32" and case.seed == 0 and case.logits == "normal"


def test_the_printed_command_and_snippet_replay_the_failure(spoiled, tmp_path, capsys):
    source = tmp_path / "mine.attn"
    source.write_text(CAUSAL)
    options = Options(targets=("flex",), trials=20, save_dir=str(tmp_path))
    [report] = fuzz_file(source, options)
    command = next(line for line in report.lines if line.startswith("reproduce: ")).split(": ", 1)[1]
    words = shlex.split(command)
    assert words[:3] == ["attnspec", "fuzz", str(source)]
    assert main(words[1:]) == 1
    assert "FAIL" in capsys.readouterr().out
    snippet = next(line for line in report.lines if line.startswith("in Python: ")).split(": ", 1)[1]
    with pytest.raises(FuzzFailure, match="replayed 1 case"):
        exec(snippet, {})


def test_a_failing_spec_given_as_text_is_saved_for_its_command(spoiled, tmp_path):
    with pytest.raises(FuzzFailure) as err:
        fuzz(CAUSAL, targets=["flex"], trials=20, save_dir=str(tmp_path))
    saved = list(tmp_path.glob("spec-*.attn"))
    assert len(saved) == 1 and saved[0].read_text() == CAUSAL and str(saved[0]) in str(err.value)


def test_replay_of_a_passing_case_returns_its_report():
    case = Case("flex", "bfloat16", SMALL, seed=5)
    report = replay(EXAMPLES / "b05_streaming_sink.attn", str(case))
    assert report.status == OK and "out: ok" in report.summary and "lse: ok" in report.summary


# ------------------------------------------------------------------ command line


def test_cli_fuzzes_a_file_and_reports_each_target(capsys):
    assert main(["fuzz", str(EXAMPLES / "n01_sigmoid.attn"), "--trials", "3", "--no-progress"]) == 0
    out = capsys.readouterr().out
    for target in available_targets():
        assert f"n01_sigmoid.attn:sigmoid_attn {target}" in out
    assert "checks passed" in out


def test_cli_front_end_runs_every_generator(capsys):
    assert main(["fuzz", "--front-end", str(EXAMPLES / "b01_causal.attn"), str(EXAMPLES / "k02_moba.attn")]) == 0
    out = capsys.readouterr().out
    assert out.count("no internal error") == 2


@pytest.mark.parametrize("argv, words", [
    (["fuzz"], "nothing to fuzz"),
    (["fuzz", "examples/b01_causal.attn", "--dtype", "float8"], "unknown --dtype"),
    (["fuzz", "examples/b01_causal.attn", "--target", "reference"], "cannot fuzz target 'reference'"),
    (["fuzz", "examples/b01_causal.attn", "--trials", "0"], "--trials must be positive"),
    (["fuzz", "examples/b01_causal.attn", "--case", "target=flex"], "bad --case value"),
    (["fuzz", "--case", "target=flex"], "--case replays a case of one file"),
    (["fuzz", "no_such_file.attn"], "no such file"),
])
def test_cli_bad_options_are_clean_errors(argv, words, capsys, monkeypatch):
    monkeypatch.chdir(EXAMPLES.parent)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err


def test_cli_reports_refused_targets_as_skipped(tmp_path, capsys):
    path = tmp_path / "neg.attn"
    path.write_text("attention neg {\n    normalize rownorm(score)\n}\n")
    assert main(["fuzz", str(path), "--target", "flex", "--trials", "2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("skip") and "not accepted" in out


def test_progress_bar_counts_trials_and_discards():
    stream = io.StringIO()
    progress = Progress("x.attn:spec flex", total=4, stream=stream, enabled=True)
    for status in ("ok", "discard", "ok"):
        progress._drawn_at = -1.0  # draw every update
        progress.count(status)
    assert "[############------------] 2/4, 1 discarded" in stream.getvalue()
    progress.failed()
    assert progress.line().endswith("shrinking")


# ------------------------------------------------------------------ the pytest fixture


def test_the_fixture_fuzzes_a_users_spec(pytester):
    pytester.makefile(".attn", mine=CAUSAL)
    pytester.makepyfile(
        test_user="""
        def test_mine(attnspec_fuzz):
            reports = attnspec_fuzz("mine.attn", targets=["flex"], trials=50)
            assert [r.summary.split(",")[0] for r in reports] == ["2 trials"]
        """
    )
    result = pytester.runpytest_subprocess("--attnspec-trials", "2", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


# ------------------------------------------------------------------ the whole compiler, bounded


def test_random_specs_compile_and_agree_or_are_rejected_cleanly(tmp_path):
    """CI's share of `attnspec fuzz --generate` (make fuzz runs 200): each random spec through the
    front end, every generator, and one case on every target that accepts it."""
    options = Options(trials=1, max_len=100, shrink_seconds=30, save_dir=str(tmp_path), seed=11)
    report = fuzz_generated(8, options)
    assert report.status == OK, "\n".join(report.lines)


def test_corrupted_examples_give_diagnostics_never_internal_errors(tmp_path):
    """CI's share of `attnspec fuzz --mutate` (make fuzz runs 2000)."""
    texts = [p.read_text() for p in example_files()]
    report = fuzz_mutations(texts, 80, Options(save_dir=str(tmp_path), seed=5))
    assert report.status == OK, "\n".join(report.lines)


# ------------------------------------------------------------------ what the fuzzer found

# (spec, case) pairs that failed before a fix, replayed on every target that accepts the spec.
FOUND = [
    # the triton launcher evaluated a float(...) in the scale before defining the compute dtype
    ("attention s {\n    scale = 3.721 / sqrt(float(D))\n}\n",
     "dtype=bfloat16,B=2,H=4,HKV=1,SQ=155,SKV=33,D=16,DV=8,seed=364,logits=normal,inputs=wild"),
    # a runtime bool param reached the triton kernel as an int1 argument, which the interpreter refuses
    ("attention f {\n    param flag: bool runtime = false\n    mask kv <= q or flag\n"
     "    score = where(flag, score * 2.0, score)\n}\n",
     "dtype=float32,B=1,H=1,HKV=1,SQ=70,SKV=70,D=16,DV=16,param.flag=true"),
    # FlexAttention traces mods with symbolic shapes once lengths vary: SymBools have no == or !=
    ("attention g {\n    select blocks(q = 16, kv = 16) keep (H >= SKV) != (float(B) > 1.0)\n}\n",
     "dtype=float32,B=1,H=2,HKV=1,SQ=50,SKV=15,D=32,DV=64,trace=dynamic"),
    # a division of two scalars in the triton kernel (a runtime float param): x.to() on a plain float
    ("attention sk {\n    param c: float runtime = 1.5\n    mask kv <= q or (q < 4 and kv < 4)\n"
     "    normalize softmax(sink = c / c)\n}\n",
     "dtype=float32,B=2,H=4,HKV=2,SQ=39,SKV=129,D=8,DV=16,logits=huge,inputs=wild,trace=dynamic,param.c=-2.45"),
    # float32 lse of huge logits, one element: the reference's error is one lucky sample (accuracy rule)
    ((EXAMPLES / "m01_prefix_lm.attn").read_text(),
     "dtype=float32,B=1,H=1,HKV=1,SQ=1,SKV=1,D=32,DV=16,seed=0,logits=huge,inputs=typical,param.prefix=16"),
]


@pytest.mark.parametrize("text, case", FOUND, ids=[f"found{i}" for i in range(len(FOUND))])
@pytest.mark.parametrize("target", available_targets())
def test_what_the_fuzzer_found_stays_fixed(text, case, target):
    assert replay(text, f"target={target},{case}").status == OK


# ------------------------------------------------------------------ every example, a few cases each


@pytest.mark.parametrize("path", example_files(), ids=lambda p: p.stem)
def test_every_example_agrees_with_the_reference_on_random_cases(path, tmp_path):
    reports = fuzz(path, trials=3, max_len=160, shrink_seconds=20, save_dir=str(tmp_path))
    accepted = [r for r in reports if r.status == OK]
    assert accepted, [r.summary for r in reports]


def test_options_default_to_every_fast_target():
    assert set(Options().chosen_targets()) == set(available_targets()) and "reference" not in available_targets()
    assert Options(device="cuda").longest() > Options().longest()
