"""Weight rounding: float16, and int8 with one symmetric scale per output row.

Written as float32 constants holding the rounded values (dequantised), not as Cast or
QuantizeLinear/DequantizeLinear nodes: equiv's chain importer (which `equiv check` uses on dense
chains) folds only ops that compute on the input, so it refuses a graph that computes on constants.
The candidate therefore certifies the *rounded* weights exactly; a deployment may store them as
float16 / int8 with the same values (the file itself does not shrink).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper


def int8_rows(W: np.ndarray) -> np.ndarray:
    """W rounded to int8 levels with one symmetric scale per row (row max / 127), dequantised."""
    W = np.asarray(W, np.float64)
    scale = np.abs(W).max(axis=1, keepdims=True) / 127.0
    scale[scale == 0] = 1.0
    return np.clip(np.round(W / scale), -127, 127) * scale


def round_weights(model: onnx.ModelProto, kind: str) -> onnx.ModelProto:
    """A copy of the model with every Gemm weight (and, for float16, bias) rounded as `kind` says."""
    if kind not in ("float16", "int8"):
        raise ValueError(f"unknown weight rounding '{kind}'")
    model = onnx.ModelProto.FromString(model.SerializeToString())
    role = {}
    for nd in model.graph.node:
        if nd.op_type == "Gemm":
            role[nd.input[1]] = "weight"
            if len(nd.input) > 2:
                role[nd.input[2]] = "bias"
    for t in model.graph.initializer:
        if t.name not in role or t.data_type != onnx.TensorProto.FLOAT:
            continue
        a = numpy_helper.to_array(t)
        if kind == "float16":
            new = a.astype(np.float16).astype(np.float32)
        elif role[t.name] == "weight":     # Gemm with transB=1: rows are output neurons
            new = int8_rows(a).astype(np.float32)
        else:
            continue                          # int8: biases stay float32, as in common int8 schemes
        t.CopyFrom(numpy_helper.from_array(new, t.name))
    return model
