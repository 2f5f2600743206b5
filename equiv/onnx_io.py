"""ONNX <-> Network.

Import folds every linear op between two ReLUs (normalisation Sub/Div, Flatten, MatMul+Add, Gemm,
Conv, BatchNormalization, Concat, ...) into one exact affine map by tracking, for each tensor, its affine
expression ``A @ anchor + c`` over the flattened output of the last ReLU (or the network input). Every
shape op is an exact row gather on ``(A, c)`` built from index arrays (``np.arange(n).reshape(shape)``
moved like the tensor), so ONNX's flat order is followed exactly. The graph is validated (ops, inputs,
which operands must be constants) before any heavy work, and after building, every tracked tensor is
compared with onnxruntime's value of it (``equiv.import_check``).
Export writes a clean opset-``OPSET`` model with the original input/output names and shapes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

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
# inputs (by position) that must be constants for the op to be affine in the others
_CONST_INPUTS = {"Conv": (1, 2), "BatchNormalization": (1, 2, 3, 4), "Reshape": (1,), "Squeeze": (1,),
                 "Unsqueeze": (1,), "Dropout": (1, 2)}
_CONSTANT_ATTRS = ("value", "value_float", "value_floats", "value_int", "value_ints")


@dataclass
class _Expr:
    """A tensor as an affine function of the current anchor: flat(tensor) = A @ anchor + c."""

    A: np.ndarray
    c: np.ndarray
    shape: tuple


@dataclass
class _Anchor:
    """How to read one anchor's variables from the model's own tensors: v = flat(tensor)[gather]."""

    tensor: str                  # the model input, a Relu output, or a partial-ReLU Concat output
    gather: np.ndarray | None    # None: v = flat(tensor)
    where: str                   # the node that opened it


@dataclass
class _Tracked:
    """One tensor the importer computed: flat(tensor) = expr.A @ (variables of anchors[anchor]) + expr.c."""

    tensor: str
    where: str
    expr: _Expr
    anchor: int


@dataclass
class ImportTrace:
    """Everything the import derived, for the check against onnxruntime (equiv.import_check)."""

    input_name: str
    input_shape: tuple                            # concrete (batch dims 1)
    output_name: str
    anchors: list = field(default_factory=list)   # _Anchor
    tensors: list = field(default_factory=list)   # _Tracked
    layers: list = field(default_factory=list)    # layers[k]: index in anchors of hidden layer k's output (0: input)
    identities: list = field(default_factory=list)  # the identity matrices (A of the input and of each Relu output)


def _dims(value_info) -> tuple:
    return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "N")
                 for d in value_info.type.tensor_type.shape.dim)


def _concrete(shape: tuple) -> tuple:
    """Shape with symbolic (batch) dims set to 1: equiv reasons about one input at a time."""
    return tuple(d if isinstance(d, int) and d > 0 else 1 for d in shape)


def _where(node) -> str:
    return f"node '{node.name or node.output[0]}' ({node.op_type})"


def load_onnx(path: str | os.PathLike, check: bool = True) -> Network:
    """Read an ONNX file into a Network; raises UnsupportedModelError naming any unsupported node.

    With check (the default), every tensor of the import is compared with onnxruntime's value of it
    (see network_from_onnx).
    """
    from .ir.onnx_import import read_onnx_file
    net = network_from_onnx(read_onnx_file(path), check=check)
    net.meta["source"] = str(path)
    return net


def network_from_onnx(model: onnx.ModelProto, check: bool = True) -> Network:
    """The Network computing `model`; raises UnsupportedModelError naming any node equiv cannot fold exactly.

    With check (the default), the model is run in onnxruntime on a few random inputs with every tensor the
    importer tracked exposed, and each is compared with its expression over its anchor tensor, and the
    Network's output with the model's: a disagreement raises ImportMismatchError (a bug in equiv).
    """
    net, trace = trace_import(model)
    if check:
        from .import_check import check_import

        check_import(model, net, trace)
    return net


def _validate(model: onnx.ModelProto):
    """Cheap structural checks of the whole graph before any heavy work: ops, inputs, constant operands.

    Returns (the graph input, the graph output).
    """
    g = model.graph
    if not g.node:
        raise InputFileError("empty or corrupt ONNX model: its graph has no nodes")
    init_dims = {t.name: tuple(t.dims) for t in g.initializer}
    inputs = [i for i in g.input if i.name not in init_dims]
    if len(inputs) != 1 or len(g.output) != 1:
        raise UnsupportedModelError(
            f"equiv needs exactly one input and one output tensor; model has inputs "
            f"{[i.name for i in inputs]} and outputs {[o.name for o in g.output]}")
    for node in g.node:   # every op first: an unsupported node is named before any Conv is densified
        if node.op_type not in SUPPORTED_OPS or node.domain not in ("", "ai.onnx"):
            domain = f" of domain '{node.domain}'" if node.domain not in ("", "ai.onnx") else ""
            raise UnsupportedModelError(
                f"node '{node.name or node.output[0]}' uses op '{node.op_type}'{domain}, which equiv does not "
                f"support; supported ops: {', '.join(SUPPORTED_OPS)}")
    consts, computed = set(init_dims), {inputs[0].name}
    for node in g.node:
        op, where = node.op_type, _where(node)
        undefined = [n for n in node.input if n and n not in consts and n not in computed]
        if undefined:
            raise UnsupportedModelError(f"{where}: input '{undefined[0]}' is not computed by an earlier node (the "
                                        "graph is not in topological order, or reads an output equiv does not track)")
        attrs = {a.name for a in node.attribute}
        if op == "Constant":
            if not attrs & set(_CONSTANT_ATTRS):
                raise UnsupportedModelError(f"{where}: only a tensor or number 'value' is supported")
            consts.add(node.output[0])
            continue
        dyn = [i for i, n in enumerate(node.input) if n in computed]
        if not dyn:
            raise UnsupportedModelError(f"{where}: computing on constants only is not supported")
        bad = [i for i in _CONST_INPUTS.get(op, ()) if i in dyn]
        if bad:
            raise UnsupportedModelError(f"{where}: input '{node.input[bad[0]]}' must be a constant")
        if op in ("MatMul", "Gemm") and 0 in dyn and 1 in dyn:
            raise UnsupportedModelError(f"{where}: the product of two computed tensors is not linear")
        if op == "Mul" and len(dyn) > 1:
            raise UnsupportedModelError(f"{where}: the product of two computed tensors is not linear")
        if op == "Div" and 1 in dyn:
            raise UnsupportedModelError(f"{where}: dividing by a computed tensor is not linear")
        if op == "Conv" and (len(init_dims.get(node.input[1], (0,) * 4)) != 4):
            raise UnsupportedModelError(f"{where}: only 2-D convolutions on NCHW inputs are supported")
        if op in ("BatchNormalization", "Dropout"):
            a = {x.name: helper.get_attribute_value(x) for x in node.attribute}
            if a.get("training_mode", 0) or (op == "Dropout" and a.get("is_test", 1) == 0):
                raise UnsupportedModelError(f"{where}: training mode is not supported")
        computed.add(node.output[0])   # only the first output is tracked (not Dropout's mask, BN's statistics)
    if g.output[0].name not in computed:
        raise UnsupportedModelError(f"graph output '{g.output[0].name}' is not computed from the input")
    return inputs[0], g.output[0]


def trace_import(model: onnx.ModelProto) -> tuple[Network, ImportTrace]:
    """The Network, and the trace of the import (every tracked tensor's expression) for the check."""
    inp, out = _validate(model)
    g = model.graph
    consts = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in g.initializer}
    in_shape = _dims(inp)
    n0 = int(np.prod(_concrete(in_shape)))
    exprs = {inp.name: _Expr(np.eye(n0), np.zeros(n0), _concrete(in_shape))}
    trace = ImportTrace(inp.name, _concrete(in_shape), out.name, anchors=[_Anchor(inp.name, None, "the model input")],
                        identities=[exprs[inp.name].A])
    # every expression is over the anchor of its time; mixing anchors (a skip connection or a parallel
    # branch around a ReLU) would silently give a wrong network, so it is refused
    anchor, gen = 0, {inp.name: 0}
    version = [0]           # version[k]: index in trace.anchors of anchor k's variables (a Concat widens them)
    dense: list[Dense] = []
    masks: list[np.ndarray] = []
    last_relu = None        # output name of the Relu that opened the current anchor

    def track(name, e, g_, where):
        exprs[name] = e
        gen[name] = g_
        trace.tensors.append(_Tracked(name, where, e, version[g_]))

    for node in g.node:
        op = node.op_type
        where = _where(node)
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if op == "Constant":
            consts[node.output[0]] = _constant_value(attrs)
            continue
        args = [exprs[name] if name in exprs else consts.get(name) for name in node.input]
        in_exprs = [name for name in node.input if name in exprs]
        lagging = [name for name in in_exprs if gen[name] == anchor - 1]
        if op == "Concat" and last_relu in node.input and gen.get(last_relu) == anchor and lagging:
            # a partial-ReLU layer: Concat(Relu(A h + a), B h + b) (any axis, order, shapes), h being the
            # previous layer: the layer becomes [A; B] with ReLU on the A rows only, and the Concat's
            # output is the permutation (ONNX flat order) of these variables
            e, gather = _partial_relu_layer(node, attrs, args, gen, anchor, last_relu, exprs, dense, masks, where)
            trace.anchors.append(_Anchor(node.output[0], gather, where))
            version[anchor] = len(trace.anchors) - 1
            track(node.output[0], e, anchor, where)
            gen[last_relu] = -1    # the Relu output alone no longer matches the layer's (wider) variables
            continue
        if op != "Relu" and lagging and len(lagging) == len(in_exprs):
            # the linear branch of a partial-ReLU layer: affine in the layer before the last Relu; it may
            # only end in that layer's Concat (a Relu on it, or the graph output, is refused)
            track(node.output[0], _apply(op, args, attrs, where), anchor - 1, where)
            continue
        stale = [name for name in in_exprs if gen[name] != anchor]
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
            trace.anchors.append(_Anchor(node.output[0], None, where))
            version.append(len(trace.anchors) - 1)
            last_relu = node.output[0]
            track(node.output[0], _Expr(np.eye(n), np.zeros(n), e.shape), anchor, where)
            trace.identities.append(exprs[node.output[0]].A)
            continue
        track(node.output[0], _apply(op, args, attrs, where), anchor, where)

    if out.name not in exprs:
        raise UnsupportedModelError(f"graph output '{out.name}' is not computed from the input")
    if gen[out.name] != anchor:
        raise UnsupportedModelError(f"graph output '{out.name}' bypasses the last ReLU; only chain-shaped "
                                    f"networks are supported")
    e = exprs[out.name]
    dense.append(Dense(e.A, e.c))
    trace.layers = list(version)
    out_shape = _dims(out) or e.shape
    net = Network.from_layers(dense, masks, input_name=inp.name, output_name=out.name,
                              input_shape=in_shape, output_shape=out_shape)
    return net, trace


