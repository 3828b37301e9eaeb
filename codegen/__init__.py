"""Code generators, one module per target, sharing the expression renderer in render.py."""

from __future__ import annotations

from importlib import import_module

TARGETS = ("reference", "flex", "triton")


def passes_for(target: str) -> tuple[str, ...]:
    """The pass pipeline a target is generated from: the oracle from the standard one, fast
    targets from the optimized one (shared terms hoisted out of the per-pair code)."""
    from attnspec.passes import OPTIMIZE, STANDARD

    return STANDARD if target == "reference" else OPTIMIZE


def generator(target: str):
    """The `generate(spec, source_name) -> str` function of a target."""
    if target not in TARGETS:
        raise KeyError(target)
    return import_module(f"{__name__}.{target}").generate
