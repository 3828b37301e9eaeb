"""Algebraic simplification: integer polynomials through sympy, exact float identities by hand.

What it rewrites (every rewrite is exact, see "Exactness" below):

- integer polynomials: every maximal tree of int `+ - *` and unary `-` is expanded and collected
  by sympy over its atoms (index variables, shape symbols, params, and any other int subtree such as
  `q // W` or `ids[b, q]`, which are simplified first, on their own): `(q + 1) - (kv + 1)` -> `q - kv`,
  `2 * q - q` -> `q`, `q - kv + (SKV - SQ) - (SKV - SQ)` -> `q - kv`, `2 * q + 2 * kv` -> `2 * (q + kv)`;
- integer comparisons: a term on both sides is cancelled, `q + 1 <= kv + 1` -> `q <= kv`,
  `x == x` -> `true` for ints;
- identities that hold bit for bit in IEEE arithmetic: `x * 1.0`, `1.0 * x`, `x / 1.0`, `x - 0.0`,
  `x + (-0.0)` -> `x`; `x * -1.0` -> `-x`; `-(-x)` -> `x`; `x + (-y)` -> `x - y`; `x - (-y)` -> `x + y`;
  `(-x) + y` -> `y - x`; `(-x) * (-y)` -> `x * y`; `where(c, a, a)`, `min(a, a)`, `max(a, a)` -> `a`;
  `abs(abs(x))`, `abs(-x)` -> `abs(x)`; for ints `x // 1` -> `x`, `x % 1` -> `0`;
- what becomes constant is folded as fold_constants would (a comparison of two literals, `float(3)`,
  `and`/`or` with a literal), except where folding would raise (a division by zero stays a run-time error).

A rewrite is kept only when the new expression has strictly fewer IR nodes than the one it
replaces, so the pass never grows code and leaves the user's grouping (`q + (SKV - SQ)`, which
the hoisting pass and the band analysis like) alone when nothing cancels. The replaced node's
span goes to the new root and to the nodes the rewrite creates; atoms keep their own spans.

Exactness. Integer `+ - *` are the ring operations of int64 two's-complement arithmetic, so an
identity of integer polynomials holds bit for bit even when a value wraps around; `x // 1`, `x % 1`
and the equality cancellation are exact under wrap-around too. Cancelling a term across `<`, `<=`,
`>`, `>=` is exact over the integers, i.e. as long as neither side overflows 64 bits (index values,
shape symbols and sane params are far from 2**63; we ignore that corner). The reference target
evaluates scalar-only subexpressions (shape symbols, params) with Python ints, which never wrap;
an identity of polynomials holds there too. Coefficients that would not fit in 64 bits are never
produced (the original is kept). Float rewrites are limited to the IEEE identities above; in
particular `x + 0.0` is kept (it turns -0.0 into +0.0), `x - x` is kept (inf - inf is NaN), and float
sums are never re-associated or collected (that changes rounding). One thing is exact only to an ulp:
a transcendental function (`exp`, `tanh`, ...) whose arguments a rewrite leaves constant is folded with
Python's libm, and torch's vectorized functions may round the last bit differently.
"""

from __future__ import annotations

import dataclasses
import math

import sympy

from ..diagnostics import AttnError
from ..ir import Expr, Spec, const, level_of, map_exprs, walk
from ..types import infer
from .fold import SCALAR_OPS, fold_expr
from .symbolic import NotRepresentable, SymbolTable, exact_key, from_sympy, to_sympy

_RING = ("add", "sub", "mul", "neg")
MAX_EXPANDED_TERMS = 256  # beyond this a product is not expanded: (a + b) ** 40 would never finish
_ORDER = ("lt", "le", "gt", "ge")
_EQUALITY = ("eq", "ne")


def simplify_algebra(spec: Spec) -> Spec:
    """Pass: simplify integer polynomials, integer comparisons and exact float identities."""
    simplifier = _Simplifier(spec)
    out = map_exprs(spec, simplifier.expr)
    return _relevel(out) if out.bindings else out


def simplify_expr(expr: Expr, spec: Spec) -> Expr:
    """One expression of spec, simplified."""
    return _Simplifier(spec).expr(expr)


def size(expr: Expr) -> int:
    """The number of IR nodes (the measure the pass never lets grow)."""
    return sum(1 for _ in walk(expr))


