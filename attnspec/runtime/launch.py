"""The host side of every generated triton module: buffers, the forward and backward launches, and the
autograd Function that joins them. A module describes its kernels once (`Kernels`); what differs
between specs is in that description and in the kernels themselves, never in this code.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass
from typing import Callable

import torch
import triton

from . import interpreter, triton as _rt


@dataclass(frozen=True)
class Kernels:
    """A generated module's kernels and what launching them needs."""

    spec_name: str
    forward: Callable  # the forward kernel (a triton JITFunction)
    dq: Callable | None  # the backward kernels; None where the spec has no backward
    dkdv: Callable | None
    kept: Callable | None  # the dV share of sum_kept(v)'s gradient, launched after dkdv with its arguments
    # (report name, kernel) of every pass over rows (runtime/prologue.py): the prologue's statements
    # (prologue_q ...), the per-row values (value_t ...) and the backward passes of both (..._bwd)
    row_passes: tuple[tuple[str, Callable], ...]
    fused_q: bool  # without gradients, the forward kernel can apply the q prologue to its Q tile
    fused_values: bool  # without gradients, the forward kernel can compute the per-row values of q from its Q tile
    fused_epilogue: bool  # without gradients, the forward kernel can apply the epilogue before its store
    q_pass: Callable | None  # (q, k, v, inputs, params) -> q after its prologue, for an unfused configuration
    values_pass: Callable | None  # (q, k, inputs, params) -> the inputs with the per-row values of q, likewise
    epilogue: Callable | None  # (out, vsum, q, k, inputs, params) -> out after the epilogue, likewise
    norm: str  # softmax | elementwise | rownorm
    closed_form: bool  # the forward and dQ kernels compute their key tiles (no block tables)
    check_nonnegative: str | None  # the rule a negative denominator term breaks, where the kernel checks it
    kept_sum: bool  # the epilogue reads sum_kept(v): the forward kernel also returns it, the kept kernel takes its gradient
    table_tiles: bool  # the kernels pick per-pair entries of per-row tables from tiles: narrower backward tiles
    scores_read: bool  # the weights read the score: else q and k get no gradient through it (None, as autograd gives)
    selection_blocks: tuple[int, int] | None  # a data-dependent selection's blocks: their tiles are candidates too
    selects_after_prologue: bool  # build_schedule's selection reads q and k after the prologue (_prologued)
    logit_scale: Callable  # (q, k, params) -> the scale
    input_names: tuple[str, ...]  # the spec's inputs, in kernel-argument order
    computed_inputs: tuple[str, ...]  # those the module computes (per-row values): not build_schedule's
    schedule_reads_values: bool  # the mask reads per-row values: build_schedule takes them as _row_values
    param_names: tuple[str, ...]  # the spec's runtime params, in kernel-argument order
    param_types: tuple[str, ...]  # per runtime param: int, float or bool (a bool travels as int32)
    build_schedule: Callable  # the module's build_schedule(q, k, *, <inputs and params>, selection=None)
    grad_inputs: tuple[str, ...]  # the inputs with a gradient
    site_inputs: tuple[str, ...]  # the input of each summed gradient site
    site_kernels: tuple[tuple[str, str], ...]  # (kernel, level) of each summed site
    backward_error: str | None  # why there is no backward, or None


def kernel(fn):
    """A generated module's kernels and tile functions: @triton.jit, applied at the module's first
    launch rather than at its import. Triton reads a function's source when it wraps it (a few ms per
    function), which loading a cached module need not pay."""
    fn.attnspec_kernel = True
    return fn


def jit(fn):
    """The triton function a generated kernel became: at the first call for its module, every
    function of the module marked @kernel is wrapped by triton.jit in place (so that kernels find
    the tile functions they call as triton functions). Anything else is returned as it is."""
    if not inspect.isfunction(fn):
        return fn
    module = fn.__globals__
    if module.get(fn.__name__) is fn:
        if _rt.interpreting():
            interpreter.mend()
        for name, value in list(module.items()):
            if inspect.isfunction(value) and getattr(value, "attnspec_kernel", False):
                module[name] = triton.jit(value)
    return module[fn.__name__]


