"""Whether torch.compile is tracing the caller of a generated module.

Inside a compiled caller, a module's host work becomes part of the caller's graph: flex_attention and
create_block_mask are captured rather than compiled on their own, and a step that branches on tensor
values (the tile analysis of a mask that reads an input, the chunked search for a selection's eligible
tiles) must give way to one that does not. docs/flex.md says which path runs where.
"""

from __future__ import annotations

import torch


def tracing() -> bool:
    return torch.compiler.is_compiling()


def dense_in_graph(t: torch.Tensor) -> bool:
    """On the CPU inside a compiled caller, the flex module computes FlexAttention's dense definition:
    compiled CPU FlexAttention has no lse, no float64, and no kernel for some masks."""
    return tracing() and t.device.type == "cpu"
