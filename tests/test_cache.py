"""The on-disk cache of compiled modules (attnspec.runtime.loader), design.md section 5."""

from __future__ import annotations

import importlib.util
import itertools
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import attnspec
from attnspec import api
from attnspec.runtime import loader

SPEC = """\
attention cached_window {
    param window: int = 2
    mask abs(q - kv) <= window
}
"""

# Every test compiles with its own window so that the in-process memo of another test (or of an
# earlier run in this process) never hides a cache write.
_windows = itertools.count(int(time.time() * 1000) % 100_000 * 10 + 1000)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    directory = tmp_path / "cache"
    monkeypatch.setenv("ATTNSPEC_CACHE_DIR", str(directory))
    return directory


def fresh_window() -> int:
    return next(_windows)


def cached_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.py")) if directory.exists() else []


def leftovers(directory: Path) -> list[Path]:
    """Temp files of an interrupted or racing write (anything but NAME.py, its bytecode NAME.code, the
    text index's entries and __pycache__)."""
    if not directory.exists():
        return []
    found = [p for p in directory.iterdir()
             if not (p.suffix in (".py", ".code") and not p.name.startswith(".")) and p.name not in ("__pycache__", "index")]
    index = directory / "index"
    return found + ([p for p in index.iterdir() if p.name.startswith(".")] if index.exists() else [])


def only_file(directory: Path) -> Path:
    files = cached_files(directory)
    assert len(files) == 1, files
    return files[0]


def assert_holds_module(path: Path, window: int) -> None:
    """The cached file is the generated module, complete (plus at most a trailing comment line)."""
    source = attnspec.compile_source(SPEC, window=window)
    text = path.read_text(encoding="utf-8")
    assert text.startswith(source)
    rest = text[len(source) :]
    assert rest == "" or (rest.startswith("#") and rest.count("\n") == 1 and rest.endswith("\n")), rest


def check_runs(module, window: int) -> None:
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 5, 4, generator=gen, dtype=torch.float64) for _ in range(3))
    i = torch.arange(5)
    keep = (i[:, None] - i[None, :]).abs() <= window
    s = (q @ k.transpose(-1, -2)) / 2.0  # 1 / sqrt(D), D = 4
    expected = torch.softmax(s.masked_fill(~keep, float("-inf")), dim=-1) @ v
    torch.testing.assert_close(module.attention(q, k, v), expected)


# ---------------------------------------------------------------- keys and files


