"""ONNX -> Graph: one small handler per ONNX op, shapes computed as the graph is built.

The whole graph is validated (ops, and which operands must be constants) before any weight is touched,
so an unsupported model is refused at once, naming the node and the op.  Constants-only subgraphs are
folded in numpy.  After building, every node is checked against onnxruntime (`equiv.ir.check`).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import InputFileError, UnsupportedModelError
from . import ops
from .conv import ConvGeometry, conv_forward
from .fuse import fuse_masked_relus
from .graph import Graph

# op -> positions of the inputs that must be constants
CONST_OPERANDS = {"Conv": (1, 2), "BatchNormalization": (1, 2, 3, 4), "Reshape": (1,), "Squeeze": (1,),
                  "Unsqueeze": (1,), "Pad": (1, 2, 3), "Dropout": (1, 2), "Cast": (0,)}
SUPPORTED = ("Gemm", "MatMul", "Conv", "BatchNormalization", "AveragePool", "Pad", "Add", "Sub", "Mul", "Div",
             "Neg", "Concat", "Flatten", "Reshape", "Transpose", "Identity", "Dropout", "Squeeze", "Unsqueeze",
             "Relu", "Constant", "Cast")


def _dims(vi) -> tuple:
    return tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1
                 for d in vi.type.tensor_type.shape.dim)


def read_onnx_file(path) -> onnx.ModelProto:
    """The model in an ONNX file; InputFileError for a missing, empty, unparsable or node-less file."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"model file not found: {path}")
    if path.stat().st_size == 0:
        raise InputFileError(f"empty or corrupt ONNX model {path}: the file is empty")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf raises many types for a corrupt file
        raise InputFileError(f"empty or corrupt ONNX model {path}: cannot parse it ({exc})") from exc
    if not model.graph.node:
        raise InputFileError(f"empty or corrupt ONNX model {path}: its graph has no nodes")
    return model


def load_graph(path, check: bool = True) -> Graph:
    """Read an ONNX file into a Graph (InputFileError / UnsupportedModelError with a clear message)."""
    g = graph_from_onnx(read_onnx_file(path), check=check)
    g.meta["source"] = str(path)
    return g


def graph_from_onnx(model: onnx.ModelProto, check: bool = True) -> Graph:
    """The Graph computing `model`; with check, every node is compared with onnxruntime (see ir.check)."""
    validate(model)
    g = fuse_masked_relus(_Builder(model).build())
    if check:
        from .check import check_graph
        check_graph(model, g)
    return g


def validate(model: onnx.ModelProto) -> None:
    """Cheap checks of every node before any heavy work: supported op, constant operands where needed."""
    consts = {t.name for t in model.graph.initializer}
    for node in model.graph.node:
        where = f"node '{node.name or node.output[0]}'"
        if node.op_type not in SUPPORTED or node.domain not in ("", "ai.onnx"):
            raise UnsupportedModelError(f"{where} uses op '{node.op_type}', which equiv does not support; supported "
                                        f"ops: {', '.join(SUPPORTED)}")
        if node.op_type == "Constant":
            consts.add(node.output[0])
            continue
        for i in CONST_OPERANDS.get(node.op_type, ()):
            if i < len(node.input) and node.input[i] and node.input[i] not in consts:
                raise UnsupportedModelError(f"{where} ({node.op_type}): input {i} ('{node.input[i]}') must be a "
                                            "constant")
        if all(not n or n in consts for n in node.input):
            consts.update(node.output)        # folded in numpy at build time


