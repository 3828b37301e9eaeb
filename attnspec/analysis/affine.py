"""Affine score mods and the base-2 softmax: what a flash kernel multiplies q.k by.

A score mod is *affine* when `score_mod(s) = coefficient * s + offset` with a coefficient that
does not vary over (b, h, q, kv) (literals, params and shape symbols only) and an offset that does
not read the score (it may read indices and inputs: ALiBi, relative-position biases). Temperature
(B06: coefficient `log(SKV) / (tau * log(64))`), ALiBi (B04: coefficient 1, offset
`-(slope[h] * |q - kv|)`) and every bias table are affine; soft-capping (`cap * tanh(score / cap)`)
is not, nor is anything else that puts the score through a nonlinear function or multiplies it by
a per-element (or per-head) value. None is always a safe answer: a kernel then applies the score
mod as written.

Exactness. The identity holds over the real numbers: coefficient and offset are built from the
score mod's own subtrees by distributing `+ - * /` and `where` (e.g. `s * a / b` gives coefficient
`a / b`). In floating point, a coefficient of exactly 1.0 reproduces `s + offset` bit for bit (up
to the sign of a zero result); otherwise the kernel's `(coefficient * s) + offset` rounds
differently from the score mod's own order of operations, by a few ulps.

Base 2. `exp(x) = exp2(x * log2(e))` for every real x, so softmax weights are unchanged when every
logit and the sink are multiplied by log2(e) and exp2 replaces exp; lse comes back in base e as
`lse2 / log2(e)` (= `lse2 * ln 2`). With an affine score mod the whole logit is
`(scale * coefficient * log2(e)) * <q, k> + offset * log2(e)`, so a flash kernel multiplies q.k by a
single per-program number and adds one per-element term. Mathematically this is exact. In floating
point it costs one extra rounding: the constant log2(e) (or the folded factor) is rounded to the
compute dtype, a relative error of at most one unit roundoff u (2**-24 in float32, 2**-53 in
float64), so each base-2 logit differs from log2(e) times the base-e one by about |logit| * u, and
each weight from its base-e value by a factor of about 1 +- |logit| * u. Folding the scale and the
coefficient into one factor also re-associates their product with q.k (a few ulps). Only softmax
is affected: elementwise and rownorm apply their own f to the score, not exp.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..diagnostics import AttnError
from ..ir import Expr, Spec, const, inline_bindings, uses, walk
from ..passes.fold import fold_expr
from ..types import infer

LOG2E = math.log2(math.e)  # 1.4426950408889634 = 1 / ln 2, correctly rounded
_INDEX_FREE = ("const", "param", "shape")


@dataclass(frozen=True)
class AffineScore:
    """score_mod(s) = coefficient * s + offset (offset None: 0)."""

    coefficient: Expr  # float; literals, params and shape symbols only
    offset: Expr | None  # float; never reads the score


@dataclass(frozen=True)
class Base2Logits:
    """What a base-2 flash kernel computes: logit2 = scale * <q, k> + offset, weights via exp2.

    scale  = scale * coefficient * log2(e)   (a per-program number: verifies as a `scale =`)
    offset = offset * log2(e)                (per element, None when the score mod has none)
    sink   = sink * log2(e)                  (per row, None without a sink)
    lse (natural log) = lse2 / log2(e)
    """

    scale: Expr
    offset: Expr | None
    sink: Expr | None


class _NotAffine(Exception):
    pass


def affine_score(spec: Spec) -> AffineScore | None:
    """coefficient and offset of an affine score mod, or None when the score mod is not affine."""
    try:
        coefficient, offset = _Linear(spec).split(spec.score)
    except _NotAffine:
        return None
    coefficient = inline_bindings(coefficient or const(0.0), spec)
    if any(not n.args and n.op not in _INDEX_FREE for n in walk(coefficient)):
        return None  # reads an index, an input or a pool: not one number per program
    return AffineScore(_folded(coefficient), None if offset is None else _folded(offset))


def base2_logit_scale(spec: Spec) -> Base2Logits | None:
    """The scale, offset and sink of the base-2 softmax (see the module doc), or None.

    None when the normalization is not softmax or the score mod is not affine.
    """
    if spec.normalize.kind != "softmax":
        return None
    affine = affine_score(spec)
    if affine is None:
        return None
    linear = _Linear(spec)
    scale = linear.float_(spec.scale) if spec.scale is not None else default_scale()
    factor = linear.mul(linear.mul(scale, affine.coefficient), const(LOG2E))
    offset = None if affine.offset is None else linear.mul(affine.offset, const(LOG2E))
    sink = spec.normalize.sink
    sink = None if sink is None else linear.mul(linear.float_(sink), const(LOG2E))
    return Base2Logits(_folded(factor), offset, sink)


def default_scale() -> Expr:
    """1 / sqrt(D) as a float IR expression."""
    return Expr("truediv", (const(1.0), Expr("sqrt", (Expr("float", (Expr("shape", value="D"),)),))))


def _folded(expr: Expr) -> Expr:
    try:
        return fold_expr(expr)
    except AttnError:
        return expr


class _Linear:
    """Split an expression into (coefficient of the score, the rest); None stands for zero."""

    def __init__(self, spec: Spec):
        self.spec = spec
        self.types: dict = {}

    def split(self, e: Expr) -> tuple[Expr | None, Expr | None]:
        if not uses(e, "score"):
            return None, e
        op = e.op
        if op == "score":
            return const(1.0, e.span), None
        if op in ("add", "sub"):
            (c1, o1), (c2, o2) = self.split(e.args[0]), self.split(e.args[1])
            combine = self.add if op == "add" else self.sub
            return combine(c1, c2), combine(o1, o2)
        if op == "float":
            return self.split(e.args[0])
        if op == "neg":
            c, o = self.split(e.args[0])
            return self.sub(None, c), self.sub(None, o)
        if op == "mul":
            return self.product(*e.args)
        if op == "truediv" and not uses(e.args[1], "score"):
            c, o = self.split(e.args[0])
            return self.div(c, e.args[1]), self.div(o, e.args[1])
        if op == "where" and not uses(e.args[0], "score"):
            return self.where(*e.args)
        raise _NotAffine(op)

    def product(self, a: Expr, b: Expr):
        if uses(a, "score") and uses(b, "score"):
            raise _NotAffine("score * score")
        factor, linear = (a, b) if uses(b, "score") else (b, a)
        c, o = self.split(linear)
        return self.mul(factor, c), self.mul(factor, o)

    def where(self, cond: Expr, a: Expr, b: Expr):
        (c1, o1), (c2, o2) = self.split(a), self.split(b)
        zero = const(0.0, cond.span)
        offset = None if o1 is None and o2 is None else Expr("where", (cond, self.float_(o1 or zero), self.float_(o2 or zero)))
        if c1 == c2:
            return c1, offset
        return Expr("where", (cond, self.float_(c1 or zero), self.float_(c2 or zero))), offset

    # ---------------------------------------------------- float arithmetic with None as zero

    def float_(self, x: Expr) -> Expr:
        return Expr("float", (x,), span=x.span) if infer(x, self.spec, self.types) == "int" else x

    def add(self, x: Expr | None, y: Expr | None) -> Expr | None:
        if x is None or y is None:
            return x if y is None else self.float_(y)
        return Expr("add", (self.float_(x), self.float_(y)))

    def sub(self, x: Expr | None, y: Expr | None) -> Expr | None:
        if y is None:
            return x
        y = self.float_(y)
        if x is None:
            return y.args[0] if y.op == "neg" else Expr("neg", (y,))
        return Expr("sub", (self.float_(x), y))

    def mul(self, factor: Expr, x: Expr | None) -> Expr | None:
        if x is None:
            return None
        if _is_one(x):
            return self.float_(factor)
        if _is_one(factor):
            return self.float_(x)
        return Expr("mul", (self.float_(factor), self.float_(x)))

    def div(self, x: Expr | None, divisor: Expr) -> Expr | None:
        if x is None:
            return None
        if _is_one(x):
            return Expr("truediv", (const(1.0), self.float_(divisor)))
        return Expr("truediv", (self.float_(x), self.float_(divisor)))


def _is_one(e: Expr) -> bool:
    return e.op == "const" and type(e.literal) is float and e.literal == 1.0
