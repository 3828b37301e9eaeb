"""Linear attention's structure in a spec: can its rows be computed from a state carried along the keys?

`normalize linear(decay = l, normalized = n)` (language.md section 3) lowers to weights
`w_ij = s'_ij * l^|d_ij|` (d_ij = (i + SKV - SQ) - j, how far key j lies behind query i), over their
row sum where normalized. Where the score is the scaled product of the (prologue'd) q and k and the
mask keeps the keys up to the query (end-aligned, as a causal mask writes it) or every key, the sum
over keys factors through a state: for the causal form

    S_t = l * S_{t-1} + k_t^T v_t,   z_t = l * z_{t-1} + k_t,   o_i = scale * q_i S_t / (scale * q_i . z_t)

at t = i + SKV - SQ: O(N d^2) where the score matrix costs O(N^2 d). Without a mask and without a
decay it is one state over every key; without a mask and with a decay (in both directions) it is the
causal form plus the same over the reversed sequence for the keys after the query (runtime/linear.py). `linear_form` recognizes that structure in the IR itself, so a
hand-written `rownorm(score * l ** float(abs(q + SKV - SQ - kv)))` gets the same forms as the sugar.
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy

from ..ir import Expr, Spec, inline_bindings, level_of, uses, walk
from ..passes.symbolic import to_sympy
from .bands import key_bands

_EDGE = Expr("add", (Expr("index_var", value="q"), Expr("sub", (Expr("shape", value="SKV"), Expr("shape", value="SQ")))))  # the last key a query sees
_DISTANCE = Expr("sub", (_EDGE, Expr("index_var", value="kv")))


@dataclass(frozen=True)
class LinearForm:
    """o_i = sum_j w_ij v_j with w_ij = scale * (q_i . k_j) * decay^|d_ij| over the kept keys."""

    decay: Expr | None  # per (b, h): reads b, h, inputs, params and shapes; None: no decay (1)
    normalized: bool  # over the row's sum of the weights (rownorm) or not (elementwise)
    causal: bool  # keys up to i + SKV - SQ; False: every key (a decay then reaches both ways)


def linear_form(spec: Spec) -> LinearForm | None:
    """The spec's linear form, or None where its weights do not factor through a state."""
    norm = spec.normalize
    if norm.kind not in ("rownorm", "elementwise") or norm.denominator is not None:
        return None
    if spec.selection is not None or inline_bindings(spec.score, spec) != Expr("score"):
        return None
    decay = _decay(inline_bindings(norm.weight, spec), spec)
    if decay is False:
        return None
    causal = _causal(spec)
    if causal is None:
        return None  # another mask: the score matrix
    return LinearForm(decay, norm.kind == "rownorm", causal)


def _decay(weight: Expr, spec: Spec) -> Expr | None | bool:
    """l in `score * l ** float(abs(d))` (either order), None for `score` alone, False otherwise."""
    if weight == Expr("score"):
        return None
    if weight.op != "mul":
        return False
    for score, factor in (weight.args, weight.args[::-1]):
        if score == Expr("score") and factor.op == "pow" and not uses(factor.args[0], "score"):
            base, exponent = factor.args
            if level_of(base, spec) == "program" and _is_distance(exponent, spec):
                return base
    return False


def _is_distance(exponent: Expr, spec: Spec) -> bool:
    """Whether exponent is float(abs(D)) with D = +-((q + SKV - SQ) - kv), up to algebra."""
    if exponent.op != "float" or exponent.args[0].op != "abs":
        return False
    inner = exponent.args[0].args[0]
    if any(node.op not in ("add", "sub", "neg", "index_var", "shape", "const") for node in walk(inner)):
        return False
    mine, table = to_sympy(inner, spec)
    theirs, _ = to_sympy(_DISTANCE, spec, table)
    return sympy.simplify(mine - theirs) == 0 or sympy.simplify(mine + theirs) == 0


def _causal(spec: Spec) -> bool | None:
    """True for a mask that keeps exactly the keys kv <= q + SKV - SQ, False for none, else None."""
    if spec.mask is None:
        return False
    bands = key_bands(spec.mask, spec)
    if bands is None or len(bands) != 1 or bands[0].hi is None:
        return None
    lo, hi = bands[0].lo, bands[0].hi
    hi_sym, table = to_sympy(hi, spec)
    edge, _ = to_sympy(_EDGE, spec, table)
    if sympy.simplify(hi_sym - edge) != 0:
        return None
    if lo is None:
        return True
    lo_sym, _ = to_sympy(lo, spec, table)
    return True if lo_sym.is_constant() and lo_sym <= 0 else None
