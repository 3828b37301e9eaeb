"""The nn.Module of a generated module pickles (torch.save, pickle, copy.deepcopy) and loads in a process
that never compiled its spec, with an empty module cache: it pickles by the recipe attnspec.compile was
given (runtime/pickling.py), compile-time params included, on every target."""

from __future__ import annotations

import copy
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import attnspec

ROOT = Path(__file__).resolve().parent.parent
TEMPERATURE = ROOT / "examples" / "b06_query_temperature.attn"  # a learnable w[H, D]
WINDOW = ROOT / "examples" / "b02_sliding_window.attn"  # a compile-time param

LOAD = """
import sys, torch
saved = torch.load(sys.argv[1], weights_only=False)
model = saved["model"]
with torch.no_grad():
    out = model(saved["q"], saved["k"], saved["v"])
assert type(model).__module__ not in ("__main__",) and torch.equal(out.detach(), saved["out"]), (out - saved["out"]).abs().max()
print("ok", type(model).__name__)
"""


def _model(source, target, **consts):
    module = attnspec.compile(source, target, **consts)
    model = module.Module(H=4, D=16) if "H" in module.Module.__init__.__code__.co_varnames else module.Module()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    return model


@pytest.mark.parametrize("target", ["reference", "flex", "triton"])
@pytest.mark.parametrize("path, consts", [(TEMPERATURE, {}), (WINDOW, {"window": 5})], ids=["learnable", "const"])
def test_a_saved_model_loads_in_a_fresh_process(target, path, consts, tmp_path):
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 4, 19, 16, generator=gen) for _ in range(3))
    model = _model(path, target, **consts)
    with torch.no_grad():
        out = model(q, k, v)
    torch.save({"model": model, "q": q, "k": k, "v": v, "out": out}, tmp_path / "model.pt")
    env = {**os.environ, "ATTNSPEC_CACHE_DIR": str(tmp_path / "empty-cache"), "TRITON_INTERPRET": "1",
           "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", LOAD, str(tmp_path / "model.pt")], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=600)
    assert done.returncode == 0 and done.stdout.startswith("ok"), done.stderr[-3000:]


def test_a_restored_model_is_an_instance_of_the_same_class_in_process():
    model = _model(TEMPERATURE, "reference")
    for twin in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
        assert type(twin) is type(model)
        assert torch.equal(twin.w, model.w) and twin.w is not model.w


def test_a_module_built_without_a_recipe_pickles_by_reference():
    """api.build_module (no source text): the class is pickled by name, as any class, in this process."""
    from attnspec.api import _lowered, build_module

    lowered, name = _lowered(TEMPERATURE.read_text(), "reference", None, {}, str(TEMPERATURE))
    module = build_module(lowered, "reference", name)
    model = module.Module(H=2, D=8)
    assert type(pickle.loads(pickle.dumps(model))) is type(model)
