"""Graph -> ONNX: one small writer per op; convolutions stay Conv nodes.

The model keeps the original's input and output names; the first dimension of inputs and outputs is a
symbolic batch dimension `N` where the original had a fixed 1 or a symbolic one, and a Reshape that
keeps the batch axis writes -1 there, so the model runs on batches of any size.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from . import ops
from .chain_export import fresh_name
from .conv import pool_kernel
from .graph import Graph

OPSET = 17
IR_VERSION = 8


class _Writer:
    """Nodes and initializers of the model being written; every name it makes avoids `reserved` (the
    model's own input and output names)."""

    def __init__(self, reserved: set = frozenset()):
        self.nodes, self.inits, self.k, self.reserved = [], [], 0, set(reserved)

    def name(self, base: str) -> str:
        """A name not used yet: `base`, or `base` with underscores added."""
        name = fresh_name(base, self.reserved)
        self.reserved.add(name)
        return name

    def const(self, arr, dtype=np.float32) -> str:
        self.k += 1
        name = self.name(f"equiv_c{self.k}")
        self.inits.append(numpy_helper.from_array(np.asarray(arr, dtype=dtype), name))
        return name

    def node(self, op_type, inputs, output=None, **attrs) -> str:
        if output is None:
            self.k += 1
            output = self.name(f"equiv_t{self.k}")
        self.nodes.append(helper.make_node(op_type, inputs, [output], **attrs))
        return output


def _with_bias(w: _Writer, op_type: str, inputs: list, op, out: str) -> str:
    """op_type(inputs) + op's bias, named out (the node itself when there is no bias: no Identity after it)."""
    if op.bias is None or not np.any(op.bias):
        return w.node(op_type, inputs, out)
    return w.node("Add", [w.node(op_type, inputs), w.const(op.bias)], out)


def _batched(shape) -> list:
    shape = list(shape)
    if len(shape) >= 2 and (not isinstance(shape[0], int) or shape[0] in (0, 1)):
        shape[0] = "N"
    return shape


def _write(w: _Writer, g: Graph, name: str, out: str, args: list[str]) -> None:
    op = g.op(name)
    if isinstance(op, ops.Relu):
        w.node("Relu", args, out)
    elif isinstance(op, ops.MaskedRelu):
        _masked_relu(w, op, args[0], out)
    elif isinstance(op, ops.Dense):
        _with_bias(w, "MatMul", [args[0], w.const(op.W.T)], op, out)
    elif isinstance(op, ops.MatMulConst):
        w_in = w.const(op.W)
        w.node("MatMul", [w_in, args[0]] if op.left else [args[0], w_in], out)
    elif isinstance(op, ops.MatMulLeft):
        w.node("MatMul", [w.const(op.W), args[0]], out)
    elif isinstance(op, ops.Conv):
        geo = op.geo
        ins = [args[0], w.const(op.W)] + ([w.const(np.asarray(op.bias).reshape(-1))] if op.bias is not None else [])
        w.node("Conv", ins, out, kernel_shape=list(geo.kernel), strides=list(geo.strides), pads=list(geo.pads),
               dilations=list(geo.dilations), group=geo.group)
    elif isinstance(op, ops.Scale):
        _with_bias(w, "Mul", [args[0], w.const(op.s)], op, out)
    elif isinstance(op, ops.Shift):
        has_bias = op.bias is not None and np.any(op.bias)
        w.node("Add", [args[0], w.const(op.bias)], out) if has_bias else w.node("Identity", [args[0]], out)
    elif isinstance(op, ops.Reshape):
        target = list(op.shape)
        if op.in_shape and op.shape and op.in_shape[0] == op.shape[0] == 1:
            target[0] = -1        # the batch axis stays first: let it be any size
        w.node("Reshape", [args[0], w.const(target, np.int64)], out)
    elif isinstance(op, ops.Transpose):
        w.node("Transpose", args, out, perm=list(op.perm))
    elif isinstance(op, ops.Pad):
        pads = [p for p, _ in op.pads] + [q for _, q in op.pads]
        if op.bias is None or np.array_equal(np.broadcast_to(op.bias, op.shape), _pad_value_bias(op)):
            w.node("Pad", [args[0], w.const(pads, np.int64), w.const(op.value)], out, mode="constant")
        else:       # a bias beyond the pad value (constants a Concat held, `fold_rules.concat_constants`)
            _with_bias(w, "Pad", [args[0], w.const(pads, np.int64), w.const(0.0)], op, out)
    elif isinstance(op, ops.Add):
        sa, sb = op.signs
        if sa == 1.0 and sb == 1.0:
            w.node("Add", args, out)
        elif sa == 1.0:
            w.node("Sub", args, out)
        else:
            w.node("Sub", [args[1], args[0]], out)
    elif isinstance(op, ops.Concat):
        if op.bias is None or not np.any(op.bias):
            w.node("Concat", args, out, axis=op.axis)
        else:
            w.node("Add", [w.node("Concat", args, axis=op.axis), w.const(op.bias)], out)
    else:  # pragma: no cover - every op class has a writer
        raise TypeError(f"no ONNX writer for {type(op).__name__}")


def _pad_value_bias(op: ops.Pad) -> np.ndarray:
    """The bias a Pad with constant `value` has (as imported): the value at the padded positions, 0 inside."""
    out = np.full(op.shape, float(op.value))
    out[tuple(slice(b, n - e) for (b, e), n in zip(op.pads, op.shape))] = 0.0
    return out


def _masked_relu(w: _Writer, op: ops.MaskedRelu, x: str, out: str) -> None:
    """Relu(x * m) + x * a, m = 1 on ReLU positions, a = 1 on active ones (dead positions: 0 in both).

    The mask goes before the Relu so that a verifier reading the file sees input 0 (a stable ReLU) at every
    position that is not a ReLU; each term is written only when its mask is not empty."""
    r, lin = np.asarray(op.relu_mask, bool), np.asarray(op.linear_mask, bool)
    terms = []
    if r.any():
        terms.append(w.node("Relu", [x if r.all() else w.node("Mul", [x, _mask(w, r)])]))
    if lin.any():
        terms.append(x if lin.all() else w.node("Mul", [x, _mask(w, lin)]))
    if not terms:
        w.node("Mul", [x, w.const(np.zeros(1))], out)
    elif len(terms) == 1:
        w.node("Identity", terms, out)
    else:
        w.node("Add", terms, out)


MASK_AS_BOOL = 1024     # masks with more entries are stored as booleans (1 byte, not 4) and cast to float


def _mask(w: _Writer, m: np.ndarray) -> str:
    """A 0/1 float tensor for the mask, reduced along the axes where it is constant (it broadcasts back)."""
    m = ops.compact_mask(m)
    if m.size <= MASK_AS_BOOL:
        return w.const(m)
    return w.node("Cast", [w.const(m, np.bool_)], to=TensorProto.FLOAT)


def _max_parts(g: Graph, n: str):
    """(a, c, relu, difference) when node n computes max(a, c) as c + relu(a - c) (how a MaxPool is read), else
    None."""
    op = g.op(n)
    if not (isinstance(op, ops.Add) and tuple(op.signs) == (1.0, 1.0) and op.bias is None):
        return None
    r, c = g.args(n)
    if type(g.op(r)) is not ops.Relu:
        return None
    d = g.args(r)[0]
    dop = g.op(d)
    if not (isinstance(dop, ops.Add) and tuple(dop.signs) == (1.0, -1.0) and dop.bias is None and g.args(d)[1] == c):
        return None
    return g.args(d)[0], c, r, d


def _one_hot_offset(op) -> tuple | None:
    """(i, j) when op picks kernel offset (i, j) of every channel (`conv.pool_kernel`'s 'pick'), else None."""
    if not (isinstance(op, ops.Conv) and pool_kernel(op.W, op.geo, op.bias) == "pick"):
        return None
    i, j = np.argwhere(op.W[0, 0] != 0)[0]
    return int(i), int(j)


def max_pools(g: Graph) -> dict:
    """{root: (input, geometry, inner nodes)} for every tree of maxima over one-hot picks of all a window's offsets
    (a MaxPool as the import lowered it, none of its ReLUs removed): the root is written back as a MaxPool, the
    inner nodes (used by nothing else) are not written.  A padded one only on a ReLU's output (zeros pad it)."""
    found, inside = {}, set()
    for n in reversed(g.order):
        if n in inside or _max_parts(g, n) is None:
            continue
        leaves, inner, todo = [], [], [n]
        while todo:
            m = todo.pop()
            parts = _max_parts(g, m)
            if parts is None:
                leaves.append(m)
                continue
            a, c, r, d = parts
            inner += [m, r, d]
            todo += [a, c]
        ops_ = [g.op(v) for v in leaves]
        offsets = [_one_hot_offset(op) for op in ops_]
        if any(o is None for o in offsets):
            continue
        x, geo = g.args(leaves[0])[0], ops_[0].geo
        if (any(g.args(v)[0] != x for v in leaves) or any(op.geo != geo for op in ops_)
                or sorted(offsets) != [(i, j) for i in range(geo.kernel[0]) for j in range(geo.kernel[1])]
                or (any(geo.pads) and type(g.op(x)) is not ops.Relu)):
            continue
        body = set(inner[1:]) | set(leaves)
        if any(s not in body and s != n for v in body for s in g.dag.successors(v)) or body & set(g.outputs):
            continue          # an inner value is used elsewhere: write the tree as it is
        found[n] = (x, geo, body)
        inside |= body
    return found


def graph_to_onnx(g: Graph, producer: str = "equiv") -> onnx.ModelProto:
    """A checked ONNX model computing g, with the original's input/output names (from g.meta when known)."""
    meta = g.meta
    in_names = meta.get("input_names", g.inputs)
    out_names = meta.get("output_names", g.outputs)
    onnx_name = dict(zip(g.inputs, in_names))
    onnx_name.update(dict(zip(g.outputs, out_names)))
    w = _Writer(set(in_names) | set(out_names))
    pools = max_pools(g)
    skip = set().union(*(body for _, _, body in pools.values()))
    for name in g.order:
        op = g.op(name)
        if op.kind == "input" or name in skip:
            continue
        if name in pools:
            x, geo, _ = pools[name]
            out = onnx_name[name] = onnx_name.get(name) or w.name(f"t_{name}")
            w.node("MaxPool", [onnx_name[x]], out, kernel_shape=list(geo.kernel), strides=list(geo.strides),
                   pads=list(geo.pads), dilations=list(geo.dilations))
            continue
        if op.kind == "const":
            onnx_name[name] = w.const(op.value)
            continue
        out = onnx_name.get(name) or w.name(f"t_{name}")
        onnx_name[name] = out
        _write(w, g, name, out, [onnx_name[a] for a in g.args(name)])
    in_shapes = meta.get("input_shapes", [g.shape(n) for n in g.inputs])
    out_shapes = meta.get("output_shapes", [g.shape(n) for n in g.outputs])
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, _batched(s)) for n, s in zip(in_names, in_shapes)]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, _batched(s)) for n, s in zip(out_names, out_shapes)]
    graph = helper.make_graph(w.nodes, "equiv_simplified", inputs, outputs, w.inits)
    model = helper.make_model(graph, producer_name=producer, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model
