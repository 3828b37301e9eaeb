"""The verifier: the invariants every Spec satisfies, before and after every pass.

Types (types.py), where each variable may appear, boolean masks and rules, integer indices,
compile-time constants where the compiler needs them, and value ranges of constants. What each
slot of a spec may read and must be is declared by its stage (stages.py).
"""

from __future__ import annotations

from .diagnostics import AttnError
from .ir import Expr, Program, Spec, inline_bindings, level_of, spec_exprs, uses, walk
from .stages import BLOCK_RULE, ENTRIES, SHAPE, Context, filled
from .types import NUMERIC, infer

# Blocks are tiles of queries and keys: the reference pads the mask to whole tiles and the fast targets
# run them as kernel tiles, so a block far beyond any sequence only fails, and late, at call time.
MAX_BLOCK_SIZE = 2**16
BLOCK_SIZE_HINT = f"a block size is a positive integer of at most {MAX_BLOCK_SIZE}, typically 16, 64 or 128"


def verify_program(program: Program) -> Program:
    for spec in program.specs:
        verify(spec)
    return program


def verify(spec: Spec) -> Spec:
    """Raise AttnError on the first broken invariant; return spec unchanged otherwise."""
    for inp in spec.inputs:
        for d, dim in enumerate(inp.shape):
            table = inp.computed is not None and inp.computed.entry is not None and d == len(inp.shape) - 1
            _check(spec, dim, ENTRIES if table else SHAPE, "int")
            _dimension_range(inp.name, dim)
    for slot, expr in filled(spec):
        _check(spec, expr, slot.context, slot.want(spec))
        if slot.check is not None:
            _RANGE_CHECKS[slot.check](spec, expr)
    _verify_bindings(spec)
    return spec


def _verify_bindings(spec: Spec) -> None:
    """Temps are unique, read only earlier temps, never the score, and sit at their own level."""
    seen: set[str] = set()
    for binding in spec.bindings:
        reads = {n.value for n in walk(binding.value) if n.op == "temp"}
        if binding.name in seen or not reads <= seen:
            raise AttnError(f"internal: binding '{binding.name}' is duplicated or reads a later binding")
        if uses(binding.value, "score") or binding.level != level_of(binding.value, spec):
            raise AttnError(f"internal: binding '{binding.name}' is not at level {binding.level}")
        seen.add(binding.name)
    if spec.selection is not None and any(uses(e, "temp") for e in spec_exprs(spec.selection)):
        raise AttnError("internal: temps are only for token-level expressions, not block selection")


def _check(spec: Spec, expr: Expr, ctx: Context, want: str) -> None:
    for node in walk(inline_bindings(expr, spec)):
        _check_leaf(spec, node, ctx)
    got = infer(expr, spec)
    if want == "number" and got not in NUMERIC:
        raise AttnError(f"{ctx.what} must be a number, got {got}", expr.span)
    if want in ("int", "bool") and got != want:
        article = "an integer" if want == "int" else "a boolean condition"
        example = "kv_block <= q_block" if ctx is BLOCK_RULE else "kv <= q"
        hint = f"compare values, e.g. {example}" if want == "bool" else _float_hint(expr)
        raise AttnError(f"{ctx.what} must be {article}, got {got}", expr.span, hint)


def _float_hint(expr: Expr) -> str | None:
    """Why an expression the user meant as an integer is a float, where its operator says so."""
    if expr.op == "pow":
        base, exp = expr.args
        if all(a.op == "const" and type(a.literal) is int for a in expr.args) and 0 <= exp.literal <= 62:
            return f"'**' always gives a float; write the integer itself: {base.literal ** exp.literal}"
        return "'**' always gives a float; write the integer itself, such as 4096"
    if expr.op == "truediv":
        return "'/' always gives a float; use '//' for integer division"
    return None


def _check_leaf(spec: Spec, node: Expr, ctx: Context) -> None:
    op = node.op
    if op == "index_var" and node.value not in ctx.index_vars:
        allowed = ", ".join(sorted(ctx.index_vars)) or "no index variables"
        hint = f"{ctx.what} may use {allowed}"
        if node.value in ("q_block", "kv_block"):
            hint = f"q_block and kv_block exist only in select blocks(...) rules; {hint}"
        raise AttnError(f"'{node.value}' is not available in {ctx.what}", node.span, hint)
    if op == "shape" and not ctx.shapes:
        raise AttnError(
            f"'{node.value}' is only known at run time, but {ctx.what} must be known at compile time",
            node.span,
            "use a literal or a compile-time param",
        )
    if op == "score" and not ctx.score:
        raise AttnError(f"'score' is not available in {ctx.what}", node.span, "only score mods and normalize(...) read the score")
    if op == "load" and not ctx.loads:
        raise AttnError(f"input '{node.value}' cannot be read in {ctx.what}", node.span)
    if op == "pool" and not ctx.pools:
        raise AttnError(f"pooled {node.value[0]}({node.value[1]}) is only allowed in a block score", node.span)
    if op == "param":
        param = spec.param(node.value)
        if param is None:
            raise AttnError(f"undefined param '{node.value}'", node.span)
        if param.runtime and not ctx.runtime_params:
            raise AttnError(
                f"'{node.value}' is a runtime param, but {ctx.what} must be known at compile time",
                node.span,
                f"drop 'runtime' from the declaration of '{node.value}' (line {param.span.line})",
            )
    if op == "load" and spec.input(node.value) is None:
        raise AttnError(f"undefined input '{node.value}'", node.span)


def _positive(expr: Expr, what: str, hint: str | None = None) -> None:
    if expr.op == "const" and expr.literal <= 0:
        raise AttnError(f"{what} must be positive, got {expr.literal}", expr.span, hint)


def _block_size_range(size: Expr) -> None:
    _positive(size, "a block size", BLOCK_SIZE_HINT)
    if size.op == "const" and size.literal > MAX_BLOCK_SIZE:
        raise AttnError(f"a block size must be at most {MAX_BLOCK_SIZE}, got {size.literal}", size.span, BLOCK_SIZE_HINT)


def _dimension_range(name: str, dim: Expr) -> None:
    if dim.op == "const" and dim.literal < 0:
        raise AttnError(
            f"a dimension of input '{name}' cannot be negative, got {dim.literal}",
            dim.span,
            "a dimension is a size >= 0: a literal, a shape symbol such as H, or an expression such as 4 * r + 1",
        )


def _amount_range(rule: str, amount: Expr) -> None:
    if amount.op != "const":
        return
    value = amount.literal
    if rule == "top" and value < 1:
        raise AttnError(f"top(k) needs k >= 1, got {value}", amount.span)
    if rule == "share" and not 0 < value <= 1:
        raise AttnError(f"share(p) needs 0 < p <= 1, got {value}", amount.span)


# range checks of the slots that declare one (stages.py), by name
_RANGE_CHECKS = {
    "positive_group": lambda spec, expr: _positive(expr, "the GQA group"),
    "block_size": lambda spec, expr: _block_size_range(expr),
    "amount": lambda spec, expr: _amount_range(spec.selection.rule, expr),
}
