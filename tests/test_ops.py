"""The op registry (attnspec/ops.py): each entry's rules agree with each other, so a new built-in is
checked by these tests as soon as it is registered.

- scalar (constant folding) and tensor (the reference) semantics give the same values, specials included;
- the interval rule contains f(x) for every x of the interval (soundness);
- the sympy form's derivative equals torch autograd's of the tensor form, kinks excluded;
- the Triton spelling names a function that exists (triton.language or attnspec.runtime.kernel);
- the rest of the compiler reads the registry: the type rule, folding, the band interpreter.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import sympy
import torch
import triton.language as tl

from attnspec import builtins as bi
from attnspec import calculus
from attnspec.runtime.intervals import RULES, Num, num
from attnspec.ops import INCREASING, OPS, Domain
from attnspec.passes.fold import SCALAR_OPS
from attnspec.runtime import kernel

NUMBER_OPS = sorted(name for name, op in OPS.items() if op.rule in ("same", "join", "float"))
SPECIALS = (0.0, -0.0, 1.0, -1.0, 0.5, -2.5, 3.0, 40.0, -40.0, 1e-8, math.inf, -math.inf, math.nan)


def _points(arity: int, seed: int = 0) -> list[tuple[float, ...]]:
    rng = random.Random(seed)
    pool = list(SPECIALS) + [rng.uniform(-10, 10) for _ in range(20)]
    return [tuple(rng.choice(pool) for _ in range(arity)) for _ in range(200)]


def _same(a: float, b: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    if a == b == 0:
        return math.copysign(1.0, a) == math.copysign(1.0, b)  # the sign of a zero is part of the value
    return a == b or math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-300)


@pytest.mark.parametrize("name", NUMBER_OPS)
def test_scalar_and_tensor_semantics_agree(name):
    op = OPS[name]
    for args in _points(op.arity):
        expected = op.tensor(*(torch.tensor(a, dtype=torch.float64) for a in args)).item()
        folded = op.scalar(*args)
        assert _same(float(folded), expected), f"{name}{args}"


INT_OPS = sorted(name for name, op in OPS.items() if op.rule == "int")
INTS = (-(2**62), -(2**40) - 3, -7, -2, -1, 0, 1, 2, 3, 4, 5, 7, 8, 12, 63, 64, 65, 2**31 - 1, 2**31, 2**33, 2**53 + 1,
        2**62 - 1, 2**62, 2**63 - 1)


def _int_points(name: str) -> list[tuple[int, ...]]:
    args = [(a,) for a in INTS] if OPS[name].arity == 1 else [(a, b) for a in INTS for b in INTS]
    if name == "pow2":
        args = [(n,) for n in range(-3, 63)]  # 2 ** 63 does not fit in 64 bits: folding refuses it
    return args


def test_integer_built_ins_fold_as_the_reference_computes():
    for a in (-7, -1, 0, 3, 12, 2**40):
        for b in (-3, 0, 5, 2**33):
            assert OPS["min"].scalar(a, b) == min(a, b) and isinstance(OPS["min"].scalar(a, b), int)
    for name in INT_OPS:
        op = OPS[name]
        for args in _int_points(name):
            if name == "ceildiv" and args[1] == 0:
                continue  # a constant zero divisor is a compile-time error; at run time it gives 0 (below)
            expected = op.tensor(*(torch.tensor(a, dtype=torch.int64) for a in args)).item()
            assert op.scalar(*args) == expected, f"{name}{args}"


def test_integer_built_ins_are_exact():
    for x in INTS:
        assert OPS["ilog2"].scalar(x) == (math.floor(math.log2(x)) if 0 < x < 2**50 else x.bit_length() - 1 if x > 0 else -1)
    assert [OPS["ilog2"].scalar(x) for x in (2**53 - 1, 2**53, 2**63 - 1)] == [52, 53, 62]
    assert [OPS["pow2"].scalar(n) for n in (-1, 0, 1, 10, 62)] == [0, 1, 2, 1024, 2**62]
    assert [OPS["ceildiv"].scalar(a, b) for a, b in ((7, 2), (-7, 2), (7, -2), (6, 3), (0, 5))] == [4, -3, -3, 2, 0]
    with pytest.raises(ZeroDivisionError):
        OPS["ceildiv"].scalar(1, 0)


def test_a_zero_divisor_of_ceildiv_gives_0_at_run_time_on_numbers_and_tensors():
    from attnspec.runtime import functions

    assert functions.ceildiv(7, 0) == 0 and functions.ceildiv(-7, 2) == -3
    assert functions.ceildiv(torch.tensor([7, -7]), torch.tensor([0, 2])).tolist() == [0, -3]
    assert OPS["ceildiv"].tensor(torch.tensor([5]), torch.tensor([0])).tolist() == [0]


@pytest.mark.parametrize("name", INT_OPS)
def test_integer_interval_rule_contains_every_value(name):
    rule = RULES[name]
    rng = random.Random(3)
    for _ in range(100):
        bounds = []
        for _ in range(OPS[name].arity):
            lo = rng.choice((-math.inf, -40, -1, 0, 1, 5)) if rng.random() < 0.3 else rng.randint(-60, 60)
            hi = max(lo, rng.randint(-60, 60) if rng.random() < 0.8 else math.inf)
            bounds.append((lo, hi))
        if name == "pow2":
            bounds = [(max(lo, -70), min(hi, 62)) if lo <= 62 else (0, 3) for lo, hi in bounds]
        bound = rule(*(num(float(lo), float(hi)) for lo, hi in bounds))
        grids = [torch.arange(int(max(lo, -200)), int(min(hi, 200)) + 1) for lo, hi in bounds]
        values = OPS[name].tensor(*torch.meshgrid(*grids, indexing="ij")).double()
        inside = (values >= bound.lo) & (values <= bound.hi)
        assert bool(inside.all()), f"{name} on {bounds}: {bound}"


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
def test_integer_built_ins_in_a_kernel_compute_the_reference(dtype):
    import os

    import triton

    from attnspec.runtime import interpreter

    if not os.environ.get("TRITON_INTERPRET"):
        pytest.skip("runs the helpers in Triton's interpreter")
    interpreter.mend()

    @triton.jit
    def apply(x_ptr, d_ptr, ilog2_ptr, pow2_ptr, ceildiv_ptr, N: tl.constexpr):
        i = tl.arange(0, N)
        x, d = tl.load(x_ptr + i), tl.load(d_ptr + i)
        tl.store(ilog2_ptr + i, kernel.ilog2(x))
        tl.store(pow2_ptr + i, kernel.pow2(tl.minimum(x, 62)))
        tl.store(ceildiv_ptr + i, kernel.ceildiv(x, d))

    big = (2**31 - 1, 2**30 + 1, -(2**31)) if dtype == torch.int32 else (2**62 + 5, 2**40 - 1, -(2**50))
    x = torch.tensor(list(range(-10, 128 - 10 - len(big))) + list(big), dtype=dtype)
    d = torch.tensor([-3, -2, -1, 0, 1, 2, 3, 7] * 16, dtype=dtype)
    outs = [torch.zeros(128, dtype=torch.int64) for _ in range(3)]
    apply[(1,)](x, d, *outs, 128)
    x64, d64 = x.long(), d.long()
    assert outs[0].tolist() == OPS["ilog2"].tensor(x64).tolist()
    assert outs[1].tolist() == OPS["pow2"].tensor(x64.clamp(max=62)).tolist()
    assert outs[2].tolist() == OPS["ceildiv"].tensor(x64, d64).tolist()


@pytest.mark.parametrize("name", [n for n in NUMBER_OPS if OPS[n].arity == 1])
def test_interval_rule_contains_every_value(name):
    rule = RULES[name]
    rng = random.Random(1)
    for _ in range(100):
        lo = rng.choice((-math.inf, -50.0, -1.0, 0.0, 0.25, 2.0)) if rng.random() < 0.3 else rng.uniform(-20, 20)
        hi = max(lo, rng.uniform(-20, 20) if rng.random() < 0.7 else math.inf)
        bound = rule(num(lo, hi))
        xs = torch.linspace(max(lo, -1e3), min(hi, 1e3), 101, dtype=torch.float64)
        values = OPS[name].tensor(xs)
        finite = values[~values.isnan()]
        assert isinstance(bound, Num)
        slack = 1e-12 * finite.abs().nan_to_num(posinf=0.0)  # the sample points are not exactly the endpoints
        inside = (finite >= bound.lo - slack) & (finite <= bound.hi + slack)
        assert bool(inside.all()), f"{name} on [{lo}, {hi}]"


def test_interval_kinds_are_the_registry_s():
    for op in OPS.values():
        if isinstance(op.interval, str):
            assert op.interval in RULES, op.name
        else:
            assert op.interval in (INCREASING, None) or isinstance(op.interval, Domain), op.name


@pytest.mark.parametrize("name", sorted(n for n, op in OPS.items() if op.sympy is not None and op.rule != "where"))
def test_derivative_follows_torch_autograd(name):
    op = OPS[name]
    symbols = sympy.symbols(f"x0:{op.arity}", real=True)
    form = getattr(calculus, op.sympy)(*symbols)
    for args in _points(op.arity, seed=2):
        if not all(math.isfinite(a) and abs(a) > 1e-3 for a in args) or len(set(args)) < len(args):
            continue  # kinks (0, ties) are checked by test_derivative.py against torch's conventions
        if name in ("log", "log2", "sqrt", "pow") and args[0] <= 0:
            continue
        tensors = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in args]
        value = op.tensor(*tensors)
        grads = torch.autograd.grad(value, tensors, allow_unused=True)
        for symbol, grad in zip(symbols, grads):
            expected = 0.0 if grad is None else grad.item()
            got = _evaluate(sympy.diff(form, symbol), dict(zip(symbols, args)))
            assert math.isclose(got, expected, rel_tol=1e-9, abs_tol=1e-12), f"d{name}/d{symbol} at {args}"


def _evaluate(expr, values) -> float:
    """A sympy derivative at a point, with calculus.py's functions given their torch values."""
    functions = {
        calculus.Sigmoid: lambda x: 1 / (1 + math.exp(-x)),
        calculus.Softplus: lambda x: math.log1p(math.exp(x)),
        calculus.Relu: lambda x: max(x, 0.0),
        calculus.Abs: abs,
        calculus.Max: max,
        calculus.Min: min,
        calculus.Where: lambda c, a, b: a if c else b,
        calculus.Greater: lambda a, b: a > b,
        calculus.Equal: lambda a, b: a == b,
    }

    def value(e):
        if e.is_Symbol:
            return values[e]
        if e.is_Number:
            return float(e)
        fn = functions.get(type(e))
        args = [value(a) for a in e.args]
        if fn is not None:
            return fn(*args)
        return float(e.func(*[sympy.Float(a) if not isinstance(a, bool) else a for a in args]).evalf(30))

    return float(value(expr))


