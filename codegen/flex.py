"""The flex target: FlexAttention score_mod / mask_mod functions, the BlockMask they need, and an
attention() that restates the spec's normalization through an exact identity (passes/flex.py).

Three renderers fill the template's hooks:
- ModRenderer: expressions inside a score_mod / mask_mod, one (b, h, q_idx, kv_idx) pair at a time;
- TileRenderer: the mask over intervals, one (query block, key block) tile at a time, so the
  BlockMask is built from block-level arithmetic (analysis/interval.py rules), never per pair;
- the reference renderer for the dense parts shared with the oracle (checks, block selection,
  the sink and the scale).
"""

from __future__ import annotations

from dataclasses import replace

from attnspec.analysis.precision import PROBES, tile_agreement
from attnspec.builtins import DTYPES
from attnspec.ir import Expr, Spec, inline_bindings, walk
from attnspec.passes.flex import IDENTITIES, flex_identity, log_weight, token_mask
from attnspec.passes.symbolic import exact_key
from attnspec.types import infer

from .reference import ReferenceRenderer, _bindings_for, _hooks
from .render import ExprRenderer, python_literal, template_environment

DEFAULT_BLOCK = 128  # FlexAttention's block size where the spec does not fix one
ANALYTIC_AGREEMENT = 0.95  # below this share of exactly classified tiles, create_block_mask is used
_MOD_INDEX = {"b": "b", "h": "h", "q": "q_idx", "kv": "kv_idx"}


class ModRenderer(ReferenceRenderer):
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
        if e not in self.names:
            code = self.render_rule(e)
            self.names[e] = f"_i{len(self.names)}"
            self.lines.append(f"{self.names[e]} = {code}")
        return self.names[e]

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
        return f"_tiles.scalar({python_literal(e.literal)})"

    def render_index_var(self, e: Expr) -> str:
        return f"_{e.value}"

    def render_shape(self, e: Expr) -> str:
        return f"_tiles.scalar(_{e.value})"

    def render_param(self, e: Expr) -> str:
        return f"_tiles.scalar({e.value})"

    def render_load(self, e: Expr) -> str:
        indices = ", ".join(self.render(a) for a in e.args)
        return f'_grid.load("{e.value}", {e.value}, [{indices}])'


def generate(spec: Spec, source_name: str = "<string>") -> str:
    """The flex module's source for a verified, optimized spec."""
    identity = flex_identity(spec)  # raises, at the normalization's line, where no identity exists
    env = template_environment()
    return env.get_template("flex/module.py.jinja").render(**flex_hooks(spec, identity, source_name))


def flex_block(spec: Spec) -> tuple[int, int]:
    """The BlockMask's block size: the selection's blocks when the spec selects blocks."""
    sel = spec.selection
    if sel is None:
        return DEFAULT_BLOCK, DEFAULT_BLOCK
    return sel.q_block.literal, sel.kv_block.literal


def block_mask_path(spec: Spec) -> tuple[str, float]:
    """("tile analysis" | "create_block_mask" | "no mask", worst agreement on the probes)."""
    mask = token_mask(spec)
    if mask is None:
        return "no mask", 1.0
    bq, bk = flex_block(spec)
    agreement = min(tile_agreement(spec, inline_bindings(mask, spec), bq, bk, p) for p in PROBES)
    return ("tile analysis" if agreement >= ANALYTIC_AGREEMENT else "create_block_mask"), agreement


def flex_hooks(spec: Spec, identity: str, source_name: str) -> dict:
    hooks = _hooks(spec, ReferenceRenderer(spec), source_name)
    mask = token_mask(spec)
    path, agreement = block_mask_path(spec)
    weight = None if spec.normalize.weight is None else log_weight(spec.normalize.weight, spec)
    hooks.update(
        identity=identity,
        identity_text=IDENTITIES[identity],
        block=flex_block(spec),
        path=path,
        eligible_classes=path == "tile analysis",
        agreement=f"{agreement:.1%}",
        score_mod=_mod_hook(spec, [spec.score] if weight is None else [spec.score, weight], weight is not None),
        mask_mod=None if mask is None else _mod_hook(spec, [mask], False),
        tile_mask=None if mask is None else TileRenderer(spec).statements(inline_bindings(mask, spec)),
        mask_batch=mask is not None and _uses_index(spec, mask, "b"),
        mask_head=mask is not None and _uses_index(spec, mask, "h"),
        float_inputs=[i.name for i in spec.inputs if DTYPES[i.dtype] == "float"],
        sink_bindings=_bindings_for(spec, [spec.normalize.sink], ReferenceRenderer(spec)),
    )
    return hooks


def _mod_hook(spec: Spec, exprs: list[Expr], two_step: bool) -> dict:
    """A mod's captures, the bindings its factory computes once, the bindings it computes per pair,
    and the returned expression(s). With two_step the score is modified first, then `exprs[1]`
    (the log-weight) is returned."""
    aliases, copies = _separate_reads(spec, exprs)
    r = ModRenderer(spec, aliases)
    bindings = _bindings_for(spec, exprs, r)
    constant = {f"_{b.name}" for b in spec.bindings if not _varies(spec, b.value)}
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
        "first": r.render(exprs[0]) if two_step else None,
        "result": r.render(exprs[-1]),
    }


def _separate_reads(spec: Spec, exprs: list[Expr]) -> tuple[dict, list[tuple[str, str]]]:
    """FlexAttention's backward cannot differentiate a captured tensor indexed at two places
    (`pos[q_idx] - pos[kv_idx]`): every distinct read of a float input after its first reads an alias
    of its own, which the factory makes a clone where the input requires grad (autograd adds the
    clones' gradients into the input). Returns ({exact key of the load: alias}, [(alias, input)])."""
    roots = [spec.binding(name[1:]).value for name, _ in _bindings_for(spec, exprs, ReferenceRenderer(spec))]
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


def _uses_index(spec: Spec, expr: Expr, name: str) -> bool:
    return any(n.op == "index_var" and n.value == name for n in walk(inline_bindings(expr, spec)))
