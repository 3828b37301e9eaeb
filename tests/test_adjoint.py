"""passes/adjoint.py: reverse-mode derivatives of row maps against torch's autograd, in float64 on the CPU.

A row map (a prologue `prologue q[i, f] = EXPR`, or a per-row value `let t per k[j, f] = EXPR`) is
evaluated densely with the reference's own renderer (codegen/rowmap.py, the code the reference
module runs, on the broadcast grids of templates/common/rowmap.py.jinja); torch's autograd of that
tensor code, with a random seed for the result's gradient, gives the gradients of the vector (q, k
or v before the map) and of every float input it reads. `row_map_adjoint` must give the same
numbers: its IR expressions are rendered with the same renderer and evaluated on the same grids,
the seed leaves bound to the seed tensors: for a prologue, `_seed` [B, heads, S, D] (also where the
value is the same at every feature, such as `prologue q = norm(q)`), and `_seed_row` NaN; for a
per-row value, `_seed_row` [B, heads, S, 1], and `_seed` NaN. Neither may read the other's seed.

A load's gradient is that of the load's value where the map reads it: per (row, feature) for a load
indexed by the feature, per row for one that is not (gathered over the features). It is scattered
into the input's shape at the load's indices, clamped into each dimension as `_fn.load` does, and
added up over every (batch, head, row[, feature]) and every load of the input, which is what autograd
of the gather computes. Kinks (0 for relu and abs, ties of min and max, the ends of a clamp) are hit
on purpose: the adjoint must follow torch's choice there. Rows of zeros under a norm give NaN or a
finite gradient, and the two must agree (NaN in the same places counts as equal).

No Triton here: the kernels that run these expressions are checked elsewhere; this checks the pass.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from attnspec.api import load_program, lower, pick_spec
from attnspec.codegen.rowmap import RowMapRenderer
from attnspec.ir import inline_bindings, walk
from attnspec.passes import OPTIMIZE, STANDARD
from attnspec.passes.adjoint import ROW_SEED, SEED, row_map_adjoint
from attnspec.passes.symbolic import NotRepresentable
from attnspec.runtime import dense as _dense
from attnspec.runtime import functions as _fn

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SIZES = {"B": 2, "H": 4, "HKV": 2, "SQ": 5, "SKV": 7, "D": 8}
PIPELINES = {"standard": STANDARD, "optimize": OPTIMIZE}  # the reference's and the fast targets'
TOLERANCE = {"rtol": 1e-10, "atol": 1e-10, "equal_nan": True}

EXAMPLES_WITH_ROW_MAPS = [
    "b06_query_temperature",
    "b10_rope",
    "b10_rope2d",
    "b10_rope_gated",
    "m05_swin_v2_cosine",
    "n09_affine_scaled",
    "n14_cosine_signed",
]


def _spec(*lines: str) -> str:
    return "attention adjoint {\n" + "".join(f"    {line}\n" for line in lines) + "}\n"


# name -> source; each statement is one row map (or what a row map needs to be read)
INLINE = {
    # a learnable gain per head and feature
    "gain": _spec("input g: float32[H, D] learnable", "prologue q[i, f] = q * g[h, f]"),
    # a per-row input of k: h is the kv head
    "row_scale": _spec("input s: float32[B, HKV, SKV] learnable", "gqa group = 2", "prologue k[j, f] = k * s[b, h, j]"),
    # rope of a product: the rotation's transpose carries the seed back to q and to the gain
    "rope_after_gain": _spec("input g: float32[H, D] learnable",
                             "prologue q[i, f] = rope(q * g[h, f], float(i) * 0.1 * float(f + 1))"),
    # rope of rope, and rope of a normalised row (a reduction inside the rotation)
    "rope_twice": _spec("prologue k[j, f] = rope(rope(k, 0.3 * float(f)), float(j) - 0.5)"),
    "rope_of_norm": _spec("prologue q[i, f] = rope(q / sqrt(sum(q * q) + 0.5), float(i + SKV - SQ) * 0.7)"),
    # nested functions with kinks: leaky relu (its kink at 0) over a norm clamped from below
    "kinks": _spec("prologue q = where(q > 0.0, q, 0.1 * q) / max(norm(q), 1e-6)"),
    # a per-row value of k read by the score mod
    "row_value_k": _spec("let t per k[j, f] = sqrt(sum(k * k) + 1.0)", "score = score * t"),
    # smooth functions composed
    "smooth_q": _spec("prologue q = exp(-q * q) * tanh(q) + log(softplus(q) + 1.0) + sigmoid(q) ** 2"
                      " - sqrt(q * q + 1.0)"),
    "powers_k": _spec("prologue k = clamp(k, -0.5, 0.5) * pow(abs(k) + 1.0, 1.5) + relu(k) ** 3 + exp2(k)"
                      " - log2(abs(k) + 2.0)"),
    # min, max and pow against a learnable input (ties included), a per-kv-head affine map of v
    "inputs_q": _spec("input c: float32[H] learnable",
                      "prologue q[i, f] = max(q, c[h]) + min(q * c[h], 0.5) + pow(abs(q) + 0.5, c[h]) + c[h] ** 2"),
    "affine_v": _spec("input a: float32[HKV] learnable", "prologue v = v * a[h] + float(h)"),
    # a reduction read inside a vector expression, and an input read inside and outside it
    "projection": _spec("input w: float32[HKV, D] learnable",
                        "prologue k[j, f] = k - sum(k * w[h, f]) / float(D) * w[h, f]"),
    # the same input at two (clamped) indices, one of them twice
    "clamped_loads": _spec("input g: float32[H, D] learnable",
                           "prologue q[i, f] = q * g[h, f] + g[h, f + 1] * g[h, f + 1] * q"),
    # an RMS norm with a gain (language.md section 3), a runtime param and an integer input
    "rms_gain": _spec("input g: float32[HKV, D] learnable",
                      "prologue k[j, f] = k * g[h, f] / sqrt(sum(k * k) / float(D) + 1e-6)"),
    "runtime_param": _spec("param tau: float runtime = 0.7", "input pos: int32[B, SQ]",
                           "prologue q[i, f] = rope(q * tau, float(pos[b, i]) * 0.01 * float(f))"),
    # per-row values: nested reductions, an input outside the reduction, positions
    "row_values": _spec("input g: float32[H, D] learnable", "input a: float32[HKV] learnable",
                        "let qt per q[i, f] = 1.0 + 0.1 * float(i % 3) + sigmoid(sum(q * g[h, f]))",
                        "let kg per k = tanh(0.1 * sum(k) + a[h])",
                        "let r per q = sum(q * q) / (1.0 + norm(q)) + log(sum(exp(q - sum(q) / float(D))))",
                        "score = score * qt + kg + r"),
    "row_value_clamped": _spec("let m per q = clamp(sum(relu(q)), 0.5, 2.0) + abs(sum(q)) + max(norm(q), 1.0)",
                               "score = score * m"),
    # prologues equal at every feature of a row (their adjoint reads the per-row seed)
    "row_constant_k": _spec("prologue k[j, f] = sum(k) * 0.5 + float(j)"),
    "norm_only": _spec("prologue q = norm(q)"),
    # norm-based prologues, checked on rows of zeros too (below)
    "cosine": _spec("prologue q = q / max(norm(q), 1e-6)"),
    "rms": _spec("prologue q = q / sqrt(sum(q * q) + 1e-6)"),
    "masked_norm": _spec("prologue q = where(norm(q) > 0.0, q / norm(q), q)"),
    # softmaxes over the features, whole and in groups, of a learnable gain
    "softmax": _spec("input g: float32[H, D] learnable", "prologue q[i, f] = softmax(q * g[h, f]) * float(D)"),
    "softmax_groups": _spec("input g: float32[HKV, D] learnable", "prologue k[j, f] = softmax(k * g[h, f], 2) + 0.5 * k"),
    # the row times a learnable matrix per head; a function of the row inside, a gain outside
    "matrix": _spec("input w: float32[H, D, D] learnable", "prologue q[i, f] = sum(q[g] * w[h, g, f] for g)"),
    "matrix_functions": _spec("input w: float32[HKV, D, D] learnable", "input s: float32[HKV] learnable",
                              "input c: float32[D] learnable",
                              "prologue v[j, f] = tanh(sum((sigmoid(v[g]) + c[g]) * w[h, g, f] * s[h] for g)) * c[f]"),
    # Hedgehog's map: [softmax(x W), softmax(-x W)] from the first half of the matrix's columns, read twice
    "hedgehog": _spec("input w: float32[H, D, D] learnable",
                      "prologue q[i, f] = softmax(where(f < D // 2, 1.0, -1.0) * sum(q[g] * w[h, g, f % (D // 2)] for g), 2)"),
    # a matrix that reads no learnable input, beside a norm: only the row's gradient goes through it
    "fixed_matrix": _spec("prologue k[j, f] = sum(exp(k[g]) * float((g + f) % 3) for g) / norm(k)"),
}

# an output gate and a norm of the output: the epilogue is a row map of out
EPILOGUE = _spec("input gate: float32[B, H, SQ] learnable",
                 "epilogue out[i, f] = out * sigmoid(gate[b, h, i]) + 0.01 * float(f) / norm(out + 1.0)")

# inline specs whose rows of zeros are checked: the map reads norm(q) or sqrt(sum(q * q) ...)
ZERO_ROWS = ["cosine", "rms", "norm_only", "masked_norm", "kinks", "rope_of_norm", "row_values",
             "row_value_clamped", "row_value_k", "rms_gain"]


# ---------------------------------------------------------------- helpers


def lowered(source, pipeline: str = "optimize"):
    return lower(pick_spec(load_program(source), None), passes=PIPELINES[pipeline])


def row_maps(spec) -> list[tuple[str, object, bool]]:
    """(name, RowMap, per_row) of every prologue statement and every per-row value (tables excluded)."""
    steps = [(f"prologue {s.target}", s, False) for s in spec.prologue]
    values = [i for i in spec.inputs if i.computed is not None and i.computed.entry is None]
    return steps + [(i.name, i.computed, True) for i in values]


def target_shape(target: str) -> tuple[int, ...]:
    """The shape of the tensor a map replaces: q and out [B, H, SQ, D], k and v [B, HKV, SKV, D]."""
    heads = SIZES["H"] if target in ("q", "out") else SIZES["HKV"]
    rows = SIZES["SQ"] if target in ("q", "out") else SIZES["SKV"]
    return (SIZES["B"], heads, rows, SIZES["D"])


class Dense:
    """One row map's expressions evaluated as the reference module evaluates them: rendered by
    RowMapRenderer, run on the grids of the map's tensor with the module's names in scope."""

    def __init__(self, spec, step, per_row: bool, gen: torch.Generator, zero_rows: bool = False):
        self.spec, self.step, self.per_row = spec, step, per_row
        self.renderer = RowMapRenderer(spec, step)
        self.shape = target_shape(step.target)
        self.globals = {"torch": torch, "math": math, "_fn": _fn, "_dense": _dense}
        scalars = {f"_{n}": size for n, size in SIZES.items()}
        scalars.update({p.name: p.default.literal for p in spec.params if p.default is not None})
        self.names = {**scalars, "_dtype": torch.float64}
        # the caller's inputs; an epilogue also reads the per-row values (as inputs) and sum_kept(v)
        read = [i for i in spec.inputs if i.computed is None or (step.target == "out" and i.computed.entry is None)]
        self.inputs = {i.name: self._input(i, gen) for i in read}
        self.names["_vsum"] = torch.randn(target_shape("out"), generator=gen, dtype=torch.float64)
        self.vector = torch.randn(self.shape, generator=gen, dtype=torch.float64)
        self.vector[0, 0, 1, ::2] = 0.0  # kinks of relu, abs and where(q > 0) at 0
        self.vector[1, -1, 2, 1::2] = 0.5  # ties of max and min, an end of a clamp
        if zero_rows:  # whole rows of zeros
            self.vector[0, -1, 0] = 0.0
            self.vector[1, 0, -1] = 0.0
        seed_shape = self.shape[:3] + ((1,) if per_row else self.shape[3:])
        self.seed = torch.randn(seed_shape, generator=gen, dtype=torch.float64)

    def _input(self, decl, gen):
        shape = tuple(int(self.evaluate(d)) for d in decl.shape)
        if decl.dtype.startswith("float"):
            x = torch.randn(shape, generator=gen, dtype=torch.float64)
            x.view(-1)[::3] = 0.5  # meets the vector's 0.5s (at the last head): ties of max(q, c[h])
            return x
        if decl.dtype == "bool":
            return torch.randint(0, 2, shape, generator=gen).bool()
        return torch.randint(0, 2 * SIZES["SKV"], shape, generator=gen, dtype=torch.int32)

    def evaluate(self, expr, **tensors):
        """expr's value on the grids of the map's tensor (broadcast shapes, or a Python number)."""
        b, h, row, feature = _dense.grid(self.shape, "cpu")
        names = {**self.names, "_b": b, "_h": h, "_row": row, "_feature": feature, **tensors}
        return eval(self.renderer.render(expr), self.globals, names)  # noqa: S307 - rendered from the IR

    def float_inputs(self) -> list[str]:
        return [n for n, x in self.inputs.items() if x.is_floating_point()]

    def autograd(self) -> dict[str, torch.Tensor]:
        """torch's gradients of the vector and of every float input, through the rendered map."""
        leaves = {self.step.target: self.vector.clone().requires_grad_(True)}
        leaves.update({n: self.inputs[n].clone().requires_grad_(True) for n in self.float_inputs()})
        value = self.evaluate(inline_bindings(self.step.value, self.spec), **{**self.inputs, **leaves})
        value = _dense.full(value, self.seed.shape, torch.float64, "cpu")
        grads = torch.autograd.grad(value, list(leaves.values()), self.seed, allow_unused=True)
        return {n: torch.zeros_like(x) if g is None else g for (n, x), g in zip(leaves.items(), grads)}

    def adjoint(self) -> dict[str, torch.Tensor]:
        """The same gradients from row_map_adjoint's expressions, the seed leaves bound to the seed."""
        result = row_map_adjoint(self.step, self.spec, self.per_row)
        # the other seed is NaN: an adjoint that read it would be NaN
        if self.per_row:  # one number per row
            seeds = {ROW_SEED: self.seed, SEED: torch.full(self.shape, math.nan, dtype=torch.float64)}
        else:  # a vector per row, even where the map's value is the same at every feature
            seeds = {SEED: self.seed, ROW_SEED: torch.full(self.shape[:3] + (1,), math.nan, dtype=torch.float64)}
        tensors = {**self.inputs, self.step.target: self.vector, **seeds}
        grads = {self.step.target: torch.zeros(self.shape, dtype=torch.float64)}
        grads.update({n: torch.zeros_like(self.inputs[n]) for n in self.float_inputs()})
        if result.vector is not None:
            vector = self.evaluate(result.vector, **tensors)
            grads[self.step.target] = _dense.full(vector, self.shape, torch.float64, "cpu").clone()
        for load, grad in result.loads:
            self._scatter(grads[load.value], load, grad, tensors)
        for load, grad in result.matrix:
            self._scatter(grads[load.value], load, grad, tensors, matrix=True)
        return grads

    def _scatter(self, into: torch.Tensor, load, grad, tensors, matrix: bool = False) -> None:
        """Add the gradient of a load's value, at every place the map reads it, at the load's indices
        (each clamped into its dimension, as _fn.load reads it); with `matrix`, a load inside a matrix,
        read at every (b, h, g, f)."""
        indices = [torch.as_tensor(self.evaluate(a, **tensors)).long() for a in load.args]
        # read at every (b, h, row); at every feature only where an index reads the feature
        read = self.shape[:2] + (self.shape[3], self.shape[3]) if matrix else self.shape[:3] + (1,)
        where = torch.broadcast_shapes(read, *(i.shape for i in indices))
        value = torch.as_tensor(self.evaluate(grad, **tensors), dtype=torch.float64)
        assert torch.broadcast_shapes(value.shape, where) == where, (
            f"the gradient of {load.value}[...] has shape {tuple(value.shape)}, its load is read on {tuple(where)}")
        clamped = tuple(torch.broadcast_to(i.clamp(0, size - 1), where) for i, size in zip(indices, into.shape))
        into.index_put_(clamped, torch.broadcast_to(value, where).clone(), accumulate=True)


