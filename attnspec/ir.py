"""The attnspec IR: frozen dataclasses, one uniform expression node, a few spec nodes.

Spans are carried by every node but ignored by equality and hashing, so structurally equal
expressions compare equal wherever they came from (round-trip tests, CSE).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Callable, Iterator

from .diagnostics import NO_SPAN, Span

_span = field(default=NO_SPAN, compare=False, hash=False, repr=False)

# Leaf ops and the meaning of `value` for each:
#   const      int | float | bool literal
#   index_var  one of INDEX_VARS          shape   one of SHAPE_SYMBOLS
#   param      param name                 score   (no value) the current score
#   load       input name; args are the indices
#   pool       (reduction, "q" | "k"): per-block pooled q or k vector (select scores only)
#   temp       name of a Binding of the spec (made by passes)
# Every other op is a built-in operator or function named in builtins.py.


LEAF_OPS = ("const", "index_var", "shape", "param", "score", "temp", "pool", "vector", "row", "feature", "entry", "feature_in")  # ops that compute nothing
# prologue values that read more than their own feature of the row (RowMap): those over the tensor's
# rows (a softmax or a sum over the sequence, for each feature), and a matrix or a softmax over features
OTHER_ROW_OPS = ("row_softmax", "row_sum")
WHOLE_ROW_OPS = ("feature_mix", "feature_softmax") + OTHER_ROW_OPS


@dataclass(frozen=True)
class Expr:
    op: str
    args: tuple["Expr", ...] = ()
    value: object = None
    span: Span = _span
    # a const that a compile-time param became keeps the param's name, so generated code can say
    # `window` where the user did; like the span, equality ignores it
    name: str | None = field(default=None, compare=False, hash=False, repr=False)

    def __post_init__(self) -> None:
        # Keep bool/int/float distinct in equality (True == 1 in Python).
        if self.op == "const":
            object.__setattr__(self, "value", _tagged(self.value))

    @property
    def literal(self):
        """The Python value of a const node."""
        return self.value[1] if self.op == "const" else None


_NAN = float("nan")


def _tagged(value):
    if isinstance(value, tuple):
        return value
    if isinstance(value, float) and value != value:
        value = _NAN  # tuples compare items by identity first, so one shared NaN makes equal consts equal
    if isinstance(value, float):  # the sign tells -0.0 from 0.0, which == does not
        return ("float", value, math.copysign(1.0, value))
    return (type(value).__name__, value)


def const(value, span: Span = NO_SPAN, name: str | None = None) -> Expr:
    return Expr("const", (), value, span, name)


def is_const(expr: Expr) -> bool:
    return expr.op == "const"


@dataclass(frozen=True)
class Param:
    name: str
    type: str  # "int" | "float" | "bool"
    runtime: bool
    default: Expr | None
    span: Span = _span


@dataclass(frozen=True)
class Input:
    name: str
    dtype: str
    shape: tuple[Expr, ...]
    learnable: bool
    span: Span = _span
    # a per-row value (`let t per q = ...`): computed by the module from the vectors, never passed by the
    # caller; its RowMap's value gives one number per row of q ([B, H, SQ]) or of k ([B, HKV, SKV]), or,
    # for a per-row table (`let t[r: N] per q = ...`), N numbers per row (a last dimension N)
    computed: "RowMap | None" = None


@dataclass(frozen=True)
class Normalize:
    kind: str  # "softmax" | "elementwise" | "rownorm"
    sink: Expr | None = None  # softmax only
    weight: Expr | None = None  # f(score) for elementwise / rownorm; `score` is the modified score
    # rownorm(g, den = f): the row's denominator sums f over the kept keys while g weighs the values
    # (any sign); None: the denominator sums the weight itself
    denominator: Expr | None = None
    span: Span = _span

    @property
    def summed(self) -> Expr | None:
        """What the row's denominator sums (rownorm): the denominator, or else the weight."""
        return self.denominator if self.denominator is not None else self.weight


@dataclass(frozen=True)
class RowMap:
    """A tensor replaced row by row: a prologue (`prologue q = f(q)`: q, k or v before the logit) or the
    epilogue (`epilogue out = f(out)`: the output after the normalization).

    The value is evaluated per (b, h, row, feature): Expr("vector", value=name) reads the row's own
    vector of the target at the feature, Expr("row") is the row's position (the query index for q and
    out, the key index for k and v), Expr("feature") the feature index; `h` is the query head for q and
    out, the kv head for k and v. The reductions over features (`feature_sum`, `feature_norm`) and
    `rope` exist only here, and so do `row_softmax` and `row_sum` (over the tensor's rows, for each
    feature: the values that read other rows), `feature_softmax` (value: its number of groups) and
    `feature_mix` (`sum(x[g] * w[g, f] for g)`: args (the row's function, on the feature axis as any
    value, with g as `feature`; the matrix, with g as `feature_in` and f as `feature`), value: g's
    name). `row` and `feature` keep the user's names for them (printing only).
    A per-row table (`let t[r: N] per q`) is evaluated for each entry too: Expr("entry") is the
    entry's index, named `entry` by the user.
    """

    target: str  # "q" | "k" | "v" | "out"
    value: Expr
    row: str | None = None
    feature: str | None = None
    span: Span = _span
    entry: str | None = None


