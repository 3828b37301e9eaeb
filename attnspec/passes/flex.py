"""Restating a spec in FlexAttention's terms (pure functions over the IR, used by codegen/flex.py).

FlexAttention computes softmax(score_mod(s)) over the pairs a mask_mod and a BlockMask keep, and
can return the lse. Every normalization attnspec lowers to it rests on an exact identity
(docs/flex.md):

- softmax:                 score_mod = s'                      out as returned
- softmax(sink = c):       score_mod = s'                      out * sigmoid(lse - c), lse = logaddexp(lse, c)
- rownorm(f), f >= 0:      score_mod = log f(s')               out as returned, lse = log sum f
- elementwise(f), f >= 0:  score_mod = log f(s')               out * exp(lse)
- rownorm(g, den = f), g >= 0:  score_mods log g and log f      out_g * exp(lse_g - lse_f), lse = lse_f
- rownorm(g, den = f):     log relu(g), log relu(-g), log f    out_+ exp(lse_+ - lse_f) - out_- exp(lse_- - lse_f)

f >= 0 must be proved (analysis/sign.py) for every score; otherwise there is no exact lowering
and compilation stops at the normalization's line. A separate denominator costs one more
flex_attention call (only its lse is used), a numerator that may be negative one more again.
"""

from __future__ import annotations

import math

from ..analysis.sign import nonnegative, positive
from ..diagnostics import AttnError
from ..ir import Expr, Spec, const, is_const

IDENTITIES = {
    "softmax": "softmax",
    "sink": "softmax, then out * sigmoid(lse - sink) and lse = logaddexp(lse, sink)",
    "rownorm": "softmax of score_mod = log f(s)",
    "elementwise": "softmax of score_mod = log f(s), then out * exp(lse)",
    "elementwise_signed": "softmaxes of score_mods log relu(f(s)) and log relu(-f(s)): out_+ * exp(lse_+) - out_- * exp(lse_-)",
    "ratio": "softmaxes of score_mods log g(s) and log f(s): out_g * exp(lse_g - lse_f), lse = lse_f",
    "ratio_signed": "softmaxes of score_mods log relu(g(s)), log relu(-g(s)) and log f(s): "
                    "out_+ * exp(lse_+ - lse_f) - out_- * exp(lse_- - lse_f), lse = lse_f",
}


def flex_identity(spec: Spec) -> str:
    """Which identity lowers the spec's normalization (a key of IDENTITIES), or an AttnError."""
    norm = spec.normalize
    if norm.kind == "softmax":
        return "sink" if norm.sink is not None else "softmax"
    if norm.denominator is not None:
        if not nonnegative(norm.denominator, spec):
            raise AttnError(
                "the flex target cannot lower rownorm(g, den = f) here: f is not provably >= 0 for every score, "
                "and FlexAttention sums exp(log f), so no exact identity applies",
                norm.denominator.span,
                hint="compile with --target triton or --target reference, or write f so it cannot be negative "
                "(abs, relu, softplus, sigmoid, exp, even powers)",
            )
        return "ratio" if nonnegative(norm.weight, spec) else "ratio_signed"
    if norm.kind == "elementwise" and not nonnegative(norm.weight, spec):
        return "elementwise_signed"  # f = relu(f) - relu(-f): no denominator to keep apart
    if not nonnegative(norm.weight, spec):
        raise AttnError(
            f"the flex target cannot lower {norm.kind}(f) here: f is not provably >= 0 for every score, "
            "and FlexAttention only computes softmax, so no exact identity applies",
            norm.span,
            hint="compile with --target triton or --target reference, or write f so it cannot be negative "
            "(relu, softplus, sigmoid, exp, even powers)",
        )
    return norm.kind


def block_rule_mask(spec: Spec) -> Expr | None:
    """A static block rule restated per token: q_block -> q // BQ, kv_block -> kv // BK."""
    sel = spec.selection
    if sel is None or sel.dynamic:
        return None
    blocks = {"q_block": ("q", sel.q_block), "kv_block": ("kv", sel.kv_block)}

    def restate(e: Expr) -> Expr:
        if e.op == "index_var" and e.value in blocks:
            name, size = blocks[e.value]
            return Expr("floordiv", (Expr("index_var", value=name, span=e.span), size), span=e.span)
        return Expr(e.op, tuple(restate(a) for a in e.args), e.value, e.span)

    return restate(sel.keep)


def token_mask(spec: Spec) -> Expr | None:
    """The mask FlexAttention's mask_mod evaluates: the spec's mask AND its static block rule."""
    parts = [m for m in (spec.mask, block_rule_mask(spec)) if m is not None]
    if len(parts) < 2:
        return parts[0] if parts else None
    return Expr("and", tuple(parts), span=parts[0].span)


def signed_parts(g: Expr) -> tuple[Expr, Expr]:
    """relu(g) and relu(-g): g = relu(g) - relu(-g), both >= 0."""
    return Expr("relu", (g,), span=g.span), Expr("relu", (_neg(g),), span=g.span)


def log_weight(f: Expr, spec: Spec) -> Expr:
    """log f for f >= 0, with the log pushed inward where that is exact and avoids underflow:
    log exp x = x, log sigmoid x = -softplus(-x), log(a * b) = log a + log b, log(a / b) =
    log a - log b, log(a ** c) = c * log a (a >= 0, c > 0)."""
    op, args = f.op, f.args
    if op == "exp":
        return args[0]
    if op == "sigmoid":
        return _neg(Expr("softplus", (_neg(args[0]),), span=f.span))
    if op == "mul" and all(nonnegative(a, spec) for a in args):
        return Expr("add", tuple(log_weight(a, spec) for a in args), span=f.span)
    if op == "truediv" and nonnegative(args[0], spec) and positive(args[1], spec):
        return Expr("sub", tuple(log_weight(a, spec) for a in args), span=f.span)
    if op == "pow" and is_const(args[1]) and args[1].literal > 0 and nonnegative(args[0], spec):
        return Expr("mul", (const(float(args[1].literal)), log_weight(args[0], spec)), span=f.span)
    if is_const(f) and f.literal > 0:
        return const(math.log(f.literal), f.span)
    if positive(f, spec):
        return Expr("log", (f,), span=f.span)
    # a weight that may be 0: runtime/functions.py log_weight, whose gradient is 0 there (not log's 0 / 0)
    return Expr("log_weight", (f,), span=f.span)


def _neg(e: Expr) -> Expr:
    return Expr("neg", (e,), span=e.span)
