"""Type inference for IR expressions: int, float, bool, and vec (a pooled block vector).

Ints promote to float where a float is needed; bools never mix with numbers. Every rule
that a user can break raises an AttnError pointing at the offending node.
"""

from __future__ import annotations

from . import builtins as bi
from .diagnostics import AttnError
from .ir import WHOLE_ROW_OPS, Expr, Spec

NUMERIC = ("int", "float")


def infer(expr: Expr, spec: Spec, cache: dict | None = None) -> str:
    """The type of expr; raises AttnError on a type mistake."""
    cache = {} if cache is None else cache
    key = id(expr)
    if key not in cache:
        arg_types = [infer(a, spec, cache) for a in expr.args]
        cache[key] = (_rule(expr, arg_types, spec), expr)  # keep expr alive so id stays unique
    return cache[key][0]


def _rule(expr: Expr, types: list[str], spec: Spec) -> str:
    op = expr.op
    if op == "const":
        return expr.value[0]
    if op in ("index_var", "shape"):
        return "int"
    if op == "score":
        return "float"
    if op == "param":
        return spec.param(expr.value).type
    if op == "pool":  # a pooled q or k is a vector; a pooled per-row value, a number per block
        return "vec" if expr.value[1] in bi.POOL_OPERANDS else "float"
    if op in ("vector", "row", "feature", "entry", "feature_in", "feature_sum", "feature_norm", "rope", "kept_sum") + WHOLE_ROW_OPS:
        return _prologue_op(expr, types)
    if op == "partner":  # passes/adjoint.py's: a value at the feature's rope partner
        return types[0]
    if op == "first_half":  # passes/adjoint.py's: the feature is the first of its rope pair
        return "bool"
    if op in ("feature_mix_t", "feature_outer", "feature_softmax_grad"):  # passes/adjoint.py's gradients
        return "float"
    if op == "log_weight":  # made by the flex lowering (passes/flex.py), never written
        return "float"
    if op == "temp":
        return infer(spec.binding(expr.value).value, spec)
    if op == "load":
        return _load(expr, types, spec)
    if op in ("add", "sub", "mul", "truediv"):
        return _arith(expr, types)
    if op in ("floordiv", "mod"):
        _expect(expr, types, ("int",), "integers", f"'{bi.OP_SYMBOLS[op]}' works on integers; use '/' for float division")
        return "int"
    if op == "pow":
        _expect(expr, types, NUMERIC, "numbers")
        return "float"
    if op == "neg":
        _expect(expr, types, NUMERIC + ("vec",), "a number")
        return types[0]
    if op in bi.COMPARISONS:
        return _compare(expr, types)
    if op in ("and", "or", "not"):
        word = {"and": "'and'", "or": "'or'", "not": "'not'"}[op]
        _expect(expr, types, ("bool",), "booleans", f"{word} combines conditions such as q >= kv")
        return "bool"
    return _function(expr, types)


def _load(expr: Expr, types: list[str], spec: Spec) -> str:
    for arg, t in zip(expr.args, types):
        if t != "int":
            hint = "'/' always gives a float; use '//' for integer division" if arg.op == "truediv" else None
            raise AttnError(f"index into '{expr.value}' must be an integer, got {t}", arg.span, hint)
    return bi.DTYPES[spec.input(expr.value).dtype]


def _arith(expr: Expr, types: list[str]) -> str:
    if "vec" in types:
        return _vec_arith(expr, types)
    _expect(expr, types, NUMERIC, "numbers", "booleans do not take part in arithmetic; use where(cond, a, b)")
    if expr.op == "truediv":
        return "float"
    return "int" if types == ["int", "int"] else "float"


def _vec_arith(expr: Expr, types: list[str]) -> str:
    a, b = types
    ok = {
        "add": a == b == "vec",
        "sub": a == b == "vec",
        "mul": "vec" in (a, b) and ({a, b} - {"vec"}) <= {"int", "float", "vec"},
        "truediv": a == "vec" and b in NUMERIC,
    }[expr.op]
    if not ok:
        raise AttnError(f"cannot apply '{bi.OP_SYMBOLS[expr.op]}' to {a} and {b}", expr.span, "reduce pooled vectors with dot(u, v)")
    return "vec"


def _compare(expr: Expr, types: list[str]) -> str:
    a, b = types
    if a in NUMERIC and b in NUMERIC:
        return "bool"
    if a == b == "bool" and expr.op in ("eq", "ne"):
        return "bool"
    raise AttnError(f"cannot compare {a} with {b}", expr.span)


def _function(expr: Expr, types: list[str]) -> str:
    fn = bi.FUNCTIONS[expr.op]
    if fn.rule == "dot":
        if types != ["vec", "vec"]:
            raise AttnError("dot(u, v) takes two pooled vectors such as mean(q) and mean(k)", expr.span)
        return "float"
    if "vec" in types:
        raise AttnError(f"'{expr.op}' does not take a pooled vector", expr.span, "reduce it first with dot(u, v)")
    if fn.rule == "where":
        return _where(expr, types)
    if fn.rule == "int":
        _expect(expr, types, ("int",), "integers")
        return "int"
    _expect(expr, types, NUMERIC, "numbers")
    if fn.rule == "float":
        return "float"
    if fn.rule == "same":
        return types[0]
    return "int" if all(t == "int" for t in types) else "float"  # join


def _prologue_op(expr: Expr, types: list[str]) -> str:
    """A prologue's leaves and functions over the feature axis (ir.RowMap): a vector's element is a
    float, positions and features are ints; sum, norm and rope take numbers and give a float."""
    if expr.op in ("row", "feature", "entry", "feature_in"):
        return "int"
    if expr.op not in ("vector", "kept_sum"):
        _expect(expr, types, NUMERIC, "numbers")
    return "float"


def _where(expr: Expr, types: list[str]) -> str:
    cond, a, b = types
    if cond != "bool":
        raise AttnError(f"the condition of where must be a boolean, got {cond}", expr.args[0].span)
    if a == b:
        return a
    if a in NUMERIC and b in NUMERIC:
        return "float"
    raise AttnError(f"the branches of where have different types ({a} and {b})", expr.span)


def _expect(expr: Expr, types: list[str], allowed, what: str, hint: str | None = None) -> None:
    for arg, t in zip(expr.args, types):
        if t not in allowed:
            name = bi.OP_SYMBOLS.get(expr.op, expr.op)
            raise AttnError(f"'{name}' expects {what}, got {t}", arg.span, hint)
