"""Dense PyTorch code shared by every target's module: the renderer of expressions as tensor code, and
the plan of what every module holds (argument checks, the dense token mask, the block selection stage,
the nn.Module), which the reference module is made of and the flex and triton modules extend.

Every expression is evaluated on broadcast index grids (b: [B,1,1,1], h: [1,H,1,1], q: [1,1,SQ,1],
kv: [1,1,1,SKV]; q_block / kv_block likewise in the selection stage), so one rendered expression
is one tensor expression. Scalars (shape symbols, runtime params) stay Python numbers; the
language's built-ins in attnspec/runtime/functions.py (`_fn`) accept both.
"""

from __future__ import annotations

from dataclasses import dataclass

from attnspec import __version__
from attnspec.analysis.linear import linear_form
from attnspec.analysis.sign import nonzero
from attnspec.builtins import DTYPES, POOL_OPERANDS
from attnspec.ir import Expr, Spec, inline_bindings, walk
from attnspec.types import infer

from .render import ExprRenderer, Plan, python_literal


_TENSOR_LEAVES = ("index_var", "score", "load", "pool")


class DenseRenderer(ExprRenderer):
    infix = {**ExprRenderer.infix, "and": "&", "or": "|"}

    def render_const(self, e: Expr) -> str:
        return e.name or python_literal(e.literal)  # a compile-time param is a module constant

    def render_load(self, e: Expr) -> str:
        return f"_fn.load({', '.join([e.value] + [self.render(a) for a in e.args])})"

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

    def render_truediv(self, e: Expr) -> str:
        """Python numbers divided by 0 raise where tensors give inf or NaN (§4): a quotient of two
        numbers whose divisor may be 0 goes through the helper."""
        if nonzero(e.args[1], self.spec) or not all(self._number(a) for a in e.args):
            return self.render_infix(e, "/")
        return f"_fn.truediv({', '.join(self._operands(e))})"

    def _number(self, e: Expr) -> bool:
        """Whether e may be a Python number here: it reads no grid, score, input or pooled vector."""
        return not any(n.op in _TENSOR_LEAVES for n in walk(inline_bindings(e, self.spec)))

    def render_pow(self, e: Expr) -> str:
        return f"_fn.pow({self.render(e.args[0])}, {self.render(e.args[1])})"

    def render_float(self, e: Expr) -> str:
        return f"_fn.to_float({self.render(e.args[0])}, _dtype)"

    def render_infix(self, e: Expr, symbol: str) -> str:
        left, right = self._operands(e)
        return f"({left} {symbol} {right})"

    def _operands(self, e: Expr) -> list[str]:
        types = [infer(a, self.spec) for a in e.args]
        parts = [self.render(a) for a in e.args]
        if "vec" in types:  # a per-block scalar meets a pooled vector: add the feature axis
            parts = [p if t == "vec" else f"_fn.vec({p})" for p, t in zip(parts, types)]
        return parts

    def function_name(self, op: str) -> str:
        return f"_fn.{op}"


@dataclass(frozen=True)
class SelectionPlan:
    """The block selection stage (templates/common/select.py.jinja): rendered dense expressions."""

    bq: str  # block sizes
    bk: str
    rule: str  # keep | top | threshold | share
    keep: str | None  # the static rule
    amount: str | None  # k, the threshold or the share
    score: str | None  # the block score
    pools: list[dict]  # {reduction, operand, of, vector} of every pooled q or k (vector) or per-row value (of q or k) the score reads
    causal: bool
    scope: str  # head | kv_head
    ranked_globally: bool  # every (query block, key block) pair of a head ranked together (`global`)
    always: str | None  # blocks always visited
    after_prologue: bool  # a data-dependent score of a spec with a q or k prologue: it reads them after it


@dataclass(frozen=True)
class ModulePlan(Plan):
    """What every target's module holds, rendered: the header, the spec's declarations, the dense checks
    and token mask (common/checks.py.jinja), the selection stage, the nn.Module; and the dense attention
    of the reference module (reference/module.py.jinja)."""

    version: str
    source: str  # the source file's name, safe for a comment
    name: str
    class_name: str
    consts: list[tuple[str, str]]  # compile-time params (name, literal)
    inputs: list[dict]  # {name, kind, dtype, shape (rendered), learnable}
    learnable: list[dict]
    module_sizes: list[str]  # shape symbols the nn.Module allocates its learnable inputs with
    runtime: list[dict]  # runtime params {name, type, default literal or None}
    kw: list[str]  # the keyword arguments after q, k, v: inputs, then runtime params
    scale: str | None
    gqa_group: str | None
    score: str
    mask_bindings: list[tuple[str, str]]  # (name, code) of the bindings the mask reads
    mask_values: list[str]  # the per-row values the mask reads: the mask depends on q and k
    attention_bindings: list[tuple[str, str]]  # those the score mod, sink, weight and denominator read
    mask: str | None
    norm: str  # softmax | elementwise | rownorm
    sink: str | None
    weight: str | None
    denominator: str | None  # rownorm(g, den = f): f, which the row's denominator sums
    sel: SelectionPlan | None
    prologue: list[dict]  # {target, code} of each prologue step (codegen/rowmap.py)
    epilogue: dict | None  # {target, code} of the epilogue
    row_values: list[dict]  # {name, target, code} of each per-row value: inputs the module computes
    linear: dict | None  # {decay (code or None), normalized, causal}: the weights factor through a state (analysis/linear.py)


