"""IR -> .attn text. parse(print(ir)) == ir for every program (round-trip tests)."""

from __future__ import annotations

from . import builtins as bi
from .expressions import PROLOGUE_FUNCTIONS
from .ir import Expr, Normalize, Program, RowMap, Selection, Spec

# Binding strength, loosest first; mirrors grammar/attn.lark.
_PREC = {"or": 1, "and": 2, "not": 3, **{c: 4 for c in bi.COMPARISONS}, "add": 5, "sub": 5}
_PREC.update({"mul": 6, "truediv": 6, "floordiv": 6, "mod": 6, "neg": 7, "pow": 8})
_ATOM = 9
_FEATURE_FUNCTIONS = {op: name for name, (_, op) in PROLOGUE_FUNCTIONS.items()}
_ROW, _FEATURE = "i", "f"  # a prologue's index names where the IR has none


def print_program(program: Program) -> str:
    return "\n".join(print_spec(s) for s in program.specs)


def print_spec(spec: Spec) -> str:
    lines = [f"attention {spec.name} {{"]
    lines += [f"    {_param(p)}" for p in spec.params]
    lines += [f"    {_input(i)}" for i in spec.inputs if i.computed is None]
    lines += [f"    {_row_value(i)}" for i in spec.inputs if i.computed is not None]
    lines += [f"    let {b.name} = {expr_text(b.value)}  # per {b.level}" for b in spec.bindings]
    lines += [f"    {_row_map('prologue', step)}" for step in spec.prologue]
    if spec.gqa_group is not None:
        lines.append(f"    gqa group = {expr_text(spec.gqa_group)}")
    if spec.scale is not None:
        lines.append(f"    scale = {expr_text(spec.scale)}")
    if spec.score != Expr("score"):
        lines.append(f"    score = {expr_text(spec.score)}")
    if spec.mask is not None:
        lines.append(f"    mask {expr_text(spec.mask)}")
    if spec.normalize != Normalize("softmax"):
        lines.append(f"    normalize {_normalize(spec.normalize)}")
    if spec.selection is not None:
        lines.append(f"    select {_selection(spec.selection)}")
    if spec.epilogue is not None:
        lines.append(f"    {_row_map('epilogue', spec.epilogue)}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _param(p) -> str:
    text = f"param {p.name}: {p.type}" + (" runtime" if p.runtime else "")
    return text + (f" = {expr_text(p.default)}" if p.default is not None else "")


def _input(i) -> str:
    dims = ", ".join(expr_text(d) for d in i.shape)
    return f"input {i.name}: {i.dtype}[{dims}]" + (" learnable" if i.learnable else "")


def _row_value(i) -> str:
    step = i.computed
    indices = f"[{step.row or _ROW}, {step.feature or _FEATURE}]" if step.row or step.feature else ""
    table = f"[{step.entry}: {expr_text(i.shape[-1])}]" if step.entry is not None else ""
    return f"let {i.name}{table} per {step.target}{indices} = {expr_text(step.value)}"


def _row_map(statement: str, step: RowMap) -> str:
    indices = f"[{step.row or _ROW}, {step.feature or _FEATURE}]" if step.row or step.feature else ""
    return f"{statement} {step.target}{indices} = {expr_text(step.value)}"


def _normalize(n: Normalize) -> str:
    if n.kind == "softmax":
        return "softmax" + (f"(sink = {expr_text(n.sink)})" if n.sink is not None else "")
    den = f", den = {expr_text(n.denominator)}" if n.denominator is not None else ""
    return f"{n.kind}({expr_text(n.weight)}{den})"


def _selection(s: Selection) -> str:
    head = f"blocks(q = {expr_text(s.q_block)}, kv = {expr_text(s.kv_block)})"
    if s.rule == "keep":
        return f"{head} keep {expr_text(s.keep)}"
    text = f"{head} {s.rule}({expr_text(s.amount)}) by {expr_text(s.score)}"
    text += " causal" if s.causal else ""
    text += " global" if s.ranked_globally else ""
    text += f" per {s.scope}"
    return text + (f" always {expr_text(s.always)}" if s.always is not None else "")


def expr_text(e: Expr) -> str:
    return _expr(e)


def _expr(e: Expr) -> str:
    op = e.op
    if op == "const":
        return _literal(e.literal)
    if op in ("index_var", "shape", "param"):
        return e.value
    if op == "score":
        return "score"
    if op == "load":
        return e.value + (f"[{', '.join(_expr(a) for a in e.args)}]" if e.args else "")
    if op == "pool":
        return f"{e.value[0]}({e.value[1]})"
    if op == "temp":
        return e.value
    if op == "vector":
        return e.value if e.name is None else f"{e.value}[{e.name}]"  # q[g] in sum(... for g)
    if op == "feature_in":
        return e.name
    if op == "feature_mix":
        return f"sum({_expr(Expr('mul', e.args))} for {e.value})"
    if op == "feature_softmax":
        return f"softmax({_expr(e.args[0])}{'' if e.value == 1 else f', {e.value}'})"
    if op == "kept_sum":
        return "sum_kept(v)"
    if op in ("row", "feature", "entry"):
        return e.name or (_ROW if op == "row" else _FEATURE)
    if op in _FEATURE_FUNCTIONS:
        return f"{_FEATURE_FUNCTIONS[op]}({', '.join(_expr(a) for a in e.args)})"
    if op in bi.OP_SYMBOLS:
        return _binary(e)
    if op in ("and", "or"):
        return f"{_wrap(e.args[0], _PREC[op])} {op} {_wrap(e.args[1], _PREC[op] + 1)}"
    if op == "not":
        return f"not {_wrap(e.args[0], _PREC['not'])}"
    if op == "neg":
        return f"-{_wrap(e.args[0], _PREC['neg'])}"
    return f"{op}({', '.join(_expr(a) for a in e.args)})"


def _binary(e: Expr) -> str:
    prec = _PREC[e.op]
    left, right = e.args
    if e.op == "pow":  # right-associative; a negative base must be parenthesized
        return f"{_wrap(left, _ATOM)} ** {_wrap(right, _PREC['neg'])}"
    if e.op in bi.COMPARISONS:
        return f"{_wrap(left, prec + 1)} {bi.OP_SYMBOLS[e.op]} {_wrap(right, prec + 1)}"
    return f"{_wrap(left, prec)} {bi.OP_SYMBOLS[e.op]} {_wrap(right, prec + 1)}"


def _wrap(e: Expr, min_prec: int) -> str:
    text = _expr(e)
    prec = _PREC.get(e.op, _ATOM)
    if e.op == "const" and isinstance(e.literal, (int, float)) and not isinstance(e.literal, bool) and e.literal < 0:
        prec = _PREC["neg"]
    return f"({text})" if prec < min_prec else text


def _literal(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        if value == -(2**63):  # 2**63 does not fit in a literal
            return "(-9223372036854775807 - 1)"
        return str(value) if value >= 0 else f"-{-value}"
    text = repr(float(value))
    if text in ("inf", "-inf", "nan"):
        return {"inf": "(1.0 / 0.0)", "-inf": "(-1.0 / 0.0)", "nan": "(0.0 / 0.0)"}[text]
    return text