def _constant_value(attrs) -> np.ndarray:
    if "value" in attrs:
        return numpy_helper.to_array(attrs["value"]).astype(np.float64)
    key = next(k for k in _CONSTANT_ATTRS if k in attrs)
    return np.asarray(attrs[key], dtype=np.float64)


def _partial_relu_layer(node, attrs, args, gen, anchor, last_relu, exprs, dense, masks, where):
    """Turn the last layer (opened by Relu `last_relu`) into a partial-ReLU layer for Concat(relu, linear...).

    The layer's variables become [Relu rows; linear rows (each lagging input once, in order)]; returns the
    Concat output's expression over them (a 0/1 gather of ONNX's flat order, constants in c) and, for the
    check, the position of each variable in the Concat's flat output. Sound only when the Relu's output has
    not been used yet (no other tensor of this anchor exists) and the linear parts are affine in the same
    previous layer the Relu read: both are checked.
    """
    names = list(node.input)
    stale = [n for n in names if n in exprs and gen[n] not in (anchor, anchor - 1)]
    if stale:
        raise UnsupportedModelError(f"{where}: uses tensor '{stale[0]}' from before the last ReLU; only chain-shaped "
                                    "networks (no skip connections or parallel ReLU branches) are supported")
    used = [n for n, g in gen.items() if g == anchor and n != last_relu]
    current = [n for n in names if n in exprs and gen[n] == anchor and n != last_relu]
    if used or current:
        raise UnsupportedModelError(f"{where}: Concat must join a fresh Relu output with affine tensors of the "
                                    "layer before that Relu (a partial-ReLU layer); this graph has another shape")
    relu_layer = dense[-1]
    n_r = relu_layer.n_out
    lin = list(dict.fromkeys(n for n in names if n in exprs and gen[n] == anchor - 1))
    if any(exprs[n].A.shape[1] != relu_layer.n_in for n in lin):
        raise UnsupportedModelError(f"{where}: the Concat inputs do not read the same layer")
    offset = {last_relu: 0}
    n_vars = n_r
    for n in lin:
        offset[n] = n_vars
        n_vars += exprs[n].A.shape[0]
    const_vals, n_const = [], 0
    parts = []
    for name, a in zip(names, args):
        if name in offset:
            shape = exprs[name].shape
            parts.append(offset[name] + np.arange(int(np.prod(shape))).reshape(shape))
        else:
            arr = np.asarray(a, dtype=np.float64)
            parts.append(n_vars + n_const + np.arange(arr.size).reshape(arr.shape))
            const_vals.append(arr.reshape(-1))
            n_const += arr.size
    idx = _concat_index(parts, attrs, where)
    dense[-1] = Dense(np.vstack([relu_layer.W] + [exprs[n].A for n in lin]),
                      np.concatenate([relu_layer.b] + [exprs[n].c for n in lin]))
    masks[-1] = np.concatenate([np.ones(n_r, bool), np.zeros(n_vars - n_r, bool)])
    flat = idx.reshape(-1)
    is_var = flat < n_vars
    rows = np.flatnonzero(is_var)
    A = np.zeros((flat.size, n_vars))
    A[rows, flat[rows]] = 1.0
    c = np.zeros(flat.size)
    if n_const:
        c[~is_var] = np.concatenate(const_vals)[flat[~is_var] - n_vars]
    gather = np.empty(n_vars, dtype=np.int64)
    gather[flat[rows]] = rows      # every variable appears in the output (the Relu and each linear input)
    return _Expr(A, c, idx.shape), gather


