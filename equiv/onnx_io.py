"""ONNX <-> Network.

Import folds every linear op between two ReLUs (normalisation Sub/Div, Flatten, MatMul+Add, Gemm,
Conv, BatchNormalization, ...) into one exact affine map by tracking, for each tensor, its affine
expression ``A @ anchor + c`` over the flattened output of the last ReLU (or the network input).
Export writes a clean opset-``OPSET`` model with the original input/output names and shapes.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .errors import InputFileError, UnsupportedModelError
from .network import Dense, Network

OPSET = 21
IR_VERSION = 10
SUPPORTED_OPS = (
    "Gemm", "MatMul", "Add", "Sub", "Mul", "Div", "Neg", "Relu", "Flatten", "Reshape", "Identity",
    "Dropout", "Constant", "Squeeze", "Unsqueeze", "Transpose", "Conv", "BatchNormalization", "Concat",
)


@dataclass
class _Expr:
    """A tensor as an affine function of the current anchor: flat(tensor) = A @ anchor + c."""

    A: np.ndarray
    c: np.ndarray
    shape: tuple


def _dims(value_info) -> tuple:
    return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "N")
                 for d in value_info.type.tensor_type.shape.dim)


def _concrete(shape: tuple) -> tuple:
    """Shape with symbolic (batch) dims set to 1: equiv reasons about one input at a time."""
    return tuple(d if isinstance(d, int) and d > 0 else 1 for d in shape)


def load_onnx(path: str | os.PathLike) -> Network:
    """Read an ONNX file into a Network; raises UnsupportedModelError naming any unsupported node."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"model file not found: {path}")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf gives many exception types for a corrupt file
        raise InputFileError(f"cannot read ONNX model {path}: {exc}") from exc
    net = network_from_onnx(model)
    net.meta["source"] = str(path)
    return net


def network_from_onnx(model: onnx.ModelProto) -> Network:
    g = model.graph
    consts = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in g.initializer}
    inputs = [i for i in g.input if i.name not in consts]
    if len(inputs) != 1 or len(g.output) != 1:
        raise UnsupportedModelError(
            f"equiv needs exactly one input and one output tensor; model has inputs "
            f"{[i.name for i in inputs]} and outputs {[o.name for o in g.output]}")
    inp, out = inputs[0], g.output[0]
    in_shape = _dims(inp)
    n0 = int(np.prod(_concrete(in_shape)))
    exprs = {inp.name: _Expr(np.eye(n0), np.zeros(n0), _concrete(in_shape))}
    # every expression is over the anchor of its time; mixing anchors (a skip connection or a parallel
    # branch around a ReLU) would silently give a wrong network, so it is refused
    anchor, gen = 0, {inp.name: 0}
    dense: list[Dense] = []
    masks: list[np.ndarray] = []
    last_relu = None        # output name of the Relu that opened the current anchor

    for node in g.node:
        op = node.op_type
        if op not in SUPPORTED_OPS:
            raise UnsupportedModelError(
                f"node '{node.name or node.output[0]}' uses op '{op}', which equiv does not support; "
                f"supported ops: {', '.join(SUPPORTED_OPS)}")
        where = f"node '{node.name or node.output[0]}' ({op})"
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if op == "Constant":
            consts[node.output[0]] = numpy_helper.to_array(attrs["value"]).astype(np.float64)
            continue
        args = [exprs.get(name) if name in exprs else consts.get(name) for name in node.input]
        if all(a is None or isinstance(a, np.ndarray) for a in args):
            raise UnsupportedModelError(f"{where}: computing on constants only is not supported")
        if op == "Concat":
            # the one Concat equiv reads is its own partial-ReLU layer: Concat(Relu(A h + a), B h + b) along
            # the feature axis, h being the previous layer; it is the layer [A; B] with ReLU on the A rows only
            _partial_relu_layer(node, attrs, args, gen, anchor, last_relu, exprs, dense, masks, where)
            exprs[node.output[0]] = _Expr(np.eye(dense[-1].n_out), np.zeros(dense[-1].n_out),
                                          (args[0].shape[0], dense[-1].n_out))
            gen[node.output[0]] = anchor
            gen[last_relu] = -1    # the Relu output alone no longer matches the layer's (wider) variables
            continue
        lagging = [name for name in node.input if name in exprs and gen[name] == anchor - 1]
        if op != "Relu" and lagging and len(lagging) == sum(name in exprs for name in node.input):
            # the linear branch of a partial-ReLU layer: affine in the layer before the last Relu; it may
            # only end in that layer's Concat (a Relu on it, or the graph output, is refused)
            exprs[node.output[0]] = _apply(op, args, attrs, node, where)
            gen[node.output[0]] = anchor - 1
            continue
        stale = [name for name in node.input if name in exprs and gen[name] != anchor]
        if stale:
            raise UnsupportedModelError(
                f"{where}: uses tensor '{stale[0]}' from before the last ReLU; only chain-shaped networks "
                f"(no skip connections or parallel ReLU branches) are supported")
        if op == "Relu":
            e = args[0]
            dense.append(Dense(e.A, e.c))
            n = e.A.shape[0]
            masks.append(np.ones(n, bool))
            anchor += 1
            exprs[node.output[0]] = _Expr(np.eye(n), np.zeros(n), e.shape)
            gen[node.output[0]] = anchor
            last_relu = node.output[0]
            continue
        exprs[node.output[0]] = _apply(op, args, attrs, node, where)
        gen[node.output[0]] = anchor

    if out.name not in exprs:
        raise UnsupportedModelError(f"graph output '{out.name}' is not computed from the input")
    if gen[out.name] != anchor:
        raise UnsupportedModelError(f"graph output '{out.name}' bypasses the last ReLU; only chain-shaped "
                                    f"networks are supported")
    e = exprs[out.name]
    dense.append(Dense(e.A, e.c))
    out_shape = _dims(out) or e.shape
    return Network.from_layers(dense, masks, input_name=inp.name, output_name=out.name,
                               input_shape=in_shape, output_shape=out_shape)


