"""The prologue as Triton kernels (templates/triton/prologue.py.jinja): the triton target replaces q, k
or v in one pass over their rows, one kernel per prologue statement, instead of a chain of tensor
operations. The kernel-work model (analysis/cost.py row_map_work, benchmarks/RESULTS.md) says a pass
is cheaper than fusing a k or v prologue into every kernel that loads a key tile.

A program holds a [BLOCK_M rows, BLOCK_F features] tile of one (batch, head): `_x` is the row's vector
at the feature `_f`, `_row` its position. `rope` pairs feature f with its partner `_fp` (f + F/2 or
f - F/2), so an expression under rope is also rendered at the partner (`_xp`, `_fp`): the renderer's
`partner` view. Reductions over features sum the tile's row (padding excluded).
"""

from __future__ import annotations

from collections import Counter

from attnspec.ir import LEAF_OPS, OTHER_ROW_OPS, WHOLE_ROW_OPS, Expr, RowMap, Spec, inline_bindings, walk
from attnspec.passes.adjoint import ROW_SEED, SEED, row_map_adjoint, varies
from attnspec.passes.symbolic import NotRepresentable, exact_key

from .dense import row_values_read
from .rowmap import dense_step
from .triton import TritonRenderer


_TF32 = "TF32"  # the constexpr of a pass that holds a matrix: its products in TF32 (runtime/prologue.py)


