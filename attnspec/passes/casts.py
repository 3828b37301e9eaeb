"""Make every int -> float promotion explicit, so each target renders exactly one conversion."""

from __future__ import annotations

import dataclasses

from .. import builtins as bi
from ..ir import Expr, Spec, map_exprs, rewrite
from ..stages import float_slots
from ..types import infer

# Operators whose int operands become floats when a float operand is present (comparisons too:
# an int tensor compared with a float must compare in the compute dtype, not torch's default).
_FLOAT_RESULT_OPS = ("add", "sub", "mul", "truediv", "pow", "min", "max", "clamp") + bi.COMPARISONS


def insert_casts(spec: Spec) -> Spec:
    """Pass: wrap int operands that meet floats (and int-valued float slots) in float(...)."""

    def cast_node(node: Expr) -> Expr:
        types = [infer(a, spec) for a in node.args]
        if not _wants_float_args(node, types):
            return node
        args = tuple(_to_float(a) if t == "int" else a for a, t in zip(node.args, types))
        return dataclasses.replace(node, args=args)

    def cast_expr(expr: Expr) -> Expr:
        slot = _is_float_slot(spec, expr)
        expr = rewrite(expr, cast_node)
        return _to_float(expr) if slot and infer(expr, spec) == "int" else expr

    return map_exprs(spec, cast_expr)


def _wants_float_args(node: Expr, types: list[str]) -> bool:
    if "int" not in types or "vec" in types:
        return False
    if node.op == "where":
        return "float" in types[1:]
    if node.op in _FLOAT_RESULT_OPS:
        return node.op in ("truediv", "pow") or "float" in types
    fn = bi.FUNCTIONS.get(node.op)
    return fn is not None and fn.rule == "float" and node.op != "float"


def _to_float(expr: Expr) -> Expr:
    return Expr("float", (expr,), span=expr.span)


def _is_float_slot(spec: Spec, expr: Expr) -> bool:
    """Top-level expressions whose value is used as a float whatever its type (stages.py)."""
    return any(expr is s for s in float_slots(spec))
