"""ONNX <-> Network.

Import folds every linear op between two ReLUs (normalisation Sub/Div, Flatten, MatMul+Add, Gemm,
Conv, BatchNormalization, Concat, ...) into one exact affine map by tracking, for each tensor, its affine
expression ``A @ anchor + c`` over the flattened output of the last ReLU (or the network input). Every
shape op is an exact row gather on ``(A, c)`` built from index arrays (``np.arange(n).reshape(shape)``
moved like the tensor), so ONNX's flat order is followed exactly. The graph is validated (ops, inputs,
which operands must be constants) before any heavy work, and after building, every tracked tensor is
compared with onnxruntime's value of it (``equiv.ir.chain_check``).
Export writes a clean opset-``OPSET`` model with the original input/output names and shapes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .chain_export import (  # noqa: F401
    IR_VERSION,
    OPSET,
    batched_shape,
    model_around,
    network_nodes,
    network_to_onnx,
)
from .chain_lowering import _apply, _concat_index, _Expr
from ..errors import InputFileError, UnsupportedModelError
from .network import Dense, Network

SUPPORTED_OPS = (
    "Gemm", "MatMul", "Add", "Sub", "Mul", "Div", "Neg", "Relu", "Flatten", "Reshape", "Identity",
    "Dropout", "Constant", "Squeeze", "Unsqueeze", "Transpose", "Conv", "BatchNormalization", "Concat",
)
# inputs (by position) that must be constants for the op to be affine in the others
_CONST_INPUTS = {"Conv": (1, 2), "BatchNormalization": (1, 2, 3, 4), "Reshape": (1,), "Squeeze": (1,),
                 "Unsqueeze": (1,), "Dropout": (1, 2)}
_CONSTANT_ATTRS = ("value", "value_float", "value_floats", "value_int", "value_ints")


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
    """Everything the import derived, for the check against onnxruntime (equiv.ir.chain_check)."""

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
    from .onnx_import import read_onnx_file
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
        from .chain_check import check_import

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
    exprs = {inp.name: _Expr(np.eye(n0), np.zeros(n0), _concrete(in_shape), exact=True)}
    trace = ImportTrace(inp.name, _concrete(in_shape), out.name, anchors=[_Anchor(inp.name, None, "the model input")],
                        identities=[exprs[inp.name].A])
    # every expression is over the anchor of its time; mixing anchors (a skip connection or a parallel
    # branch around a ReLU) would silently give a wrong network, so it is refused
    anchor, gen = 0, {inp.name: 0}
    version = [0]           # version[k]: index in trace.anchors of anchor k's variables (a Concat widens them)
    dense: list[Dense] = []
    masks: list[np.ndarray] = []
    last_relu = None        # output name of the Relu that opened the current anchor
    first_exact = False     # the first layer's (W, b) equal the model's ops without rounding (`_Expr.exact`)

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
            if not dense:
                first_exact = e.exact
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
    net.meta["first_layer_exact"] = bool(first_exact)
    net.meta["output_shape_computed"] = tuple(int(d) for d in e.shape)
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


