"""Check an import against onnxruntime, op by op (runs on every load).

The importer (equiv.ir.chain_io.trace_import) records, for every tensor it computed, an affine expression
``flat(t) = A @ v + c`` over the variables ``v`` of its anchor (the model input, a Relu output, or a
partial-ReLU Concat output), and how to read ``v`` from that anchor tensor. Here the original model runs
in onnxruntime on a few random inputs with all these tensors exposed as graph outputs, and:

* every tracked tensor is compared with its expression evaluated on onnxruntime's value of its anchor
  (so each node is checked on its own, on its own output, not only through the final output);
* every layer of the Network is compared with onnxruntime's anchors before and after it;
* ``Network.forward(x)`` is compared with the model's output.

Tolerances are float32 error scales relative to the magnitude of the summed terms:
``|diff| <= REL * (|A| @ |v| + |c|) + ABS`` per element (and ``REL * depth * s`` for the whole network,
``s`` being the network run with absolute weights on ``|x|``). A difference beyond them is a bug in
equiv: ImportMismatchError (exit code 4). Only matrix-times-few-columns products: cheap next to the import.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from ..errors import ImportMismatchError, UnsupportedModelError

REL = 1e-4       # float32 rounding of sums of products, relative to the sum of |terms|
ABS = 1e-5
_ROW_BLOCK = 1024


def sample_points(shape: tuple, dtype, seed: int = 0) -> list[np.ndarray]:
    """Four inputs: standard normal, scaled by 0.1 and by 10, and uniform on [0, 1] (image-like)."""
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape))
    pts = [rng.standard_normal(n), 0.1 * rng.standard_normal(n), 10.0 * rng.standard_normal(n), rng.uniform(0, 1, n)]
    return [p.astype(dtype).reshape(shape) for p in pts]


def run_with_intermediates(model: onnx.ModelProto, names: list[str], input_name: str,
                           points: list[np.ndarray]) -> dict:
    """{name: (value shape, (size, n_points) float64)} of each named tensor, computed by onnxruntime."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    # every op equiv accepts keeps its input's element type (ONNX type constraint T), so a tracked tensor
    # has the model input's type unless the graph declares another
    elem = next(i.type.tensor_type.elem_type for i in g.input if i.name == input_name)
    declared = {vi.name: vi.type.tensor_type.elem_type for vi in list(g.value_info) + list(g.output)}
    have = {o.name for o in g.output}
    for name in names:
        if name not in have and name != input_name:
            g.output.append(helper.make_tensor_value_info(name, declared.get(name) or elem or onnx.TensorProto.FLOAT,
                                                          None))
            have.add(name)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL   # the ops as written
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1                   # 4 small runs: no thread pool
    try:
        sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise UnsupportedModelError(f"onnxruntime cannot load the model, so equiv cannot check its import: "
                                    f"{str(exc).strip().splitlines()[0]}") from exc
    fetch = [n for n in names if n != input_name]
    runs = []
    for x in points:
        try:
            runs.append(sess.run(fetch, {input_name: x}))
        except Exception as exc:
            raise UnsupportedModelError(f"onnxruntime cannot run the model, so equiv cannot check its import: "
                                        f"{str(exc).strip().splitlines()[0]}") from exc
    out = {n: (np.shape(vals[0]), np.stack([np.asarray(v, np.float64).reshape(-1) for v in vals], axis=1))
           for n, vals in zip(fetch, zip(*runs))}
    if input_name in names:
        out[input_name] = (points[0].shape, np.stack([p.astype(np.float64).reshape(-1) for p in points], axis=1))
    return out


def _abs_matmul(A: np.ndarray, V: np.ndarray) -> np.ndarray:
    """|A| @ V in row blocks (never a full copy of |A|)."""
    if A.shape[0] <= _ROW_BLOCK:
        return np.abs(A) @ V
    out = np.empty((A.shape[0], V.shape[1]))
    for s in range(0, A.shape[0], _ROW_BLOCK):
        out[s:s + _ROW_BLOCK] = np.abs(A[s:s + _ROW_BLOCK]) @ V
    return out


def _fail(where: str, tensor: str, diff: float):
    raise ImportMismatchError(f"equiv's import of {where} disagrees with onnxruntime on tensor '{tensor}' by "
                              f"{diff:.3g}: this is a bug in equiv, please report it")