def _concat_index(parts, attrs, where) -> np.ndarray:
    """np.concatenate of index arrays along the Concat's axis (ONNX: same rank, negative axis allowed)."""
    if "axis" not in attrs:
        raise UnsupportedModelError(f"{where}: Concat needs an axis")
    rank = parts[0].ndim
    axis = attrs["axis"]
    if any(p.ndim != rank for p in parts) or not -rank <= axis < rank:
        raise UnsupportedModelError(f"{where}: Concat inputs of ranks {[p.ndim for p in parts]} along axis {axis}")
    try:
        return np.concatenate(parts, axis=axis)
    except ValueError as exc:
        raise UnsupportedModelError(f"{where}: Concat of shapes {[p.shape for p in parts]}: {exc}") from None


def _gather(e: _Expr, idx: np.ndarray) -> _Expr:
    """The tensor whose flat element i is flat(e)[idx.flat[i]], of shape idx.shape."""
    flat = idx.reshape(-1)
    if flat.size == e.A.shape[0] and np.array_equal(flat, np.arange(flat.size)):
        return _Expr(e.A, e.c, idx.shape)
    return _Expr(e.A[flat], e.c[flat], idx.shape)


def _index(e: _Expr) -> np.ndarray:
    return np.arange(e.A.shape[0]).reshape(e.shape)


