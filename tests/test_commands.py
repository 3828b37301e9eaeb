"""Every command on every example, as a user runs them: `check`, `show`, `compile` to every target and
`demo` end with exit status 0 (or 2, a reported error about the input), never a Python traceback or a
crashed process. One process per example, so that a crash (a signal) is pinned to its example."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from attnspec.codegen import TARGETS
from conftest import REPO, example_files

# Runs the commands of one example in one process (torch is imported once) and prints one JSON line
# per command; an exception that escapes the CLI ends the process with its traceback on stderr.
DRIVER = """
import contextlib, io, json, sys
from attnspec.cli import main

path, out_dir, targets = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
commands = [["check", path], ["show", path], ["show", path, "--sq", "300", "--png", out_dir + "/mask.png"]]
commands += [["compile", path, "--target", t, "-o", f"{out_dir}/{t}.py"] for t in targets]
commands += [["demo", path]]
for argv in commands:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main(argv)
        except SystemExit as exit:
            status = exit.code
    print(json.dumps({"argv": argv, "status": status, "stdout": out.getvalue()[-3000:], "stderr": err.getvalue()[-3000:]}), flush=True)
"""


def _multi_spec(path) -> bool:
    from attnspec.api import load_program

    return len(load_program(path).specs) > 1


@pytest.mark.parametrize("path", example_files(), ids=lambda p: p.stem)
def test_every_command_on_the_example(path, tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNSPEC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("ATTNSPEC_TRACEBACK", raising=False)
    argv = [sys.executable, "-c", DRIVER, str(path), str(tmp_path), ",".join(TARGETS)]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=900)
    assert done.returncode == 0, f"the process ended with {done.returncode}:\n{done.stderr[-4000:]}"
    results = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(results) == 4 + len(TARGETS)
    for result in results:
        command = " ".join(result["argv"][:1] + result["argv"][2:])
        assert result["status"] in (0, 2), f"attnspec {command}: exit {result['status']}\n{result['stdout']}\n{result['stderr']}"
        assert "Traceback" not in result["stdout"] + result["stderr"], f"attnspec {command}:\n{result['stderr']}"
        if result["status"] == 2:  # an error about the input names its place, or says which spec to pick
            assert result["stderr"].startswith(("error:", str(path.relative_to(REPO)), str(path))), result["stderr"]
    by_command = {r["argv"][0]: r for r in results}
    if not _multi_spec(path):  # a file of several specs needs --spec for show and compile
        assert all(r["status"] == 0 for r in results), [(r["argv"], r["stderr"]) for r in results if r["status"]]
    assert by_command["check"]["status"] == 0 and by_command["demo"]["status"] == 0
