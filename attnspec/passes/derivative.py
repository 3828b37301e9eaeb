"""Symbolic derivatives of score mods, weights and sink logits, for backward kernels (sympy inside).

`derivative(expr, wrt, spec)` is the IR of d expr / d wrt, where `wrt` is a leaf of expr: the
`score` leaf or one load of a float input (loads with equal indices are one variable). It is a pure
function of the IR: sympy differentiates, the result is rebuilt as IR and handed to the renderers.

How an expression becomes sympy:
- every subtree that does not contain `wrt` is an *atom* (a Symbol standing for the subtree, kept
  by symbolic.SymbolTable), and so is every boolean subtree (comparisons, boolean logic), which is
  piecewise constant in it: its derivative is 0 wherever it exists;
- `+ - * /` are sympy's own (`//` and `%` take integers, which never hold a float variable);
- a built-in is its registry entry's sympy function (ops.py): sympy's exp, log, sqrt, tanh, or one of
  calculus.py, whose derivatives follow torch's autograd at the kinks, so kernel gradients match the
  reference's everywhere, not only almost everywhere.

Temps (bindings) that do not depend on `wrt` stay temps, so the derivative reuses what the kernel
computed for the forward value; temps that do are inlined and differentiated.
"""

from __future__ import annotations

import math
from fractions import Fraction

import sympy

from .. import calculus
from ..calculus import Equal, Greater, Where
from ..diagnostics import AttnError
from ..ir import Expr, Spec, const, inline_bindings, walk
from ..ops import OPS
from ..types import infer
from .symbolic import NotRepresentable, SymbolTable, _Builder, exact_key

# ------------------------------------------------------------------ IR -> sympy


class _Converter:
    def __init__(self, spec: Spec, wrt: Expr):
        self.spec, self.key = spec, exact_key(wrt)
        self.table = SymbolTable("real")
        self.types: dict = {}
        self.var = self.table.atom(wrt, "float")
        self._depends: dict[int, bool] = {}

    def depends(self, e: Expr) -> bool:
        """Whether e (bindings inlined) contains the variable."""
        found = self._depends.get(id(e))
        if found is None:
            found = any(exact_key(n) == self.key for n in walk(inline_bindings(e, self.spec)))
            self._depends[id(e)] = found
        return found

    def convert(self, e: Expr):
        if exact_key(inline_bindings(e, self.spec)) == self.key:
            return self.var
        if e.op == "const" and not isinstance(e.literal, bool) and math.isfinite(e.literal):
            return sympy.Rational(Fraction(e.literal).numerator, Fraction(e.literal).denominator)
        kind = infer(e, self.spec, self.types)
        if not self.depends(e) or kind == "bool":  # comparisons and logic are piecewise constant
            return self.table.atom(e, kind)
        if e.op == "temp":
            return self.convert(self.spec.binding(e.value).value)
        op = OPS.get(e.op)
        if op is not None and op.sympy is not None:
            return getattr(calculus, op.sympy)(*(self.convert(a) for a in e.args))
        method = getattr(self, f"_{e.op}", None)
        if method is None:
            raise NotRepresentable(f"no derivative rule for '{e.op}'")
        return method(*e.args)

    def _add(self, a, b):
        return self.convert(a) + self.convert(b)

    def _sub(self, a, b):
        return self.convert(a) - self.convert(b)

    def _mul(self, a, b):
        return self.convert(a) * self.convert(b)

    def _truediv(self, a, b):
        return self.convert(a) / self.convert(b)

    def _neg(self, a):
        return -self.convert(a)


# ------------------------------------------------------------------ sympy -> IR

# the built-ins whose sympy form is a function class, by class
_REBUILT = {getattr(calculus, op.sympy): name for name, op in OPS.items()
            if op.sympy is not None and isinstance(getattr(calculus, op.sympy), type)}


class _CalculusBuilder(_Builder):
    """symbolic._Builder for float derivatives: also functions, general powers, irrational numbers."""

    def is_int(self, sym) -> bool:
        return False  # a derivative is a float

    def _build(self, sym, kind: str) -> Expr:
        if sym.is_number and not sym.is_Rational and not sym.has(sympy.zoo, sympy.oo, sympy.nan):
            return const(float(sym.evalf(20)), self.span)
        if isinstance(sym, sympy.Function) and not sym.is_number:
            return self.function(sym)
        if sym.is_Pow:
            return self.power(sym, kind)
        return super()._build(sym, kind)

    def number(self, n, kind: str) -> Expr:
        return const(float(n), self.span)  # a derivative's rational coefficient, rounded once

    def function(self, sym) -> Expr:
        args = sym.args
        if isinstance(sym, Where):
            return self.node("where", self.condition(args[0]), *(self._build(a, "float") for a in args[1:]))
        if isinstance(sym, sympy.exp):
            return self.node("exp", self._build(args[0], "float"))
        name = _REBUILT.get(type(sym))
        if name is None:
            raise NotRepresentable(f"cannot rebuild {sym!r}")
        return self.node(name, *(self._build(a, "float") for a in args))

    def condition(self, c) -> Expr:
        if isinstance(c, Greater):
            return self.node("gt", *(self._build(a, "float") for a in c.args))
        if isinstance(c, Equal):
            return self.node("eq", *(self._build(a, "float") for a in c.args))
        return self.atom(c, "bool")

    def atom(self, sym, kind: str) -> Expr:
        if self.table.types.get(sym) == "bool":
            return self.table.atoms[sym]
        return super().atom(sym, kind)

    def power(self, sym, kind: str) -> Expr:
        base, exponent = sym.as_base_exp()
        if base == 2:
            return self.node("exp2", self._build(exponent, "float"))
        if exponent == sympy.Rational(1, 2):
            return self.node("sqrt", self._build(base, "float"))
        if exponent == sympy.Rational(-1, 2):
            return self.node("truediv", const(1.0, self.span), self.node("sqrt", self._build(base, "float")))
        if exponent.is_Integer and 0 < abs(int(exponent)) <= 16:
            return super().power(sym, "float") if abs(int(exponent)) <= 8 else self._pow(base, exponent)
        return self._pow(base, exponent)

    def _pow(self, base, exponent) -> Expr:
        return self.node("pow", self._build(base, "float"), self._build(exponent, "float"))


# ------------------------------------------------------------------ the pass


def derivative(expr: Expr, wrt: Expr, spec: Spec) -> Expr:
    """The IR of d expr / d wrt (a float expression); AttnError where a built-in has no derivative."""
    converter = _Converter(spec, wrt)
    try:
        sym = converter.convert(expr)
        grad = sympy.diff(sym, converter.var)
        return _CalculusBuilder(converter.table, expr.span).build(grad, "float")
    except NotRepresentable as error:
        raise AttnError(f"cannot differentiate this expression for the backward pass: {error}", expr.span) from None


def float_loads(expr: Expr | None, spec: Spec) -> list[Expr]:
    """The distinct loads of float inputs in expr (bindings inlined), in order of appearance: the
    variables a backward pass differentiates by besides the score."""
    if expr is None:
        return []
    found: dict[tuple, Expr] = {}
    for node in walk(inline_bindings(expr, spec)):
        if node.op == "load" and infer(node, spec) == "float":
            found.setdefault(exact_key(node), node)
    return list(found.values())
