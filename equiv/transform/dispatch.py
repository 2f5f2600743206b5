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
so either answer is right.  The box constants are float32, rounded INWARD (lo up, hi down,
`spec.region.float32_inward`): a float32 input x then passes slice s's test exactly when x lies in
the real box s was proved on.  Every float32 input of the region lies in some slice's real box (the
boxes tile the region), so it is routed to a slice proved there, whatever the split points are.
(Rounding to nearest instead routed x = float32(0.1) > 0.1 to the slice [0, 0.1], where nothing was
proved: a wrong answer, unbounded in the weights.)  An input whose region interval holds no float32
(`float32_gaps`, e.g. one fixed at 0.3) is rounded to nearest at every limit: no float32 input lies in
such a region, and the dispatcher answers for the nearest one.

Inputs outside the region are clipped into it first, so the model answers for the nearest point of
the region: it is equivalent to the original only on the region, like every slice.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..ir.chain_export import model_around
from ..ir.network import Network
from ..spec.region import Box, float32_down, float32_gaps, float32_inward, float32_up


@dataclass
class ModelIO:
    """The one input and one output of a slice model: what `model_around` needs to wrap the routing."""

    input_name: str
    input_shape: tuple
    output_name: str
    output_shape: tuple
    n_inputs: int
    n_outputs: int
    meta: dict = field(default_factory=dict)     # `output_shape_computed` of a chain read from ONNX (see chain_export)


def network_io(net: Network) -> ModelIO:
    """The input and output of a chain (`Network`) as the slice models written from it have them."""
    keep = {k: v for k, v in net.meta.items() if k == "output_shape_computed"}
    return ModelIO(net.input_name, tuple(net.input_shape), net.output_name, tuple(net.output_shape), net.n_inputs,
                   net.n_outputs, keep)


def build_dispatcher(region: Box, boxes: list[Box], models: list[onnx.ModelProto], io: ModelIO,
                     producer: str = "equiv") -> onnx.ModelProto:
    """The dispatcher for slices `boxes[s]` given as the ONNX models written for them (one input, one output,
    the original's names and shapes): each model is inlined under its own name prefix, fed the clipped input
    in its shape.  A function of the models' graphs, the boxes and the region only, so `slice --verify`
    rebuilds it from the files to show the dispatcher is the routing of those slices."""
    if not boxes or len(boxes) != len(models):
        raise ValueError(f"need one model per slice box, got {len(boxes)} boxes and {len(models)} models")
    pieces = [lambda x, prefix, m=m: _inline(m, x, prefix, io) for m in models]
    return model_around(io, lambda x: _dispatch_nodes(x, region, boxes, pieces), "equiv_dispatch", producer)


def routing_limits(region: Box, boxes: list[Box]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(region lo, region hi, slice lo (S, n), slice hi (S, n)) as the float32 constants the dispatcher
    compares with: rounded inward, except on inputs where the region holds no float32 (nearest)."""
    gaps = float32_gaps(region)
    rlo, rhi = float32_inward(region)
    lo, hi = np.array([b.lo for b in boxes]), np.array([b.hi for b in boxes])
    lo32, hi32 = float32_up(lo), float32_down(hi)
    lo32[:, gaps], hi32[:, gaps] = lo[:, gaps].astype(np.float32), hi[:, gaps].astype(np.float32)
    return rlo, rhi, lo32, hi32


def _inline(model: onnx.ModelProto, x: str, prefix: str, io: ModelIO) -> tuple[list, list, str]:
    """(nodes, initializers, output) of `model` on the 2-D tensor x (N, n_inputs), every name prefixed; the
    output is reshaped to (N, n_outputs)."""
    g = model.graph
    if len(g.input) != 1 or len(g.output) != 1:
        raise ValueError("a graph dispatcher needs models with one input and one output")
    name = {"": ""}
    rename = lambda t: name.setdefault(t, prefix + t)  # noqa: E731
    taken = {t.name for t in g.initializer} | {t for n in g.node for t in list(n.input) + list(n.output)}
    taken |= {v.name for v in list(g.input) + list(g.output)}
    fresh = lambda base: prefix + next("_" * k + base for k in range(len(taken) + 1)  # noqa: E731
                                        if "_" * k + base not in taken)
    in_shape, out_shape, y2 = fresh("in_shape"), fresh("out_shape"), fresh("y2")
    inits = [numpy_helper.from_array(np.array([-1, *io.input_shape[1:]], np.int64), in_shape),
             numpy_helper.from_array(np.array([-1, io.n_outputs], np.int64), out_shape)]
    nodes = [helper.make_node("Reshape", [x, in_shape], [rename(g.input[0].name)])]
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
    nodes.append(helper.make_node("Reshape", [rename(g.output[0].name), out_shape], [y2]))
    return nodes, inits, y2


def _dispatch_nodes(x: str, region: Box, boxes: list[Box], pieces: list):
    """(nodes, initializers, output name) of the routing graph on the 2-D input tensor x; `pieces[s](x, prefix)`
    gives slice s's (nodes, initializers, output (N, n_outputs)) with every name prefixed."""
    inits = []

    def const(name, arr, dtype=np.float32):
        inits.append(numpy_helper.from_array(np.asarray(arr, dtype=dtype), name))
        return name

    node = helper.make_node
    rlo, rhi, lo, hi = routing_limits(region, boxes)
    nodes = [
        # clip into the region (per input; Clip only takes scalar limits)
        node("Min", [x, const("d_region_hi", rhi)], ["d_xmin"]),
        node("Max", ["d_xmin", const("d_region_lo", rlo)], ["d_x"]),
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
