"""Exact graph rewrites applied to a fixpoint: trivial masked ReLUs, constants, affine maps merged into
the convolution or dense layer next to them, compositions of linear layers, residual identities.

Each rule (`fold_rules.py`) replaces a few nodes by one that computes the same function (up to float
rounding) and is never bigger; a merged node keeps the name of the downstream node it replaces.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from ..ir.graph import Graph


class Rewriter:
    """The graph as editable nodes {name: [op, args]}, in a topological order, for the rules to change."""

    def __init__(self, g: Graph):
        self.nodes = {n: [g.op(n), list(g.args(n))] for n in g.order}
        self.inputs, self.outputs, self.meta = list(g.inputs), list(g.outputs), dict(g.meta)
        self.removed: dict = {}          # name -> rule that removed the node

    def op(self, n: str):
        return self.nodes[n][0]

    def args(self, n: str) -> list:
        return self.nodes[n][1]

    def users(self, n: str) -> list:
        return [u for u, (_, args) in self.nodes.items() if n in args]

    def only_feeds(self, n: str, user: str) -> bool:
        """n is read by `user` alone, once, and is no graph input or output: it may be merged into `user`."""
        return (n not in self.outputs and n not in self.inputs and self.users(n) == [user]
                and self.args(user).count(n) == 1)

    def set(self, n: str, op, args: list | None = None) -> None:
        self.nodes[n] = [op, list(self.args(n) if args is None else args)]

    def insert(self, before: str, base: str, op, args: list) -> str:
        """Add a node computing op(args), placed just before node `before` in the order; returns its new name
        (`base` and a number, unused by any node, removed node or ONNX name of the model)."""
        taken = set(self.nodes) | set(self.removed) | set(self.meta.get("onnx_names", {}).values())
        taken |= {f"t_{n}" for n in taken} | set(self.meta.get("input_names", ())) | set(self.meta.get("output_names", ()))
        k = 1
        while f"{base}{k}" in taken or f"t_{base}{k}" in taken:
            k += 1
        name = f"{base}{k}"
        items = list(self.nodes.items())
        items.insert(list(self.nodes).index(before), (name, [op, list(args)]))
        self.nodes = dict(items)
        return name

    def drop(self, n: str, rule: str) -> None:
        del self.nodes[n]
        self.removed[n] = rule

    def bypass(self, n: str, src: str, rule: str) -> bool:
        """Every reader of n reads src instead and n goes (refused for a graph output: its name must stay)."""
        if n in self.outputs:
            return False
        for u in self.users(n):
            self.nodes[u][1] = [src if a == n else a for a in self.args(u)]
        self.drop(n, rule)
        return True

    def outputs_depend_on_inputs(self) -> bool:
        """Every output is still computed from an input (a constant output would lose the batch axis)."""
        live = set(self.inputs)
        for n, (_, args) in self.nodes.items():
            if any(a in live for a in args):
                live.add(n)
        return all(o in live for o in self.outputs)

    def graph(self) -> Graph:
        meta = dict(self.meta)
        if "onnx_names" in meta:
            meta["onnx_names"] = {k: v for k, v in meta["onnx_names"].items() if k in self.nodes}
        return Graph.build([(n, op, args) for n, (op, args) in self.nodes.items()], self.inputs, self.outputs, meta)


@dataclass
class FoldLog:
    """How often each rule fired, and which node each removed."""

    counts: Counter = field(default_factory=Counter)
    removed: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return dict(sorted(self.counts.items()))


def fold(g: Graph, max_passes: int = 100) -> tuple[Graph, FoldLog]:
    """g rewritten by the rules until none applies (each rule makes the graph strictly smaller or simpler,
    so this ends; max_passes is a safety net)."""
    from .fold_rules import RULES
    rw, log = Rewriter(g), FoldLog()
    for _ in range(max_passes):
        changed = False
        for n in list(rw.nodes):
            for name, rule in RULES:
                if n in rw.nodes and rule(rw, n):
                    log.counts[name] += 1
                    changed = True
        if not changed:
            break
    log.removed = dict(rw.removed)
    return rw.graph(), log


def shrink(g: Graph) -> tuple[Graph, dict, FoldLog]:
    """fold, delete dead rows/channels (`prune_dead`), fold again (a pruned mask may be all-active):
    (graph, counts of what prune_dead deleted, the two folds' log)."""
    from .graph_prune import prune_dead
    g, log = fold(g)
    g, removed = prune_dead(g)
    g, again = fold(g)
    log.counts.update(again.counts)
    log.removed.update(again.removed)
    return g, removed, log
