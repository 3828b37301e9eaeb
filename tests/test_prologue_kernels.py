"""The triton target's prologue passes (codegen/rowmap_triton.py, runtime/prologue.py): one generated
kernel per prologue statement replaces q, k or v, where the other targets run tensor code. Checked
against that tensor code (the module's own `_prologue`, which the reference target runs too) on the
forms a kernel computes differently: rope pairs at the partner feature (of an expression, nested),
reductions over features, inputs indexed by head and feature, bool runtime params, v with DV != D,
non-contiguous and half-precision tensors; and that the attention uses the kernels, not the tensor code,
forward and backward (the backward passes of passes/adjoint.py), with the tensor code's gradients only
where a row map has no backward rule.

Without gradients the forward kernel applies the q prologue to its resident Q tile and the epilogue
before its store (no q pass, no epilogue after the kernel): checked against the reference, and against
the same module with gradients, where the epilogue is a pass after the kernel and its backward a pass.
"""

from __future__ import annotations

import pytest
import torch

import attnspec

FORMS = {
    "rope of an expression": """
attention a {
    input g: float32[H, D]
    param base: float = 100.0
    prologue q[i, f] = rope(q * g[h, f] + 0.5, float(i) * base ** (-2.0 * float(f) / float(D)))
}""",
    "nested rope, reductions": """
attention a {
    prologue k[j, f] = rope(rope(k, 0.3 * float(j + f)), 0.1 * float(f)) / max(norm(k), 1e-6) + 0.01 * sum(k * k)
}""",
    "norms with gains, v affine": """
attention a {
    input g: float32[HKV, D]
    input a: float32[HKV]
    input s: float32[]
    prologue k[j, f] = k * g[h, f] / sqrt(sum(k * k) / float(D) + 1e-6)
    prologue v[j, f] = v * a[h] + s * float(f % 3) - float(b)
}""",
    "the same value at every feature": """
attention a {
    prologue q = norm(q) * 0.1
    prologue k[j, f] = sum(k) * 0.5 + float(j % 4)
}""",
    "bool runtime param, integer built-ins": """
attention a {
    param flip: bool runtime = true
    param w: float runtime = 0.75
    prologue q[i, f] = where(flip, -q, q * w) + float(ilog2(i + 1) + ceildiv(f, 3))
}""",
}


def _inputs_for(source: str, D: int, gen) -> dict:
    found = {}
    if "input g: float32[H, D]" in source:
        found["g"] = torch.randn(4, D, generator=gen)
    if "input g: float32[HKV, D]" in source:
        found["g"] = torch.randn(2, D, generator=gen)
    if "input a:" in source:
        found["a"] = torch.randn(2, generator=gen)
    if "input s:" in source:
        found["s"] = torch.randn((), generator=gen)
    return found


def _tensors(dtype=torch.float32, seed=0, D=16, DV=12, contiguous=True):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(2, 4, 19, D, generator=gen)
    k = torch.randn(2, 2, 23, D, generator=gen)
    v = torch.randn(2, 2, 23, DV, generator=gen)
    if not contiguous:  # [B, S, H, D] memory, as a model's projections give
        q, k, v = (x.transpose(1, 2).contiguous().transpose(1, 2) for x in (q, k, v))
    return [x.to(dtype) for x in (q, k, v)], gen


def _both(source: str, dtype=torch.float32, contiguous=True, **params):
    module = attnspec.compile(source, "triton")
    (q, k, v), gen = _tensors(dtype, contiguous=contiguous)
    inputs = _inputs_for(source, q.shape[-1], gen)
    rest = [*inputs.values(), *params.values()]
    return module._prologue_kernels(q, k, v, *rest), module._prologue(q, k, v, *rest)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("contiguous", [True, False], ids=["contiguous", "strided"])
def test_a_pass_computes_the_tensor_code(form, contiguous):
    params = {"flip": False, "w": 0.75} if "flip" in FORMS[form] else {}
    kernels, dense = _both(FORMS[form], contiguous=contiguous, **params)
    for mine, theirs in zip(kernels, dense):
        assert mine.shape == theirs.shape and mine.dtype == theirs.dtype
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)


