"""Load generated module source, through an on-disk cache safe for concurrent compiles.

The cache key hashes the generated source, which is itself a deterministic function of the
normalized IR, the target and the compiler version; the torch version is added because a
module compiled against one torch may not suit another.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import tempfile
from pathlib import Path
from types import ModuleType

from attnspec import __version__

_loaded: dict[str, ModuleType] = {}


def cache_dir() -> Path:
    root = os.environ.get("ATTNSPEC_CACHE_DIR")
    if root:
        return Path(root)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "attnspec"


def cache_key(source: str) -> str:
    import torch

    digest = hashlib.sha256()
    for part in (source, __version__, torch.__version__):
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:24]


def load_module(source: str, *, cache: bool = True) -> ModuleType:
    key = cache_key(source)
    if key in _loaded:
        return _loaded[key]
    path = _write(key, source) if cache else _write_temp(key, source)
    module = _import(f"attnspec_generated_{key}", path)
    _loaded[key] = module
    return module


def _write(key: str, source: str) -> Path:
    directory = cache_dir()
    path = directory / f"{key}.py"
    if path.exists() and path.read_text(encoding="utf-8") == source:
        return path
    directory.mkdir(parents=True, exist_ok=True)
    # Atomic publish: a reader sees the old file or the whole new one, never half of it.
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{key}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(source)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _write_temp(key: str, source: str) -> Path:
    directory = Path(tempfile.mkdtemp(prefix="attnspec-"))
    path = directory / f"{key}.py"
    path.write_text(source, encoding="utf-8")
    return path


def _import(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module
