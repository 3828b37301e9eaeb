"""attnspec works from a wheel, not only from an editable install (design.md section 1).

Builds a wheel from a copy of the checkout, installs it into a fresh virtual environment (no
network: --no-index; torch and the other dependencies of the running interpreter are made
visible through a .pth file), then runs the package, `python -m attnspec` and the `attnspec`
console script from a directory outside the repository.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import os
import shutil
import site
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Needed inside the wheel: the grammar, the templates and the code generators (package data and
# mapped packages, see pyproject.toml).
REQUIRED = [
    "attnspec/__init__.py",
    "attnspec/cli.py",
    "attnspec/runtime/loader.py",
    "attnspec/grammar/attn.lark",
    "attnspec/templates/reference/module.py.jinja",
    "attnspec/templates/common/checks.py.jinja",
    "attnspec/templates/triton/tile.py.jinja",
    "attnspec/runtime/functions.py",
    "attnspec/runtime/dense.py",
    "attnspec/runtime/kernel.py",
    "attnspec/runtime/intervals.py",
    "attnspec/runtime/tiles.py",
    "attnspec/codegen/dense.py",
    "attnspec/templates/flex/module.py.jinja",
    "attnspec/templates/triton/module.py.jinja",
    "attnspec/codegen/__init__.py",
    "attnspec/codegen/reference.py",
    "attnspec/codegen/flex.py",
    "attnspec/runtime/flex.py",
    "attnspec/runtime/triton.py",
    "attnspec/codegen/triton.py",
]

SPEC = """\
attention tiny_window {
    param window: int = 1
    mask abs(q - kv) <= window and kv <= q
}
"""

# Not part of the copy the wheel is built from: environments, caches, old build outputs.
_SKIP = {".git", ".venv", "venv", "build", "dist", "__pycache__", ".pytest_cache", ".hypothesis", ".mypy_cache"}


def _copy_checkout(dest: Path) -> Path:
    def ignore(directory: str, names: list[str]) -> set[str]:
        return {n for n in names if n in _SKIP or n.endswith(".egg-info") or n.endswith(".pyc")}

    shutil.copytree(REPO, dest, ignore=ignore, symlinks=True)
    return dest


def _clean_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")}
    env.update(
        PYTHONNOUSERSITE="1",
        PIP_NO_INPUT="1",
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        ATTNSPEC_CACHE_DIR=str(tmp_path / "cache"),
    )
    env.pop("ATTNSPEC_TRACEBACK", None)
    return env


def _run(cmd, *, cwd: Path, env: dict[str, str], timeout: int = 180) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


def _build_wheel(source: Path, out: Path, env: dict[str, str]) -> Path:
    # Offline build: the backend must already be here. setuptools >= 70.1 builds wheels by itself;
    # older ones (3.11's ensurepip brings 65.5) need the `wheel` package too.
    try:
        version = tuple(int(x) for x in importlib.metadata.version("setuptools").split(".")[:2])
    except importlib.metadata.PackageNotFoundError:
        version = None
    if version is None or (version < (70, 1) and importlib.util.find_spec("wheel") is None):
        pytest.fail(
            f"cannot build a wheel offline with setuptools {version} and no `wheel` package: "
            "install the test extra (it should require setuptools>=70.1)"
        )
    if importlib.util.find_spec("build") is not None:
        cmd = [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", out, source]
    else:
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", out, source]
    _run(cmd, cwd=source, env=env)
    wheels = list(out.glob("attnspec-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def _dependency_dirs() -> list[str]:
    """Where the running interpreter finds torch, lark, jinja2, ... (never the repository)."""
    dirs = []
    for mod in ("torch", "lark", "jinja2", "markupsafe", "sympy", "mpmath", "networkx", "numpy"):
        spec = importlib.util.find_spec(mod)
        if spec is not None and spec.origin:
            dirs.append(Path(spec.origin).resolve().parent.parent)
    dirs += [Path(p).resolve() for p in site.getsitepackages() if Path(p).is_dir()]
    unique = []
    for d in dirs:
        if d != REPO and str(d) not in unique:  # a .venv inside the checkout is fine, its root is not
            unique.append(str(d))
    return unique


def _make_venv(venv: Path, wheel: Path, env: dict[str, str]) -> Path:
    pip_version = tuple(int(x) for x in importlib.metadata.version("pip").split(".")[:2])
    if pip_version >= (22, 3):  # pip --python: install into the new venv without bootstrapping pip there
        _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=venv.parent, env=env)
        python = venv / "bin" / "python"
        pip = [sys.executable, "-m", "pip", "--python", python]
    else:
        _run([sys.executable, "-m", "venv", venv], cwd=venv.parent, env=env)
        python = venv / "bin" / "python"
        pip = [python, "-m", "pip"]
    _run([*pip, "install", "--no-deps", "--no-index", "--no-cache-dir", wheel], cwd=venv.parent, env=env)
    # Only now expose the dependencies, so pip never saw the attnspec of the running environment.
    purelib = _run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=venv.parent, env=env
    ).stdout.strip()
    Path(purelib, "_attnspec_test_deps.pth").write_text("\n".join(_dependency_dirs()) + "\n", encoding="utf-8")
    return python


def test_wheel_installs_and_runs(tmp_path):
    env = _clean_env(tmp_path)
    source = _copy_checkout(tmp_path / "src")
    wheel = _build_wheel(source, tmp_path / "dist", env)

    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        entry_points = next(zf.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
    # ... and every grammar, template and generator file of the checkout (a new target's folder too).
    shipped = {"grammar": "*.lark", "templates": "*.jinja", "codegen": "*.py"}
    required = set(REQUIRED) | {
        f"attnspec/{folder}/{p.relative_to(source / folder).as_posix()}"
        for folder, pattern in shipped.items()
        for p in (source / folder).rglob(pattern)
    }
    missing = sorted(n for n in required if n not in names)
    assert not missing, f"not in the wheel: {missing}"
    # Nothing outside the package: no top-level grammar/, codegen/, templates/ or tests/.
    assert {n.split("/")[0] for n in names} == {"attnspec", wheel.name.split("-py")[0] + ".dist-info"}
    assert "attnspec = attnspec.cli:main" in entry_points

    python = _make_venv(tmp_path / "venv", wheel, env)
    work = tmp_path / "work"  # outside the repository: nothing there to import by accident
    work.mkdir()
    spec_file = work / "tiny.attn"
    spec_file.write_text(SPEC, encoding="utf-8")
    venv = (tmp_path / "venv").resolve()

    # The API, from the installed copy.
    probe = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        import torch
        import attnspec, attnspec.codegen, attnspec.grammar, attnspec.templates
        venv, repo = Path({str(venv)!r}), Path({str(REPO)!r})
        for mod in (attnspec, attnspec.codegen, attnspec.grammar, attnspec.templates):
            where = Path(mod.__file__).resolve()
            assert venv in where.parents, (mod.__name__, where)
        assert [Path(p).resolve() for p in attnspec.__path__] == [Path(attnspec.__file__).resolve().parent]
        assert not any(Path(p or '.').resolve() == repo for p in sys.path), sys.path
        module = attnspec.compile({str(spec_file)!r}, window=2)
        assert venv not in Path(module.__file__).resolve().parents  # the cache, not the package
        g = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(1, 2, 5, 4, generator=g, dtype=torch.float64) for _ in range(3))
        i = torch.arange(5)
        keep = ((i[:, None] - i[None, :]).abs() <= 2) & (i[None, :] <= i[:, None])
        s = (q @ k.transpose(-1, -2)) / 2.0
        expected = torch.softmax(s.masked_fill(~keep, float('-inf')), dim=-1) @ v
        torch.testing.assert_close(module.attention(q, k, v), expected)
        flex = attnspec.compile({str(spec_file)!r}, "flex", window=2)  # imports attnspec's runtime
        torch.testing.assert_close(flex.attention(q, k, v, compiled=False), expected)
        print(attnspec.__file__)
        """
    )
    out = _run([python, "-c", probe], cwd=work, env=env).stdout
    assert venv in Path(out.strip()).resolve().parents

    # python -m attnspec compile prints a module.
    out = _run([python, "-m", "attnspec", "compile", spec_file, "-D", "window=3"], cwd=work, env=env).stdout
    ast.parse(out)
    assert "tiny.attn" in out.splitlines()[0]
    assert "window = 3" in out

    # The console script.
    script = venv / "bin" / "attnspec"
    assert script.exists()
    proc = _run([script, "check", spec_file], cwd=work, env=env)
    assert f"{spec_file}: ok (tiny_window)" in proc.stdout
    proc = _run([script, "show", spec_file, "--sq", 4], cwd=work, env=env)
    assert "\n#...\n##..\n.##.\n..##\n" in proc.stdout  # window = 1, causal