def _partial_relu_layer(node, attrs, args, gen, anchor, last_relu, exprs, dense, masks, where):
    """Turn the last layer (opened by Relu `last_relu`) into a partial-ReLU layer for Concat(relu, linear).

    Sound only when the Relu's output has not been used yet (no other tensor of this anchor exists) and
    the linear part is affine in the same previous layer the Relu read: both are checked.
    """
    names = list(node.input)
    axis = attrs.get("axis")
    ok_shape = all(isinstance(a, _Expr) and len(a.shape) == 2 for a in args) and axis in (1, -1)
    if len(names) != 2 or not ok_shape or last_relu not in names:
        raise UnsupportedModelError(f"{where}: Concat is supported only as Concat(Relu(Gemm(h)), Gemm(h)) along "
                                    "axis 1, the partial-ReLU layer that equiv writes")
    r = names.index(last_relu)
    lin = names[1 - r]
    used = [n for n, g in gen.items() if g == anchor and n != last_relu]
    if gen.get(lin) != anchor - 1 or used:
        raise UnsupportedModelError(f"{where}: Concat must join a fresh Relu output with an affine tensor of the "
                                    "layer before that Relu (a partial-ReLU layer); this graph has another shape")
    e = exprs[lin]
    relu_layer = dense[-1]
    if e.A.shape[1] != relu_layer.n_in:
        raise UnsupportedModelError(f"{where}: the two Concat inputs do not read the same layer")
    n_r, n_l = relu_layer.n_out, e.A.shape[0]
    parts_W = [relu_layer.W, e.A] if r == 0 else [e.A, relu_layer.W]
    parts_b = [relu_layer.b, e.c] if r == 0 else [e.c, relu_layer.b]
    dense[-1] = Dense(np.vstack(parts_W), np.concatenate(parts_b))
    masks[-1] = np.concatenate([np.ones(n_r, bool), np.zeros(n_l, bool)] if r == 0
                               else [np.zeros(n_l, bool), np.ones(n_r, bool)])


