"""A compression candidate: a chain network, how each dense layer is stored (ranks), how its weights are
rounded, and the ONNX model that results; plus the size measures every candidate is compared by."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ...ir.chain_export import network_to_onnx
from ...ir.network import Network
from .lowrank import truncate
from .quantize import round_weights


@dataclass
class Candidate:
    """One model to certify.  `net` computes the candidate's function (factored layers multiplied out, so
    later makers can build on it); `ranks[k]` (None: stored whole) says how dense layer k+1 is written;
    `weights` says how the written weights are rounded ("float32", "float16" or "int8")."""

    name: str
    maker: str
    level: float | None
    net: Network
    ranks: list = field(default_factory=list)
    weights: str = "float32"
    parent: str | None = None
    note: str = ""
    record: tuple | None = None     # (original's sha256, dead, active): the exact reduction's phases (`carried`)

    def to_onnx(self) -> onnx.ModelProto:
        model = network_to_onnx(self.net)
        if self.record is not None and all(r is None for r in self.ranks) and self.weights == "float32":
            # the exact simplification carries its phases, so its check re-proves them instead of searching
            from ...prove.carried import attach_claims
            attach_claims(model, *self.record)
        if any(r is not None for r in self.ranks):
            model = factor_layers(model, self.net, self.ranks)
        if self.weights != "float32":
            model = round_weights(model, self.weights)
        return model


def _layer_weights(model: onnx.ModelProto, k: int) -> list[str]:
    """Names of the weight initializers `network_to_onnx` wrote for dense layer k (ReLU rows, then linear rows)."""
    names = {t.name for t in model.graph.initializer}
    return [n for n in (f"W{k}", f"W{k}r", f"W{k}l") if n in names]


def factor_layers(model: onnx.ModelProto, net: Network, ranks: list) -> onnx.ModelProto:
    """Rewrite each dense layer k with ranks[k-1] = r as Gemm(h, V) followed by the layer's own Gemms with U:
    the ReLU rows and the linear rows of a partial-ReLU layer share V and split U by rows."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    nodes = list(g.node)
    for k, r in enumerate(ranks, start=1):
        wnames = _layer_weights(model, k)
        if r is None or not wnames:      # (a constant model, x @ 0 + b, writes no such weights: nothing to factor)
            continue
        mats = [numpy_helper.to_array(inits[n]).astype(np.float64) for n in wnames]
        U, V = truncate(np.vstack(mats), r)
        users = [i for i, nd in enumerate(nodes) if nd.op_type == "Gemm" and nd.input[1] in wnames]
        x = nodes[users[0]].input[0]
        inits[f"V{k}"] = numpy_helper.from_array(V.astype(np.float32), f"V{k}")
        row = 0
        for n, M in zip(wnames, mats):
            inits[n].CopyFrom(numpy_helper.from_array(U[row:row + M.shape[0]].astype(np.float32), n))
            row += M.shape[0]
        for i in users:
            nodes[i].input[0] = f"t{k}"
        nodes.insert(users[0], helper.make_node("Gemm", [x, f"V{k}"], [f"t{k}"], transB=1, name=f"lowrank_{k}"))
    del g.node[:]
    g.node.extend(nodes)
    del g.initializer[:]
    g.initializer.extend(inits.values())
    onnx.checker.check_model(model)
    return model


@dataclass(frozen=True)
class Size:
    """What a model costs: stored weights and biases, the non-zero ones, multiply-adds per input, file bytes."""

    params: int
    nonzero: int
    macs: int
    file_bytes: int

    def to_json(self) -> dict:
        return {"params": self.params, "nonzero": self.nonzero, "macs": self.macs, "file_bytes": self.file_bytes}


def size_of(model: onnx.ModelProto) -> Size:
    """Sizes of a model written by `Candidate.to_onnx`: the float initializers read by Gemm nodes (weights and
    biases), their non-zeros, one MAC per weight, and the serialized size."""
    inits = {t.name: t for t in model.graph.initializer}
    params = nonzero = macs = 0
    for nd in model.graph.node:
        if nd.op_type != "Gemm":
            continue
        for pos, name in enumerate(nd.input[1:3], start=1):
            if name in inits:
                a = numpy_helper.to_array(inits[name])
                params += a.size
                nonzero += int(np.count_nonzero(a))
                macs += a.size if pos == 1 else 0
    return Size(params, nonzero, macs, model.ByteSize())
