"""The language's fixed vocabulary: index variables, shape symbols, operators, functions, dtypes.

Typing rules are named here and applied in types.py; targets map op names to code in codegen/.
"""

from __future__ import annotations

import builtins as _py_builtins
import keyword
from dataclasses import dataclass

INDEX_VARS = ("b", "h", "q", "kv")
BLOCK_VARS = ("q_block", "kv_block")
SHAPE_SYMBOLS = ("B", "H", "HKV", "SQ", "SKV", "D")
POOL_REDUCTIONS = ("mean", "max", "min")
POOL_OPERANDS = ("q", "k")

PARAM_TYPES = ("int", "float", "bool")
DTYPES = {
    "float16": "float",
    "bfloat16": "float",
    "float32": "float",
    "float64": "float",
    "int32": "int",
    "int64": "int",
    "bool": "bool",
}
NORMALIZATIONS = ("softmax", "elementwise", "rownorm")
UNSUPPORTED_NORMALIZATIONS = ("linear", "kernelized", "feature_map")
SELECTION_CRITERIA = ("top", "threshold", "share")
SELECTION_SCOPES = ("head", "kv_head")

# Binary operators by source token.
BINARY_OPS = {
    "+": "add",
    "-": "sub",
    "*": "mul",
    "/": "truediv",
    "//": "floordiv",
    "%": "mod",
    "**": "pow",
    "<": "lt",
    "<=": "le",
    ">": "gt",
    ">=": "ge",
    "==": "eq",
    "!=": "ne",
}
OP_SYMBOLS = {op: tok for tok, op in BINARY_OPS.items()}
COMPARISONS = ("lt", "le", "gt", "ge", "eq", "ne")


@dataclass(frozen=True)
class Function:
    name: str
    arity: int
    rule: str  # typing rule, see types.py


FUNCTIONS = {
    f.name: f
    for f in (
        Function("abs", 1, "same"),
        Function("min", 2, "join"),
        Function("max", 2, "join"),
        Function("clamp", 3, "join"),
        Function("where", 3, "where"),
        Function("exp", 1, "float"),
        Function("exp2", 1, "float"),
        Function("log", 1, "float"),
        Function("log2", 1, "float"),
        Function("sqrt", 1, "float"),
        Function("pow", 2, "float"),
        Function("tanh", 1, "float"),
        Function("sigmoid", 1, "float"),
        Function("softplus", 1, "float"),
        Function("relu", 1, "same"),
        Function("float", 1, "float"),
        Function("bitand", 2, "int"),
        Function("dot", 2, "dot"),
    )
}

# Names a user may not take for a spec, param, input or let: they would be ambiguous in the
# language or shadow a name the generated Python relies on.
GENERATED_NAMES = {
    "q", "k", "v", "selection", "return_lse", "torch", "math", "attention", "select",
    "BLOCK_Q", "BLOCK_KV", "SPEC_NAME", "BlockSelection", "NamedTuple", "Module", "self",
}
RESERVED_NAMES = (
    set(INDEX_VARS)
    | set(BLOCK_VARS)
    | set(SHAPE_SYMBOLS)
    | set(FUNCTIONS)
    | set(POOL_REDUCTIONS)
    | GENERATED_NAMES
    | {"score", "DV", "G", "true", "false"}
)


def reserved_reason(name: str) -> str | None:
    """Why `name` cannot name a user entity, or None if it can."""
    if name.startswith("_"):
        return "names starting with '_' are reserved for generated code"
    if keyword.iskeyword(name) or keyword.issoftkeyword(name):
        return f"'{name}' is a Python keyword and cannot name anything in generated code"
    if name in RESERVED_NAMES:
        return f"'{name}' is a built-in name of the language"
    if hasattr(_py_builtins, name):
        return f"'{name}' would shadow a Python built-in in generated code"
    return None
