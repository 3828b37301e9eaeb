"""Pickling the nn.Module of a generated module: `torch.save(model)` and `pickle` in one process, loading
in another that never compiled the spec.

A generated module is imported under a name of its own (attnspec_generated_<key>), which a fresh process
cannot import, so its class pickles by recipe instead of by reference: the spec's source text, file
name, target, spec name and compile-time params that `attnspec.compile` was given. Unpickling compiles
that recipe again (from the module cache when the key is there) and restores the instance's state into
the new module's class. Generated code only calls `reduce`; the recipe is data, never code.
"""

from __future__ import annotations

import copyreg
import sys
from types import ModuleType

_RECIPE = "_attnspec_recipe"  # the module attribute that holds it


def remember(module: ModuleType, recipe: tuple) -> ModuleType:
    """Attach `(text, name, target, spec, consts)` to a module attnspec.compile built from it."""
    setattr(module, _RECIPE, recipe)
    return module


def reduce(obj):
    """obj.__reduce__ for an instance of a generated module's class: by recipe where its module has one
    (compiled by attnspec.compile), by reference otherwise (a module built some other way)."""
    recipe = getattr(sys.modules.get(type(obj).__module__), _RECIPE, None)
    state = obj.__getstate__()
    if recipe is None:
        return copyreg.__newobj__, (type(obj),), state
    return restore, (recipe, type(obj).__name__), state


def restore(recipe: tuple, class_name: str):
    """A bare instance of the class `class_name` of the module the recipe compiles to (pickle then sets
    its state)."""
    from ..api import compile_text

    text, name, target, spec, consts = recipe
    cls = getattr(compile_text(text, name, target, spec, consts), class_name)
    return cls.__new__(cls)
