"""ONNX -> Graph: one small handler per ONNX op, shapes computed as the graph is built.

The whole graph is validated (ops, and which operands must be constants) before any weight is touched,
so an unsupported model is refused at once, naming the node and the op.  Constants-only subgraphs are
folded in numpy.  After building, every node is checked against onnxruntime (`equiv.ir.check`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import EquivError, InputFileError, UnsupportedModelError
from . import ops
from .fuse import fuse_masked_relus
from .graph import Graph
from .onnx_handlers import HANDLERS, _reshape_target

# op -> positions of the inputs that must be constants
CONST_OPERANDS = {"Conv": (1, 2), "BatchNormalization": (1, 2, 3, 4), "Reshape": (1,), "Squeeze": (1,),
                  "Unsqueeze": (1,), "Pad": (1, 2, 3), "Dropout": (1, 2), "Cast": (0,)}
SUPPORTED = ("Gemm", "MatMul", "Conv", "BatchNormalization", "AveragePool", "MaxPool", "Pad", "Add", "Sub", "Mul", "Div",
             "Neg", "Concat", "Flatten", "Reshape", "Transpose", "Identity", "Dropout", "Squeeze", "Unsqueeze",
             "Relu", "Constant", "Cast")


def _dims(vi) -> tuple:
    return tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1
                 for d in vi.type.tensor_type.shape.dim)


def read_onnx_file(path) -> onnx.ModelProto:
    """The model in an ONNX file; InputFileError for a missing, empty, unparsable or node-less file."""
    path = Path(path)
    if path.is_dir():
        raise InputFileError(f"{path} is a folder, not an ONNX model file")
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
    """Cheap checks of every node before any heavy work: float32 inputs and outputs, supported op, constant
    operands where needed."""
    consts = {t.name for t in model.graph.initializer}
    for kind, vis in (("input", [i for i in model.graph.input if i.name not in consts]), ("output", model.graph.output)):
        for vi in vis:
            t = vi.type.tensor_type.elem_type
            if t not in (TensorProto.FLOAT, TensorProto.UNDEFINED):      # (undefined: left to onnxruntime)
                name = TensorProto.DataType.Name(t) if t in TensorProto.DataType.values() else str(t)
                raise UnsupportedModelError(f"{kind} '{vi.name}' is {name.lower()}: equiv reads float32 models (convert "
                                            "the model's weights and inputs to float32 first)")
    for node in model.graph.node:
        where = f"node '{node.name or node.output[0]}'"
        if node.domain not in ("", "ai.onnx"):
            raise UnsupportedModelError(f"{where} uses op '{node.op_type}' of domain '{node.domain}': equiv reads the "
                                        "standard ONNX domain only")
        if node.op_type not in SUPPORTED:
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
        # constants in their ONNX types (folding follows ONNX's arithmetic: a float16 cast rounds, an integer
        # division truncates), and as float64 for the handlers
        self.raw = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        self.consts = {name: _as_weights(v, f"initializer '{name}'") for name, v in self.raw.items()}
        self.nodes: list = []
        self.shapes: dict = {}
        self.names: dict = {}          # IR node -> ONNX tensor it equals (for the check)
        self.alias: dict = {}          # ONNX tensor -> IR node computing it
        self.fresh = 0
        self.rounded: set = set()      # nodes whose weights were scaled with rounding (Gemm's alpha, beta)
        g = model.graph
        self.taken = {v.name for v in list(g.input) + list(g.output) + list(g.initializer)} | \
            {o for n in g.node for o in n.output}

    # -- bookkeeping -------------------------------------------------------------------------------
    def add(self, op: ops.Op, args: list, onnx_name: str | None = None, hint: str | None = None) -> str:
        """Add an IR node; returns its name (the ONNX tensor's name when given, else a fresh one, prefixed with
        `hint`: the ONNX node an inner step belongs to, so a MaxPool's ReLUs say whose they are)."""
        name = onnx_name if onnx_name is not None and onnx_name not in self.shapes else None
        while name is None or name in self.shapes or (name != onnx_name and name in self.taken):
            self.fresh += 1       # a fresh name: never one of the model's own tensor names
            name = f"{onnx_name or hint or 'equiv'}/{self.fresh}"
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
            _check_input_shape(i)
            self.add(ops.Input(_dims(i)), [], i.name)
        for node in g.node:
            where = f"node '{node.name or node.output[0]}' ({node.op_type})"
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            args = list(node.input)
            if node.op_type == "Constant" or all(not a or a in self.consts for a in args):
                v = _constant(attrs, where) if node.op_type == "Constant" else \
                    _fold(node.op_type, [self.raw.get(a) for a in args], attrs, where)
                self.raw[node.output[0]], self.consts[node.output[0]] = v, _as_weights(v, where)
                continue
            try:
                HANDLERS[node.op_type](self, node, attrs, where)
            except EquivError:
                raise
            except Exception as exc:
                # a node the handler cannot read: the model's fault when ONNX's checker refuses it too
                why = _invalid_onnx(self.model)
                if why is None:
                    raise
                raise UnsupportedModelError(f"{where}: the model is not valid ONNX ({why})") from exc
        outputs = []
        for o in g.output:
            if o.name not in self.alias:
                raise UnsupportedModelError(f"graph output '{o.name}' is not computed from the inputs")
            outputs.append(self.alias[o.name])
            declared, got = _dims(o), self.shapes[self.alias[o.name]]
            dims = o.type.tensor_type.shape.dim          # (none written: not declared)
            known = len(dims) > 0 and all(d.HasField("dim_value") and d.dim_value > 0 for d in dims[1:])
            if known and int(np.prod(declared)) != int(np.prod(got)):      # (a symbolic first dim: the batch)
                raise UnsupportedModelError(f"graph output '{o.name}' is declared with shape {tuple(_dims_raw(o))}, but "
                                            f"the model computes shape {tuple(got)}: fix the declaration")
        graph = Graph.build(self.nodes, [self.alias[i.name] for i in inputs], outputs,
                            meta={"onnx_names": self.names, "opset": self.opset,
                                  "input_names": [i.name for i in inputs], "output_names": [o.name for o in g.output],
                                  "input_shapes": [tuple(_dims_raw(i)) for i in inputs],
                                  "output_shapes": [tuple(_dims_raw(o)) for o in g.output],
                                  "rounded": sorted(self.rounded)})
        return graph

    def arg(self, name: str, where: str):
        """A computed tensor's IR node, or a constant's array."""
        if name in self.alias:
            return self.alias[name]
        if name in self.consts:
            return self.consts[name]
        raise UnsupportedModelError(f"{where}: input '{name}' is not computed by an earlier node")


def _invalid_onnx(model: onnx.ModelProto) -> str | None:
    """Why ONNX's own checker (with shape inference) refuses the model, or None when it accepts it."""
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:
        return str(exc).strip().splitlines()[0][:300] or type(exc).__name__
    return None


def _check_input_shape(vi) -> None:
    """Refuse a graph input whose sizes equiv cannot know: no declared shape, or a dimension that is symbolic
    or 0 other than the first (batch) one of a tensor of rank >= 2 (a first dimension of 0 too: onnxruntime then
    runs no point of size 1)."""
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        raise UnsupportedModelError(f"graph input '{vi.name}' declares no shape: equiv needs its sizes (declare it "
                                    "in the exporter, or with onnx.tools.update_model_dims)")
    dims, raw = t.shape.dim, _dims_raw(vi)
    for k, d in enumerate(dims):
        if d.HasField("dim_value") and d.dim_value > 0 or k == 0 and len(dims) >= 2 and not d.HasField("dim_value"):
            continue
        what = f"size {d.dim_value}" if d.HasField("dim_value") else f"'{d.dim_param}', not a fixed size" \
            if d.dim_param else "no size"
        raise UnsupportedModelError(f"graph input '{vi.name}' has shape {raw}: its dimension {k} has {what}; equiv "
                                    "needs fixed sizes (only the first, batch, dimension may be symbolic)")


def _dims_raw(vi) -> list:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "N") for d in vi.type.tensor_type.shape.dim]


