"""Code generators, one module per target, sharing the expression renderer in render.py."""

from __future__ import annotations

from importlib import import_module

TARGETS = ("reference",)


def generator(target: str):
    """The `generate(spec, source_name) -> str` function of a target."""
    if target not in TARGETS:
        raise KeyError(target)
    return import_module(f"{__name__}.{target}").generate