class _Builder:
    """Walks the ONNX nodes in order, keeping constants (numpy) apart from computed tensors (graph nodes)."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
        self.consts = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
        self.nodes: list = []
        self.shapes: dict = {}
        self.names: dict = {}          # IR node -> ONNX tensor it equals (for the check)
        self.alias: dict = {}          # ONNX tensor -> IR node computing it
        self.fresh = 0

    # -- bookkeeping -------------------------------------------------------------------------------
    def add(self, op: ops.Op, args: list, onnx_name: str | None = None) -> str:
        """Add an IR node; returns its name (the ONNX tensor's name when given, else a fresh one)."""
        name = onnx_name if onnx_name is not None and onnx_name not in self.shapes else None
        if name is None:
            self.fresh += 1
            name = f"{onnx_name or 'equiv'}/{self.fresh}"
        self.nodes.append((name, op, args))
        self.shapes[name] = tuple(op.shape)
        if onnx_name is not None:
            self.alias[onnx_name] = name
            self.names[name] = onnx_name
        return name

    def tensor(self, onnx_name: str) -> str | None:
        return self.alias.get(onnx_name)

    def const_node(self, value: np.ndarray) -> str:
        return self.add(ops.Const(tuple(value.shape), value=value), [])

    def build(self) -> Graph:
        g = self.model.graph
        inputs = [i for i in g.input if i.name not in self.consts]
        if not inputs:
            raise UnsupportedModelError("the model has no input tensor")
        for i in inputs:
            self.add(ops.Input(_dims(i)), [], i.name)
        for node in g.node:
            where = f"node '{node.name or node.output[0]}' ({node.op_type})"
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            args = list(node.input)
            if node.op_type == "Constant":
                self.consts[node.output[0]] = _constant(attrs, where)
                continue
            if all(not a or a in self.consts for a in args):
                self.consts[node.output[0]] = _fold(node.op_type, [self.consts.get(a) for a in args], attrs, where)
                continue
            HANDLERS[node.op_type](self, node, attrs, where)
        outputs = []
        for o in g.output:
            if o.name not in self.alias:
                raise UnsupportedModelError(f"graph output '{o.name}' is not computed from the inputs")
            outputs.append(self.alias[o.name])
        graph = Graph.build(self.nodes, [self.alias[i.name] for i in inputs], outputs,
                            meta={"onnx_names": self.names, "opset": self.opset,
                                  "input_names": [i.name for i in inputs], "output_names": [o.name for o in g.output],
                                  "input_shapes": [tuple(_dims_raw(i)) for i in inputs],
                                  "output_shapes": [tuple(_dims_raw(o)) for o in g.output]})
        return graph

    def arg(self, name: str, where: str):
        """A computed tensor's IR node, or a constant's array."""
        if name in self.alias:
            return self.alias[name]
        if name in self.consts:
            return self.consts[name]
        raise UnsupportedModelError(f"{where}: input '{name}' is not computed by an earlier node")


def _dims_raw(vi) -> list:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "N") for d in vi.type.tensor_type.shape.dim]


def _constant(attrs, where) -> np.ndarray:
    if "value" in attrs:
        return numpy_helper.to_array(attrs["value"]).astype(np.float64)
    for k in ("value_float", "value_floats", "value_int", "value_ints"):
        if k in attrs:
            return np.asarray(attrs[k], dtype=np.float64)
    raise UnsupportedModelError(f"{where}: only a tensor or number value is supported")


# ---- constants-only subgraphs ----------------------------------------------------------------------

def _fold(op: str, vals: list, attrs: dict, where: str) -> np.ndarray:
    """Evaluate an op whose inputs are all constants (shape arithmetic, weight preprocessing)."""
    a = vals[0]
    if op in ("Identity", "Dropout"):
        return a
    if op in ("Add", "Sub", "Mul", "Div"):
        return {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide}[op](a, vals[1])
    if op == "Neg":
        return -a
    if op == "Cast":              # to a float type: the same values; to bool or an integer type: C casts
        to = helper.tensor_dtype_to_np_dtype(attrs["to"])
        return a if np.issubdtype(to, np.floating) else a.astype(to).astype(np.float64)
    if op == "Transpose":
        return np.transpose(a, attrs.get("perm"))
    if op == "Reshape":
        return a.reshape(_reshape_target(a.shape, vals[1], attrs))
    if op == "Concat":
        return np.concatenate(vals, axis=attrs["axis"])
    if op == "Flatten":
        ax = attrs.get("axis", 1) % max(a.ndim, 1)
        return a.reshape(int(np.prod(a.shape[:ax])), -1)
    raise UnsupportedModelError(f"{where}: computing {op} on constants only is not supported")