def _relevel(spec: Spec) -> Spec:
    """A binding whose value lost its last `q` or `kv` now varies less: record its new level."""
    bindings = tuple(dataclasses.replace(b, level=level_of(b.value, spec)) for b in spec.bindings)
    return dataclasses.replace(spec, bindings=bindings)


class _Simplifier:
    def __init__(self, spec: Spec):
        self.spec = spec
        self.types: dict = {}  # one infer() cache for the whole pass (it keeps its nodes alive)

    def type(self, expr: Expr) -> str:
        return infer(expr, self.spec, self.types)

    # -------------------------------------------------------------- the walk

    def expr(self, expr: Expr) -> Expr:
        if expr.op in _RING and self.type(expr) == "int":
            return self.polynomial(expr)
        args = tuple(self.expr(a) for a in expr.args)
        node = expr if args == expr.args and all(a is b for a, b in zip(args, expr.args)) else dataclasses.replace(expr, args=args)
        return self.node(node)

    def node(self, node: Expr) -> Expr:
        """Local rules on a node whose children are simplified, to a fixpoint; never larger."""
        best, changed = node, True
        while changed:
            changed = False
            for rule in (self.identity, self.comparison, _fold):
                candidate = rule(best)
                if candidate is not None and size(candidate) < size(best) and self.same_type(candidate, best):
                    best, changed = _with_span(candidate, best), True
                    break
        return best

    def identity(self, node: Expr) -> Expr | None:
        rule = _IDENTITIES.get(node.op)
        return rule(node, self) if rule is not None else None

    def same_type(self, new: Expr, old: Expr) -> bool:
        return self.type(new) == self.type(old)

    # -------------------------------------------------------------- integer polynomials

    def polynomial(self, expr: Expr) -> Expr:
        """A maximal int `+ - *` tree: simplify its atoms, then let sympy collect the polynomial."""
        tree = self.atoms_simplified(expr)
        sym, table = to_sympy(tree, self.spec, types=self.types)
        if _expanded_terms(sym) > MAX_EXPANDED_TERMS:
            return self.smallest(tree, [sym], table)
        expanded = sympy.expand(sym)
        return self.smallest(tree, [sym, expanded, sympy.factor_terms(expanded)], table)

    def atoms_simplified(self, expr: Expr) -> Expr:
        if expr.op in _RING and self.type(expr) == "int":
            args = tuple(self.atoms_simplified(a) for a in expr.args)
            return expr if all(a is b for a, b in zip(args, expr.args)) else dataclasses.replace(expr, args=args)
        return self.expr(expr)

    def smallest(self, original: Expr, candidates, table: SymbolTable) -> Expr:
        best = original
        for sym in candidates:
            try:
                rebuilt = from_sympy(sym, table, original.span, want="int")
            except NotRepresentable:
                continue
            if size(rebuilt) < size(best):
                best = rebuilt
        return best

    # -------------------------------------------------------------- integer comparisons

    def comparison(self, node: Expr) -> Expr | None:
        """Cancel the terms two int sides share: `q + 1 <= kv + 1` -> `q <= kv`."""
        if node.op not in _ORDER + _EQUALITY or any(self.type(a) != "int" for a in node.args):
            return None
        left, right = node.args
        table = SymbolTable()
        a, _ = to_sympy(left, self.spec, table, types=self.types)
        b, _ = to_sympy(right, self.spec, table, types=self.types)
        if _expanded_terms(a) + _expanded_terms(b) > MAX_EXPANDED_TERMS:
            return None
        ca, cb = _coefficients(sympy.expand(a)), _coefficients(sympy.expand(b))
        shared = [m for m in ca if m in cb]
        if not shared:
            return None
        for m in shared:
            d = ca.pop(m) - cb.pop(m)
            if d > 0:
                ca[m] = d
            elif d < 0:
                cb[m] = -d
        try:
            new_left = from_sympy(_sum(ca), table, left.span, want="int")
            new_right = from_sympy(_sum(cb), table, right.span, want="int")
        except NotRepresentable:
            return None
        result = Expr(node.op, (new_left, new_right), span=node.span)
        return _fold(result) if new_left.op == new_right.op == "const" else result


def _expanded_terms(sym) -> int:
    """An upper bound on the number of terms sympy.expand would produce (products multiply)."""
    if sym.is_Add:
        return sum(_expanded_terms(a) for a in sym.args)
    if sym.is_Mul:
        return math.prod(_expanded_terms(a) for a in sym.args)
    if sym.is_Pow and sym.exp.is_Integer and sym.exp > 0:
        return _expanded_terms(sym.base) ** int(sym.exp)
    return 1


