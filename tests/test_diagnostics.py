"""Golden tests for user mistakes: every one is `file.attn:LINE:COL: error: message`, the source line,
carets under the span and a hint where one helps; the CLI exits with status 2 and no traceback.

Each `tests/golden/errors/NAME.attn` holds ONE mistake (its first line says which) and
`NAME.expected` is exactly what the CLI prints to stderr for it, with the path as given on the
command line. Files named `compile_*` are run with `attnspec compile`, the others with
`attnspec check`.

Regenerate the goldens after an intended change of wording with

    ATTNSPEC_REGEN_GOLDEN=1 .venv/bin/python -m pytest tests/test_diagnostics.py

and review every changed .expected file by eye (message, carets, hint) before committing.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

import attnspec
from attnspec import cli
from attnspec.expressions import BUILTIN_SPELLINGS

REPO = Path(__file__).resolve().parent.parent
GOLDEN_DIR = REPO / "tests" / "golden" / "errors"
CASES = sorted(GOLDEN_DIR.glob("*.attn"))
REGEN = os.environ.get("ATTNSPEC_REGEN_GOLDEN") == "1"
MIN_CASES = 30

# Goldens whose .expected file states the intended output while the compiler still prints something
# worse (see the report that came with these tests). Strict: once the compiler is fixed the case
# XPASSes and fails, so remove it from this table then. Regeneration never overwrites these.
KNOWN_BAD: dict[str, str] = {}


def _source_text(path: Path) -> str:
    """A golden's text as the diagnostics show it (not_utf8.attn holds a byte that is not UTF-8)."""
    return path.read_bytes().decode("utf-8", errors="replace")


def _rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def _command(path: Path) -> str:
    return "compile" if path.stem.startswith("compile_") else "check"


def _case_params():
    params = []
    for path in CASES:
        marks = []
        if path.stem in KNOWN_BAD:
            marks.append(pytest.mark.xfail(reason=KNOWN_BAD[path.stem], strict=True))
        params.append(pytest.param(path, id=path.stem, marks=marks))
    return params


@pytest.fixture
def in_repo(monkeypatch):
    """Run from the repository root, so paths print as tests/golden/errors/NAME.attn."""
    monkeypatch.chdir(REPO)
    monkeypatch.delenv("ATTNSPEC_TRACEBACK", raising=False)


