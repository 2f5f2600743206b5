"""Two networks with the same ReLU skeleton but different linear parts (a BatchNorm folded into its Conv, a
layer factored into two, a Conv written as a Gemm) -> two graphs of one structure, for `ir.pair_graph`.

Pair the k-th activation of f with the k-th of g (topological order, same size; read in f's shape).  Both new graphs hold
every linear node of f (f's names) and every linear node of g (renamed), reading the paired activations
under f's names; activation k reads E_k = a * z_f + b * z_g, with (a, b) = (1, 0) in f' and (0, 1) in g',
and each output j is E = a * y_f + b * y_g the same way.  So f' computes f and g' computes g exactly, and the
difference graph of (f', g') gives, at each activation,

    dE = L_f(dh) + (L_f - L_g)(h_g)

where the two linear parts meet at the shared activations h_g: back-substitution adds their coefficients
there, so the terms of two equal functions written differently cancel before anything is concretised.
Any pairing of equal sizes is sound (f' and g' compute f and g whatever the pairing); a good one is tight.
"""

from __future__ import annotations

import dataclasses

import networkx as nx
import numpy as np

from . import ops
from .chain_export import fresh_name
from .graph import Graph
from .pair_graph import StructureError


def skeleton_pair(f: Graph, g: Graph) -> tuple[Graph, Graph]:
    """(f', g'): f and g as graphs of one structure (see the module docstring); StructureError when their
    inputs (shapes), outputs or activations (count and sizes, in order) differ.  An activation or output of
    g shaped otherwise than f's (a flat Gemm output where f has a Conv's) is read in f's shape, in C order."""
    size = lambda n, x: n.op(x).size      # noqa: E731
    acts_f, acts_g = f.relus, g.relus
    if [f.shape(x) for x in f.inputs] != [g.shape(x) for x in g.inputs] or \
            [size(f, x) for x in f.outputs] != [size(g, x) for x in g.outputs]:
        raise StructureError("the networks' inputs or outputs differ in number or shape")
    if [size(f, a) for a in acts_f] != [size(g, a) for a in acts_g]:
        raise StructureError(f"the networks' activations differ (A has {len(acts_f)} ReLU layers, B {len(acts_g)}, "
                             f"or their sizes differ in order)")
    taken = set(f.order)
    rename, views = dict(zip(g.inputs, f.inputs)), []      # g's tensor -> its name in the pair; (name, op, args)
    for af, ag in zip(acts_f, acts_g):
        if f.shape(af) == g.shape(ag):
            rename[ag] = af
        else:          # g's activation computed in f's shape, then viewed in its own for g's ops
            rename[ag] = _fresh("B~" + ag, taken)
            views.append((rename[ag], ops.Reshape(g.shape(ag), in_shape=f.shape(af)), [af]))
    for n in g.order:
        if n not in rename:
            rename[n] = _fresh("B~" + n, taken)
    mix = {}                  # (f tensor, g tensor) read by paired activations or outputs -> its mixed name
    for zf, zg in [(f.args(af)[0], g.args(ag)[0]) for af, ag in zip(acts_f, acts_g)] + list(zip(f.outputs, g.outputs)):
        if (zf, zg) not in mix:
            # E~k and its helpers E~k/a, E~k/b, E~k/view: all free (a tensor of A may have any of these names)
            name = f"E~{len(mix) + 1}"
            while any(name + x in taken for x in ("", "/a", "/b", "/view")):
                name += "_"
            mix[zf, zg] = name
            taken.update(name + x for x in ("", "/a", "/b", "/view"))

    def build(own_f: bool) -> Graph:
        nodes = [(x, f.op(x), []) for x in f.inputs] + list(views)
        nodes += [(n, f.op(n), list(f.args(n))) for n in f.order if f.op(n).kind not in ("input", "relu")]
        nodes += [(rename[n], g.op(n), [rename[a] for a in g.args(n)]) for n in g.order
                  if g.op(n).kind not in ("input", "relu")]
        a, b = (1.0, 0.0) if own_f else (0.0, 1.0)
        for (zf, zg), name in mix.items():
            # E = a z_f + b z_g: the pair's Scales differ in s (a parameter), so pair_graph keeps both terms
            shape, src = f.shape(zf), rename[zg]
            if g.shape(zg) != shape:
                nodes.append((name + "/view", ops.Reshape(shape, in_shape=g.shape(zg)), [src]))
                src = name + "/view"
            nodes += [(name + "/a", ops.Scale(shape, s=np.asarray(a)), [zf]),
                      (name + "/b", ops.Scale(shape, s=np.asarray(b)), [src]),
                      (name, ops.Add(shape, in_shapes=[shape, shape]), [name + "/a", name + "/b"])]
        for af, ag in zip(acts_f, acts_g):
            nodes.append((af, f.op(af) if own_f else _in_shape(g.op(ag), f.shape(af)),
                          [mix[f.args(af)[0], g.args(ag)[0]]]))
        return Graph.build(_in_data_order(nodes), f.inputs, [mix[o, p] for o, p in zip(f.outputs, g.outputs)])

    return build(True), build(False)


def _fresh(name: str, taken: set) -> str:
    """A new name (`name`, with underscores added while taken), now taken."""
    name = fresh_name(name, taken)
    taken.add(name)
    return name


def _in_shape(op, shape: tuple):
    """An activation op computing the same positions in another shape of the same size (C order)."""
    if tuple(op.shape) == tuple(shape):
        return op
    masks = {k: np.broadcast_to(np.asarray(getattr(op, k)), op.shape).reshape(shape)
             for k in ("relu_mask", "linear_mask") if hasattr(op, k)}
    return dataclasses.replace(op, shape=tuple(shape), **masks)


def skeleton_gap(f: Graph, g: Graph, X: np.ndarray) -> float:
    """The largest relative difference between paired activation inputs (and outputs) of f and g at the flat
    points X: near 0 for two forms of one function (where the skeleton pair is tight), large for approximations
    (a low-rank copy, where the product graph usually bounds better).  Assumes `skeleton_pair` accepts them."""
    vf, vg = f.evaluate(X), g.evaluate(X)
    pairs = [(f.args(a)[0], g.args(b)[0]) for a, b in zip(f.relus, g.relus)] + list(zip(f.outputs, g.outputs))
    gap = 0.0
    for zf, zg in pairs:
        a, b = vf[zf].reshape(len(X), -1), vg[zg].reshape(len(X), -1)
        scale = max(np.abs(a).max(initial=0.0), np.abs(b).max(initial=0.0))
        if scale > 0:
            gap = max(gap, float(np.abs(a - b).max() / scale))
    return gap


def _in_data_order(nodes: list) -> list:
    """The (name, op, args) nodes in an order where every node comes after its arguments."""
    names = [name for name, _, _ in nodes]
    if len(set(names)) != len(names):        # (a lost node would make the pair compute another function)
        raise ValueError(f"skeleton pair: tensor names computed twice: {sorted({n for n in names if names.count(n) > 1})[:3]}")
    dag = nx.DiGraph()
    dag.add_nodes_from(name for name, _, _ in nodes)
    dag.add_edges_from((a, name) for name, _, args in nodes for a in args)
    at = {name: k for k, (name, _, _) in enumerate(nodes)}
    return [nodes[at[name]] for name in nx.topological_sort(dag)]
