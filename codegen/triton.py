"""The triton target: one fused, flash-style forward kernel per spec (templates/triton).

The template holds the kernel's structure (Q tile resident, a loop over the listed full key tiles
without mask evaluation, a loop over the partial ones with it, the online normalization of each
form, the epilogue); TritonRenderer fills its plan with the spec's expressions as Triton code:

- index variables: `_b`, `_h` (program scalars), `_q` = offs_m[:, None], `_kv` = offs_n[None, :];
- shapes are kernel arguments `_B _H _HKV _SQ _SKV _D`; runtime params keep their (validated) names;
- an input `t` is a pointer with its sizes `_t_n0..` and strides `_t_s0..`; every index of a load is
  clamped into its dimension (bounds-safe), float inputs compute in float32;
- `//` and `%` keep the language's floor semantics (Triton's integer division truncates), except
  where the dividend is provably >= 0 and the divisor > 0 and the plain operators agree; a divisor
  that may be 0 gives a // 0 = 0 and a % 0 = a, as on every target;
- bindings are placed by level: program ones once per kernel instance, row ones once per query
  tile, column and element ones inside the key-tile loop.
"""

from __future__ import annotations

import math

from dataclasses import dataclass

import sympy

from attnspec.analysis.bands import key_bands
from attnspec.analysis.sign import nonnegative, nonzero, positive
from attnspec.builtins import DTYPES, GENERATED_NAMES
from attnspec.diagnostics import AttnError
from attnspec.ir import Expr, Spec, const, inline_bindings, level_of, uses
from attnspec.ops import OPS
from attnspec.passes.flex import token_mask
from attnspec.passes.symbolic import NotRepresentable, SymbolTable, to_sympy
from attnspec.types import infer

from .dense import ModulePlan, bindings_for, module_plan
from .mods import mod_plan
from .render import ExprRenderer, python_literal, template_environment
from .rowmap import reads_kept_sum
from .table_tiles import from_tile, gathered, table_tiles, tile_binding
from .tiles import TileRenderer
from .triton_backward import BackwardPlan, backward_plan

MAX_BANDS = 4  # more bands than this walk the same tiles too often: a block table is used instead