def _apply(op, args, attrs, where) -> _Expr:
    """The affine expression of one linear node's output."""
    x = args[0]
    if op == "Dropout" and len(args) > 2 and args[2] is not None and np.any(args[2]):
        raise UnsupportedModelError(f"{where}: training mode is not supported")
    if op in ("Identity", "Dropout"):
        return x
    if op == "Neg":
        return _Expr(-x.A, -x.c, x.shape)
    if op in ("Add", "Sub", "Mul", "Div"):
        return _elementwise(op, args[0], args[1], where)
    if op == "Concat":
        return _concat(args, attrs, where)
    if op == "Flatten":
        rank = len(x.shape)
        axis = attrs.get("axis", 1)
        axis = axis + rank if axis < 0 else axis
        if not 0 <= axis <= rank:
            raise UnsupportedModelError(f"{where}: Flatten axis {attrs.get('axis')} of a rank-{rank} tensor")
        return _Expr(x.A, x.c, (int(np.prod(x.shape[:axis])), int(np.prod(x.shape[axis:]))))
    if op == "Reshape":
        target = [int(v) for v in np.asarray(args[1]).reshape(-1)]
        if not attrs.get("allowzero", 0):
            target = [x.shape[i] if v == 0 else v for i, v in enumerate(target)]
        try:
            return _Expr(x.A, x.c, tuple(np.empty(x.shape).reshape(target).shape))
        except ValueError:
            raise UnsupportedModelError(f"{where}: cannot reshape {x.shape} to {target}") from None
    if op in ("Squeeze", "Unsqueeze"):
        axes = attrs.get("axes")
        if axes is None and len(args) > 1 and args[1] is not None:
            axes = [int(v) for v in np.asarray(args[1]).reshape(-1)]
        arr = np.empty(x.shape)
        try:
            if op == "Squeeze":
                arr = np.squeeze(arr, axis=tuple(axes)) if axes is not None else np.squeeze(arr)
            else:
                arr = np.expand_dims(arr, axis=tuple(axes))
        except (ValueError, TypeError):
            raise UnsupportedModelError(f"{where}: axes {axes} do not fit shape {x.shape}") from None
        return _Expr(x.A, x.c, arr.shape)
    if op == "Transpose":
        perm = attrs.get("perm", list(range(len(x.shape)))[::-1])
        return _gather(x, _index(x).transpose(perm))
    if op == "MatMul":
        a, b = args[0], args[1]
        if isinstance(a, _Expr):
            return _matmul_right(a, np.asarray(b, dtype=np.float64), where)
        return _matmul_left(np.asarray(a, dtype=np.float64), b, where)
    if op == "Gemm":
        return _gemm(args, attrs, where)
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


