"""Per-row tables in the triton kernels (`let t[r: N] per q`): read per pair, as relative logits
are (`t[clamp(kv - q, -W, W) + W]`), a small table is loaded once per tile of rows and each pair picks
its entry from registers with tl.gather, instead of one gathered load from memory per pair.

A read qualifies where it varies per pair, its row is the tile's own (the index `q` for a table of q,
`kv` for one of k), its batch and head are the program's, the table has at most MAX_ENTRIES entries (a
compile-time constant) and every such read of the table uses the same batch and head. Its tile is a
per-pair binding of the kernels' `_scores` function: [BLOCK_M, entries] for a table of q, [entries,
BLOCK_N] for one of k, padded to a power of two and 0 past the table (never picked: entries are
clamped into the table, as every load is).
"""

from __future__ import annotations

from dataclasses import dataclass

from attnspec.ir import Expr, Spec, level_of, spec_exprs, walk
from attnspec.passes.symbolic import exact_key

MAX_ENTRIES = 64  # a [128, 64] float32 tile is 32 registers a thread on 8 warps


@dataclass(frozen=True)
class TableTile:
    name: str  # the table (a per-row value of the spec)
    tile: str  # the binding holding its tile in the kernels
    axis: int  # the tile's axis of entries: 1 for a table of q ([BLOCK_M, E]), 0 for one of k ([E, BLOCK_N])
    entries: int  # the table's entries, padded to a power of two
    lead: tuple[Expr, ...]  # batch, head and row indices of every read


def table_tiles(spec: Spec) -> dict[str, TableTile]:
    """The per-row tables the kernels read from tiles, by name."""
    reads: dict[str, dict] = {}
    roots = list(spec_exprs(spec)) + [b.value for b in spec.bindings]
    for root in roots:
        for node in walk(root):
            if _per_pair_read(node, spec):
                reads.setdefault(node.value, {})[tuple(exact_key(a) for a in node.args[:3])] = node.args[:3]
    found = {}
    for name, leads in reads.items():
        if len(leads) != 1:
            continue  # read at several batches or heads: each read loads for itself
        decl = spec.input(name)
        target = decl.computed.target
        found[name] = TableTile(name, f"_tile_{name}", 1 if target == "q" else 0,
                                _padded(decl.shape[-1].literal), next(iter(leads.values())))
    return found


def _per_pair_read(node: Expr, spec: Spec) -> bool:
    if node.op != "load":
        return False
    decl = spec.input(node.value)
    if decl is None or decl.computed is None or decl.computed.entry is None:
        return False
    extent = decl.shape[-1]
    if extent.op != "const" or not 0 < extent.literal <= MAX_ENTRIES:
        return False
    row = "q" if decl.computed.target == "q" else "kv"
    b, h, r, _ = node.args
    return (r.op == "index_var" and r.value == row and level_of(node, spec) == "element"
            and all(level_of(a, spec) == "program" for a in (b, h)))


def from_tile(table: TableTile, read: Expr, spec: Spec) -> bool:
    """Whether a load of the table picks its value from the tile: a per-pair read at the tile's rows
    (a read of one entry per row, such as t[0], is a load of its own)."""
    lead = [exact_key(a) for a in read.args[:3]] == [exact_key(a) for a in table.lead]
    return lead and level_of(read, spec) == "element"


def _padded(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def tile_binding(table: TableTile, render) -> tuple[str, str]:
    """(name, code) of the binding that loads a table's tile (`render` renders an index expression)."""
    n, e = table.name, f"tl.arange(0, {table.entries})"
    entries = f"{e}[None, :]" if table.axis == 1 else f"{e}[:, None]"
    lead = " + ".join(f"_kernel.clamp({render(a)}, 0, _{n}_n{d} - 1) * _{n}_s{d}" for d, a in enumerate(table.lead))
    code = f"tl.load({n} + {lead} + {entries} * _{n}_s3, mask={entries} < _{n}_n3, other=0.0).to(tl.float32)"
    return table.tile, code


def gathered(table: TableTile, entry: str) -> str:
    """A pair's entry of the table, picked from its tile (`entry` the rendered index, clamped here)."""
    index = f"_kernel.clamp({entry}, 0, _{table.name}_n3 - 1) + tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.int32)"
    return f"tl.gather({table.tile}, {index}, {table.axis})"