class TritonRenderer(ExprRenderer):
    """IR expressions as Triton code inside the kernel (see the module docstring for the names): the
    shared leaves (`_b`, `_q`, `_SQ`, `_t0`, params by name), Triton's loads, operators and functions."""

    infix = {**ExprRenderer.infix, "and": "&", "or": "|", "bitand": "&"}

    def __init__(self, spec: Spec):
        super().__init__(spec)
        self.constants = {param: kernel_name for kernel_name, param in kernel_constants(spec)}
        self.tables = table_tiles(spec)
        self.values: dict[str, str] = {}  # per-row values read as the fused forward kernel's variables

    def render_const(self, e: Expr) -> str:
        if e.name in self.constants:
            return self.constants[e.name]
        value = e.literal
        # inside @triton.jit, float("...") is a constant; a global such as math.nan is not
        if isinstance(value, float) and value != value:
            return 'float("nan")'
        if isinstance(value, float) and value in (float("inf"), float("-inf")):
            return 'float("inf")' if value > 0 else '(-float("inf"))'
        if isinstance(value, float) and value == 0.0 and math.copysign(1.0, value) < 0:
            return "_kernel.negative_zero()"  # Triton makes every constant equal to 0 a +0.0
        return python_literal(value)

    def render_neg(self, e: Expr) -> str:
        """Triton's unary minus is 0 - x, which is +0.0 for x = 0.0; a product by -1 flips the sign."""
        if infer(e, self.spec) == "float":
            return f"({self.render(e.args[0])} * -1.0)"
        return super().render_neg(e)

    def render_offset(self, e: Expr, strides: str) -> str:
        """The element offset a load reads, every index clamped into its dimension (bounds-safe):
        `strides` names the stride arguments (the input's, or its gradient buffer's)."""
        name = e.value
        return " + ".join(
            f"_kernel.clamp({self.render(a)}, 0, _{name}_n{i} - 1) * {strides}{i}" for i, a in enumerate(e.args)
        ) or "0"

    def render_load(self, e: Expr) -> str:
        name = e.value
        if name in self.values:  # a per-row value of q the fused forward kernel computed (rowmap_triton.fused_q_values)
            return self.values[name]
        table = self.tables.get(name)
        if table is not None and from_tile(table, e, self.spec):
            return gathered(table, self.render(e.args[3]))  # a pair's entry of a per-row table, from its tile
        kind = DTYPES[self.spec.input(name).dtype]
        loaded = f"tl.load({name} + {self.render_offset(e, f'_{name}_s')})"
        if kind == "float":
            return f"{loaded}.to(tl.float32)"
        return f"({loaded} != 0)" if kind == "bool" else loaded

    def render_eq(self, e: Expr) -> str:
        return self.render_infix(e, "==")

    def render_ne(self, e: Expr) -> str:
        return self.render_infix(e, "!=")

    def render_not(self, e: Expr) -> str:
        return f"({self.render(e.args[0])} == 0)"

    def render_lt(self, e: Expr) -> str:
        return self._ordered(e, "<")

    def render_le(self, e: Expr) -> str:
        return self._ordered(e, "<=")

    def render_gt(self, e: Expr) -> str:
        return self._ordered(e, ">")

    def render_ge(self, e: Expr) -> str:
        return self._ordered(e, ">=")

    def _ordered(self, e: Expr, symbol: str) -> str:
        """A float comparison goes through _kernel.truth: in Triton's interpreter, a float32 scalar compared
        with a constant is not a boolean that `|` and `&` accept (found by attnspec fuzz)."""
        if any(infer(a, self.spec) == "float" for a in e.args):
            return f"_kernel.truth({self.render_infix(e, symbol)})"
        return self.render_infix(e, symbol)

    def render_float(self, e: Expr) -> str:
        return f"_kernel.as_float({self.render(e.args[0])})"

    def render_floordiv(self, e: Expr) -> str:
        return self._division(e, "//", "_kernel.floordiv")

    def render_mod(self, e: Expr) -> str:
        return self._division(e, "%", "_kernel.floormod")

    def _division(self, e: Expr, symbol: str, helper: str) -> str:
        a, b = e.args
        if infer(e, self.spec) == "float":
            return f"{helper}_float({self.render(a)}, {self.render(b)})"
        if nonnegative(a, self.spec) and positive(b, self.spec):
            return f"({self.render(a)} {symbol} {self.render(b)})"
        if nonzero(b, self.spec):
            return f"{helper}({self.render(a)}, {self.render(b)})"
        return f"{helper}_or_zero({self.render(a)}, {self.render(b)})"

    def render_truediv(self, e: Expr) -> str:
        """A quotient; by a constant (a literal or compile-time param) whose reciprocal is a normal
        float32, a product by the reciprocal, which Triton folds at compile time: one multiply per
        element where a division takes a reciprocal on the special-function units and a multiply
        (both round: within 1.5 ulp of the exact quotient, as the division's approximation is within 2)."""
        a, b = (self.render(x) for x in e.args)
        if _reciprocal_is_normal(e.args[1]):
            return f"(_kernel.as_float({a}) * (1.0 / {b}))"
        return f"(_kernel.as_float({a}) / {b})"

    def render_pow(self, e: Expr) -> str:
        base, exponent = e.args
        if exponent.op == "const" and float(exponent.literal).is_integer() and abs(exponent.literal) <= 16:
            n = int(exponent.literal)
            return f"_kernel.powi({self.render(base)}, {n})" if n >= 0 else f"(1.0 / _kernel.powi({self.render(base)}, {-n}))"
        return f"_kernel.powf({self.render(base)}, {self.render(exponent)})"

    def render_call(self, e: Expr) -> str:
        spelling = OPS[e.op].triton
        if e.op in INTEGER_SPELLINGS and infer(e, self.spec) == "int":
            spelling = INTEGER_SPELLINGS[e.op]
        if not spelling:
            raise AttnError(f"the triton target cannot compute '{e.op}' in a kernel", e.span)
        return f"{spelling}({', '.join(self.render(a) for a in e.args)})"