def _constant(attrs, where) -> np.ndarray:
    """A Constant node's value, in its ONNX type (value_float(s): float32, value_int(s): int64)."""
    if "value" in attrs:
        return numpy_helper.to_array(attrs["value"])
    for k, dtype in (("value_float", np.float32), ("value_floats", np.float32), ("value_int", np.int64),
                     ("value_ints", np.int64)):
        if k in attrs:
            return np.asarray(attrs[k], dtype=dtype)
    raise UnsupportedModelError(f"{where}: only a tensor or number value is supported")


def _as_weights(v: np.ndarray, where: str) -> np.ndarray:
    """A constant as the float64 array the handlers read; NaN or infinite values are refused (no bound holds
    through them)."""
    if v.dtype.kind not in "fiub":
        raise UnsupportedModelError(f"{where}: constants of type {v.dtype} are not supported")
    out = v.astype(np.float64)
    if not np.all(np.isfinite(out)):
        raise UnsupportedModelError(f"{where}: a constant holds NaN or infinite values; equiv needs finite weights")
    return out


# ---- constants-only subgraphs ----------------------------------------------------------------------

def _fold(op: str, vals: list, attrs: dict, where: str) -> np.ndarray:
    """Evaluate an op whose inputs are all constants (shape arithmetic, weight preprocessing) as ONNX does, in
    the constants' own types: float32 sums round to float32, a cast to float16 rounds, integers divide
    truncating toward zero."""
    a = vals[0]
    if op == "Identity":
        return a
    if op == "Dropout":
        if len(vals) > 2 and vals[2] is not None and bool(np.asarray(vals[2]).reshape(-1)[0]):
            raise UnsupportedModelError(f"{where}: training mode is not supported")
        return a
    if op in ("Add", "Sub", "Mul"):
        return np.asarray({"Add": np.add, "Sub": np.subtract, "Mul": np.multiply}[op](a, vals[1]))
    if op == "Div":
        b = vals[1]
        if a.dtype.kind in "iu" and b.dtype.kind in "iu":
            if np.any(b == 0):
                raise UnsupportedModelError(f"{where}: integer division by zero")
            q = np.abs(a) // np.abs(b)             # ONNX integer Div truncates toward zero
            return np.asarray(np.where((a < 0) != (b < 0), -q, q).astype(np.result_type(a, b)))
        return np.asarray(np.divide(a, b))
    if op == "Neg":
        return np.negative(a)
    if op == "Cast":              # C casts: a float16 target rounds, an integer one truncates
        to = helper.tensor_dtype_to_np_dtype(attrs["to"])
        if np.dtype(to).kind not in "fiub":
            raise UnsupportedModelError(f"{where}: a cast to {np.dtype(to)} is not supported")
        return a.astype(to)
    if op == "Transpose":
        return np.transpose(a, attrs.get("perm"))
    if op == "Reshape":
        return a.reshape(_reshape_target(a.shape, vals[1], attrs))
    if op == "Concat":
        return np.concatenate(vals, axis=attrs["axis"])
    if op == "Flatten":           # axis in [-rank, rank]; axis = rank gives (size, 1)
        ax = attrs.get("axis", 1)
        ax = ax + a.ndim if ax < 0 else ax
        return a.reshape(int(np.prod(a.shape[:ax])), int(np.prod(a.shape[ax:])))
    raise UnsupportedModelError(f"{where}: computing {op} on constants only is not supported")
