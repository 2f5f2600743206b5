"""Check an imported Graph against onnxruntime, node by node, at import.

The model runs in onnxruntime on a few random inputs with every ONNX tensor the graph represents
exposed as an output.  Then the graph is evaluated with onnxruntime's value fed in for every such
tensor, so each node is computed from onnxruntime's own inputs to it and compared with onnxruntime's
output of it: an error in one op's lowering cannot hide behind another, nor be averaged away.
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from ..errors import ImportMismatchError, UnsupportedModelError
from .graph import Graph


def _session(model: onnx.ModelProto, names: list[str]) -> ort.InferenceSession:
    m = copy.deepcopy(model)
    present = {o.name for o in m.graph.output}
    for n in names:
        if n not in present:
            m.graph.output.append(helper.make_tensor_value_info(n, TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    opts.intra_op_num_threads = 1
    # the extended optimisations fuse ops (and one fusion computes a wrong FusedMatMul): keep ONNX semantics
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    return ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def sample_inputs(g: Graph, n: int, rng: np.random.Generator) -> np.ndarray:
    """Flat points at several scales (normal, small, large, uniform in [0, 1])."""
    scales = [1.0, 0.1, 10.0]
    pts = [rng.normal(scale=scales[i % 3], size=g.n_inputs) if i % 4 != 3 else rng.random(g.n_inputs)
           for i in range(n)]
    return np.array(pts)


def check_graph(model: onnx.ModelProto, g: Graph, points: np.ndarray | None = None, rtol: float = 1e-4,
                atol: float = 1e-5) -> float:
    """Raise ImportMismatchError if any node disagrees with onnxruntime; returns the largest scaled error."""
    names = g.meta["onnx_names"]                     # IR node -> ONNX tensor
    inputs = g.meta["input_names"]
    exposed = [onnx_name for node, onnx_name in names.items() if g.op(node).kind not in ("input", "const")]
    try:
        sess = _session(model, exposed)
    except Exception as exc:       # onnxruntime refuses the model itself: not something equiv can check
        raise UnsupportedModelError(f"onnxruntime cannot run this model, so equiv cannot check its import: "
                                    f"{str(exc).splitlines()[0]}") from None
    x = sample_inputs(g, 4, np.random.default_rng(2024)) if points is None else np.atleast_2d(points)
    x = x.astype(np.float32).astype(np.float64)
    worst = 0.0
    for row in x:
        feed = {name: v[0].astype(np.float32) for name, v in zip(inputs, g.split_input(row[None]).values())}
        try:
            outs = dict(zip(exposed, sess.run(exposed, feed)))
        except Exception as exc:   # (e.g. a BatchNormalization scale of the wrong size: found at run time)
            raise UnsupportedModelError(f"onnxruntime cannot run this model, so equiv cannot check its import: "
                                        f"{str(exc).splitlines()[0]}") from None
        given = {node: np.asarray(outs[o], np.float64)[None] for node, o in names.items() if o in outs}
        for node, v in given.items():      # before any use: an op fed a wrong-sized input cannot be compared
            if v.size != int(np.prod(g.shape(node))):
                raise UnsupportedModelError(
                    f"onnxruntime computes tensor '{names[node]}' ({type(g.op(node)).__name__}) with shape "
                    f"{tuple(v.shape[1:])}, where ONNX's definition (which equiv follows) gives {tuple(g.shape(node))}: "
                    "equiv cannot reason about a model whose runtime disagrees with its definition")
        vals = _node_local(g, row[None], given)
        for node, onnx_name in names.items():
            if onnx_name not in outs:
                continue
            ours, theirs = vals[node], given[node]
            if ours.shape != theirs.shape:
                raise ImportMismatchError(
                    f"equiv's import of '{onnx_name}' has shape {ours.shape[1:]} but onnxruntime gives "
                    f"{theirs.shape[1:]}: this is a bug in equiv, please report it")
            if not np.all(np.isfinite(theirs)):
                # (a finite float64 value where onnxruntime's float32 overflowed: the model, not the import)
                raise UnsupportedModelError(
                    f"tensor '{onnx_name}' ({type(g.op(node)).__name__}) is {float(np.nanmax(np.abs(theirs))):g} in "
                    f"onnxruntime at a test input (equiv computes {float(np.max(np.abs(ours))):.3g}): the model's "
                    "values overflow float32, and equiv cannot reason about them")
            scale = _magnitude(g, node, vals, given)
            err = np.abs(ours - theirs)
            bad = ~(err <= rtol * scale + atol)            # a NaN of ours (where onnxruntime is finite) is bad
            if np.any(bad):
                raise ImportMismatchError(
                    f"equiv's import of tensor '{onnx_name}' ({type(g.op(node)).__name__}) disagrees with onnxruntime "
                    f"by {float(err.max()):.3g}: this is a bug in equiv, please report it")
            worst = max(worst, float(np.max(err / (rtol * scale + atol))))
    return worst


def _node_local(g: Graph, x: np.ndarray, given: dict) -> dict:
    """Each node computed from onnxruntime's values of its inputs where onnxruntime has them."""
    vals = g.split_input(x)
    ours = {}
    for name in g.order:
        op = g.op(name)
        if op.kind == "input":
            ours[name] = vals[name]
            continue
        if op.kind == "const":
            ours[name] = op.value[None]
            continue
        args = [given.get(a, ours.get(a)) if g.op(a).kind != "input" else vals[a] for a in g.args(name)]
        ours[name] = op.forward(*args)
    return ours


def _magnitude(g: Graph, node: str, vals: dict, given: dict) -> np.ndarray:
    """The size of the terms a node sums (|L|(|inputs|) + |bias|): the scale of float32 rounding in it."""
    op = g.op(node)
    if op.kind != "linear":
        return np.abs(vals[node])
    args = [np.abs(given.get(a, vals[a])) for a in g.args(node)]
    mag = op.abs_linear(*args)
    if op.bias is not None:
        mag = mag + np.abs(op.bias)
    return mag
