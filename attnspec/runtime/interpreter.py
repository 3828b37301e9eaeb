"""A mend for Triton's CPU interpreter, which runs the triton target's kernels where there is no GPU.

The interpreter labels a comparison's result with its operands' type rather than int1, so a scalar
comparison of floats (`float(SKV - SQ) * t == 0.0`) becomes a float32 block when it is broadcast,
and `|` / `&` with a block of booleans then fails in NumPy. Compiled kernels are not affected (the
GPU compiler types comparisons as i1). Comparisons are relabelled as int1 here.

Its float32 products are NumPy's matmul, whose BLAS kernel (chosen per CPU) sums in its own order,
and differently for a transposed operand: the backward's recomputed scores then differed from the
forward's by an ulp on some CPUs, which the kernels' exactness (a row with one key has weight 1)
cannot absorb. Float32 products are computed in float64 and rounded once here, the same on every CPU.

Where a product asks for TF32 (Triton's default for float32 operands, which the kernels take where
torch allows TF32, and for the float32 sums of the chunked linear kernels and the matrix passes of
half inputs), the GPU's tensor cores read each float32 operand's sign, exponent and upper 10 mantissa
bits and ignore the lower 13: the operands are truncated so here too, so that the CPU tests hold the
GPU's TF32 products to the accuracy rule.

Both are idempotent, guarded patches of the interpreter's builder, applied when a generated triton
module is loaded.
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
    from triton._C.libtriton import ir

    builder.create_dot = _rounded_once(builder.create_dot, interpreter.TensorHandle, np, ir.INPUT_PRECISION.TF32)
    setattr(builder, _MENDED, True)


def _as_int1(compare, handle, int1, bool_):
    @functools.wraps(compare)
    def relabelled(self, lhs, rhs):
        out = compare(self, lhs, rhs)
        return handle(out.data.astype(bool_), int1)

    return relabelled


def _rounded_once(dot, handle, np, tf32):
    @functools.wraps(dot)
    def product(self, a, b, d, input_precision, max_num_imprecise_acc):
        if not (a.data.dtype == b.data.dtype == d.data.dtype == np.float32):
            return dot(self, a, b, d, input_precision, max_num_imprecise_acc)
        x, y = (a.data, b.data) if input_precision != tf32 else (_tf32(a.data, np), _tf32(b.data, np))
        exact = np.matmul(x.astype(np.float64), y.astype(np.float64)).astype(np.float32)
        return handle(exact + d.data, d.dtype.scalar)

    return product


def _tf32(x, np):
    """float32 x as a TF32 operand: its lower 13 mantissa bits cleared (infinities and NaN stay)."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    kept = (bits & np.uint32(0xFFFFE000)).view(np.float32)
    return np.where(np.isfinite(x), kept, x)
