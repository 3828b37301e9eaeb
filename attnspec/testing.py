"""Fuzz your own specs from your test suite: every target against the float64 reference.

    from attnspec.testing import fuzz

    def test_my_variant():
        fuzz("attn/my_variant.attn", trials=20)      # raises FuzzFailure with the smallest failing case

or, with the pytest fixture this module registers (installed with attnspec, no conftest needed):

    def test_my_variant(attnspec_fuzz):
        attnspec_fuzz("attn/my_variant.attn", window=64)

`pytest --attnspec-trials N` sets the number of cases of every fixture call (more for a nightly run),
`--attnspec-seed S` the seed and `--attnspec-device` the device. A failure's message holds the
smallest failing case and a one-line command that replays it; `replay(...)` replays it from Python.
"""

from __future__ import annotations

import os
from pathlib import Path

# Only the standard library at import time: pytest loads this module at every start, in every test
# suite of an environment where attnspec is installed. torch and the compiler load on the first call.

try:  # the fixture exists only where pytest does; fuzz() and replay() need no pytest
    import pytest
except ImportError:  # pragma: no cover
    pytest = None


class FuzzFailure(AssertionError):
    """A target disagreed with the reference; the message says where and how to replay it."""

    def __init__(self, reports: list):
        super().__init__("\n".join(_failure_text(r) for r in reports))
        self.reports = reports


def fuzz(
    spec_file, *, spec: str | None = None, targets=(), trials: int = 25, seed: int = 0, dtypes=(),
    device: str | None = None, max_len: int = 0, shrink_seconds: float = 60.0, save_dir: str = "fuzz-failures",
    consts: dict | None = None, grad: bool = False, **more_consts,
) -> list:
    """Fuzz every spec of `spec_file` (a path or .attn text), or `spec`, on `targets` (default: every
    fast target installed) in `dtypes` (default: float32, bfloat16, float16). Compile-time params as
    keywords. grad: also hold the gradients of q, k, v and the float inputs to the rule (triton;
    flex on a GPU). Returns one Report per (spec, target); raises FuzzFailure on any failure."""
    from .fuzz.runner import fuzz_file

    options = _options(targets, trials, seed, dtypes, device, max_len, shrink_seconds, save_dir, {**(consts or {}), **more_consts}, grad)
    reports = fuzz_file(_source(spec_file), options, spec)
    failed = [r for r in reports if r.status == "fail"]
    if failed:
        raise FuzzFailure(failed)
    return reports


def replay(spec_file, case: str, *, spec: str | None = None, device: str = "cpu", consts: dict | None = None, **more_consts):
    """Run the one case a failure report printed (returns its Report); raises FuzzFailure if it fails."""
    from .fuzz.runner import replay as _replay

    options = _options((), 1, 0, (), device, 0, 0.0, "fuzz-failures", {**(consts or {}), **more_consts})
    report = _replay(_source(spec_file), case, options, spec)
    if report.status == "fail":
        raise FuzzFailure([report])
    return report


def _options(targets, trials, seed, dtypes, device, max_len, shrink_seconds, save_dir, consts, grad=False):
    from .fuzz.runner import make_options

    return make_options(
        targets=targets, dtypes=dtypes, device=device, trials=trials, seed=seed, max_len=max_len,
        shrink_seconds=shrink_seconds, consts=consts, save_dir=save_dir, progress=False, grad=grad,
    )


def _source(spec_file):
    from .api import _looks_like_path

    if isinstance(spec_file, os.PathLike) or _looks_like_path(spec_file):
        return Path(spec_file)
    return spec_file


def _failure_text(report) -> str:
    return "\n".join([f"{report.what}: {report.summary}", *("    " + line for line in report.lines)])


# ---------------------------------------------------------------- the pytest plugin


if pytest is not None:

    def pytest_addoption(parser):
        group = parser.getgroup("attnspec", "attnspec fuzzing (the attnspec_fuzz fixture)")
        group.addoption("--attnspec-trials", type=int, default=None, help="cases per spec and target in attnspec_fuzz")
        group.addoption("--attnspec-seed", type=int, default=None, help="seed of attnspec_fuzz")
        group.addoption("--attnspec-device", default=None, help="device of attnspec_fuzz (default: cuda when available)")

    @pytest.fixture
    def attnspec_fuzz(request):
        """fuzz(...) with the trials, seed and device given on pytest's command line, if any."""
        overrides = {
            key: value
            for key, value in (
                ("trials", request.config.getoption("--attnspec-trials")),
                ("seed", request.config.getoption("--attnspec-seed")),
                ("device", request.config.getoption("--attnspec-device")),
            )
            if value is not None
        }

        def run(spec_file, **kwargs):
            return fuzz(spec_file, **{**kwargs, **overrides})

        return run