def _input_arguments(kernels: Kernels, inputs, params) -> list:
    """An input's pointer, sizes and strides; runtime params (bools as int32: the interpreter cannot
    take an int1 argument)."""
    found = [a for t in inputs for a in _rt.input_arguments(t)]
    return found + [int(p) if kind == "bool" else p for p, kind in zip(params, kernels.param_types)]


def forward(kernels: Kernels, q, k, v, inputs, params, schedule, return_lse, for_backward=False):
    """The forward kernel: (out in q's dtype, lse float32 [B, H, SQ] written when return_lse, sum_kept(v)
    float32 [B, H, SQ, DV] where the epilogue reads it (else an empty tensor), what the backward needs
    when for_backward: out in float32, for rowsum(dO * out), and per row the max and the sum of the
    normalization [B, H, SQ, 2]). Without for_backward, q is taken before its prologue where the spec
    has fused_q, and out is returned after the epilogue where it has one: the kernel applies them
    (a fused configuration), or else the q pass runs before it and the epilogue's tensor code after."""
    B, H, SQ, D = q.shape
    HKV, SKV = k.shape[1], k.shape[2]
    # the interpreter rounds float32 -> half by truncation: it writes float32, torch rounds to nearest
    wide = for_backward or _rt.upcasts(q)
    out = _rt.output_buffer((B, H, SQ, v.shape[-1]), torch.float32 if wide else q.dtype, q.device)
    lse = _rt.output_buffer((B, H, SQ), torch.float32, q.device)
    stats = _rt.output_buffer((B, H, SQ, 2), torch.float32, q.device) if for_backward else lse  # unwritten without WRITE_STATS
    err = (torch.zeros(1, dtype=torch.int32, device=q.device),) if kernels.check_nonnegative else ()  # set by a program that met f < 0
    vsum = _rt.output_buffer((B, H, SQ, v.shape[-1]) if kernels.kept_sum else (0,), torch.float32, q.device)
    scale = kernels.logit_scale(q, k, params)
    write_lse = return_lse and kernels.norm != "elementwise"
    fusable = not for_backward and (kernels.fused_q or kernels.fused_values or kernels.fused_epilogue)

    def run(config):
        tables = () if kernels.closed_form else schedule.tables(config.block_m, config.block_n).arguments()
        grid = (triton.cdiv(SQ, config.block_m), B * H)
        unfused = fusable and not config.fused  # this configuration leaves them to the passes and the tensor code
        q_in = kernels.q_pass(q, k, v, inputs, params) if unfused and kernels.fused_q else q
        inputs_in = kernels.values_pass(q_in, k, inputs, params) if unfused and kernels.fused_values else inputs
        described = _rt.descriptors(config.tma, (k, config.block_n, config.block_d), (v, config.block_n, config.block_dv))
        _rt.start(
            jit(kernels.forward), grid,
            q_in, k, v, out, lse, stats, *err, *((vsum,) if kernels.kept_sum else ()), *q.stride(), *k.stride(), *v.stride(), *out.stride(),
            *described, *tables,
            *_input_arguments(kernels, inputs_in, params), B, H, HKV, SQ, SKV, D, v.shape[-1], scale,
            BLOCK_M=config.block_m, BLOCK_N=config.block_n, BLOCK_D=config.block_d, BLOCK_DV=config.block_dv,
            IEEE=config.ieee, UPCAST=config.upcast, WRITE_LSE=write_lse,
            WRITE_STATS=for_backward, SPLIT=for_backward and _rt.split_weights(), PROLOGUE_Q=config.fused and (kernels.fused_q or kernels.fused_values),
            EPILOGUE=config.fused and kernels.fused_epilogue, EVEN=D == config.block_d and v.shape[-1] == config.block_dv,
            TMA=described[0] is not None, num_warps=config.num_warps, num_stages=config.num_stages,
        )
        if unfused and kernels.fused_epilogue and _rt.recording_launches() is None:
            out.copy_(kernels.epilogue(out, vsum, q, k, inputs_in, params))

    _rt.launch(run, kernels.spec_name, q, v, (SQ, SKV), fusable=fusable, blocks=kernels.selection_blocks)
    if err and bool(err[0].item()):  # the reference's check, made by the kernel (one host sync per call)
        raise ValueError(f"{kernels.spec_name}: {kernels.check_nonnegative} on kept pairs, but f was negative")
    return out.to(q.dtype), lse, vsum, ((out, stats) if for_backward else None)