def _coefficients(sym) -> dict:
    out: dict = {}
    for term in sympy.Add.make_args(sym):
        coeff, rest = term.as_coeff_Mul()
        out[rest] = out.get(rest, 0) + coeff
    return {m: c for m, c in out.items() if c != 0}


def _sum(coefficients: dict):
    return sympy.Add(*[c * m for m, c in coefficients.items()])


# ------------------------------------------------------------------ exact local identities


def _is(e: Expr, value) -> bool:
    """e is the literal `value` with the same type (and the same sign of zero)."""
    if e.op != "const" or type(e.literal) is not type(value) or e.literal != value:
        return False
    return not isinstance(value, float) or str(e.literal) == str(value)


def _as_type(x: Expr, want: str, s: _Simplifier) -> Expr | None:
    """x in place of a node of type `want`: an int x meeting a float becomes float(x)."""
    t = s.type(x)
    if t == want:
        return x
    return Expr("float", (x,), span=x.span) if (t, want) == ("int", "float") else None


def _mul(node: Expr, s: _Simplifier) -> Expr | None:
    a, b = node.args
    want = s.type(node)
    if want == "float":
        for x, one in ((a, b), (b, a)):
            if _is(one, 1.0):
                return _as_type(x, want, s)
            if _is(one, -1.0):
                return Expr("neg", (_as_type(x, want, s),))
    if a.op == "neg" and b.op == "neg":
        return Expr("mul", (a.args[0], b.args[0]))
    return None


def _add(node: Expr, s: _Simplifier) -> Expr | None:
    a, b = node.args
    if _is(b, -0.0):
        return _as_type(a, s.type(node), s)
    if b.op == "neg":
        return Expr("sub", (a, b.args[0]))
    if a.op == "neg":
        return Expr("sub", (b, a.args[0]))
    return None


def _sub(node: Expr, s: _Simplifier) -> Expr | None:
    a, b = node.args
    if _is(b, 0.0):
        return _as_type(a, s.type(node), s)
    if b.op == "neg":
        return Expr("add", (a, b.args[0]))
    return None


def _truediv(node: Expr, s: _Simplifier) -> Expr | None:
    a, b = node.args
    return _as_type(a, "float", s) if _is(b, 1.0) and s.type(a) == "float" else None


def _neg(node: Expr, s: _Simplifier) -> Expr | None:
    return node.args[0].args[0] if node.args[0].op == "neg" else None


def _same_branches(node: Expr, s: _Simplifier) -> Expr | None:
    a, b = node.args[-2:]
    return a if exact_key(a) == exact_key(b) else None


def _abs(node: Expr, s: _Simplifier) -> Expr | None:
    inner = node.args[0]
    return Expr("abs", (inner.args[0],)) if inner.op in ("abs", "neg") else None


def _floordiv(node: Expr, s: _Simplifier) -> Expr | None:
    return node.args[0] if _is(node.args[1], 1) else None


def _mod(node: Expr, s: _Simplifier) -> Expr | None:
    return const(0) if _is(node.args[1], 1) else None


_IDENTITIES = {
    "mul": _mul, "add": _add, "sub": _sub, "truediv": _truediv, "neg": _neg,
    "where": _same_branches, "min": _same_branches, "max": _same_branches,
    "abs": _abs, "floordiv": _floordiv, "mod": _mod,
}


def _fold(node: Expr) -> Expr | None:
    """Constant folding of a node whose operands became literals (never raising)."""
    if node.op not in SCALAR_OPS or not node.args:
        return None
    literals = [a.op == "const" for a in node.args]
    if not (all(literals) or (node.op in ("and", "or", "where") and any(literals))):
        return None
    try:
        return fold_expr(node)
    except (AttnError, ArithmeticError, ValueError):
        return None


def _with_span(new: Expr, old: Expr) -> Expr:
    """The replaced node's span on the new root, and on every node the rewrite created."""
    kept = {id(n) for n in walk(old)}

    def respan(e: Expr) -> Expr:
        if id(e) in kept:
            return e
        args = tuple(respan(a) for a in e.args)
        return Expr(e.op, args, e.value, old.span)

    return respan(new)
