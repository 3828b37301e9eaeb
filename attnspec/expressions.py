"""Expression trees of the parse tree -> IR expressions: names resolved, lets inlined, limits kept.

Used by frontend.py, which owns the statements and the names a spec declares.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass

from lark import Tree

from . import builtins as bi
from .diagnostics import AttnError, Span
from .ir import OTHER_ROW_OPS, WHOLE_ROW_OPS, Expr, const, factors, walk

INT64_MAX = 2**63 - 1
# Limits that keep hostile specs cheap: lets and earlier scores are inlined, so a chain of lets that
# each use the previous one twice doubles the tree; Python refuses code nested 200 levels deep.
MAX_EXPR_NODES = 10_000
MAX_EXPR_DEPTH = 64


PROLOGUE_TARGETS = ("q", "k", "v")
EPILOGUE_TARGETS = ("out",)
# what a row map reads: its own row of its own tensor
ROW_MAP_READS = {"q": ("q",), "k": ("k",), "v": ("v",), "out": ("out",)}
# functions over the feature axis, only in a row map: name -> (parameters, IR op)
PROLOGUE_FUNCTIONS = {"sum": (("x",), "feature_sum"), "norm": (("x",), "feature_norm"), "rope": (("x", "angle"), "rope"),
                      "softmax": (("x", "groups"), "feature_softmax"), "softmax_rows": (("x",), "row_softmax"),
                      "sum_rows": (("x",), "row_sum")}
MAX_SOFTMAX_GROUPS = 64


@dataclass(frozen=True)
class RowScope:
    """A prologue or epilogue statement being built: its target and the names it gives the row and
    feature indices."""

    target: str
    row: str | None
    feature: str | None
    statement: str = "prologue"  # prologue | epilogue | per-row value
    entry: str | None = None  # a per-row table's entry index (`let t[r: N] per q`)
    summed: str | None = None  # inside `sum(... for g)`: the name of the feature it sums over

    @property
    def what(self) -> str:
        return "the epilogue" if self.statement == "epilogue" else f"a {self.statement} of {self.target}"


def build_expr(spec, tree, *, pool: bool = False, normalize: bool = False, prologue: RowScope | None = None) -> Expr:
    """The IR of an expression tree inside the spec being built (a frontend._SpecBuilder)."""
    span = spec.span_of(tree)
    try:
        expr = _ExprBuilder(spec, pool, normalize, prologue).build(tree)
    except RecursionError:
        raise AttnError(f"expression nested more than {MAX_EXPR_DEPTH} levels deep", span) from None
    if prologue is not None:
        _check_prologue(expr, prologue)
    return _within_limits(expr, span)


def _check_prologue(expr: Expr, scope: RowScope) -> None:
    """A prologue computes one row of q (or of k and v): it reads no other token, score or block."""
    statement = {"per-row value": "let t per"}.get(scope.statement, scope.statement)
    for node in walk(expr):
        if node.op == "index_var" and node.value not in ("b", "h"):
            where = "key" if scope.target in ("k", "v") else "query"
            raise AttnError(
                f"{scope.what} computes one {where} row and cannot read the index '{node.value}'",
                node.span,
                f"name the row's position in the statement: {statement} {scope.target}[i, f] = ... (i the row, f the feature)",
            )
        if node.op in ("score", "pool"):
            when = "after the normalization" if scope.statement == "epilogue" else "before the logit"
            raise AttnError(f"{scope.what} is computed {when} and cannot read the score", node.span)


def is_row_table(decl) -> bool:
    """A per-row table (`let t[r: N] per q`): a computed input with an entry index beyond its row."""
    return decl.computed is not None and decl.computed.entry is not None


def _unread_table(decl, span: Span) -> AttnError:
    return AttnError(f"the per-row table '{decl.name}' holds several numbers per row; read one entry",
                     span, f"write {decl.name}[index], e.g. {decl.name}[clamp(kv - q, -W, W) + W]")


def row_value_index(target: str, span: Span) -> tuple[Expr, ...]:
    """Where a per-row value is read: at (b, h, q) for one of q; at (b, h // (H // HKV), kv) for one of
    k (the query head's kv head). Its tensor is [B, H, SQ] or [B, HKV, SKV] (and a table's entries)."""
    def var(name):
        return Expr("index_var", value=name, span=span)

    if target == "q":
        return var("b"), var("h"), var("q")
    group = Expr("floordiv", (Expr("shape", value="H", span=span), Expr("shape", value="HKV", span=span)), span=span)
    return var("b"), Expr("floordiv", (var("h"), group), span=span), var("kv")


@dataclass
class _ExprBuilder:
    spec: object  # frontend._SpecBuilder
    pool: bool
    normalize: bool
    prologue: RowScope | None = None

    def build(self, tree) -> Expr:
        span = self.spec.span_of(tree)
        method = getattr(self, "_" + tree.data.rstrip("_"))
        return method(tree, span)

    def _int_lit(self, tree, span):
        text = str(tree.children[0])
        value = int(text) if len(text.lstrip("0")) <= 19 else INT64_MAX + 1  # int() refuses > 4300 digits
        if value > INT64_MAX:
            raise AttnError("integer literal does not fit in 64 bits", span)
        return const(value, span)

    def _float_lit(self, tree, span):
        text = str(tree.children[0])
        value = float(text)
        if value == float("inf"):
            raise AttnError(f"number {text} is too large for a float", span)
        return const(value, span)

    def _true_lit(self, tree, span):
        return const(True, span)

    def _false_lit(self, tree, span):
        return const(False, span)

    def _score_ref(self, tree, span):
        # In normalize(...), `score` is the final modified score; elsewhere it is the score
        # composed so far, so lets and later score statements see the value at this point.
        current = self.spec.score
        if self.normalize or current.op == "score":
            return Expr("score", span=span)
        return dataclasses.replace(current, span=span)  # errors about this value point here

    def _tuple(self, tree, span):
        raise AttnError("a tuple is only allowed on the right of 'let (a, b) = ...'", span)

    def _name(self, tree, span):
        name = str(tree.children[0])
        if self.prologue is not None:
            found = self._prologue_name(name, span)
            if found is not None:
                return found
        if name in bi.INDEX_VARS or name in bi.BLOCK_VARS:
            return Expr("index_var", value=name, span=span)
        if name in bi.SHAPE_SYMBOLS:
            return Expr("shape", value=name, span=span)
        let = self.spec.lets.get(name)
        if let is not None:
            if self.normalize and let.uses_score:
                raise AttnError(
                    f"let '{name}' uses score, which inside normalize(...) means the modified score",
                    span,
                    "write the expression of score directly inside normalize(...)",
                )
            return dataclasses.replace(let.value, span=span)  # errors about this value point at the use
        if name in self.spec.params:
            return Expr("param", value=name, span=span)
        decl = self.spec.inputs.get(name)
        if decl is not None:
            if is_row_table(decl):
                raise _unread_table(decl, span)
            if decl.shape:
                raise AttnError(f"input '{name}' has {len(decl.shape)} dimension(s); index it", span, f"write {name}[...]")
            return Expr("load", value=name, span=span)
        raise self._undefined(name, span)

    def _prologue_name(self, name: str, span: Span) -> Expr | None:
        scope = self.prologue
        decl = self.spec.inputs.get(name)
        if scope.statement == "epilogue" and decl is not None and decl.computed is not None:
            if is_row_table(decl):
                raise _unread_table(decl, span)
            return self._epilogue_row_value(decl, span)
        if name == scope.row:
            return Expr("row", span=span, name=name)
        if name == scope.feature:
            return Expr("feature", span=span, name=name)
        if name == scope.entry:
            return Expr("entry", span=span, name=name)
        if name == scope.summed:
            return Expr("feature_in", span=span, name=name)
        if name in ROW_MAP_READS[scope.target] and scope.summed is not None:
            raise AttnError(f"inside sum(... for {scope.summed}), read the row at the summed feature", span,
                            f"write {name}[{scope.summed}]")
        if name in ROW_MAP_READS[scope.target]:
            return Expr("vector", value=name, span=span)
        if name in PROLOGUE_TARGETS + EPILOGUE_TARGETS:
            reads = " and ".join(ROW_MAP_READS[scope.target])
            raise AttnError(f"{scope.what} reads only {reads} of its own row, not '{name}'", span)
        if name in bi.INDEX_VARS + bi.BLOCK_VARS:
            _check_prologue(Expr("index_var", value=name, span=span), scope)
        return None

    def _epilogue_row_value(self, decl, span: Span, entry: tuple[Expr, ...] = ()) -> Expr:
        """A per-row value of q in the epilogue: its number (or its table's entry) at the output row's query."""
        if decl.computed.target != "q":
            table = "" if decl.computed.entry is None else f"[{decl.computed.entry}: ...]"
            raise AttnError(f"the per-row value '{decl.name}' is computed per key; the epilogue reads a query row",
                            span, f"compute it per query: let {decl.name}{table} per q[i, f] = ...")
        index = (Expr("index_var", value="b", span=span), Expr("index_var", value="h", span=span), Expr("row", span=span))
        return Expr("load", index + entry, decl.name, span)

    def _table_entry(self, decl, index_trees, span: Span) -> Expr:
        """t[e] of a per-row table: entry e of the current query's (or key's) row."""
        if len(index_trees) == len(decl.shape):  # every index written out, as the printer does
            return Expr("load", tuple(self.build(t) for t in index_trees), decl.name, span)
        if len(index_trees) != 1:
            raise AttnError(f"the per-row table '{decl.name}' is read at one entry, got {len(index_trees)} indices",
                            span, f"write {decl.name}[index] (the row is the current query's or key's)")
        entry = (self.build(index_trees[0]),)
        scope = self.prologue
        if scope is not None and scope.statement == "epilogue":
            return self._epilogue_row_value(decl, span, entry)
        if scope is not None:
            raise AttnError(f"{scope.what} is computed from the vectors; it cannot read the per-row table '{decl.name}'", span)
        return Expr("load", row_value_index(decl.computed.target, span) + entry, decl.name, span)

    def _kept_sum(self, arg_trees, span) -> Expr:
        """sum_kept(v): the sum of v over the keys the output row keeps, a vector over its features."""
        if self.prologue is None or self.prologue.statement != "epilogue":
            raise AttnError("sum_kept(v) sums v over a query row's kept keys: only in the epilogue", span,
                            "epilogue out[i, f] = alpha * out + beta * sum_kept(v)")
        if len(arg_trees) != 1 or arg_trees[0].data != "name" or str(arg_trees[0].children[0]) != "v":
            raise AttnError("sum_kept takes the bare tensor v", span, "write sum_kept(v)")
        return Expr("kept_sum", span=span)

    def _undefined(self, name: str, span: Span) -> AttnError:
        known = list(self.spec.params) + list(self.spec.inputs) + list(self.spec.lets)
        return AttnError(f"undefined name '{name}'", span, undefined_name_hint(name, known))

    def _index(self, tree, span):
        name_tok, *index_trees = tree.children
        name = str(name_tok)
        if self.prologue is not None and name in ROW_MAP_READS[self.prologue.target]:
            return self._vector_at(name, index_trees, span)
        decl = self.spec.inputs.get(name)
        if decl is None:
            if name in self.spec.params or name in self.spec.lets or name in bi.SHAPE_SYMBOLS + bi.INDEX_VARS:
                raise AttnError(f"'{name}' is not an input tensor and cannot be indexed", span)
            raise self._undefined(name, self.spec.span_of(name_tok))
        if is_row_table(decl):
            return self._table_entry(decl, index_trees, span)
        if len(index_trees) != len(decl.shape):
            raise AttnError(
                f"input '{name}' has {len(decl.shape)} dimension(s) but is indexed with {len(index_trees)}",
                span,
                f"declared at line {decl.span.line}",
            )
        return Expr("load", tuple(self.build(t) for t in index_trees), name, span)

    def _vector_at(self, name: str, index_trees, span) -> Expr:
        """q[g] inside sum(... for g): the row's vector at the summed feature."""
        summed = self.prologue.summed
        if summed is None or len(index_trees) != 1 or index_trees[0].data != "name" or str(index_trees[0].children[0]) != summed:
            hint = (f"write {name}[{summed}]" if summed is not None else
                    f"the bare '{name}' is the row's vector at the feature; sum(... for g) reads it at another: sum({name}[g] * w[h, g, f] for g)")
            raise AttnError(f"the row's vector '{name}' is indexed only by the feature a sum runs over", span, hint)
        return Expr("vector", value=name, span=span, name=summed)

    def _comprehension(self, tree, span):
        """sum(EXPR for g): a product of the row at g and a matrix of g and the feature, summed over g."""
        name_tok, body_tree, var_tok = tree.children
        scope, var = self.prologue, str(var_tok)
        if str(name_tok) != "sum":
            raise AttnError(f"only sum(... for {var}) runs over the features, not {name_tok}(...)", span)
        if scope is None or scope.statement != "prologue":
            raise AttnError("sum(... for g) mixes a row's features: only in a prologue", span,
                            "prologue q[i, f] = sum(q[g] * w[h, g, f] for g)")
        if scope.summed is not None:
            raise AttnError(f"a sum over features inside sum(... for {scope.summed})", span, "one sum(... for g) at a time: nest none inside another")
        taken = {scope.row, scope.feature} | set(self.spec.params) | set(self.spec.inputs) | set(self.spec.lets)
        if var in taken or var in bi.INDEX_VARS + bi.BLOCK_VARS + bi.SHAPE_SYMBOLS or var in PROLOGUE_TARGETS:
            raise AttnError(f"the summed feature needs a name of its own; '{var}' is taken", self.spec.span_of(var_tok),
                            "for example: sum(q[g] * w[h, g, f] for g)")
        if scope.feature is None:
            raise AttnError("sum(... for g) reads the feature it computes: name it", span,
                            f"prologue {scope.target}[i, f] = sum({scope.target}[g] * w[h, g, f] for g)")
        body = _ExprBuilder(self.spec, self.pool, self.normalize, dataclasses.replace(scope, summed=var)).build(body_tree)
        return _contraction(body, var, span)

    def _call(self, tree, span):
        name_tok, *arg_trees = tree.children
        name = str(name_tok)
        arg_trees = [a for a in arg_trees if a is not None]
        if name in PROLOGUE_FUNCTIONS and self.prologue is not None:
            return self._feature_function(name, arg_trees, span)
        if name == "sum_kept":
            return self._kept_sum(arg_trees, span)
        if self._is_pooling(name, arg_trees):
            return self._pool(name, arg_trees, span)
        fn = bi.FUNCTIONS.get(name)
        if fn is None and name in PROLOGUE_FUNCTIONS:
            raise AttnError(f"'{name}' works on the features of a row: only in a prologue or the epilogue", self.spec.span_of(name_tok),
                            "for example: prologue q = q / norm(q)")
        if fn is None:
            close = difflib.get_close_matches(name, list(bi.FUNCTIONS), n=1)
            hint = f"did you mean '{close[0]}'?" if close else "built-ins: " + ", ".join(sorted(bi.FUNCTIONS))
            raise AttnError(f"unknown function '{name}'", self.spec.span_of(name_tok), hint)
        if len(arg_trees) != fn.arity:
            hint = f"write {fn.signature}"
            if name in ("min", "max"):
                hint += f"; pooled {name}(q) / {name}(k) exist only in a select score"
            raise AttnError(f"'{name}' takes {fn.arity} argument(s), got {len(arg_trees)}", span, hint)
        return Expr(name, tuple(self.build(a) for a in arg_trees), span=span)

    def _feature_function(self, name: str, arg_trees, span):
        params, op = PROLOGUE_FUNCTIONS[name]
        if self.prologue.summed is not None:
            raise AttnError(f"{name}(...) inside sum(... for {self.prologue.summed})", span,
                            "apply it to the whole sum: softmax(sum(q[g] * w[h, g, f] for g))")
        if name == "softmax":
            return self._softmax(arg_trees, span)
        if op in OTHER_ROW_OPS and self.prologue.statement != "prologue":
            raise AttnError(f"{name} reads every row of the tensor: only in a prologue, not in {self.prologue.what}", span)
        if len(arg_trees) != len(params):
            raise AttnError(f"'{name}' takes {len(params)} argument(s), got {len(arg_trees)}", span,
                            f"write {name}({', '.join(params)})")
        args = tuple(self.build(a) for a in arg_trees)
        whole = next((n for n in walk(args[0]) if n.op in WHOLE_ROW_OPS), None) if name == "rope" else None
        if whole is not None:
            raise AttnError("rope of a softmax or a sum(... for g) is not supported yet", whole.span,
                            "turn the vector first: softmax(rope(q, angle))")
        return Expr(op, args, span=span)

    def _softmax(self, arg_trees, span):
        """softmax(x) over the row's features, or softmax(x, G) within each of G equal groups of them."""
        if self.prologue.statement != "prologue":
            raise AttnError(f"softmax over features works in a prologue only, not in {self.prologue.what}", span)
        if len(arg_trees) not in (1, 2):
            raise AttnError(f"'softmax' takes 1 or 2 arguments, got {len(arg_trees)}", span, "write softmax(x) or softmax(x, groups)")
        groups = 1
        if len(arg_trees) == 2:
            tree = arg_trees[1]
            if tree.data != "int_lit" or not 1 <= int(str(tree.children[0])) <= MAX_SOFTMAX_GROUPS:
                raise AttnError(f"softmax's groups is an integer literal from 1 to {MAX_SOFTMAX_GROUPS}", self.spec.span_of(tree),
                                "softmax(x, 2): a softmax over each half of the features")
            groups = int(str(tree.children[0]))
        return Expr("feature_softmax", (self.build(arg_trees[0]),), groups, span)

    def _is_pooling(self, name: str, arg_trees) -> bool:
        """mean(...) always pools; max and min with one argument pool q, k or a per-row value, or anything
        in a select score."""
        if name not in bi.POOL_REDUCTIONS:
            return False
        return name == "mean" or (len(arg_trees) == 1 and (self.pool or self._poolable(arg_trees[0])))

    def _poolable(self, tree) -> bool:
        """q, k, or a per-row value (`let t per q`: one number per row): what a block score pools."""
        if _pool_operand(tree):
            return True
        decl = self.spec.inputs.get(str(tree.children[0])) if isinstance(tree, Tree) and tree.data == "name" else None
        return decl is not None and decl.computed is not None and not is_row_table(decl)

    def _pool(self, reduction: str, arg_trees, span):
        if len(arg_trees) != 1 or not self._poolable(arg_trees[0]):
            raise self._bad_pool(reduction, arg_trees, span)
        operand = str(arg_trees[0].children[0])
        if not self.pool:
            raise AttnError(
                f"{reduction}({operand}) pools a whole block; it is only allowed in a select score",
                span,
                "use it after 'by' in: select blocks(q = 64, kv = 64) top(k) by dot(mean(q), mean(k))",
            )
        return Expr("pool", value=(reduction, operand), span=span)

    def _bad_pool(self, reduction: str, arg_trees, span) -> AttnError:
        """mean(...) and one-argument max/min pool a tensor, but only the bare q or k (or a per-row value)."""
        where = self.spec.span_of(arg_trees[0]) if len(arg_trees) == 1 else span
        hint = (f"write {reduction}(q) or {reduction}(k), then compute on the vectors: dot(2 * {reduction}(q), {reduction}(k));"
                f" or pool a per-row value: let t per k = norm(k), then {reduction}(t)")
        if reduction != "mean":
            hint += f"; {reduction}(a, b) with two arguments is the number function"
        if not self.pool:
            hint = "pooling exists only in a select score: select blocks(q = 64, kv = 64) top(k) by dot(mean(q), mean(k))"
        return AttnError(f"{reduction}(...) pools only the bare tensor q or k, or a per-row value", where, hint)

    def _binop(self, tree, span):
        left, op_tok, right = tree.children
        return Expr(bi.BINARY_OPS[str(op_tok)], (self.build(left), self.build(right)), span=span)

    _compare = _binop
    _pow = _binop

    def _neg(self, tree, span):
        return Expr("neg", (self.build(tree.children[0]),), span=span)

    def _not(self, tree, span):
        return Expr("not", (self.build(tree.children[0]),), span=span)

    def _and(self, tree, span):
        return Expr("and", tuple(self.build(c) for c in tree.children), span=span)

    def _or(self, tree, span):
        return Expr("or", tuple(self.build(c) for c in tree.children), span=span)


def _contraction(body: Expr, var: str, span: Span) -> Expr:
    """Expr("feature_mix", (row, weight), value=var) of sum(body for var): body's factors split into a
    function of the row at var (`row`, on the feature axis as any prologue value, var read as the
    feature) and a matrix of var and the feature (`weight`: var read as `feature_in`, the feature as
    `feature`), so that out_f = sum_g row_g * weight_gf, a product of the row by a matrix."""
    row, weight = [], []
    for factor in factors(body):
        ops = {n.op for n in walk(factor)}
        if "vector" in ops and "feature" in ops:
            raise AttnError(f"this factor reads the row at {var} and the feature the prologue computes", factor.span,
                            f"write the sum as (a function of the row at {var}) * (a matrix of {var} and the feature)")
        if "vector" in ops:
            row.append(_renamed(factor, "feature_in", "feature"))
        elif "row" in ops:
            raise AttnError(f"the matrix in sum(... for {var}) cannot depend on the row", factor.span,
                            "a matrix per batch and head: index it by b, h, the summed feature and the feature")
        else:
            weight.append(factor)
    return Expr("feature_mix", (_product(row, span), _product(weight, span)), var, span)


def _product(factors: list[Expr], span: Span) -> Expr:
    result = factors[0] if factors else const(1.0, span)
    for f in factors[1:]:
        result = Expr("mul", (result, f), span=result.span.to(f.span))
    return result


def _renamed(e: Expr, old: str, new: str) -> Expr:
    """e with its `old` leaves turned into `new` ones (names and spans kept)."""
    if e.op == old:
        return Expr(new, (), e.value, e.span, e.name)
    return dataclasses.replace(e, args=tuple(_renamed(a, old, new) for a in e.args)) if e.args else e


# The usual spellings of the built-in index variables and shape symbols (for-loops, papers,
# FlexAttention's mask_mod arguments), answered with the language's own name.
_USUAL_SPELLINGS = (
    ("q", "the query index", ("i", "query", "row", "q_idx", "q_index", "query_idx")),
    ("kv", "the key index", ("j", "key", "col", "k_idx", "kv_idx", "kv_index", "key_idx")),
    ("b", "the batch index", ("batch", "batch_idx")),
    ("h", "the head index", ("head", "head_idx", "h_idx")),
    ("q_block", "the query block index", ("query_block", "q_blk", "i_block", "block_q")),
    ("kv_block", "the key block index", ("key_block", "kv_blk", "j_block", "block_kv")),
    ("B", "the batch size", ("batch_size",)),
    ("H", "the number of query heads", ("num_heads", "n_heads")),
    ("HKV", "the number of kv heads", ("num_kv_heads", "n_kv_heads")),
    ("D", "the head dimension", ("head_dim", "d_head", "d_k")),
)
BUILTIN_SPELLINGS = {alias: (name, role) for name, role, aliases in _USUAL_SPELLINGS for alias in aliases}


def undefined_name_hint(name: str, declared: list[str]) -> str:
    """What to write instead of an undefined name: a built-in's usual spelling, then a close match."""
    if name in ("k", "v"):
        return "the key index is 'kv'; the q, k and v tensors are only visible through pooling in a select score: mean(k)"
    if name in BUILTIN_SPELLINGS:
        builtin, role = BUILTIN_SPELLINGS[name]
        return f"did you mean '{builtin}'? {role} is called {builtin}"
    known = declared + list(bi.INDEX_VARS + bi.BLOCK_VARS + bi.SHAPE_SYMBOLS)
    close = difflib.get_close_matches(name, known, n=1)
    return f"did you mean '{close[0]}'?" if close else "declare it with 'param', 'input' or 'let'"


def _within_limits(expr: Expr, span: Span) -> Expr:
    """Reject expressions too big or too deep to compile, counting inlined lets in full."""
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    for node in _postorder_unique(expr):
        size[id(node)] = 1 + sum(size[id(a)] for a in node.args)
        depth[id(node)] = 1 + max((depth[id(a)] for a in node.args), default=0)
    if size[id(expr)] > MAX_EXPR_NODES:
        raise AttnError(
            f"expression too large: {size[id(expr)]} nodes once lets are inlined (at most {MAX_EXPR_NODES})",
            span,
            "each use of a let (or of score) copies its whole expression",
        )
    if depth[id(expr)] > MAX_EXPR_DEPTH:
        raise AttnError(f"expression nested more than {MAX_EXPR_DEPTH} levels deep", span)
    return expr


def _postorder_unique(expr: Expr):
    """Each distinct node object once, children first, without recursion."""
    seen: set[int] = set()
    stack = [(expr, False)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            yield node
        elif id(node) not in seen:
            seen.add(id(node))
            stack.append((node, True))
            stack.extend((a, False) for a in node.args)


def _pool_operand(tree) -> bool:
    return isinstance(tree, Tree) and tree.data == "name" and str(tree.children[0]) in bi.POOL_OPERANDS