def test_cache_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("ATTNSPEC_CACHE_DIR", str(tmp_path / "here"))
    assert loader.cache_dir() == tmp_path / "here"
    monkeypatch.delenv("ATTNSPEC_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert loader.cache_dir() == tmp_path / "xdg" / "attnspec"


SPEC_REFORMATTED = """\
# the same spec as SPEC, written differently: the key follows the normalized IR, not the text
attention cached_window {
    param window: int = 2   # a comment
    mask abs(q-kv) <= window
}
"""


def test_key_depends_on_target_source_and_versions(monkeypatch):
    key = loader.cache_key("attention a {\n}\n", "reference", "a.attn")
    assert key == loader.cache_key("attention a {\n}\n", "reference", "a.attn")
    assert key != loader.cache_key("attention b {\n}\n", "reference", "a.attn")
    assert key != loader.cache_key("attention a {\n}\n", "flex", "a.attn")
    assert key != loader.cache_key("attention a {\n}\n", "reference", "b.attn")
    monkeypatch.setattr(loader, "__version__", "999.0")
    assert key != loader.cache_key("attention a {\n}\n", "reference", "a.attn")


def test_compile_writes_one_file_keyed_by_content(cache):
    window = fresh_window()
    module = attnspec.compile(SPEC, window=window)
    path = only_file(cache)
    assert Path(module.__file__) == path
    assert_holds_module(path, window)
    assert leftovers(cache) == []
    check_runs(module, window)
    # The same spec written differently is the same module and the same file.
    assert attnspec.compile(SPEC_REFORMATTED, window=window) is module
    assert only_file(cache) == path


def test_second_compile_reuses_module_and_file(cache):
    window = fresh_window()
    first = attnspec.compile(SPEC, window=window)
    path = only_file(cache)
    stat = path.stat()
    second = attnspec.compile(SPEC, window=window)
    assert second is first
    assert only_file(cache) == path
    assert (path.stat().st_ino, path.stat().st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)


def run_python(script: str, cache: Path, cwd: Path) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=cwd, capture_output=True, text=True, timeout=180,
        env={**os.environ, "ATTNSPEC_CACHE_DIR": str(cache)},
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_another_process_reuses_the_file(cache, tmp_path):
    window = fresh_window()
    attnspec.compile(SPEC, window=window)
    path = only_file(cache)
    stat = path.stat()
    out = run_python(f"import attnspec; print(attnspec.compile({SPEC!r}, window={window}).__file__)", cache, tmp_path)
    assert Path(out.strip()) == path
    assert only_file(cache) == path
    assert (path.stat().st_ino, path.stat().st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)  # not rewritten


def test_different_consts_different_key(cache):
    w1, w2 = fresh_window(), fresh_window()
    m1 = attnspec.compile(SPEC, window=w1)
    m2 = attnspec.compile(SPEC, window=w2)
    assert m1 is not m2
    assert m1.__file__ != m2.__file__
    assert cached_files(cache) == sorted([Path(m1.__file__), Path(m2.__file__)])
    assert m1.window == w1 and m2.window == w2
    assert_holds_module(Path(m1.__file__), w1)
    assert_holds_module(Path(m2.__file__), w2)


GARBAGE = {
    "code": b"raise RuntimeError('a corrupted cache file was imported')\n",
    "syntax-error": b"def attention(q, k, v",
    "empty": b"",
    "truncated": None,  # the first half of the right file
    "truncated-at-end": None,  # all but the last two bytes
    "binary": b"\xff\xfe\x00not utf-8\x80\n",
}


def test_corrupted_cache_files_are_replaced(cache, tmp_path):
    """Files left half-written or damaged by another process are regenerated, never imported."""
    windows = {}
    for name, garbage in GARBAGE.items():
        window = windows[name] = fresh_window()
        path = Path(attnspec.compile(SPEC, window=window).__file__)
        good = path.read_bytes()
        if name == "truncated":
            garbage = good[: len(good) // 2]
        elif name == "truncated-at-end":
            garbage = good[:-2]
        path.write_bytes(garbage)
    # A fresh process (this one already holds the modules in memory) compiles them all again.
    script = textwrap.dedent(
        f"""
        import torch, attnspec
        for window in {list(windows.values())!r}:
            module = attnspec.compile({SPEC!r}, window=window)
            q = k = v = torch.ones(1, 1, 3, 2, dtype=torch.float64)
            assert torch.allclose(module.attention(q, k, v), v)
            print(module.__file__)
        """
    )
    paths = [Path(line) for line in run_python(script, cache, tmp_path).split()]
    assert len(paths) == len(windows)
    for path, window in zip(paths, windows.values()):
        assert_holds_module(path, window)
    assert cached_files(cache) == sorted(paths)
    assert leftovers(cache) == []


def test_cache_false_writes_nothing(cache):
    window = fresh_window()
    module = attnspec.compile(SPEC, cache=False, window=window)
    check_runs(module, window)
    assert not cache.exists() or list(cache.iterdir()) == []


# ---------------------------------------------------------------- concurrent compiles

RACE = textwrap.dedent(
    """
    import os, sys, time
    import torch
    import attnspec
    barrier, count = sys.argv[1], int(sys.argv[2])
    open(os.path.join(barrier, str(os.getpid())), "w").close()
    deadline = time.time() + 120
    while len(os.listdir(barrier)) < count and time.time() < deadline:  # start together
        time.sleep(0.001)
    for window in map(int, sys.argv[3:]):
        module = attnspec.compile({spec!r}, window=window)
        q = k = v = torch.ones(1, 1, 3, 2, dtype=torch.float64)
        assert torch.allclose(module.attention(q, k, v), v)
        print(module.__file__)
    """
)


def test_concurrent_compiles(cache, tmp_path):
    windows = [fresh_window() for _ in range(8)]  # several rounds: a non-atomic write shows
    script = tmp_path / "race.py"
    script.write_text(RACE.format(spec=SPEC), encoding="utf-8")
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    env = {**os.environ, "ATTNSPEC_CACHE_DIR": str(cache)}
    count = 3
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(barrier), str(count), *map(str, windows)], cwd=tmp_path, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for _ in range(count)
    ]
    results = [p.communicate(timeout=180) for p in procs]
    for p, (out, err) in zip(procs, results):
        assert p.returncode == 0, err
    files = [[Path(line) for line in out.split()] for out, _ in results]
    assert all(f == files[0] for f in files)  # every process loaded the same files
    assert len(set(files[0])) == len(windows)
    assert cached_files(cache) == sorted(files[0])
    for path, window in zip(files[0], windows):
        assert_holds_module(path, window)
    assert leftovers(cache) == []
    pycache = cache / "__pycache__"
    if pycache.exists():  # the interpreter's own bytecode cache holds only complete files too
        assert all(p.suffix == ".pyc" for p in pycache.iterdir())


