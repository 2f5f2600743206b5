"""ONNX import, one handler per op: each adds the IR nodes computing one ONNX node to the builder."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from ..errors import UnsupportedModelError
from . import ops
from .chain_lowering import power_of_two
from .conv import ConvGeometry, conv_forward, pool_kernel

if TYPE_CHECKING:
    from .onnx_import import _Builder


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
    if not left and W.ndim == 1 and len(s) >= 2 and s[-1] == W.shape[0]:
        # tensor @ vector: a one-output dense layer on the last axis, then the axis dropped; read as a MatMulConst
        # it was written back as a MatMul by a (k, 1) matrix, which reads as this, and a record could not match
        return _dense(b, x, W, None, node.output[0], where)
    if left and W.ndim == 2 and len(s) >= 2 and s[-2] == W.shape[1]:
        return _left(b, W, x, node.output[0], where)
    try:
        out = np.matmul(np.zeros(W.shape), np.zeros(s)).shape if left else np.matmul(np.zeros(s), np.zeros(W.shape)).shape
    except ValueError:
        raise UnsupportedModelError(f"{where}: shapes {s} and {W.shape} do not multiply") from None
    # 1-D operands: numpy/ONNX promote them to matrices and drop the added axis afterwards
    W2 = W if W.ndim >= 2 else (W[None, :] if left else W[:, None])
    x2 = x
    if len(s) == 1:
        x2 = _reshape_like(b, x, (s[0], 1) if left else (1, s[0]), None)
    s2 = b.shapes[x2]
    shape2 = np.matmul(np.zeros(W2.shape), np.zeros(s2)).shape if left else np.matmul(np.zeros(s2), np.zeros(W2.shape)).shape
    name = node.output[0] if tuple(shape2) == tuple(out) else None
    # the promoted product as the op its written form (a MatMul by the 2-D constant) reads back as, so that a
    # record of equiv's own output matches it
    if left and W2.ndim == 2 and len(s2) >= 2 and s2[-2] == W2.shape[1]:
        y = _left(b, W2, x2, name, where)
    elif not left and W2.ndim == 2 and s2[-1] == W2.shape[0]:
        y = _dense(b, x2, W2, None, name, where)
    else:
        y = b.add(ops.MatMulConst(tuple(shape2), W=W2, left=left, in_shape=s2), [x2], name)
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
    """Y = alpha A' B' + beta C (A' = A or A^T, B' likewise) with one of A, B constant; C constant or computed."""
    A, B = b.arg(node.input[0], where), b.arg(node.input[1], where)
    C = b.arg(node.input[2], where) if len(node.input) > 2 and node.input[2] else None
    alpha, beta = attrs.get("alpha", 1.0), attrs.get("beta", 1.0)
    if isinstance(A, str) == isinstance(B, str):
        raise UnsupportedModelError(f"{where}: Gemm needs one constant and one computed factor")
    for v in (A, B):
        if (np.ndim(v) if isinstance(v, np.ndarray) else len(b.shapes[v])) != 2:
            raise UnsupportedModelError(f"{where}: Gemm's factors must be matrices")
    out = node.output[0]
    bias = None if C is None or isinstance(C, str) else beta * C
    target = None if isinstance(C, str) else out        # a computed C is added after the product

    def transposed(x):
        s = b.shapes[x]
        return b.add(ops.Transpose((s[1], s[0]), perm=(1, 0)), [x])

    # alpha x B and beta x C round unless they are powers of two: not the model's own numbers (`bounds.exact`)
    rounds = not power_of_two(alpha) or (bias is not None and not power_of_two(beta))
    if isinstance(A, str):              # tensor @ constant: a dense layer
        y = _dense(b, transposed(A) if attrs.get("transA", 0) else A,
                   alpha * (B.T if attrs.get("transB", 0) else B), bias, target, where)
        if rounds:
            b.rounded.add(y)
    else:                               # constant @ tensor: Y^T = B'^T A'^T, a dense layer on B'^T
        Am = A.T if attrs.get("transA", 0) else A
        x = B if attrs.get("transB", 0) else transposed(B)
        m, n = Am.shape[0], b.shapes[x][0]
        if Am.shape[1] != b.shapes[x][1]:
            raise UnsupportedModelError(f"{where}: shapes {Am.shape} and {b.shapes[x][::-1]} do not multiply")
        biasT = None if bias is None else np.broadcast_to(bias, _broadcast((m, n), np.shape(bias), where)).T.copy()
        yT = _dense(b, x, alpha * Am.T, biasT, None, where)
        if rounds:
            b.rounded.add(yT)
        y = b.add(ops.Transpose((m, n), perm=(1, 0)), [yT], target)
    if isinstance(C, str):
        if beta != 1.0:
            C = b.add(ops.Scale(b.shapes[C], s=np.array(float(beta))), [C])
        shape = _broadcast(b.shapes[y], b.shapes[C], where)
        if shape != b.shapes[y]:
            raise UnsupportedModelError(f"{where}: Gemm's bias C enlarges the product")
        b.add(ops.Add(shape, in_shapes=[b.shapes[y], b.shapes[C]], signs=(1.0, 1.0)), [y, C], out)


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
    # a pool's window sum or pick (equiv writes a pool it could not keep whole that way): not parameters
    b.add(ops.Conv(shape, W=W, geo=geo, bias=bias, pooling=pool_kernel(W, geo, bias) is not None), [x],
          node.output[0])


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
    total = b.add(ops.Conv(shape, W=W, geo=geo, pooling=True), [x], hint=f"{node.output[0]}/sum")
    if attrs.get("count_include_pad", 0) or not any(geo.pads):
        counts = np.array(float(kh * kw))
    else:  # ONNX default: padding does not count
        counts = conv_forward(np.ones((1, s[1], s[2], s[3])), W, geo)[0]
    # a window lying wholly in the padding averages nothing: onnxruntime gives 0 there (its sum is 0 too)
    scale = np.divide(1.0, counts, out=np.zeros_like(counts, dtype=np.float64), where=counts != 0)
    b.add(ops.Scale(shape, s=scale), [total], node.output[0])


def _maxpool(b: _Builder, node, attrs, where):
    """Exactly, with ReLUs: each window offset (i, j) picked by a one-hot depthwise convolution, the picks paired
    in a tree, max(a, c) = c + relu(a - c).  A proof that a - c keeps one sign removes that ReLU, so a pool whose
    winner is known on the region simplifies to a selection.  Padding (-inf in ONNX) only on a ReLU's output:
    its values are >= 0 and every window holds one, so the zeros of a convolution's padding never win."""
    x = b.arg(node.input[0], where)
    s = b.shapes[x]
    if len(s) != 4 or attrs.get("ceil_mode", 0) or (len(node.output) > 1 and node.output[1]):
        raise UnsupportedModelError(f"{where}: only 2-D MaxPool on NCHW inputs, without ceil_mode or Indices, "
                                    "is supported")
    kh, kw = attrs["kernel_shape"]
    C = s[1]
    geo = _geometry(s, np.zeros((C, 1, kh, kw)), {**attrs, "group": C}, where)
    if any(geo.pads) and type(next((op for n, op, _ in b.nodes if n == x), None)) is not ops.Relu:
        raise UnsupportedModelError(f"{where}: a padded MaxPool is supported on a Relu's output only (its padding "
                                    "is -inf)")
    if any(geo.pads) and not conv_forward(np.ones((1, C, s[2], s[3])), np.ones((C, 1, kh, kw)), geo)[0].all():
        raise UnsupportedModelError(f"{where}: a window of this MaxPool lies wholly in its padding (its dilation "
                                    "skips the input), where onnxruntime gives the lowest float: not supported")
    shape = (s[0], C) + geo.out_hw
    picks, hint = [], f"{node.output[0]}/max"      # the inner nodes' names say which MaxPool they are part of
    for i in range(kh):
        for j in range(kw):
            W = np.zeros((C, 1, kh, kw))
            W[:, 0, i, j] = 1.0
            picks.append(b.add(ops.Conv(shape, W=W, geo=geo, pooling=True), [x], hint=hint))
    while len(picks) > 1:
        last, pairs = len(picks) == 2, []
        for a, c in zip(picks[0::2], picks[1::2]):
            d = b.add(ops.Add(shape, in_shapes=[shape, shape], signs=(1.0, -1.0)), [a, c], hint=hint)
            r = b.add(ops.Relu(shape), [d], hint=hint)
            pairs.append(b.add(ops.Add(shape, in_shapes=[shape, shape]), [r, c], node.output[0] if last else None,
                               hint=hint))
        picks = pairs + picks[len(pairs) * 2:]
    if kh * kw == 1:
        _reshape_like(b, picks[0], shape, node.output[0])


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


