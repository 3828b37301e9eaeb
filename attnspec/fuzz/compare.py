"""One trial: run a target on a case and hold it to the accuracy rule against the float64 reference.

The oracle runs first. A case the reference itself refuses (a runtime param out of its range, a
rownorm weight below 0) or whose exact result is not finite outside its undefined rows lies
outside the spec's domain: it is discarded, not failed; so is a case that the reference computed in
the dtype cannot represent (exp of a logit in the hundreds overflows float32: the rule has no
yardstick there). Anything a target does differently on a case the reference accepts is a failure:
an exception, NaN where the reference's row is defined or a number where it is undefined
(language.md section 8), an element never written (outputs start as NaN), a wrong shape or dtype, or an
error beyond the rule, for out and for lse, and with grad=1 for every gradient.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from ..api import build_module, lower
from ..codegen import passes_for
from ..diagnostics import AttnError
from ..ir import Spec
from .accuracy import Verdict, check, errors
from .cases import DTYPES, Case, case_arguments, low_precision, other_sizes

OK, FAIL, DISCARD = "ok", "fail", "discard"


@dataclass(frozen=True)
class Outcome:
    status: str
    detail: str = ""
    verdicts: tuple[Verdict, ...] = ()


@dataclass
class Subject:
    """A spec with its reference module and the module of every target that accepts it."""

    spec: Spec  # lowered for the reference
    reference: object
    modules: dict = field(default_factory=dict)
    refused: dict = field(default_factory=dict)  # target -> AttnError

    @classmethod
    def build(cls, spec: Spec, targets, source_name: str, consts: dict | None = None) -> "Subject":
        lowered = lower(spec, consts, passes=passes_for("reference"))
        subject = cls(lowered, build_module(lowered, "reference", source_name))
        for target in targets:
            try:
                subject.modules[target] = build_module(lower(spec, consts, passes=passes_for(target)), target, source_name)
            except AttnError as err:
                subject.refused[target] = err
        return subject


class _Discard(Exception):
    pass


def run_case(subject: Subject, case: Case, device="cpu") -> Outcome:
    """The outcome of one case on one target (which must be among the subject's modules)."""
    try:
        return _run(subject, case, device)
    except _Discard as why:
        return Outcome(DISCARD, str(why))
    except Exception as err:  # noqa: BLE001 - the oracle failed where it should refuse or answer: a bug
        return Outcome(FAIL, f"the reference raised {type(err).__name__}: {err}")


def _run(subject: Subject, case: Case, device) -> Outcome:
    spec, reference = subject.spec, subject.reference
    try:
        args64 = case_arguments(spec, case, device)
    except (AttnError, RuntimeError, ValueError) as err:
        raise _Discard(f"no arguments of these sizes fit the spec's inputs ({err})") from None
    low = low_precision(args64, DTYPES[case.dtype])
    options = {"return_lse": True} if spec.normalize.kind != "elementwise" else {}
    options.update(_shared_selection(subject, low))
    ref64 = _pair(_oracle(spec, lambda: reference.attention(**args64, **options)))
    if not _finite(*ref64):
        raise _Discard("the float64 reference is not finite on this case (outside its undefined rows)")
    low_ref = _pair(_oracle(spec, lambda: reference.attention(**low, **options)))
    if not _finite(*low_ref) or not torch.equal(torch.isnan(low_ref[0]).cpu(), torch.isnan(ref64[0]).cpu()):
        raise _Discard(f"the reference in {case.dtype} is not finite on this case (beyond the dtype's range)")
    try:
        got = _pair(_target_call(subject, case, low, options))
    except Exception as err:  # noqa: BLE001 - any exception on a case the reference accepts is a bug
        return Outcome(FAIL, f"{case.target} raised {type(err).__name__}: {err}")
    outcome = _judge(got, low_ref, ref64, DTYPES[case.dtype])
    if bool(torch.isnan(ref64[0]).any()):
        return outcome  # the gradient of an undefined row is undefined too: the forward is the trial
    if not case.grad or outcome.status != OK:
        return outcome
    return _merge(outcome, _gradient_trial(subject, case, args64, low, options))


# ------------------------------------------------------------------ gradients


def _gradient_trial(subject: Subject, case: Case, args64: dict, low: dict, options: dict) -> Outcome:
    """The gradients of <out, dO> + <lse, dlse> (random cotangents, lse's where it is finite) with
    respect to q, k, v and every float input, held to the rule like out: float64 reference,
    reference in the dtype, target."""
    spec = subject.spec
    names = ["q", "k", "v"] + [i.name for i in spec.arguments if args64[i.name].is_floating_point()]
    reference = lambda args: subject.reference.attention(**args, **options)  # noqa: E731
    ref64 = _oracle(spec, lambda: _gradients(reference, args64, names, case.seed))
    if any(g is not None and not bool(torch.isfinite(g).all()) for g in ref64.values()):
        raise _Discard("the float64 reference's gradient is not finite on this case")
    low_ref = _oracle(spec, lambda: _gradients(reference, low, names, case.seed))
    if any(g is not None and not bool(torch.isfinite(g).all()) for g in low_ref.values()):
        raise _Discard(f"the reference's gradient in {case.dtype} is not finite on this case (beyond the dtype's range)")
    module = subject.modules[case.target]
    try:
        got = _gradients(lambda args: module.attention(**args, **options), low, names, case.seed)
    except Exception as err:  # noqa: BLE001 - the forward passed: a backward that raises is a bug
        return Outcome(FAIL, f"{case.target} backward raised {type(err).__name__}: {err}")
    problems, verdicts = [], []
    for name in names:
        if ref64[name] is None:
            if got[name] is not None and bool(got[name].any()):
                problems.append(f"d{name}: the reference has no gradient (the input is not differentiated), the target has one")
            continue
        # None is autograd's zero: an input the target's optimized spec no longer reads (where(true, ...))
        mine = torch.zeros_like(low[name]) if got[name] is None else got[name]
        verdict = _judge_gradient(name, mine, low_ref[name], ref64[name], low[name].dtype, problems)
        verdicts += [verdict] if verdict is not None else []
    detail = "; ".join(problems) or "; ".join(str(v) for v in verdicts)
    return Outcome(FAIL if problems else OK, detail, tuple(verdicts))


def _judge_gradient(name, got, low_ref, ref64, dtype, problems: list) -> Verdict | None:
    label = f"d{name}"
    if got is None or tuple(got.shape) != tuple(ref64.shape) or got.dtype != dtype:
        problems.append(f"{label}: expected {dtype} {tuple(ref64.shape)}, got {_describe(got)}")
        return None
    if bool(torch.isnan(got).any()):
        problems.append(f"{label}: NaN at {_first(torch.isnan(got))} (the reference has none)")
        return None
    verdict = check(got, low_ref, ref64, label)
    if not verdict.ok:
        problems.append(f"{verdict}, worst at {_worst(got, ref64)}")
    return verdict


def _gradients(call, args: dict, names, seed: int) -> dict:
    """{name: gradient or None} of <out, dO> + <finite lse, dlse> for one call (with grad enabled, also
    inside _oracle's no_grad); the cotangents are drawn in float64 from the case's seed, so every run
    sees the same ones."""
    leaves = {n: args[n].detach().clone().requires_grad_(True) for n in names}
    with torch.enable_grad():
        out, lse = _pair(call({**args, **leaves}))
        gen = torch.Generator().manual_seed(seed + 1)
        d_out = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out.device)
        loss = (out.double() * d_out).sum()
        if lse is not None:
            d_lse = torch.randn(lse.shape, generator=gen, dtype=torch.float64).to(lse.device)
            loss = loss + (torch.where(torch.isfinite(lse), lse, 0.0).double() * d_lse).sum()
        differentiable = [leaves[n] for n in names]
        grads = torch.autograd.grad(loss, differentiable, allow_unused=True)
    return dict(zip(names, grads))