class RowMapKernelRenderer(TritonRenderer):
    """A prologue statement's value as Triton code over the tile, at its own features or, with
    `partner`, at each feature's rope partner."""

    def __init__(self, spec: Spec, partner: bool = False):
        super().__init__(spec)
        self.partner = partner
        self.tables = {}  # a prologue reads no per-row table
        # (tile, width, target): the rows of `target` held as a resident tile of that width, whose
        # sums against a vector the same for every row are tensor-core products (_kernel.row_dot)
        self.tile: tuple[str, str, str] | None = None
        self.shared: dict[tuple, str] = {}  # the backward pass's shared terms by exact_key (_shared_terms)
        self.fixed: set[tuple] = set()  # those of them that are one number per row

    def at_partner(self) -> "RowMapKernelRenderer":
        other = RowMapKernelRenderer(self.spec, not self.partner)
        # a term that varies over the features holds its value at the feature, not at the partner
        other.shared = {key: name for key, name in self.shared.items() if key in self.fixed}
        other.fixed = self.fixed
        return other

    def render(self, e: Expr) -> str:
        name = self.shared.get(exact_key(e)) if self.shared else None
        return name if name is not None else super().render(e)

    def render_term(self, e: Expr) -> str:
        """A shared term's own value (its arguments by their names where shared)."""
        key = exact_key(e)
        name = self.shared.pop(key)
        try:
            return super().render(e)
        finally:
            self.shared[key] = name

    def render_vector(self, e: Expr) -> str:
        if e.value == ROW_SEED:
            return "_dy"  # one number per row: the same at a feature and at its partner
        if e.value == SEED:
            return "_dyp" if self.partner else "_dy"
        return "_xp" if self.partner else "_x"

    def render_row(self, e: Expr) -> str:
        return "_row"

    def render_feature(self, e: Expr) -> str:
        return "_fp" if self.partner else "_f"

    def render_kept_sum(self, e: Expr) -> str:
        # the sum of v over the row's kept keys (the forward kernel's, or the epilogue pass's tile of it)
        return "_vsump" if self.partner else "_vsum"

    def render_feature_sum(self, e: Expr) -> str:
        weight = self._linear_weight(e.args[0])
        if weight is not None:  # sum(x * w): a product on tensor cores
            tile, width, _ = self.tile
            return f"_kernel.row_dot({tile}, {self.render(weight)} + tl.zeros([1, {width}], dtype=tl.float32), _in_f)"
        return f"_kernel.feature_sum({self.render(e.args[0])}, _in_f)"

    def _linear_weight(self, e: Expr) -> Expr | None:
        """With a resident tile, w where e is `x * w` (or `w * x`), x the tile's row and w the same for
        every row; else None."""
        if self.tile is None or self.partner or e.op != "mul":
            return None
        for x, w in (e.args, e.args[::-1]):
            if x.op == "vector" and x.value == self.tile[2] and not any(n.op in ("vector", "row", "kept_sum") for n in walk(w)):
                return w
        return None

    def render_feature_norm(self, e: Expr) -> str:
        x = self.render(e.args[0])
        return f"tl.sqrt(_kernel.feature_sum({x} * {x}, _in_f))"

    def render_feature_in(self, e: Expr) -> str:
        return "tl.arange(0, BLOCK_F)[:, None]"  # the summed feature of sum(... for g): the matrix's rows

    def render_feature_mix(self, e: Expr) -> str:
        row, weight = (self.render(a) for a in e.args)
        return f"_kernel.feature_mix({row}, {weight}, _in_f, _F, {_TF32}, BLOCK_M, BLOCK_F)"

    def render_feature_softmax(self, e: Expr) -> str:
        return f"_kernel.feature_softmax({self.render(e.args[0])}, {e.value}, _f, _in_f, _F, BLOCK_M, BLOCK_F)"

    # the gradients' operations (passes/adjoint.py), in the backward passes

    def render_feature_mix_t(self, e: Expr) -> str:
        grad, weight = (self.render(a) for a in e.args)
        return f"_kernel.feature_mix_t({grad}, {weight}, _in_f, _F, {_TF32}, BLOCK_M, BLOCK_F)"

    def render_feature_outer(self, e: Expr) -> str:
        row, grad = (self.render(a) for a in e.args)
        return f"_kernel.feature_outer({row}, {grad}, _in, {_TF32}, BLOCK_M, BLOCK_F)"

    def render_feature_softmax_grad(self, e: Expr) -> str:
        y, grad = (self.render(a) for a in e.args)
        return f"_kernel.feature_softmax_grad({y}, {grad}, {e.value}, _f, _in_f, _F, BLOCK_M, BLOCK_F)"

    def render_partner(self, e: Expr) -> str:
        return self.at_partner().render(e.args[0])

    def render_first_half(self, e: Expr) -> str:
        return "(_fp < _HALF)" if self.partner else "(_f < _HALF)"

    def render_rope(self, e: Expr) -> str:
        """Pair (f, f + F/2) turns by the angle at its first feature: x cos a - x' sin a there, and
        x cos a + x' sin a at the second, x' the value at the partner."""
        x, angle = e.args
        other = self.at_partner()
        first = "(_fp < _HALF)" if self.partner else "(_f < _HALF)"
        angle_first = f"tl.where({first}, {self.render(angle)}, {other.render(angle)})"
        return f"_kernel.rope_pair({self.render(x)}, {other.render(x)}, {angle_first}, {first})"


def prologue_kernel_plan(spec: Spec) -> list[dict]:
    """{target, code, inputs, params, rope, groups} of each prologue statement's kernel: the Triton code
    of its value, the inputs ({name, rank}) and runtime params ({name, bool}) it reads, whether it pairs
    features (rope), its softmaxes' groups. A statement that reads other rows (softmax_rows) has no pass
    over rows: {target, dense}, its tensor code (codegen/rowmap.py)."""
    return [{"target": step.target, "dense": dense_step(spec, step)["code"]}
            if any(n.op in OTHER_ROW_OPS for n in walk(inline_bindings(step.value, spec))) else {**_kernel_step(spec, step), "dense": None}
            for step in spec.prologue]


