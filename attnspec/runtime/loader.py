"""Load generated modules through an on-disk cache that is safe for concurrent compiles.

The key hashes the normalized IR (its canonical printed form), the target, the source name
that the module header cites, and the versions of attnspec and torch. A cached file ends with
a digest line of its own content, so a truncated or corrupted file is regenerated, never
imported. Files are published atomically (write to a temp file, then rename).

Two shortcuts make a cached load cheap:
- an index from the spec's text (with its source name, spec, target, compile-time params, versions and
  a digest of every file of the compiler) to the module's key, so that a hit neither parses nor
  lowers the spec (`source_key`, `lookup`, `remember`);
- the module's compiled bytecode beside it (`<key>.code`, tagged with the interpreter's magic number and
  the source's digest), whatever PYTHONDONTWRITEBYTECODE says, so that an import does not recompile it.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import marshal
import os
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Callable

from attnspec import __version__
from attnspec.diagnostics import AttnError

_DIGEST_PREFIX = "# attnspec-digest: "
_loaded: dict[str, ModuleType] = {}


def cache_dir() -> Path:
    root = os.environ.get("ATTNSPEC_CACHE_DIR")
    if root:
        return Path(root)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "attnspec"


def cache_key(normalized_ir: str, target: str, source_name: str) -> str:
    import torch

    digest = hashlib.sha256()
    for part in (normalized_ir, target, source_name, __version__, torch.__version__, _generator_digest()):
        digest.update(part.encode())
        digest.update(b"\0")
    return f"{target}_{digest.hexdigest()[:24]}"


def source_key(text: str, source_name: str, spec: str | None, target: str, consts: dict) -> str:
    """The index key of a spec's text: everything that decides which module it compiles to."""
    import torch

    digest = hashlib.sha256()
    parts = (text, source_name, spec or "", target, repr(sorted((k, repr(v)) for k, v in consts.items())),
             __version__, torch.__version__, _compiler_digest())
    for part in parts:
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:32]


def lookup(source_key_: str) -> str | None:
    """The module key the index holds for this text, where that module is cached and intact."""
    try:
        key = (cache_dir() / "index" / source_key_).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return key if key.isidentifier() and _valid(cache_dir() / f"{key}.py") else None


def remember(source_key_: str, key: str) -> None:
    """Index a text's module key (best effort: an unwritable cache only loses the shortcut)."""
    try:
        _publish(cache_dir() / "index" / source_key_, key + "\n")
    except OSError:
        pass


@functools.lru_cache(maxsize=1)
def _compiler_digest() -> str:
    """A hash of every file of the compiler (the attnspec package with its grammar, code generators and
    templates), so that any edit invalidates the text index."""
    import attnspec
    from attnspec import codegen, grammar, templates

    digest = hashlib.sha256()
    for root in sorted({Path(m.__file__).resolve().parent for m in (attnspec, codegen, grammar, templates)}):
        for path in sorted(root.rglob("*")):
            if path.suffix in (".py", ".jinja", ".lark") and "__pycache__" not in path.parts:
                digest.update(str(path.relative_to(root)).encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()


@functools.lru_cache(maxsize=1)
def _generator_digest() -> str:
    """A hash of the code generators, templates and the passes and analyses they call, so editing
    them invalidates the cache."""
    from attnspec import analysis, codegen, passes, templates

    digest = hashlib.sha256()
    for package in (codegen, templates, passes, analysis):
        root = Path(package.__file__).parent
        for path in sorted(root.rglob("*")):
            if path.suffix in (".py", ".jinja"):
                digest.update(path.relative_to(root).as_posix().encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()


def load_module(key: str, generate: Callable[[], str], *, cache: bool = True) -> ModuleType:
    """The module for key: from memory, from a valid cache file, or freshly generated.

    With cache=False nothing is read from or written to the cache: the module is generated
    into a private temporary directory and imported fresh.
    """
    if cache and key in _loaded:
        return _loaded[key]
    if cache:
        path = cache_dir() / f"{key}.py"
        if not _valid(path):
            try:
                _publish(path, _with_digest(generate()))
            except OSError as err:
                raise AttnError(
                    f"cannot write the module cache in {path.parent}: {err.strerror}",
                    hint="point ATTNSPEC_CACHE_DIR at a writable directory, or compile with cache=False",
                ) from None
    else:
        path = Path(tempfile.mkdtemp(prefix="attnspec-")) / f"{key}.py"
        path.write_text(generate(), encoding="utf-8")
    module = _import(f"attnspec_generated_{key}", path)
    if cache:
        _loaded[key] = module
    return module


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _with_digest(source: str) -> str:
    return f"{source}{_DIGEST_PREFIX}{_digest(source)}\n"


def _valid(path: Path) -> bool:
    return _valid_body(path) is not None


def _valid_body(path: Path) -> str | None:
    """The module's source, without its digest line, where the digest matches."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    body, sep, tail = text.rpartition(_DIGEST_PREFIX)
    return body if sep and tail.strip() == _digest(body) else None


def _publish(path: Path, text: str) -> None:
    _publish_bytes(path, text.encode("utf-8"))


def _publish_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)  # a reader sees the old file or the whole new one
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _import(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        exec(_bytecode(path), module.__dict__)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _bytecode(path: Path):
    """The module's code object: from `<key>.code` where it was compiled from this very source by this
    interpreter, else compiled now and stored there (best effort)."""
    text = path.read_text(encoding="utf-8")
    tag = importlib.util.MAGIC_NUMBER + hashlib.sha256(text.encode()).digest()
    stored = path.with_suffix(".code")
    try:
        data = stored.read_bytes()
        if data.startswith(tag):
            return marshal.loads(data[len(tag):])
    except (OSError, ValueError, EOFError, TypeError):
        pass
    code = compile(text, str(path), "exec", dont_inherit=True)
    try:
        _publish_bytes(stored, tag + marshal.dumps(code))
    except OSError:
        pass
    return code
