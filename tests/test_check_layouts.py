"""`check` of two models that number the same input values differently: two inputs against one, a (1, 1, 4, 4)
image against a (1, 16) vector.  The region numbers the values in order (VNN-LIB's X_i); each model reads
them in its own layout.  This crashed (exit 4) in the graph pipeline."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from equiv.cli import main
from test_import_semantics import F32, N, _save, _vi


def _pair(tmp_path, shift: float = 0.0):
    """A: y = W2 relu(W1 concat(x1, x2) + b1) on two (1, 2) inputs; B: the same on one (1, 4) input (+ shift)."""
    rng = np.random.default_rng(14)
    W1, b1, W2 = rng.normal(size=(6, 4)), rng.normal(size=6), rng.normal(size=(2, 6))
    body = [N("Gemm", ["x", "W1", "b1"], ["a"], transB=1), N("Relu", ["a"], ["r"]),
            N("Gemm", ["r", "W2", "b2"], ["y"], transB=1)]
    inits = [("W1", W1, F32), ("b1", b1, F32), ("W2", W2, F32)]
    a, b = tmp_path / "two.onnx", tmp_path / "one.onnx"
    _save(a, [N("Concat", ["x1", "x2"], ["x"], axis=1)] + body, [_vi("x1", [1, 2]), _vi("x2", [1, 2])],
          [_vi("y", [1, 2])], inits + [("b2", [0.0, 0.0], F32)])
    _save(b, body, [_vi("x", [1, 4])], [_vi("y", [1, 2])], inits + [("b2", [shift, 0.0], F32)])
    return str(a), str(b)


@pytest.mark.parametrize("order", ["two_inputs_first", "one_input_first"])
def test_two_inputs_against_one(order, tmp_path, capsys):
    a, b = _pair(tmp_path)
    if order == "one_input_first":
        a, b = b, a
    small = ",".join(["0.1:0.11"] * 4)
    assert main(["check", a, b, "--box", small, "--epsilon", "1e-3", "--json", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["max_diff_upper"] <= 1e-6
    # a wide box: the product graph's bound is loose (unknown), but the answer is never a crash
    assert main(["check", a, b, "--box", ",".join(["-1:1"] * 4), "--epsilon", "1e-3", "--time-limit", "20",
                 "--no-progress"]) in (0, 3)
    capsys.readouterr()
    a2, b2 = _pair(tmp_path, shift=0.5)
    assert main(["check", a2, b2, "--box", small, "--epsilon", "1e-3", "--json", "--no-progress"]) == 1
    cex = json.loads(capsys.readouterr().out)["counterexample"]
    assert abs(cex["max_abs_diff"] - 0.5) < 1e-5


def test_an_image_against_a_vector(tmp_path, capsys):
    """A 3x3 convolution on a (1, 1, 4, 4) image against the same map as a dense layer on a (1, 16) vector."""
    rng = np.random.default_rng(3)
    Wc, bc, V = rng.normal(size=(2, 1, 3, 3)) * 0.5, rng.normal(size=2) * 0.1, rng.normal(size=(3, 32)) * 0.3
    M, bm = np.zeros((32, 16)), np.repeat(bc, 16)
    for c in range(2):
        for i in range(4):
            for j in range(4):
                for di in range(3):
                    for dj in range(3):
                        if 0 <= i + di - 1 < 4 and 0 <= j + dj - 1 < 4:
                            M[c * 16 + i * 4 + j, (i + di - 1) * 4 + j + dj - 1] += Wc[c, 0, di, dj]
    conv, dense = tmp_path / "conv.onnx", tmp_path / "dense.onnx"
    _save(conv, [N("Conv", ["x", "Wc", "bc"], ["c"], pads=[1, 1, 1, 1]), N("Relu", ["c"], ["r"]),
                 N("Flatten", ["r"], ["f"]), N("Gemm", ["f", "V", "z"], ["y"], transB=1)],
          [_vi("x", [1, 1, 4, 4])], [_vi("y", [1, 3])], [("Wc", Wc, F32), ("bc", bc, F32), ("V", V, F32),
                                                         ("z", np.zeros(3), F32)])
    _save(dense, [N("Gemm", ["x", "M", "bm"], ["c"], transB=1), N("Relu", ["c"], ["r"]),
                  N("Gemm", ["r", "V", "z"], ["y"], transB=1)],
          [_vi("x", [1, 16])], [_vi("y", [1, 3])], [("M", M, F32), ("bm", bm, F32), ("V", V, F32),
                                                    ("z", np.zeros(3), F32)])
    box = ",".join(["0.5:0.51"] * 16)
    for a, b in ((conv, dense), (dense, conv)):
        assert main(["check", str(a), str(b), "--box", box, "--epsilon", "1e-3", "--no-progress"]) == 0


def _named_cnn(names, delta=0.0):
    """Conv-Relu-Conv-Relu-Flatten-Gemm on a (1, 1, 3, 3) input, its tensors named `names` (p, q, c, ca, f, y)."""
    from onnx import TensorProto, helper, numpy_helper
    r = np.random.default_rng(0)
    W1, W2 = r.normal(0, .6, (2, 1, 3, 3)).astype(np.float32), r.normal(0, .6, (2, 2, 3, 3)).astype(np.float32)
    W3 = r.normal(0, .6, (3, 18)).astype(np.float32)
    W1[0, 0, 1, 1] += delta
    p, q, c, ca, f, y = names
    N = helper.make_node
    g = helper.make_graph([N("Conv", ["x", "W1"], [p], pads=[1, 1, 1, 1], kernel_shape=[3, 3]), N("Relu", [p], [q]),
                           N("Conv", [q, "W2"], [c], pads=[1, 1, 1, 1], kernel_shape=[3, 3]), N("Relu", [c], [ca]),
                           N("Flatten", [ca], [f]), N("Gemm", [f, "W3"], [y], transB=1)], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 3, 3])],
                          [helper.make_tensor_value_info(y, TensorProto.FLOAT, [1, 3])],
                          [numpy_helper.from_array(W1, "W1"), numpy_helper.from_array(W2, "W2"),
                           numpy_helper.from_array(W3, "W3")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


@pytest.mark.parametrize("names_a, names_b, norm", [
    (["p", "q", "c", "c/a", "f", "y"], ["p", "q", "c", "c/a", "f", "y"], "linf"),       # difference graph: d:c/a
    (["p", "q", "c", "cr", "equiv_flat0", "y"], ["P", "Q", "C", "CR", "F", "y"], "linf"),  # product graph
    (["p", "q", "c", "cr", "margins", "y"], ["p", "q", "c", "cr", "margins", "y"], "top1")])
def test_graph_check_whatever_the_tensors_are_called(tmp_path, capsys, names_a, names_b, norm):
    """Tensors named like the check's own helper nodes (d:c/a, a:equiv_flat0, margins) made two nodes of one
    name (exit 4, found by a hunt); now every such pair gets a verdict (the shared structure proves the first),
    and no verdict is contradicted by what onnxruntime shows."""
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    onnx.save(_named_cnn(names_a), str(a))
    onnx.save(_named_cnn(names_b, delta=0.01), str(b))
    extra = ["--epsilon", "0.5"] if norm == "linf" else ["--norm", "top1"]
    code = main(["check", str(a), str(b), "--box", ",".join(["-0.5:0.5"] * 9), *extra, "--no-progress", "--json"])
    r = json.loads(capsys.readouterr().out)
    assert code == {"equivalent": 0, "not_equivalent": 1, "unknown": 3}[r["verdict"]]
    if r["verdict"] == "not_equivalent":           # a real counterexample
        from equiv.artifacts.validate import OnnxRunner
        x = np.array([r["counterexample"]["input"]])
        ya, yb = OnnxRunner(str(a))(x), OnnxRunner(str(b))(x)
        assert ya.argmax() != yb.argmax() if norm == "top1" else np.abs(ya - yb).max() > 0.5
    if names_a[3] == "c/a":
        assert r["verdict"] == "equivalent" and r["max_diff_lower"] <= r["max_diff_upper"] <= 0.5
