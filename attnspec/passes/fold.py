"""Constant folding: evaluate every subexpression whose operands are constants.

Scalar semantics match what the targets compute at run time: `//` floors, `%` takes the sign
of the divisor, float functions follow IEEE (log(0) = -inf, sqrt(-1) = nan), integers are 64-bit.
"""

from __future__ import annotations

from ..diagnostics import AttnError
from ..ir import Expr, Spec, const, map_exprs, rewrite
from ..ops import OPS, join_numbers, true_divide

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


def _arith(fn):
    def apply(a, b):
        a, b = join_numbers(a, b)
        return fn(a, b)

    return apply


SCALAR_OPS = {
    "add": _arith(lambda a, b: a + b),
    "sub": _arith(lambda a, b: a - b),
    "mul": _arith(lambda a, b: a * b),
    "truediv": true_divide,
    "floordiv": lambda a, b: a // b,
    "mod": lambda a, b: a % b,
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
    **{name: op.scalar for name, op in OPS.items() if op.scalar is not None},
}
