"""Fingerprints of what every example computes: for each spec and target, a hash of the exact bytes of
its outputs (out, lse) and gradients (q, k, v and every float input) on fixed arguments, on the CPU.

A refactoring of the back half (passes, renderers, templates, runtime helpers) must not change what
users get: record fingerprints before the change, compare after it. Bit-identical, not merely close.
The hashes depend on the versions of torch and Triton, so they are compared on one machine, not stored.

    python tests/fingerprints.py save BEFORE.json
    python tests/fingerprints.py compare BEFORE.json    # exit 1 and a list of what differs
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")

HERE = Path(__file__).resolve().parent
EXAMPLES = HERE.parent / "examples"
# lengths that are not multiples of any tile, SQ != SKV, GQA, B > 1, DV != D
SIZES = dict(B=2, H=4, HKV=2, SQ=37, SKV=45, D=16, DV=24)
DTYPES = ("float64", "float32", "bfloat16")


def fingerprints(only: list[str] | None = None) -> dict[str, str]:
    from attnspec.api import load_program

    found = {}
    for path in sorted(EXAMPLES.glob("*.attn")):
        if only and path.stem not in only:
            continue
        for spec in load_program(path).specs:
            found.update(_spec_fingerprints(path, spec))
    return found


def _spec_fingerprints(path: Path, spec) -> dict[str, str]:
    from dataclasses import replace

    import torch

    from attnspec.api import compile as compile_spec
    from attnspec.api import lower
    from attnspec.diagnostics import AttnError
    from attnspec.sample import Sizes, sample_arguments

    sizes = Sizes(**SIZES)
    if spec.gqa_group is not None:
        sizes = replace(sizes, H=sizes.HKV * int(spec.gqa_group.literal))
    lowered = lower(spec)  # the sample draws runtime params and inputs at these sizes
    found = {}
    for target in ("reference", "flex", "triton"):
        key = f"{path.stem}.{spec.name}.{target}"
        try:
            module = compile_spec(path, target, spec.name, cache=False)
        except AttnError as error:
            found[key] = "refused: " + error.message
            continue
        for dtype in DTYPES if target == "reference" else DTYPES[1:]:
            torch.manual_seed(0)
            args = sample_arguments(lowered, sizes, getattr(torch, dtype), seed=1)
            found[f"{key}.{dtype}"] = _run(module, args)
    return found


def _run(module, args: dict) -> str:
    import torch

    grads = [n for n, t in args.items() if isinstance(t, torch.Tensor) and t.is_floating_point()]
    for name in grads:
        args[name] = args[name].clone().requires_grad_(True)
    q, k, v = args.pop("q"), args.pop("k"), args.pop("v")
    digest = hashlib.sha256()
    try:
        try:
            out, lse = module.attention(q, k, v, **args, return_lse=True)
        except ValueError as error:
            if "lse" not in str(error):
                raise
            out, lse = module.attention(q, k, v, **args), None
        outputs = [out] + ([lse] if lse is not None else [])
        for t in outputs:
            digest.update(_bytes(t))
        loss = (out.float() * torch.linspace(-1, 1, out.numel()).view(out.shape)).sum()
        if lse is not None:
            loss = loss + (torch.nan_to_num(lse.float(), neginf=0.0) * 0.5).sum()
        tensors = {"q": q, "k": k, "v": v, **args}
        wanted = [tensors[n] for n in grads]
        for g in torch.autograd.grad(loss, wanted, allow_unused=True):
            digest.update(b"none" if g is None else _bytes(g))
    except Exception as error:  # an error is part of the behaviour: it must stay the same too
        return f"error: {type(error).__name__}: {str(error)[:200]}"
    return digest.hexdigest()[:24]


def _bytes(t) -> bytes:
    """The exact bits of a tensor, with its dtype and shape."""
    import torch

    t = t.detach().contiguous().view(-1)
    bits = t.view(torch.int16) if t.dtype in (torch.bfloat16, torch.float16) else t
    return f"{t.dtype}{tuple(t.shape)}".encode() + bits.cpu().numpy().tobytes()


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] not in ("save", "compare"):
        print(__doc__)
        return 2
    command, file, only = argv[0], Path(argv[1]), argv[2:]
    found = fingerprints(only)
    if command == "save":
        file.write_text(json.dumps(found, indent=1, sort_keys=True))
        print(f"{len(found)} fingerprints written to {file}")
        return 0
    before = json.loads(file.read_text())
    differ = [k for k in sorted(set(before) | set(found)) if before.get(k) != found.get(k) and (not only or k in found)]
    for k in differ:
        print(f"{k}: {before.get(k)} -> {found.get(k)}")
    print(f"{len(found)} fingerprints compared, {len(differ)} differ")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
