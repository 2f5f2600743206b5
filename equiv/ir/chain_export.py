"""Network (chain of dense layers) -> ONNX: a clean opset-21 model with the original's input/output names,
a symbolic batch dimension, and equiv's partial-ReLU layers as Concat(Relu(Gemm h), Gemm h)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .network import Network

OPSET = 21
IR_VERSION = 10


def batched_shape(shape: tuple) -> tuple:
    """The shape with a symbolic batch dimension "N" first, where the original had a symbolic one or a fixed 1
    (a written model runs on batches of any size, as the README promises)."""
    shape = tuple(shape)
    if len(shape) >= 2 and (not isinstance(shape[0], int) or shape[0] in (0, 1)):
        return ("N",) + shape[1:]
    return shape


def _value_info(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, [d if isinstance(d, int) else str(d) for d in shape])


def fresh_name(name: str, taken: set) -> str:
    """`name`, or `name` with underscores added until it is none of `taken` (a model's own tensor names)."""
    while name in taken:
        name += "_"
    return name


def _int64(name, values):
    return numpy_helper.from_array(np.asarray(values, dtype=np.int64), name)


def network_to_onnx(net: Network, producer: str = "equiv") -> onnx.ModelProto:
    """A clean ONNX model computing net, with net's input/output names and shapes (float32 weights).

    A ReLU layer whose mask is partial becomes two Gemms: one followed by Relu (the ReLU neurons), one
    without (the linear channels), concatenated; the next layer's columns are permuted to match.
    """
    return model_around(net, lambda x: network_nodes(net, x), "equiv_simplified", producer)


def network_nodes(net: Network, x: str, prefix: str = "") -> tuple[list, list, str]:
    """(nodes, initializers, output name) computing net's logits (N, n_outputs) from the 2-D tensor `x`
    (N, n_inputs); every name they create starts with `prefix`, so several networks fit in one graph."""
    nodes, inits = [], []
    if len(net.dense) == 1 and not net.dense[0].W.any():
        # a constant model: (N, n_in) @ zeros (n_in, 1) + b broadcasts to (N, n_out) without a zero matrix
        inits += [numpy_helper.from_array(np.zeros((net.n_inputs, 1), np.float32), prefix + "zero"),
                  numpy_helper.from_array(net.dense[0].b.astype(np.float32), prefix + "b1")]
        nodes += [helper.make_node("MatMul", [x, prefix + "zero"], [prefix + "z1"]),
                  helper.make_node("Add", [prefix + "z1", prefix + "b1"], [prefix + "logits"])]
        return nodes, inits, prefix + "logits"

    def const(name, arr):
        inits.append(numpy_helper.from_array(np.asarray(arr, dtype=np.float32), prefix + name))
        return prefix + name

    h, perm = x, None  # perm: order of the previous layer's neurons in tensor h
    dense, masks = net.dense, net.masks
    for k, layer in enumerate(dense, start=1):
        W = layer.W if perm is None else layer.W[:, perm]
        if k == len(dense):
            nodes.append(helper.make_node("Gemm", [h, const(f"W{k}", W), const(f"b{k}", layer.b)], [prefix + "logits"],
                                          transB=1))
            break
        m = masks[k - 1]
        relu_idx, lin_idx = np.flatnonzero(m), np.flatnonzero(~m)
        parts = []
        if relu_idx.size:
            nodes.append(helper.make_node("Gemm", [h, const(f"W{k}r", W[relu_idx]), const(f"b{k}r", layer.b[relu_idx])],
                                          [f"{prefix}z{k}r"], transB=1))
            nodes.append(helper.make_node("Relu", [f"{prefix}z{k}r"], [f"{prefix}h{k}r"]))
            parts.append(f"{prefix}h{k}r")
        if lin_idx.size:
            nodes.append(helper.make_node("Gemm", [h, const(f"W{k}l", W[lin_idx]), const(f"b{k}l", layer.b[lin_idx])],
                                          [f"{prefix}h{k}l"], transB=1))
            parts.append(f"{prefix}h{k}l")
        if len(parts) == 2:
            nodes.append(helper.make_node("Concat", parts, [f"{prefix}h{k}"], axis=1))
            h = f"{prefix}h{k}"
        else:
            h = parts[0]
        # tensor h holds the neurons in the order [relu_idx, lin_idx]: permute the next layer's columns
        perm = np.concatenate([relu_idx, lin_idx])
    return nodes, inits, prefix + "logits"


def model_around(net: Network, body, graph_name: str, producer: str = "equiv") -> onnx.ModelProto:
    """A checked model with net's input/output names and shapes around `body(x) -> (nodes, inits, y)`,
    which maps the input reshaped to x = (N, n_inputs) to y = (N, n_outputs)."""
    io = {net.input_name, net.output_name}
    body_nodes, inits, y = body(fresh_name("h0", io))
    # the body's own names (h0, logits, W1, ...) must not be the model's input or output name
    internal = {o for n in body_nodes for o in n.output} | {t.name for t in inits}
    rename = {}
    for name in sorted(internal & io):
        rename[name] = fresh_name(name, io | internal | set(rename.values()))
    for n in body_nodes:
        n.input[:] = [rename.get(a, a) for a in n.input]
        n.output[:] = [rename.get(a, a) for a in n.output]
    for t in inits:
        t.name = rename.get(t.name, t.name)
    y = rename.get(y, y)
    taken = io | internal | set(rename.values())
    in_shape = fresh_name("in_shape", taken)
    out_shape_name = fresh_name("out_shape", taken | {in_shape})
    # batch dimension (first) left free so the model also runs on batches; the others are fixed
    computed = getattr(net, "meta", {}).get("output_shape_computed")   # the shape the model computes for one input
    declared = tuple(net.output_shape)
    if computed is not None:
        # the computed shape, its first axis free where the declaration has a batch axis (symbolic, or a fixed
        # 1 that `batched_shape` frees): a declared ['N'] or ['N', 'a', 'b'] was written as (N, outputs)
        batch = bool(computed) and bool(declared) and (not isinstance(declared[0], int)
                                                      or (len(declared) >= 2 and declared[0] in (0, 1)))
        out_shape = ([-1] + list(computed[1:])) if batch else list(computed)
    else:
        rest = list(declared[1:])
        out_shape = [-1] + rest if rest and all(isinstance(d, int) and d > 0 for d in rest) else [-1, net.n_outputs]
        if declared and batched_shape(declared)[0] != "N" and all(isinstance(d, int) and d > 0 for d in declared):
            out_shape = list(declared)       # no batch axis (e.g. a rank-1 output): exactly the declared shape
    nodes = [helper.make_node("Reshape", [net.input_name, in_shape], [fresh_name("h0", io)]), *body_nodes,
             helper.make_node("Reshape", [y, out_shape_name], [net.output_name])]
    inits = [_int64(in_shape, [-1, net.n_inputs]), *inits, _int64(out_shape_name, out_shape)]
    graph = helper.make_graph(nodes, graph_name, [_value_info(net.input_name, batched_shape(net.input_shape))],
                              [_value_info(net.output_name, batched_shape(net.output_shape))], inits)
    model = helper.make_model(graph, producer_name=producer, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def stored_params(model: onnx.ModelProto) -> int:
    """Weights and biases as stored in the file: the elements of its floating-point initializers."""
    floats = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE)
    return int(sum(np.prod(t.dims, dtype=np.int64) for t in model.graph.initializer if t.data_type in floats))