FLOAT32_NORMAL = (2.0**-126, (2.0 - 2.0**-23) * 2.0**127)  # the least and the greatest normal float32


def _reciprocal_is_normal(divisor: Expr) -> bool:
    if divisor.op != "const" or isinstance(divisor.literal, bool):
        return False
    value = abs(float(divisor.literal))
    return 0.0 < value < math.inf and FLOAT32_NORMAL[0] <= 1.0 / value <= FLOAT32_NORMAL[1]


# Integers have no NaN and no -0.0: Triton's own min and max compute the language's there.
INTEGER_SPELLINGS = {"min": "tl.minimum", "max": "tl.maximum"}


def generate(spec: Spec, source_name: str = "<string>") -> str:
    """The triton module's source for a verified, optimized spec."""
    template = template_environment().get_template("triton/module.py.jinja")
    return template.render(**triton_plan(spec, source_name).fields())


def selection_tiles(spec: Spec) -> tuple[int, int] | None:
    """A data-dependent selection's (query, key) blocks, of any size: the kernels' tiles are their own
    (runtime/triton.py selected_tiles), and a tile that holds parts of several blocks looks each pair's
    block up (_kernel.selected_pairs)."""
    sel = spec.selection
    if sel is None or not sel.dynamic:
        return None
    return sel.q_block.literal, sel.kv_block.literal


@dataclass(frozen=True)
class TritonPlan(ModulePlan, BackwardPlan):
    """The triton module (templates/triton/*.jinja): the module plan, the kernels' expressions as Triton
    code placed by level, the tile functions' arguments, the schedule, and the backward's plan."""

    ctx: str  # what the tile functions receive to compute the spec's expressions (see _context)
    ctx_outer: str  # ctx without the row-level bindings (the dK/dV tile computes them per query tile)
    scores_out: str  # what the scores function returns, in order
    selection_tiles: tuple[int, int] | None  # a data-dependent selection's blocks (a tile across several looks its pairs up)
    table_tiles: list[str]  # the per-row tables the kernels read per pair from tiles (codegen/table_tiles.py)
    scores_read: bool  # the weights read the score: q and k have gradients through it (else None, as autograd has)
    prologue_kernels: list[dict]  # each prologue statement as a kernel's code (codegen/rowmap_triton.py)
    fused_q: dict | None  # the q prologue in the forward kernel, without gradients (codegen/rowmap_triton.py)
    fused_values: list[dict]  # the per-row values of q the forward kernel computes from its tile, without gradients
    fused_row_bindings: dict[str, str]  # row bindings that load them, and what the fused kernel reads instead
    row_value_kernels: list[dict]  # each per-row value as a pass's code; empty: tensor code (a per-row table)
    rowmap_backward: dict  # the backward passes of the prologue, per-row values and epilogue (empty lists: autograd of the tensor code)
    epilogue_kernel: dict | None  # the epilogue as a pass over the output's rows, with gradients; None: tensor code
    fused_epilogue: dict | None  # the epilogue in the forward kernel, without gradients
    heaviest_first: bool  # query tiles in reverse order: a row's key work grows with q (causal)
    k_score: str
    k_weight: str | None
    k_denominator: str | None  # rownorm(g, den = f): f
    k_mask: str | None
    k_sink: str | None
    fold_log2e: bool  # log2(e) and the scale fold into the products q.k
    k_log2_score: str | None  # softmax without fold_log2e: the forward's modified score in log2 units (_log2_score)
    k_log2_sink: str | None  # with k_log2_score, the sink logit in log2 units (where the running max starts)
    kept_sum: bool  # the epilogue reads sum_kept(v): the forward kernel sums v over each row's kept keys
    check_nonnegative: str | None  # rownorm's rule, where its denominator terms are not provably >= 0: the kernel flags a negative one
    score_full: bool  # the score mod reads the score: it already has the tile's shape
    weight_full: bool
    denominator_full: bool
    program_bindings: list[tuple[str, str]]  # (name, code) computed once per program
    row_bindings: list[tuple[str, str]]  # once per query tile
    score_bindings: list[tuple[str, str]]  # per key tile (column and pair level), read by the scores
    mask_bindings_k: list[tuple[str, str]]  # per key tile, read by the mask only (partial tiles)
    tile_mask: dict | None  # the mask over intervals (codegen/tiles.py)
    bands: list[dict] | None  # the mask's key bands {lo, hi}; None: a block table
    mask_mod: dict | None  # for a selection's eligible tiles (codegen/mods.py)
    eligible_classes: bool
    kernel_inputs: list[dict]  # {name, rank, kind}
    kernel_params: list[str]
    kernel_bool_params: list[str]
    kernel_constants: list[tuple[str, str]]  # (kernel name, param): compile-time params as constexpr globals