def _concat(args, attrs, where) -> _Expr:
    """Concat of tensors of one anchor and constants: rows stacked in ONNX's flat order of the output."""
    ncols = next(a.A.shape[1] for a in args if isinstance(a, _Expr))
    As, cs, parts, n = [], [], [], 0
    for a in args:
        if isinstance(a, _Expr):
            As.append(a.A)
            cs.append(a.c)
            shape = a.shape
        else:
            arr = np.asarray(a, dtype=np.float64)
            As.append(np.zeros((arr.size, ncols)))
            cs.append(arr.reshape(-1))
            shape = arr.shape
        size = int(np.prod(shape))
        parts.append(n + np.arange(size).reshape(shape))
        n += size
    idx = _concat_index(parts, attrs, where)
    return _gather(_Expr(np.vstack(As), np.concatenate(cs), (n,)), idx)


def _broadcast(e: _Expr, shape: tuple) -> _Expr:
    """e broadcast (numpy/ONNX multidirectional rules) to shape: a row gather."""
    return _gather(e, np.broadcast_to(_index(e), shape))


def _elementwise(op, a, b, where) -> _Expr:
    a_shape = a.shape if isinstance(a, _Expr) else np.shape(a)
    b_shape = b.shape if isinstance(b, _Expr) else np.shape(b)
    try:
        shape = tuple(np.broadcast_shapes(a_shape, b_shape))
    except ValueError:
        raise UnsupportedModelError(f"{where}: shapes {a_shape} and {b_shape} do not broadcast") from None
    if isinstance(a, _Expr) and isinstance(b, _Expr):
        if op not in ("Add", "Sub"):
            raise UnsupportedModelError(f"{where}: {op} of two computed tensors is not linear")
        a, b = _broadcast(a, shape), _broadcast(b, shape)
        s = 1.0 if op == "Add" else -1.0
        return _Expr(a.A + s * b.A, a.c + s * b.c, shape)
    expr_first = isinstance(a, _Expr)
    expr, const = (a, b) if expr_first else (b, a)
    expr = _broadcast(expr, shape)
    k = np.broadcast_to(np.asarray(const, dtype=np.float64), shape).reshape(-1)
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


