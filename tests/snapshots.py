"""Snapshots of generated code: the module of every example spec for every target, stored under
tests/snapshots/<target>/<file stem>.<spec>.py and compared byte for byte by tests/test_snapshots.py,
so that a change to a template, a renderer or a pass shows up as a readable diff of generated code.

    python tests/snapshots.py        # rewrite every snapshot (make snapshots), then review `git diff`
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SNAPSHOTS = HERE / "snapshots"
EXAMPLES = REPO / "examples"
UPDATE_COMMAND = "make snapshots (python tests/snapshots.py)"


def cases() -> list[tuple[Path, str, str, Path]]:
    """(example file, spec name, target, snapshot path) for every spec of every example and target."""
    from attnspec.api import load_program
    from attnspec.codegen import TARGETS

    found = []
    for path in sorted(EXAMPLES.glob("*.attn")):
        for spec in load_program(path).specs:
            found += [(path, spec.name, target, SNAPSHOTS / target / f"{path.stem}.{spec.name}.py") for target in TARGETS]
    return found


def generate(path: Path, spec: str, target: str) -> str:
    """The module `attnspec compile PATH --target TARGET --spec SPEC` prints, or, where the target
    refuses the spec, the diagnostic it prints, as comment lines."""
    from attnspec.api import compile_source
    from attnspec.diagnostics import AttnError

    try:
        return compile_source(path, target, spec)
    except AttnError as err:
        text = err.render().replace(str(path), path.name)  # the same on every checkout
        return "".join(f"# {line}".rstrip() + "\n" for line in text.splitlines())


def stale() -> list[Path]:
    """Snapshot files that no example spec and target produce any more."""
    wanted = {snapshot for *_, snapshot in cases()}
    return sorted(p for p in SNAPSHOTS.glob("*/*.py") if p not in wanted)


def update() -> int:
    changed = 0
    for path, spec, target, snapshot in cases():
        text = generate(path, spec, target)
        if not snapshot.exists() or snapshot.read_bytes() != text.encode("utf-8"):
            snapshot.parent.mkdir(parents=True, exist_ok=True)
            snapshot.write_bytes(text.encode("utf-8"))
            changed += 1
    for old in stale():
        old.unlink()
        changed += 1
    print(f"{changed} snapshot file(s) written or removed under {SNAPSHOTS.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(update())