def check(spec, seed: int = 0, zero_rows: bool = False, steps=None) -> int:
    """Compare every row map of spec (or those of `steps`); returns how many were compared."""
    steps = row_maps(spec) if steps is None else steps
    for index, (name, step, per_row) in enumerate(steps):
        dense = Dense(spec, step, per_row, torch.Generator().manual_seed(seed + index), zero_rows)
        want, got = dense.autograd(), dense.adjoint()
        assert want.keys() == got.keys()
        for leaf in want:
            torch.testing.assert_close(got[leaf], want[leaf], **TOLERANCE,
                                       msg=lambda m, name=name, leaf=leaf: f"{name}: d/d {leaf}: {m}")
    return len(steps)


# ---------------------------------------------------------------- the tests


@pytest.mark.parametrize("pipeline", PIPELINES)
@pytest.mark.parametrize("example", EXAMPLES_WITH_ROW_MAPS)
def test_examples_match_autograd(example, pipeline):
    spec = lowered(EXAMPLES / f"{example}.attn", pipeline)
    assert check(spec) > 0


@pytest.mark.parametrize("pipeline", PIPELINES)
@pytest.mark.parametrize("case", INLINE)
def test_inline_specs_match_autograd(case, pipeline):
    assert check(lowered(INLINE[case], pipeline), seed=1) > 0