@dataclass(frozen=True)
class Selection:
    q_block: Expr
    kv_block: Expr
    rule: str  # "keep" (static) | "top" | "threshold" | "share"
    keep: Expr | None = None  # static predicate over (b, h, q_block, kv_block)
    amount: Expr | None = None  # k, threshold or share
    score: Expr | None = None  # block score
    causal: bool = False
    scope: str = "head"  # "head" | "kv_head"
    ranked_globally: bool = False  # `global`: every (query block, key block) pair of a head ranked together
    always: Expr | None = None
    span: Span = _span

    @property
    def dynamic(self) -> bool:
        return self.rule != "keep"


@dataclass(frozen=True)
class Binding:
    """A named temporary computed once per `level` (made by passes, never by the user): "program"
    (per b, h), "row" (per query), "col" (per key) or "element" (per pair), as level_of says.

    Expressions read it as Expr("temp", value=name). Bindings are ordered: a value reads only
    earlier bindings.
    """

    name: str
    value: Expr
    level: str
    span: Span = _span
    user: bool = False  # named after the user's let: generated code calls it by that name

    @property
    def symbol(self) -> str:
        """Its name in generated code: the user's own, or `_t0` (template locals all start with `_`,
        user names never do, so neither can shadow the other)."""
        return self.name if self.user else f"_{self.name}"


@dataclass(frozen=True)
class Spec:
    name: str
    params: tuple[Param, ...] = ()
    inputs: tuple[Input, ...] = ()
    scale: Expr | None = None
    score: Expr = Expr("score")
    mask: Expr | None = None
    normalize: Normalize = Normalize("softmax")
    selection: Selection | None = None
    gqa_group: Expr | None = None
    bindings: tuple[Binding, ...] = ()
    prologue: tuple[RowMap, ...] = ()  # in the order q, k, v; at most one each
    epilogue: RowMap | None = None  # of out
    span: Span = _span
    # the user's `let` bindings (inlined by the front end) as (name, expression), lowered with the
    # spec: a shared term equal to one is named after it. A naming hint, ignored by equality.
    lets: tuple[tuple[str, Expr], ...] = field(default=(), compare=False, hash=False, repr=False)

    def binding(self, name: str) -> Binding | None:
        return next((b for b in self.bindings if b.name == name), None)

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)

    def input(self, name: str) -> Input | None:
        return next((i for i in self.inputs if i.name == name), None)

    @property
    def runtime_params(self) -> tuple[Param, ...]:
        return tuple(p for p in self.params if p.runtime)

    @property
    def arguments(self) -> tuple[Input, ...]:
        """The inputs a caller passes: all but the per-row values the module computes."""
        return tuple(i for i in self.inputs if i.computed is None)


@dataclass(frozen=True)
class Program:
    """Everything one .attn file declares."""

    specs: tuple[Spec, ...]
    source_name: str = "<string>"

    def spec(self, name: str) -> Spec | None:
        return next((s for s in self.specs if s.name == name), None)


# ---------------------------------------------------------------- traversal helpers


def walk(expr: Expr) -> Iterator[Expr]:
    """Every node of an expression tree, parents before children."""
    yield expr
    for arg in expr.args:
        yield from walk(arg)


def factors(e: Expr) -> list[Expr]:
    """The factors of a product a * b * c (e itself if it is not one)."""
    return factors(e.args[0]) + factors(e.args[1]) if e.op == "mul" else [e]


def rewrite(expr: Expr, fn: Callable[[Expr], Expr]) -> Expr:
    """Rebuild bottom-up: fn sees each node after its children were rewritten."""
    if expr.args:
        args = tuple(rewrite(a, fn) for a in expr.args)
        if args != expr.args or any(a is not b for a, b in zip(args, expr.args)):
            expr = dataclasses.replace(expr, args=args)
    return fn(expr)


def substitute(expr: Expr, match: Callable[[Expr], Expr | None]) -> Expr:
    """Replace every node for which match returns a replacement (top-down, no re-visit)."""
    replacement = match(expr)
    if replacement is not None:
        return replacement
    if not expr.args:
        return expr
    return dataclasses.replace(expr, args=tuple(substitute(a, match) for a in expr.args))


def map_exprs(node, fn: Callable[[Expr], Expr]):
    """Apply fn to every top-level expression held by an IR node (recursing into spec nodes)."""
    if isinstance(node, Expr):
        return fn(node)
    if isinstance(node, tuple):
        return tuple(map_exprs(n, fn) for n in node)
    if not dataclasses.is_dataclass(node):
        return node
    changes = {}
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        if isinstance(value, (Expr, tuple)) or dataclasses.is_dataclass(value):
            changes[f.name] = map_exprs(value, fn)
    return dataclasses.replace(node, **changes)


def spec_exprs(node) -> Iterator[Expr]:
    """Every top-level expression held by an IR node."""
    found: list[Expr] = []
    map_exprs(node, lambda e: found.append(e) or e)
    return iter(found)


def uses(expr: Expr | None, op: str, value=None) -> bool:
    if expr is None:
        return False
    return any(n.op == op and (value is None or n.value == value) for n in walk(expr))


def inline_bindings(expr: Expr, spec: "Spec") -> Expr:
    """expr with every temp replaced by its binding's value, recursively."""
    if not spec.bindings:
        return expr

    def expand(node: Expr):
        if node.op == "temp":
            return inline_bindings(spec.binding(node.value).value, spec)
        return None

    return substitute(expr, expand)


def level_of(expr: Expr, spec: "Spec") -> str:
    """Where a token-level expression varies: program (b, h only), row (q), col (kv) or element."""
    names = {n.value for n in walk(inline_bindings(expr, spec)) if n.op == "index_var"}
    if uses(inline_bindings(expr, spec), "score"):
        return "element"
    if "q" in names and "kv" in names:
        return "element"
    return "row" if "q" in names else "col" if "kv" in names else "program"
