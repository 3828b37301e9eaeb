"""lark parse tree -> IR (`Program`), resolving names and inlining `let` bindings.

Type and context rules live in verify.py; this module only reports what it must know to build
the IR: undefined or duplicate names, malformed statements, arity, literals out of range.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

from lark import Token, Tree

from . import builtins as bi
from .diagnostics import AttnError, Source, Span
from .expressions import EPILOGUE_TARGETS, PROLOGUE_TARGETS, RowScope, build_expr, row_value_index
from .ir import WHOLE_ROW_OPS, Expr, Input, Normalize, Param, Program, RowMap, Selection, Spec, const, level_of, spec_exprs, uses, walk
from .parser import parse_tree
from .types import infer

# the words of a data-dependent selection's options, as a message names them
_SELECTION_OPTIONS = {"opt_causal": "causal", "opt_global": "global", "opt_scope": "per", "opt_always": "always"}


def parse_program(text: str, name: str = "<string>") -> Program:
    """Parse .attn text into an (unverified) Program."""
    source = Source(name, text)
    tree = parse_tree(source)
    specs: list[Spec] = []
    for spec_tree in tree.children:
        spec = _SpecBuilder(source).build(spec_tree)
        first = next((s for s in specs if s.name == spec.name), None)
        if first is not None:
            raise AttnError(
                f"spec '{spec.name}' is defined twice in this file",
                spec.span,
                f"the first '{spec.name}' is at line {first.span.line}; rename one of them",
            )
        specs.append(spec)
    return Program(tuple(specs), name)


def span_of(source: Source, node) -> Span:
    if isinstance(node, Token):
        return Span(source, node.line, node.column, node.end_line, node.end_column)
    meta = node.meta
    if getattr(meta, "empty", True):
        return Span(source, 0, 0, 0, 0)
    return Span(source, meta.line, meta.column, meta.end_line, meta.end_column)


@dataclass
class _Let:
    value: Expr
    uses_score: bool
    span: Span


@dataclass
class _SpecBuilder:
    source: Source
    params: dict[str, Param] = field(default_factory=dict)
    inputs: dict[str, Input] = field(default_factory=dict)
    lets: dict[str, _Let] = field(default_factory=dict)
    score: Expr = field(default_factory=lambda: Expr("score"))
    masks: list[Expr] = field(default_factory=list)
    singles: dict[str, object] = field(default_factory=dict)
    single_lines: dict[str, int] = field(default_factory=dict)
    prologue: list[RowMap] = field(default_factory=list)
    linear: bool = False  # normalize linear: the scale defaults to 1

    # ------------------------------------------------------------------ statements

    def build(self, tree: Tree) -> Spec:
        name_tok, *stmts = tree.children
        self._check_name(name_tok, "spec")
        for stmt in stmts:  # declarations first: they may be used before they appear
            if stmt.data in ("param_decl", "input_decl"):
                getattr(self, stmt.data)(stmt)
        for stmt in stmts:
            if stmt.data not in ("param_decl", "input_decl"):
                getattr(self, stmt.data)(stmt)
        spec = Spec(
            name=str(name_tok),
            params=tuple(self.params.values()),
            inputs=tuple(self.inputs.values()),
            # linear attention's weights are the feature maps' products themselves: no 1/sqrt(D) unless written
            scale=self.singles.get("scale", const(1.0, span_of(self.source, name_tok)) if self.linear else None),
            score=self.score,
            mask=_conjunction(self.masks),
            normalize=self.singles.get("normalize", Normalize("softmax")),
            selection=self.singles.get("select"),
            gqa_group=self.singles.get("gqa"),
            prologue=tuple(sorted(self.prologue, key=lambda step: PROLOGUE_TARGETS.index(step.target))),
            epilogue=self.singles.get("epilogue"),
            span=span_of(self.source, name_tok),
            lets=tuple((name, let.value) for name, let in self.lets.items() if not let.uses_score),
        )
        for let in self.lets.values():  # unused lets are type-checked too
            infer(let.value, spec)
        _computed_reads(spec)
        for step in spec.prologue + ((spec.epilogue,) if spec.epilogue else ()):
            infer(step.value, spec)
        return spec

    def param_decl(self, tree: Tree) -> None:
        name_tok, type_tok, runtime, default = tree.children
        self._declare(name_tok, "param")
        ptype = str(type_tok)
        if ptype not in bi.PARAM_TYPES:
            raise self._unknown(type_tok, "param type", bi.PARAM_TYPES)
        value = None if default is None else self._param_default(default, ptype)
        span = span_of(self.source, tree)
        self.params[str(name_tok)] = Param(str(name_tok), ptype, runtime is not None, value, span)

    def input_decl(self, tree: Tree) -> None:
        name_tok, dtype_tok, *dims, learnable = tree.children
        self._declare(name_tok, "input")
        if str(dtype_tok) not in bi.DTYPES:
            raise self._unknown(dtype_tok, "dtype", tuple(bi.DTYPES))
        shape = tuple(self.expr(d) for d in dims if d is not None)
        decl = Input(str(name_tok), str(dtype_tok), shape, learnable is not None, span_of(self.source, tree))
        if decl.learnable and bi.DTYPES[decl.dtype] != "float":
            raise AttnError(f"learnable input '{decl.name}' must have a float dtype", span_of(self.source, dtype_tok))
        self.inputs[decl.name] = decl

    def let_stmt(self, tree: Tree) -> None:
        target, value_tree = tree.children
        names = target.children
        if target.data == "let_name":
            values = [value_tree]
        elif value_tree.data == "tuple" and len(value_tree.children) == len(names):
            values = value_tree.children
        else:
            raise AttnError(
                f"'let' with {len(names)} names needs a tuple of {len(names)} expressions on the right",
                span_of(self.source, value_tree),
                "write let (a, b) = (expr_a, expr_b)",
            )
        for name_tok, val in zip(names, values):
            self._declare(name_tok, "let")
            expr = self.expr(val)
            self.lets[str(name_tok)] = _Let(expr, uses(expr, "score"), span_of(self.source, name_tok))

    def score_stmt(self, tree: Tree) -> None:
        self.score = self.expr(tree.children[0])

    def mask_stmt(self, tree: Tree) -> None:
        self.masks.append(self.expr(tree.children[0]))

    def scale_stmt(self, tree: Tree) -> None:
        self._single("scale", tree, self.expr(tree.children[0]))

    def gqa_stmt(self, tree: Tree) -> None:
        self._single("gqa", tree, self.expr(tree.children[0]))

    def norm_stmt(self, tree: Tree) -> None:
        kind_tok, *args = tree.children
        kind = str(kind_tok)
        args = [a for a in args if a is not None]
        span = span_of(self.source, tree)
        if kind in bi.UNSUPPORTED_NORMALIZATIONS:
            raise AttnError(
                f"'{kind}' normalization is not a form of the language",
                span_of(self.source, kind_tok),
                "linear attention is `normalize linear`, with its feature maps as prologues: "
                "prologue q = elu(q) + 1.0",
            )
        if kind == "linear":
            self._single("normalize", tree, self._linear(args, span))
            self.linear = True
            return
        if kind not in bi.NORMALIZATIONS:
            raise self._unknown(kind_tok, "normalization", bi.NORMALIZATIONS)
        if kind == "softmax":
            self._single("normalize", tree, Normalize("softmax", sink=self._softmax_sink(args), span=span))
            return
        if not args or args[0].data != "posarg" or any(a.data == "posarg" for a in args[1:]):
            raise AttnError(
                f"'{kind}' takes exactly one expression of score",
                span,
                f"for example: normalize {kind}(sigmoid(score))",
            )
        weight = self.expr(args[0].children[0], normalize=True)
        denominator = self._rownorm_denominator(kind, args[1:])
        self._single("normalize", tree, Normalize(kind, weight=weight, denominator=denominator, span=span))

    def select_stmt(self, tree: Tree) -> None:
        kwargs_tree, rule = tree.children
        sizes = self._block_sizes(kwargs_tree)
        span = span_of(self.source, tree)
        if rule.data == "static_rule":
            sel = Selection(sizes["q"], sizes["kv"], "keep", keep=self.expr(rule.children[0]), span=span)
        else:
            sel = self._dynamic_selection(sizes, rule, span)
        self._single("select", tree, sel)

    # ------------------------------------------------------------------ statement helpers

    def _softmax_sink(self, args) -> Expr | None:
        sink = None
        for arg in args:
            if arg.data != "kwarg" or str(arg.children[0]) != "sink":
                raise AttnError(
                    "softmax takes only the keyword argument 'sink'",
                    span_of(self.source, arg),
                    "normalize softmax(sink = sink_logit[h])",
                )
            if sink is not None:
                raise AttnError("'sink' given twice", span_of(self.source, arg))
            sink = self.expr(arg.children[1])
        return sink

    def _linear(self, args, span) -> Normalize:
        """normalize linear(decay = lam, normalized = true): the weight is the score itself (the feature
        maps' product, phi(q).psi(k), once prologues replace q and k), times lam^|d| where a decay is
        given, d the key's distance behind the query, (q + SKV - SQ) - kv; over the row's sum of those
        weights where normalized (rownorm: they must be >= 0), alone where not (elementwise)."""
        options = {}
        for arg in args:
            if arg.data != "kwarg":
                raise AttnError("linear takes only keyword arguments", span_of(self.source, arg),
                                "normalize linear(decay = lam[h], normalized = false)")
            key = str(arg.children[0])
            if key not in ("decay", "normalized"):
                raise AttnError(f"linear takes no keyword argument '{key}'", span_of(self.source, arg),
                                "its arguments are decay (per head, in (0, 1]) and normalized (true or false)")
            if key in options:
                raise AttnError(f"'{key}' given twice", span_of(self.source, arg))
            options[key] = (self.expr(arg.children[1]), span_of(self.source, arg.children[1]))
        weight = Expr("score", span=span)
        if "decay" in options:
            decay, where = options["decay"]
            if level_of(decay, self._partial_spec()) != "program" or uses(decay, "score"):
                raise AttnError("a decay is one number per batch and head: it may read b, h, inputs and params, not q, kv or score",
                                where, "normalize linear(decay = lam[h])")
            weight = Expr("mul", (weight, _decay_factor(decay, where)), span=span)
        normalized, where = options.get("normalized", (const(True), span))
        if normalized.op != "const" or not isinstance(normalized.literal, bool):
            raise AttnError("normalized is true or false", where, "normalize linear(normalized = false)")
        if normalized.literal:
            return Normalize("rownorm", weight=weight, span=span)
        return Normalize("elementwise", weight=weight, span=span)

    def _partial_spec(self) -> Spec:
        """The declarations so far, for the analyses a statement needs while the spec is being built."""
        return Spec(name="_", params=tuple(self.params.values()), inputs=tuple(self.inputs.values()))

    def _rownorm_denominator(self, kind: str, kwargs) -> Expr | None:
        """rownorm(g, den = f): the expression the row's denominator sums, when it is not g itself."""
        denominator = None
        for arg in kwargs:
            key = str(arg.children[0])
            if kind != "rownorm":
                raise AttnError(f"{kind} takes no keyword argument '{key}'", span_of(self.source, arg),
                                f"{kind} takes one expression of score: normalize {kind}(sigmoid(score))")
            if key != "den":
                raise AttnError("rownorm takes only the keyword argument 'den'", span_of(self.source, arg),
                                "normalize rownorm(tanh(score), den = abs(tanh(score))): weights of any sign "
                                "over a denominator >= 0")
            if denominator is not None:
                raise AttnError("'den' given twice", span_of(self.source, arg))
            denominator = self.expr(arg.children[1], normalize=True)
        return denominator

    def _block_sizes(self, tree: Tree) -> dict[str, Expr]:
        sizes: dict[str, Expr] = {}
        for kw in tree.children:
            key_tok, value = kw.children
            key = str(key_tok)
            if key not in ("q", "kv"):
                raise AttnError(f"unknown block size '{key}'", span_of(self.source, key_tok), "use blocks(q = 64, kv = 64)")
            if key in sizes:
                raise AttnError(f"block size '{key}' given twice", span_of(self.source, key_tok))
            sizes[key] = self.expr(value)
        missing = [k for k in ("q", "kv") if k not in sizes]
        if missing:
            raise AttnError(f"missing block size '{missing[0]}'", span_of(self.source, tree), "use blocks(q = 64, kv = 64)")
        return sizes

    def _selection_option(self, opt: Tree, criterion: str) -> tuple[str, object]:
        """(Selection field, value) of one option after the block score."""
        if opt.data == "opt_scope":
            scope = str(opt.children[0])
            if scope not in bi.SELECTION_SCOPES:
                raise self._unknown(opt.children[0], "selection scope", bi.SELECTION_SCOPES)
            return "scope", scope
        if opt.data == "opt_always":
            return "always", self.expr(opt.children[0])
        if opt.data == "opt_global" and criterion == "threshold":
            raise AttnError("'global' changes nothing for threshold(t), which keeps each block on its own score",
                            span_of(self.source, opt), "rank every block pair of a head together with top(k) or share(p)")
        return ("causal" if opt.data == "opt_causal" else "ranked_globally"), True

    def _dynamic_selection(self, sizes, rule: Tree, span: Span) -> Selection:
        crit_tok, amount, score, *opts = rule.children
        if str(crit_tok) not in bi.SELECTION_CRITERIA:
            raise self._unknown(crit_tok, "selection criterion", bi.SELECTION_CRITERIA)
        fields: dict[str, object] = {}
        for opt in opts:
            key, value = self._selection_option(opt, str(crit_tok))
            if key in fields:
                raise AttnError(f"'{_SELECTION_OPTIONS[opt.data]}' given twice", span_of(self.source, opt))
            fields[key] = value
        return Selection(
            sizes["q"], sizes["kv"], str(crit_tok), amount=self.expr(amount),
            score=self.expr(score, pool=True), span=span, **fields,
        )

    def _param_default(self, tree: Tree, ptype: str) -> Expr:
        from .passes.fold import fold_expr

        value = fold_expr(self.expr(tree))
        if value.op != "const":
            raise AttnError("a param default must be a constant", span_of(self.source, tree))
        lit = value.literal
        kind = type(lit).__name__
        if ptype == "float" and kind == "int":
            return const(float(lit), value.span)
        if kind != ptype:
            raise AttnError(
                f"the default of {_article(ptype)} param cannot be {_article(kind)}",
                value.span,
                f"write {_article(ptype)} value, or declare the param as {kind}",
            )
        return value

    def _single(self, key: str, tree: Tree, value) -> None:
        span = span_of(self.source, tree)
        if key in self.singles:
            hint = f"the first '{key}' is at line {self.single_lines[key]}; keep one"
            raise AttnError(f"'{key}' is declared twice in this spec", span, hint)
        self.singles[key] = value
        self.single_lines[key] = span.line

    # ------------------------------------------------------------------ names

    def _check_name(self, tok: Token, what: str) -> None:
        reason = bi.reserved_reason(str(tok))
        if reason:
            raise AttnError(f"cannot name {_article(what)} '{tok}': {reason}", span_of(self.source, tok), "choose another name")

    def _declare(self, tok: Token, what: str) -> None:
        self._check_name(tok, what)
        name = str(tok)
        previous = self.params.get(name) or self.inputs.get(name) or self.lets.get(name)
        if previous is not None:
            where = previous.span
            raise AttnError(
                f"'{name}' is already defined (line {where.line})",
                span_of(self.source, tok),
                "names cannot be redefined or shadowed; choose another name",
            )

    def prologue_stmt(self, tree: Tree) -> None:
        step = self._row_map(tree, "prologue", PROLOGUE_TARGETS)
        if any(other.target == step.target for other in self.prologue):
            raise AttnError(f"a second prologue of {step.target}", step.span, "compose them in one expression")
        self.prologue.append(step)

    def epilogue_stmt(self, tree: Tree) -> None:
        self._single("epilogue", tree, self._row_map(tree, "epilogue", EPILOGUE_TARGETS))

    def row_value_stmt(self, tree: Tree) -> None:
        """`let t per q[i, f] = ...`: one number per row of q (or k), read as t wherever its index is;
        `let t[r: N] per q[i, f] = ...`: a table of N numbers per row, read as t[index]."""
        name_tok, table, *parts = tree.children
        self._declare(name_tok, "let")
        entry, extent = (None, None) if table is None else self._row_table(table)
        step = self._row_map_parts(*parts, span_of(self.source, tree), "per-row value", ROW_VALUE_TARGETS, entry)
        _check_reduced(step.value)
        name, span = str(name_tok), span_of(self.source, name_tok)
        shape, index = _row_value_layout(step.target, span)
        self.inputs[name] = Input(name, "float32", shape + ((extent,) if table is not None else ()), False, span, computed=step)
        if table is None:
            self.lets[name] = _Let(Expr("load", index, name, span), False, span)

    def _row_table(self, tree: Tree) -> tuple[str, Expr]:
        """`[r: N]` of a per-row table: the entry index's name and the number of entries."""
        entry_tok, extent_tree = tree.children
        self._declare(entry_tok, "per-row table index")
        return str(entry_tok), self.expr(extent_tree)

    def _row_map(self, tree: Tree, statement: str, targets: tuple[str, ...]) -> RowMap:
        """`prologue q[i, f] = ...` or `epilogue out[i, f] = ...`: the target, the index names, the value."""
        return self._row_map_parts(*tree.children, span_of(self.source, tree), statement, targets)

    def _row_map_parts(self, target_tok, row_tok, feature_tok, value_tree, span: Span, statement: str,
                       targets: tuple[str, ...], entry: str | None = None) -> RowMap:
        target = str(target_tok)
        if target not in targets:
            choices = " or ".join(", ".join(targets).rsplit(", ", 1))
            if statement == "per-row value":
                message, forms = f"a per-row value is computed from the rows of {choices}", [f"let t per {t} = ..." for t in targets]
            else:
                message, forms = f"{_article(statement)} replaces {choices}", [f"{statement} {t} = ..." for t in targets]
            raise AttnError(f"{message}, not '{target}'", span_of(self.source, target_tok), "write " + " or ".join(forms))
        names = [t for t in (row_tok, feature_tok) if t is not None]
        for tok in names:
            self._declare(tok, f"{statement} index")  # local to the statement, but never a shadow
        if len(names) == 2 and str(row_tok) == str(feature_tok):
            raise AttnError("the row and feature indices need two names", span_of(self.source, feature_tok))
        if entry is not None and entry in map(str, names):
            tok = next(t for t in names if str(t) == entry)
            raise AttnError("the table's entry index and the row's indices need different names", span_of(self.source, tok))
        scope = RowScope(target, str(row_tok) if row_tok else None, str(feature_tok) if feature_tok else None, statement, entry)
        value = build_expr(self, value_tree, prologue=scope)
        return RowMap(target, value, scope.row, scope.feature, span, entry)

    def _unknown(self, tok: Token, what: str, choices) -> AttnError:
        close = difflib.get_close_matches(str(tok), choices, n=1)
        hint = f"did you mean '{close[0]}'?" if close else "expected one of: " + ", ".join(choices)
        return AttnError(f"unknown {what} '{tok}'", span_of(self.source, tok), hint)

    # ------------------------------------------------------------------ expressions

    def expr(self, tree, *, pool: bool = False, normalize: bool = False) -> Expr:
        return build_expr(self, tree, pool=pool, normalize=normalize)

    def span_of(self, node) -> Span:
        return span_of(self.source, node)


def _conjunction(masks: list[Expr]) -> Expr | None:
    if not masks:
        return None
    result = masks[0]
    for m in masks[1:]:
        result = Expr("and", (result, m), span=result.span.to(m.span))
    return result


ROW_VALUE_TARGETS = ("q", "k")


def _row_value_layout(target: str, span: Span) -> tuple[tuple[Expr, ...], tuple[Expr, ...]]:
    """A per-row value's tensor shape, and its read where it is used: [B, H, SQ] read at (b, h, q) for
    q; [B, HKV, SKV] read at (b, h // (H // HKV), kv) for k (the query head's kv head)."""
    rows = ("B", "H", "SQ") if target == "q" else ("B", "HKV", "SKV")
    return tuple(Expr("shape", value=n, span=span) for n in rows), row_value_index(target, span)


def _check_reduced(value: Expr) -> None:
    """A per-row value is one number per row: its vector and feature index only inside sum or norm."""
    if value.op in ("feature_sum", "feature_norm"):
        return
    if value.op in ("vector", "feature", "rope") + WHOLE_ROW_OPS:
        raise AttnError(
            "a per-row value is one number per row, but this varies over the features", value.span,
            "reduce it over the features with sum(...) or norm(...)",
        )
    for arg in value.args:
        _check_reduced(arg)


def _decay_factor(decay: Expr, span: Span) -> Expr:
    """decay^|d|, d = (q + SKV - SQ) - kv: how far the key lies behind the query (end-aligned, as a
    causal mask writes it)."""
    def node(op, *args, value=None):
        return Expr(op, args, value, span)

    behind = node("sub", node("add", node("index_var", value="q"), node("sub", node("shape", value="SKV"), node("shape", value="SQ"))),
                  node("index_var", value="kv"))
    return node("pow", decay, node("float", node("abs", behind)))


def _computed_reads(spec: Spec) -> None:
    """Per-row values are read by the score mod, the sink, the weight and the mask, and pooled by a
    block score (mean(t), ...); a block selection does not read them pair by pair."""
    computed = {i.name for i in spec.inputs if i.computed is not None}
    for expr in [] if spec.selection is None else spec_exprs(spec.selection):
        for node in walk(expr) if expr is not None else ():
            if node.op == "load" and node.value in computed:
                name = node.value
                raise AttnError(f"a block selection reads blocks, not rows: the per-row value '{name}' must be pooled",
                                node.span, f"pool it per block in a block score: mean({name}), max({name}) or "
                                f"min({name}); or read it in a score mod, a sink, a weight or the mask")


def _article(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word
