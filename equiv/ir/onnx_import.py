"""ONNX -> Graph: one small handler per ONNX op, shapes computed as the graph is built.

The whole graph is validated (ops, and which operands must be constants) before any weight is touched,
so an unsupported model is refused at once, naming the node and the op.  Constants-only subgraphs are
folded in numpy.  After building, every node is checked against onnxruntime (`equiv.ir.check`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import InputFileError, UnsupportedModelError
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
