"""Train a tiny model whose attention layer comes from an .attn file with a learnable bias table.

The task, copying the token three positions back, is solved by attending at a fixed relative offset:
exactly what S02's learnable relative-position table (`examples/s02_rel_table.attn`) can learn. The
layer is the generated module's nn.Module, which owns the table as an nn.Parameter.

    python examples/train_rel_bias.py [--target reference|flex|triton] [--steps N]

Every target trains on a CUDA GPU. On the CPU the reference target trains, and so does the triton
target, its forward and backward kernels running in Triton's interpreter (set here, slower), and the
flex target, through FlexAttention's dense definition (FlexAttention has no CPU backward).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

import attnspec

SPEC = Path(__file__).resolve().parent / "s02_rel_table.attn"
VOCAB, SEQ, HEADS, HEAD_DIM, LAG = 16, 32, 2, 16, 3


class TinyModel(torch.nn.Module):
    """Embedding -> one attention layer (from the .attn file) -> vocabulary logits."""

    def __init__(self, target: str = "reference", device="cpu"):
        super().__init__()
        width = HEADS * HEAD_DIM
        self.embed = torch.nn.Embedding(VOCAB, width)
        self.qkv = torch.nn.Linear(width, 3 * width)
        self.attn = attnspec.compile(SPEC, target).Module(H=HEADS, SQ=SEQ, dtype=torch.float32, device=device)
        self.head = torch.nn.Linear(width, VOCAB)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)  # [B, SEQ, width]
        q, k, v = (t.unflatten(-1, (HEADS, HEAD_DIM)).transpose(1, 2) for t in self.qkv(x).chunk(3, dim=-1))
        out = self.attn(q, k, v)  # [B, HEADS, SEQ, HEAD_DIM]
        return self.head(out.transpose(1, 2).flatten(-2))


def batch(gen: torch.Generator, size: int = 32, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    tokens = torch.randint(0, VOCAB, (size, SEQ), generator=gen)
    return tokens.to(device), tokens.roll(LAG, dims=1).to(device)  # the target at i is the token at i - 3


def train(target: str = "reference", steps: int = 60, seed: int = 0, device="cpu", batch_size: int = 32) -> list[float]:
    """The loss of every step (positions before the lag are not scored)."""
    torch.manual_seed(seed)
    model = TinyModel(target, device).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-2)
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        tokens, wanted = batch(gen, batch_size, device=device)
        logits = model(tokens)[:, LAG:]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), wanted[:, LAG:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="reference")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    if args.target == "triton" and args.device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernels are built
    losses = train(args.target, args.steps, device=args.device)
    for step in range(0, len(losses), 10):
        print(f"step {step:3d}  loss {losses[step]:.3f}")
    print(f"step {len(losses) - 1:3d}  loss {losses[-1]:.3f}")


if __name__ == "__main__":
    main()
