"""sympy functions with torch's derivatives: each built-in's sympy form, named by its op registry entry
(ops.py) and used by passes/derivative.py.

sympy's own exp, log, sqrt and tanh differentiate as torch does. The functions defined here are
the built-ins whose derivative sympy does not know, or knows differently at a kink: their fdiff
follows torch's autograd there (relu'(0) = 0, abs'(0) = 0, max and min split a tie evenly), so kernel
gradients match the reference's everywhere, not only almost everywhere. `Where`, `Greater` and `Equal`
carry the piecewise structure of those derivatives back to the IR.
"""

from __future__ import annotations

import sympy

# sympy's own functions, which differentiate as torch does
exp, log, sqrt, tanh = sympy.exp, sympy.log, sympy.sqrt, sympy.tanh


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


class Elu(sympy.Function):
    def fdiff(self, argindex=1):
        x = self.args[0]
        return Where(Greater(x, 0), 1, sympy.exp(x))  # torch: 1 above 0, elu(x) + 1 = e^x at and below


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


def clamp(x, lo, hi):
    """clamp(x, lo, hi) = min(max(x, lo), hi), as the reference computes it."""
    return Min(Max(x, lo), hi)


def exp2(x):
    return sympy.Integer(2) ** x


def log2(x):
    return sympy.log(x) / sympy.log(2)


def power(x, y):
    return x**y


def identity(x):
    """float(x): the same real number."""
    return x