class Differentiable(torch.autograd.Function):
    """The forward kernel as one autograd operation; its backward runs the dQ and dK/dV kernels."""

    @staticmethod
    def forward(ctx, kernels, schedule, params, q, k, v, *inputs):
        out, lse, vsum, (wide, stats) = forward(kernels, q, k, v, inputs, params, schedule, kernels.norm != "elementwise", True)
        # rowsum(dO * out) from the float32 out: from out rounded to a half type, its error would
        # reach every input gradient summed over many pairs (a per-head slope's, say)
        ctx.save_for_backward(q, k, v, wide, stats, *inputs)
        ctx.kernels, ctx.schedule, ctx.params = kernels, schedule, params
        if kernels.norm == "elementwise":
            ctx.mark_non_differentiable(lse)
        if not kernels.kept_sum:
            ctx.mark_non_differentiable(vsum)
        return out, lse, vsum

    @staticmethod
    @torch.autograd.function.once_differentiable  # the kernels' gradients are not differentiable again
    def backward(ctx, dout, dlse, dvsum):
        q, k, v, out, stats, *inputs = ctx.saved_tensors
        grads = backward(ctx.kernels, q, k, v, out, stats, dout, dlse, dvsum, inputs, ctx.params, ctx.schedule)
        return (None, None, None, *grads)


def backward(kernels: Kernels, q, k, v, out, stats, dout, dlse, dvsum, inputs, params, schedule):
    """(dq, dk, dv, d<input>...) from the dQ and dK/dV kernels; None for inputs without a gradient.
    dvsum: the gradient of sum_kept(v) (None: zero), which the kept kernel adds to dv after the dK/dV kernel."""
    if kernels.backward_error is not None:
        raise NotImplementedError(f"{kernels.spec_name}: {kernels.backward_error}")
    B, H, SQ, D = q.shape
    HKV, SKV, DV = k.shape[1], k.shape[2], v.shape[-1]
    by_name = dict(zip(kernels.input_names, inputs))
    do = dout.contiguous()
    if kernels.norm == "elementwise":
        delta = stats  # unused: no denominator
    else:
        # in the interpreter, summed in float64 and rounded once, as its dP = dO . v is
        # (runtime/interpreter.py): dP - Delta is then exactly 0 where a row's weights are one-hot
        wide = torch.float64 if _rt.interpreting() else torch.float32
        delta = (do.to(wide) * out.to(wide)).sum(-1).float()
        if dlse is not None:
            delta = delta - dlse.float()
        delta = delta.contiguous()
    gq = torch.empty((B, H, SQ, D), dtype=torch.float32, device=q.device)
    gk = torch.empty((B, HKV, SKV, D), dtype=torch.float32, device=q.device)
    gv = torch.empty((B, HKV, SKV, DV), dtype=torch.float32, device=q.device)
    gvsum = ()
    if kernels.kept_sum:
        gvsum = (torch.zeros((B, H, SQ, DV), dtype=torch.float32, device=q.device) if dvsum is None or dvsum.numel() == 0
                 else dvsum.float().contiguous(),)
    grads = {
        name: torch.zeros(_rt.readable(by_name[name]).shape, dtype=torch.float32, device=q.device)
        for name in kernels.grad_inputs
    }
    scale = kernels.logit_scale(q, k, params)

    def run(config):
        bm, bn = config.block_m, config.block_n
        for g in grads.values():
            g.zero_()  # per-pair sites add into it
        parts = _rt.site_buffers(kernels.site_kernels, (B, H, SQ, SKV), bm, bn, q.device)
        flat_parts = [t for pair in parts for t in pair]
        grad_args = [a for g in grads.values() for a in (g, *g.stride())]
        common = (*_input_arguments(kernels, inputs, params), *grad_args, *flat_parts, B, H, HKV, SQ, SKV, D, DV, scale)
        described = _rt.descriptors(config.tma, (q, bm, config.block_d), (k, bn, config.block_d), (v, bn, config.block_dv),
                                    (do, bm, config.block_dv))
        meta = dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=config.block_d, BLOCK_DV=config.block_dv,
                    IEEE=config.ieee, UPCAST=config.upcast, EVEN=D == config.block_d and DV == config.block_dv,
                    TMA=described[0] is not None, num_warps=config.num_warps, num_stages=config.num_stages)
        strides = (*q.stride(), *k.stride(), *v.stride(), *described)
        tables = () if kernels.closed_form else schedule.tables(bm, bn).arguments()
        _rt.start(jit(kernels.dq), (triton.cdiv(SQ, bm), B * H),
                  q, k, v, do, stats, delta, gq, *strides, *tables, *common, **meta)
        dkdv_args = (q, k, v, do, stats, delta, gk, gv, *strides, *schedule.transposed(bm, bn).arguments(), *common)
        _rt.start(jit(kernels.dkdv), (triton.cdiv(SKV, bn), B * HKV), *dkdv_args, **meta)
        if kernels.kept is not None:
            _rt.start(jit(kernels.kept), (triton.cdiv(SKV, bn), B * HKV), *gvsum, *dkdv_args, **meta)
        _rt.add_partials([grads[name] for name in kernels.site_inputs], parts)

    _rt.launch(run, kernels.spec_name + " backward", q, v, (SQ, SKV), backward=True, blocks=kernels.selection_blocks,
               narrow=kernels.table_tiles)
    scored = kernels.scores_read  # else the output does not depend on q and k through the score
    return (
        gq.to(q.dtype) if scored else None, gk.to(k.dtype) if scored else None, gv.to(v.dtype),
        *(_rt.input_gradient(grads[name], t) if name in grads else None for name, t in by_name.items()),
    )


