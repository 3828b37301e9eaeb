"""The op registry: every built-in function of the language, once, with everything each stage needs.

An entry says how the function is typed (a rule of types.py), folded on Python numbers (passes/fold.py),
computed on tensors (the reference's semantics: the generated reference and flex modules, the band
interpreter, interval endpoints), bounded on intervals (analysis/interval.py), differentiated (a sympy
function of calculus.py, by name, so that run-time code never imports sympy: passes/derivative.py) and
spelled in a Triton kernel (codegen/triton.py). Adding a built-in
is one entry here and its tests; nothing else names it.

Operators (`+`, `<`, `and`, ...) are the language's fixed arithmetic: their rules are the algorithms of
each analysis (interval products, sympy's ring, ...), named in those modules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch


# Interval behaviour of a function of one number (analysis/interval.py applies it): INCREASING, a
# Domain, the name of one of interval.py's rules, or UNBOUNDED.


@dataclass(frozen=True)
class Increasing:
    """f(lo) and f(hi) bound f on [lo, hi]."""


INCREASING = Increasing()
UNBOUNDED = None  # nothing is known: the whole line (always sound)


@dataclass(frozen=True)
class Domain:
    """Increasing where defined, for x >= low; NaN below it (log, sqrt)."""

    low: float


@dataclass(frozen=True)
class Op:
    name: str
    params: tuple[str, ...]
    rule: str  # the typing rule, see types.py: same, join, float, int, where, dot
    scalar: Callable  # on Python numbers (constant folding), with the reference's semantics
    tensor: Callable  # on tensors, the reference's semantics
    triton: str  # spelling in a kernel: a triton.language function or one of runtime/kernel.py
    interval: object = UNBOUNDED  # INCREASING, a Domain, UNBOUNDED, or a rule of interval.py by name
    sympy: str | None = None  # the function on sympy expressions, named in calculus.py; None: no derivative

    @property
    def arity(self) -> int:
        return len(self.params)

    @property
    def signature(self) -> str:
        return f"{self.name}({', '.join(self.params)})"


# ---------------------------------------------------------------- scalar semantics (constant folding)


def _nan(x) -> bool:
    return isinstance(x, float) and math.isnan(x)


def join_numbers(*xs):
    return [float(x) for x in xs] if any(isinstance(x, float) for x in xs) else list(xs)


def _both_zero(a, b) -> bool:
    return isinstance(a, float) and a == b == 0.0


def _min(a, b):
    """IEEE 754-2019 minimum: NaN if either is NaN, and -0.0 below 0.0 (the language's rule, every target)."""
    a, b = join_numbers(a, b)
    if _nan(a) or _nan(b):
        return math.nan
    if _both_zero(a, b):
        return -(-a - b)  # -0.0 if either is
    return min(a, b)


def _max(a, b):
    """IEEE 754-2019 maximum: NaN if either is NaN, and 0.0 above -0.0."""
    a, b = join_numbers(a, b)
    if _nan(a) or _nan(b):
        return math.nan
    if _both_zero(a, b):
        return a + b  # 0.0 unless both are -0.0
    return max(a, b)


def _clamp(x, lo, hi):
    return _min(_max(x, lo), hi)


def _where(c, a, b):
    a, b = join_numbers(a, b)
    return a if c else b


def _exp(x):
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf


def true_divide(a, b):
    """a / b in float64 as torch computes it: +-inf for a nonzero numerator over a zero divisor (the
    signs of both decide), NaN for 0 / 0; Python raises instead."""
    a, b = float(a), float(b)
    if b == 0.0:
        return math.nan if a == 0.0 or math.isnan(a) else math.copysign(math.inf, a) * math.copysign(1.0, b)
    return a / b


def power(a, b):
    """a ** b in float64 as torch.pow computes it: inf on overflow, NaN for a negative base with a
    fractional exponent, +-inf for 0 ** negative."""
    a, b = float(a), float(b)
    try:
        result = a**b
    except ZeroDivisionError:  # 0 ** negative
        return math.copysign(math.inf, a) if b.is_integer() and int(b) % 2 else math.inf
    except OverflowError:
        odd = b.is_integer() and int(b) % 2 == 1
        return -math.inf if a < 0 and odd else math.inf
    return math.nan if isinstance(result, complex) else result


def _log(x, log=math.log):
    if math.isnan(x):
        return math.nan
    if x > 0:
        return log(x)
    return -math.inf if x == 0 else math.nan


def _sigmoid(x):
    x = float(x)
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def _softplus(x):
    x = float(x)
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def _elu(x):
    """x above 0, e^x - 1 at and below (torch's elu with alpha = 1)."""
    x = float(x)
    return x if x > 0 or _nan(x) else math.expm1(x)


def _relu(x):
    return x if x > 0 or _nan(x) else type(x)(0)


# ---------------------------------------------------------------- tensor semantics


def _tensor_softplus(x):
    return torch.logaddexp(x, torch.zeros_like(x))


def _tensor_minimum(a, b):
    """torch.minimum gives 0.0 or -0.0 for the pair lane by lane; the language says -0.0 (see _min).
    Signs are read with signbit rather than summed: torch.compile rewrites x + 0.0 as x."""
    zeros = (a == 0) & (b == 0)
    return torch.where(zeros, torch.where(torch.signbit(a), a, b), torch.minimum(a, b))


def _tensor_maximum(a, b):
    zeros = (a == 0) & (b == 0)
    return torch.where(zeros, torch.where(torch.signbit(a), b, a), torch.maximum(a, b))


def _tensor_clamp(x, lo, hi):
    return _tensor_minimum(_tensor_maximum(x, lo), hi)


def _tensor_relu(x):
    return torch.where(x <= 0, torch.zeros_like(x), x)  # 0.0 for -0.0, NaN for NaN


def _ilog2(x: int) -> int:
    """floor(log2(x)) for x >= 1, exact on every 64-bit integer; -1 for x <= 0."""
    return x.bit_length() - 1 if x > 0 else -1


def _pow2(n: int) -> int:
    """2 ** n as an integer; 0 for n < 0 (the floor of 2 ** n)."""
    return 1 << n if n >= 0 else 0


def _ceildiv(a: int, b: int) -> int:
    """The ceiling of a / b. A divisor 0 raises here, as `//` does: constant folding reports it; the
    run-time helpers (runtime/functions.py, runtime/kernel.py) give 0, as for `a // 0`."""
    return -((-a) // b)


def _tensor_ilog2(x):
    """Exact on int64 by a binary search over the bits; on floats (interval endpoints, inf included)
    by the exponent frexp reads, also exact."""
    if x.is_floating_point():
        exponent = torch.frexp(torch.clamp(x, min=1.0))[1].to(x.dtype) - 1
        return torch.where(x >= 1, torch.where(torch.isinf(x), x, exponent), -1.0)
    y, result = x.to(torch.int64), torch.zeros_like(x, dtype=torch.int64)
    for shift in (32, 16, 8, 4, 2, 1):
        high = y >= (1 << shift)
        result = result + torch.where(high, shift, 0)
        y = torch.where(high, y >> shift, y)
    return torch.where(x >= 1, result, -1).to(x.dtype)


def _tensor_pow2(n):
    if n.is_floating_point():
        return torch.where(n < 0, 0.0, torch.exp2(n))
    one = torch.ones_like(n, dtype=torch.int64)  # integers are 64-bit (language.md section 4)
    return torch.where(n < 0, 0, torch.bitwise_left_shift(one, torch.clamp(n, 0, 63)))


def _tensor_ceildiv(a, b):
    zero = b == 0
    return torch.where(zero, 0, -torch.div(-a, torch.where(zero, 1, b), rounding_mode="floor"))


def _tensor_dot(a, b):
    return (a * b).sum(-1)


# ---------------------------------------------------------------- the registry


OPS: dict[str, Op] = {
    op.name: op
    for op in (
        Op("abs", ("x",), "same", abs, torch.abs, "tl.abs", "abs", "Abs"),
        Op("min", ("a", "b"), "join", _min, _tensor_minimum, "_kernel.minimum", "min", "Min"),
        Op("max", ("a", "b"), "join", _max, _tensor_maximum, "_kernel.maximum", "max", "Max"),
        Op("clamp", ("x", "lo", "hi"), "join", _clamp, _tensor_clamp, "_kernel.clamp", "clamp", "clamp"),
        Op("where", ("cond", "a", "b"), "where", _where, torch.where, "tl.where", "where", "Where"),
        Op("exp", ("x",), "float", _exp, torch.exp, "tl.exp", INCREASING, "exp"),
        Op("exp2", ("x",), "float", lambda x: power(2.0, x), torch.exp2, "tl.exp2", INCREASING, "exp2"),
        Op("log", ("x",), "float", _log, torch.log, "tl.log", Domain(0.0), "log"),
        Op("log2", ("x",), "float", lambda x: _log(x, math.log2), torch.log2, "tl.log2", Domain(0.0), "log2"),
        # nan >= 0 is False: nan
        Op("sqrt", ("x",), "float", lambda x: math.sqrt(x) if x >= 0 else math.nan, torch.sqrt, "tl.sqrt", Domain(0.0), "sqrt"),
        Op("pow", ("x", "y"), "float", power, torch.pow, "", "pow", "power"),
        Op("tanh", ("x",), "float", math.tanh, torch.tanh, "_kernel.tanh", INCREASING, "tanh"),
        Op("sigmoid", ("x",), "float", _sigmoid, torch.sigmoid, "tl.sigmoid", INCREASING, "Sigmoid"),
        Op("softplus", ("x",), "float", _softplus, _tensor_softplus, "_kernel.softplus", INCREASING, "Softplus"),
        Op("relu", ("x",), "same", _relu, _tensor_relu, "_kernel.relu", INCREASING, "Relu"),
        Op("elu", ("x",), "float", _elu, torch.nn.functional.elu, "_kernel.elu", INCREASING, "Elu"),
        Op("float", ("x",), "float", float, lambda x: x, "_kernel.as_float", INCREASING, "identity"),
        Op("bitand", ("a", "b"), "int", lambda a, b: a & b, torch.bitwise_and, "", "bitand"),
        Op("ilog2", ("x",), "int", _ilog2, _tensor_ilog2, "_kernel.ilog2", INCREASING),
        Op("pow2", ("n",), "int", _pow2, _tensor_pow2, "_kernel.pow2", INCREASING),
        Op("ceildiv", ("a", "b"), "int", _ceildiv, _tensor_ceildiv, "_kernel.ceildiv", "ceildiv"),
        Op("dot", ("u", "v"), "dot", None, _tensor_dot, ""),
    )
}