def triton_plan(spec: Spec, source_name: str) -> TritonPlan:
    from .rowmap_triton import (backward_kernel_plan, epilogue_kernel_plan, fused_epilogue, fused_q_prologue,
                                fused_q_values, prologue_kernel_plan, row_value_kernel_plan,
                                value_bindings)  # they render with TritonRenderer

    r = TritonRenderer(spec)
    norm = spec.normalize
    mask = token_mask(spec)
    score_roots = [spec.score] + [e for e in (norm.weight, norm.denominator) if e is not None]
    # log2(e) folds into the scale only where the running max can be kept on the raw products q.k:
    # a plain score, a scale > 0 (the max of scale * x is scale * max x) and no sink logit to compare
    plain_score = spec.score.op == "score" and norm.kind == "softmax" and norm.sink is None
    plain_score = plain_score and (spec.scale is None or positive(spec.scale, spec))
    program = _leveled(spec, score_roots + [mask, norm.sink], r, ("program",))
    row = _leveled(spec, score_roots + [mask, norm.sink], r, ("row",))
    tiles = [tile_binding(t, r.render) for t in r.tables.values()]  # before the pairs that pick from them
    per_pair = tiles + _leveled(spec, score_roots, r, ("col", "element"))
    module = module_plan(spec, source_name).fields()
    nonnegative_rule = _nonnegative_rule(spec)
    module["linear"] = _chunked_linear(spec, module["linear"], nonnegative_rule)
    values = [] if module["linear"] else fused_q_values(spec)  # the chunks read the values' passes
    value_names = {v["name"] for v in values}
    return TritonPlan(
        **module,
        **backward_plan(spec, TritonRenderer).fields(),
        ctx=_context(spec, program, row),
        ctx_outer=_context(spec, program),
        scores_out=", ".join(["_keep", "_s", "_x"] + (["_w"] if norm.kind != "softmax" else []) + (["_wd"] if norm.denominator else [])
                             + [t for t, _ in per_pair]),
        selection_tiles=selection_tiles(spec),
        table_tiles=list(r.tables),
        scores_read=norm.kind == "softmax" or uses(norm.weight, "score") or uses(norm.denominator, "score"),
        prologue_kernels=prologue_kernel_plan(spec),
        fused_q=None if module["linear"] else fused_q_prologue(spec),  # the chunks read q after its prologue
        fused_values=values,
        fused_row_bindings=value_bindings(spec, value_names),
        row_value_kernels=row_value_kernel_plan(spec),
        rowmap_backward=backward_kernel_plan(spec),
        epilogue_kernel=epilogue_kernel_plan(spec),
        fused_epilogue=fused_epilogue(spec, value_names),
        k_score=r.render(spec.score),
        k_weight=None if norm.weight is None else r.render(norm.weight),
        k_denominator=None if norm.denominator is None else r.render(norm.denominator),
        k_mask=None if mask is None else r.render(mask),
        k_sink=None if norm.sink is None else r.render(norm.sink),
        fold_log2e=plain_score,
        k_log2_score=_log2_score(spec, r) if not plain_score and norm.kind == "softmax" else None,
        k_log2_sink=None if plain_score or norm.sink is None else r.render(_scaled(norm.sink, LOG2E, spec)),
        check_nonnegative=nonnegative_rule,
        kept_sum=reads_kept_sum(spec),
        score_full=uses(spec.score, "score"),
        weight_full=norm.weight is not None and uses(norm.weight, "score"),
        denominator_full=norm.denominator is not None and uses(norm.denominator, "score"),
        program_bindings=program,
        row_bindings=row,
        score_bindings=per_pair,
        mask_bindings_k=_leveled(spec, [mask], r, ("col", "element"), exclude=score_roots),
        tile_mask=None if mask is None else TileRenderer(spec).statements(inline_bindings(mask, spec)),
        bands=_bands_plan(spec, r),
        heaviest_first=heaviest_first(spec),
        mask_mod=None if mask is None else mod_plan(spec, [mask], False),
        eligible_classes=True,
        kernel_inputs=[_kernel_input(i) for i in spec.inputs],
        kernel_params=[p.name for p in spec.runtime_params],
        kernel_bool_params=[p.name for p in spec.runtime_params if p.type == "bool"],
        kernel_constants=kernel_constants(spec),
    )