def _dropout(b: _Builder, node, attrs, where):
    """Inference Dropout is the identity; training mode (a constant true training_mode, or is_test = 0 before
    opset 7) drops at random and is refused."""
    mode = b.consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if (mode is not None and bool(np.asarray(mode).reshape(-1)[0])) or attrs.get("is_test", 1) == 0:
        raise UnsupportedModelError(f"{where}: training mode is not supported")
    _identity(b, node, attrs, where)


def _batchnorm(b: _Builder, node, attrs, where):
    if attrs.get("training_mode", 0):
        raise UnsupportedModelError(f"{where}: training mode is not supported (batch statistics)")
    x = b.arg(node.input[0], where)
    s = b.shapes[x]
    scale, B, mean, var = (b.consts[n] for n in node.input[1:5])
    denom = np.asarray(var + attrs.get("epsilon", 1e-5), np.float64)
    if not np.all(denom > 0):
        bad = np.flatnonzero(~(denom.reshape(-1) > 0))
        raise UnsupportedModelError(f"{where}: variance + epsilon is {float(denom.reshape(-1)[bad[0]]):g} for "
                                    f"channel {int(bad[0])}: its square root is not a number (onnxruntime gives NaN)")
    k = scale / np.sqrt(denom)
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


HANDLERS = {"Relu": _relu, "Identity": _identity, "Dropout": _dropout, "Flatten": _flatten, "Reshape": _reshape,
            "Squeeze": _squeeze, "Unsqueeze": _squeeze, "Transpose": _transpose, "Add": _binary, "Sub": _binary,
            "Mul": _binary, "Div": _binary, "Neg": _neg, "MatMul": _matmul, "Gemm": _gemm, "Conv": _conv,
            "AveragePool": _avgpool, "MaxPool": _maxpool, "Pad": _pad, "BatchNormalization": _batchnorm, "Concat": _concat}