def test_a_bool_runtime_param_takes_either_branch():
    for flip in (True, False):
        kernels, dense = _both(FORMS["bool runtime param, integer built-ins"], flip=flip, w=0.75)
        torch.testing.assert_close(kernels[0], dense[0], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_half_tensors_round_as_the_tensor_code_does(dtype):
    kernels, dense = _both(FORMS["rope of an expression"], dtype=dtype)
    assert kernels[0].dtype == dtype
    # both compute in float32 and round once; sin and cos may differ in the last float32 bits
    assert (kernels[0].float() - dense[0].float()).abs().max() <= 2 * torch.finfo(dtype).eps * dense[0].float().abs().max()


def _gradients(source: str, target: str, leaves: list, names: list[str]) -> list:
    module = attnspec.compile(source, target)
    module.attention(*leaves[:3], **dict(zip(names, leaves[3:]))).square().sum().backward()
    return [x.grad for x in leaves]


def test_the_attention_runs_the_passes_forward_and_backward(monkeypatch):
    source = FORMS["norms with gains, v affine"]
    module = attnspec.compile(source, "triton")
    (q, k, v), gen = _tensors()
    inputs = _inputs_for(source, 16, gen)
    dense, backward = module._prologue, module._prologue_backward
    calls, passes = [], []
    monkeypatch.setattr(module, "_prologue", lambda *a: calls.append(1) or dense(*a))
    monkeypatch.setattr(module, "_prologue_backward", lambda *a: passes.append(1) or backward(*a))
    with torch.no_grad():
        expected = attnspec.compile(source, "reference").attention(q, k, v, **inputs)
        torch.testing.assert_close(module.attention(q, k, v, **inputs), expected, rtol=1e-4, atol=1e-5)
    leaves = [x.clone().requires_grad_() for x in (q, k, v, *inputs.values())]
    mine = _gradients(source, "triton", leaves, list(inputs))
    assert not calls and passes == [1]  # the kernels alone, forward and backward
    ref = [x.detach().double().requires_grad_() for x in leaves]
    for name, got, exact in zip(["q", "k", "v", *inputs], mine, _gradients(source, "reference", ref, list(inputs))):
        torch.testing.assert_close(got.double(), exact, rtol=1e-3, atol=1e-4, msg=name)


@pytest.mark.parametrize("form", list(FORMS))
def test_the_backward_passes_give_the_reference_gradients(form):
    """Every gradient of every form (rope's transpose at the partner, nested; reductions; inputs summed
    over rows, features or both; bool params) against the float64 reference."""
    source = FORMS[form].replace("input g: float32[H, D]", "input g: float32[H, D] learnable")
    (q, k, v), gen = _tensors()
    inputs = _inputs_for(source, 16, gen)
    leaves = [x.clone().requires_grad_() for x in (q, k, v, *inputs.values())]
    mine = _gradients(source, "triton", leaves, list(inputs))
    ref = [x.detach().double().requires_grad_() for x in leaves]
    for name, got, exact in zip(["q", "k", "v", *inputs], mine, _gradients(source, "reference", ref, list(inputs))):
        torch.testing.assert_close(got.double(), exact, rtol=1e-4, atol=1e-5, msg=name)


def test_learnable_rope_frequencies_get_their_gradient_from_the_pass(monkeypatch):
    """A rope angle that reads a float input: its gradient gathers each pair's two features at the
    pair's first (rope(x, angle + pi/2) times the result's gradient), in the backward pass."""
    source = """
attention a {
    input freq: float32[H, D] learnable
    prologue q[i, f] = rope(q * 0.5, float(i) * freq[h, f])
    prologue k[j, f] = rope(k, float(j) * freq[0, f] + 0.1)
}"""
    module = attnspec.compile(source, "triton")
    (q, k, v), gen = _tensors()
    freq = torch.rand(4, 16, generator=gen)
    dense, calls = module._prologue, []
    monkeypatch.setattr(module, "_prologue", lambda *a: calls.append(1) or dense(*a))
    leaves = [x.clone().requires_grad_() for x in (q, k, v, freq)]
    mine = _gradients(source, "triton", leaves, ["freq"])
    assert not calls
    ref = [x.detach().double().requires_grad_() for x in leaves]
    for name, got, exact in zip(["q", "k", "v", "freq"], mine, _gradients(source, "reference", ref, ["freq"])):
        torch.testing.assert_close(got.double(), exact, rtol=1e-4, atol=1e-5, msg=name)


def test_per_row_tables_differentiate_their_tensor_code_beside_the_prologue_passes(monkeypatch):
    """Per-row tables stay tensor code (contractions, einsum's), and with them the per-row values,
    forward and backward (autograd of that code); the prologue keeps its kernels both ways."""
    source = """
attention a {
    input rel: float32[HKV, 5, D] learnable
    prologue k[j, f] = rope(k, 0.1 * float(j))
    let t[r: 5] per k[j, f] = sum(k * rel[h, r, f])
    score = score + t[clamp(kv - q + 2, 0, 4)]
}"""
    module = attnspec.compile(source, "triton")
    assert hasattr(module, "_prologue_backward") and not hasattr(module, "_row_values_backward")
    (q, k, v), gen = _tensors()
    rel = torch.randn(2, 5, 16, generator=gen)
    calls = {"_prologue": [], "_row_values": []}
    for name in calls:
        dense = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, dense=dense, name=name: calls[name].append(1) or dense(*a))
    leaves = [x.clone().requires_grad_() for x in (q, k, v, rel)]
    mine = _gradients(source, "triton", leaves, ["rel"])
    assert calls == {"_prologue": [], "_row_values": [1]}  # the values: tensor code, autograd's graph
    ref = [x.detach().double().requires_grad_() for x in leaves]
    for name, got, exact in zip(["q", "k", "v", "rel"], mine, _gradients(source, "reference", ref, ["rel"])):
        # squared outputs of summed logits: gradients in the hundreds, float32 against float64
        torch.testing.assert_close(got.double(), exact, rtol=1e-4, atol=1e-6 * float(exact.abs().max()), msg=name)