LOG2E = 1.4426950408889634


def _log2_score(spec: Spec, r: TritonRenderer) -> str:
    """The modified score times log2(e) as the forward kernel computes it, for a softmax whose log2(e)
    does not fold into the scale (a sink, a mod, a scale not known to be positive): the running max is
    kept in these units (the sink logit too), and the weights are exp2(t - m) with no multiply per pair.
    - `score + b`, `score - b` (b not reading the score) and a plain score: `qk * (scale log2 e) + b log2 e`,
      one multiply-add, log2(e) folded into b's factor that varies least (the slope of ALiBi, once per
      program) or into b's sign;
    - any other mod f: log2(e) folded into f's constant factor or the one that varies least
      (`cap * tanh(score / cap)` becomes `(cap log2 e) * tanh(score / cap)`), else one multiply."""
    score, scaled = spec.score, f"_qk * (_sm_scale * {LOG2E!r})"
    if score.op == "score":
        return scaled
    bias = None
    if score.op == "add" and "score" in (score.args[0].op, score.args[1].op):
        bias, factor = (score.args[1] if score.args[0].op == "score" else score.args[0]), LOG2E
    elif score.op == "sub" and score.args[0].op == "score":
        bias, factor = score.args[1], -LOG2E
    if bias is not None and not uses(inline_bindings(bias, spec), "score"):
        return f"{scaled} + {r.render(_scaled(bias, factor, spec))}"
    return r.render(_scaled(score, LOG2E, spec))


def _scaled(e: Expr, factor: float, spec: Spec) -> Expr:
    """e * factor, the factor folded into a constant of e, or into the factor of a product that varies
    least (computed once per program or row rather than per pair)."""
    if e.op == "const" and not isinstance(e.literal, bool) and isinstance(e.literal, (int, float)):
        if e.name is not None:  # a param's value keeps its name: `CAP * 1.44...`, folded when Triton compiles
            return Expr("mul", (e, const(factor, e.span)), span=e.span)
        return const(float(e.literal) * factor, e.span)
    if e.op == "neg":
        return _scaled(e.args[0], -factor, spec)
    if e.op == "truediv":  # (a factor) / b: into the numerator
        return Expr("truediv", (_scaled(e.args[0], factor, spec), e.args[1]), span=e.span)
    if e.op == "mul":
        order = ("program", "row", "col", "element")
        a, b = sorted(e.args, key=lambda x: -1 if x.op == "const" else order.index(level_of(x, spec)))
        return Expr("mul", (_scaled(a, factor, spec), b), span=e.span)
    return Expr("mul", (e, const(factor, e.span)), span=e.span)


def _chunked_linear(spec: Spec, linear: dict | None, nonnegative_rule: str | None) -> dict | None:
    """The linear form where the chunked kernel (runtime/linear.py) computes it: not where the kernel would
    have to check each weight's sign (rownorm's rule, unproved). An epilogue follows the chunks as a pass."""
    if linear is None or nonnegative_rule is not None:
        return None
    return linear


def _nonnegative_rule(spec: Spec) -> str | None:
    """rownorm's rule where the terms its denominator sums are not provably >= 0 (the kernel checks them)."""
    norm = spec.normalize
    if norm.kind != "rownorm" or nonnegative(norm.summed, spec):
        return None
    return "rownorm(g, den = f) needs f >= 0" if norm.denominator is not None else "rownorm(f) needs f >= 0"


