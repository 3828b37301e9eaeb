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

REPO = Path(__file__).resolve().parent.parent
GOLDEN_DIR = REPO / "tests" / "golden" / "errors"
CASES = sorted(GOLDEN_DIR.glob("*.attn"))
REGEN = os.environ.get("ATTNSPEC_REGEN_GOLDEN") == "1"
MIN_CASES = 30

# Goldens whose .expected file states the intended output while the compiler still prints something
# worse (see the report that came with these tests). Strict: once the compiler is fixed the case
# XPASSes and fails, so remove it from this table then. Regeneration never overwrites these.
KNOWN_BAD: dict[str, str] = {}


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
    mistakes = [path.read_text(encoding="utf-8").splitlines()[0] for path in CASES]
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
    source_lines = path.read_text(encoding="utf-8").split("\n")
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
    assert err.count("error: cannot read ") == 2
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
