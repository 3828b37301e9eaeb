"""The accuracy rule every target is held to (design.md section 6).

err(target vs float64 reference) <= fudge * err(reference in the test dtype vs float64) + atol;
NaN anywhere the reference has none always fails; -inf must match -inf exactly (masked rows).

atol is relative to the values' magnitude: 1e-5 * max(1, max |reference|). An lse of 300 (logits in
the hundreds) is held to 3e-3, as its float32 ulp is 3e-5: a plain 1e-5 would demand that a kernel
round a dot product of 64 terms like torch does, and the reference's own error, the other yardstick,
is a single lucky sample when a case has few elements (found by attnspec fuzz).

atol also holds half an ulp of the largest value in the reference's own dtype (`rounding_floor`),
times fudge: what storing a value of that size in the dtype may cost, as FlashAttention's tests add
to their gradients' bound. The GPU's kernels round their weights and dS to the half type before the
second products, where the reference rounds at other steps; with that rounding emulated on the CPU
(runtime/kernel.py `operand`), outputs and gradients missed the bare 2 x err(reference) in 2 of 84
random bf16 cases, by up to 1.15 times (one in ten, by up to 1.9 times, before the forward's weights
for a backward took two operands), where the reference happened to land within a fraction of an ulp
(docs/triton.md, "Precision and the interpreter").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Verdict:
    ok: bool
    error: float
    allowed: float
    what: str

    def __str__(self) -> str:
        status = "ok" if self.ok else "FAIL"
        return f"{self.what}: {status} (max error {self.error:.3g}, allowed {self.allowed:.3g})"


def errors(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """|x - ref| per element in float64, 0 where both are the same infinity (NaN stays NaN)."""
    x, ref = x.double(), ref.double()
    same_inf = torch.isinf(x) & torch.isinf(ref) & (torch.sign(x) == torch.sign(ref))
    return torch.where(same_inf, 0.0, (x - ref).abs())


def max_error(x: torch.Tensor, ref: torch.Tensor) -> float:
    diff = errors(x, ref)
    if diff.numel() == 0:
        return 0.0
    return float("inf") if bool(torch.isnan(diff).any()) else float(diff.max())


def magnitude(ref: torch.Tensor) -> float:
    """The largest finite |value| (0 for an empty or all-infinite tensor)."""
    finite = ref.double().abs()[torch.isfinite(ref)]
    return float(finite.max()) if finite.numel() else 0.0


def rounding_floor(low_ref: torch.Tensor, ref64: torch.Tensor) -> float:
    """Half an ulp, in low_ref's dtype, of the largest finite |ref64|: 0 for exact types and zeros."""
    largest = magnitude(ref64)
    if not low_ref.is_floating_point() or largest == 0.0:
        return 0.0
    return torch.finfo(low_ref.dtype).eps / 2 * 2.0 ** math.floor(math.log2(largest))


def check(target: torch.Tensor, low_ref: torch.Tensor, ref64: torch.Tensor, what: str, fudge: float = 2.0, atol: float = 1e-5) -> Verdict:
    error = max_error(target, ref64)
    allowed = fudge * (max_error(low_ref, ref64) + rounding_floor(low_ref, ref64)) + atol * max(1.0, magnitude(ref64))
    return Verdict(error <= allowed, error, allowed, what)