@pytest.mark.parametrize("case", ZERO_ROWS)
def test_rows_of_zeros_match_autograd(case):
    """A row of zeros under a norm: NaN (sqrt's gradient at 0) or finite, as torch's autograd says."""
    spec = lowered(INLINE[case])
    assert check(spec, seed=2, zero_rows=True) > 0


@pytest.mark.parametrize("case", ["gain", "rope_after_gain", "rope_twice", "kinks", "projection", "row_values"])
def test_six_features(case, monkeypatch):
    monkeypatch.setitem(SIZES, "D", 6)
    assert check(lowered(INLINE[case]), seed=3) > 0


def test_the_seed_follows_the_result():
    """A prologue that varies over the features reads the per-feature seed, a per-row value the
    per-row one."""
    spec = lowered(INLINE["row_values"].replace("let qt per q", "prologue v = v * 2.0\n    let qt per q"))
    for _, step, per_row in row_maps(spec):
        result = row_map_adjoint(step, spec, per_row)
        seeds = {n.value for e in [result.vector] + [g for _, g in result.loads] if e is not None
                 for n in walk(e) if n.op == "vector" and n.value in (SEED, ROW_SEED)}
        assert seeds == {ROW_SEED if per_row else SEED}


def test_a_map_that_reads_no_vector_has_no_vector_gradient():
    spec = lowered(_spec("input g: float32[H, D] learnable", "prologue q[i, f] = g[h, f] * float(i)"))
    ((_, step, _),) = row_maps(spec)
    result = row_map_adjoint(step, spec)
    assert result.vector is None and len(result.loads) == 1
    assert check(spec, seed=4) == 1