@pytest.mark.parametrize("name", sorted(OPS))
def test_triton_spelling_exists(name):
    spelling = OPS[name].triton
    if not spelling:
        return  # rendered by the triton renderer itself (pow, bitand) or refused there (dot)
    module, attribute = spelling.split(".")
    assert getattr({"tl": tl, "_kernel": kernel}[module], attribute, None) is not None, spelling


def test_run_time_code_does_not_import_sympy():
    import subprocess
    import sys

    code = "import sys, attnspec.runtime.functions, attnspec.ops; print('sympy' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_the_compiler_reads_the_registry():
    assert bi.FUNCTIONS is OPS
    for name, op in OPS.items():
        if op.scalar is not None:
            assert SCALAR_OPS[name] is op.scalar
        assert name in RULES


def test_min_and_max_order_signed_zeros_in_every_lane():
    """-0.0 < 0.0 for min, max, clamp and relu (IEEE 754-2019); torch.minimum alone answers 0.0 in vector
    lanes and -0.0 in the tail, so the reference's answer would depend on where the pair sits."""
    zeros, negative = torch.zeros(67, dtype=torch.float64), torch.full((67,), -0.0, dtype=torch.float64)
    for a, b in ((zeros, negative), (negative, zeros)):
        assert torch.signbit(OPS["min"].tensor(a, b)).all() and not torch.signbit(OPS["max"].tensor(a, b)).any()
        assert math.copysign(1, OPS["min"].scalar(a[0].item(), b[0].item())) < 0
        assert math.copysign(1, OPS["max"].scalar(a[0].item(), b[0].item())) > 0
    assert torch.signbit(OPS["min"].tensor(negative, negative)).all() and not torch.signbit(OPS["max"].tensor(zeros, zeros)).any()
    assert not torch.signbit(OPS["relu"].tensor(negative)).any() and math.copysign(1, OPS["relu"].scalar(-0.0)) > 0
    nan = torch.full((67,), math.nan, dtype=torch.float64)
    assert OPS["min"].tensor(nan, zeros).isnan().all() and OPS["max"].tensor(zeros, nan).isnan().all()


