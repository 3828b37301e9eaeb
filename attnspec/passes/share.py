"""Common subexpressions and loop-invariant terms become named bindings; dead bindings go.

The token-level expressions (the CSE roots of stages.py: score mod, mask, sink, weight) form one DAG
(networkx). A subexpression becomes a Binding when it occurs more than once (CSE), or when it
varies less than the expression around it (hoisting): terms of (b, h) only are computed once per
program, terms of the query row once per row, terms of the key column once per column, instead
of once per (query, key) pair. A binding equal to one of the user's lets takes its name; the others
are t0, t1, ... Expressions that read the score are never bound: `score` means
the scaled logit in a score mod but the modified score inside normalize(...).
"""

from __future__ import annotations

import dataclasses
from collections import Counter

import networkx as nx

from ..ir import LEAF_OPS, Binding, Expr, Spec, level_of, substitute, uses, walk
from ..stages import cse_roots, with_slots
from .symbolic import exact_key


def hoist_and_share(spec: Spec) -> Spec:
    """Pass: bind shared subexpressions and the maximal terms that vary less than their context."""
    roots = cse_roots(spec)
    counts = Counter(node for root in roots.values() for node in walk(root))
    chosen: dict[Expr, int] = {}  # insertion-ordered: first occurrence in source order
    for root in roots.values():
        _choose(root, None, counts, spec, chosen)
    if not chosen:
        return spec
    graph = _dag(chosen)
    # children before parents; ties in order of first occurrence, so the output is deterministic
    order = list(nx.lexicographical_topological_sort(graph.reverse(), key=chosen.__getitem__))
    taken = {p.name for p in spec.params} | {i.name for i in spec.inputs} | {b.name for b in spec.bindings}
    lets = {exact_key(value): name for name, value in reversed(spec.lets)}  # the first of equal lets
    bindings, temps = list(spec.bindings), {}
    for node in order:
        user = lets.get(exact_key(node))
        name = user if user is not None and user not in taken else _fresh(taken)
        taken.add(name)
        value = dataclasses.replace(node, args=tuple(_replace(a, temps) for a in node.args))
        bindings.append(Binding(name, value, level_of(node, spec), node.span, user=name == user))
        temps[node] = Expr("temp", value=name, span=node.span)
    spec = dataclasses.replace(spec, bindings=tuple(bindings))
    return with_slots(spec, {k: _replace(v, temps) for k, v in roots.items()})


def _choose(node: Expr, parent: Expr | None, counts: Counter, spec: Spec, chosen: dict[Expr, int]) -> None:
    if node.op in LEAF_OPS or uses(node, "score"):
        for arg in node.args:
            _choose(arg, node, counts, spec, chosen)
        return
    level = level_of(node, spec)
    hoistable = level != "element" and (parent is None or level_of(parent, spec) != level)
    if (counts[node] > 1 or hoistable) and node not in chosen:
        chosen[node] = len(chosen)
    for arg in node.args:
        _choose(arg, node, counts, spec, chosen)


def _dag(chosen: dict[Expr, int]) -> nx.DiGraph:
    """Edges from each chosen expression to the chosen expressions inside it."""
    graph = nx.DiGraph()
    graph.add_nodes_from(chosen)
    for node in chosen:
        for inner in walk(node):
            if inner is not node and inner in chosen:
                graph.add_edge(node, inner)
    return graph


def _fresh(taken: set[str]) -> str:
    i = 0
    while f"t{i}" in taken:
        i += 1
    taken.add(f"t{i}")
    return f"t{i}"


def _replace(expr: Expr, temps: dict[Expr, Expr]) -> Expr:
    return substitute(expr, lambda n: temps.get(n))


def eliminate_dead_bindings(spec: Spec) -> Spec:
    """Pass: drop bindings that no root reads, directly or through other bindings."""
    graph = nx.DiGraph()
    graph.add_node("<roots>")
    for binding in spec.bindings:
        graph.add_node(binding.name)
        for node in walk(binding.value):
            if node.op == "temp":
                graph.add_edge(binding.name, node.value)
    for root in cse_roots(spec).values():
        for node in walk(root):
            if node.op == "temp":
                graph.add_edge("<roots>", node.value)
    live = nx.descendants(graph, "<roots>")
    return dataclasses.replace(spec, bindings=tuple(b for b in spec.bindings if b.name in live))
