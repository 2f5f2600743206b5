"""Network (a chain of dense and ReLU layers) -> Graph, so the chain code can use the graph bounds engine.

Nodes: "input" (n_inputs,), then per dense layer k (1-based) "dense_k" (Dense with bias) and, between
dense layers, "relu_k" (Relu, or MaskedRelu when the layer has linear channels).  The last dense layer
is the output.
"""

from __future__ import annotations

import numpy as np

from . import ops
from .graph import Graph
from .network import Network


def dense_names(net: Network) -> list[str]:
    """The graph node of each dense layer's pre-activation (the last one: the output)."""
    return network_graph(net).meta["dense"]


def network_graph(net: Network) -> Graph:
    """The graph of the chain (cached on the Network while its layer graph is the same object)."""
    cached = net.__dict__.get("_as_graph")
    if cached is not None and cached[0] is net.graph:
        return cached[1]
    dense, masks = net.dense, net.masks
    nodes, prev = [("input", ops.Input((net.n_inputs,)), [])], "input"
    for k, d in enumerate(dense, start=1):
        nodes.append((f"dense_{k}", ops.Dense((d.n_out,), W=d.W, bias=d.b), [prev]))
        prev = f"dense_{k}"
        if k < len(dense):
            m = np.asarray(masks[k - 1], bool)
            op = ops.Relu((d.n_out,)) if m.all() else ops.MaskedRelu((d.n_out,), relu_mask=m, linear_mask=~m)
            nodes.append((f"relu_{k}", op, [prev]))
            prev = f"relu_{k}"
    g = Graph.build(nodes, ["input"], [prev], {"dense": [f"dense_{k}" for k in range(1, len(dense) + 1)]})
    net.__dict__["_as_graph"] = (net.graph, g)
    return g