def fused_q_prologue(spec: Spec) -> dict | None:
    """{code, rope} of the q prologue as the forward kernel applies it to its resident Q tile when no
    gradient is needed (the kernel-work model's choice in inference: the pass's round trip saved, the
    same operations). None without a q prologue, or where per-row values of q that the kernel does not
    compute itself (fused_q_values) are computed by passes, which need q after it."""
    step = next((s for s in spec.prologue if s.target == "q"), None)
    if step is None or len(fused_q_values(spec)) < len(_row_values(spec, "q")):
        return None
    if any(n.op in WHOLE_ROW_OPS for n in walk(inline_bindings(step.value, spec))):
        return None  # a softmax over features or a matrix: the pass's [rows, features] tile, not the forward's
    return _fused(spec, step)


def fused_q_values(spec: Spec) -> list[dict]:
    """{name, code, rope, late} of each per-row value of q as the forward kernel computes it from its
    resident Q tile when no gradient is needed: once per query tile, the kernel-work model's choice in
    inference (the same operations as its pass, whose launch and round trip through memory are saved;
    the fused kernel reads `_v_<name>` where it would load the value). A value the scores read is
    computed before the key loop; one only the epilogue reads (`late`) after it, not held across the
    loop. Sums against a vector the same for every row (`sum(q * w[h, f])`) are tensor-core products on
    the tile (_kernel.row_dot): as an [R, F] float32 copy of the tile, N09's two spilled every fused
    shape at D = 128 on sm_90a. A value reads its own row only (the language keeps matrices, softmaxes
    over features and sums over rows to prologues). Empty where the kernel cannot take the values from
    its tile: a per-row table among them (tensor code), a mask that reads them (the schedule is built
    from them on the host), a value read at another row than its own."""
    values = _row_values(spec, "q")
    if not values or not row_value_kernel_plan(spec) or row_values_read(spec, spec.mask):
        return []
    names = {i.name for i in values}
    if not _read_at_own_rows(spec, names):
        return []
    scored = set(value_bindings(spec, names).values())
    return [{**_fused(spec, i.computed, tile=("_q_tile", "BLOCK_D")), "name": i.name, "late": _fused_name(i.name) not in scored}
            for i in values]


def value_bindings(spec: Spec, names: set[str]) -> dict[str, str]:
    """{kernel temp: `_v_<name>`} of the row bindings that load one of these per-row values of q at its
    own row: what the fused forward kernel reads from the values it computed instead."""
    return {b.symbol: _fused_name(b.value.value) for b in spec.bindings if b.level == "row" and own_row_load(b.value, names)}


def _fused_name(value: str) -> str:
    return f"_v_{value}"


def own_row_load(e: Expr, names: set[str]) -> bool:
    """A load of one of these per-row values of q at its own row: `t[b, h, q]` (or `t[b, h, i]` in
    the epilogue)."""
    if e.op != "load" or e.value not in names or len(e.args) != 3:
        return False
    (b, h, row) = e.args
    at_row = row.op == "row" or (row.op == "index_var" and row.value == "q")
    return (b.op, b.value, h.op, h.value) == ("index_var", "b", "index_var", "h") and at_row


def _read_at_own_rows(spec: Spec, names: set[str]) -> bool:
    """Whether the forward kernel reads these values only through row bindings that load them at their
    own rows, and the epilogue only at its rows: what the fused kernel can replace by its own."""
    def loads(e: Expr | None) -> list[Expr]:
        return [] if e is None else [n for n in walk(e) if n.op == "load" and n.value in names]

    for b in spec.bindings:
        found = loads(b.value)
        if found and not (b.level == "row" and own_row_load(b.value, names)):
            return False
    norm = spec.normalize
    roots = [spec.scale, spec.score, spec.mask, norm.weight, norm.denominator, norm.sink]
    roots += [step.value for step in spec.prologue] + [i.computed.value for i in _row_values(spec)]
    if any(loads(e) for e in roots):
        return False
    return spec.epilogue is None or all(own_row_load(n, names) for n in loads(spec.epilogue.value))


