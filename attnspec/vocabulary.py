"""The words of the language, by kind, from the grammar and the built-in registries: what editors and the
Pygments lexer colour (attnspec/lexer.py, editors/), so that highlighting cannot drift from the compiler."""

from __future__ import annotations

import re

from . import builtins as bi
from .expressions import PROLOGUE_FUNCTIONS

CONSTANTS = ("true", "false")
OPERATOR_WORDS = ("and", "or", "not")


def keywords() -> tuple[str, ...]:
    """The grammar's word literals (statement and clause words), without constants and operator words."""
    from .parser import _parser

    words = {t.pattern.value for t in _parser().terminals
             if t.pattern.type == "str" and re.fullmatch(r"[a-z_]+", t.pattern.value)}
    return tuple(sorted(words - set(CONSTANTS) - set(OPERATOR_WORDS) - {"score"}))


def functions() -> tuple[str, ...]:
    """Built-in functions: the number functions, those over a row's features, pooling and sum_kept."""
    return tuple(sorted(set(bi.FUNCTIONS) | set(PROLOGUE_FUNCTIONS) | set(bi.POOL_REDUCTIONS) | {"sum_kept"}))


def names() -> tuple[str, ...]:
    """Predefined names: index variables, shape symbols, `score`, the normalizations and parameter types."""
    return tuple(sorted(set(bi.INDEX_VARS + bi.BLOCK_VARS + bi.SHAPE_SYMBOLS + bi.NORMALIZATIONS + bi.PARAM_TYPES
                            + tuple(bi.DTYPES) + bi.SELECTION_CRITERIA) | {"score"}))
