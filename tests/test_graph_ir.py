"""The graph IR (equiv.ir): each ONNX op's lowering against onnxruntime, the adjoint/|L| contract of every
linear op, convolution geometry under hypothesis, the node-by-node import check, and the shared networks.

onnxruntime always runs at ORT_ENABLE_BASIC: the extended optimisation level fuses MatMul chains into a
FusedMatMul that computes a wrong result on some of these graphs (a known onnxruntime bug).
"""

from __future__ import annotations

import dataclasses
import zlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from conftest import ACAS, CIFAR, CIFAR_REFERENCE, MNIST, acas_path, load_box, load_graph_cached, needs_bench, \
    needs_cifar
from equiv.errors import ImportMismatchError, UnsupportedModelError
from equiv.ir import Graph, graph_from_onnx
from equiv.ir import ops
from equiv.ir.check import check_graph
from equiv.ir.conv import ConvGeometry, conv_forward, conv_transpose

# ---- building and running tiny ONNX models ------------------------------------------------------------


def f32(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float32)


def make_model(nodes, inputs, outputs, inits=None, opset: int = 13) -> onnx.ModelProto:
    """inputs: [(name, shape)]; outputs: [name]; inits: {name: array} (integer arrays stay int64)."""
    tensors = []
    for name, v in (inits or {}).items():
        v = np.asarray(v)
        dtype = np.int64 if v.dtype.kind in "iu" else np.bool_ if v.dtype.kind == "b" else np.float32
        tensors.append(numpy_helper.from_array(v.astype(dtype), name))
    graph = helper.make_graph(nodes, "t", [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(s))
                                           for n, s in inputs],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs], tensors)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 7

    return m


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def ort_forward(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """(B, n_outputs): onnxruntime's outputs, flattened and concatenated, at flat points x (one run per point,
    the inputs taking the shapes the model declares, the flat vector split in input order)."""
    sess = session(model)
    shapes = [(i.name, tuple(d.dim_value or 1 for d in i.type.tensor_type.shape.dim)) for i in model.graph.input
              if i.name not in {t.name for t in model.graph.initializer}]
    rows = []
    for row in np.atleast_2d(x):
        feed, k = {}, 0
        for name, shape in shapes:
            n = int(np.prod(shape))
            feed[name] = f32(row[k:k + n]).reshape(shape)
            k += n
        assert k == row.size
        rows.append(np.concatenate([np.asarray(o, np.float64).reshape(-1) for o in sess.run(None, feed)]))
    return np.array(rows)


def assert_matches_ort(model, g: Graph, x: np.ndarray, rtol=1e-5, atol=1e-5):
    x = f32(x).astype(np.float64)                       # both sides see the same float32 points
    ours, theirs = g.forward(x), ort_forward(model, x)
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    scale = max(1.0, float(np.abs(theirs).max()))
    np.testing.assert_allclose(ours, theirs, rtol=rtol, atol=atol * scale)


def points(g: Graph, rng, n: int = 8) -> np.ndarray:
    """n flat points at several scales."""
    return rng.normal(size=(n, g.n_inputs)) * np.array([1.0, 0.1, 3.0, 1.0] * n)[:n, None]


# ---- one model per op and form ------------------------------------------------------------------------

CASES: dict = {}


def case(name):
    def deco(fn):
        CASES[name] = fn
        return fn
    return deco


def _conv_case(name, in_shape, w_shape, bias=True, **attrs):
    @case(f"conv_{name}")
    def build(rng):
        inits = {"W": rng.normal(size=w_shape)}
        ins = ["x", "W"]
        if bias:
            inits["B"] = rng.normal(size=w_shape[0])
            ins.append("B")
        return make_model([helper.make_node("Conv", ins, ["y"], **attrs)], [("x", in_shape)], ["y"], inits)


_conv_case("plain", (1, 3, 6, 7), (4, 3, 3, 3))
_conv_case("groups2", (1, 4, 6, 6), (6, 2, 3, 3), group=2)
_conv_case("depthwise", (1, 3, 5, 5), (3, 1, 3, 3), group=3)
_conv_case("strides_pads", (1, 2, 7, 6), (3, 2, 3, 2), strides=[2, 1], pads=[1, 0, 2, 1])
_conv_case("dilations", (1, 2, 7, 7), (2, 2, 3, 2), dilations=[2, 1], pads=[2, 1, 2, 1])
_conv_case("nobias", (1, 2, 5, 5), (3, 2, 2, 2), bias=False, strides=[2, 2], pads=[1, 1, 0, 0])
_conv_case("same_upper", (1, 2, 7, 6), (3, 2, 3, 2), auto_pad="SAME_UPPER", strides=[2, 2])
_conv_case("same_upper_s1", (1, 2, 5, 6), (2, 2, 2, 4), auto_pad="SAME_UPPER")
_conv_case("same_lower", (1, 2, 7, 6), (3, 2, 2, 2), auto_pad="SAME_LOWER", strides=[2, 2])
_conv_case("valid", (1, 2, 7, 6), (3, 2, 3, 3), auto_pad="VALID", strides=[2, 1])
_conv_case("groups_all", (1, 6, 8, 7), (4, 3, 3, 2), group=2, strides=[2, 3], pads=[0, 2, 1, 1],
           dilations=[1, 2])


def _pool_case(name, in_shape, **attrs):
    @case(f"avgpool_{name}")
    def build(rng):
        return make_model([helper.make_node("AveragePool", ["x"], ["y"], **attrs)], [("x", in_shape)], ["y"])


_pool_case("pads_exclude", (1, 2, 6, 6), kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=0)
_pool_case("pads_include", (1, 2, 6, 6), kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1)
_pool_case("strides", (1, 2, 6, 7), kernel_shape=[2, 2], strides=[2, 2])
_pool_case("strides_asym_pads", (1, 2, 7, 6), kernel_shape=[3, 2], strides=[2, 1], pads=[1, 0, 0, 1])
_pool_case("strides_asym_pads_incl", (1, 2, 7, 6), kernel_shape=[3, 2], strides=[2, 1], pads=[1, 0, 0, 1],
           count_include_pad=1)


@case("pad_opset9_attr")
def _(rng):
    node = helper.make_node("Pad", ["x"], ["y"], mode="constant", pads=[0, 1, 1, 0, 0, 0, 2, 1], value=0.5)
    return make_model([node], [("x", (1, 2, 3, 3))], ["y"], opset=9)


@case("pad_opset9_zero")
def _(rng):
    node = helper.make_node("Pad", ["x"], ["y"], pads=[0, 0, 1, 2, 0, 0, 2, 1])
    return make_model([node], [("x", (1, 2, 3, 3))], ["y"], opset=9)


@case("pad_opset13_input")
def _(rng):
    node = helper.make_node("Pad", ["x", "p", "v"], ["y"], mode="constant")
    return make_model([node], [("x", (1, 2, 3, 3))], ["y"],
                      {"p": np.array([0, 1, 1, 0, 0, 0, 2, 1]), "v": np.array(-1.5)})


@case("pad_opset13_novalue")
def _(rng):
    node = helper.make_node("Pad", ["x", "p"], ["y"])
    return make_model([node], [("x", (1, 4))], ["y"], {"p": np.array([0, 2, 0, 3])})


@case("batchnorm_nchw")
def _(rng):
    node = helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], epsilon=1e-3)
    return make_model([node], [("x", (1, 3, 4, 4))], ["y"],
                      {"s": rng.normal(size=3), "b": rng.normal(size=3), "m": rng.normal(size=3),
                       "v": rng.uniform(0.1, 2.0, size=3)})


