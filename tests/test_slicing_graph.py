"""`equiv slice` on graphs: the split dimension by gradient, the inlining dispatcher (first slice on a
shared face, clipping), a hand-made residual family made, verified and tampered with, the chain-only
options refused, and one real CIFAR net with two pieces."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import CIFAR, needs_cifar
from equiv.apps.slicing import MANIFEST, check_tiling, splittable_dims
from equiv.apps.slicing.graph import gradient_dim, graph_io
from equiv.artifacts.validate import OnnxRunner
from equiv.cli import main
from equiv.ir import graph_from_onnx
from equiv.spec.region import Box
from equiv.transform.dispatch import build_dispatcher
from test_graph_simplify import residual_model

FAST = ["--no-progress", "--validation-samples", "300", "--dispatch-samples", "2000", "--samples", "300"]


def _model(nodes, init, n_in: int, n_out: int, in_shape=None) -> onnx.ModelProto:
    init = [numpy_helper.from_array(np.asarray(a, np.float32), n) for n, a in init]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape or [1, n_in])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n_out])], init)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def scaled(k: float) -> onnx.ModelProto:
    """y = k * relu(x) on 1 input (a graph: Mul is not a dense layer)."""
    return _model([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Mul", ["r", "k"], ["y"])],
                  [("k", [k])], 1, 1)


def test_gradient_picks_the_input_that_moves_the_outputs():
    # y = relu(0.01 x0 + 5 x1): x0 is twice as wide, but x1 moves y 250 times more across the box
    m = _model([helper.make_node("MatMul", ["x", "W"], ["z"]), helper.make_node("Relu", ["z"], ["y"])],
               [("W", [[0.01], [5.0]])], 2, 1)
    g = graph_from_onnx(m)
    box = Box(np.array([-1.0, 0.0]), np.array([1.0, 1.0]))
    assert gradient_dim(g, box, splittable_dims(box)) == 1
    assert gradient_dim(g, box, np.array([0])) == 0


def test_graph_dispatcher_routes_to_the_first_slice_and_clips():
    region = Box(np.array([0.0]), np.array([1.0]))
    left, right = region.bisect(0)
    io = graph_io(graph_from_onnx(scaled(1.0)))
    run = OnnxRunner(build_dispatcher(region, [left, right], [scaled(1.0), scaled(2.0)], io))
    x = np.array([[0.25], [0.5], [0.75], [3.0], [-1.0]])
    # 0.5 lies on both boxes: the first slice answers; 3.0 is clipped to 1.0, -1.0 to 0.0
    assert np.allclose(run(x)[:, 0], [0.25, 0.5, 1.5, 2.0, 0.0])


@pytest.fixture
def residual_path(tmp_path):
    path = tmp_path / "res.onnx"
    onnx.save(residual_model(np.random.default_rng(0)), str(path))
    return path


BOX = "--box=" + ",".join(["0.2:0.6"] * 32)


def _shift_last_bias(path, by: float) -> None:
    """Edit a slice file in place: its last layer's bias (3 outputs) moved by `by`."""
    m = onnx.load(str(path))
    for t in m.graph.initializer:
        a = numpy_helper.to_array(t)
        if a.ndim == 1 and a.size == 3:
            t.CopyFrom(numpy_helper.from_array((a + by).astype(a.dtype), t.name))
    onnx.save(m, str(path))


