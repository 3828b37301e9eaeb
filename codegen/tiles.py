"""Expressions over intervals, one (query block, key block) tile at a time: the mask's tile classes in the
flex and triton modules come from block-level arithmetic (runtime/intervals.py rules), never per pair.
"""

from __future__ import annotations

from attnspec.ir import Expr, Spec
from attnspec.types import infer

from .render import ExprRenderer, python_literal


class TileRenderer(ExprRenderer):
    """Expressions over intervals: every operation becomes one line `_iN = _apply(op, ...)` of
    interval.py's rules (equal subexpressions computed once); leaves are rendered inline."""

    def __init__(self, spec: Spec):
        self.spec = spec
        self.lines: list[str] = []
        self.names: dict[Expr, str] = {}

    def statements(self, e: Expr) -> dict:
        """{"lines": the assignments in order, "result": the name or leaf holding e}."""
        result = self.render(e)
        return {"lines": list(self.lines), "result": result}

    def render(self, e: Expr) -> str:
        method = getattr(self, f"render_{e.op}", None)
        if method is not None:
            return method(e)
        return self.render_named(e)

    def render_named(self, e: Expr) -> str:
        """e's interval rule applied once, bound to a name."""
        if e not in self.names:
            code = self.render_rule(e)
            self.names[e] = f"_i{len(self.names)}"
            self.lines.append(f"{self.names[e]} = {code}")
        return self.names[e]

    render_neg = render_named  # an interval rule like any other op here, not the parent's `-x`

    def render_rule(self, e: Expr) -> str:
        args = ", ".join(self.render(a) for a in e.args)
        floats = [self.is_float(a) for a in e.args]
        flags = ""
        if any(floats):
            flags += ", float_operands=True"
        if self.is_float(e):
            flags += ", float_result=True"
        return f'_apply("{e.op}", {args}{flags})'

    def is_float(self, e: Expr) -> bool:
        return infer(e, self.spec) == "float"

    def render_const(self, e: Expr) -> str:
        return f"_tiles.scalar({e.name or python_literal(e.literal)})"

    def render_index_var(self, e: Expr) -> str:
        return f"_{e.value}"

    def render_shape(self, e: Expr) -> str:
        return f"_tiles.scalar(_{e.value})"

    def render_param(self, e: Expr) -> str:
        return f"_tiles.scalar({e.value})"

    def render_load(self, e: Expr) -> str:
        indices = ", ".join(self.render(a) for a in e.args)
        return f'_grid.load("{e.value}", {e.value}, [{indices}])'
