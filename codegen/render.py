"""The expression renderer base shared by every target, and the template environment.

A renderer turns one IR expression into a code string. Subclasses say how leaves are named and
how each operator or built-in is spelled in their target; templates receive the strings in plans.
Only validated identifiers and re-rendered numbers from the spec reach the output.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path

import jinja2

from attnspec import builtins as bi
from attnspec.ir import Expr

_INFIX = {
    "add": "+", "sub": "-", "mul": "*", "truediv": "/", "floordiv": "//", "mod": "%",
    "lt": "<", "le": "<=", "gt": ">", "ge": ">=", "eq": "==", "ne": "!=",
}


class Plan:
    """A target's plan: the frozen dataclass of typed fields its templates are rendered from."""

    def fields(self) -> dict:
        """The plan as template variables (one level: nested plans stay objects)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


class ExprRenderer:
    """Render expressions as Python source; override the hooks a target spells differently.

    The leaves follow the sub notation every template shares: index variables and shape symbols as
    `_q`, `_SQ`, runtime params by their (validated) names, the score as `_s`, bindings as `_t0` or by
    the name of the user's let they equal."""

    infix = _INFIX

    def __init__(self, spec):
        self.spec = spec

    def render_index_var(self, e: Expr) -> str:
        return f"_{e.value}"

    def render_shape(self, e: Expr) -> str:
        return f"_{e.value}"

    def render_param(self, e: Expr) -> str:
        return e.value

    def render_score(self, e: Expr) -> str:
        return "_s"

    def render_temp(self, e: Expr) -> str:
        return self.spec.binding(e.value).symbol

    def render(self, e: Expr) -> str:
        method = getattr(self, f"render_{e.op}", None)
        if method is not None:
            return method(e)
        if e.op in self.infix:
            return self.render_infix(e, self.infix[e.op])
        if e.op in bi.FUNCTIONS:
            return self.render_call(e)
        raise NotImplementedError(f"{type(self).__name__} cannot render op {e.op!r}")

    def render_const(self, e: Expr) -> str:
        return python_literal(e.literal)

    def render_infix(self, e: Expr, symbol: str) -> str:
        left, right = (self.render(a) for a in e.args)
        return f"({left} {symbol} {right})"

    def render_neg(self, e: Expr) -> str:
        return f"(-{self.render(e.args[0])})"

    def render_call(self, e: Expr) -> str:
        return f"{self.function_name(e.op)}({', '.join(self.render(a) for a in e.args)})"

    def function_name(self, op: str) -> str:
        raise NotImplementedError


def python_literal(value) -> str:
    """A Python literal re-rendered from a parsed number (never the user's text)."""
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, int):
        return str(int(value))
    value = float(value)
    if math.isnan(value):
        return "math.nan"
    if math.isinf(value):
        return "math.inf" if value > 0 else "(-math.inf)"
    return repr(value)


@functools.lru_cache(maxsize=None)
def template_environment() -> jinja2.Environment:
    """One environment per process: Jinja compiles each template once and keeps it (a template edited
    on disk is recompiled: auto_reload checks its modification time)."""
    from attnspec.templates import TEMPLATE_DIR

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(Path(TEMPLATE_DIR))),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
