"""What one fuzz trial runs: a `Case` (shapes, dtype, values, runtime params), drawn by hypothesis,
written as one line of text so that a failure can be replayed exactly (`attnspec fuzz --case ...`).

Strategies shrink toward the simplest case: lengths toward 1, one batch and head, the first dtype,
seed 0, tame values, the params' defaults. Lengths are drawn from lengths that break kernels (1, and
one off every block size) as often as from a plain range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from hypothesis import strategies as st

from ..diagnostics import AttnError
from ..ir import Spec
from ..sample import Sizes, sample_arguments

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# logits: q and k scaled so that scores have a standard deviation of about 1, 16 and 144
LOGIT_SCALES = {"normal": 1.0, "large": 4.0, "huge": 12.0}
INPUT_STYLES = ("typical", "wild")
# "dynamic": the target first runs once on other sizes, so that traced code (FlexAttention's mods under
# torch.compile) is retraced with symbolic shapes, as in a training loop whose lengths vary
TRACES = ("static", "dynamic")
HEAD_DIMS = (16, 32, 64, 8, 128)
VALUE_DIMS = (16, 8, 24, 32, 64, 128)
EDGE_LENGTHS = (1, 2, 15, 17, 31, 33, 63, 65, 100, 127, 129, 255, 257, 511, 513)
SIZE_FIELDS = ("B", "H", "HKV", "SQ", "SKV", "D", "DV")


@dataclass(frozen=True)
class Case:
    """One trial: everything needed to rebuild the same tensors for the same target."""

    target: str
    dtype: str
    sizes: Sizes
    seed: int = 0
    logits: str = "normal"
    inputs: str = "typical"
    trace: str = "static"
    params: tuple[tuple[str, object], ...] = ()
    grad: bool = False  # also hold the gradients of q, k, v and the float inputs to the rule

    def __str__(self) -> str:
        fields = [f"target={self.target}", f"dtype={self.dtype}"]
        fields += [f"{name}={getattr(self.sizes, name)}" for name in SIZE_FIELDS]
        fields += [f"seed={self.seed}", f"logits={self.logits}", f"inputs={self.inputs}", f"trace={self.trace}"]
        fields += [f"param.{name}={_param_text(value)}" for name, value in self.params]
        fields += ["grad=1"] if self.grad else []
        return ",".join(fields)


def _param_text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


# ---------------------------------------------------------------- parsing a case back


def parse_case(text: str) -> Case:
    """The Case a `str(case)` line describes; AttnError with a hint for anything else."""
    fields = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or key in fields:
            raise AttnError(f"bad --case field '{item}'", hint="copy the --case value that attnspec fuzz printed")
        fields[key] = value
    try:
        return _case_from_fields(fields)
    except (KeyError, ValueError) as err:
        raise AttnError(f"bad --case value: {err}", hint="copy the --case value that attnspec fuzz printed") from None


def _case_from_fields(fields: dict[str, str]) -> Case:
    sizes = Sizes(**{name: int(fields.pop(name)) for name in SIZE_FIELDS})
    target, dtype = fields.pop("target"), fields.pop("dtype")
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype '{dtype}'")
    logits, inputs, trace = fields.pop("logits", "normal"), fields.pop("inputs", "typical"), fields.pop("trace", "static")
    if logits not in LOGIT_SCALES or inputs not in INPUT_STYLES or trace not in TRACES:
        raise ValueError(f"unknown value style '{logits}' / '{inputs}' / '{trace}'")
    seed = int(fields.pop("seed", "0"))
    grad = fields.pop("grad", "0")
    if grad not in ("0", "1"):
        raise ValueError(f"grad must be 0 or 1, got '{grad}'")
    params = tuple((key[len("param."):], _parse_param(value)) for key, value in fields.items() if key.startswith("param."))
    unknown = [key for key in fields if not key.startswith("param.")]
    if unknown:
        raise ValueError(f"unknown field '{unknown[0]}'")
    return Case(target, dtype, sizes, seed, logits, inputs, trace, params, grad == "1")


def _parse_param(text: str):
    if text in ("true", "false"):
        return text == "true"
    try:
        return int(text)
    except ValueError:
        return float(text)


# ---------------------------------------------------------------- strategies


def lengths(max_len: int) -> st.SearchStrategy[int]:
    edges = [n for n in EDGE_LENGTHS if n <= max_len]
    return st.one_of(st.sampled_from(edges), st.integers(1, max_len))


@st.composite
def sizes(draw, spec: Spec, max_len: int = 300) -> Sizes:
    """B, heads (GQA ratios 1, 2, 4 or the declared group), lengths, head dims (DV != D too)."""
    hkv = draw(st.integers(1, 3))
    group = int(spec.gqa_group.literal) if spec.gqa_group is not None else draw(st.sampled_from((1, 2, 4)))
    return Sizes(
        B=draw(st.integers(1, 2)), H=hkv * group, HKV=hkv,
        SQ=draw(lengths(max_len)), SKV=draw(lengths(max_len)),
        D=draw(st.sampled_from(HEAD_DIMS)), DV=draw(st.sampled_from(VALUE_DIMS)),
    )


def param_values(spec: Spec, sizes_: Sizes) -> st.SearchStrategy[tuple]:
    """A value per runtime param: its default first (the simplest), then values around the lengths."""
    longest = max(sizes_.SQ, sizes_.SKV)
    return st.tuples(*(st.tuples(st.just(p.name), _param_strategy(p, longest)) for p in spec.runtime_params))


def _param_strategy(param, longest: int) -> st.SearchStrategy:
    drawn = {
        "int": st.integers(-2, 2 * longest + 2),
        "float": st.floats(-8.0, 8.0, allow_nan=False, width=32),
        "bool": st.booleans(),
    }[param.type]
    if param.default is None:
        return drawn
    return st.one_of(st.just(param.default.literal), drawn)


@st.composite
def cases(draw, spec: Spec, target: str, dtypes: tuple[str, ...], max_len: int = 300, grad: bool = False) -> Case:
    drawn_sizes = draw(sizes(spec, max_len))
    return Case(
        target=target,
        dtype=draw(st.sampled_from(dtypes)),
        sizes=drawn_sizes,
        seed=draw(st.integers(0, 2**16)),
        logits=draw(st.sampled_from(tuple(LOGIT_SCALES))),
        inputs=draw(st.sampled_from(INPUT_STYLES)),
        trace=draw(st.sampled_from(TRACES)),
        params=draw(param_values(spec, drawn_sizes)),
        grad=grad,
    )


# ---------------------------------------------------------------- tensors of a case


def case_arguments(spec: Spec, case: Case, device="cpu") -> dict:
    """q, k, v, the inputs and the runtime params of a case, in float64 (cast per dtype later)."""
    args = sample_arguments(spec, case.sizes, torch.float64, device=device, seed=case.seed)
    scale = LOGIT_SCALES[case.logits]
    args["q"], args["k"] = args["q"] * scale, args["k"] * scale
    if case.inputs == "wild":
        gen = torch.Generator().manual_seed(case.seed + 1)
        for decl in spec.arguments:
            args[decl.name] = _wild(args[decl.name], max(case.sizes.SQ, case.sizes.SKV), gen)
    args.update(dict(case.params))
    return args


def _wild(t: torch.Tensor, longest: int, gen) -> torch.Tensor:
    """Float inputs ten times larger with about one entry in ten -inf (a masked bias); integer inputs
    unsorted, with values around and beyond the lengths (indices that need clamping)."""
    if t.is_floating_point():
        large = (t.double().cpu() * 20.0).clone()
        large[torch.rand(large.shape, generator=gen) < 0.1] = -math.inf
        return large.to(dtype=t.dtype, device=t.device)
    if t.dtype == torch.bool:
        return t
    wild = torch.randint(-3, longest + 3, t.shape, generator=gen)
    return wild.to(dtype=t.dtype, device=t.device)


def other_sizes(sizes: Sizes) -> Sizes:
    """Sizes that differ from these in every dimension a traced mod can see (for trace=dynamic)."""
    group = sizes.H // sizes.HKV
    return Sizes(B=sizes.B + 1, H=(sizes.HKV + 1) * group, HKV=sizes.HKV + 1, SQ=sizes.SQ + 1, SKV=sizes.SKV + 1, D=sizes.D, DV=sizes.DV)


def low_precision(args: dict, dtype: torch.dtype) -> dict:
    """The arguments as a user passes them in `dtype`: q, k, v (and float64 tensors) converted,
    declared float32 inputs left as they are (the compute dtype decides how they are used)."""

    def one(value):
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            return value.to(dtype) if value.dim() == 4 or value.dtype == torch.float64 else value
        return value

    return {name: one(value) for name, value in args.items()}
