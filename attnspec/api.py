"""The Python API: text or path -> verified, lowered Spec -> generated source -> loaded module."""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType

from .diagnostics import AttnError
from .frontend import parse_program
from .ir import Program, Spec
from .passes import pipeline, run_passes
from .verify import verify_program


def load_program(path_or_source: str | os.PathLike) -> Program:
    """Parse and verify a .attn file (a path) or .attn text."""
    text, name = _read(path_or_source)
    return verify_program(parse_program(text, name))


def pick_spec(program: Program, spec: str | None) -> Spec:
    names = [s.name for s in program.specs]
    if not names:
        raise AttnError(f"{program.source_name}: no 'attention' spec in this file")
    if spec is None:
        if len(names) > 1:
            raise AttnError(
                f"{program.source_name} defines {len(names)} specs: {', '.join(names)}",
                hint="choose one with spec=NAME (or --spec NAME)",
            )
        return program.specs[0]
    found = program.spec(spec)
    if found is None:
        raise AttnError(f"{program.source_name} has no spec '{spec}'", hint="specs in this file: " + ", ".join(names))
    return found


def lower(spec: Spec, consts: dict[str, object] | None = None, trace=None) -> Spec:
    """Run the standard pass pipeline (specialization, folding, casts) with verification."""
    return run_passes(spec, pipeline(consts), trace=trace)


def compile_source(path_or_source, target: str = "reference", spec: str | None = None, **consts) -> str:
    """The generated module source for one spec of a file."""
    from .codegen import TARGETS, generator

    if target not in TARGETS:
        raise AttnError(f"unknown target '{target}'", hint="targets: " + ", ".join(TARGETS))
    program = load_program(path_or_source)
    lowered = lower(pick_spec(program, spec), consts)
    return generator(target)(lowered, Path(program.source_name).name)


def compile(path_or_source, target: str = "reference", spec: str | None = None, *, cache: bool = True, **consts) -> ModuleType:
    """Compile one spec to `target` and return the loaded module (cached on disk)."""
    from .runtime.loader import load_module

    source = compile_source(path_or_source, target, spec, **consts)
    return load_module(source, cache=cache)


def _read(path_or_source) -> tuple[str, str]:
    if isinstance(path_or_source, os.PathLike) or (
        isinstance(path_or_source, str) and "{" not in path_or_source and path_or_source.strip().endswith(".attn")
    ):
        path = Path(path_or_source)
        try:
            return path.read_text(encoding="utf-8"), str(path)
        except FileNotFoundError:
            raise AttnError(f"no such file: {path}") from None
        except (OSError, UnicodeDecodeError) as err:
            raise AttnError(f"cannot read {path}: {err}") from None
    if not isinstance(path_or_source, str):
        raise TypeError("attnspec.compile takes a path or the text of a .attn file")
    return path_or_source, "<string>"