def _apply(op, args, attrs, node, where) -> _Expr:
    """The affine expression of one linear node's output."""
    x = args[0]
    if op in ("Identity", "Dropout"):
        return x
    if op == "Neg":
        return _Expr(-x.A, -x.c, x.shape)
    if op in ("Add", "Sub", "Mul", "Div"):
        return _elementwise(op, args, where)
    if op == "Flatten":
        axis = attrs.get("axis", 1) % max(len(x.shape), 1)
        return _Expr(x.A, x.c, (int(np.prod(x.shape[:axis])), int(np.prod(x.shape[axis:]))))
    if op == "Reshape":
        target = [int(v) for v in args[1]]
        target = [x.shape[i] if v == 0 and not attrs.get("allowzero", 0) else v for i, v in enumerate(target)]
        return _Expr(x.A, x.c, tuple(np.empty(x.shape).reshape(target).shape))
    if op in ("Squeeze", "Unsqueeze"):
        axes = attrs.get("axes", list(args[1].astype(int)) if len(args) > 1 and args[1] is not None else None)
        arr = np.empty(x.shape)
        arr = (np.squeeze(arr, axis=tuple(axes)) if axes is not None else np.squeeze(arr)) if op == "Squeeze" \
            else np.expand_dims(arr, axis=tuple(axes))
        return _Expr(x.A, x.c, arr.shape)
    if op == "Transpose":
        perm = attrs.get("perm", list(range(len(x.shape)))[::-1])
        idx = np.arange(x.A.shape[0]).reshape(x.shape).transpose(perm)
        return _Expr(x.A[idx.reshape(-1)], x.c[idx.reshape(-1)], idx.shape)
    if op == "MatMul":
        W = args[1]
        if not isinstance(x, _Expr) or not isinstance(W, np.ndarray) or W.ndim != 2:
            raise UnsupportedModelError(f"{where}: only tensor @ constant 2-D matrix is supported")
        lead = int(np.prod(x.shape[:-1]))
        T = np.kron(np.eye(lead), W.T)
        return _Expr(T @ x.A, T @ x.c, x.shape[:-1] + (W.shape[1],))
    if op == "Gemm":
        if attrs.get("transA", 0) or int(np.prod(x.shape[:-1])) != 1:
            raise UnsupportedModelError(f"{where}: Gemm with transA or a batch larger than 1 is not supported")
        B = args[1].T if attrs.get("transB", 0) else args[1]
        alpha, beta = attrs.get("alpha", 1.0), attrs.get("beta", 1.0)
        T = alpha * B.T
        bias = np.zeros(B.shape[1]) if len(args) < 3 or args[2] is None else \
            beta * np.broadcast_to(args[2], (1, B.shape[1])).reshape(-1)
        return _Expr(T @ x.A, T @ x.c + bias, (1, B.shape[1]))
    if op == "Conv":
        T, bias, shape = _conv_matrix(x.shape, args[1], args[2] if len(args) > 2 else None, attrs, where)
        return _Expr(T @ x.A, T @ x.c + bias, shape)
    if op == "BatchNormalization":
        scale, B, mean, var = args[1:5]
        k = scale / np.sqrt(var + attrs.get("epsilon", 1e-5))
        cshape = (1, -1) + (1,) * (len(x.shape) - 2)
        kk = np.broadcast_to(k.reshape(cshape), x.shape).reshape(-1)
        off = np.broadcast_to((B - mean * k).reshape(cshape), x.shape).reshape(-1)
        return _Expr(x.A * kk[:, None], x.c * kk + off, x.shape)
    raise UnsupportedModelError(f"{where}: not supported")  # pragma: no cover (guarded by SUPPORTED_OPS)


def _elementwise(op, args, where) -> _Expr:
    a, b = args[0], args[1]
    if isinstance(a, _Expr) and isinstance(b, _Expr):
        if op not in ("Add", "Sub") or a.A.shape != b.A.shape:
            raise UnsupportedModelError(f"{where}: {op} of two computed tensors is not linear or shapes differ")
        s = 1.0 if op == "Add" else -1.0
        return _Expr(a.A + s * b.A, a.c + s * b.c, a.shape)
    expr, const, expr_first = (a, b, True) if isinstance(a, _Expr) else (b, a, False)
    shape = np.broadcast_shapes(expr.shape, const.shape)
    if int(np.prod(shape)) != expr.A.shape[0]:
        raise UnsupportedModelError(f"{where}: broadcasting a constant of shape {const.shape} enlarges the tensor")
    k = np.broadcast_to(const, shape).reshape(-1)
    if op == "Add":
        return _Expr(expr.A, expr.c + k, shape)
    if op == "Sub":
        return _Expr(expr.A, expr.c - k, shape) if expr_first else _Expr(-expr.A, k - expr.c, shape)
    if op == "Mul":
        return _Expr(expr.A * k[:, None], expr.c * k, shape)
    if not expr_first:
        raise UnsupportedModelError(f"{where}: dividing a constant by a tensor is not linear")
    if np.any(k == 0):
        raise UnsupportedModelError(f"{where}: division by zero in a constant")
    return _Expr(expr.A / k[:, None], expr.c / k, shape)