def _reshape_target(in_shape: tuple, target, attrs) -> tuple:
    t = [int(v) for v in np.asarray(target).reshape(-1)]
    t = [in_shape[i] if v == 0 and not attrs.get("allowzero", 0) else v for i, v in enumerate(t)]
    return tuple(np.empty(in_shape).reshape(t).shape)


# ---- handlers: one per ONNX op -----------------------------------------------------------------------

def _relu(b: _Builder, node, attrs, where):
    x = b.arg(node.input[0], where)
    b.add(ops.Relu(b.shapes[x]), [x], node.output[0])


def _reshape_like(b, x, shape, onnx_name):
    return b.add(ops.Reshape(tuple(shape), in_shape=b.shapes[x]), [x], onnx_name)


def _identity(b: _Builder, node, attrs, where):
    x = b.arg(node.input[0], where)
    _reshape_like(b, x, b.shapes[x], node.output[0])


def _flatten(b: _Builder, node, attrs, where):
    x = b.arg(node.input[0], where)
    s = b.shapes[x]
    ax = attrs.get("axis", 1)
    ax = ax + len(s) if ax < 0 else ax
    _reshape_like(b, x, (int(np.prod(s[:ax])), int(np.prod(s[ax:]))), node.output[0])


def _reshape(b: _Builder, node, attrs, where):
    x = b.arg(node.input[0], where)
    try:
        shape = _reshape_target(b.shapes[x], b.consts[node.input[1]], attrs)
    except ValueError as exc:
        raise UnsupportedModelError(f"{where}: cannot reshape {b.shapes[x]}: {exc}") from None
    _reshape_like(b, x, shape, node.output[0])


