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
from attnspec.show import MAX_SIDE, dense_mask, drawing_sizes, sampled_mask
from conftest import REPO, example_files
from test_cli import CAUSAL, _cells_area, mask_lines, run, write

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
    """SQ = 20000: a cell per sampled pair (at most MAX_SIDE a side), each kept or not as an independent
    formula says at its pair."""
    matplotlib_image = pytest.importorskip("matplotlib.image")
    from attnspec.figure import PALETTE

    path = write(tmp_path, "causal.attn", CAUSAL)
    png = tmp_path / "m.png"
    sq, skv = 20000, 9000
    code, out, err = run(capsys, "show", path, "--sq", sq, "--skv", skv, "--png", png)
    assert code == 0, err
    assert "use --png" not in out
    q_step, kv_step = -(-sq // MAX_SIDE), -(-skv // MAX_SIDE)
    assert f"sampled: queries 0, {q_step}, {2 * q_step}, ..., keys 0, {kv_step}, {2 * kv_step}, ..." in out
    pixels = (matplotlib_image.imread(png)[..., :3] * 255).round().astype(int)
    assert max(pixels.shape[:2]) <= MAX_SIDE + 400  # the cells and the margins
    left, top, right, bottom = _cells_area(pixels)
    rows_drawn, cols_drawn = -(-sq // q_step), -(-skv // kv_step)
    kept_colours = {c[1] for c in PALETTE.values()}
    for i in range(1, rows_drawn - 1, 97):  # the first and last cells touch the axes' antialiased frame
        y = int(top + (i + 0.5) * (bottom - top) / rows_drawn)
        for j in range(1, cols_drawn - 1, 13):
            x = int(left + (j + 0.5) * (right - left) / cols_drawn)
            kept = j * kv_step <= i * q_step + (skv - sq)
            assert (tuple(pixels[y, x]) in kept_colours) == kept, (i, j)


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


# ---------------------------------------------------------------- values given for the inputs (-I, --inputs)

HEAD_WINDOWS = """\
attention head_windows {
    input window: int32[H]
    param sink: int runtime
    mask (kv <= q and q - kv < window[h]) or kv < sink
}
"""


def _windows(sq: int, window: int, sink: int) -> list[str]:
    """Independent of attnspec: causal with a window, plus the first `sink` keys."""
    return ["".join("#" if (j <= i and i - j < window) or j < sink else "." for j in range(sq)) for i in range(sq)]


@pytest.mark.parametrize("head", [0, 2, 3])
def test_show_draws_the_values_given(tmp_path, capsys, head):
    """Per-head windows given on the command line: each head draws its own, and the sizes come from them."""
    path = write(tmp_path, "hw.attn", HEAD_WINDOWS)
    code, out, err = run(capsys, "show", path, "--sq", 9, "-I", "window=1,2,4,9", "-I", "sink=2", "--head", head)
    assert code == 0, err
    assert f"h={head} (of H=4" in out  # H from the window given
    assert mask_lines(out) == _windows(9, [1, 2, 4, 9][head], 2)
    assert "(inputs drawn at random" not in out  # every input given


def test_show_reads_values_from_files(tmp_path, capsys):
    """--inputs of a dict (.pt and .npz), and -I of one tensor (.pt and .npy), a later value winning."""
    import numpy

    path = write(tmp_path, "documents.attn", DOCUMENTS)
    doc = torch.tensor([[0, 0, 1, 1, 1, 2], [0, 1, 1, 1, 1, 1]], dtype=torch.int32)
    torch.save({"doc": doc}, tmp_path / "inputs.pt")
    numpy.savez(tmp_path / "inputs.npz", doc=doc.numpy())
    torch.save(doc.flip(0), tmp_path / "doc.pt")
    numpy.save(tmp_path / "doc.npy", doc.flip(0).numpy())

    def expected(row):  # keep (i, j) iff doc[i] == doc[j // 2] and j // 2 <= i, 12 keys
        return ["".join("#" if row[i] == row[j // 2] and j // 2 <= i else "." for j in range(12)) for i in range(6)]

    for option in (["--inputs", tmp_path / "inputs.pt"], ["--inputs", tmp_path / "inputs.npz"]):
        code, out, err = run(capsys, "show", path, "--skv", 12, "--batch", 1, *option)
        assert code == 0, err
        assert "# mask for b=1, h=0, SQ=6, SKV=12" in out  # SQ and B from the tensor
        assert mask_lines(out) == expected(doc[1].tolist())
    for name in ("doc.pt", "doc.npy"):
        code, out, err = run(capsys, "show", path, "--skv", 12, "--inputs", tmp_path / "inputs.pt", "-I", f"doc={tmp_path / name}")
        assert code == 0, err
        assert mask_lines(out) == expected(doc[1].tolist())  # batch 0 of the flipped tensor


def test_show_given_values_reach_the_tile_report(tmp_path, capsys):
    """The tiles at the drawing's size are those of the values given; at the realistic size, a value that
    grows with the lengths is drawn at random (and said so), one that does not is kept."""
    path = write(tmp_path, "hw.attn", HEAD_WINDOWS)
    code, out, err = run(capsys, "show", path, "--sq", 64, "-I", "window=1", "-I", "sink=0", "--block", 16)
    assert code == 0, err
    assert "# tiles 16x16 at SQ=64, SKV=64: visited 25.0% (full 0.0%, partial 25.0%)" in out  # the diagonal only
    assert "at SQ=4096, SKV=4096: visited 3.1% (full 0.0%, partial 3.1%)" in out  # window 1 there too: 32 of 32 x 32
    path = write(tmp_path, "documents.attn", DOCUMENTS)
    code, out, err = run(capsys, "show", path, "--skv", 8, "-I", "doc=0,0,1,1")
    assert code == 0, err
    assert "(at that size, drawn at random in place of the values given: doc)" in out


@pytest.mark.parametrize("option, message", [
    (["-I", "nope=1"], "'head_windows' has no input or runtime param 'nope'"),
    (["-I", "window"], "bad -I option 'window'"),
    (["-I", "window=1,x"], "bad value in -I window=1,x"),
    (["-I", "window=[[1],[1,2]]"], "the rows of the array have different lengths"),
    (["-I", "window=1.5"], "hw.attn:2:5: error: -I window=1.5: 'window' is int32: 1.5 is not an integer"),
    (["-I", "window=3000000000"], "3000000000 is outside int32's range"),
    (["-I", "window=[[1,2]]"], "hw.attn:2:5: error: -I window=[[1,2]]: 'window' has shape [1, 2], which does not "
                               "broadcast to its declared shape [1] at H=1"),  # one more dimension than declared
    (["-I", "sink=1,2"], "'sink' is a runtime int param: give one number, not [2]"),
    (["-I", "window=1,2", "--head", 2], "--head 2 is past the sizes of the given inputs (-I window=1,2 has 2)"),
    (["-I", "window=missing.pt"], "cannot read missing.pt: no such file"),
    (["-I", "window=[]"], "-I window=[] gives H=0 (a dimension of 'window'): sizes are positive"),
])
def test_show_refuses_bad_values_at_the_right_place(tmp_path, capsys, option, message):
    path = write(tmp_path, "hw.attn", HEAD_WINDOWS)
    code, out, err = run(capsys, "show", path, *option)
    assert code == 2, out
    assert message in err and "Traceback" not in err
    assert "attention head_windows" not in out  # refused before anything is printed


def test_show_refuses_given_values_that_conflict_or_are_not_inputs(tmp_path, capsys):
    path = write(tmp_path, "documents.attn", DOCUMENTS)
    code, _, err = run(capsys, "show", path, "--sq", 5, "-I", "doc=0,0,1,1")
    assert code == 2 and "-I doc=0,0,1,1 gives SQ=4 (a dimension of 'doc'), but --sq gives SQ=5" in err
    assert "documents.attn:2:5" in err
    code, _, err = run(capsys, "show", REPO / "examples" / "b02_sliding_window.attn", "-I", "window=3")
    assert code == 2 and "'window' is a compile-time param: set it with -D window=VALUE" in err
    rowmap = write(tmp_path, "t.attn", "attention t {\n    let g per q = sigmoid(sum(q))\n    mask g > 0.5 or kv <= q\n}\n")
    code, _, err = run(capsys, "show", rowmap, "-I", "g=1")
    assert code == 2 and "'g' is computed by the spec from q and k; it cannot be given" in err


def test_show_refuses_files_that_are_not_plain_tensors(tmp_path, capsys):
    """A pickled object is never loaded (weights only); a dict where a tensor is expected is named."""
    import argparse

    path = write(tmp_path, "hw.attn", HEAD_WINDOWS)
    torch.save(argparse.Namespace(window=1), tmp_path / "obj.pt")
    code, _, err = run(capsys, "show", path, "--inputs", tmp_path / "obj.pt")
    assert code == 2 and "cannot read" in err and "Traceback" not in err
    torch.save({"window": torch.ones(2)}, tmp_path / "d.pt")
    code, _, err = run(capsys, "show", path, "-I", f"window={tmp_path / 'd.pt'}")
    assert code == 2 and "holds a dict, not a tensor" in err
    torch.save(torch.ones(2), tmp_path / "t.pt")
    code, _, err = run(capsys, "show", path, "--inputs", tmp_path / "t.pt")
    assert code == 2 and "holds a Tensor, not a dict of named values" in err


# ---------------------------------------------------------------- how the triton target runs the row maps


@pytest.mark.parametrize("example, lines", [
    ("n17_hedgehog", ["prologue q: a pass, a backward pass", "prologue k: a pass, a backward pass"]),
    ("n05_inline", ["prologue q: a pass (or, without gradients, in the forward kernel), a backward pass",
                    "prologue k: tensor code both ways (it reads other rows)",
                    "epilogue: a pass (or, without gradients, in the forward kernel), a backward pass"]),
    ("n09_affine_scaled", ["per-row alpha, beta: passes (or, without gradients, in the forward kernel: alpha, beta), backward passes",
                           "epilogue: a pass (or, without gradients, in the forward kernel), a backward pass"]),
    ("s02_deberta", ["per-row c2p, p2c: tensor code both ways (a per-row table among them)"]),
    ("b01_causal", []),
])
def test_show_says_how_the_triton_target_runs_the_row_maps(example, lines, capsys):
    code, out, err = run(capsys, "show", REPO / "examples" / f"{example}.attn", "--sq", 4)
    assert code == 0, err
    found = [line.removeprefix("# triton target: ") for line in out.splitlines()
             if line.startswith("# triton target: ") and "key tiles" not in line]
    assert found == lines