def _run_cli(capsys, argv: list[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    status = cli.main(argv)
    out, err = capsys.readouterr()
    return status, out, err


# ---------------------------------------------------------------- the golden files themselves


def test_enough_distinct_goldens():
    assert len(CASES) >= MIN_CASES
    mistakes = [_source_text(path).splitlines()[0] for path in CASES]
    assert all(m.startswith("# mistake: ") for m in mistakes), "each golden starts with '# mistake: ...'"
    assert len(set(mistakes)) == len(mistakes), "each golden describes a different mistake"


def test_every_golden_has_its_expected_file_and_nothing_else():
    attn = {p.stem for p in CASES}
    expected = {p.stem for p in GOLDEN_DIR.glob("*.expected")}
    assert expected == attn
    assert set(KNOWN_BAD) <= attn
    others = {p.name for p in GOLDEN_DIR.iterdir()} - {f"{n}.attn" for n in attn} - {f"{n}.expected" for n in attn}
    assert not others


# ---------------------------------------------------------------- CLI against the goldens


@pytest.mark.parametrize("path", _case_params())
def test_cli_golden(path: Path, capsys, in_repo):
    status, out, err = _run_cli(capsys, [_command(path), _rel(path)])
    expected_path = path.with_suffix(".expected")
    if REGEN and path.stem not in KNOWN_BAD:
        expected_path.write_text(err, encoding="utf-8")
    assert "Traceback" not in out + err
    assert status == cli.EXIT_INPUT
    assert out == ""
    assert err == expected_path.read_text(encoding="utf-8")


@pytest.mark.parametrize("path", [pytest.param(p, id=p.stem) for p in CASES])
def test_expected_file_has_the_diagnostic_shape(path: Path):
    """file:LINE:COL: error: message / the source line / carets starting at COL / optional hint."""
    lines = path.with_suffix(".expected").read_text(encoding="utf-8").split("\n")
    assert lines[-1] == "", "ends with one newline"
    lines = lines[:-1]
    head = re.fullmatch(re.escape(_rel(path)) + r":(\d+):(\d+): error: (\S.*)", lines[0])
    assert head, lines[0]
    line, col = int(head[1]), int(head[2])
    source_lines = _source_text(path).split("\n")
    assert lines[1] == "    " + source_lines[line - 1]
    caret = re.fullmatch(r"    ([ \t]*)(\^+)", lines[2])
    assert caret, lines[2]
    assert len(caret[1]) == col - 1
    if len(lines) == 4:
        assert lines[3].startswith("hint: ") and len(lines[3]) > len("hint: ")
    else:
        assert len(lines) == 3


# ---------------------------------------------------------------- the Python API raises AttnError


@pytest.mark.parametrize("path", _case_params())
def test_api_raises_attn_error(path: Path, in_repo):
    with pytest.raises(attnspec.AttnError) as info:
        attnspec.compile_source(Path(_rel(path)))
    assert type(info.value) is attnspec.AttnError
    assert str(info.value) + "\n" == path.with_suffix(".expected").read_text(encoding="utf-8")


# ---------------------------------------------------------------- more CLI behaviour


GOOD = "attention good_causal {\n    mask kv <= q\n}\n"


def test_check_good_and_bad_together(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "good.attn").write_text(GOOD, encoding="utf-8")
    bad = GOLDEN_DIR / "undefined_name.attn"
    (tmp_path / "bad.attn").write_text(bad.read_text(encoding="utf-8"), encoding="utf-8")
    status, out, err = _run_cli(capsys, ["check", "bad.attn", "good.attn"])
    assert status == 2
    assert out == "good.attn: ok (good_causal)\n"
    assert err.startswith("bad.attn:4:25: error: undefined name 'widow'\n")
    assert "Traceback" not in out + err


@pytest.mark.parametrize("command", ["check", "compile", "show"])
def test_nonexistent_file_is_a_clean_error(tmp_path, capsys, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    status, out, err = _run_cli(capsys, [command, "missing.attn"])
    assert status == 2
    assert out == ""
    assert err == "error: no such file: missing.attn\n"


def test_nonexistent_file_api(tmp_path):
    with pytest.raises(attnspec.AttnError, match="no such file"):
        attnspec.compile_source(tmp_path / "missing.attn")


def test_directory_and_binary_files_are_clean_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dir.attn").mkdir()
    (tmp_path / "binary.attn").write_bytes(b"\xff\xfe\x00attention")
    status, out, err = _run_cli(capsys, ["check", "dir.attn", "binary.attn"])
    assert status == 2
    assert err.count("error: cannot read ") == 1
    assert "binary.attn:1:1: error: the file is not valid UTF-8: byte 0xff does not start a valid character\n" in err
    assert "hint: the file looks like UTF-16; save it as UTF-8" in err
    assert "Traceback" not in err


def test_traceback_env_reraises_from_compile(monkeypatch, in_repo):
    monkeypatch.setenv("ATTNSPEC_TRACEBACK", "1")
    with pytest.raises(attnspec.AttnError, match="undefined name 'widow'"):
        cli.main(["compile", _rel(GOLDEN_DIR / "undefined_name.attn")])


def test_traceback_env_reraises_from_check(monkeypatch, in_repo):
    monkeypatch.setenv("ATTNSPEC_TRACEBACK", "1")
    with pytest.raises(attnspec.AttnError, match="undefined name 'widow'"):
        cli.main(["check", _rel(GOLDEN_DIR / "undefined_name.attn")])


def test_without_traceback_env_nothing_is_raised(capsys, in_repo):
    status, _, err = _run_cli(capsys, ["compile", _rel(GOLDEN_DIR / "undefined_name.attn")])
    assert status == 2 and "Traceback" not in err


# ---------------------------------------------------------------- rendering details


def _error_for(text: str) -> str:
    with pytest.raises(attnspec.AttnError) as info:
        attnspec.load_program(text)
    return str(info.value)


def test_tabs_keep_carets_aligned():
    text = "attention a {\n\tparam w: int = 3\n\tmask abs(q - kv) <= ww\n}\n"
    assert _error_for(text).split("\n")[1:3] == ["    \tmask abs(q - kv) <= ww", "    \t                    ^^"]


def test_crlf_line_endings():
    text = "attention a {\r\n    mask kv <= qq\r\n}\r\n"
    assert _error_for(text).split("\n")[:3] == [
        "<string>:2:16: error: undefined name 'qq'",
        "        mask kv <= qq",
        "                   ^^",
    ]


@pytest.mark.parametrize("odd", ["\x0c", "\x1c", "\u2028", "\x85"])
def test_odd_line_breaks_in_a_comment_do_not_shift_the_shown_line(odd):
    text = f"# a comment with a{odd}in it\nattention a {{\n    mask kv <= qq\n}}\n"
    assert _error_for(text).split("\n")[:2] == ["<string>:3:16: error: undefined name 'qq'", "        mask kv <= qq"]


def test_utf8_bom_is_accepted(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bom.attn").write_bytes(b"\xef\xbb\xbf" + GOOD.encode())
    status, out, err = _run_cli(capsys, ["check", "bom.attn"])
    assert (status, out, err) == (0, "bom.attn: ok (good_causal)\n", "")


def test_message_without_span_has_no_location(capsys, in_repo):
    status, _, err = _run_cli(capsys, ["compile", "--target", "nope", _rel(GOLDEN_DIR / "undefined_name.attn")])
    assert status == 2
    assert err.startswith("error: unknown target 'nope'\nhint: targets: ")


# ---------------------------------------------------------------- files that are not UTF-8

LATIN1 = b"attention cafe {\n    mask kv <= q  # caf\xe9\n}\n"
LATIN1_ERROR = (
    "latin1.attn:2:24: error: the file is not valid UTF-8: byte 0xe9 does not start a valid character\n"
    "        mask kv <= q  # caf\ufffd\n"
    "                           ^\n"
    "hint: save the file as UTF-8 (for example: iconv -f latin1 -t utf-8); outside comments a spec is plain ASCII\n"
)


@pytest.mark.parametrize("command", ["check", "compile", "show", "demo", "fuzz"])
def test_non_utf8_file_is_located_by_every_command(command, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ATTNSPEC_TRACEBACK", raising=False)
    (tmp_path / "latin1.attn").write_bytes(LATIN1)
    status, out, err = _run_cli(capsys, [command, "latin1.attn"])
    assert (status, err) == (2, LATIN1_ERROR)


@pytest.mark.parametrize("entry", ["load_program", "compile_source", "compile"])
def test_non_utf8_file_is_located_by_the_api(entry, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "latin1.attn").write_bytes(LATIN1)
    for path in (Path("latin1.attn"), "latin1.attn"):
        with pytest.raises(attnspec.AttnError) as info:
            getattr(attnspec, entry)(path)
        assert str(info.value) + "\n" == LATIN1_ERROR


@pytest.mark.parametrize(
    "data, where, shown",
    [
        (b"\xf2attention a {}\n", "1:1", "\ufffdattention a {}"),  # the defect report's byte 0xf2
        ("# \u00e9t\u00e9 \u2192 ok\n# \xff\n".encode("utf-8").replace(b"\xc3\xbf", b"\xff"), "2:3", "# \ufffd"),
        ("# \u00e9\u00e9 \xff".encode("utf-8").replace(b"\xc3\xbf", b"\xff"), "1:6", "# \u00e9\u00e9 \ufffd"),
        (b"attention a {\n\tmask kv <= q \xe2\x82", "2:15", "\tmask kv <= q \ufffd"),  # cut inside a character
        (b"\xef\xbb\xbfattention a { # \x80\n}\n", "1:17", "attention a { # \ufffd"),  # after a BOM
    ],
)
def test_non_utf8_byte_location_counts_characters(data, where, shown, tmp_path):
    (tmp_path / "f.attn").write_bytes(data)
    lines = _error_for(tmp_path / "f.attn").split("\n")
    line, col = (int(n) for n in where.split(":"))
    assert lines[0].startswith(f"{tmp_path / 'f.attn'}:{where}: error: the file is not valid UTF-8: byte 0x")
    assert lines[1] == "    " + shown
    assert lines[2] == "    " + "".join("\t" if c == "\t" else " " for c in shown[: col - 1]) + "^"


def test_valid_utf8_in_comments_is_accepted(tmp_path):
    (tmp_path / "ok.attn").write_text("# caf\u00e9 \u2192 causal\nattention a {\n    mask kv <= q  # \u00e9\n}\n", encoding="utf-8")
    assert [s.name for s in attnspec.load_program(tmp_path / "ok.attn").specs] == ["a"]


# ---------------------------------------------------------------- constants checked at check time


def _check_error(capsys, tmp_path, monkeypatch, text: str, *consts: str) -> str:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.attn").write_text(text, encoding="utf-8")
    status, out, err = _run_cli(capsys, ["check", *consts, "s.attn"])
    assert status == (2 if err else 0) and "Traceback" not in err
    return err


SELECT = "attention s {{\n    param bs: int = 16\n    select blocks(q = {}, kv = 16) top(2) by dot(mean(q), mean(k))\n}}\n"


@pytest.mark.parametrize("size", ["65536", "bs * 4096"])
def test_largest_block_size_passes(size, capsys, tmp_path, monkeypatch):
    assert _check_error(capsys, tmp_path, monkeypatch, SELECT.format(size)) == ""


@pytest.mark.parametrize(
    "size, consts, got",
    [("65537", [], "65537"), ("4611686018427387904", [], "4611686018427387904"), ("bs * 8192", [], "131072"),
     ("bs", ["-D", "bs=4611686018427387904"], "4611686018427387904")],
)
def test_huge_block_size_is_a_located_check_error(size, consts, got, capsys, tmp_path, monkeypatch):
    err = _check_error(capsys, tmp_path, monkeypatch, SELECT.format(size), *consts)
    lines = err.split("\n")
    assert lines[0] == f"s.attn:3:23: error: a block size must be at most 65536, got {got}"
    assert lines[2] == "    " + " " * 22 + "^" * len(size)
    assert lines[3].startswith("hint: a block size is a positive integer of at most 65536")


def test_huge_block_size_is_rejected_by_the_api():
    with pytest.raises(attnspec.AttnError, match="a block size must be at most 65536"):
        attnspec.compile_source(SELECT.format("bs"), "flex", bs=2**62)


INPUT = "attention s {{\n    param r: int = 2\n    input x: float32[{}]\n    score = score + x[0]\n}}\n"


@pytest.mark.parametrize("dim, got", [("-1", "-1"), ("r - 5", "-3"), ("-(r * r)", "-4")])
def test_negative_constant_input_dimension_is_a_located_check_error(dim, got, capsys, tmp_path, monkeypatch):
    err = _check_error(capsys, tmp_path, monkeypatch, INPUT.format(dim))
    lines = err.split("\n")
    assert lines[0] == f"s.attn:3:22: error: a dimension of input 'x' cannot be negative, got {got}"
    assert lines[2] == "    " + " " * 21 + "^" * len(dim)
    assert lines[3].startswith("hint: a dimension is a size >= 0")


@pytest.mark.parametrize("dim", ["0", "r - 2", "SQ - 5000", "4 * r + 1"])
def test_nonnegative_or_run_time_dimensions_pass(dim, capsys, tmp_path, monkeypatch):
    assert _check_error(capsys, tmp_path, monkeypatch, INPUT.format(dim)) == ""


# ---------------------------------------------------------------- pooling something other than q or k


@pytest.mark.parametrize(
    "score, reduction, caret",
    [("dot(mean(q + 1), mean(k))", "mean", "q + 1"), ("dot(max(q * 2), min(k))", "max", "q * 2"),
     ("dot(mean(q), min(2 * k))", "min", "2 * k"), ("dot(mean(v), mean(k))", "mean", "v"),
     ("dot(mean(q, k), mean(k))", "mean", "mean(q, k)")],
)
def test_pooling_an_expression_says_pool_the_bare_tensor(score, reduction, caret):
    text = f"attention s {{\n    select blocks(q = 16, kv = 16) top(2) by {score}\n}}\n"
    head, line, carets, hint = _error_for(text).split("\n")
    col = line.rindex(caret) - 4 + 1
    assert head == f"<string>:2:{col}: error: {reduction}(...) pools only the bare tensor q or k, or a per-row value"
    assert carets == "    " + " " * (col - 1) + "^" * len(caret)
    assert hint.startswith(f"hint: write {reduction}(q) or {reduction}(k), then compute on the vectors")


def test_one_argument_max_outside_a_select_score_is_still_an_arity_error():
    text = "attention s {\n    score = max(score)\n}\n"
    assert _error_for(text).split("\n")[0] == "<string>:2:13: error: 'max' takes 2 argument(s), got 1"


def test_mean_of_an_expression_outside_a_select_score_points_at_select():
    lines = _error_for("attention s {\n    score = mean(score)\n}\n").split("\n")
    assert lines[0] == "<string>:2:18: error: mean(...) pools only the bare tensor q or k, or a per-row value"
    assert lines[3].startswith("hint: pooling exists only in a select score")


# ---------------------------------------------------------------- usual spellings of the built-ins


@pytest.mark.parametrize("alias", sorted(BUILTIN_SPELLINGS))
def test_usual_spelling_of_a_builtin_suggests_the_language_name(alias):
    builtin, role = BUILTIN_SPELLINGS[alias]
    use = f"{alias} == 0" if builtin not in ("q_block", "kv_block") else "true"
    rule = f"{alias} <= 0" if builtin in ("q_block", "kv_block") else "true"
    text = f"attention s {{\n    mask {use}\n    select blocks(q = 16, kv = 16) keep {rule}\n}}\n"
    lines = _error_for(text).split("\n")
    assert lines[0].endswith(f"error: undefined name '{alias}'")
    assert lines[3] == f"hint: did you mean '{builtin}'? {role} is called {builtin}"


def test_builtin_spellings_name_real_builtins_and_are_free_names():
    from attnspec import builtins as bi

    names = set(bi.INDEX_VARS + bi.BLOCK_VARS + bi.SHAPE_SYMBOLS)
    assert {builtin for builtin, _ in BUILTIN_SPELLINGS.values()} <= names
    assert not set(BUILTIN_SPELLINGS) & names


def test_a_declared_name_with_a_usual_spelling_is_just_a_name():
    text = "attention s {\n    param i: int = 3\n    mask kv <= q + i\n}\n"
    assert [s.name for s in attnspec.load_program(text).specs] == ["s"]
