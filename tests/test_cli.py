"""The `attnspec` command line: check, compile, show, demo (in-process through cli.main)."""

from __future__ import annotations

import ast
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from attnspec.cli import main

CAUSAL = """\
# causal, aligned so the last query sees the last key
attention causal {
    mask kv <= q + (SKV - SQ)
}
"""

WINDOW = """\
attention sw {
    param window: int = 8
    mask abs(q - kv) <= window
}
"""

TWO_SPECS = """\
attention first {
    mask kv <= q
}

attention second {
    param window: int = 3
    mask abs(q - kv) <= window
}
"""

BLOCKS = """\
attention diag_blocks {
    mask kv <= q
    select blocks(q = 4, kv = 4) keep kv_block == q_block
}
"""

BROKEN = """\
attention broken {
    mask kv <= q +
}
"""


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    # show and demo load generated modules: keep them out of the user's cache.
    monkeypatch.setenv("ATTNSPEC_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.delenv("ATTNSPEC_TRACEBACK", raising=False)


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def causal_mask(sq: int, skv: int) -> list[list[bool]]:
    """Independent of attnspec: keep (i, j) iff j <= i + (skv - sq)."""
    return [[j <= i + (skv - sq) for j in range(skv)] for i in range(sq)]


def mask_lines(out: str) -> list[str]:
    """The drawing that follows the '# mask for ...' line of `attnspec show`."""
    lines = out.splitlines()
    start = next(n for n, line in enumerate(lines) if line.startswith("# mask for"))
    drawing = []
    for line in lines[start + 1 :]:
        if line.startswith("#") and not set(line) <= set("#. "):
            break
        drawing.append(line)
    return drawing


# ---------------------------------------------------------------- entry points


def test_python_dash_m_help(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "attnspec", "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    for command in ("check", "compile", "show", "demo"):
        assert command in proc.stdout


def test_version_prints_the_package_version(capsys):
    import attnspec

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"attnspec {attnspec.__version__}"


def test_every_argument_of_every_command_says_what_it_is():
    """`attnspec COMMAND --help` describes every positional argument and option (FILE included)."""
    import argparse

    from attnspec.cli import _parser

    commands = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert {"check", "compile", "show", "aot", "demo", "fuzz"} <= set(commands)
    for name, command in commands.items():
        for action in command._actions:
            if not isinstance(action, argparse._HelpAction):
                assert action.help, f"attnspec {name}: {action.dest} has no help text"


def test_no_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2


# ---------------------------------------------------------------- check


def test_check_ok(tmp_path, capsys):
    path = write(tmp_path, "causal.attn", CAUSAL)
    code, out, err = run(capsys, "check", path)
    assert code == 0, err
    assert f"{path}: ok (causal)" in out


def test_check_several_files(tmp_path, capsys):
    a = write(tmp_path, "a.attn", CAUSAL)
    b = write(tmp_path, "b.attn", TWO_SPECS)
    code, out, err = run(capsys, "check", a, b)
    assert code == 0, err
    assert f"{a}: ok (causal)" in out
    assert f"{b}: ok (first, second)" in out


def test_check_reports_every_file_and_fails_on_a_bad_one(tmp_path, capsys):
    good = write(tmp_path, "good.attn", CAUSAL)
    bad = write(tmp_path, "bad.attn", BROKEN)
    code, out, err = run(capsys, "check", bad, good)
    assert code == 2
    assert f"{good}: ok" in out  # the good file after the bad one is still checked
    assert f"{bad}:" in err and "error" in err
    assert "Traceback" not in err


def test_check_missing_file(tmp_path, capsys):
    code, out, err = run(capsys, "check", tmp_path / "nope.attn")
    assert code == 2
    assert "no such file" in err


def test_check_with_const(tmp_path, capsys):
    path = write(tmp_path, "w.attn", WINDOW)
    code, _, err = run(capsys, "check", path, "-D", "window=3")
    assert code == 0, err
    code, _, err = run(capsys, "check", path, "-D", "window=oops")
    assert code == 2 and "bad value" in err


def test_a_const_applies_to_the_specs_that_declare_it(tmp_path, capsys):
    """As docs/guide.md says: `check a.attn w.attn -D window=3` checks w with window = 3 and a as it is; a
    param that no spec of the files declares is a mistake (a misspelt -D would check nothing)."""
    a, w = write(tmp_path, "a.attn", CAUSAL), write(tmp_path, "w.attn", WINDOW)
    code, out, err = run(capsys, "check", a, w, "-D", "window=3")
    assert code == 0 and f"{a}: ok" in out and f"{w}: ok" in out, err
    code, out, err = run(capsys, "check", a, w, "-D", "windw=3")
    assert code == 2 and "no spec of the 2 files declares a param 'windw'" in err and not out


# ---------------------------------------------------------------- compile


def test_compile_prints_a_module(tmp_path, capsys):
    path = write(tmp_path, "causal.attn", CAUSAL)
    code, out, err = run(capsys, "compile", path)
    assert code == 0, err
    ast.parse(out)
    assert "def attention(" in out
    assert "causal.attn" in out.splitlines()[0]  # header names the source file
    # Deterministic: byte-identical on a second run.
    assert run(capsys, "compile", path)[1] == out


def test_compile_output_file(tmp_path, capsys):
    path = write(tmp_path, "causal.attn", CAUSAL)
    printed = run(capsys, "compile", path)[1]
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    target = out_dir / "causal_ref.py"
    code, out, err = run(capsys, "compile", path, "-o", target)
    assert code == 0, err
    assert out == ""  # nothing on stdout; the note goes to stderr
    assert target.read_text(encoding="utf-8") == printed
    assert sorted(p.name for p in out_dir.iterdir()) == ["causal_ref.py"]  # no temp file left
    # Overwriting an existing file works the same way.
    target.write_text("stale", encoding="utf-8")
    assert run(capsys, "compile", path, "--output", target)[0] == 0
    assert target.read_text(encoding="utf-8") == printed
    assert sorted(p.name for p in out_dir.iterdir()) == ["causal_ref.py"]


def test_compile_output_into_missing_directory(tmp_path, capsys):
    path = write(tmp_path, "causal.attn", CAUSAL)
    target = tmp_path / "missing" / "x.py"
    code, out, err = run(capsys, "compile", path, "-o", target)
    assert code == 2
    assert "cannot write" in err and "Traceback" not in err
    assert not target.parent.exists()


def test_compile_multi_spec_needs_spec(tmp_path, capsys):
    path = write(tmp_path, "two.attn", TWO_SPECS)
    code, out, err = run(capsys, "compile", path)
    assert code == 2
    assert "first" in err and "second" in err and "--spec" in err
    assert out == ""

    code, out, err = run(capsys, "compile", path, "--spec", "second")
    assert code == 0, err
    ast.parse(out)
    assert 'SPEC_NAME = "second"' in out

    code, out, err = run(capsys, "compile", path, "--spec", "third")
    assert code == 2 and "no spec 'third'" in err


def test_compile_const_override(tmp_path, capsys):
    path = write(tmp_path, "w.attn", WINDOW)
    default = run(capsys, "compile", path)[1]
    code, out, err = run(capsys, "compile", path, "-D", "window=37")
    assert code == 0, err
    ast.parse(out)
    assert "window = 8  # compile-time param" in default and "<= window)" in default
    assert "window = 37  # compile-time param" in out and "<= window)" in out
    assert "window = 8" not in out


@pytest.mark.parametrize(
    "option, message",
    [
        ("window=abc", "bad value"),
        ("window", "bad -D option"),
        ("=3", "bad -D option"),
        ("1x=3", "bad -D option"),
        ("nosuch=3", "no param 'nosuch'"),
        ("window=1.5", "is int"),
    ],
)
def test_compile_bad_const(tmp_path, capsys, option, message):
    path = write(tmp_path, "w.attn", WINDOW)
    code, out, err = run(capsys, "compile", path, "-D", option)
    assert code == 2
    assert message in err
    assert out == "" and "Traceback" not in err


def test_compile_unknown_target(tmp_path, capsys):
    path = write(tmp_path, "causal.attn", CAUSAL)
    code, out, err = run(capsys, "compile", path, "--target", "cuda")
    assert code == 2
    assert "unknown target 'cuda'" in err and "reference" in err
    assert out == ""


def test_compile_syntax_error_points_at_the_file(tmp_path, capsys):
    path = write(tmp_path, "bad.attn", BROKEN)
    code, out, err = run(capsys, "compile", path)
    assert code == 2
    assert err.startswith(f"{path}:")
    assert "^" in err and "Traceback" not in err


# ---------------------------------------------------------------- show


def test_show_ascii_mask_matches_independent_mask(tmp_path, capsys):
    path = write(tmp_path, "causal.attn", CAUSAL)
    sq, skv = 8, 12
    code, out, err = run(capsys, "show", path, "--sq", sq, "--skv", skv)
    assert code == 0, err
    assert "attention causal {" in out  # the IR
    assert "mask kv <=" in out
    expected = causal_mask(sq, skv)
    kept = sum(map(sum, expected))
    assert kept == 68
    assert f"{kept} of {sq * skv} pairs kept" in out
    drawing = mask_lines(out)
    assert len(drawing) == sq
    assert sum(line.count("#") for line in drawing) == kept
    assert drawing == ["".join("#" if x else "." for x in row) for row in expected]


def test_show_draws_block_boundaries(tmp_path, capsys):
    path = write(tmp_path, "blocks.attn", BLOCKS)
    code, out, err = run(capsys, "show", path, "--sq", 8, "--skv", 8)
    assert code == 0, err
    drawing = mask_lines(out)
    assert "" in drawing  # a blank line between query blocks
    rows = [line.replace(" ", "") for line in drawing if line]
    expected = [["#" if (j <= i and j // 4 == i // 4) else "." for j in range(8)] for i in range(8)]
    assert rows == ["".join(r) for r in expected]


def test_show_large_is_not_drawn(tmp_path, capsys):
    path = write(tmp_path, "causal.attn", CAUSAL)
    code, out, err = run(capsys, "show", path, "--sq", 200)
    assert code == 0, err
    assert "too large" in out
    assert f"{200 * 201 // 2} of {200 * 200} pairs kept" in out


def test_show_rejects_nonpositive_sizes(tmp_path, capsys):
    path = write(tmp_path, "causal.attn", CAUSAL)
    code, _, err = run(capsys, "show", path, "--sq", 0)
    assert code == 2 and "--sq" in err


def test_show_rejects_zero_skv(tmp_path, capsys):
    path = write(tmp_path, "causal.attn", CAUSAL)
    code, _, err = run(capsys, "show", path, "--sq", 4, "--skv", 0)
    assert code == 2 and "--skv" in err


def test_show_png_into_missing_directory(tmp_path, capsys):
    path = write(tmp_path, "causal.attn", CAUSAL)
    code, _, err = run(capsys, "show", path, "--sq", 4, "--png", tmp_path / "missing" / "m.png")
    assert code == 2 and "cannot write" in err


def read_png(data: bytes) -> tuple[int, int, list[list[int]]]:
    """Width, height and rows of an 8-bit grayscale, non-interlaced PNG (independent decoder)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF, kind
        chunks.append((kind, body))
        pos += 12 + length
    assert pos == len(data)
    assert chunks[0][0] == b"IHDR" and chunks[-1] == (b"IEND", b"")
    width, height, depth, color, compression, filt, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (depth, color, compression, filt, interlace) == (8, 0, 0, 0, 0)
    raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    assert len(raw) == height * (width + 1)
    rows = []
    for y in range(height):
        line = raw[y * (width + 1) : (y + 1) * (width + 1)]
        assert line[0] == 0  # filter type None
        rows.append(list(line[1:]))
    return width, height, rows


def test_show_png(tmp_path, capsys):
    """The annotated picture: each drawn pair, sampled at its cell's centre, has the colour of its tile class,
    darker when kept (causal at 8 x 12 with 4 x 4 tiles: full tiles below the diagonal, partial ones on it,
    skipped ones above)."""
    from attnspec.figure import PALETTE
    from attnspec.runtime.tiles import EMPTY, FULL, PARTIAL

    matplotlib_image = pytest.importorskip("matplotlib.image")
    path = write(tmp_path, "causal.attn", CAUSAL)
    png = tmp_path / "mask.png"
    sq, skv = 8, 12
    code, out, err = run(capsys, "show", path, "--sq", sq, "--skv", skv, "--block", 4, "--png", png)
    assert code == 0, err
    assert f"wrote {png}" in out and "4x4 block grid" in out
    pixels = (matplotlib_image.imread(png)[..., :3] * 255).round().astype(int)
    width, height = (int(n) for n in out.split(f"wrote {png} (")[1].split(" pixels")[0].split(" x "))
    assert pixels.shape[:2] == (height, width)
    expected = causal_mask(sq, skv)
    shift = skv - sq
    left, top, right, bottom = _cells_area(pixels)
    for i in range(sq):
        for j in range(skv):
            tq, tk = i // 4, j // 4
            lo, hi = tk * 4 - (tq * 4 + 3), tk * 4 + 3 - tq * 4  # kv - q over the tile
            kind = FULL if hi <= shift else EMPTY if lo > shift else PARTIAL
            x = int(left + (j + 0.5) * (right - left) / skv)
            y = int(top + (i + 0.5) * (bottom - top) / sq)
            assert tuple(pixels[y, x]) == PALETTE[kind][1 if expected[i][j] else 0], (i, j)


def _cells_area(pixels) -> tuple[int, int, int, int]:
    """The picture's cells: inside the axes' black frame (the darkest long line on each side)."""
    dark = (pixels.sum(-1) < 60)
    rows = [y for y in range(pixels.shape[0]) if dark[y].sum() > pixels.shape[1] // 3]
    cols = [x for x in range(pixels.shape[1]) if dark[:, x].sum() > pixels.shape[0] // 3]
    return cols[0] + 1, rows[0] + 1, cols[-1], rows[-1]


def test_show_picture_format_follows_the_suffix(tmp_path, capsys, monkeypatch):
    """.svg and .pdf are written as such; a suffix matplotlib does not write is refused before anything is
    drawn; without matplotlib, only the bare PNG."""
    pytest.importorskip("matplotlib")
    path = write(tmp_path, "causal.attn", CAUSAL)
    for suffix, magic in ((".svg", b"<?xml"), (".pdf", b"%PDF"), (".png", b"\x89PNG")):
        picture = tmp_path / f"m{suffix}"
        code, _, err = run(capsys, "show", path, "--sq", 8, "--png", picture)
        assert code == 0, err
        assert picture.read_bytes().startswith(magic)
    code, out, err = run(capsys, "show", path, "--sq", 8, "--png", tmp_path / "m.xyz")
    assert code == 2 and "'.xyz' is not a picture format attnspec writes" in err and "Traceback" not in err
    assert not (tmp_path / "m.xyz").exists() and out == ""  # refused before anything is drawn
    _without_matplotlib(monkeypatch)
    code, out, err = run(capsys, "show", path, "--sq", 8, "--png", tmp_path / "m2.svg")
    assert code == 2 and "without matplotlib" in err and "attnspec[plot]" in err and out == ""


def _without_matplotlib(monkeypatch) -> None:
    """Its imports fail, as where the plot extra is not installed."""
    for name in ("matplotlib", "matplotlib.backends", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)


def test_show_png_without_matplotlib_is_the_bare_picture(tmp_path, capsys, monkeypatch):
    """Without the plot extra, a PNG of 4 x 4 pixels per pair, kept pairs black on white."""
    _without_matplotlib(monkeypatch)
    path = write(tmp_path, "causal.attn", CAUSAL)
    png = tmp_path / "mask.png"
    sq, skv = 8, 12
    code, out, err = run(capsys, "show", path, "--sq", sq, "--skv", skv, "--png", png)
    assert code == 0, err
    assert f"wrote {png}" in out and "install attnspec[plot]" in out
    width, height, rows = read_png(png.read_bytes())
    assert (width, height) == (4 * skv, 4 * sq)
    expected = causal_mask(sq, skv)
    for y in range(height):
        assert rows[y] == [0 if expected[y // 4][x // 4] else 255 for x in range(width)], f"row {y}"


def test_show_passes_prints_each_pass(tmp_path, capsys):
    from attnspec.passes import OPTIMIZE, pipeline

    path = write(tmp_path, "w.attn", WINDOW)
    code, out, err = run(capsys, "show", path, "--sq", 4, "--passes", "-D", "window=1")
    assert code == 0, err
    names = [p.__name__ for p in pipeline({}, OPTIMIZE)]
    headers = [line for line in out.splitlines() if line.startswith("# after ")]
    assert headers == [f"# after {name}" for name in names]
    assert out.count("attention sw {") == len(names)
    drawing = mask_lines(out)
    assert drawing == ["".join("#" if abs(i - j) <= 1 else "." for j in range(4)) for i in range(4)]


def test_show_multi_spec(tmp_path, capsys):
    path = write(tmp_path, "two.attn", TWO_SPECS)
    assert run(capsys, "show", path, "--sq", 4)[0] == 2
    code, out, err = run(capsys, "show", path, "--spec", "first", "--sq", 4)
    assert code == 0, err
    assert mask_lines(out) == ["#...", "##..", "###.", "####"]


# ---------------------------------------------------------------- demo


def test_demo_small_specs(tmp_path, capsys):
    a = write(tmp_path, "causal.attn", CAUSAL)
    b = write(tmp_path, "two.attn", TWO_SPECS)
    code, out, err = run(capsys, "demo", a, b)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["spec", "target", "dtype"]
    rows = [line.split() for line in lines[1:-1]]
    assert {r[0] for r in rows} == {"causal", "first", "second"}
    assert all(r[-1] == "ok" for r in rows)
    assert {r[2] for r in rows} >= {"float32", "bfloat16"}
    assert "agree" in lines[-1]


def test_demo_without_files_outside_a_checkout(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "demo")
    assert code == 2
    assert "no .attn files" in err


def test_show_passes_named_in_order(tmp_path, capsys):
    path = write(tmp_path, "causal.attn", CAUSAL)
    code, out, _ = run(capsys, "show", path, "--sq", 4, "--passes", "fold_constants,insert_casts")
    assert code == 0
    headings = [line for line in out.splitlines() if line.startswith("# after ")]
    assert headings == ["# after bind_params", "# after fold_constants", "# after insert_casts"]


def test_show_unknown_pass_is_a_diagnostic(tmp_path, capsys):
    path = write(tmp_path, "causal.attn", CAUSAL)
    code, _, err = run(capsys, "show", path, "--passes", "inline_everything")
    assert code == 2 and "unknown pass 'inline_everything'" in err and "fold_constants" in err


def test_show_reports_tile_density(tmp_path, capsys):
    path = write(tmp_path, "causal.attn", CAUSAL)
    code, out, _ = run(capsys, "show", path, "--sq", 32, "--block", 16)
    assert code == 0
    small = next(line for line in out.splitlines() if line.startswith("# tiles 16x16 at SQ=32"))
    # 2 x 2 tiles, causal: the one above the diagonal is empty, the one below full, the diagonal partial
    assert "visited 75.0% (full 25.0%, partial 50.0%)" in small
    assert "rows never fully masked: not proved" in small  # query block 0 has no full tile
    assert "visited tiles contiguous: yes" in small
    large = next(line for line in out.splitlines() if line.startswith("# tiles 128x128 at SQ=4096"))
    assert "visited 51.6% (full 48.4%, partial 3.1%)" in large  # 32 x 32 tiles: 496 full, 32 diagonal
