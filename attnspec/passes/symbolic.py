"""An explicit, small IR <-> sympy converter for numeric expressions (a tool inside passes).

sympy is never the IR: a pass converts a subexpression, lets sympy rearrange it, converts it back
and keeps the result only when it is smaller and exactly equivalent. The converter therefore hands
sympy only the operations whose algebra is exact:

- mode "int" (what rewriting passes use): `+ - *` and unary `-` on int-typed nodes, and int
  literals. These are the ring operations of 64-bit two's-complement integers, so any identity
  sympy proves over the integers (expanding, collecting, cancelling) also holds bit for bit under
  int64 wrap-around: the rebuilt expression computes the same int64 value for every input.
- mode "real" (for analyses, never for rewriting): additionally `+ - * /` and unary `-` on floats,
  `float(x)` casts and finite float literals (as exact rationals). This is the real-number reading of
  the expression; floating-point rounding is ignored, so a rebuilt expression is mathematically
  equal but may round differently.

Everything else (`//`, `%`, loads, `where`, comparisons, `bitand`, `abs`, `min`, `max`, `clamp`,
`relu`, every float function, non-finite literals, temps, ...) becomes an *atom*: a sympy Symbol
that stands for the original IR subtree, recorded in the SymbolTable. Structurally equal subtrees
share one atom (compared by exact_key: spans ignored, -0.0 told from 0.0), so `q // W - q // W`
cancels. from_sympy puts the
original subtree objects back, so their spans survive the round trip.

Named leaves keep readable names: index variables, shape symbols and params by their own names,
`score` as `score`; other atoms are `_a0`, `_a1`, ... (user names never start with `_`).
Symbols carry integer=True for int-typed nodes and real=True for float-typed ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction

import sympy

from ..diagnostics import NO_SPAN, Span
from ..ir import Expr, Spec, const
from ..types import infer

INT64 = (-(2**63), 2**63 - 1)
_RING = ("add", "sub", "mul", "neg")
_REAL = _RING + ("truediv", "float")
_NAMED = ("index_var", "shape", "param")
MAX_POWER = 8  # q**n is rebuilt as n - 1 multiplications; larger powers are refused


class NotRepresentable(ValueError):
    """sympy produced something the IR cannot express exactly (a too-large integer, a fraction)."""


@dataclass
class SymbolTable:
    """Atoms of one conversion: sympy Symbol <-> the IR subtree it stands for, with its type."""

    mode: str = "int"
    atoms: dict[sympy.Symbol, Expr] = field(default_factory=dict)
    types: dict[sympy.Symbol, str] = field(default_factory=dict)
    order: dict[sympy.Symbol, int] = field(default_factory=dict)  # first occurrence, for stable output
    _by_key: dict[tuple, sympy.Symbol] = field(default_factory=dict)

    def atom(self, node: Expr, type_: str) -> sympy.Symbol:
        key = exact_key(node)
        found = self._by_key.get(key)
        if found is not None:
            return found
        name = _leaf_name(node) or f"_a{len(self.atoms)}"
        assumptions = {"int": {"integer": True}, "float": {"real": True}}.get(type_, {})
        sym = sympy.Symbol(name, **assumptions)
        self._by_key[key] = sym
        self.atoms[sym] = node
        self.types[sym] = type_
        self.order[sym] = len(self.order)
        return sym


def exact_key(expr: Expr):
    """A hashable identity of expr that, unlike Expr equality, tells -0.0 from 0.0.

    Expr equality compares float literals with ==, so `x * -0.0 == x * 0.0` although they differ
    (for x = -1.0, say). Anything that merges equal subtrees must merge by this key instead.
    """
    value = expr.value
    if expr.op == "const" and isinstance(expr.literal, float):
        value = (value, math.copysign(1.0, expr.literal))
    return (expr.op, value, tuple(exact_key(a) for a in expr.args))


def _is_float(n) -> bool:
    """Whether a sympy number is a rational that is exactly a float."""
    if not n.is_Rational:
        return False
    return Fraction(float(n)) == Fraction(int(n.p), int(n.q))


def _leaf_name(node: Expr) -> str | None:
    if node.op in _NAMED:
        return node.value
    return "score" if node.op == "score" else None


# ------------------------------------------------------------------ IR -> sympy


def to_sympy(expr: Expr, spec: Spec, table: SymbolTable | None = None, *, mode: str = "int", types: dict | None = None):
    """(sympy expression, table) for expr; pass the same table to convert several expressions together.

    `mode` ("int" or "real", see the module doc) applies to a new table; a table passed in keeps its
    own. `types` is an infer() cache to share across calls.
    """
    table = table if table is not None else SymbolTable(mode)
    types = {} if types is None else types
    return _convert(expr, spec, table, types), table


def _convert(expr: Expr, spec: Spec, table: SymbolTable, types: dict):
    t = infer(expr, spec, types)
    if not _interpreted(expr, t, table.mode, spec, types):
        return table.atom(expr, t)
    if expr.op == "const":
        value = expr.literal
        if isinstance(value, int):
            return sympy.Integer(value)
        exact = Fraction(value)
        return sympy.Rational(exact.numerator, exact.denominator)
    args = [_convert(a, spec, table, types) for a in expr.args]
    if expr.op == "add":
        return args[0] + args[1]
    if expr.op == "sub":
        return args[0] - args[1]
    if expr.op == "mul":
        return args[0] * args[1]
    if expr.op == "neg":
        return -args[0]
    if expr.op == "truediv":
        return args[0] / args[1]
    return args[0]  # float(x): the same real number


def _interpreted(expr: Expr, t: str, mode: str, spec: Spec, types: dict) -> bool:
    if expr.op == "const":
        value = expr.literal
        if isinstance(value, bool):
            return False
        return isinstance(value, int) or (mode == "real" and math.isfinite(value))
    if mode == "int":
        return expr.op in _RING and t == "int"
    if expr.op not in _REAL or t not in ("int", "float"):
        return False
    return all(infer(a, spec, types) in ("int", "float") for a in expr.args)


# ------------------------------------------------------------------ sympy -> IR


def from_sympy(sym, table: SymbolTable, span: Span = NO_SPAN, want: str | None = None) -> Expr:
    """The IR of a sympy expression over the table's atoms; raises NotRepresentable.

    Int-valued parts (integer coefficients, int atoms) are built with int `+ - *` only, so no
    float ever enters an int expression. A float is produced only where a float atom or a
    non-integer coefficient (mode "real") requires one, and then int operands get an explicit
    float(...), as insert_casts would. `want="float"` makes an int-valued result a float too;
    `want="int"` refuses (NotRepresentable) anything that is not an integer polynomial.
    New nodes carry `span`; atoms are the original subtrees with their own spans.
    """
    return _Builder(table, span).build(sympy.sympify(sym), want)


class _Builder:
    def __init__(self, table: SymbolTable, span: Span):
        self.table, self.span = table, span

    def node(self, op: str, *args: Expr) -> Expr:
        return Expr(op, tuple(args), span=self.span)

    def is_int(self, sym) -> bool:
        return all(self.table.types.get(s) == "int" for s in sym.free_symbols) and all(
            n.is_Integer for n in sym.atoms(sympy.Number)
        ) and not any(p.exp.is_negative for p in sym.atoms(sympy.Pow))

    def build(self, sym, want: str | None) -> Expr:
        kind = "int" if self.is_int(sym) else "float"
        if want == "int" and kind != "int":
            raise NotRepresentable(f"{sym} is not an integer polynomial")
        expr = self._build(sym, kind)
        return self.node("float", expr) if want == "float" and kind == "int" else expr

    def _build(self, sym, kind: str) -> Expr:
        if sym.has(sympy.zoo, sympy.oo, sympy.nan):
            raise NotRepresentable(f"{sym} is not finite")
        if sym.is_Symbol:
            return self.atom(sym, kind)
        if sym.is_Number:
            return self.number(sym, kind)
        if sym.is_Add:
            return self.add(sym, kind)
        if sym.is_Mul:
            coeff, rest = sym.as_coeff_Mul()
            return self.scaled(coeff, rest, kind)
        if sym.is_Pow:
            return self.power(sym, kind)
        raise NotRepresentable(f"cannot rebuild {sym!r}")

    def atom(self, sym, kind: str) -> Expr:
        atom = self.table.atoms.get(sym)
        if atom is None:
            raise NotRepresentable(f"{sym} is not an atom of this table")
        if kind == "float" and self.table.types[sym] == "int":
            return self.node("float", atom)
        return atom

    def number(self, n, kind: str) -> Expr:
        if kind == "int":
            if not n.is_Integer or not INT64[0] <= int(n) <= INT64[1]:
                raise NotRepresentable(f"{n} is not a 64-bit integer")
            return const(int(n), self.span)
        if not _is_float(n):
            raise NotRepresentable(f"{n} is not exactly a float")
        return const(float(n), self.span)

    def terms(self, sym) -> list[tuple[sympy.Expr, sympy.Expr]]:
        """(coefficient, monomial) pairs in order of first appearance of their atoms, constants last."""
        pairs = [t.as_coeff_Mul() for t in sympy.Add.make_args(sym)]

        def key(pair):
            coeff, rest = pair
            if rest == 1:
                return (1, ())
            return (0, tuple(sorted(self.table.order.get(s, 0) for s in rest.free_symbols)), sympy.default_sort_key(rest))

        pairs.sort(key=key)
        positive = next((i for i, (c, _) in enumerate(pairs) if c > 0), 0)
        return [pairs[positive]] + pairs[:positive] + pairs[positive + 1:]  # lead with a positive term

    def add(self, sym, kind: str) -> Expr:
        pairs = self.terms(sym)
        acc = self.scaled(*pairs[0], kind)
        for coeff, rest in pairs[1:]:
            if coeff < 0 and self.fits(-coeff, kind):
                acc = self.node("sub", acc, self.scaled(-coeff, rest, kind))
            else:
                acc = self.node("add", acc, self.scaled(coeff, rest, kind))
        return acc

    def fits(self, n, kind: str) -> bool:
        return kind == "float" or int(n) <= INT64[1]

    def scaled(self, coeff, rest, kind: str) -> Expr:
        """coeff * rest, with coefficient 1 and -1 written without a multiplication."""
        if rest == 1:
            return self.number(coeff, kind)
        if kind == "float" and (not coeff.is_Integer or any(f.is_Pow and f.exp.is_negative for f in sympy.Mul.make_args(rest))):
            return self.fraction(coeff, rest)
        body = self.product([self._build(f, kind) for f in self.factors(rest)])
        if coeff == 1:
            return body
        if coeff == -1:
            return self.node("neg", body)
        return self.node("mul", self.number(coeff, kind), body)

    def fraction(self, coeff, rest) -> Expr:
        """A float product with divisors: (c * a * b) / (d * e), c or d only when they are not 1."""
        num = [self._build(f, "float") for f in self.factors(rest) if not (f.is_Pow and f.exp.is_negative)]
        den = [self._build(f.base ** -f.exp, "float") for f in self.factors(rest) if f.is_Pow and f.exp.is_negative]
        if not coeff.is_Rational:
            raise NotRepresentable(f"{coeff} is not a rational coefficient")
        p, q = (coeff, sympy.Integer(1)) if _is_float(coeff) else (sympy.Integer(coeff.p), sympy.Integer(coeff.q))
        if abs(p) != 1:
            num.insert(0, self.number(sympy.Integer(abs(p)) if p.is_Integer else abs(p), "float"))
        if q != 1:
            den.insert(0, self.number(sympy.Integer(q), "float"))
        body = self.product(num) if num else const(1.0, self.span)
        if den:
            body = self.node("truediv", body, self.product(den))
        return self.node("neg", body) if p < 0 else body

    def product(self, factors: list[Expr]) -> Expr:
        body = factors[0]
        for f in factors[1:]:
            body = self.node("mul", body, f)
        return body

    def factors(self, rest) -> list:
        args = list(sympy.Mul.make_args(rest))
        return sorted(args, key=lambda f: (min((self.table.order.get(s, 0) for s in f.free_symbols), default=-1), sympy.default_sort_key(f)))

    def power(self, sym, kind: str) -> Expr:
        base, exp = sym.as_base_exp()
        if not exp.is_Integer or exp == 0 or abs(int(exp)) > MAX_POWER:
            raise NotRepresentable(f"cannot rebuild the power {sym!r}")
        if exp < 0:
            if kind == "int":
                raise NotRepresentable("a negative power is not an integer")
            return self.node("truediv", const(1.0, self.span), self.power(base ** -exp, kind))
        b = self._build(base, kind)
        acc = b
        for _ in range(int(exp) - 1):
            acc = self.node("mul", acc, b)
        return acc
