"""A mend for Triton's CPU interpreter, which runs the triton target's kernels where there is no GPU.

The interpreter labels a comparison's result with its operands' type rather than int1, so a scalar
comparison of floats (`float(SKV - SQ) * t == 0.0`) becomes a float32 block when it is broadcast,
and `|` / `&` with a block of booleans then fails in NumPy. Compiled kernels are not affected (the
GPU compiler types comparisons as i1). Comparisons are relabelled as int1 here: an idempotent,
guarded patch of the interpreter's builder, applied when a generated triton module is loaded.
"""

from __future__ import annotations

import functools

_MENDED = "_attnspec_comparisons_are_int1"


def mend() -> None:
    try:
        import numpy as np
        import triton.language as tl
        from triton.runtime import interpreter
    except ImportError:  # pragma: no cover - a Triton without the interpreter
        return
    builder = getattr(interpreter, "InterpreterBuilder", None)
    if builder is None or getattr(builder, _MENDED, False):
        return
    for name in dir(builder):
        if name.startswith(("create_icmp", "create_fcmp")):
            setattr(builder, name, _as_int1(getattr(builder, name), interpreter.TensorHandle, tl.int1, np.bool_))
    setattr(builder, _MENDED, True)


def _as_int1(compare, handle, int1, bool_):
    @functools.wraps(compare)
    def relabelled(self, lhs, rhs):
        out = compare(self, lhs, rhs)
        return handle(out.data.astype(bool_), int1)

    return relabelled
