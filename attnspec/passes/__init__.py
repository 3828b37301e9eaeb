"""Named pure IR -> IR passes and the pipeline that runs them."""

from __future__ import annotations

from typing import Callable, Sequence

from ..ir import Spec
from ..verify import verify
from .bind import bind_params
from .casts import insert_casts
from .fold import fold_constants

Pass = Callable[[Spec], Spec]


def pipeline(consts: dict[str, object] | None = None) -> tuple[Pass, ...]:
    """The standard lowering pipeline, in order."""
    # casts first: folding where(c, int, float) on a constant c must keep the float type
    return (bind_params(consts or {}), insert_casts, fold_constants)


def run_passes(spec: Spec, passes: Sequence[Pass], *, check: bool = True, trace=None) -> Spec:
    """Run passes in order, verifying after each one; trace(name, spec) sees every stage."""
    for p in passes:
        spec = p(spec)
        if check:
            verify(spec)
        if trace is not None:
            trace(p.__name__, spec)
    return spec