def _linear(e: _Expr, f, shape) -> _Expr:
    """Apply the linear map f (on row blocks: (rows, q) -> (rows', q)) to A and c."""
    return _Expr(f(e.A), f(e.c[:, None])[:, 0], shape)


def _matmul_right(x: _Expr, W: np.ndarray, where) -> _Expr:
    """x @ W (numpy matmul rules: 1-D operands, broadcast batch dims) for a constant W."""
    if len(x.shape) == 0 or W.ndim == 0:
        raise UnsupportedModelError(f"{where}: MatMul of a scalar")
    xs = (1,) + tuple(x.shape) if len(x.shape) == 1 else tuple(x.shape)     # (..., m, k)
    Wm = W[:, None] if W.ndim == 1 else W                                   # (..., k, n)
    m, k, n = xs[-2], xs[-1], Wm.shape[-1]
    if Wm.shape[-2] != k:
        raise UnsupportedModelError(f"{where}: MatMul of shapes {x.shape} and {W.shape}")
    try:
        batch = tuple(np.broadcast_shapes(xs[:-2], Wm.shape[:-2]))
    except ValueError:
        raise UnsupportedModelError(f"{where}: MatMul batch dims {x.shape} and {W.shape} do not broadcast") from None
    idx = np.broadcast_to(np.arange(int(np.prod(xs))).reshape(xs), batch + (m, k)).reshape(-1)
    same = idx.size == int(np.prod(xs))       # no batch broadcast: rows in place
    WT = np.ascontiguousarray(np.broadcast_to(np.swapaxes(Wm, -1, -2), batch + (n, k)))[..., None, :, :]

    def f(X):
        q = X.shape[1]
        Xg = (X if same else X[idx]).reshape(batch + (m, k, q))
        return np.matmul(WT, Xg).reshape(-1, q)          # out[..., i, j, :] = sum_l W[..., l, j] X[..., i, l, :]

    shape = batch + (m, n)
    if len(x.shape) == 1:
        shape = shape[:-2] + shape[-1:]
    if W.ndim == 1:
        shape = shape[:-1]
    return _linear(x, f, shape)