def _compare(got, want, lin, c, rel, where, tensor, scale):
    """|got - want| <= rel * (scale(rows) + |c|) + ABS elementwise, scale being the magnitude of the summed terms
    (|A| @ |v| of the selected rows). It is computed only for the rows the cheap bound |lin| <= scale (lin = A v)
    does not settle."""
    diff = np.abs(got - want)
    cheap = rel * (np.abs(lin) + np.abs(c)) + ABS        # <= the real tolerance (|A v| <= |A| |v|)
    rows = np.flatnonzero(np.any(diff > cheap, axis=1))  # NaN (overflow in onnxruntime) compares False
    if rows.size:
        tol = rel * (scale(rows) + np.abs(c[rows])) + ABS
        bad = diff[rows] > tol
        if np.any(bad):
            _fail(where, tensor, float(np.max(diff[rows][bad])))


def check_import(model: onnx.ModelProto, net, trace, points: list[np.ndarray] | None = None) -> None:
    """Raise ImportMismatchError unless every tracked tensor, every layer and the output agree with
    onnxruntime on `points` (default: sample_points of the model's input)."""
    inp = next(i for i in model.graph.input if i.name == trace.input_name)
    dtype = helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type or onnx.TensorProto.FLOAT)
    rel = REL * max(1.0, float(np.finfo(dtype).eps / np.finfo(np.float32).eps)) if dtype.kind == "f" else REL
    if points is None:
        points = sample_points(trace.input_shape, dtype)
    names = list(dict.fromkeys([a.tensor for a in trace.anchors] + [t.tensor for t in trace.tensors]
                               + [trace.output_name]))
    vals = run_with_intermediates(model, names, trace.input_name, points)

    V = []          # each anchor's variables, read from onnxruntime's value of its tensor
    for a in trace.anchors:
        v = vals[a.tensor][1]
        V.append(v if a.gather is None else v[a.gather])
    products = {}   # (id(A), anchor) -> A @ v: Reshape-like ops and the layers share A
    identity = {id(A) for A in trace.identities}

    def product(A, k):
        key = (id(A), k)
        if key not in products:
            products[key] = (V[k] if id(A) in identity else A @ V[k], A)        # keep A alive: its id stays unique
        return products[key][0]

    def abs_terms(A, k):
        return lambda rows: _abs_matmul(A[rows], np.abs(V[k]))

    dense, masks = net.dense, net.masks
    for k, d in enumerate(dense[:-1]):           # each hidden layer against the anchors before and after it
        prev, nxt = trace.layers[k], trace.layers[k + 1]
        Wv = product(d.W, prev)
        z = Wv + d.b[:, None]
        m = masks[k][:, None]
        out_anchor = trace.anchors[nxt]
        _compare(np.where(m, np.maximum(z, 0), z), V[nxt], Wv, d.b[:, None], rel,
                 f"layer {k + 1} (opened by {out_anchor.where})", out_anchor.tensor, abs_terms(d.W, prev))

    for t in trace.tensors:
        shape, got = vals[t.tensor]
        if tuple(shape) != tuple(t.expr.shape) or got.shape[0] != t.expr.A.shape[0]:
            raise ImportMismatchError(f"equiv's import of {t.where} gives tensor '{t.tensor}' the shape "
                                      f"{tuple(t.expr.shape)}, onnxruntime {tuple(shape)}: this is a bug in equiv, "
                                      f"please report it")
        a = trace.anchors[t.anchor]
        if a.tensor == t.tensor and a.gather is None:
            continue                             # a Relu output over its own values: identity, nothing to check
        Av = product(t.expr.A, t.anchor)
        _compare(Av + t.expr.c[:, None], got, Av, t.expr.c[:, None], rel, t.where, t.tensor,
                 abs_terms(t.expr.A, t.anchor))

    # the whole network; its tolerance: depth * rel * s, s the network run with |W|, |b| on |x| (no ReLU)
    X = V[0]
    want = vals[trace.output_name][1]
    got = np.asarray(net.forward(X.T), dtype=np.float64).T
    if got.shape != want.shape:
        raise ImportMismatchError(f"equiv's network has {got.shape[0]} outputs, onnxruntime "
                                  f"{want.shape[0]}: this is a bug in equiv, please report it")

    def network_scale(rows):
        s = np.abs(X)
        for d in dense[:-1]:
            s = _abs_matmul(d.W, s) + np.abs(d.b)[:, None]
        return len(dense) * _abs_matmul(dense[-1].W[rows], s)

    _compare(got, want, got - dense[-1].b[:, None], len(dense) * dense[-1].b[:, None], rel, "the whole network", trace.output_name,
             network_scale)
