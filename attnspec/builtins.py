"""The language's fixed vocabulary: index variables, shape symbols, operators, functions, dtypes.

Typing rules are named in ops.py (functions) and applied in types.py.
"""

from __future__ import annotations

import builtins as _py_builtins
import keyword

from .ops import OPS

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
NORMALIZATIONS = ("softmax", "elementwise", "rownorm", "linear")  # linear: rownorm or elementwise of the score
UNSUPPORTED_NORMALIZATIONS = ("kernelized", "feature_map")
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


# Built-in functions by name: the op registry (ops.py) holds each one's rules.
FUNCTIONS = OPS

# Names a user may not take for a spec, param, input or let: they would be ambiguous in the
# language or shadow a name the generated Python relies on.
GENERATED_NAMES = {
    "q", "k", "v", "selection", "return_lse", "torch", "math", "attention", "select",
    "BLOCK_Q", "BLOCK_KV", "SPEC_NAME", "BlockSelection", "NamedTuple", "Module", "self",
    # the flex target's mods, factories and attention() keywords
    "score", "q_idx", "kv_idx", "dtype", "block_mask", "compiled", "build_block_mask",
    "FLEX_BLOCK", "BLOCK_MASK_PATH", "NORMALIZATION_IDENTITY", "BlockMask",
    # the triton target's modules, kernel arguments and constants
    "triton", "tl", "BLOCK_M", "BLOCK_N", "BLOCK_D", "BLOCK_DV", "IEEE", "WRITE_LSE",
    "NORMALIZATION", "SELECTION_BLOCKS", "UPCAST", "WRITE_STATS", "MASKED", "SPLIT",
}
LANGUAGE_NAMES = (
    set(INDEX_VARS)
    | set(BLOCK_VARS)
    | set(SHAPE_SYMBOLS)
    | set(FUNCTIONS)
    | set(POOL_REDUCTIONS)
    | {"score", "DV", "G", "true", "false"}
)


def reserved_reason(name: str) -> str | None:
    """Why `name` cannot name a user entity, or None if it can."""
    if name.startswith("_"):
        return "names starting with '_' are reserved for generated code"
    if keyword.iskeyword(name) or keyword.issoftkeyword(name):
        return f"'{name}' is a Python keyword and cannot name anything in generated code"
    if name in LANGUAGE_NAMES:
        return f"'{name}' is a built-in name of the language"
    if name in GENERATED_NAMES:
        return f"'{name}' is a name the generated code uses"
    if hasattr(_py_builtins, name):
        return f"'{name}' would shadow a Python built-in in generated code"
    return None