def _squeeze(b: _Builder, node, attrs, where):
    x = b.arg(node.input[0], where)
    axes = attrs.get("axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        axes = [int(v) for v in b.consts[node.input[1]]]
    arr = np.empty(b.shapes[x])
    if node.op_type == "Squeeze":
        arr = np.squeeze(arr, axis=tuple(axes)) if axes is not None else np.squeeze(arr)
    else:
        arr = np.expand_dims(arr, axis=tuple(axes))
    _reshape_like(b, x, arr.shape, node.output[0])


def _transpose(b: _Builder, node, attrs, where):
    x = b.arg(node.input[0], where)
    s = b.shapes[x]
    perm = tuple(attrs.get("perm", range(len(s) - 1, -1, -1)))
    b.add(ops.Transpose(tuple(s[p] for p in perm), perm=perm), [x], node.output[0])


def _binary(b: _Builder, node, attrs, where):
    """Add/Sub/Mul/Div: of two computed tensors (Add/Sub only), or of a tensor and a constant."""
    op = node.op_type
    xa, xb = b.arg(node.input[0], where), b.arg(node.input[1], where)
    if isinstance(xa, str) and isinstance(xb, str):
        if op not in ("Add", "Sub"):
            raise UnsupportedModelError(f"{where}: {op} of two computed tensors is not linear")
        shape = _broadcast(b.shapes[xa], b.shapes[xb], where)
        b.add(ops.Add(shape, in_shapes=[b.shapes[xa], b.shapes[xb]], signs=(1.0, 1.0 if op == "Add" else -1.0)),
              [xa, xb], node.output[0])
        return
    x, c, x_first = (xa, xb, True) if isinstance(xa, str) else (xb, xa, False)
    shape = _broadcast(b.shapes[x], c.shape, where)
    if shape != b.shapes[x]:
        if op not in ("Add", "Sub"):
            raise UnsupportedModelError(f"{where}: broadcasting the constant enlarges the tensor {b.shapes[x]} "
                                        f"to {shape}")
        k = b.const_node(np.broadcast_to(c if op == "Add" or not x_first else -c, shape).copy())
        signs = (1.0, 1.0) if x_first or op == "Add" else (-1.0, 1.0)
        b.add(ops.Add(shape, in_shapes=[b.shapes[x], shape], signs=signs), [x, k], node.output[0])
        return
    if op == "Add":
        b.add(ops.Shift(shape, bias=c), [x], node.output[0])
    elif op == "Sub":
        b.add(ops.Shift(shape, bias=-c) if x_first else ops.Scale(shape, bias=c, s=np.array(-1.0)), [x],
              node.output[0])
    elif op == "Mul":
        b.add(ops.Scale(shape, s=c), [x], node.output[0])
    else:
        if not x_first:
            raise UnsupportedModelError(f"{where}: dividing a constant by a tensor is not linear")
        if np.any(c == 0):
            raise UnsupportedModelError(f"{where}: division by zero in a constant")
        b.add(ops.Scale(shape, s=1.0 / c), [x], node.output[0])


def _broadcast(s1, s2, where) -> tuple:
    try:
        return tuple(np.broadcast_shapes(tuple(s1), tuple(s2)))
    except ValueError:
        raise UnsupportedModelError(f"{where}: shapes {tuple(s1)} and {tuple(s2)} do not broadcast") from None


def _neg(b: _Builder, node, attrs, where):
    x = b.arg(node.input[0], where)
    b.add(ops.Scale(b.shapes[x], s=np.array(-1.0)), [x], node.output[0])


def _matmul(b: _Builder, node, attrs, where):
    """tensor @ constant or constant @ tensor in every ONNX form (1-D operands, broadcast batch dims)."""
    xa, xb = b.arg(node.input[0], where), b.arg(node.input[1], where)
    if isinstance(xa, str) and isinstance(xb, str):
        raise UnsupportedModelError(f"{where}: the product of two computed tensors is not linear")
    left = not isinstance(xa, str)
    x, W = (xb, xa) if left else (xa, xb)
    s = b.shapes[x]
    if not left and W.ndim == 2 and len(s) >= 1 and s[-1] == W.shape[0]:
        return _dense(b, x, W, None, node.output[0], where)            # the common case: a dense layer
    if left and W.ndim == 2 and len(s) >= 2 and s[-2] == W.shape[1]:
        return _left(b, W, x, node.output[0], where)
    try:
        out = np.matmul(np.empty(W.shape), np.empty(s)).shape if left else np.matmul(np.empty(s), np.empty(W.shape)).shape
    except ValueError:
        raise UnsupportedModelError(f"{where}: shapes {s} and {W.shape} do not multiply") from None
    # 1-D operands: numpy/ONNX promote them to matrices and drop the added axis afterwards
    W2 = W if W.ndim >= 2 else (W[None, :] if left else W[:, None])
    x2 = x
    if len(s) == 1:
        x2 = _reshape_like(b, x, (s[0], 1) if left else (1, s[0]), None)
    s2 = b.shapes[x2]
    shape2 = np.matmul(np.empty(W2.shape), np.empty(s2)).shape if left else np.matmul(np.empty(s2), np.empty(W2.shape)).shape
    y = b.add(ops.MatMulConst(tuple(shape2), W=W2, left=left, in_shape=s2), [x2],
              node.output[0] if tuple(shape2) == tuple(out) else None)
    if tuple(shape2) != tuple(out):
        _reshape_like(b, y, out, node.output[0])


def _dense(b: _Builder, x: str, W: np.ndarray, bias, out: str, where):
    """x @ W (+ bias) with W (k, n) or (k,)."""
    s = b.shapes[x]
    if W.ndim == 1:
        y = b.add(ops.Dense(s[:-1] + (1,), W=W[None, :]), [x])
        return _reshape_like(b, y, s[:-1], out)
    if W.ndim != 2:
        raise UnsupportedModelError(f"{where}: MatMul by a constant of rank {W.ndim} is not supported (rank 1 or 2)")
    if s[-1] != W.shape[0]:
        raise UnsupportedModelError(f"{where}: shapes {s} and {W.shape} do not multiply")
    shape = s[:-1] + (W.shape[1],)
    if bias is not None:
        shape = _broadcast(shape, np.shape(bias), where)
        if shape != s[:-1] + (W.shape[1],):
            raise UnsupportedModelError(f"{where}: the bias enlarges the product")
    return b.add(ops.Dense(shape, W=W.T.copy(), bias=bias), [x], out)


def _left(b: _Builder, W: np.ndarray, x: str, out: str, where):
    s = b.shapes[x]
    if W.ndim != 2 or len(s) < 2 or s[-2] != W.shape[1]:
        raise UnsupportedModelError(f"{where}: constant {W.shape} @ tensor {s} is not supported")
    return b.add(ops.MatMulLeft(s[:-2] + (W.shape[0], s[-1]), W=W), [x], out)


def _gemm(b: _Builder, node, attrs, where):
    A, B = b.arg(node.input[0], where), b.arg(node.input[1], where)
    C = b.arg(node.input[2], where) if len(node.input) > 2 and node.input[2] else None
    alpha, beta = attrs.get("alpha", 1.0), attrs.get("beta", 1.0)
    if not isinstance(B, np.ndarray) or not isinstance(A, str) or isinstance(C, str):
        raise UnsupportedModelError(f"{where}: only Gemm(tensor, constant, constant bias) is supported")
    if attrs.get("transA", 0):
        s = b.shapes[A]
        A = b.add(ops.Transpose((s[1], s[0]), perm=(1, 0)), [A])
    Bm = B.T if attrs.get("transB", 0) else B
    bias = None if C is None else beta * C
    _dense(b, A, alpha * Bm, bias, node.output[0], where)


def _geometry(in_shape, W, attrs, where) -> ConvGeometry:
    if len(in_shape) != 4 or W.ndim != 4:
        raise UnsupportedModelError(f"{where}: only 2-D convolutions on NCHW inputs are supported")
    _, C, H, Wd = in_shape
    kh, kw = W.shape[2:]
    strides = tuple(attrs.get("strides", (1, 1)))
    dil = tuple(attrs.get("dilations", (1, 1)))
    pads = tuple(attrs.get("pads", (0, 0, 0, 0)))
    auto = attrs.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        p = []
        for size, k, st, d in ((H, kh, strides[0], dil[0]), (Wd, kw, strides[1], dil[1])):
            total = max(0, (math.ceil(size / st) - 1) * st + d * (k - 1) + 1 - size)
            p.append((total // 2, total - total // 2) if auto == "SAME_UPPER" else (total - total // 2, total // 2))
        pads = (p[0][0], p[1][0], p[0][1], p[1][1])
    elif auto == "VALID":
        pads = (0, 0, 0, 0)
    group = attrs.get("group", 1)
    if W.shape[1] * group != C:
        raise UnsupportedModelError(f"{where}: weight {W.shape} does not fit {C} input channels in {group} groups")
    return ConvGeometry(C, H, Wd, W.shape[0], (kh, kw), strides, pads, dil, group)


def _conv(b: _Builder, node, attrs, where):
    x = b.arg(node.input[0], where)
    W = b.consts[node.input[1]]
    geo = _geometry(b.shapes[x], W, attrs, where)
    bias = b.consts[node.input[2]].reshape(-1, 1, 1) if len(node.input) > 2 and node.input[2] else None
    shape = (b.shapes[x][0], geo.out_channels) + geo.out_hw
    b.add(ops.Conv(shape, W=W, geo=geo, bias=bias), [x], node.output[0])


def _avgpool(b: _Builder, node, attrs, where):
    """A depthwise convolution with ones, then a division by the number of elements each window averages."""
    x = b.arg(node.input[0], where)
    s = b.shapes[x]
    if len(s) != 4 or attrs.get("ceil_mode", 0):
        raise UnsupportedModelError(f"{where}: only 2-D AveragePool on NCHW inputs without ceil_mode is supported")
    kh, kw = attrs["kernel_shape"]
    W = np.ones((s[1], 1, kh, kw))
    geo = _geometry(s, W, {**attrs, "group": s[1]}, where)
    shape = (s[0], s[1]) + geo.out_hw
    total = b.add(ops.Conv(shape, W=W, geo=geo, pooling=True), [x])
    if attrs.get("count_include_pad", 0) or not any(geo.pads):
        counts = np.array(float(kh * kw))
    else:  # ONNX default: padding does not count
        counts = conv_forward(np.ones((1, s[1], s[2], s[3])), W, geo)[0]
    b.add(ops.Scale(shape, s=1.0 / counts), [total], node.output[0])


def _pad(b: _Builder, node, attrs, where):
    x = b.arg(node.input[0], where)
    s = b.shapes[x]
    mode = attrs.get("mode", b"constant")
    if (mode.decode() if isinstance(mode, bytes) else mode) != "constant":
        raise UnsupportedModelError(f"{where}: only constant padding is supported")
    if "pads" in attrs:
        pads = list(attrs["pads"])
    elif len(node.input) > 1 and node.input[1]:
        pads = [int(v) for v in b.consts[node.input[1]]]
    else:
        raise UnsupportedModelError(f"{where}: a Pad without pads (attribute or input) is not supported")
    value = attrs.get("value", 0.0)
    if len(node.input) > 2 and node.input[2]:
        value = float(b.consts[node.input[2]].reshape(-1)[0])
    n = len(s)
    axes = list(range(n))
    if len(node.input) > 3 and node.input[3]:           # opset 18: pads given for these axes only
        axes = [int(a) % n for a in b.consts[node.input[3]].reshape(-1)]
    if len(pads) != 2 * len(axes) or min(pads, default=0) < 0:
        raise UnsupportedModelError(f"{where}: pads {list(pads)} for axes {axes} (negative pads are not supported)")
    per_axis = {ax: (int(pads[k]), int(pads[k + len(axes)])) for k, ax in enumerate(axes)}
    pw = tuple(per_axis.get(k, (0, 0)) for k in range(n))
    shape = tuple(d + p + q for d, (p, q) in zip(s, pw))
    bias = None
    if value != 0.0:
        bias = value * (1.0 - np.pad(np.ones(s), pw))
    b.add(ops.Pad(shape, pads=pw, value=float(value), bias=bias), [x], node.output[0])


def _batchnorm(b: _Builder, node, attrs, where):
    x = b.arg(node.input[0], where)
    s = b.shapes[x]
    scale, B, mean, var = (b.consts[n] for n in node.input[1:5])
    k = scale / np.sqrt(var + attrs.get("epsilon", 1e-5))
    cshape = (-1,) + (1,) * (len(s) - 2)
    b.add(ops.Scale(s, s=k.reshape(cshape), bias=(B - mean * k).reshape(cshape)), [x], node.output[0])


def _concat(b: _Builder, node, attrs, where):
    parts = []
    for n in node.input:
        a = b.arg(n, where)
        parts.append(a if isinstance(a, str) else b.const_node(a))
    shapes = [b.shapes[p] for p in parts]
    axis = attrs["axis"] % len(shapes[0])
    if any(len(sh) != len(shapes[0]) or sh[:axis] + sh[axis + 1:] != shapes[0][:axis] + shapes[0][axis + 1:]
           for sh in shapes):
        raise UnsupportedModelError(f"{where}: Concat of shapes {shapes} along axis {attrs['axis']}")
    shape = shapes[0][:axis] + (sum(sh[axis] for sh in shapes),) + shapes[0][axis + 1:]
    b.add(ops.Concat(shape, axis=axis, in_shapes=shapes), parts, node.output[0])


HANDLERS = {"Relu": _relu, "Identity": _identity, "Dropout": _identity, "Flatten": _flatten, "Reshape": _reshape,
            "Squeeze": _squeeze, "Unsqueeze": _squeeze, "Transpose": _transpose, "Add": _binary, "Sub": _binary,
            "Mul": _binary, "Div": _binary, "Neg": _neg, "MatMul": _matmul, "Gemm": _gemm, "Conv": _conv,
            "AveragePool": _avgpool, "Pad": _pad, "BatchNormalization": _batchnorm, "Concat": _concat}