def kernel_constants(spec: Spec) -> list[tuple[str, str]]:
    """(kernel name, param) of the compile-time params kernels read by name: the param's name in capitals,
    a global tl.constexpr (a Triton kernel reads no other globals); a param whose capitalized name is
    taken keeps its value inline."""
    taken = GENERATED_NAMES | {p.name for p in spec.params} | {i.name for i in spec.inputs} | {spec.name}
    found = []
    for p in spec.params:
        upper = p.name.upper()
        if not p.runtime and upper not in taken:
            found.append((upper, p.name))
            taken.add(upper)
    return found


def _context(spec: Spec, *levels: list[tuple[str, str]]) -> str:
    """What the tile functions receive from their kernel (as one tuple) to compute the spec's
    expressions: the program's batch and head, inputs (pointer, sizes, strides), runtime params, the
    bindings of the given levels (program, then row), a data-dependent selection per block (pointer,
    strides), the shape symbols and the scale."""
    names = ["_b", "_h"]
    for decl in spec.inputs:
        rank = range(len(decl.shape))
        names += [decl.name] + [f"_{decl.name}_n{d}" for d in rank] + [f"_{decl.name}_s{d}" for d in rank]
    names += [p.name for p in spec.runtime_params] + [t for bindings in levels for t, _ in bindings]
    if selection_tiles(spec) is not None:  # the selection per block, where a tile across blocks looks its pairs up
        names += ["_Sel", "_ssb", "_ssh", "_ssq"]
    return ", ".join(names + ["_B", "_H", "_HKV", "_SQ", "_SKV", "_D", "_sm_scale"])


def _leveled(spec: Spec, roots, r: TritonRenderer, levels, exclude=()) -> list[tuple[str, str]]:
    """(name, code) of the bindings `roots` read at these levels, in binding order; bindings that
    `exclude` also reads are left out (they are computed with those)."""
    taken = {name for name, _ in bindings_for(spec, [e for e in exclude if e is not None], r)}
    wanted = bindings_for(spec, [e for e in roots if e is not None], r)
    level = {b.symbol: b.level for b in spec.bindings}
    return [(name, code) for name, code in wanted if level[name] in levels and name not in taken]


def schedule_bands(spec: Spec):
    """The mask's key bands when the kernel can compute its key tiles in closed form: no
    data-dependent selection, and the mask a (provable) union of at most MAX_BANDS bands; else None."""
    if spec.selection is not None and spec.selection.dynamic:
        return None
    bands = key_bands(token_mask(spec), spec)
    return None if bands is None or len(bands) > MAX_BANDS else bands


def heaviest_first(spec: Spec) -> bool:
    """Whether the forward and dQ kernels take their query tiles last to first: the key bands' total
    width grows with q (causal, a prefix plus causal, ...; sympy's derivative in q is a positive
    number), so the longest programs start first and the short ones fill the GPU's tail."""
    bands = schedule_bands(spec)
    if not bands:
        return False
    table = SymbolTable("int")
    try:
        ends = [(None if b.lo is None else to_sympy(b.lo, spec, table)[0], None if b.hi is None else to_sympy(b.hi, spec, table)[0]) for b in bands]
    except NotRepresentable:
        return False
    q = next((sym for sym, node in table.atoms.items() if node.op == "index_var" and node.value == "q"), None)
    if q is None:
        return False
    slope = sum(sympy.diff(hi if hi is not None else 0, q) - sympy.diff(lo if lo is not None else 0, q) for lo, hi in ends)
    return bool(slope.is_number and slope > 0)


def _bands_plan(spec: Spec, r: TritonRenderer) -> list[dict] | None:
    bands = schedule_bands(spec)
    if bands is None:
        return None
    return [{"lo": "0" if b.lo is None else r.render(b.lo), "hi": "_SKV - 1" if b.hi is None else r.render(b.hi)} for b in bands]


def _kernel_input(decl) -> dict:
    return {"name": decl.name, "rank": len(decl.shape), "kind": DTYPES[decl.dtype]}