# ---------------------------------------------------------------- matrices and softmaxes over features

# Hedgehog's map (a matrix per head read at f % (D / 2), grouped softmaxes), a matrix shared by every
# head (its gradient summed over batches and heads) with a function of the row and a per-head gain
# inside, v weighted by a softmax over its own features (DV != D)
MATRICES = """
attention m {
    input wq: float32[H, D, D] learnable
    input wk: float32[D, D] learnable
    input c: float32[HKV] learnable
    prologue q[i, f] = softmax(where(f < D // 2, 1.0, -1.0) * sum(q[g] * wq[h, g, f % (D // 2)] for g), 2)
    prologue k[j, f] = sum(tanh(k[g]) * wk[g, f] * c[h] for g) + k
    prologue v[j, f] = v * softmax(v * c[h]) * float(D)
}"""


def _matrix_inputs(dtype=torch.float32):
    """Tensors of several tiles of rows each (a pass's tile holds 64 rows at D = 32), with SQ != SKV,
    GQA and DV != D, and the inputs."""
    gen = torch.Generator().manual_seed(5)
    D = 32
    tensors = [torch.randn(2, 4, 150, D, generator=gen), torch.randn(2, 2, 133, D, generator=gen),
               torch.randn(2, 2, 133, 24, generator=gen), 0.2 * torch.randn(4, D, D, generator=gen),
               0.2 * torch.randn(D, D, generator=gen), torch.randn(2, generator=gen)]
    return [x.to(dtype) for x in tensors], ["wq", "wk", "c"]


