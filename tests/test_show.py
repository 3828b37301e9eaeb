"""`attnspec show` at any size and head count: gqa specs, sampled pictures, bounded memory, PNG size."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from attnspec.api import build_module, load_program, lower
from attnspec.passes import OPTIMIZE
from attnspec.sample import sample_arguments
from attnspec.show import MAX_SIDE, PNG_SIDE, dense_mask, drawing_sizes, sampled_mask
from conftest import REPO, example_files
from test_cli import CAUSAL, mask_lines, read_png, run, write

GQA3 = """\
attention gqa3 {
    gqa group = 3
    input slope: float32[H]
    mask kv <= q and q - kv < 5
    score = score - slope[h] * (q - kv)
}
"""

DOCUMENTS = """\
attention documents {
    input doc: int32[B, SQ]
    mask doc[b, q] == doc[b, kv // 2] and kv // 2 <= q
}
"""


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("ATTNSPEC_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.delenv("ATTNSPEC_TRACEBACK", raising=False)


# ---------------------------------------------------------------- gqa


def test_show_gqa_example(capsys):
    code, out, err = run(capsys, "show", REPO / "examples" / "b09_gqa.attn", "--sq", 6)
    assert code == 0, err
    assert "Traceback" not in out + err
    assert "h=0 (of H=2, HKV=1: gqa group 2)" in out
    assert mask_lines(out) == ["".join("#" if j <= i else "." for j in range(6)) for i in range(6)]


def test_show_gqa_group_three_with_a_head_input(tmp_path, capsys):
    path = write(tmp_path, "g3.attn", GQA3)
    code, out, err = run(capsys, "show", path, "--sq", 8, "--png", tmp_path / "g3.png")
    assert code == 0, err
    assert "H=3, HKV=1" in out
    assert mask_lines(out) == ["".join("#" if 0 <= i - j < 5 else "." for j in range(8)) for i in range(8)]


def test_show_huge_gqa_group_draws_head_zero(tmp_path, capsys):
    path = write(tmp_path, "big.attn", "attention big {\n    gqa group = 100000000\n    mask kv <= q\n}\n")
    code, out, err = run(capsys, "show", path, "--sq", 4)
    assert code == 0, err
    assert mask_lines(out) == ["#...", "##..", "###.", "####"]
    assert "every row keeps a key at these sizes: not checked" in out  # B x H x SQ rows over budget


@pytest.mark.parametrize("sq", [12, 5000], ids=["dense", "sampled"])
def test_show_draws_the_head_and_batch_asked_for(sq, capsys):
    """--head / --batch: M14's first two heads keep a window of 8, the others the whole causal context;
    the drawing says which head it shows, dense or sampled."""
    path = REPO / "examples" / "m14_ls_heads.attn"
    kept = {}
    for head in (0, 3):
        code, out, err = run(capsys, "show", path, "--sq", sq, "--head", head, "--batch", 1)
        assert code == 0, err
        line = next(l for l in out.splitlines() if l.startswith("# mask for"))
        assert line.startswith(f"# mask for b=1, h={head}")
        kept[head] = int(line.split(" of ")[-2].split()[-1])
    assert kept[3] > kept[0]
    if sq == 12:
        assert kept == {0: 68, 3: 78}
    code, _, err = run(capsys, "show", path, "--head", -1)
    assert code == 2 and "--head and --batch" in err


# ---------------------------------------------------------------- large drawings


def test_show_large_png_is_sampled_and_capped(tmp_path, capsys):
    path = write(tmp_path, "causal.attn", CAUSAL)
    png = tmp_path / "m.png"
    sq, skv = 20000, 9000
    code, out, err = run(capsys, "show", path, "--sq", sq, "--skv", skv, "--png", png)
    assert code == 0, err
    assert "use --png" not in out
    q_step, kv_step = -(-sq // MAX_SIDE), -(-skv // MAX_SIDE)
    assert f"sampled: queries 0, {q_step}, {2 * q_step}, ..., keys 0, {kv_step}, {2 * kv_step}, ..." in out
    width, height, rows = read_png(png.read_bytes())
    assert max(width, height) <= PNG_SIDE
    rows_drawn, cols_drawn = -(-sq // q_step), -(-skv // kv_step)
    scale = width // cols_drawn
    assert (width, height) == (cols_drawn * scale, rows_drawn * scale)
    assert f"wrote {png} ({width} x {height} pixels" in out
    for i in range(0, rows_drawn, 97):  # independent formula at the sampled pairs
        expected = [0 if j * kv_step <= i * q_step + (skv - sq) else 255 for j in range(cols_drawn)]
        assert rows[i * scale][::scale] == expected, f"row {i}"


def test_show_png_given_is_not_told_to_use_png(tmp_path, capsys):
    path = write(tmp_path, "causal.attn", CAUSAL)
    code, out, err = run(capsys, "show", path, "--sq", 200, "--png", tmp_path / "m.png")
    assert code == 0, err
    assert "use --png" not in out and "too large to draw in the terminal" in out
    assert f"{200 * 201 // 2} of {200 * 200} pairs kept" in out  # still exact at this size


def test_show_is_bounded_in_memory(tmp_path):
    """A process limited to its baseline plus 1 GiB of address space draws SQ = 20000 (the dense
    mask alone is 400 MB, and each int64 grid of it 3.2 GB)."""
    if not Path("/proc/self/status").exists():
        pytest.skip("needs /proc (Linux)")
    path = write(tmp_path, "docs.attn", DOCUMENTS)
    probe = (
        "import sys\nfrom attnspec.cli import main\nrc = main(sys.argv[1:])\n"
        "print([l for l in open('/proc/self/status') if l.startswith('VmPeak')][0], file=sys.stderr)\nsys.exit(rc)\n"
    )

    def show(sq, limit=None):
        def cap():
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

        argv = [sys.executable, "-c", probe, "show", str(path), "--sq", str(sq), "--png", str(tmp_path / "m.png")]
        return subprocess.run(argv, capture_output=True, text=True, preexec_fn=cap if limit else None, timeout=600)

    small = show(32)
    assert small.returncode == 0, small.stderr
    baseline = int(small.stderr.split("VmPeak:")[1].split()[0]) * 1024
    large = show(20000, baseline + (1 << 30))
    assert large.returncode == 0, large.stderr[-2000:]
    assert "sampled" in large.stdout


def test_show_input_too_large_is_a_diagnostic(tmp_path, capsys):
    path = write(tmp_path, "pairs.attn", "attention pairs {\n    input bias: float32[SQ, SKV]\n    mask bias[q, kv] > 0.0\n}\n")
    code, out, err = run(capsys, "show", path, "--sq", 100000)
    assert code == 2
    assert "input 'bias'" in err and "too many to draw" in err and "Traceback" not in err
    assert "hint: draw at a smaller --sq / --skv" in err


def test_show_negative_input_dimension_is_a_diagnostic(tmp_path, capsys):
    path = write(tmp_path, "neg.attn", "attention neg {\n    input t: float32[SQ - 200]\n    score = score + t[q]\n}\n")
    code, _, err = run(capsys, "show", path, "--sq", 8)
    assert code == 2
    assert "neg.attn:2:5: error: input 't' has shape [-192]" in err and "Traceback" not in err


@pytest.mark.parametrize("option", [["--block", 0], ["--sq", 2**31]])
def test_show_rejects_bad_sizes(tmp_path, capsys, option):
    path = write(tmp_path, "causal.attn", CAUSAL)
    code, _, err = run(capsys, "show", path, *option)
    assert code == 2 and option[0] in err


def test_show_sampled_selection_is_reported_as_left_out(capsys):
    code, out, err = run(capsys, "show", REPO / "examples" / "k02_moba.attn", "--sq", 3000)
    assert code == 0, err
    assert "data-dependent block selection is not drawn" in out


# ---------------------------------------------------------------- the sampled picture is the reference's mask


def _lowered(path: Path, text: str | None = None):
    program = load_program(text if text is not None else path)
    return [(s.name, lower(s, {}, passes=OPTIMIZE)) for s in program.specs]


SPECS = [(p.name, name, spec) for p in example_files() for name, spec in _lowered(p)]
SPECS += [("gqa3", name, spec) for name, spec in _lowered(None, GQA3)]
SPECS += [("documents", name, spec) for name, spec in _lowered(None, DOCUMENTS)]


@pytest.mark.parametrize("source, name, spec", SPECS, ids=[f"{s}:{n}" for s, n, _ in SPECS])
def test_sampled_mask_is_the_dense_reference_mask_subsampled(source, name, spec):
    sizes = drawing_sizes(spec, 70, 90)
    args = sample_arguments(spec, sizes, torch.float64, seed=1)
    module = build_module(spec, "reference", source)
    if spec.selection is not None and spec.selection.dynamic:  # the sampled picture leaves it out
        dense = module._token_mask(args["q"], args["k"], **{k: v for k, v in args.items() if k not in ("q", "k", "v")})[0, 0]
    else:
        dense = dense_mask(module, spec, sizes, args)
    for q_step, kv_step in ((1, 1), (3, 7)):
        got = sampled_mask(spec, sizes, args, q_step, kv_step, source)
        assert torch.equal(got, dense[::q_step, ::kv_step]), (q_step, kv_step)