def test_signed_zeros_fold_to_the_targets_answer():
    from attnspec.api import load_program, lower
    from attnspec.passes import OPTIMIZE

    for text, sign in (("min(-0.0, float(q - q))", -1), ("max(-0.0, float(q - q))", 1), ("min(-0.0, -1.0)", -1)):
        sink = lower(load_program(f"attention z {{\n normalize softmax(sink = {text})\n}}\n").specs[0], passes=OPTIMIZE).normalize.sink
        assert sink.op == "const" and math.copysign(1, sink.literal) == sign, text

def test_the_kernels_tanh_is_within_a_few_ulp():
    """The kernels' tanh (a rational function: one division, no exponential) against float64 tanh on a
    dense float32 grid, tiny and huge values, infinities, signed zeros and NaN."""
    import os

    import triton

    from attnspec.runtime import interpreter

    if not os.environ.get("TRITON_INTERPRET"):
        pytest.skip("runs the helper in Triton's interpreter")
    interpreter.mend()

    @triton.jit
    def apply(x_ptr, y_ptr, N: tl.constexpr):
        i = tl.arange(0, N)
        tl.store(y_ptr + i, kernel.tanh(tl.load(x_ptr + i)))

    n = 1 << 16
    special = torch.tensor([0.0, -0.0, 1e-30, -1e-30, 3.9e-4, 4.1e-4, 7.9, 7.91, 9.0, 88.0, 1e30, -1e30,
                            math.inf, -math.inf, math.nan])
    grid = torch.cat([torch.linspace(-10, 10, n - 2 * 1024 - len(special)), torch.logspace(-8, 1, 1024),
                      -torch.logspace(-8, 1, 1024), special])
    y = torch.empty_like(grid)
    apply[(1,)](grid, y, N=n)
    exact = torch.tanh(grid.double())
    ulp = torch.tensor(np.spacing(exact.abs().float().numpy())).double()
    finite = ~grid.isnan()
    assert float(((y.double() - exact).abs() / ulp)[finite].max()) <= 8
    assert y[grid.isnan()].isnan().all()
    assert torch.equal(torch.signbit(y[grid == 0]), torch.signbit(grid[grid == 0]))