@pytest.mark.parametrize("programs", [1, None], ids=["one program walks every tile", "default"])
def test_matrices_and_softmaxes_have_backward_passes(monkeypatch, programs):
    """sum(x[g] * w[g, f] for g) and softmax(x, G) are differentiated by the generated passes (the tensor
    code is never recomputed): the row's gradient through the matrix's transpose, the matrix's as sums
    of outer products over each program's tiles, added up at the loads' offsets."""
    from attnspec.runtime import prologue

    if programs is not None:
        monkeypatch.setattr(prologue, "MATRIX_PROGRAMS", programs)
    module = attnspec.compile(MATRICES, "triton")
    dense, calls = module._prologue, []
    monkeypatch.setattr(module, "_prologue", lambda *a: calls.append(1) or dense(*a))
    tensors, names = _matrix_inputs()
    leaves = [x.clone().requires_grad_() for x in tensors]
    mine = _gradients(MATRICES, "triton", leaves, names)
    assert not calls
    ref = [x.detach().double().requires_grad_() for x in tensors]
    for name, got, exact in zip(["q", "k", "v", *names], mine, _gradients(MATRICES, "reference", ref, names)):
        torch.testing.assert_close(got.double(), exact, rtol=1e-4, atol=1e-5 * float(exact.abs().max()), msg=name)


def test_matrix_passes_in_bfloat16_follow_float32():
    """bf16 tensors: the matrices' products in TF32 (the interpreter computes them in float32), the
    results rounded to bf16 once, as the float32 gradients rounded."""
    tensors, names = _matrix_inputs()
    exact = _gradients(MATRICES, "triton", [x.clone().requires_grad_() for x in tensors], names)
    half = _gradients(MATRICES, "triton", [x.to(torch.bfloat16).requires_grad_() for x in tensors], names)
    for name, got, want in zip(["q", "k", "v", *names], half, exact):
        assert got.dtype == torch.bfloat16
        torch.testing.assert_close(got.float(), want, rtol=3e-2, atol=3e-2 * float(want.abs().max()), msg=name)


@pytest.mark.parametrize("precision, dtype, tf32", [("highest", torch.float32, 0), ("high", torch.float32, 1),
                                                    ("highest", torch.bfloat16, 3), ("high", torch.float16, 3)])
def test_matrix_products_follow_torch_float32_precision(monkeypatch, precision, dtype, tf32):
    """A pass that holds a matrix multiplies, forward and backward (kernel.matrix_product), for float32
    in one TF32 product exactly where torch's own float32 matmuls use TF32
    (torch.set_float32_matmul_precision) and in IEEE float32 otherwise; for half types, whose
    reference multiplies in float32, in three TF32 products (near float32) whatever torch says."""
    from attnspec.runtime import prologue

    launched, start = [], prologue._rt.start
    def recorded(kernel, *args, **kw):
        if "_prologue_" in getattr(kernel, "__name__", getattr(getattr(kernel, "fn", None), "__name__", "")):
            launched.append(kw.get("TF32"))
        return start(kernel, *args, **kw)

    monkeypatch.setattr(prologue._rt, "start", recorded)
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        tensors, names = _matrix_inputs(dtype)
        _gradients(MATRICES, "triton", [x.clone().requires_grad_() for x in tensors], names)
    finally:
        torch.set_float32_matmul_precision(previous)
    # q's and k's passes hold a matrix, forward and backward; v's holds none
    assert sorted(launched, key=str) == sorted([tf32] * 4 + [None] * 2, key=str), launched


# softmax_rows reads every row of k: that statement is tensor code, forward and backward; q's and v's
# statements keep their passes both ways, and the inputs sum what both give them
ROWS_BESIDE = """
attention a {
    input g: float32[H, D] learnable
    input t: float32[HKV] learnable
    prologue q[i, f] = softmax(q * g[h, f])
    prologue k = softmax_rows(k * t[h])
    prologue v = v * t[h]
    normalize linear(normalized = false)
}"""