def fused_epilogue(spec: Spec, values: set[str] = frozenset()) -> dict | None:
    """{code, rope} of the epilogue as the forward kernel applies it before its store when no gradient is
    needed (in training the kernel stores the output the backward reads, and the epilogue's pass follows),
    reading the per-row values named in `values` as those the fused kernel computed (fused_q_values)."""
    return None if spec.epilogue is None else _fused(spec, spec.epilogue, values)


def epilogue_kernel_plan(spec: Spec) -> dict | None:
    """{code, inputs, params, rope, kept_partner} of the epilogue as a pass over the rows of the output
    (with gradients: the attention kernel stores the output the backward reads, then the pass runs);
    None without an epilogue, or where its backward has no pass (the tensor code then runs, and autograd
    differentiates it)."""
    if spec.epilogue is None or not _has_rule(spec, spec.epilogue):
        return None
    return _kernel_step(spec, spec.epilogue)


def row_value_kernel_plan(spec: Spec) -> list[dict]:
    """{name, target, code, inputs, params, rope} of each per-row value: its pass over the rows of q or
    k. Empty where a per-row table is among them (the values stay tensor code, computed together)."""
    values = _row_values(spec)
    if any(i.computed.entry is not None for i in values):
        return []
    return [{**_kernel_step(spec, i.computed), "name": i.name} for i in values]


def backward_kernel_plan(spec: Spec) -> dict:
    """The backward passes of the prologue, the per-row values and the epilogue: {prologue, row_values,
    epilogue}, each a list of {target, name, terms, code, kept_sum (the gradient of sum_kept(v), which
    the epilogue reads where reads_kept), row_seed, rope, partner_x, partner_dy, kept_partner, inputs,
    params, sites, matrices, sums, matrix_sites} (sites: {input, level, code, offset, per_feature} per
    float load, the gradient of its value and where it adds; matrices: (name, code) of each matrix
    sum(x[g] * w[g, f] for g) reads, computed once per program; sums: (name, code) of the products
    x^T g a program sums over its tiles, the gradients of those matrices; matrix_sites: the sites of
    the loads inside a matrix, on its [g, f] grid, from the sums). An empty list: no passes, the module
    differentiates the tensor code.
    The per-row values have passes together or not at all (not where one has no rule in
    passes/adjoint.py, or a per-row table keeps the values tensor code); a prologue statement without
    a rule is differentiated through its own tensor code beside the others' passes
    (_prologue_backward_steps); the epilogue on its own."""
    values = _row_values(spec)
    tables = any(i.computed.entry is not None for i in values)
    rows = [] if tables else _backward_steps(spec, [(i.computed, i.name, True) for i in values])
    epilogue = [] if spec.epilogue is None else _backward_steps(spec, [(spec.epilogue, "out", False)])
    return {"prologue": _prologue_backward_steps(spec), "row_values": rows, "epilogue": epilogue}


def _prologue_backward_steps(spec: Spec) -> list:
    """_backward_step of each prologue statement; a statement without a rule in passes/adjoint.py (one
    that reads other rows: softmax_rows, sum_rows) is {target, name, dense: True}, differentiated on
    its own through its tensor code, and where no statement has a rule, [] (all of it is)."""
    steps = []
    for step in spec.prologue:
        try:
            steps.append(_backward_step(spec, step, step.target, False))
        except NotRepresentable:
            steps.append({"target": step.target, "name": step.target, "dense": True})
    return steps if any(not s.get("dense") for s in steps) else []


def _row_values(spec: Spec, target: str | None = None) -> list:
    """The per-row values (of q or k where `target` says)."""
    return [i for i in spec.inputs if i.computed is not None and target in (None, i.computed.target)]


def _backward_steps(spec: Spec, steps: list) -> list:
    """_backward_step of each (step, name, per_row), or [] where one has no rule in passes/adjoint.py."""
    try:
        return [_backward_step(spec, step, name, per_row) for step, name, per_row in steps]
    except NotRepresentable:
        return []


