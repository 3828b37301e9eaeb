"""The stages of a spec and their slots: each says once what the verifier, the passes, the derivative
and the code generators need from it.

A spec computes, per (batch, head, query, key): the logit scale, the score mod, the mask, the
normalization (its sink logit and weight), over the key blocks its selection stage picks, with the
GQA layout and the inputs it declares. Each slot is one top-level expression of a stage:

- where it lives in the Spec record (`path`), and which variables it may read (`context`, verify.py);
- the type it must have (`want`) and the extra range check of its values (`check`);
- whether its value is used as a float whatever its type (`float_slot`: insert_casts converts it);
- whether it is a token-level expression that CSE and hoisting share terms across (`cse_root`);
- whether the backward differentiates it, and as what (`differentiated`: the score mod's score,
  the weight's modified score, or a sink logit), for codegen/triton_backward.py.

Passes and generators iterate over SLOTS (or the helpers below) instead of naming slots. A new
stage is one entry here, its field in ir.Spec, its front-end syntax, its template macros and its tests.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Iterator

from .ir import Expr, Spec


@dataclass(frozen=True)
class Context:
    """Where a slot's expression is evaluated: the variables it may read."""

    what: str  # used in messages: "a mask", "a sink logit", ...
    index_vars: frozenset[str]
    score: bool = False
    loads: bool = True
    pools: bool = False
    runtime_params: bool = True
    shapes: bool = True


_TOKEN = frozenset({"b", "h", "q", "kv"})
_BLOCK = frozenset({"b", "h", "q_block", "kv_block"})
NONE = frozenset()

SCALE = Context("the scale", NONE, loads=False)
SCORE = Context("a score mod", _TOKEN, score=True)
MASK = Context("a mask", _TOKEN)
SINK = Context("a sink logit", frozenset({"b", "h", "q"}))
WEIGHT = Context("a normalization", _TOKEN, score=True)
BLOCK_RULE = Context("a block rule", _BLOCK)
BLOCK_SCORE = Context("a block score", _BLOCK, pools=True)
AMOUNT = Context("a selection amount", NONE, loads=False)
CONSTANT = Context("a compile-time constant", NONE, loads=False, runtime_params=False, shapes=False)
BLOCK_SIZE = dataclasses.replace(CONSTANT, what="a block size")
GQA_GROUP = dataclasses.replace(CONSTANT, what="the GQA group")
SHAPE = Context("an input shape", NONE, loads=False, runtime_params=False)
ENTRIES = dataclasses.replace(SHAPE, what="the number of entries of a per-row table")


def _always(value):
    return lambda spec: value


@dataclass(frozen=True)
class Slot:
    name: str
    path: tuple[str, ...]  # attributes from the Spec: ("normalize", "sink")
    context: Context
    want: Callable[[Spec], str]  # "number" | "int" | "bool"
    float_slot: Callable[[Spec], bool] = _always(False)
    cse_root: bool = False
    differentiated: str | None = None  # "score" | "weight" | "denominator" | "sink"
    check: str | None = None  # the name of a range check in verify.py

    def get(self, spec: Spec) -> Expr | None:
        node = spec
        for attribute in self.path:
            node = getattr(node, attribute, None) if node is not None else None
        return node


@dataclass(frozen=True)
class Stage:
    name: str
    slots: tuple[Slot, ...]


STAGES = (
    Stage("scale", (Slot("scale", ("scale",), SCALE, _always("number"), float_slot=_always(True)),)),
    Stage("score", (
        Slot("score", ("score",), SCORE, _always("number"), float_slot=_always(True), cse_root=True, differentiated="score"),
    )),
    Stage("mask", (Slot("mask", ("mask",), MASK, _always("bool"), cse_root=True),)),
    Stage("gqa", (Slot("gqa_group", ("gqa_group",), GQA_GROUP, _always("int"), check="positive_group"),)),
    Stage("normalize", (
        Slot("sink", ("normalize", "sink"), SINK, _always("number"), float_slot=_always(True), cse_root=True, differentiated="sink"),
        Slot("weight", ("normalize", "weight"), WEIGHT, _always("number"), float_slot=_always(True), cse_root=True,
             differentiated="weight"),
        Slot("denominator", ("normalize", "denominator"), WEIGHT, _always("number"), float_slot=_always(True),
             cse_root=True, differentiated="denominator"),
    )),
    Stage("selection", (
        Slot("q_block", ("selection", "q_block"), BLOCK_SIZE, _always("int"), check="block_size"),
        Slot("kv_block", ("selection", "kv_block"), BLOCK_SIZE, _always("int"), check="block_size"),
        Slot("keep", ("selection", "keep"), BLOCK_RULE, _always("bool")),
        Slot("always", ("selection", "always"), BLOCK_RULE, _always("bool")),
        Slot("block_score", ("selection", "score"), BLOCK_SCORE, _always("number"), float_slot=_always(True)),
        Slot("amount", ("selection", "amount"), AMOUNT,
             lambda spec: "int" if spec.selection.rule == "top" else "number",
             float_slot=lambda spec: spec.selection.rule in ("threshold", "share"), check="amount"),
    )),
)
SLOTS = tuple(slot for stage in STAGES for slot in stage.slots)
_BY_NAME = {slot.name: slot for slot in SLOTS}


def slot(name: str) -> Slot:
    return _BY_NAME[name]


def filled(spec: Spec) -> Iterator[tuple[Slot, Expr]]:
    """(slot, expression) of every slot the spec fills, in stage order."""
    for s in SLOTS:
        expr = s.get(spec)
        if expr is not None:
            yield s, expr


def float_slots(spec: Spec) -> list[Expr]:
    """The top-level expressions whose value is used as a float whatever their type."""
    return [expr for s, expr in filled(spec) if s.float_slot(spec)]


def cse_roots(spec: Spec) -> dict[str, Expr]:
    """The token-level expressions that share and hoist terms, by slot name."""
    return {s.name: expr for s, expr in filled(spec) if s.cse_root}


# the order the backward numbers its gradient sites in (their partial sums are added in this order)
DIFFERENTIATION_ORDER = ("score", "weight", "denominator", "sink")


def differentiated(spec: Spec) -> list[tuple[str, Expr | None]]:
    """(what, expression) of the slots the backward differentiates, filled or not."""
    found = {s.differentiated: s.get(spec) for s in SLOTS if s.differentiated}
    return [(what, found[what]) for what in DIFFERENTIATION_ORDER]


def with_slots(spec: Spec, values: dict[str, Expr | None]) -> Spec:
    """spec with the named slots replaced (pure: nested records are rebuilt)."""
    for name, value in values.items():
        spec = _replace_path(spec, _BY_NAME[name].path, value)
    return spec


def _replace_path(node, path: tuple[str, ...], value):
    if len(path) == 1:
        return dataclasses.replace(node, **{path[0]: value})
    return dataclasses.replace(node, **{path[0]: _replace_path(getattr(node, path[0]), path[1:], value)})