def test_a_statement_that_reads_other_rows_is_differentiated_alone(monkeypatch):
    from attnspec.runtime import prologue

    module = attnspec.compile(ROWS_BESIDE, "triton")
    names = [n for n, _ in module.KERNELS.row_passes]
    assert "prologue_q_bwd" in names and "prologue_v_bwd" in names and "prologue_k_bwd" not in names
    recomputed, real = [], prologue.tensor_code_backward
    def recording(dense, tensors, grads, needs):  # which statement's result it differentiates
        recomputed.extend(i for i, g in enumerate(grads) if g is not None)
        return real(dense, tensors, grads, needs)

    monkeypatch.setattr(prologue, "tensor_code_backward", recording)
    (q, k, v), gen = _tensors()
    inputs = [torch.randn(4, 16, generator=gen), torch.rand(2, generator=gen) + 0.5]
    leaves = [x.clone().requires_grad_() for x in (q, k, v, *inputs)]
    mine = _gradients(ROWS_BESIDE, "triton", leaves, ["g", "t"])
    assert recomputed == [1]  # k's statement alone
    ref = [x.detach().double().requires_grad_() for x in leaves]
    for name, got, exact in zip(["q", "k", "v", "g", "t"], mine, _gradients(ROWS_BESIDE, "reference", ref, ["g", "t"])):
        torch.testing.assert_close(got.double(), exact, rtol=1e-4, atol=1e-5 * float(exact.abs().max()), msg=name)


# ---------------------------------------------------------------- fused into the forward kernel

# a q prologue with rope of an expression and a reduction, a per-key value, an epilogue that turns the
# output's features (rope), reads an input per row and sum_kept(v), under a bool runtime param
FUSED = """
attention fused {
    input g: float32[H, D]
    input gate: float32[B, H, SQ]
    param on: bool runtime = true
    prologue q[i, f] = rope(q * g[h, f], 0.2 * float(i + f)) / max(norm(q), 1e-6)
    prologue k[j, f] = k * 0.5
    let kn per k = norm(k)
    mask kv <= q + (SKV - SQ)
    score = score + 0.1 * kn
    epilogue out[i, f] = where(on, rope(out, 0.3 * float(i)), out) * sigmoid(gate[b, h, i]) + 0.01 * sum_kept(v) / (1.0 + norm(out))
}
"""

# a per-query value reads q after its prologue: the q pass stays, the epilogue is still fused
QVALUE = """
attention qvalue {
    prologue q[i, f] = q * 2.0
    let t per q = 1.0 + sigmoid(sum(q))
    score = score * t
    epilogue out[i, f] = out * t
}
"""


