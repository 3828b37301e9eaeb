"""FlexAttention-style score_mod / mask_mod factories (templates/common/mods.py.jinja): the flex target's
mods, and the mask_mod the triton module runs on the pairs of partial tiles to find a selection's
eligible tiles. A mod computes one (b, h, q_idx, kv_idx) pair, or index tensors of any broadcastable shape.
"""

from __future__ import annotations

from dataclasses import replace

from attnspec.builtins import DTYPES
from attnspec.ir import Expr, Spec, inline_bindings, walk
from attnspec.passes.symbolic import exact_key

from .dense import DenseRenderer, bindings_for

_MOD_INDEX = {"b": "b", "h": "h", "q": "q_idx", "kv": "kv_idx"}


class ModRenderer(DenseRenderer):
    """Expressions as FlexAttention sees them: one pair, index tensors b, h, q_idx, kv_idx; a load
    whose exact key is in `aliases` reads the alias (a separate capture, see _separate_reads)."""

    def __init__(self, spec: Spec, aliases: dict | None = None):
        super().__init__(spec)
        self.aliases = aliases or {}

    def render_load(self, e: Expr) -> str:
        alias = self.aliases.get(exact_key(e))
        return super().render_load(e if alias is None else replace(e, value=alias))

    def render_index_var(self, e: Expr) -> str:
        return _MOD_INDEX[e.value]

    def render_shape(self, e: Expr) -> str:
        return e.value

    def render_score(self, e: Expr) -> str:
        return "score"

    def render_log_weight(self, e: Expr) -> str:
        return f"_fn.log_weight({self.render(e.args[0])})"


def mod_plan(spec: Spec, exprs: list[Expr], two_step: bool) -> dict:
    """A mod's captures, the bindings its factory computes once, the bindings it computes per pair,
    and the returned expression(s). With two_step the score is modified first, then `exprs[1]`
    (the log-weight) is returned."""
    aliases, copies = _separate_reads(spec, exprs)
    r = ModRenderer(spec, aliases)
    bindings = bindings_for(spec, exprs, r)
    constant = {b.symbol for b in spec.bindings if not _varies(spec, b.value)}
    leaves = [n for e in exprs for n in walk(inline_bindings(e, spec))]
    used_inputs = {n.value for n in leaves if n.op == "load"}
    used_params = {n.value for n in leaves if n.op == "param"}
    used_shapes = sorted({n.value for n in leaves if n.op == "shape"})
    return {
        "inputs": [{"name": i.name, "kind": DTYPES[i.dtype]} for i in spec.inputs if i.name in used_inputs],
        "params": [p.name for p in spec.runtime_params if p.name in used_params],
        "shapes": used_shapes,
        "once": [(t, c) for t, c in bindings if t in constant],
        "per_pair": [(t, c) for t, c in bindings if t not in constant],
        "copies": copies,
        "first": _first_step(spec, exprs[0], r) if two_step else None,
        "result": r.render(exprs[-1]),
    }


def _first_step(spec: Spec, score: Expr, r: ModRenderer) -> str:
    """The modified score, which the second step reads as a tensor of the argument's dtype: a score mod
    that does not vary over the pair (`score = 0.0`) is made one, and one that met a float64 number (a
    built-in of sizes, `where(q <= B, 0.0, -1.0)`) is cast back, or the weight would come out float64."""
    return f"_dense.tensor_like({r.render(score)}, score)"


def _separate_reads(spec: Spec, exprs: list[Expr]) -> tuple[dict, list[tuple[str, str]]]:
    """FlexAttention's backward cannot differentiate a captured tensor indexed at two places
    (`pos[q_idx] - pos[kv_idx]`): every distinct read of a float input after its first reads an alias
    of its own, which the factory makes a clone where the input requires grad (autograd adds the
    clones' gradients into the input). Returns ({exact key of the load: alias}, [(alias, input)])."""
    symbols = {b.symbol: b for b in spec.bindings}
    roots = [symbols[name].value for name, _ in bindings_for(spec, exprs, DenseRenderer(spec))]
    reads: dict[str, list] = {}
    aliases, copies = {}, []
    for node in (n for e in roots + [e for e in exprs if e is not None] for n in walk(e)):
        if node.op != "load" or DTYPES[spec.input(node.value).dtype] != "float":
            continue
        keys = reads.setdefault(node.value, [])
        if exact_key(node) in keys:
            continue
        keys.append(exact_key(node))
        if len(keys) > 1:
            alias = f"_{node.value}_read{len(keys) - 1}"
            aliases[exact_key(node)] = alias
            copies.append((alias, node.value))
    return aliases, copies


def _varies(spec: Spec, expr: Expr) -> bool:
    """Whether an expression depends on the pair (an index variable or the score)."""
    return any(n.op in ("index_var", "score") for n in walk(inline_bindings(expr, spec)))