@case("batchnorm_nc")
def _(rng):
    node = helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"])
    return make_model([node], [("x", (1, 5))], ["y"],
                      {"s": rng.normal(size=5), "b": rng.normal(size=5), "m": rng.normal(size=5),
                       "v": rng.uniform(0.1, 2.0, size=5)})


def _gemm_case(transA, transB, c_shape):
    @case(f"gemm_tA{transA}_tB{transB}_C{'none' if c_shape is None else 'x'.join(map(str, c_shape)) or 'scalar'}")
    def build(rng):
        in_shape = (3, 1) if transA else (1, 3)
        inits = {"W": rng.normal(size=(4, 3) if transB else (3, 4))}
        ins = ["x", "W"]
        if c_shape is not None:
            inits["C"] = rng.normal(size=c_shape)
            ins.append("C")
        node = helper.make_node("Gemm", ins, ["y"], transA=transA, transB=transB, alpha=0.5, beta=2.0)
        return make_model([node], [("x", in_shape)], ["y"], inits)


for _tA in (0, 1):
    for _tB in (0, 1):
        for _c in (None, (4,), (1, 4), ()):
            _gemm_case(_tA, _tB, _c)


def _matmul_case(name, in_shape, w_shape, left=False):
    @case(f"matmul_{name}")
    def build(rng):
        ins = ["W", "x"] if left else ["x", "W"]
        return make_model([helper.make_node("MatMul", ins, ["y"])], [("x", in_shape)], ["y"],
                          {"W": rng.normal(size=w_shape)})


_matmul_case("tensor_2d", (1, 3), (3, 4))
_matmul_case("tensor_1d", (2, 3), (3,))
_matmul_case("rank3_tensor_2d", (1, 2, 3), (3, 4))
_matmul_case("const_tensor", (4, 3), (2, 4), left=True)
_matmul_case("const_rank3_tensor", (1, 4, 3), (2, 4), left=True)
_matmul_case("rank4_tensor_batched_3d", (1, 2, 2, 3), (2, 3, 4))      # a constant with batch axes: MatMulConst


@case("transpose_perm")
def _(rng):
    return make_model([helper.make_node("Transpose", ["x"], ["y"], perm=[0, 2, 3, 1])], [("x", (1, 2, 3, 4))], ["y"])


@case("transpose_default")
def _(rng):
    return make_model([helper.make_node("Transpose", ["x"], ["y"])], [("x", (1, 2, 3, 4))], ["y"])


def _concat_case(name, in_shape, const_shape, axis, const_first=False):
    @case(f"concat_{name}")
    def build(rng):
        ins = ["c", "x"] if const_first else ["x", "c"]
        return make_model([helper.make_node("Concat", ins, ["y"], axis=axis)], [("x", in_shape)], ["y"],
                          {"c": rng.normal(size=const_shape)})


_concat_case("const_axis1", (1, 3), (1, 2), 1)
_concat_case("const_first_axis1", (1, 2, 3), (1, 1, 3), 1, const_first=True)
_concat_case("const_axis_neg1", (1, 2, 3), (1, 2, 2), -1)
_concat_case("const_axis0", (1, 3), (2, 3), 0)
_concat_case("const_axis2_nchw", (1, 2, 3, 2), (1, 2, 1, 2), 2, const_first=True)


@case("concat_self_and_branch")
def _(rng):
    nodes = [helper.make_node("MatMul", ["x", "W"], ["a"]), helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("Concat", ["x", "r", "x"], ["y"], axis=1)]
    return make_model(nodes, [("x", (1, 3))], ["y"], {"W": rng.normal(size=(3, 2))})


