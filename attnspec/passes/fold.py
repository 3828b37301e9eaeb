"""Constant folding: evaluate every subexpression whose operands are constants.

Scalar semantics match what the targets compute at run time: `//` floors, `%` takes the sign
of the divisor, float functions follow IEEE (log(0) = -inf, sqrt(-1) = nan), integers are 64-bit.
"""

from __future__ import annotations

import math

from ..diagnostics import AttnError
from ..ir import Expr, Spec, const, map_exprs, rewrite

INT64 = (-(2**63), 2**63 - 1)


def fold_constants(spec: Spec) -> Spec:
    """Pass: fold constant subexpressions and trivial boolean identities everywhere."""
    return map_exprs(spec, fold_expr)


def fold_expr(expr: Expr) -> Expr:
    return rewrite(expr, _fold_node)


def _fold_node(node: Expr) -> Expr:
    if node.args and all(a.op == "const" for a in node.args) and node.op in SCALAR_OPS:
        return const(_evaluate(node), node.span)
    return _boolean_identity(node)


def _evaluate(node: Expr):
    values = [a.literal for a in node.args]
    try:
        result = SCALAR_OPS[node.op](*values)
    except ZeroDivisionError:
        raise AttnError("integer division by zero", node.span) from None
    if isinstance(result, int) and not isinstance(result, bool) and not INT64[0] <= result <= INT64[1]:
        raise AttnError("integer overflow: the value does not fit in 64 bits", node.span)
    return result


def _boolean_identity(node: Expr) -> Expr:
    if node.op in ("and", "or"):
        absorbing = node.op == "or"  # x or true -> true; x and false -> false
        for i, arg in enumerate(node.args):
            if arg.op == "const":
                return arg if arg.literal is absorbing else node.args[1 - i]
    if node.op == "where" and node.args[0].op == "const":
        return node.args[1] if node.args[0].literal else node.args[2]
    return node


# ------------------------------------------------------------------ scalar semantics


def _float_div(a, b):
    a, b = float(a), float(b)
    if b == 0.0:
        return math.nan if a == 0.0 or math.isnan(a) else math.copysign(math.inf, a) * math.copysign(1.0, b)
    return a / b


def _pow(a, b):
    a, b = float(a), float(b)
    try:
        result = a**b
    except ZeroDivisionError:  # 0 ** negative
        return math.copysign(math.inf, a) if b.is_integer() and int(b) % 2 else math.inf
    except OverflowError:
        odd = b.is_integer() and int(b) % 2 == 1
        return -math.inf if a < 0 and odd else math.inf
    return math.nan if isinstance(result, complex) else result


def _exp(x):
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf


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


def _relu(x):
    return x if x > 0 or _nan(x) else type(x)(0)


def _join(*xs):
    return [float(x) for x in xs] if any(isinstance(x, float) for x in xs) else list(xs)


def _min(a, b):
    a, b = _join(a, b)
    return math.nan if _nan(a) or _nan(b) else min(a, b)


def _max(a, b):
    a, b = _join(a, b)
    return math.nan if _nan(a) or _nan(b) else max(a, b)


def _nan(x) -> bool:
    return isinstance(x, float) and math.isnan(x)


def _clamp(x, lo, hi):
    return _min(_max(x, lo), hi)


def _where(c, a, b):
    a, b = _join(a, b)
    return a if c else b


def _arith(fn):
    def apply(a, b):
        a, b = _join(a, b)
        return fn(a, b)

    return apply


SCALAR_OPS = {
    "add": _arith(lambda a, b: a + b),
    "sub": _arith(lambda a, b: a - b),
    "mul": _arith(lambda a, b: a * b),
    "truediv": _float_div,
    "floordiv": lambda a, b: a // b,
    "mod": lambda a, b: a % b,
    "pow": _pow,
    "neg": lambda a: -a,
    "lt": lambda a, b: a < b,
    "le": lambda a, b: a <= b,
    "gt": lambda a, b: a > b,
    "ge": lambda a, b: a >= b,
    "eq": lambda a, b: a == b,
    "ne": lambda a, b: a != b,
    "and": lambda a, b: a and b,
    "or": lambda a, b: a or b,
    "not": lambda a: not a,
    "abs": abs,
    "min": _min,
    "max": _max,
    "clamp": _clamp,
    "where": _where,
    "exp": _exp,
    "exp2": lambda x: _pow(2.0, x),
    "log": _log,
    "log2": lambda x: _log(x, math.log2),
    "sqrt": lambda x: math.sqrt(x) if x >= 0 else math.nan,  # nan >= 0 is False: nan
    "tanh": lambda x: math.tanh(x),
    "sigmoid": _sigmoid,
    "softplus": _softplus,
    "relu": _relu,
    "float": float,
    "bitand": lambda a, b: a & b,
}