def _has_rule(spec: Spec, step: RowMap) -> bool:
    """Whether passes/adjoint.py differentiates the row map."""
    try:
        row_map_adjoint(step, spec)
    except NotRepresentable:
        return False
    return True


def _backward_step(spec: Spec, step: RowMap, name: str, per_row: bool) -> dict:
    adjoint = row_map_adjoint(step, spec, per_row)
    r = RowMapKernelRenderer(spec)
    # the program's matrices (sum(x[g] * w[g, f] for g)): computed once, before its rows
    outers = _distinct(n for _, grad in adjoint.matrix for n in walk(grad) if n.op == "feature_outer")
    grads = [g for g in [adjoint.vector, adjoint.kept_sum] + [grad for _, grad in adjoint.loads] if g is not None]
    tiled = grads + [a for outer in outers for a in outer.args]  # what is evaluated on each tile of rows
    weights = _distinct(n.args[1] for g in tiled for n in walk(g) if n.op in ("feature_mix", "feature_mix_t"))
    matrices = [(f"_w{i}", RowMapKernelRenderer(spec).render(w)) for i, w in enumerate(weights)]
    hoisted = {exact_key(w): n for (n, _), w in zip(matrices, weights)}
    terms = _shared_terms(tiled, set(hoisted))
    r.shared = {**hoisted, **{exact_key(node): name for name, node in terms}}
    r.fixed = {exact_key(node) for _, node in terms if not varies(node)} | set(hoisted)
    # the sums over the rows of the matrices' gradients (their accumulators), and the matrix loads' sites
    sums = [(f"_m{i}", r.render(outer)) for i, outer in enumerate(outers)]
    after = RowMapKernelRenderer(spec)
    after.shared = {**hoisted, **{exact_key(o): n for (n, _), o in zip(sums, outers)}}
    # what is evaluated at rope partners: rope's first argument, and partner(e) (a rope angle's gradient)
    ropes = [n for g in tiled for n in walk(g) if n.op in ("rope", "partner")]
    return {
        **_reads(spec, step),
        "name": name,
        "dense": False,
        "terms": [(name, r.render_term(node)) for name, node in terms],
        "code": None if adjoint.vector is None else r.render(adjoint.vector),
        "kept_sum": None if adjoint.kept_sum is None else r.render(adjoint.kept_sum),
        "row_seed": per_row,
        "rope": bool(ropes),
        "partner_x": _at_partners(ropes, lambda n: n.op == "vector" and n.value == step.target),
        "partner_dy": _at_partners(ropes, lambda n: n.op == "vector" and n.value == SEED),
        "kept_partner": _at_partners(ropes, lambda n: n.op == "kept_sum"),
        "sites": [_site(spec, r, load, grad) for load, grad in adjoint.loads],
        "matrices": matrices,
        "sums": sums,
        "matrix_sites": [{**_site(spec, after, load, grad), "level": "matrix"} for load, grad in adjoint.matrix],
    }


def _distinct(nodes) -> list[Expr]:
    """The nodes without repeats (equal by exact_key), in order."""
    found: dict[tuple, Expr] = {}
    for n in nodes:
        found.setdefault(exact_key(n), n)
    return list(found.values())


def _at_partners(ropes: list[Expr], found) -> bool:
    """Whether a node `found` accepts is evaluated at rope partners: in the first argument of a rope
    (or of partner(e))."""
    return any(found(n) for rope in ropes for n in walk(rope.args[0]))


