"""The network as a DAG (networkx) of typed op nodes, one node per tensor, with its forward pass.

A node's name is the name of the tensor it computes; its attributes are the op (`equiv.ir.ops`) and the
ordered names of its arguments (a node may read one tensor twice, which the edge set cannot say).
Several inputs and outputs are allowed: a region's `X_i` indexes the inputs flattened in order (as
VNN-COMP does), and outputs are concatenated flattened in order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx
import numpy as np

from .ops import Op


@dataclass
class Graph:
    dag: nx.DiGraph
    inputs: list
    outputs: list
    meta: dict = field(default_factory=dict)
    order: list = field(default_factory=list)     # every node, in a topological order (filled by `build`)

    @classmethod
    def build(cls, nodes: list[tuple[str, Op, list]], inputs: list, outputs: list, meta: dict | None = None) -> "Graph":
        """A graph from (name, op, argument names) in any order consistent with the data flow."""
        dag = nx.DiGraph()
        for name, op, args in nodes:
            if name in dag:
                raise ValueError(f"tensor '{name}' is computed twice")
            dag.add_node(name, op=op, args=list(args))
            for a in args:
                if a not in dag:
                    raise ValueError(f"'{name}' reads '{a}' before it is computed")
                dag.add_edge(a, name)
        g = cls(dag, list(inputs), list(outputs), dict(meta or {}))
        g.order = list(nx.topological_sort(dag))
        return g

    # ---- structure -----------------------------------------------------------------------------
    def op(self, name: str) -> Op:
        return self.dag.nodes[name]["op"]

    def args(self, name: str) -> list:
        return self.dag.nodes[name]["args"]

    def shape(self, name: str) -> tuple:
        return tuple(self.op(name).shape)

    @property
    def relus(self) -> list:
        """The ReLU nodes in topological order."""
        return [n for n in self.order if self.op(n).kind == "relu"]

    @property
    def n_inputs(self) -> int:
        return int(sum(self.op(n).size for n in self.inputs))

    @property
    def n_outputs(self) -> int:
        return int(sum(self.op(n).size for n in self.outputs))

    @property
    def n_relus(self) -> int:
        """Positions that still pass through a ReLU."""
        return int(sum(self.op(n).n_relus for n in self.relus))

    @property
    def n_params(self) -> int:
        return int(sum(self.op(n).params for n in self.order))

    @property
    def n_mask_entries(self) -> int:
        """Mask constants of the masked ReLUs (not parameters: they only say which positions stay ReLUs)."""
        return int(sum(getattr(self.op(n), "mask_entries", 0) for n in self.relus))

    @property
    def n_macs(self) -> int:
        return int(sum(self.op(n).macs for n in self.order))

    def summary(self) -> dict:
        return {"relus": self.n_relus, "params": self.n_params, "macs": self.n_macs, "nodes": len(self.order),
                "relu_layers": len(self.relus)}

    # ---- evaluation ----------------------------------------------------------------------------
    def split_input(self, x: np.ndarray) -> dict:
        """(B, n_inputs) flat points -> {input name: (B, *shape)}."""
        x = np.atleast_2d(np.asarray(x, dtype=np.float64))
        out, k = {}, 0
        for name in self.inputs:
            op = self.op(name)
            out[name] = x[:, k:k + op.size].reshape((x.shape[0],) + tuple(op.shape))
            k += op.size
        if k != x.shape[1]:
            raise ValueError(f"expected {k} input values per point, got {x.shape[1]}")
        return out

    def evaluate(self, x: np.ndarray, given: dict | None = None) -> dict:
        """Every tensor's value on the batch of flat points x: {name: (B, *shape)}.  `given` values (of
        any tensors) are used instead of computing them (the import check feeds onnxruntime's values)."""
        vals = self.split_input(x)
        given = given or {}
        B = next(iter(vals.values())).shape[0] if vals else 1
        for name in self.order:
            if name in given:
                vals[name] = given[name]
                continue
            op = self.op(name)
            if op.kind == "input":
                continue
            if op.kind == "const":
                vals[name] = np.broadcast_to(op.value, (B,) + tuple(op.shape))
                continue
            vals[name] = op.forward(*[vals[a] for a in self.args(name)])
        return vals

    def forward(self, x: np.ndarray) -> np.ndarray:
        """(B, n_outputs): the outputs, flattened and concatenated, at the flat points x."""
        vals = self.evaluate(x)
        B = np.atleast_2d(x).shape[0]
        return np.concatenate([vals[o].reshape(B, -1) for o in self.outputs], axis=1)

    def gradient(self, x: np.ndarray, v: np.ndarray) -> np.ndarray:
        """(B, n_inputs): the gradient of v[b] . outputs at each point x[b] (v (n_outputs,) or (B, n_outputs)),
        back through each op's adjoint and each ReLU's derivative at the point (0 at 0)."""
        vals = self.evaluate(x)
        B = np.atleast_2d(x).shape[0]
        v = np.broadcast_to(np.asarray(v, np.float64), (B, self.n_outputs))
        A, k = {}, 0
        for o in self.outputs:
            n = self.op(o).size
            A[o] = A.get(o, 0) + v[:, k:k + n].reshape((B,) + self.shape(o))
            k += n
        grads = {}
        for name in reversed(self.order):
            if name not in A:
                continue
            a = A.pop(name)
            op = self.op(name)
            if op.kind == "input":
                grads[name] = a
            elif op.kind == "relu":
                z = self.args(name)[0]
                d = vals[z] > 0
                if hasattr(op, "relu_mask"):
                    d = np.where(op.relu_mask, d, op.linear_mask)
                A[z] = A.get(z, 0) + a * d
            elif op.kind == "linear":
                for arg, t in zip(self.args(name), op.transpose(a)):
                    A[arg] = A.get(arg, 0) + t
        return np.concatenate([np.broadcast_to(grads.get(n, 0.0), (B,) + self.shape(n)).reshape(B, -1)
                               for n in self.inputs], axis=1)
