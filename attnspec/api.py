"""The Python API: text or path -> verified, lowered Spec -> generated source -> loaded module."""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType

from .diagnostics import AttnError, Source, decode_source
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


def lower(spec: Spec, consts: dict[str, object] | None = None, trace=None, passes=None) -> Spec:
    """Run the pass pipeline (default: the standard one) with verification after each pass."""
    return run_passes(spec, pipeline(consts, passes), trace=trace)


def compile_source(path_or_source, target: str = "reference", spec: str | None = None, *, consts: dict | None = None, **more_consts) -> str:
    """The generated module source for one spec of a file.

    Compile-time params are given as keyword arguments, or in `consts` for names that clash
    with this function's own arguments (a param called `target`, say).
    """
    lowered, source_name = _lowered(path_or_source, target, spec, {**(consts or {}), **more_consts})
    return _generate(lowered, target, source_name)


def compile(path_or_source, target: str = "reference", spec: str | None = None, *, cache: bool = True, consts: dict | None = None, **more_consts) -> ModuleType:
    """Compile one spec to `target` and return the loaded module (cached on disk).

    Compile-time params are keyword arguments (`window=256`), or `consts={...}`.
    """
    consts = {**(consts or {}), **more_consts}
    text, name = _read(path_or_source)
    return compile_text(text, name, target, spec, consts, cache=cache)


def compile_text(text: str, name: str, target: str, spec: str | None, consts: dict, *, cache: bool = True) -> ModuleType:
    """compile() of a file's text, already read (name: its file name). The module keeps these arguments
    as the recipe its nn.Module pickles by (runtime/pickling.py)."""
    from .runtime import loader, pickling

    recipe = (text, name, target, spec, dict(consts))
    if not cache:
        lowered, source_name = _lowered(text, target, spec, consts, name)
        return pickling.remember(build_module(lowered, target, source_name, cache=False), recipe)

    def generate() -> str:
        lowered, source_name = _lowered(text, target, spec, consts, name)
        return _generate(lowered, target, source_name)

    indexed = loader.source_key(text, Path(name).name, spec, target, consts)
    key = loader.lookup(indexed)
    if key is not None:  # the module this very text compiled to: no parsing or lowering (unless it vanished)
        return pickling.remember(loader.load_module(key, generate), recipe)
    lowered, source_name = _lowered(text, target, spec, consts, name)
    key = module_key(lowered, target, source_name)
    module = loader.load_module(key, lambda: _generate(lowered, target, source_name))
    loader.remember(indexed, key)
    return pickling.remember(module, recipe)


def build_module(lowered: Spec, target: str, source_name: str, *, cache: bool = True) -> ModuleType:
    """The loaded module of a lowered spec, generated only on a cache miss."""
    from .runtime.loader import load_module

    key = module_key(lowered, target, source_name)
    return load_module(key, lambda: _generate(lowered, target, source_name), cache=cache)


def module_key(lowered: Spec, target: str, source_name: str) -> str:
    """The cache key of a lowered spec's module: its normalized IR, target and source name."""
    from .printer import print_spec
    from .runtime.loader import cache_key

    return cache_key(print_spec(lowered) + _constant_names(lowered), target, source_name)


def _constant_names(lowered: Spec) -> str:
    """Which constants came from which compile-time params: the generated code names them, the
    printed IR shows their values."""
    from .ir import spec_exprs, walk

    named = sorted({(n.name, repr(n.value)) for e in spec_exprs(lowered) for n in walk(e) if n.op == "const" and n.name})
    return "\n# named constants: " + repr(named)


def _lowered(path_or_source, target: str, spec: str | None, consts: dict, name: str | None = None) -> tuple[Spec, str]:
    """The spec lowered for the target, and its source's file name. With `name`, path_or_source is the
    text of the file of that name, already read."""
    from .codegen import TARGETS

    if target not in TARGETS:
        raise AttnError(f"unknown target '{target}'", hint="targets: " + ", ".join(TARGETS))
    from .codegen import passes_for

    program = verify_program(parse_program(path_or_source, name)) if name is not None else load_program(path_or_source)
    return lower(pick_spec(program, spec), consts, passes=passes_for(target)), Path(program.source_name).name


def _generate(lowered: Spec, target: str, source_name: str) -> str:
    from .codegen import generator

    return generator(target)(lowered, source_name)


def read_source(path: str | os.PathLike) -> Source:
    """The one place that reads a .attn file: missing, unreadable and non-UTF-8 files are AttnErrors."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise AttnError(f"no such file: {path}") from None
    except OSError as err:
        raise AttnError(f"cannot read {path}: {err}") from None
    return decode_source(str(path), data)


def _read(path_or_source) -> tuple[str, str]:
    if isinstance(path_or_source, os.PathLike) or _looks_like_path(path_or_source):
        source = read_source(path_or_source)
        return source.text, source.name
    if not isinstance(path_or_source, str):
        raise TypeError("attnspec.compile takes a path or the text of a .attn file")
    return path_or_source, "<string>"


def _looks_like_path(text) -> bool:
    if not isinstance(text, str) or "{" in text or "\n" in text:
        return False
    return text.strip().endswith(".attn") or os.path.exists(text)
