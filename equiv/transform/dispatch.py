"""The dispatcher: ONE ONNX model that routes each input to the network of the slice containing it.

    x ─reshape─▶ X (N, n) ─clip into the region─▶ Xc
    inside[s]  = all_i (lo[s, i] <= Xc_i <= hi[s, i])          (N, S) in {0, 1}, boxes closed
    first[s]   = inside[s] * (cumsum(inside)[s] == 1)            one-hot of the FIRST box containing Xc
    y          = sum_s first[s] * slice_s(Xc)                    (N, m), then reshaped to the output shape

Batches: every slice network runs on the whole batch and the one-hot picks one row per input, so a
batch of any size N gives N independent answers.  Multiplying by exactly 1.0 and 0.0 and adding
zeros is exact in float32, so the selected slice's output comes through bit for bit.

Boundaries: slices are closed boxes; an input on a face shared by two slices lies in both, and the
first one (in slice-id order) is taken.  Both are exact there (each was proved on its own closed box),
so either answer is right.  The box constants are float32: a shared face comes from ONE float64
midpoint, so both slices round it to the same float32, and because rounding is monotone the float32
boxes still tile the float32 region, leaving no float32 input in a gap.  (A float32 box may reach a
rounding step outside its float64 box; the slice network is continuous, so the effect is float32
rounding noise, which the validation measures.)

Inputs outside the region are clipped into it first, so the model answers for the nearest point of
the region: it is equivalent to the original only on the region, like every slice.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..ir.chain_export import model_around, network_nodes
from ..ir.network import Network
from ..spec.region import Box


def build_dispatcher(region: Box, boxes: list[Box], nets: list[Network], producer: str = "equiv") -> onnx.ModelProto:
    """The dispatcher model for slices `boxes[s]` with networks `nets[s]` (same I/O as the original)."""
    if not boxes or len(boxes) != len(nets):
        raise ValueError(f"need one network per slice box, got {len(boxes)} boxes and {len(nets)} networks")
    io = {(n.input_name, tuple(n.input_shape), n.output_name, tuple(n.output_shape), n.n_inputs, n.n_outputs)
          for n in nets}
    if len(io) != 1:
        raise ValueError("all slice networks must have the same input/output names and shapes")
    pieces = [lambda x, prefix, net=net: network_nodes(net, x, prefix=prefix) for net in nets]
    return model_around(nets[0], lambda x: _dispatch_nodes(x, region, boxes, pieces), "equiv_dispatch", producer)


@dataclass
class GraphIO:
    """The one input and one output of a graph model: what `model_around` needs to wrap the routing."""

    input_name: str
    input_shape: tuple
    output_name: str
    output_shape: tuple
    n_inputs: int
    n_outputs: int


def build_graph_dispatcher(region: Box, boxes: list[Box], models: list[onnx.ModelProto], io: GraphIO,
                           producer: str = "equiv") -> onnx.ModelProto:
    """The dispatcher for slices given as ONNX models of one graph (1 input, 1 output, the original's names
    and shapes): each model is inlined under its own name prefix, fed the clipped input in its shape."""
    if not boxes or len(boxes) != len(models):
        raise ValueError(f"need one model per slice box, got {len(boxes)} boxes and {len(models)} models")
    pieces = [lambda x, prefix, m=m: _inline(m, x, prefix, io) for m in models]
    return model_around(io, lambda x: _dispatch_nodes(x, region, boxes, pieces), "equiv_dispatch", producer)


def _inline(model: onnx.ModelProto, x: str, prefix: str, io: GraphIO) -> tuple[list, list, str]:
    """(nodes, initializers, output) of `model` on the 2-D tensor x (N, n_inputs), every name prefixed; the
    output is reshaped to (N, n_outputs)."""
    g = model.graph
    if len(g.input) != 1 or len(g.output) != 1:
        raise ValueError("a graph dispatcher needs models with one input and one output")
    name = {"": ""}
    rename = lambda t: name.setdefault(t, prefix + t)  # noqa: E731
    inits = [numpy_helper.from_array(np.array([-1, *io.input_shape[1:]], np.int64), prefix + "in_shape"),
             numpy_helper.from_array(np.array([-1, io.n_outputs], np.int64), prefix + "out_shape")]
    nodes = [helper.make_node("Reshape", [x, prefix + "in_shape"], [rename(g.input[0].name)])]
    for t in g.initializer:
        c = onnx.TensorProto()
        c.CopyFrom(t)
        c.name = rename(t.name)
        inits.append(c)
    for n in g.node:
        c = onnx.NodeProto()
        c.CopyFrom(n)
        c.name = prefix + n.name if n.name else ""
        c.input[:] = [rename(t) for t in n.input]
        c.output[:] = [rename(t) for t in n.output]
        nodes.append(c)
    nodes.append(helper.make_node("Reshape", [rename(g.output[0].name), prefix + "out_shape"], [prefix + "y2"]))
    return nodes, inits, prefix + "y2"


def _dispatch_nodes(x: str, region: Box, boxes: list[Box], pieces: list):
    """(nodes, initializers, output name) of the routing graph on the 2-D input tensor x; `pieces[s](x, prefix)`
    gives slice s's (nodes, initializers, output (N, n_outputs)) with every name prefixed."""
    inits = []

    def const(name, arr, dtype=np.float32):
        inits.append(numpy_helper.from_array(np.asarray(arr, dtype=dtype), name))
        return name

    node = helper.make_node
    lo = np.array([b.lo for b in boxes])
    hi = np.array([b.hi for b in boxes])
    nodes = [
        # clip into the region (per input; Clip only takes scalar limits)
        node("Min", [x, const("d_region_hi", region.hi)], ["d_xmin"]),
        node("Max", ["d_xmin", const("d_region_lo", region.lo)], ["d_x"]),
        # (N, 1, n) against (S, n): per slice and input, is lo <= x <= hi
        node("Unsqueeze", ["d_x", const("d_axis1", [1], np.int64)], ["d_x3"]),
        node("GreaterOrEqual", ["d_x3", const("d_lo", lo)], ["d_ge"]),
        node("LessOrEqual", ["d_x3", const("d_hi", hi)], ["d_le"]),
        node("And", ["d_ge", "d_le"], ["d_in_dims"]),
        node("Cast", ["d_in_dims"], ["d_in_dims_f"], to=onnx.TensorProto.FLOAT),
        node("ReduceMin", ["d_in_dims_f", const("d_axis2", [2], np.int64)], ["d_inside"], keepdims=0),
        # one-hot of the first containing slice: inside and the running count of containing slices is 1
        node("CumSum", ["d_inside", const("d_axis1_scalar", 1, np.int64)], ["d_count"]),
        node("Equal", ["d_count", const("d_one", 1.0)], ["d_is_first"]),
        node("Cast", ["d_is_first"], ["d_is_first_f"], to=onnx.TensorProto.FLOAT),
        node("Mul", ["d_inside", "d_is_first_f"], ["d_onehot"]),
        node("Unsqueeze", ["d_onehot", "d_axis2"], ["d_weights"]),
    ]
    outs = []
    for s, piece in enumerate(pieces):
        n_nodes, n_inits, y = piece("d_x", f"s{s:03d}_")
        nodes += n_nodes + [node("Unsqueeze", [y, "d_axis1"], [f"s{s:03d}_y3"])]
        inits += n_inits
        outs.append(f"s{s:03d}_y3")
    nodes += [
        node("Concat", outs, ["d_all"], axis=1),                       # (N, S, m)
        node("Mul", ["d_all", "d_weights"], ["d_picked"]),
        node("ReduceSum", ["d_picked", "d_axis1"], ["d_y"], keepdims=0),  # (N, m)
    ]
    return nodes, inits, "d_y"
