"""Generated code is compared byte for byte with the snapshots under tests/snapshots (see
tests/snapshots.py): a change to the generated code of any example on any target is a visible diff,
made on purpose with `make snapshots`."""

from __future__ import annotations

import difflib

import pytest

from snapshots import UPDATE_COMMAND, cases, generate, stale

CASES = cases()


@pytest.mark.parametrize("path, spec, target, snapshot", CASES, ids=[f"{t}:{p.stem}.{s}" for p, s, t, _ in CASES])
def test_generated_module_matches_its_snapshot(path, spec, target, snapshot):
    assert snapshot.exists(), f"no snapshot {snapshot.name} for {target}; run {UPDATE_COMMAND}"
    want = snapshot.read_bytes().decode("utf-8")
    got = generate(path, spec, target)
    if got != want:
        diff = difflib.unified_diff(want.splitlines(), got.splitlines(), "snapshot", "generated", lineterm="", n=2)
        pytest.fail(f"{target} module of {path.name}:{spec} differs from its snapshot (if intended, run {UPDATE_COMMAND}):\n"
                    + "\n".join(list(diff)[:80]))


def test_no_snapshot_is_stale():
    assert stale() == [], f"snapshots of specs or targets that no longer exist; run {UPDATE_COMMAND}"


def test_every_target_of_every_example_has_a_snapshot():
    from attnspec.codegen import TARGETS

    assert {target for _, _, target, _ in CASES} == set(TARGETS)
    assert len(CASES) >= 3 * 30