def test_epilogues_match_autograd():
    """The epilogue is a row map of the output too (one without sum_kept, which has no rule)."""
    for source in [EXAMPLES / "b10_rope_gated.attn", EPILOGUE]:
        spec = lowered(source)
        assert check(spec, seed=5, steps=[("epilogue", spec.epilogue, False)]) == 1


def test_sum_kept_is_a_vector_the_other_gradients_see():
    """N09's epilogue reads sum_kept(v), a vector over the features that the map does not
    differentiate (the attention does): a per-row input multiplying it gathers over the features."""
    spec = lowered(EXAMPLES / "n09_affine_scaled.attn")
    assert check(spec, seed=6, steps=[("epilogue", spec.epilogue, False)]) == 1


def test_a_per_row_table_is_not_representable():
    spec = lowered(EXAMPLES / "s02_deberta.attn")
    tables = [i.computed for i in spec.inputs if i.computed is not None]
    assert tables
    for step in tables:
        with pytest.raises(NotRepresentable):
            row_map_adjoint(step, spec)


@pytest.mark.parametrize("angle", ["th[h] * float(i)", "float(i) * fr[h, f] + th[h] * tanh(q)"])
def test_a_rope_angle_that_reads_a_float_input_matches_autograd(angle):
    """The angle of pair (f, f + D/2) is the angle at f: its gradient gathers both features there."""
    spec = lowered(_spec("input th: float32[H] learnable\n    input fr: float32[H, D] learnable",
                         f"prologue q[i, f] = rope(q * 0.5, {angle})"))
    assert check(spec, seed=7) == 1
