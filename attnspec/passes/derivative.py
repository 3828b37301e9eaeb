"""Symbolic derivatives of score mods, weights and sink logits, for backward kernels (sympy inside).

`derivative(expr, wrt, spec)` is the IR of d expr / d wrt, where `wrt` is a leaf of expr: the
`score` leaf or one load of a float input (loads with equal indices are one variable). It is a pure
function of the IR: sympy differentiates, the result is rebuilt as IR and handed to the renderers.

How an expression becomes sympy:
- every subtree that does not contain `wrt` is an *atom* (a Symbol standing for the subtree, kept
  by symbolic.SymbolTable), and so is every subtree that is piecewise constant in it (comparisons,
  boolean logic): its derivative is 0 wherever it exists;
- `+ - * /`, float(x), exp, log, sqrt, tanh, powers are sympy's own; exp2 and log2 are written with
  base 2 (`//` and `%` take integers, which never hold a float variable);
- sigmoid, softplus, relu, abs, min, max, clamp (= min(max(x, lo), hi), as the reference computes
  it) and where are sympy functions defined here, whose derivatives follow torch's autograd at the
  kinks (relu' (0) = 0, abs' (0) = 0, max and min split a tie evenly), so kernel gradients match the
  reference's everywhere, not only almost everywhere.

Temps (bindings) that do not depend on `wrt` stay temps, so the derivative reuses what the kernel
computed for the forward value; temps that do are inlined and differentiated.
"""

from __future__ import annotations

import math
from fractions import Fraction

import sympy

from ..diagnostics import AttnError
from ..ir import Expr, Spec, const, inline_bindings, walk
from ..types import infer
from .symbolic import NotRepresentable, SymbolTable, _Builder, exact_key

_PIECEWISE_CONSTANT = ("lt", "le", "gt", "ge", "eq", "ne", "and", "or", "not")


# ------------------------------------------------------------------ functions with torch's derivatives


class Where(sympy.Function):
    """where(c, a, b); c is a boolean atom or a comparison below."""

    @classmethod
    def eval(cls, c, a, b):
        return a if a == b else None

    def fdiff(self, argindex=1):
        c = self.args[0]
        return {1: sympy.Integer(0), 2: Where(c, 1, 0), 3: Where(c, 0, 1)}[argindex]


class Greater(sympy.Function):
    """The comparison a > b, as the first argument of Where."""

    def fdiff(self, argindex=1):
        return sympy.Integer(0)


class Equal(sympy.Function):
    """The comparison a == b, as the first argument of Where."""

    def fdiff(self, argindex=1):
        return sympy.Integer(0)


def _step(x):
    return Where(Greater(x, 0), 1, 0)


class Sigmoid(sympy.Function):
    def fdiff(self, argindex=1):
        return self * (1 - self)


class Softplus(sympy.Function):
    def fdiff(self, argindex=1):
        return Sigmoid(self.args[0])


class Relu(sympy.Function):
    def fdiff(self, argindex=1):
        return _step(self.args[0])  # torch: the gradient passes where relu(x) > 0


class Abs(sympy.Function):
    def fdiff(self, argindex=1):
        x = self.args[0]
        return Where(Greater(x, 0), 1, Where(Greater(0, x), -1, 0))  # torch: sign(x), 0 at 0


def _tie_split(winner, loser):
    """d max(a, b) / d a with torch's rule: 1 where a wins, 1/2 on a tie, 0 where it loses."""
    return Where(Greater(winner, loser), 1, Where(Equal(winner, loser), sympy.Rational(1, 2), 0))


class Max(sympy.Function):
    def fdiff(self, argindex=1):
        a, b = self.args
        return _tie_split(a, b) if argindex == 1 else _tie_split(b, a)


class Min(sympy.Function):
    def fdiff(self, argindex=1):
        a, b = self.args
        return _tie_split(b, a) if argindex == 1 else _tie_split(a, b)


_SMOOTH = {"exp": sympy.exp, "log": sympy.log, "sqrt": sympy.sqrt, "tanh": sympy.tanh}
_CUSTOM = {"sigmoid": Sigmoid, "softplus": Softplus, "relu": Relu, "abs": Abs, "max": Max, "min": Min}


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
        if not self.depends(e) or e.op in _PIECEWISE_CONSTANT:
            return self.table.atom(e, infer(e, self.spec, self.types))
        if e.op == "temp":
            return self.convert(self.spec.binding(e.value).value)
        if e.op in _SMOOTH:
            return _SMOOTH[e.op](self.convert(e.args[0]))
        if e.op in _CUSTOM:
            return _CUSTOM[e.op](*(self.convert(a) for a in e.args))
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

    def _float(self, a):
        return self.convert(a)

    def _pow(self, a, b):
        return self.convert(a) ** self.convert(b)

    def _exp2(self, a):
        return sympy.Integer(2) ** self.convert(a)

    def _log2(self, a):
        return sympy.log(self.convert(a)) / sympy.log(2)

    def _clamp(self, x, lo, hi):
        return Min(Max(self.convert(x), self.convert(lo)), self.convert(hi))

    def _where(self, c, a, b):
        return Where(self.table.atom(c, "bool"), self.convert(a), self.convert(b))


# ------------------------------------------------------------------ sympy -> IR


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
        names = {sympy.log: "log", sympy.tanh: "tanh", Sigmoid: "sigmoid", Softplus: "softplus",
                 Relu: "relu", Abs: "abs", Max: "max", Min: "min"}
        name = names.get(type(sym))
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
