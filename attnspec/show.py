"""Pictures of a spec's mask: characters for the terminal, a PNG for anything larger."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import torch

from .ir import Spec
from .runtime.sample import Sizes, sample_arguments


def dense_mask(module, spec: Spec, sizes: Sizes, seed: int = 0) -> torch.Tensor:
    """[SQ, SKV] bool: the mask AND the selected blocks for batch 0, head 0, on sample inputs."""
    args = sample_arguments(spec, sizes, torch.float64, seed=seed)
    kwargs = {k: v for k, v in args.items() if k not in ("q", "k", "v")}
    keep = module._token_mask(args["q"], args["k"], **kwargs)
    if spec.selection is not None:
        selection = module.select(args["q"], args["k"], **kwargs)
        keep = keep & module._expand_blocks(
            selection.block_mask, selection.q_block, selection.kv_block, sizes.SQ, sizes.SKV
        )
    return keep[0, 0]


def ascii_mask(mask: torch.Tensor, block: tuple[int, int] | None = None) -> str:
    """One character per pair: '#' kept, '.' masked; block boundaries drawn when given."""
    rows = []
    for i, row in enumerate(mask.tolist()):
        if block and i and i % block[0] == 0:
            rows.append("")
        cells = []
        for j, kept in enumerate(row):
            if block and j and j % block[1] == 0:
                cells.append(" ")
            cells.append("#" if kept else ".")
        rows.append("".join(cells))
    return "\n".join(rows)


def write_png(mask: torch.Tensor, path: str | Path, scale: int = 4) -> None:
    """A grayscale PNG: kept pairs black on white, each pair a scale x scale square."""
    pixels = (~mask).to(torch.uint8) * 255
    pixels = pixels.repeat_interleave(scale, 0).repeat_interleave(scale, 1)
    height, width = pixels.shape
    raw = b"".join(b"\x00" + bytes(row) for row in pixels.tolist())
    png = b"\x89PNG\r\n\x1a\n"
    png += _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    png += _chunk(b"IDAT", zlib.compress(raw, 9))
    png += _chunk(b"IEND", b"")
    Path(path).write_bytes(png)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
