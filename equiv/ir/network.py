"""The network as a graph of layers (networkx DiGraph) with numpy parameters, and its forward pass.

A ReLU network here is a chain  input -> dense_1 -> relu_1 -> ... -> dense_L  where every dense layer
is an affine map ``z = W h + b`` and every ReLU layer applies ``max(z, 0)`` to the neurons of its
``mask`` and the identity to the others ("linear channels", left behind when active neurons lose
their ReLU).  Hidden neurons are addressed as ``(layer, index)`` with ``layer`` counting ReLU layers
from 1, matching the math ``z_k = W_k h_{k-1} + b_k``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx
import numpy as np


@dataclass(frozen=True)
class Dense:
    """Affine map z = W h + b; W has shape (out, in)."""

    W: np.ndarray
    b: np.ndarray

    def __post_init__(self):
        if self.W.ndim != 2 or self.b.shape != (self.W.shape[0],):
            raise ValueError(f"Dense layer needs W (out, in) and b (out,), got {self.W.shape} and {self.b.shape}")

    @property
    def n_in(self) -> int:
        return self.W.shape[1]

    @property
    def n_out(self) -> int:
        return self.W.shape[0]

    @property
    def params(self) -> int:
        return self.W.size + self.b.size


@dataclass(frozen=True)
class Relu:
    """Elementwise activation: ReLU where mask is True, identity (a linear channel) where False."""

    mask: np.ndarray

    @property
    def size(self) -> int:
        return self.mask.size

    @property
    def n_relus(self) -> int:
        return int(self.mask.sum())


@dataclass
class Network:
    """A ReLU network: a networkx DiGraph of layers plus the I/O names and shapes of the ONNX model."""

    graph: nx.DiGraph
    input_name: str = "input"
    output_name: str = "output"
    input_shape: tuple = ()
    output_shape: tuple = ()
    meta: dict = field(default_factory=dict)

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_layers(cls, dense: list[Dense], masks: list[np.ndarray] | None = None, **io) -> "Network":
        """Build the chain dense_1, relu_1, ..., dense_L (a ReLU between consecutive dense layers)."""
        if not dense:
            raise ValueError("a network needs at least one dense layer")
        if masks is None:
            masks = [np.ones(d.n_out, dtype=bool) for d in dense[:-1]]
        if len(masks) != len(dense) - 1:
            raise ValueError("need one ReLU mask between each pair of dense layers")
        for k in range(1, len(dense)):
            if dense[k].n_in != dense[k - 1].n_out or masks[k - 1].shape != (dense[k - 1].n_out,):
                raise ValueError(f"layer {k + 1}: input width {dense[k].n_in} does not match {dense[k - 1].n_out}")
        g = nx.DiGraph()
        g.add_node("input", layer=None, width=dense[0].n_in)
        prev = "input"
        for k, d in enumerate(dense, start=1):
            name = f"dense_{k}"
            g.add_node(name, layer=Dense(np.asarray(d.W, dtype=np.float64), np.asarray(d.b, dtype=np.float64)))
            g.add_edge(prev, name)
            prev = name
            if k < len(dense):
                rname = f"relu_{k}"
                g.add_node(rname, layer=Relu(np.asarray(masks[k - 1], dtype=bool)))
                g.add_edge(prev, rname)
                prev = rname
        io.setdefault("input_shape", (1, dense[0].n_in))
        io.setdefault("output_shape", (1, dense[-1].n_out))
        return cls(graph=g, **io)

    # ---- structure ----------------------------------------------------------------------------
    def chain(self) -> list:
        """Layers in data-flow order (input excluded); the graph must be a simple chain."""
        order = list(nx.topological_sort(self.graph))
        for a, b in zip(order, order[1:]):
            if not self.graph.has_edge(a, b) or self.graph.out_degree(a) != 1:
                raise ValueError("only chain-shaped networks are supported by this operation")
        return [self.graph.nodes[n]["layer"] for n in order[1:]]

    @property
    def dense(self) -> list[Dense]:
        return [layer for layer in self.chain() if isinstance(layer, Dense)]

    @property
    def masks(self) -> list[np.ndarray]:
        return [layer.mask for layer in self.chain() if isinstance(layer, Relu)]

    @property
    def n_inputs(self) -> int:
        return self.dense[0].n_in

    @property
    def n_outputs(self) -> int:
        return self.dense[-1].n_out

    @property
    def hidden_widths(self) -> list[int]:
        return [m.size for m in self.masks]

    @property
    def n_relus(self) -> int:
        return int(sum(m.sum() for m in self.masks))

    @property
    def n_params(self) -> int:
        return int(sum(d.params for d in self.dense))

    @property
    def depth(self) -> int:
        """Number of dense layers (the hidden ReLU layers plus the output layer)."""
        return len(self.dense)

    def neurons(self):
        """Every hidden neuron as (layer, index), layer counted from 1."""
        for k, m in enumerate(self.masks, start=1):
            for i in range(m.size):
                yield (k, i)

    # ---- evaluation ---------------------------------------------------------------------------
    def forward(self, x: np.ndarray, return_pre: bool = False):
        """Evaluate on a batch x of shape (n, n_inputs) (or (n_inputs,)) in float64.

        With return_pre, also return the list of hidden pre-activations z_1..z_{L-1}, each (n, width).
        """
        x = np.asarray(x, dtype=np.float64)
        single = x.ndim == 1
        h = x.reshape(1, -1) if single else x.reshape(x.shape[0], -1)
        pre = []
        for layer in self.chain():
            if isinstance(layer, Dense):
                h = h @ layer.W.T + layer.b
            else:
                pre.append(h)
                h = np.where(layer.mask, np.maximum(h, 0.0), h)
        out = h[0] if single else h
        return (out, pre) if return_pre else out

    def with_layers(self, dense: list[Dense], masks: list[np.ndarray]) -> "Network":
        """A network with new layers but the same I/O names and shapes."""
        return Network.from_layers(
            dense, masks, input_name=self.input_name, output_name=self.output_name,
            input_shape=self.input_shape, output_shape=self.output_shape, meta=dict(self.meta),
        )

    def summary(self) -> dict:
        return {"relus": self.n_relus, "params": self.n_params, "depth": self.depth,
                "hidden_widths": self.hidden_widths}