def module_plan(spec: Spec, source_name: str) -> ModulePlan:
    from .rowmap import epilogue_plan, prologue_plan, row_value_plan  # their renderer extends DenseRenderer

    r = DenseRenderer(spec)
    norm, sel = spec.normalize, spec.selection
    inputs = [_input_plan(i, r) for i in spec.inputs if i.computed is None]  # the caller's
    runtime = [
        {"name": p.name, "type": p.type, "default": None if p.default is None else python_literal(p.default.literal)}
        for p in spec.runtime_params
    ]
    return ModulePlan(
        version=__version__,
        source=_safe_comment(source_name),
        name=spec.name,
        class_name="".join(part.capitalize() for part in spec.name.split("_") if part) + "Attention",
        consts=[(p.name, python_literal(p.default.literal)) for p in spec.params if not p.runtime],
        inputs=inputs,
        learnable=[i for i in inputs if i["learnable"]],
        module_sizes=_module_sizes(spec),
        runtime=runtime,
        kw=[i["name"] for i in inputs] + [p.name for p in spec.runtime_params],
        scale=_optional(r, spec.scale),
        gqa_group=_optional(r, spec.gqa_group),
        score=r.render(spec.score),
        mask_bindings=bindings_for(spec, [spec.mask], r),
        mask_values=row_values_read(spec, spec.mask),
        attention_bindings=bindings_for(spec, [spec.score, norm.sink, norm.weight, norm.denominator], r),
        mask=_optional(r, spec.mask),
        norm=norm.kind,
        sink=_optional(r, norm.sink),
        weight=_optional(r, norm.weight),
        denominator=_optional(r, norm.denominator),
        sel=_selection_plan(sel, r) if sel is not None else None,
        prologue=prologue_plan(spec),
        epilogue=epilogue_plan(spec),
        row_values=row_value_plan(spec),
        linear=_linear_plan(spec, r),
    )


def _linear_plan(spec: Spec, r: DenseRenderer) -> dict | None:
    form = linear_form(spec)
    if form is None:
        return None
    decay = None if form.decay is None else r.render(inline_bindings(form.decay, spec))
    return {"decay": decay, "normalized": form.normalized, "causal": form.causal}


def row_values_read(spec: Spec, expr: Expr | None) -> list[str]:
    """The per-row values (inputs the module computes) that an expression reads, in declaration order."""
    if expr is None:
        return []
    read = {n.value for n in walk(inline_bindings(expr, spec)) if n.op == "load"}
    return [i.name for i in spec.inputs if i.computed is not None and i.name in read]


def _optional(r: ExprRenderer, e: Expr | None) -> str | None:
    return None if e is None else r.render(e)


def bindings_for(spec: Spec, exprs, r: ExprRenderer) -> list[tuple[str, str]]:
    """(name, code) of the bindings the expressions read, directly or not, in binding order."""
    needed: set[str] = set()
    pending = [e for e in exprs if e is not None]
    while pending:
        for node in walk(pending.pop()):
            if node.op == "temp" and node.value not in needed:
                needed.add(node.value)
                pending.append(spec.binding(node.value).value)
    return [(b.symbol, r.render(b.value)) for b in spec.bindings if b.name in needed]


def _input_plan(decl, r: DenseRenderer) -> dict:
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


def _selection_plan(sel, r: DenseRenderer) -> SelectionPlan:
    pools = sorted({n.value for n in walk(sel.score) if n.op == "pool"}) if sel.score is not None else []
    return SelectionPlan(
        bq=r.render(sel.q_block),
        bk=r.render(sel.kv_block),
        rule=sel.rule,
        keep=_optional(r, sel.keep),
        amount=_optional(r, sel.amount),
        score=_optional(r, sel.score),
        pools=[_pool_plan(r.spec, red, operand) for red, operand in pools],
        causal=sel.causal,
        scope=sel.scope,
        ranked_globally=sel.ranked_globally,
        always=_optional(r, sel.always),
        after_prologue=sel.dynamic and any(step.target in ("q", "k") for step in r.spec.prologue),
    )


def _pool_plan(spec: Spec, reduction: str, operand: str) -> dict:
    """{reduction, operand, of, vector}: a pooled q or k (a vector per block), or a per-row value of q or
    k (`of`: whose rows it pools)."""
    vector = operand in POOL_OPERANDS
    of = operand if vector else spec.input(operand).computed.target
    return {"reduction": reduction, "operand": operand, "of": of, "vector": vector}


def _safe_comment(text: str) -> str:
    """A file name made safe for a one-line comment."""
    return "".join(ch if ch.isprintable() else "?" for ch in text)[:200]