@pytest.mark.parametrize("on", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_without_gradients_the_forward_kernel_applies_the_q_prologue_and_the_epilogue(monkeypatch, on, dtype):
    from attnspec.fuzz.accuracy import check

    module = attnspec.compile(FUSED, "triton")
    assert module.KERNELS.fused_q and module.KERNELS.fused_epilogue
    (q, k, v), gen = _tensors(dtype, D=16, DV=16)
    inputs = {"g": torch.randn(4, 16, generator=gen), "gate": torch.randn(2, 4, 19, generator=gen)}
    skipped, epilogues = [], []
    kernels, epilogue = module._prologue_kernels, module._epilogue
    monkeypatch.setattr(module, "_prologue_kernels", lambda *a, skip=(): skipped.append(skip) or kernels(*a, skip=skip))
    monkeypatch.setattr(module, "_epilogue", lambda *a: epilogues.append(1) or epilogue(*a))
    with torch.no_grad():
        out = module.attention(q, k, v, **inputs, on=on)
    assert skipped == [("q",)] and not epilogues  # no q pass, no epilogue after the kernel
    low = attnspec.compile(FUSED, "reference").attention(q, k, v, **inputs, on=on)
    exact = attnspec.compile(FUSED, "reference").attention(*(x.double() for x in (q, k, v)),
                                                         **{n: x.double() for n, x in inputs.items()}, on=on)
    assert out.dtype == dtype
    verdict = check(out, low, exact, "out")
    assert verdict.ok, verdict


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
def test_with_gradients_the_passes_run_and_the_results_agree(dtype):
    """The fused q prologue rounds its result to q's type as the pass stores it (in the interpreter
    too, whose tiles are float32): the logits, and so lse, are the same to float32 rounding either way."""
    module = attnspec.compile(FUSED, "triton")
    (q, k, v), gen = _tensors(dtype, D=16, DV=16)
    inputs = {"g": torch.randn(4, 16, generator=gen), "gate": torch.randn(2, 4, 19, generator=gen)}
    with torch.no_grad():
        fused, fused_lse = module.attention(q, k, v, **inputs, return_lse=True)
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    unfused, unfused_lse = module.attention(*leaves, **inputs, return_lse=True)
    torch.testing.assert_close(unfused_lse.detach(), fused_lse, rtol=2e-5, atol=2e-6)
    if dtype == torch.float32:
        torch.testing.assert_close(unfused.detach(), fused, rtol=2e-5, atol=2e-6)
    else:  # the outputs agree to an ulp of their type
        torch.testing.assert_close(unfused.detach(), fused, rtol=torch.finfo(dtype).eps, atol=torch.finfo(dtype).eps)


# the epilogue reads per-query values (learnable through w), an input per row, sum_kept(v) at the rope
# partners, and the output's norm
EPILOGUE = """
attention epi {
    input gate: float32[B, H, SQ] learnable
    input w: float32[H, D] learnable
    let alpha per q[i, f] = 1.0 + tanh(sum(q * w[h, f]))
    mask kv <= q + (SKV - SQ)
    epilogue out[i, f] = rope(out, 0.2 * float(i)) * sigmoid(gate[b, h, i]) * alpha + 0.1 * rope(sum_kept(v), 0.3 * float(i)) / (1.0 + norm(out))
}
"""


@pytest.mark.parametrize("source", [FUSED, EPILOGUE], ids=["fused", "epilogue"])
def test_with_gradients_the_epilogue_is_a_pass_and_its_backward_one_too(monkeypatch, source):
    """The epilogue after the kernel that stores the output the backward reads: one pass, and one pass
    back to the output, the inputs and per-row values it reads and sum_kept(v); no tensor code."""
    module = attnspec.compile(source, "triton")
    assert dict(module.KERNELS.row_passes).keys() >= {"epilogue", "epilogue_bwd"}
    (q, k, v), gen = _tensors(D=16, DV=16)
    inputs = {"gate": torch.randn(2, 4, 19, generator=gen)}
    inputs.update({"g": torch.randn(4, 16, generator=gen)} if source is FUSED else {"w": torch.randn(4, 16, generator=gen)})
    dense, calls = module._epilogue, []
    monkeypatch.setattr(module, "_epilogue", lambda *a: calls.append(1) or dense(*a))
    leaves = [x.clone().requires_grad_() for x in (q, k, v, *inputs.values())]
    mine = _gradients(source, "triton", leaves, list(inputs))
    assert not calls
    ref = [x.detach().double().requires_grad_() for x in leaves]
    for name, got, exact in zip(["q", "k", "v", *inputs], mine, _gradients(source, "reference", ref, list(inputs))):
        if exact is None:
            assert got is None or not got.any(), name
            continue
        torch.testing.assert_close(got.double(), exact, rtol=1e-4, atol=1e-5, msg=name)


def test_sum_kept_at_rope_partners_in_the_fused_epilogue():
    """rope(sum_kept(v), ...) in the epilogue the forward kernel applies reads the sum at each feature's
    partner (a gather of the second accumulator)."""
    (q, k, v), gen = _tensors(D=16, DV=16)
    inputs = {"gate": torch.randn(2, 4, 19, generator=gen), "w": torch.randn(4, 16, generator=gen)}
    with torch.no_grad():
        out = attnspec.compile(EPILOGUE, "triton").attention(q, k, v, **inputs)
        expected = attnspec.compile(EPILOGUE, "reference").attention(q, k, v, **inputs)
    torch.testing.assert_close(out, expected.float(), rtol=1e-4, atol=1e-5)


VALUES = """
attention values {
    input w: float32[H, D]
    input gate: float32[B, H, SQ]
    prologue q[i, f] = rope(q, 0.1 * float(i))
    let t per q[i, f] = 1.0 + softplus(sum(q * w[h, f]))
    let r per q[i, f] = norm(rope(q, 0.2 * float(i + f)))
    let u per k = tanh(sum(k))
    mask kv <= q + (SKV - SQ)
    score = score * t + 0.5 * u - 0.1 * r
    normalize softmax(sink = 0.3 * r)
    epilogue out[i, f] = out * sigmoid(gate[b, h, i]) / (1.0 + t)
}
"""


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("source", [QVALUE, VALUES], ids=["qvalue", "values"])
def test_without_gradients_the_forward_kernel_computes_the_values_of_q(monkeypatch, source, dtype):
    """Per-row values of q (after a fused q prologue, rope inside, read by the score, a sink and the
    epilogue) from the kernel's resident Q tile, once per query tile: no pass computes them; a value of
    k keeps its pass. The result is the reference's; with gradients the passes run and agree."""
    module = attnspec.compile(source, "triton")
    assert module.KERNELS.fused_values and module.KERNELS.fused_q and module.KERNELS.fused_epilogue
    (q, k, v), gen = _tensors(dtype=dtype, D=16, DV=16)
    inputs = {"w": torch.randn(4, 16, generator=gen), "gate": torch.randn(2, 4, 19, generator=gen)} if "gate" in source else {}
    skipped = []
    kernels = module._row_value_kernels
    monkeypatch.setattr(module, "_row_value_kernels", lambda *a, skip=(): skipped.append(skip) or kernels(*a, skip=skip))
    with torch.no_grad():
        out = module.attention(q, k, v, **inputs)
    q_values = ("t",) if source == QVALUE else ("t", "r")
    assert skipped == [q_values]  # u, a value of k, is still computed by its pass
    expected = attnspec.compile(source, "reference").attention(q.double(), k.double(), v.double(),
                                                               **{n: t.double() for n, t in inputs.items()})
    tolerance = dict(rtol=1e-4, atol=2e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(out.double(), expected, **tolerance)
    skipped.clear()
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    trained = module.attention(*leaves, **inputs)
    assert skipped == [()]
    same = dict(rtol=2e-5, atol=2e-6) if dtype == torch.float32 else tolerance  # bf16: q rounded after the prologue pass
    torch.testing.assert_close(trained.detach(), out, **same)


def test_values_the_kernel_cannot_take_from_its_tile_keep_their_passes():
    """A mask that reads a value (the schedule is built from it on the host), a per-row table: no fused
    values, and the q prologue then stays a pass too."""
    from codegen.rowmap_triton import fused_q_prologue, fused_q_values

    def lowered(source):
        return attnspec.api.lower(attnspec.api.load_program(source).specs[0], {}, passes=attnspec.passes.OPTIMIZE)

    assert [v["name"] for v in fused_q_values(lowered(VALUES))] == ["t", "r"]
    masked = VALUES.replace("mask kv <= q + (SKV - SQ)", "mask kv <= q + (SKV - SQ) and t > 1.2")
    tables = VALUES.replace("let r per q[i, f] = norm(rope(q, 0.2 * float(i + f)))",
                            "let r[e: 4] per q[i, f] = sum(q * w[h, f]) * float(e)").replace("0.1 * r", "0.1 * r[0]")
    tables = tables.replace("sink = 0.3 * r", "sink = 0.3 * t")
    for source in (masked, tables):
        spec = lowered(source)
        assert fused_q_values(spec) == [] and fused_q_prologue(spec) is None, source


MIXED = VALUES.replace("    epilogue out[i, f] = out * sigmoid(gate[b, h, i]) / (1.0 + t)",
                       "    let e per q[i, f] = sigmoid(sum(q * w[h, f]))\n    epilogue out[i, f] = out * e / (1.0 + t)")


def test_a_value_only_the_epilogue_reads_is_computed_after_the_key_loop(monkeypatch):
    """t and r, which the scores read, come from the kernel's tile before the key loop; e, which only the
    epilogue reads, after it (not held across the loop); `sum(q * w[h, f])` is a product on the tile."""
    from codegen.rowmap_triton import fused_q_values

    spec = attnspec.api.lower(attnspec.api.load_program(MIXED).specs[0], {}, passes=attnspec.passes.OPTIMIZE)
    assert [(v["name"], v["late"]) for v in fused_q_values(spec)] == [("t", False), ("r", False), ("e", True)]
    assert [("row_dot" in v["code"]) for v in fused_q_values(spec)] == [True, False, True]
    module = attnspec.compile(MIXED, "triton")
    assert module.KERNELS.fused_values and module.KERNELS.fused_q
    (q, k, v), gen = _tensors(D=16, DV=16)
    inputs = {"w": torch.randn(4, 16, generator=gen), "gate": torch.randn(2, 4, 19, generator=gen)}
    skipped = []
    kernels = module._row_value_kernels
    monkeypatch.setattr(module, "_row_value_kernels", lambda *a, skip=(): skipped.append(skip) or kernels(*a, skip=skip))
    with torch.no_grad():
        out = module.attention(q, k, v, **inputs)
    assert skipped == [("t", "r", "e")]
    expected = attnspec.compile(MIXED, "reference").attention(q.double(), k.double(), v.double(),
                                                              **{n: t.double() for n, t in inputs.items()})
    torch.testing.assert_close(out.double(), expected, rtol=1e-4, atol=2e-5)


def test_an_unfused_configuration_runs_the_q_pass_and_the_epilogue_after_the_kernel(monkeypatch):
    """On a GPU the autotuner also tries configurations that leave the q prologue to its pass and the
    epilogue to tensor code (the fused kernel may not fit its registers): they compute the same. So
    does one that leaves the values of q to their passes."""
    from dataclasses import replace

    from attnspec.runtime import triton as triton_runtime

    module = attnspec.compile(FUSED, "triton")
    (q, k, v), gen = _tensors(D=16, DV=16)
    inputs = {"g": torch.randn(4, 16, generator=gen), "gate": torch.randn(2, 4, 19, generator=gen)}
    with torch.no_grad():
        fused = module.attention(q, k, v, **inputs)
    configs = triton_runtime.candidate_configs
    monkeypatch.setattr(triton_runtime, "candidate_configs",
                        lambda *a, **kw: [replace(c, fused=False) for c in configs(*a, **kw)])
    skipped, epilogues = [], []
    kernels, epilogue = module._prologue_kernels, module._epilogue
    monkeypatch.setattr(module, "_prologue_kernels", lambda *a, skip=(): skipped.append(skip) or kernels(*a, skip=skip))
    monkeypatch.setattr(module, "_epilogue", lambda *a: epilogues.append(1) or epilogue(*a))
    with torch.no_grad():
        unfused = module.attention(q, k, v, **inputs)
    assert skipped == [("q",), ("k", "v")] and epilogues == [1]  # k's pass, then q's for the kernel
    torch.testing.assert_close(unfused, fused, rtol=2e-5, atol=2e-6)
    # the values of q: the kernel's, or their passes' after the q pass
    module = attnspec.compile(VALUES, "triton")
    inputs = {"w": torch.randn(4, 16, generator=gen), "gate": torch.randn(2, 4, 19, generator=gen)}
    with torch.no_grad():
        fused = module.attention(q, k, v, **inputs)
    value_skips = []
    kernels = module._row_value_kernels
    monkeypatch.setattr(module, "_row_value_kernels", lambda *a, skip=(): value_skips.append(skip) or kernels(*a, skip=skip))
    with torch.no_grad():
        unfused = module.attention(q, k, v, **inputs)
    assert value_skips == [("t", "r"), ("u",)]  # u's pass before the kernel, then t's and r's for it
    torch.testing.assert_close(unfused, fused, rtol=2e-5, atol=2e-6)


def test_fused_values_of_wild_inputs_are_the_references(tmp_path):
    """A learned vector with -inf entries (the fuzzer's wild inputs): the fused kernel's tensor-core sum
    gave NaN where the elementwise one gives an infinity (found by attnspec fuzz on this spec)."""
    from attnspec.testing import replay

    path = tmp_path / "values.attn"
    path.write_text(VALUES)
    for seed in (0, 1, 2):
        replay(path, f"target=triton,dtype=float32,B=1,H=1,HKV=1,SQ=1,SKV=1,D=16,DV=16,seed={seed},"
                     "logits=normal,inputs=wild,trace=static", spec="values")
