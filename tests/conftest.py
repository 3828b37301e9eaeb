"""Shared fixtures for the attnspec test suite."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Without CUDA, the triton target's kernels run in Triton's CPU interpreter: this must be set before
# any generated triton module is executed (its @triton.jit decorators read it).
try:
    import torch as _torch

    if not _torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
except ImportError:  # pragma: no cover - torch is a dependency
    pass

# Property tests draw the same examples on every run of the test command, so that a result does not
# depend on the day it ran; HYPOTHESIS_PROFILE=explore draws new ones (make explore).
try:
    from hypothesis import settings as _settings

    _settings.register_profile("repeatable", derandomize=True)
    _settings.register_profile("explore", derandomize=False)
    _settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))
except ImportError:  # pragma: no cover - hypothesis is a test dependency
    pass

# pytester runs a user's test suite in a subprocess (test_fuzz.py checks the attnspec_fuzz fixture)
pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parent.parent
EXAMPLES_DIR = REPO / "examples"


@pytest.fixture(scope="session", autouse=True)
def _attnspec_cache_dir(tmp_path_factory):
    """Compiled modules go to a temp dir of this test session, never to the user's cache."""
    previous = os.environ.get("ATTNSPEC_CACHE_DIR")
    os.environ["ATTNSPEC_CACHE_DIR"] = str(tmp_path_factory.mktemp("attnspec-cache"))
    yield
    if previous is None:
        os.environ.pop("ATTNSPEC_CACHE_DIR", None)
    else:
        os.environ["ATTNSPEC_CACHE_DIR"] = previous


@pytest.fixture(scope="session", autouse=True)
def _draws_independent_of_loaded_modules():
    """Hypothesis also draws constants it finds in the source of the local modules loaded so far, so
    even derandomized examples would depend on which tests ran before (and on the modules they
    compiled). Under the repeatable profile that pool stays empty: every run of a test draws the same."""
    try:
        from hypothesis.internal.conjecture import providers
        from hypothesis.internal.constants_ast import Constants
    except ImportError:  # pragma: no cover - a Hypothesis without the pool
        providers = None
    if os.environ.get("HYPOTHESIS_PROFILE", "repeatable") != "repeatable" or not hasattr(providers, "_get_local_constants"):
        yield
        return
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(providers, "_get_local_constants", Constants)
        providers.CONSTANTS_CACHE.cache.clear()
        yield
    providers.CONSTANTS_CACHE.cache.clear()


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small tensors: intra-op threads only add overhead, and spin badly when another process holds a
    core. Modules of many tiny torch calls ask for it: pytestmark = pytest.mark.usefixtures(...)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_collection_modifyitems(config, items):
    """Tests marked `cuda` are skipped, with the reason, where there is no CUDA GPU."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def example_files() -> list[Path]:
    """Every examples/*.attn file (possibly none while the examples are being written)."""
    return sorted(EXAMPLES_DIR.glob("*.attn"))


@pytest.fixture(scope="session")
def examples_dir() -> Path:
    return EXAMPLES_DIR