def _shared_terms(exprs: list[Expr], named: set[tuple] = frozenset()) -> list[tuple[str, Expr]]:
    """(name, subexpression) of those that occur more than once among exprs, named `_r0, _r1, ...`,
    each after those it contains: the derivative repeats the forward's terms. The subexpressions whose
    exact_key is in `named` (and what they contain) have names already."""
    def nodes(e: Expr):
        if exact_key(e) in named:
            return
        yield e
        for arg in e.args:
            yield from nodes(arg)

    counts = Counter(exact_key(n) for e in exprs for n in nodes(e) if n.op not in LEAF_OPS)
    terms: dict[tuple, tuple[str, Expr]] = {}

    def visit(node: Expr) -> None:
        key = exact_key(node)
        if key in named:
            return
        for arg in node.args:
            visit(arg)
        if node.op not in LEAF_OPS and counts[key] > 1 and key not in terms:
            terms[key] = (f"_r{len(terms)}", node)

    for e in exprs:
        visit(e)
    return list(terms.values())


def _site(spec: Spec, r: RowMapKernelRenderer, load: Expr, grad: Expr) -> dict:
    """A float load's gradient, summed in the tile over the axes its index does not read (rows,
    features) before it is stored with the offset it adds at (in the input's contiguous layout)."""
    reads = {n.op for index in load.args for n in walk(index)}
    level = {(False, False): "program", (True, False): "row", (False, True): "feature",
             (True, True): "element"}[("row" in reads, "feature" in reads)]
    name = load.value
    offset = ""
    for i, index in enumerate(load.args):  # Horner over the dimensions, each index clamped into its own
        clamped = f"_kernel.clamp({r.render(index)}, 0, _{name}_n{i} - 1)"
        offset = f"({offset}) * _{name}_n{i} + {clamped}" if offset else clamped
    offset = offset or "0"
    # a gradient that varies over neither the features nor the index is one number per row, counted once
    per_feature = varies(grad) or "feature" in reads
    return {"input": name, "level": level, "code": r.render(grad), "offset": offset, "per_feature": per_feature}


def _fused(spec: Spec, step: RowMap, values: set[str] = frozenset(), tile: tuple[str, str] | None = None) -> dict:
    """{code, rope, kept_partner, groups, matrix}: the statement's value as Triton code over a tile (reading the
    per-row values named in `values` as the forward kernel's `_v_<name>`; with `tile`, (name, width) of
    the forward kernel's resident tile of the rows, sums against a vector as products on it), whether it
    pairs features, whether it reads sum_kept(v) at a rope partner (`_vsump`), the group counts of
    its softmaxes over features (the host checks that they divide the features), and whether it holds
    a matrix (sum(x[g] * w[g, f] for g), launched on more warps)."""
    value = inline_bindings(step.value, spec)
    ropes = [n for n in walk(value) if n.op == "rope"]
    renderer = RowMapKernelRenderer(spec)
    renderer.values = {name: _fused_name(name) for name in values}
    renderer.tile = None if tile is None else (*tile, step.target)
    return {"code": renderer.render(value), "rope": bool(ropes),
            "kept_partner": _at_partners(ropes, lambda n: n.op == "kept_sum"),
            "groups": sorted({n.value for n in walk(value) if n.op == "feature_softmax" and n.value > 1}),
            "matrix": any(n.op == "feature_mix" for n in walk(value))}


def _kernel_step(spec: Spec, step: RowMap) -> dict:
    return {**_fused(spec, step), **_reads(spec, step)}


def _reads(spec: Spec, step: RowMap) -> dict:
    """{target, inputs, params, reads_kept}: what a pass over the rows of step's tensor takes besides
    the tensor, the inputs ({name, rank}) and runtime params ({name, bool}) its value reads, and whether
    it reads sum_kept(v)."""
    nodes = list(walk(inline_bindings(step.value, spec)))
    return {
        "target": step.target,
        "inputs": [{"name": i.name, "rank": len(i.shape)} for i in spec.inputs
                   if any(n.op == "load" and n.value == i.name for n in nodes)],
        "params": [{"name": p.name, "bool": p.type == "bool"} for p in spec.runtime_params
                   if any(n.op == "param" and n.value == p.name for n in nodes)],
        "reads_kept": any(n.op == "kept_sum" for n in nodes),
    }