def _matmul_left(W: np.ndarray, x: _Expr, where) -> _Expr:
    """W @ x (numpy matmul rules) for a constant W."""
    if len(x.shape) == 0 or W.ndim == 0:
        raise UnsupportedModelError(f"{where}: MatMul of a scalar")
    Wm = W[None, :] if W.ndim == 1 else W                                   # (..., m, k)
    xs = tuple(x.shape) + (1,) if len(x.shape) == 1 else tuple(x.shape)     # (..., k, n)
    m, k, n = Wm.shape[-2], xs[-2], xs[-1]
    if Wm.shape[-1] != k:
        raise UnsupportedModelError(f"{where}: MatMul of shapes {W.shape} and {x.shape}")
    try:
        batch = tuple(np.broadcast_shapes(Wm.shape[:-2], xs[:-2]))
    except ValueError:
        raise UnsupportedModelError(f"{where}: MatMul batch dims {W.shape} and {x.shape} do not broadcast") from None
    idx = np.broadcast_to(np.arange(int(np.prod(xs))).reshape(xs), batch + (k, n)).reshape(-1)
    same = idx.size == int(np.prod(xs))
    Wb = np.broadcast_to(Wm, batch + (m, k))

    def f(X):
        q = X.shape[1]
        Xg = (X if same else X[idx]).reshape(batch + (k, n * q))
        return np.matmul(Wb, Xg).reshape(-1, q)          # out[..., i, j, :] = sum_l W[..., i, l] X[..., l, j, :]

    shape = batch + (m, n)
    if W.ndim == 1:
        shape = shape[:-2] + shape[-1:]
    if len(x.shape) == 1:
        shape = shape[:-1]
    return _linear(x, f, shape)


def _gemm(args, attrs, where) -> _Expr:
    """alpha * A' @ B' + beta * C with A' = A^T if transA, B' = B^T if transB (one of A, B constant)."""
    a, b = args[0], args[1]
    c = args[2] if len(args) > 2 else None
    alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
    for v in (a, b):
        if len(v.shape if isinstance(v, _Expr) else np.shape(v)) != 2:
            raise UnsupportedModelError(f"{where}: Gemm needs 2-D A and B")
    if not isinstance(a, _Expr) and not isinstance(b, _Expr):    # only C is computed
        A = np.asarray(a, dtype=np.float64)
        B = np.asarray(b, dtype=np.float64)
        prod = alpha * ((A.T if attrs.get("transA", 0) else A) @ (B.T if attrs.get("transB", 0) else B))
        y = _Expr(np.zeros((prod.size, c.A.shape[1])), prod.reshape(-1), prod.shape)
    elif isinstance(a, _Expr):
        a = _gather(a, _index(a).T) if attrs.get("transA", 0) else a
        B = np.asarray(b, dtype=np.float64)
        B = B.T if attrs.get("transB", 0) else B
        y = _matmul_right(a, alpha * B, where)
    else:
        A = np.asarray(a, dtype=np.float64)
        A = A.T if attrs.get("transA", 0) else A
        b = _gather(b, _index(b).T) if attrs.get("transB", 0) else b
        y = _matmul_left(alpha * A, b, where)
    if c is None:
        return y
    c_shape = c.shape if isinstance(c, _Expr) else np.shape(c)
    try:
        ok = tuple(np.broadcast_shapes(c_shape, y.shape)) == tuple(y.shape)   # C broadcasts to (M, N) only
    except ValueError:
        ok = False
    if not ok:
        raise UnsupportedModelError(f"{where}: Gemm bias C of shape {c_shape} does not broadcast to {y.shape}")
    c = _Expr(beta * c.A, beta * c.c, c.shape) if isinstance(c, _Expr) else beta * np.asarray(c, dtype=np.float64)
    return _elementwise("Add", y, c, where)


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

def batched_shape(shape: tuple) -> tuple:
    """The shape with a symbolic batch dimension "N" first, where the original had a symbolic one or a fixed 1
    (a written model runs on batches of any size, as the README promises)."""
    shape = tuple(shape)
    if len(shape) >= 2 and (not isinstance(shape[0], int) or shape[0] in (0, 1)):
        return ("N",) + shape[1:]
    return shape


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
    graph = helper.make_graph(nodes, graph_name, [_value_info(net.input_name, batched_shape(net.input_shape))],
                              [_value_info(net.output_name, batched_shape(net.output_shape))], inits)
    model = helper.make_model(graph, producer_name=producer, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model
