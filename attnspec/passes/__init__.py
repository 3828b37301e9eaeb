"""Named pure IR -> IR passes and the pipeline that runs them."""

from __future__ import annotations

from typing import Callable, Sequence

from ..diagnostics import AttnError
from ..ir import Spec
from ..verify import verify
from .bind import bind_params
from .casts import insert_casts
from .fold import fold_constants
from .simplify import simplify_algebra
from .share import eliminate_dead_bindings, hoist_and_share

Pass = Callable[[Spec], Spec]


# The lowering pipeline, in order. Casts come before folding: folding where(c, int, float) on a
# constant c must keep the float type. bind_params always runs first (it needs the consts).
# STANDARD is what the reference (the oracle) is generated from; OPTIMIZE adds the passes that
# fast targets and `attnspec show` use.
STANDARD = ("bind_params", "insert_casts", "fold_constants")
OPTIMIZE = STANDARD + ("simplify_algebra", "hoist_and_share", "eliminate_dead_bindings")
_PASSES: dict[str, Pass] = {
    "insert_casts": insert_casts,
    "fold_constants": fold_constants,
    "simplify_algebra": simplify_algebra,
    "hoist_and_share": hoist_and_share,
    "eliminate_dead_bindings": eliminate_dead_bindings,
}


def pipeline(consts: dict[str, object] | None = None, names: Sequence[str] | None = None) -> tuple[Pass, ...]:
    """The passes named (default: the standard pipeline), after bind_params."""
    names = [n for n in (STANDARD if names is None else names) if n != "bind_params"]
    unknown = [n for n in names if n not in _PASSES]
    if unknown:
        raise AttnError(f"unknown pass '{unknown[0]}'", hint="passes: " + ", ".join(OPTIMIZE))
    return (bind_params(consts or {}),) + tuple(_PASSES[n] for n in names)


def run_passes(spec: Spec, passes: Sequence[Pass], *, check: bool = True, trace=None) -> Spec:
    """Run passes in order, verifying after each one; trace(name, spec) sees every stage."""
    for p in passes:
        spec = p(spec)
        if check:
            verify(spec)
        if trace is not None:
            trace(p.__name__, spec)
    return spec