@torch.compiler.disable  # a schedule or selection passed in: the host code runs eagerly, outside any graph
def with_schedule(kernels: Kernels, q, k, v, inputs, params, selection, schedule, grad: bool, return_lse: bool):
    """attention() with a caller's schedule (from build_schedule) or selection: (out, lse, sum_kept(v))."""
    problem = (q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    if schedule is None:
        schedule = _schedule(kernels, q, k, inputs, params, selection)
    elif selection is not None:
        raise ValueError(f"{kernels.spec_name}: pass a selection to build_schedule, not with a schedule")
    _rt.check_schedule(kernels.spec_name, schedule, problem, q.device)
    if grad:
        return Differentiable.apply(kernels, schedule, params, q, k, v, *inputs)
    out, lse, vsum, _ = forward(kernels, q, k, v, inputs, params, schedule, return_lse)
    return out, lse, vsum


# ---------------------------------------------------------------- torch.library operators


_OPERATORS: dict[str, tuple[Kernels, Callable]] = {}


def operator(kernels: Kernels, key: str) -> Callable:
    """The module's kernels as torch.library custom operators, so that torch.compile (fullgraph too)
    traces a call as one node of its graph, forward and backward, without a break: the host work
    (schedule, autotuning, launches) runs when the graph runs. `key` names the module's source (one
    registration per process and source). Returns call(q, k, v, inputs, params, for_backward) ->
    (out, lse, stats, sum_kept(v)): out in float32 with for_backward (what the backward reads), else in
    q's dtype."""
    base = f"attnspec::{kernels.spec_name}_{re.sub(r'[^0-9a-zA-Z_]', '_', key)}"
    name, n = base, 0
    while name in _OPERATORS and _OPERATORS[name][0].forward is not kernels.forward:
        n += 1  # another module under the same name (rebuilt, or written out and imported): its own op
        name = f"{base}_{n}"
    if name not in _OPERATORS:
        _OPERATORS[name] = (kernels, _register(kernels, name))
    return _OPERATORS[name][1]


def _typed(kernels: Kernels, params: list[float]) -> tuple:
    """Runtime params travel through the operator as floats; the kernels take their own types."""
    kinds = {"int": int, "bool": bool, "float": float}
    return tuple(kinds[kind](p) for p, kind in zip(params, kernels.param_types))


def _schedule(kernels: Kernels, q, k, inputs, params, selection=None):
    """The module's build_schedule, called with the inputs and params by name, and q and k after the
    prologue (with the per-row values computed from them)."""
    named = dict(zip(kernels.input_names + kernels.param_names, tuple(inputs) + tuple(params)))
    computed = tuple(named.pop(name) for name in kernels.computed_inputs)  # from q and k after the prologue
    if kernels.schedule_reads_values:
        named["_row_values"] = computed
    if kernels.selects_after_prologue:  # q and k come after the prologue already
        named["_prologued"] = True
    return kernels.build_schedule(q, k, **named, selection=selection)


FORWARD_SCHEMA = "(Tensor q, Tensor k, Tensor v, Tensor[] inputs, float[] params, bool for_backward) -> (Tensor, Tensor, Tensor, Tensor)"
BACKWARD_SCHEMA = (
    "(Tensor q, Tensor k, Tensor v, Tensor out, Tensor stats, Tensor dout, Tensor? dlse, Tensor? dvsum, Tensor[] inputs, "
    "float[] params) -> Tensor[]"
)


def _register(kernels: Kernels, name: str) -> Callable:
    @torch.library.custom_op(f"{name}_forward", mutates_args=(), schema=FORWARD_SCHEMA)
    def forward_op(q, k, v, inputs, params, for_backward):
        typed = _typed(kernels, params)
        schedule = _schedule(kernels, q, k, inputs, typed)
        out, lse, vsum, extra = forward(kernels, q, k, v, tuple(inputs), typed, schedule, kernels.norm != "elementwise", for_backward)
        if for_backward:
            return extra[0], lse, extra[1], vsum
        return out, lse, q.new_empty(0, dtype=torch.float32), vsum

    @forward_op.register_fake
    def _(q, k, v, inputs, params, for_backward):
        B, H, SQ = q.shape[:3]
        out = q.new_empty((B, H, SQ, v.shape[-1]), dtype=torch.float32 if for_backward else q.dtype)
        stats = q.new_empty((B, H, SQ, 2) if for_backward else (0,), dtype=torch.float32)
        vsum = q.new_empty((B, H, SQ, v.shape[-1]) if kernels.kept_sum else (0,), dtype=torch.float32)
        return out, q.new_empty((B, H, SQ), dtype=torch.float32), stats, vsum

    @torch.library.custom_op(f"{name}_backward", mutates_args=(), schema=BACKWARD_SCHEMA)
    def backward_op(q, k, v, out, stats, dout, dlse, dvsum, inputs, params):
        typed = _typed(kernels, params)
        schedule = _schedule(kernels, q, k, inputs, typed)
        grads = backward(kernels, q, k, v, out, stats, dout, dlse, dvsum, tuple(inputs), typed, schedule)
        return [g if g is not None else q.new_empty(0) for g in grads]

    @backward_op.register_fake
    def _(q, k, v, out, stats, dout, dlse, dvsum, inputs, params):
        grads = {n: t for n, t in zip(kernels.input_names, inputs) if n in kernels.grad_inputs}
        scored = kernels.scores_read  # else no gradient of q and k: an empty tensor stands for None
        return [torch.empty_like(q) if scored else q.new_empty(0), torch.empty_like(k) if scored else q.new_empty(0), torch.empty_like(v),
                *(torch.empty_like(t) if n in grads else q.new_empty(0) for n, t in zip(kernels.input_names, inputs))]

    def setup_context(ctx, inputs, output):
        q, k, v, tensors, params, for_backward = inputs
        out, _lse, stats, _vsum = output
        ctx.save_for_backward(q, k, v, out, stats, *tensors)
        ctx.params = params

    def backward_fn(ctx, dout, dlse, _dstats, dvsum):
        q, k, v, out, stats, *tensors = ctx.saved_tensors
        if kernels.norm == "elementwise":
            dlse = None
        grads = backward_op(q, k, v, out, stats, dout.to(q.dtype), dlse, dvsum if kernels.kept_sum else None, tensors, ctx.params)
        dq, dk, dv, *dinputs = grads
        if not kernels.scores_read:
            dq = dk = None
        named = [g if n in kernels.grad_inputs else None for n, g in zip(kernels.input_names, dinputs)]
        return dq, dk, dv, named, (None if ctx.params else []), None  # the structure of the arguments' tree

    torch.library.register_autograd(f"{name}_forward", backward_fn, setup_context=setup_context)
    return forward_op
