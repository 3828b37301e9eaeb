"""docs/guide.md's command listings are what the commands print: every `$ attnspec ...` of the guide runs
(on the guide's own local_bias.attn and the examples), and its output starts with the lines the guide
shows (a listing may stop early). The error columns of `demo`'s table are not compared (they depend on
the machine's arithmetic); its spec, target, dtype and verdict are."""

from __future__ import annotations

import os
import re
import shutil
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GUIDE = (ROOT / "docs" / "guide.md").read_text()
BLOCKS = re.findall(r"```\n(.*?)```", GUIDE, re.S)
SESSIONS = [b for b in BLOCKS if b.startswith("$ attnspec ")]
ROW = re.compile(r"^(\S+)\s+(reference|flex|triton)\s+(float32|bfloat16|float16)\s+\S+\s+\S+\s+(ok|FAIL)$")


def _commands(block: str) -> list[tuple[str, list[str]]]:
    """(command, the lines the guide shows after it) for each `$ ` line of a block."""
    found = []
    for line in block.rstrip("\n").splitlines():
        if line.startswith("$ "):
            found.append((line[2:], []))
        else:
            found[-1][1].append(line.rstrip())
    return found


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """The guide's files: local_bias.attn (section 1), typo.attn (`window` misspelt on line 7) and the examples."""
    work = tmp_path_factory.mktemp("guide")
    spec = next(b for b in BLOCKS if "attention local_bias {" in b and not b.startswith("$"))
    (work / "local_bias.attn").write_text(spec)
    lines = spec.splitlines()
    lines[6] = lines[6].replace("window", "windw")
    (work / "typo.attn").write_text("\n".join(lines) + "\n")
    for path in (ROOT / "examples").glob("*.attn"):
        shutil.copy(path, work / path.name)
    return work


def _same(expected: str, got: str) -> bool:
    row = ROW.match(expected)
    if row:
        theirs = ROW.match(got)
        return theirs is not None and theirs.group(1, 2, 3, 4) == row.group(1, 2, 3, 4)
    return expected == got


@pytest.mark.parametrize("block", SESSIONS, ids=lambda b: " ".join(b.splitlines()[0].split()[1:4]))
def test_every_listing_of_the_guide_is_what_the_command_prints(block, workdir):
    assert len(SESSIONS) >= 6
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TRITON_INTERPRET": "1", "NO_COLOR": "1",
           "PYTHONPATH": str(ROOT), "COLUMNS": "100"}
    code = None
    for command, expected in _commands(block):
        if command == "echo $?":
            assert [str(code)] == expected, block
            continue
        argv = shlex.split(command)
        assert argv[0] == "attnspec"
        done = subprocess.run([sys.executable, "-m", "attnspec", *argv[1:]], cwd=workdir, env=env, timeout=900,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        code = done.returncode
        got = [line.rstrip() for line in done.stdout.splitlines()]
        shown = [line for line in expected if line != "..."]
        assert len(got) >= len(shown), f"{command}\n--- printed:\n{done.stdout}"
        mismatch = [(e, g) for e, g in zip(shown, got) if not _same(e, g)]
        assert not mismatch, f"{command}: first difference {mismatch[0]}\n--- printed:\n{done.stdout}"