def _merge(forward: Outcome, backward: Outcome) -> Outcome:
    detail = "; ".join(d for d in (forward.detail, backward.detail) if d)
    return Outcome(backward.status, detail, forward.verdicts + backward.verdicts)


def _oracle(spec: Spec, call):
    """A reference call; its documented refusals put the case outside the spec's domain."""
    with torch.no_grad():
        try:
            return call()
        except (ValueError, TypeError) as err:
            if str(err).startswith(f"{spec.name}:"):
                raise _Discard(str(err)) from None
            raise


def _target_call(subject: Subject, case: Case, low: dict, options: dict):
    """The target's result on the case, traced afresh (so that a replay sees what the search saw),
    after a run on other sizes when the case asks for dynamic shapes."""
    from ..runtime.triton import poisoned_outputs

    module = subject.modules[case.target]
    extra = {"compiled": low["q"].is_cuda} if case.target == "flex" else {}
    if case.target == "flex":
        torch._dynamo.reset()
    with torch.no_grad(), poisoned_outputs():
        warm_up = _warm_up_arguments(subject, case, low["q"].device) if case.trace == "dynamic" else None
        if warm_up is not None:
            try:
                module.attention(**warm_up, **extra)
            except Exception as err:  # noqa: BLE001 - reported as the case's failure, with where it happened
                raise RuntimeError(f"on the warm-up sizes {other_sizes(case.sizes)}: {type(err).__name__}: {err}") from err
        return module.attention(**low, **options, **extra)