def test_the_kernels_softplus_keeps_small_values():
    """The kernels' softplus against float64's on a float32 grid: far below 0 it is exp(x) itself (log(1 +
    y) once rounded 1 + y to 1, so softplus(-27) was 0, and a rownorm of softplus(score) lost its rows'
    weights and their lse: found by attnspec fuzz), near 0 and above it within a few ulp."""
    import os

    import triton

    from attnspec.runtime import interpreter

    if not os.environ.get("TRITON_INTERPRET"):
        pytest.skip("runs the helper in Triton's interpreter")
    interpreter.mend()

    @triton.jit
    def apply(x_ptr, y_ptr, N: tl.constexpr):
        i = tl.arange(0, N)
        tl.store(y_ptr + i, kernel.softplus(tl.load(x_ptr + i)))

    n = 1 << 14
    grid = torch.cat([torch.linspace(-100, 60, n - 2048), -torch.logspace(-8, 2, 1024), torch.logspace(-8, 2, 1024)])
    y = torch.empty_like(grid)
    apply[(1,)](grid, y, N=n)
    exact = torch.nn.functional.softplus(grid.double())
    ulp = torch.tensor(np.spacing(exact.abs().float().numpy())).double()
    assert float(((y.double() - exact).abs() / ulp).max()) <= 4
    assert bool((y[grid < -80] > 0).all())  # exp(x) down to float32's subnormals


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=["bf16", "fp16", "fp32"])
def test_the_kernels_row_dot_keeps_the_vector_in_float32(dtype):
    """sum(x * w) per row of a half tile as a tensor-core product: w split into a part exact in the
    tile's dtype and the rest keeps it to about 2^-16 (bf16) or 2^-22 (fp16) of itself, where w rounded
    to bf16 alone would be 2^-9 off; features past the row's count (padding) do not count. On a GPU,
    else in Triton's interpreter (which multiplies no bfloat16 tiles: the kernels upcast there)."""
    import os

    import triton

    from attnspec.runtime import interpreter

    device = "cuda" if torch.cuda.is_available() and not os.environ.get("TRITON_INTERPRET") else "cpu"
    if device == "cpu" and not os.environ.get("TRITON_INTERPRET"):
        pytest.skip("runs the helper in Triton's interpreter or on a GPU")
    if device == "cpu" and dtype == torch.bfloat16:
        pytest.skip("Triton's interpreter has no bfloat16 products (checked on a GPU)")
    if device == "cpu":
        interpreter.mend()

    @triton.jit
    def apply(x_ptr, w_ptr, y_ptr, F, R: tl.constexpr, BLOCK_F: tl.constexpr):
        r = tl.arange(0, R)[:, None]
        f = tl.arange(0, BLOCK_F)[None, :]
        in_f = f < F
        tile = tl.load(x_ptr + r * F + f, mask=in_f, other=0.0)
        w = tl.load(w_ptr + f, mask=in_f, other=12345.0)  # garbage past the features: row_dot drops it
        tl.store(y_ptr + r, kernel.row_dot(tile, w, in_f))

    gen = torch.Generator().manual_seed(0)
    rows, features = 32, 40
    x = torch.randn(rows, features, generator=gen).to(dtype)
    bound = {torch.bfloat16: 2.0**-15, torch.float16: 2.0**-20, torch.float32: 2.0**-21}[dtype]
    for magnitude in (3.0, 1e6, 1e-30):  # fp16's range is 6e-8 .. 65504: w is scaled into it
        w = torch.randn(features, generator=gen) * magnitude
        y = _row_dot(apply, x, w, device)
        exact = (x.double() * w.double()).sum(1, keepdim=True)
        scale = (x.double().abs() * w.double().abs()).sum(1, keepdim=True)
        assert float(((y.double() - exact).abs() / scale).max()) <= bound, magnitude
    # infinities and NaN as the elementwise sum has them: -inf in w (a masked bias), NaN in w, inf in x
    w = torch.randn(features, generator=gen)
    w[3], w[7] = -math.inf, math.nan
    x[5, 10] = math.inf
    x[6, 3] = 0.0  # 0 * -inf
    for weights in (w, torch.where(w.isnan(), 1.0, w)):
        y = _row_dot(apply, x, weights, device).double()
        exact = (x.double() * weights.double()).sum(1, keepdim=True)
        assert torch.equal(y.isnan(), exact.isnan()) and torch.equal(y[exact.isinf()], exact[exact.isinf()])


def _row_dot(apply, x, w, device):
    y = torch.empty(x.shape[0], 1, device=device)
    apply[(1,)](x.to(device), w.to(device), y, x.shape[1], R=x.shape[0], BLOCK_F=64)
    return y.cpu()
