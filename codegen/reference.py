"""The reference target: a dense PyTorch module that is obviously right (the oracle).

Every expression is evaluated on broadcast index grids (b: [B,1,1,1], h: [1,H,1,1], q: [1,1,SQ,1],
kv: [1,1,1,SKV]; q_block / kv_block likewise in the selection stage), so one rendered expression
is one tensor expression. Scalars (shape symbols, runtime params) stay Python numbers; the
language's built-ins in attnspec/runtime/functions.py (`_fn`) accept both.
"""

from __future__ import annotations

from attnspec import __version__
from attnspec.analysis.sign import nonzero
from attnspec.ir import Expr, Spec, walk
from attnspec.types import infer

from .render import ExprRenderer, python_literal, template_environment


class ReferenceRenderer(ExprRenderer):
    infix = {**ExprRenderer.infix, "and": "&", "or": "|"}

    def __init__(self, spec: Spec):
        self.spec = spec

    def render_index_var(self, e: Expr) -> str:
        return f"_{e.value}"

    def render_shape(self, e: Expr) -> str:
        return f"_{e.value}"

    def render_param(self, e: Expr) -> str:
        return e.value

    def render_score(self, e: Expr) -> str:
        return "_s"

    def render_load(self, e: Expr) -> str:
        return f"_fn.load({', '.join([e.value] + [self.render(a) for a in e.args])})"

    def render_temp(self, e: Expr) -> str:
        return f"_{e.value}"

    def render_pool(self, e: Expr) -> str:
        reduction, operand = e.value
        return f"_pool_{reduction}_{operand}"

    def render_not(self, e: Expr) -> str:
        return f"_fn.logical_not({self.render(e.args[0])})"

    def render_eq(self, e: Expr) -> str:
        return f"_fn.logical_not({self._xor(e)})" if infer(e.args[0], self.spec) == "bool" else self.render_infix(e, "==")

    def render_ne(self, e: Expr) -> str:
        return self._xor(e) if infer(e.args[0], self.spec) == "bool" else self.render_infix(e, "!=")

    def _xor(self, e: Expr) -> str:
        """Booleans compare through xor ((a | b) & not (a & b)): in FlexAttention's traced mods, shape
        symbols become SymBools, which have & | and not but no == != ^ (found by attnspec fuzz)."""
        return f"_fn.xor({', '.join(self.render(a) for a in e.args)})"

    def render_floordiv(self, e: Expr) -> str:
        return self._division(e, "//", "_fn.floordiv")

    def render_mod(self, e: Expr) -> str:
        return self._division(e, "%", "_fn.floormod")

    def _division(self, e: Expr, symbol: str, helper: str) -> str:
        """An integer divisor that may be 0 goes through the helper that defines that case (§4)."""
        if infer(e, self.spec) == "int" and not nonzero(e.args[1], self.spec):
            return f"{helper}({', '.join(self.render(a) for a in e.args)})"
        return self.render_infix(e, symbol)

    def render_pow(self, e: Expr) -> str:
        return f"_fn.pow({self.render(e.args[0])}, {self.render(e.args[1])})"

    def render_float(self, e: Expr) -> str:
        return f"_fn.to_float({self.render(e.args[0])}, _dtype)"

    def render_infix(self, e: Expr, symbol: str) -> str:
        types = [infer(a, self.spec) for a in e.args]
        parts = [self.render(a) for a in e.args]
        if "vec" in types:  # a per-block scalar meets a pooled vector: add the feature axis
            parts = [p if t == "vec" else f"_fn.vec({p})" for p, t in zip(parts, types)]
        return f"({parts[0]} {symbol} {parts[1]})"

    def function_name(self, op: str) -> str:
        return f"_fn.{op}"


def generate(spec: Spec, source_name: str = "<string>") -> str:
    """The reference module's source for a verified, lowered spec."""
    r = ReferenceRenderer(spec)
    env = template_environment()
    return env.get_template("reference/module.py.jinja").render(**_hooks(spec, r, source_name))


def _hooks(spec: Spec, r: ReferenceRenderer, source_name: str) -> dict:
    norm, sel = spec.normalize, spec.selection
    inputs = [_input_hook(i, r) for i in spec.inputs]
    runtime = [
        {"name": p.name, "type": p.type, "default": None if p.default is None else python_literal(p.default.literal)}
        for p in spec.runtime_params
    ]
    return {
        "version": __version__,
        "source": _safe_comment(source_name),
        "name": spec.name,
        "class_name": "".join(part.capitalize() for part in spec.name.split("_") if part) + "Attention",
        "consts": [(p.name, python_literal(p.default.literal)) for p in spec.params if not p.runtime],
        "inputs": inputs,
        "learnable": [i for i in inputs if i["learnable"]],
        "module_sizes": _module_sizes(spec),
        "runtime": runtime,
        "kw": [i.name for i in spec.inputs] + [p.name for p in spec.runtime_params],
        "scale": None if spec.scale is None else r.render(spec.scale),
        "gqa_group": None if spec.gqa_group is None else r.render(spec.gqa_group),
        "score": r.render(spec.score),
        "mask_bindings": _bindings_for(spec, [spec.mask], r),
        "attention_bindings": _bindings_for(spec, [spec.score, norm.sink, norm.weight], r),
        "mask": None if spec.mask is None else r.render(spec.mask),
        "norm": norm.kind,
        "sink": None if norm.sink is None else r.render(norm.sink),
        "weight": None if norm.weight is None else r.render(norm.weight),
        "sel": _selection_hook(sel, r) if sel is not None else None,
    }


def _bindings_for(spec: Spec, exprs, r: ReferenceRenderer) -> list[tuple[str, str]]:
    """(name, code) of the bindings the expressions read, directly or not, in binding order."""
    needed: set[str] = set()
    pending = [e for e in exprs if e is not None]
    while pending:
        for node in walk(pending.pop()):
            if node.op == "temp" and node.value not in needed:
                needed.add(node.value)
                pending.append(spec.binding(node.value).value)
    return [(f"_{b.name}", r.render(b.value)) for b in spec.bindings if b.name in needed]


def _input_hook(decl, r: ReferenceRenderer) -> dict:
    from attnspec.builtins import DTYPES

    return {
        "name": decl.name,
        "kind": DTYPES[decl.dtype],
        "dtype": decl.dtype,
        "shape": [r.render(d) for d in decl.shape],
        "learnable": decl.learnable,
    }


def _module_sizes(spec: Spec) -> list[str]:
    """Shape symbols the nn.Module needs to allocate its learnable inputs."""
    used = {n.value for i in spec.inputs if i.learnable for d in i.shape for n in walk(d) if n.op == "shape"}
    return sorted(used)


def _selection_hook(sel, r: ReferenceRenderer) -> dict:
    pools = sorted({n.value for n in walk(sel.score) if n.op == "pool"}) if sel.score is not None else []
    return {
        "bq": r.render(sel.q_block),
        "bk": r.render(sel.kv_block),
        "rule": sel.rule,
        "keep": None if sel.keep is None else r.render(sel.keep),
        "amount": None if sel.amount is None else r.render(sel.amount),
        "score": None if sel.score is None else r.render(sel.score),
        "pools": [{"reduction": red, "operand": operand} for red, operand in pools],
        "causal": sel.causal,
        "scope": sel.scope,
        "always": None if sel.always is None else r.render(sel.always),
    }


def _safe_comment(text: str) -> str:
    """A file name made safe for a one-line comment."""
    return "".join(ch if ch.isprintable() else "?" for ch in text)[:200]