def _warm_up_arguments(subject: Subject, case: Case, device) -> dict | None:
    """Arguments of other sizes (None where the reference refuses them: no warm-up then)."""
    other = replace(case, sizes=other_sizes(case.sizes))
    try:
        args = low_precision(case_arguments(subject.spec, other, device), DTYPES[case.dtype])
        args.update(_shared_selection(subject, args))
    except _Discard:
        return None
    return args


def _judge(got, low_ref, ref64, dtype) -> Outcome:
    problems, verdicts = [], []
    for label, index in (("out", 0), ("lse", 1)):
        if ref64[index] is None:
            continue
        tensor, expected_dtype = got[index], dtype if index == 0 else torch.float32
        if tensor is None or tuple(tensor.shape) != tuple(ref64[index].shape) or tensor.dtype != expected_dtype:
            problems.append(f"{label}: expected {expected_dtype} {tuple(ref64[index].shape)}, got {_describe(tensor)}")
            continue
        undefined = torch.isnan(ref64[index]).to(tensor.device)  # the rows the rule makes NaN
        if not torch.equal(torch.isnan(tensor), undefined):
            problems.append(_nan_mismatch(label, torch.isnan(tensor), undefined))
            continue
        defined = lambda t: torch.where(undefined.to(t.device), 0.0, t)  # noqa: E731 - NaN rows agree: compare the rest
        verdict = check(defined(tensor), defined(low_ref[index]), defined(ref64[index]), label)
        verdicts.append(verdict)
        if not verdict.ok:
            problems.append(f"{verdict}, worst at {_worst(tensor, ref64[index])}")
    detail = "; ".join(problems) or "; ".join(str(v) for v in verdicts)
    return Outcome(FAIL if problems else OK, detail, tuple(verdicts))


def _finite(out: torch.Tensor, lse) -> bool:
    """out finite outside its undefined rows (NaN, language.md section 8); lse may be -inf (an empty
    row) or NaN where out is, never +inf."""
    defined = ~torch.isnan(out)
    lse_ok = lse is None or not bool((torch.isnan(lse) & defined.any(-1) | (lse == float("inf"))).any())
    return bool(torch.isfinite(out[defined]).all()) and lse_ok


def _nan_mismatch(label: str, got: torch.Tensor, undefined: torch.Tensor) -> str:
    if bool((got & ~undefined).any()):
        return f"{label}: NaN at {_first(got & ~undefined)} (the reference has none)"
    return f"{label}: a number at {_first(undefined & ~got)} where the reference's row is undefined (NaN)"


def _pair(result):
    return result if isinstance(result, tuple) else (result, None)


def _shared_selection(subject: Subject, args: dict) -> dict:
    """A data-dependent selection, computed once by the reference for every run (design.md section 2)."""
    spec = subject.spec
    if spec.selection is None or not spec.selection.dynamic:
        return {}
    return {"selection": _oracle(spec, lambda: subject.reference.select(**_without_v(args)))}


def _without_v(args: dict) -> dict:
    return {name: value for name, value in args.items() if name != "v"}


def _describe(t) -> str:
    return "nothing" if t is None else f"{t.dtype} {tuple(t.shape)}"


def _first(mask: torch.Tensor) -> tuple:
    return tuple(int(i) for i in mask.nonzero()[0])


def _worst(x: torch.Tensor, ref: torch.Tensor) -> tuple:
    diff = errors(x, ref)
    return tuple(int(i) for i in torch.unravel_index(diff.nan_to_num(float("inf")).argmax(), diff.shape))