def _conv_matrix(in_shape, W, bias, attrs, where):
    """Lower a 2-D Conv exactly to a dense matrix by convolving the identity basis (float64)."""
    if len(in_shape) != 4 or W.ndim != 4:
        raise UnsupportedModelError(f"{where}: only 2-D convolutions on NCHW inputs are supported")
    _, C, H, Wd = in_shape
    M, Cg, kh, kw = W.shape
    group = attrs.get("group", 1)
    sh, sw = attrs.get("strides", [1, 1])
    dh, dw = attrs.get("dilations", [1, 1])
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise UnsupportedModelError(f"{where}: auto_pad is not supported; use explicit pads")
    pt, pl, pb, pr = attrs.get("pads", [0, 0, 0, 0])
    Ho = (H + pt + pb - dh * (kh - 1) - 1) // sh + 1
    Wo = (Wd + pl + pr - dw * (kw - 1) - 1) // sw + 1
    n = C * H * Wd
    basis = np.pad(np.eye(n).reshape(n, C, H, Wd), ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    out = np.zeros((n, M, Ho, Wo))
    mg = M // group
    for gi in range(group):
        xs = basis[:, gi * Cg:(gi + 1) * Cg]
        ws = W[gi * mg:(gi + 1) * mg]
        for i in range(kh):
            for j in range(kw):
                patch = xs[:, :, i * dh:i * dh + sh * (Ho - 1) + 1:sh, j * dw:j * dw + sw * (Wo - 1) + 1:sw]
                out[:, gi * mg:(gi + 1) * mg] += np.einsum("ncij,mc->nmij", patch, ws[:, :, i, j])
    T = out.reshape(n, -1).T
    b = np.zeros(M) if bias is None else bias
    return T, np.repeat(b, Ho * Wo), (1, M, Ho, Wo)


# ---- export -----------------------------------------------------------------------------------

def _value_info(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, [d if isinstance(d, int) else str(d) for d in shape])


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
    body_nodes, inits, y = body("h0")
    # batch dimension (first) left free so the model also runs on batches; the others are fixed
    rest = list(net.output_shape[1:])
    out_shape = [-1] + rest if rest and all(isinstance(d, int) and d > 0 for d in rest) else [-1, net.n_outputs]
    nodes = [helper.make_node("Reshape", [net.input_name, "in_shape"], ["h0"]), *body_nodes,
             helper.make_node("Reshape", [y, "out_shape"], [net.output_name])]
    inits = [_int64("in_shape", [-1, net.n_inputs]), *inits, _int64("out_shape", out_shape)]
    graph = helper.make_graph(nodes, graph_name, [_value_info(net.input_name, net.input_shape)],
                              [_value_info(net.output_name, net.output_shape)], inits)
    model = helper.make_model(graph, producer_name=producer, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def default_file_mode() -> int:
    """0666 minus the process umask: the mode `open()` would have given a new file."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def save_onnx_atomic(model: onnx.ModelProto, path: str | os.PathLike, inputs_not_to_overwrite=()) -> Path:
    """Write model to path via a temporary file and rename; refuse to overwrite any input file."""
    path = Path(path)
    for src in inputs_not_to_overwrite:
        if src and Path(src).exists() and path.exists() and os.path.samefile(src, path):
            raise InputFileError(f"refusing to overwrite the input file {src}; choose another output path")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(model.SerializeToString())
        os.chmod(tmp, default_file_mode())   # mkstemp makes 0600; a written model gets the usual mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