# ---------------------------------------------------------------- generator changes


REPO = Path(__file__).resolve().parent.parent


def test_generator_change_invalidates_the_cache(cache, tmp_path):
    # A private copy of the package, importable ahead of the installed one through PYTHONPATH.
    copy = tmp_path / "checkout"
    for name in ("attnspec", "codegen", "grammar", "templates"):
        shutil.copytree(REPO / name, copy / name, ignore=shutil.ignore_patterns("__pycache__"))
    script = f"import attnspec; m = attnspec.compile({SPEC!r}); print(m.__file__)"
    env = {**os.environ, "ATTNSPEC_CACHE_DIR": str(cache), "PYTHONPATH": str(copy)}

    def compile_in_copy() -> Path:
        proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, proc.stderr
        return Path(proc.stdout.strip())

    first = compile_in_copy()
    assert "GENERATOR CHANGED" not in first.read_text(encoding="utf-8")
    template = copy / "templates" / "reference" / "module.py.jinja"
    template.write_text(template.read_text(encoding="utf-8") + "\n# GENERATOR CHANGED\n", encoding="utf-8")
    second = compile_in_copy()
    assert "GENERATOR CHANGED" in second.read_text(encoding="utf-8")


# ---------------------------------------------------------------- the text index and the bytecode


def test_a_known_text_loads_without_parsing_or_lowering(cache, monkeypatch):
    window = fresh_window()
    first = attnspec.compile(SPEC, window=window)
    loader._loaded.clear()  # as a new process would start

    def no_parsing(*args, **kwargs):
        raise AssertionError("parsed a text the index knows")

    monkeypatch.setattr(api, "parse_program", no_parsing)
    monkeypatch.setattr(api, "load_program", no_parsing)
    again = attnspec.compile(SPEC, window=window)
    assert again.__file__ == first.__file__ and again is not first
    check_runs(again, window)
    with pytest.raises(AssertionError, match="parsed a text"):  # a new text or param is compiled
        attnspec.compile(SPEC.replace("window", "width"), width=window)


def test_the_index_falls_back_to_compiling_when_its_module_is_gone(cache):
    window = fresh_window()
    path = Path(attnspec.compile(SPEC, window=window).__file__)
    loader._loaded.clear()
    path.unlink()
    again = attnspec.compile(SPEC, window=window)
    assert Path(again.__file__) == path and loader._valid(path)
    check_runs(again, window)


def test_damaged_bytecode_is_compiled_again(cache):
    window = fresh_window()
    path = Path(attnspec.compile(SPEC, window=window).__file__)
    code = path.with_suffix(".code")
    assert code.exists()
    for garbage in (b"", b"junk", code.read_bytes()[:40]):
        code.write_bytes(garbage)
        loader._loaded.clear()
        check_runs(attnspec.compile(SPEC, window=window), window)
        assert code.read_bytes().startswith(importlib.util.MAGIC_NUMBER)
    assert leftovers(cache) == []