def test_residual_family_is_made_verified_and_tampering_is_caught(residual_path, tmp_path, capsys):
    out = tmp_path / "fam"
    assert main(["slice", str(residual_path), BOX, "-o", str(out), "--max-pieces", "4", "--json", *FAST]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["pipeline"] == "graph" and summary["strategy"] == "gradient"
    assert summary["slices"] == 4 and summary["relus_original"] == 64
    assert summary["relus_min"] < 64 and summary["relus_max"] <= 64
    assert summary["dispatch_max_abs_diff"] <= 1e-4 and summary["slice_max_abs_diff"] <= 1e-4
    m = json.loads((out / MANIFEST).read_text())
    assert m["pipeline"] == "graph" and all("phases" in s and "macs" in s for s in m["slices"])
    region = Box(np.full(32, 0.2), np.full(32, 0.6))
    assert check_tiling(region.lo, region.hi, [s["lo"] for s in m["slices"]], [s["hi"] for s in m["slices"]]) == []
    # the dispatcher equals the original on the region (onnxruntime on both)
    X = region.sample(500, np.random.default_rng(1)).astype(np.float32)
    ref, disp = OnnxRunner(str(residual_path)), OnnxRunner(str(out / "dispatch.onnx"))
    assert np.abs(ref(X) - disp(X)).max() <= 1e-5
    assert main(["slice", "--verify", str(out), "--samples", "1000"]) == 0
    capsys.readouterr()
    # a slice whose output moves is caught (and so is its hash)
    _shift_last_bias(out / "slice_000.onnx", 1.0)
    assert main(["slice", "--verify", str(out), "--samples", "1000"]) == 1
    err = capsys.readouterr().out
    assert "FAIL  slices vs original" in err and "FAIL  files" in err


def test_chain_only_options_are_refused_on_graphs(residual_path, tmp_path, capsys):
    out = tmp_path / "fam"
    assert main(["slice", str(residual_path), BOX, "-o", str(out), "--strategy", "unstable", *FAST]) == 2
    assert "chains of dense layers only" in capsys.readouterr().err
    assert main(["slice", str(residual_path), BOX, "-o", str(out), "--certify", "--epsilon", "0.1", *FAST]) == 2
    assert "certified by `check` already" in capsys.readouterr().err
    assert not out.exists()


def test_graph_slices_are_certified_by_their_records(residual_path, tmp_path, capsys):
    """Each graph slice records the phases it was reduced with: --certify re-proves them on the slice's box and
    bounds the file against the exact reduction; `--verify --certify` does the same from the files, and a slice
    whose weights were changed is not certified."""
    from equiv.prove.graph_carried import read_graph_claims
    out = tmp_path / "fam"
    assert main(["slice", str(residual_path), BOX, "-o", str(out), "--max-pieces", "2", "--certify", *FAST]) == 0
    assert "2 of 2 slices proved equivalent" in capsys.readouterr().out
    m = json.loads((out / MANIFEST).read_text())
    for s in m["slices"]:
        c = s["certificate"]
        assert c["verdict"] == "equivalent" and c["max_diff_upper"] <= c["epsilon"] == 1e-4
        claims, why = read_graph_claims(onnx.load(str(out / s["file"])))
        assert why is None and claims.region["sha256"] == Box(s["lo"], s["hi"]).sha256()
        # the certificate bounds what onnxruntime sees on the slice's box
        box = Box(s["lo"], s["hi"])
        X = np.vstack([box.sample(2000, np.random.default_rng(3)), box.random_vertices(200, np.random.default_rng(4))])
        seen = np.abs(OnnxRunner(str(residual_path))(X) - OnnxRunner(str(out / s["file"]))(X)).max()
        assert seen <= c["max_diff_upper"]
    assert main(["slice", "--verify", str(out), "--certify", "--samples", "1000"]) == 0
    assert "all 2 slices proved equal to the original" in capsys.readouterr().out
    # a changed weight: the record's bound on the slice exceeds the tolerance (or a point refutes it)
    _shift_last_bias(out / "slice_000.onnx", 0.01)
    assert main(["slice", "--verify", str(out), "--certify", "--samples", "1000"]) == 1
    text = capsys.readouterr().out
    # (a record that does not cover the file shows nothing wrong: that certificate is unknown, and the files
    # check fails on the changed sha256)
    assert "UNKN  certificates" in text and "slice 0: not certified by its record" in text
    assert "FAIL  files" in text


@needs_cifar
def test_cifar_net_sliced_in_two(tmp_path, capsys):
    model = CIFAR / "cifar10_small.onnx"
    spec = CIFAR / "networkcifar10_small_index1189_eps0.012_target1_orig0.vnnlib"
    out = tmp_path / "fam"
    assert main(["slice", str(model), "--spec", str(spec), "-o", str(out), "--max-pieces", "2", "--json",
                 "--validation-samples", "300", "--dispatch-samples", "500", "--no-progress"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["pipeline"] == "graph" and s["slices"] == 2 and s["relus_original"] == 2568
    assert s["relus_max"] < 2568 and s["dispatch_max_abs_diff"] <= 1e-4
    assert main(["slice", "--verify", str(out), "--samples", "500"]) == 0