@case("add_residual")
def _(rng):
    nodes = [helper.make_node("Gemm", ["x", "W1", "b1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "W2", "b2"], ["v"]), helper.make_node("Add", ["v", "x"], ["s"]),
             helper.make_node("Relu", ["s"], ["y"])]
    return make_model(nodes, [("x", (1, 4))], ["y"], {"W1": rng.normal(size=(4, 5)), "b1": rng.normal(size=5),
                                                       "W2": rng.normal(size=(5, 4)), "b2": rng.normal(size=4)})


@case("add_conv_residual")
def _(rng):
    nodes = [helper.make_node("Conv", ["x", "W1", "b1"], ["h"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Conv", ["r", "W2"], ["v"], pads=[1, 1, 1, 1]), helper.make_node("Add", ["x", "v"], ["y"])]
    return make_model(nodes, [("x", (1, 2, 4, 4))], ["y"], {"W1": rng.normal(size=(3, 2, 3, 3)), "b1": rng.normal(size=3),
                                                             "W2": rng.normal(size=(2, 3, 3, 3))})


@case("add_row_and_column")
def _(rng):
    """(1,4) + its (4,1) reshape broadcast to (4,4)."""
    nodes = [helper.make_node("Reshape", ["x", "s"], ["c"]), helper.make_node("Add", ["x", "c"], ["y"])]
    return make_model(nodes, [("x", (1, 4))], ["y"], {"s": np.array([4, 1])})


@case("sub_column_and_row")
def _(rng):
    nodes = [helper.make_node("Reshape", ["x", "s"], ["c"]), helper.make_node("Sub", ["c", "x"], ["y"])]
    return make_model(nodes, [("x", (1, 4))], ["y"], {"s": np.array([4, 1])})


@case("sub_tensors")
def _(rng):
    nodes = [helper.make_node("MatMul", ["x", "A"], ["a"]), helper.make_node("MatMul", ["x", "B"], ["b"]),
             helper.make_node("Sub", ["a", "b"], ["y"])]
    return make_model(nodes, [("x", (1, 3))], ["y"], {"A": rng.normal(size=(3, 4)), "B": rng.normal(size=(3, 4))})


def _const_binary_case(name, op, in_shape, c_shape, const_first=False, nonzero=False):
    @case(f"{op.lower()}_{name}")
    def build(rng):
        c = rng.uniform(0.5, 2.0, size=c_shape) * rng.choice([-1, 1], size=c_shape) if nonzero \
            else rng.normal(size=c_shape)
        ins = ["c", "x"] if const_first else ["x", "c"]
        return make_model([helper.make_node(op, ins, ["y"])], [("x", in_shape)], ["y"], {"c": c})


_const_binary_case("const_right", "Sub", (1, 4), (4,))
_const_binary_case("const_left", "Sub", (1, 4), (1, 4), const_first=True)
_const_binary_case("const_left_scalar", "Sub", (1, 3, 2), (), const_first=True)
_const_binary_case("const_enlarges_right", "Sub", (1, 4), (3, 1))
_const_binary_case("const_enlarges_left", "Sub", (1, 4), (3, 1), const_first=True)
_const_binary_case("const_enlarges", "Add", (1, 4), (2, 3, 1), const_first=True)
_const_binary_case("const_bcast", "Add", (1, 3, 4), (3, 1))
_const_binary_case("bcast_last", "Mul", (1, 3, 4), (4,))
_const_binary_case("bcast_first", "Mul", (1, 3, 4), (3, 1), const_first=True)
_const_binary_case("scalar", "Mul", (1, 3), ())
_const_binary_case("bcast", "Div", (1, 3, 4), (1, 3, 1), nonzero=True)
_const_binary_case("scalar", "Div", (1, 5), (), nonzero=True)


@case("neg")
def _(rng):
    return make_model([helper.make_node("Neg", ["x"], ["y"])], [("x", (1, 2, 3))], ["y"])


@case("flatten_axis1")
def _(rng):
    return make_model([helper.make_node("Flatten", ["x"], ["y"])], [("x", (1, 2, 3, 4))], ["y"])


@case("flatten_axis2")
def _(rng):
    return make_model([helper.make_node("Flatten", ["x"], ["y"], axis=2)], [("x", (1, 2, 3, 4))], ["y"])


@case("reshape_zero_minus1")
def _(rng):
    return make_model([helper.make_node("Reshape", ["x", "s"], ["y"])], [("x", (1, 2, 3, 4))], ["y"],
                      {"s": np.array([0, 3, -1])})


@case("squeeze_opset13")
def _(rng):
    return make_model([helper.make_node("Squeeze", ["x", "a"], ["y"])], [("x", (1, 2, 1, 3))], ["y"],
                      {"a": np.array([2])})


@case("squeeze_opset11_attr")
def _(rng):
    return make_model([helper.make_node("Squeeze", ["x"], ["y"], axes=[0, 2])], [("x", (1, 2, 1, 3))], ["y"],
                      opset=11)


@case("unsqueeze_opset13")
def _(rng):
    return make_model([helper.make_node("Unsqueeze", ["x", "a"], ["y"])], [("x", (2, 3))], ["y"],
                      {"a": np.array([0, 3])})


@case("unsqueeze_opset11_attr")
def _(rng):
    return make_model([helper.make_node("Unsqueeze", ["x"], ["y"], axes=[1])], [("x", (2, 3))], ["y"], opset=11)


@case("identity_dropout_constant")
def _(rng):
    W = numpy_helper.from_array(f32(rng.normal(size=(3, 2))), "Wc")
    nodes = [helper.make_node("Identity", ["x"], ["i"]), helper.make_node("Dropout", ["i"], ["d"]),
             helper.make_node("Constant", [], ["W"], value=W), helper.make_node("MatMul", ["d", "W"], ["y"])]
    return make_model(nodes, [("x", (1, 3))], ["y"])


@case("two_inputs")
def _(rng):
    nodes = [helper.make_node("Gemm", ["x1", "A", "b"], ["a"]), helper.make_node("MatMul", ["x2", "B"], ["c"]),
             helper.make_node("Add", ["a", "c"], ["s"]), helper.make_node("Relu", ["s"], ["r"]),
             helper.make_node("Concat", ["r", "x2"], ["y"], axis=1)]
    return make_model(nodes, [("x1", (1, 3)), ("x2", (1, 2))], ["y"],
                      {"A": rng.normal(size=(3, 4)), "b": rng.normal(size=4), "B": rng.normal(size=(2, 4))})


@case("two_outputs")
def _(rng):
    nodes = [helper.make_node("Gemm", ["x", "A", "b"], ["a"]), helper.make_node("Relu", ["a"], ["y1"]),
             helper.make_node("MatMul", ["y1", "B"], ["y2"])]
    return make_model(nodes, [("x", (1, 3))], ["y2", "y1"],
                      {"A": rng.normal(size=(3, 4)), "b": rng.normal(size=4), "B": rng.normal(size=(4, 2))})


@case("two_inputs_two_outputs_nchw")
def _(rng):
    nodes = [helper.make_node("Conv", ["x1", "W"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Add", ["r", "x2"], ["y1"]), helper.make_node("Flatten", ["y1"], ["f"]),
             helper.make_node("Gemm", ["f", "G"], ["y2"], transB=1)]
    return make_model(nodes, [("x1", (1, 1, 3, 3)), ("x2", (1, 2, 3, 3))], ["y1", "y2"],
                      {"W": rng.normal(size=(2, 1, 3, 3)), "G": rng.normal(size=(3, 18))})


def _simple_case(name, nodes, inputs, outputs=("y",), inits=None, opset=13):
    """A case whose constants are fixed or drawn from shapes: inits {name: array | shape tuple}."""
    @case(name)
    def build(rng):
        vals = {k: (rng.normal(size=v) if isinstance(v, tuple) else v) for k, v in (inits or {}).items()}
        return make_model(nodes(), inputs, list(outputs), vals, opset)


N = helper.make_node
_simple_case("maxpool_2x2_s2", lambda: [N("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2])],
             [("x", (1, 3, 6, 7))])
_simple_case("maxpool_3x2_dilated", lambda: [N("MaxPool", ["x"], ["y"], kernel_shape=[3, 2], strides=[1, 2],
                                               dilations=[1, 2])], [("x", (1, 2, 7, 7))], opset=12)
_simple_case("maxpool_1x1", lambda: [N("MaxPool", ["x"], ["y"], kernel_shape=[1, 1], strides=[2, 2])], [("x", (1, 2, 5, 5))])
_simple_case("maxpool_padded_after_relu",          # -inf padding = zeros on a ReLU's (>= 0) output
             lambda: [N("Conv", ["x", "W"], ["c"]), N("Relu", ["c"], ["r"]),
                      N("MaxPool", ["r"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])],
             [("x", (1, 2, 6, 6))], inits={"W": (3, 2, 1, 1)})
_simple_case("maxpool_same_upper_after_relu",
             lambda: [N("Relu", ["x"], ["r"]), N("MaxPool", ["r"], ["y"], kernel_shape=[2, 3], auto_pad="SAME_UPPER")],
             [("x", (1, 2, 5, 5))])
_simple_case("avgpool_same_upper", lambda: [N("AveragePool", ["x"], ["y"], kernel_shape=[3, 2], strides=[2, 2],
                                              auto_pad="SAME_UPPER")], [("x", (1, 2, 5, 6))])
_simple_case("avgpool_same_lower_incl", lambda: [N("AveragePool", ["x"], ["y"], kernel_shape=[3, 2], strides=[2, 2],
                                                   auto_pad="SAME_LOWER", count_include_pad=1)], [("x", (1, 2, 5, 6))])
_simple_case("avgpool_valid", lambda: [N("AveragePool", ["x"], ["y"], kernel_shape=[3, 2], auto_pad="VALID")],
             [("x", (1, 2, 5, 6))])
_simple_case("avgpool_dilations_opset19", lambda: [N("AveragePool", ["x"], ["y"], kernel_shape=[2, 2], dilations=[2, 1],
                                                     pads=[1, 0, 1, 1])], [("x", (1, 2, 5, 6))], opset=19)
_simple_case("gemm_C_1x1", lambda: [N("Gemm", ["x", "W", "C"], ["y"])], [("x", (1, 3))],
             inits={"W": (3, 4), "C": (1, 1)})
_simple_case("gemm_tA_C_column", lambda: [N("Gemm", ["x", "W", "C"], ["y"], transA=1, beta=0.5)], [("x", (2, 3))],
             inits={"W": (2, 4), "C": (3, 1)})
_simple_case("gemm_beta0", lambda: [N("Gemm", ["x", "W"], ["y"], beta=0.0)], [("x", (1, 3))], inits={"W": (3, 4)})
_simple_case("flatten_axis0", lambda: [N("Flatten", ["x"], ["y"], axis=0)], [("x", (1, 2, 3))])
_simple_case("flatten_axis_neg1", lambda: [N("Flatten", ["x"], ["y"], axis=-1)], [("x", (1, 2, 3))])
_simple_case("squeeze_all", lambda: [N("Squeeze", ["x"], ["y"])], [("x", (1, 2, 1, 3))])
_simple_case("unsqueeze_neg", lambda: [N("Unsqueeze", ["x", "a"], ["y"])], [("x", (2, 3))], inits={"a": np.array([-1])})
_simple_case("concat_const_axis_neg2", lambda: [N("Concat", ["x", "c"], ["y"], axis=-2)], [("x", (1, 2, 3))],
             inits={"c": (1, 1, 3)})
_simple_case("batchnorm_ncl", lambda: [N("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"])], [("x", (1, 3, 4))],
             inits={"s": (3,), "b": (3,), "m": (3,), "v": np.array([0.5, 1.0, 2.0])})
_simple_case("batchnorm_opset9", lambda: [N("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], epsilon=0.01)],
             [("x", (1, 3, 2, 2))], inits={"s": (3,), "b": (3,), "m": (3,), "v": np.array([0.5, 1.0, 2.0])}, opset=9)
_simple_case("mul_const_left_rows", lambda: [N("Mul", ["c", "x"], ["y"])], [("x", (2, 3))], inits={"c": (1, 3)})
_simple_case("pad_opset11", lambda: [N("Pad", ["x", "p", "v"], ["y"])], [("x", (1, 4))],
             inits={"p": np.array([1, 1, 0, 1]), "v": np.array(2.0)}, opset=11)
_simple_case("reshape_allowzero0_opset14", lambda: [N("Reshape", ["x", "s"], ["y"], allowzero=0)], [("x", (1, 2, 3))],
             inits={"s": np.array([0, -1])}, opset=14)
_simple_case("matmul_1d_tensor", lambda: [N("MatMul", ["x", "W"], ["y"])], [("x", (3,))], inits={"W": (3, 2)})
_simple_case("const_transposed_then_added", lambda: [N("Transpose", ["c"], ["ct"]), N("Add", ["x", "ct"], ["y"])],
             [("x", (3, 2))], inits={"c": (2, 3)})
_simple_case("dropout_ratio_input_opset12", lambda: [N("Dropout", ["x", "r"], ["y"])], [("x", (1, 3))],
             inits={"r": np.array(0.5)}, opset=12)
_simple_case("output_is_identity_of_input", lambda: [N("Identity", ["x"], ["y"])], [("x", (1, 3))])
_simple_case("sub_of_a_tensor_and_its_negation", lambda: [N("Neg", ["x"], ["n"]), N("Sub", ["n", "x"], ["y"])],
             [("x", (1, 3))])
_simple_case("add_of_one_tensor_twice", lambda: [N("MatMul", ["x", "W"], ["a"]), N("Add", ["a", "a"], ["y"])],
             [("x", (1, 3))], inits={"W": (3, 2)})
_simple_case("add_two_inputs_broadcast", lambda: [N("Add", ["x1", "x2"], ["y"])], [("x1", (1, 3)), ("x2", (2, 1))])
_simple_case("relu_batch2_input", lambda: [N("Relu", ["x"], ["y"])], [("x", (2, 3))])

_simple_case("masked_relu_pattern",    # equiv's own export of a partial ReLU layer: Relu(x) * m + x * a
             lambda: [N("MatMul", ["x", "W"], ["z"]), N("Relu", ["z"], ["r"]), N("Mul", ["r", "m"], ["rm"]),
                      N("Mul", ["z", "a"], ["za"]), N("Add", ["rm", "za"], ["h"]), N("MatMul", ["h", "V"], ["y"])],
             [("x", (1, 3))], inits={"W": (3, 5), "V": (5, 2), "m": np.array([1.0, 0, 1, 0, 0]),
                                     "a": np.array([0.0, 1, 0, 0, 1])})
_simple_case("masked_relu_no_linear_part",
             lambda: [N("MatMul", ["x", "W"], ["z"]), N("Relu", ["z"], ["r"]), N("Mul", ["r", "m"], ["y"])],
             [("x", (1, 3))], inits={"W": (3, 4), "m": np.array([[1.0, 0, 1, 1]])})

_simple_case("masked_relu_mask_first",    # equiv's export since fold: Relu(x * m) + x * a, a bool mask cast to float
             lambda: [N("MatMul", ["x", "W"], ["z"]), N("Cast", ["mb"], ["m"], to=TensorProto.FLOAT),
                      N("Mul", ["z", "m"], ["zm"]), N("Relu", ["zm"], ["r"]), N("Mul", ["z", "a"], ["za"]),
                      N("Add", ["r", "za"], ["h"]), N("MatMul", ["h", "V"], ["y"])],
             [("x", (1, 3))], inits={"W": (3, 5), "V": (5, 2), "mb": np.array([True, False, True, False, False]),
                                     "a": np.array([0.0, 1, 0, 0, 1])})
_simple_case("masked_relu_mask_first_no_linear_part",
             lambda: [N("MatMul", ["x", "W"], ["z"]), N("Mul", ["z", "m"], ["zm"]), N("Relu", ["zm"], ["y"])],
             [("x", (1, 3))], inits={"W": (3, 4), "m": np.array([[1.0, 0, 1, 1]])})


CASE_NAMES = sorted(CASES)


@pytest.fixture(scope="module")
def built():
    """{case: (model, graph)}; every graph imported with the node-by-node check on."""
    out = {}
    for name in CASE_NAMES:
        model = CASES[name](np.random.default_rng(zlib.crc32(name.encode())))
        out[name] = (model, graph_from_onnx(model))
    return out


@pytest.mark.parametrize("name", CASE_NAMES)
def test_op_lowering_matches_onnxruntime(name, built, rng):
    model, g = built[name]
    assert_matches_ort(model, g, points(g, rng))


@pytest.mark.parametrize("name", CASE_NAMES)
def test_every_op_case_is_written_and_read_back_as_the_same_function(name, built, rng):
    """graph_to_onnx on every case: onnxruntime runs the written file as our graph computes it, the file reads
    back as the same function, and a MaxPool is written back whole (with its ReLUs on reading it again)."""
    from equiv.ir.onnx_export import graph_to_onnx
    _, g = built[name]
    written = graph_to_onnx(g)
    x = points(g, rng)
    assert_matches_ort(written, g, x)
    back = graph_from_onnx(written)
    np.testing.assert_allclose(back.forward(f32(x).astype(np.float64)), g.forward(f32(x).astype(np.float64)),
                               rtol=1e-5, atol=1e-5)
    if name.startswith("maxpool") and name != "maxpool_1x1":            # (a 1x1 pool is a pick: no ReLU)
        assert [n.op_type for n in written.graph.node].count("MaxPool") == 1 and back.n_relus == g.n_relus


def test_case_catalogue_covers_every_supported_op():
    from equiv.ir.onnx_import import SUPPORTED

    used = {n.op_type for name in CASE_NAMES for n in CASES[name](np.random.default_rng(0)).graph.node}
    assert set(SUPPORTED) <= used, set(SUPPORTED) - used


def test_add_of_row_and_column_is_4x4(built):
    _, g = built["add_row_and_column"]
    assert g.shape(g.outputs[0]) == (4, 4)
    x = np.arange(4.0)[None]
    np.testing.assert_array_equal(g.forward(x).reshape(4, 4), x[0][None, :] + x[0][:, None])


def test_two_inputs_split_in_order(built):
    _, g = built["two_inputs"]
    assert [g.shape(i) for i in g.inputs] == [(1, 3), (1, 2)] and g.n_inputs == 5
    parts = g.split_input(np.arange(5.0)[None])
    np.testing.assert_array_equal(parts[g.inputs[0]], [[[0, 1, 2]]])
    np.testing.assert_array_equal(parts[g.inputs[1]], [[[3, 4]]])
    with pytest.raises(ValueError):
        g.split_input(np.zeros((1, 4)))


def test_two_outputs_in_declared_order(built):
    _, g = built["two_outputs"]
    assert g.meta["output_names"] == ["y2", "y1"]
    assert g.n_outputs == 6 and [g.shape(o) for o in g.outputs] == [(1, 2), (1, 4)]


def test_masked_relu_patterns_are_fused(built):
    _, g = built["masked_relu_pattern"]
    (r,) = g.relus
    op = g.op(r)
    assert type(op).__name__ == "MaskedRelu" and g.n_relus == 2
    assert op.relu_mask.tolist() == [[True, False, True, False, False]]
    assert op.linear_mask.tolist() == [[False, True, False, False, True]]
    _, g = built["masked_relu_no_linear_part"]
    assert g.n_relus == 3 and not g.op(g.relus[0]).linear_mask.any()
    _, g = built["masked_relu_mask_first"]
    (r,) = g.relus
    assert type(g.op(r)).__name__ == "MaskedRelu" and g.n_relus == 2 and g.order == ["x", "z", "h", "y"]
    assert g.op(r).relu_mask.tolist() == [[True, False, True, False, False]]
    assert g.op(r).linear_mask.tolist() == [[False, True, False, False, True]]
    _, g = built["masked_relu_mask_first_no_linear_part"]
    assert g.n_relus == 3 and not g.op(g.relus[0]).linear_mask.any() and g.outputs == g.relus


# ---- refusals ------------------------------------------------------------------------------------------

def _refusal_models(rng):
    yield "Sigmoid", "sig_node", make_model(
        [helper.make_node("Gemm", ["x", "W"], ["a"], name="g"), helper.make_node("Sigmoid", ["a"], ["y"], name="sig_node")],
        [("x", (1, 3))], ["y"], {"W": rng.normal(size=(3, 2))})
    yield "MaxPool", "pool_node", make_model(      # padded (-inf) on a tensor that may be negative
        [helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], pads=[1, 1, 0, 0], name="pool_node")],
        [("x", (1, 1, 4, 4))], ["y"])
    yield "MaxPool", "ceil_pool", make_model(
        [helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1, name="ceil_pool")],
        [("x", (1, 1, 5, 5))], ["y"])
    yield "Mul", "mul_node", make_model(
        [helper.make_node("Relu", ["x"], ["r"], name="relu"), helper.make_node("Mul", ["x", "r"], ["y"], name="mul_node")],
        [("x", (1, 3))], ["y"])
    yield "Div", "div_node", make_model(
        [helper.make_node("Div", ["c", "x"], ["y"], name="div_node")], [("x", (1, 3))], ["y"], {"c": np.ones(3)})
    yield "MatMul", "mm_node", make_model(
        [helper.make_node("Transpose", ["x"], ["t"], name="tr"), helper.make_node("MatMul", ["t", "x"], ["y"], name="mm_node")],
        [("x", (1, 3))], ["y"])
    yield "Sigmoid", "y", make_model([helper.make_node("Sigmoid", ["x"], ["y"])], [("x", (1, 3))], ["y"])  # unnamed


    yield "AveragePool", "pool1d", make_model(
        [helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[2], name="pool1d")], [("x", (1, 2, 5))], ["y"])
    yield "Conv", "conv1d", make_model(
        [helper.make_node("Conv", ["x", "W"], ["y"], name="conv1d")], [("x", (1, 2, 5))], ["y"], {"W": np.ones((3, 2, 2))})
    yield "Div", "div_enlarges", make_model(
        [helper.make_node("Div", ["x", "c"], ["y"], name="div_enlarges")], [("x", (1, 3))], ["y"], {"c": np.ones((2, 1))})
    yield "Pad", "neg_pad", make_model(
        [helper.make_node("Pad", ["x", "p"], ["y"], name="neg_pad")], [("x", (1, 4))], ["y"], {"p": np.array([0, -1, 0, 1])})
    yield "Pad", "reflect_pad", make_model(
        [helper.make_node("Pad", ["x", "p"], ["y"], mode="reflect", name="reflect_pad")], [("x", (1, 4))], ["y"],
        {"p": np.array([0, 1, 0, 1])})
    yield "Unsqueeze", "const_unsqueeze", make_model(     # a constants-only op that is not folded
        [helper.make_node("Unsqueeze", ["c", "a"], ["cu"], name="const_unsqueeze"), helper.make_node("Add", ["x", "cu"], ["y"])],
        [("x", (1, 3))], ["y"], {"c": np.ones(3), "a": np.array([0])})


@pytest.mark.parametrize("k", range(13))
def test_unsupported_models_are_refused_by_node_and_op(k, rng):
    op, node, model = list(_refusal_models(rng))[k]
    with pytest.raises(UnsupportedModelError) as err:
        graph_from_onnx(model)
    msg = str(err.value)
    assert f"'{node}'" in msg and op in msg, msg


def test_unsupported_op_after_a_big_conv_is_refused_quickly(rng):
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Sigmoid", ["r"], ["y"], name="the_sigmoid")]
    model = make_model(nodes, [("x", (1, 3, 32, 32))], ["y"],
                       {"W": rng.normal(size=(64, 3, 3, 3)), "B": rng.normal(size=64)})
    from equiv.ir.onnx_import import validate
    with pytest.raises(UnsupportedModelError, match="the_sigmoid.*Sigmoid"):
        validate(model)                   # the structural pass alone refuses it, before any weight is read
    with pytest.raises(UnsupportedModelError, match="the_sigmoid.*Sigmoid"):
        graph_from_onnx(model)


def test_pad_opset18_axes_input_is_honoured_or_refused(rng):
    node = helper.make_node("Pad", ["x", "p", "v", "a"], ["y"], name="pad18")
    model = make_model([node], [("x", (2, 3))], ["y"],
                       {"p": np.array([1, 0, 2, 0]), "v": np.array(0.5), "a": np.array([1, 0])}, opset=18)
    try:
        g = graph_from_onnx(model, check=False)
    except UnsupportedModelError as exc:
        assert "pad18" in str(exc)
        return
    assert_matches_ort(model, g, rng.normal(size=(3, 6)))


def test_pad_without_pads_is_refused_cleanly():
    node = helper.make_node("Pad", ["x"], ["y"], paddings=[0, 1, 0, 1], value=1.0, name="old_pad")
    model = make_model([node], [("x", (1, 4))], ["y"], opset=1)
    with pytest.raises(UnsupportedModelError, match="old_pad"):
        graph_from_onnx(model, check=False)


# ---- the adjoint contract of every linear op --------------------------------------------------------

def linear_nodes(g: Graph):
    return [n for n in g.order if g.op(n).kind == "linear"]


def assert_adjoint(g: Graph, name: str, rng, B: int = 3):
    """<a, L(x)> = sum_i <L^T(a)_i, x_i> per row (rtol 1e-9), and |L|(|x|) >= |L(x)| elementwise."""
    op = g.op(name)
    xs = [rng.normal(size=(B,) + g.shape(a)) for a in g.args(name)]
    a = rng.normal(size=(B,) + tuple(op.shape))
    y = op.linear(*xs)
    assert y.shape == a.shape, f"{name}: linear gives {y.shape[1:]}, op shape {op.shape}"
    ts = op.transpose(a)
    assert len(ts) == len(xs), f"{name}: transpose gives {len(ts)} arrays for {len(xs)} inputs"
    lhs = (a * y).reshape(B, -1).sum(axis=1)
    rhs = sum((t * x).reshape(B, -1).sum(axis=1) for t, x in zip(ts, xs))
    for t, x in zip(ts, xs):
        assert t.shape == x.shape, f"{name} ({type(op).__name__}): transpose gives {t.shape[1:]}, input {x.shape[1:]}"
    scale = sum((np.abs(t) * np.abs(x)).reshape(B, -1).sum(axis=1) for t, x in zip(ts, xs))
    np.testing.assert_allclose(lhs, rhs, rtol=1e-9, atol=1e-12 * float(scale.max()),
                               err_msg=f"{name} ({type(op).__name__}) is not the adjoint")
    mag = op.abs_linear(*[np.abs(x) for x in xs])
    assert mag.shape == y.shape
    assert np.all(mag >= np.abs(y) - 1e-12 * (1 + mag)), f"{name} ({type(op).__name__}): |L|(|x|) < |L(x)|"
    # bias_dot agrees with the bias
    expect = np.zeros(B) if op.bias is None else \
        (a * np.broadcast_to(op.bias, a.shape[1:])).reshape(B, -1).sum(axis=1)
    np.testing.assert_allclose(op.bias_dot(a), expect, rtol=1e-12, atol=1e-12)
    # forward = linear + bias
    np.testing.assert_allclose(op.forward(*xs), y if op.bias is None else y + op.bias, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", CASE_NAMES)
def test_linear_ops_are_adjoint(name, built, rng):
    _, g = built[name]
    nodes = linear_nodes(g)
    assert nodes or all(g.op(n).kind != "linear" for n in g.order)
    for n in nodes:
        assert_adjoint(g, n, rng)


def test_every_linear_op_class_is_met(built):
    met = {type(built[c][1].op(n)).__name__ for c in CASE_NAMES for n in linear_nodes(built[c][1])}
    expected = {cls.__name__ for cls in vars(ops).values()
                if isinstance(cls, type) and issubclass(cls, ops.Linear) and cls is not ops.Linear}
    assert expected <= met, expected - met


def cifar_files():
    return sorted(CIFAR.glob("*.onnx")) if CIFAR.is_dir() else []


@needs_cifar
@pytest.mark.parametrize("stem", sorted(CIFAR_REFERENCE))
def test_cifar_linear_ops_are_adjoint(stem, rng):
    g = load_graph_cached(CIFAR / f"{stem}.onnx")
    for n in linear_nodes(g):
        assert_adjoint(g, n, rng, B=2)


# ---- convolution geometry under hypothesis --------------------------------------------------------

@st.composite
def conv_geometries(draw):
    group = draw(st.integers(1, 3))
    cg, mg = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    pads = tuple(draw(st.integers(0, 2)) for _ in range(4))
    h_min = max(1, dh * (kh - 1) + 1 - pads[0] - pads[2])
    w_min = max(1, dw * (kw - 1) + 1 - pads[1] - pads[3])
    H, W = draw(st.integers(h_min, h_min + 5)), draw(st.integers(w_min, w_min + 5))
    return ConvGeometry(group * cg, H, W, group * mg, (kh, kw), (sh, sw), pads, (dh, dw), group)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(geo=conv_geometries(), seed=st.integers(0, 2 ** 32 - 1))
def test_conv_forward_transpose_adjoint_and_onnxruntime(geo, seed):
    r = np.random.default_rng(seed)
    W = r.normal(size=(geo.out_channels, geo.in_channels // geo.group) + geo.kernel)
    x = r.normal(size=(3, geo.in_channels, geo.height, geo.width))
    y = conv_forward(x, W, geo)
    ho, wo = geo.out_hw
    assert y.shape == (3, geo.out_channels, ho, wo)
    a = r.normal(size=y.shape)
    t = conv_transpose(a, W, geo)
    assert t.shape == x.shape
    np.testing.assert_allclose((a * y).sum(axis=(1, 2, 3)), (t * x).sum(axis=(1, 2, 3)), rtol=1e-9, atol=1e-9)
    assert np.all(conv_forward(np.abs(x), np.abs(W), geo) >= np.abs(y) - 1e-12)
    # against onnxruntime, directly and through the importer
    b = r.normal(size=geo.out_channels)
    attrs = dict(strides=list(geo.strides), pads=list(geo.pads), dilations=list(geo.dilations), group=geo.group,
                 kernel_shape=list(geo.kernel))
    model = make_model([helper.make_node("Conv", ["x", "W", "B"], ["y"], **attrs)],
                       [("x", (1, geo.in_channels, geo.height, geo.width))], ["y"], {"W": W, "B": b})
    Wf = f32(W).astype(np.float64)
    xf = f32(x).astype(np.float64)
    theirs = ort_forward(model, xf.reshape(3, -1))
    ours = conv_forward(xf, Wf, geo) + f32(b).astype(np.float64)[:, None, None]
    np.testing.assert_allclose(ours.reshape(3, -1), theirs, rtol=1e-5, atol=1e-5)
    g = graph_from_onnx(model, check=False)
    assert g.op(g.outputs[0]).geo == geo
    np.testing.assert_allclose(g.forward(xf.reshape(3, -1)), theirs, rtol=1e-5, atol=1e-5)


@settings(max_examples=30, deadline=None)
@given(geo=conv_geometries(), auto=st.sampled_from(["SAME_UPPER", "SAME_LOWER", "VALID"]),
       seed=st.integers(0, 2 ** 32 - 1))
def test_conv_auto_pad_matches_onnxruntime(geo, auto, seed):
    r = np.random.default_rng(seed)
    if auto == "VALID" and (geo.height < geo.dilations[0] * (geo.kernel[0] - 1) + 1
                            or geo.width < geo.dilations[1] * (geo.kernel[1] - 1) + 1):
        return
    if auto != "VALID":
        geo = dataclasses.replace(geo, dilations=(1, 1))   # onnxruntime refuses SAME_* with dilations
    W = r.normal(size=(geo.out_channels, geo.in_channels // geo.group) + geo.kernel)
    attrs = dict(strides=list(geo.strides), dilations=list(geo.dilations), group=geo.group, auto_pad=auto)
    model = make_model([helper.make_node("Conv", ["x", "W"], ["y"], **attrs)],
                       [("x", (1, geo.in_channels, geo.height, geo.width))], ["y"], {"W": W})
    g = graph_from_onnx(model, check=False)
    x = f32(r.normal(size=(2, g.n_inputs))).astype(np.float64)
    theirs = ort_forward(model, x)
    assert g.forward(x).shape == theirs.shape
    np.testing.assert_allclose(g.forward(x), theirs, rtol=1e-5, atol=1e-5)


# ---- the import check fires -----------------------------------------------------------------------

def _checked_model(rng):
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["conv_out"], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["conv_out"], ["r1"]), helper.make_node("Flatten", ["r1"], ["flat"]),
             helper.make_node("Gemm", ["flat", "G", "g"], ["gemm_out"], transB=1),
             helper.make_node("Relu", ["gemm_out"], ["r2"]), helper.make_node("Sub", ["r2", "c"], ["sub_out"]),
             helper.make_node("MatMul", ["sub_out", "M"], ["y"])]
    return make_model(nodes, [("x", (1, 2, 5, 5))], ["y"],
                      {"W": rng.normal(size=(3, 2, 3, 3)), "B": rng.normal(size=3), "G": rng.normal(size=(6, 27)),
                       "g": rng.normal(size=6), "c": rng.normal(size=6), "M": rng.normal(size=(6, 2))})


def _corrupt(g: Graph, onnx_name: str, how: str):
    node = next(n for n, o in g.meta["onnx_names"].items() if o == onnx_name)
    op = g.op(node)
    if how == "weight":
        op.W.reshape(-1)[1] += 0.5
    elif how == "bias":
        op.bias.reshape(-1)[0] -= 0.5
    elif how == "geometry":
        op.geo = dataclasses.replace(op.geo, pads=(0, 0, 0, 0))
    else:
        raise AssertionError(how)


@pytest.mark.parametrize("onnx_name, how", [("conv_out", "weight"), ("conv_out", "bias"), ("gemm_out", "weight"),
                                            ("gemm_out", "bias"), ("sub_out", "bias"), ("y", "weight"),
                                            ("conv_out", "geometry")])
def test_import_check_names_the_corrupted_tensor(onnx_name, how, rng):
    model = _checked_model(rng)
    g = graph_from_onnx(model, check=False)
    assert check_graph(model, g) <= 1.0
    _corrupt(g, onnx_name, how)
    with pytest.raises(ImportMismatchError) as err:
        check_graph(model, g)
    msg = str(err.value)
    assert f"'{onnx_name}'" in msg, msg
    others = set(g.meta["onnx_names"].values()) - {onnx_name}
    assert not any(f"'{o}'" in msg for o in others), msg


# ---- the shared networks ----------------------------------------------------------------------------

def _shared_nets():
    nets = [("acas_1_1", lambda: acas_path(1, 1), lambda: ACAS / "prop_3.vnnlib"),
            ("mnist_256x2", lambda: MNIST / "mnist-net_256x2.onnx", lambda: MNIST / "prop_0_0.03.vnnlib"),
            ("mnist_256x6", lambda: MNIST / "mnist-net_256x6.onnx", lambda: MNIST / "prop_0_0.05.vnnlib")]
    return [pytest.param(p, s, id=i, marks=needs_bench) for i, p, s in nets] + \
        [pytest.param((lambda st=stem: CIFAR / f"{st}.onnx"), (lambda sp=spec: CIFAR / sp), id=stem, marks=needs_cifar)
         for stem, (spec, _) in sorted(CIFAR_REFERENCE.items())]


@pytest.mark.parametrize("net_path, spec_path", _shared_nets())
def test_shared_network_matches_onnxruntime(net_path, spec_path, rng):
    path = net_path()
    g = load_graph_cached(path)                       # the node-by-node import check ran here
    box = load_box(spec_path())
    box.check_dim(g.n_inputs)
    x = box.sample(20, rng)
    model = onnx.load(str(path))
    x = f32(x).astype(np.float64)
    ours, theirs = g.forward(x), ort_forward(model, x)
    scale = np.abs(theirs).max(axis=1, keepdims=True)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-4 * max(1.0, float(scale.max())))
    # the predicted class agrees wherever it is not a near tie
    top2 = np.sort(theirs, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 1e-3 * np.maximum(scale[:, 0], 1.0)
    assert np.array_equal(ours.argmax(axis=1)[clear], theirs.argmax(axis=1)[clear])


@needs_cifar
def test_every_cifar_network_is_covered():
    assert {p.stem for p in cifar_files()} == set(CIFAR_REFERENCE)


@pytest.mark.parametrize("w_shape,x_shape,left", [((2, 3), (3,), True), ((3,), (2, 3), False), ((4, 3), (3,), True),
                                                 ((2, 3, 4), (4,), True), ((5, 3, 2), (1, 3), False),
                                                 ((2, 4, 3), (2, 3, 5), True)])
def test_matmul_with_a_constant_in_every_form(w_shape, x_shape, left, rng):
    """1-D operands and broadcast batch dimensions, on either side, as ONNX (numpy) defines them."""
    order = ["W", "x"] if left else ["x", "W"]
    out_shape = np.matmul(*(np.empty(w_shape), np.empty(x_shape)) if left else (np.empty(x_shape), np.empty(w_shape))).shape
    model = make_model([helper.make_node("MatMul", order, ["y"], name="mm")], [("x", x_shape)], ["y"],
                       {"W": rng.normal(size=w_shape)})
    g = graph_from_onnx(model)
    assert g.shape(g.outputs[0]) == out_shape
    x = rng.normal(size=(5, int(np.prod(x_shape))))
    sess = session(model)
    want = np.vstack([sess.run(None, {"x": xi.reshape(x_shape).astype(np.float32)})[0].reshape(1, -1) for xi in x])
    np.testing.assert_allclose(g.forward(x), want, rtol=1e-5, atol=1e-5)
    for name in g.order:                       # every op's transpose is its adjoint
        op = g.op(name)
        if op.kind != "linear":
            continue
        xs = [rng.normal(size=(3,) + g.shape(a)) for a in g.args(name)]
        a = rng.normal(size=(3,) + g.shape(name))
        lhs = (a * op.linear(*xs)).reshape(3, -1).sum(axis=1)
        rhs = sum((t * xi).reshape(3, -1).sum(axis=1) for t, xi in zip(op.transpose(a), xs))
        np.testing.assert_allclose(lhs, rhs, rtol=1e-9, atol=1e-9)
