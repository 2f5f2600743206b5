"""MaxPool, read as ReLUs (max(a, c) = c + relu(a - c) over one-hot picks of each window offset): exact bounds
where the winner is known, the import and export against onnxruntime, and every command on a small CNN."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from equiv.artifacts.validate import OnnxRunner
from equiv.bounds.engine import deeppoly_graph
from equiv.cli import main
from equiv.ir import graph_from_onnx
from equiv.ir.onnx_export import graph_to_onnx, max_pools
from equiv.spec.region import Box


def pool_cnn(rng, pool: dict) -> onnx.ModelProto:
    """x (1, 2, 6, 6) -> conv 3x3 (3 channels, pads 1) -> relu -> MaxPool(pool) -> flatten -> gemm (3 outputs)."""
    nodes = [helper.make_node("Conv", ["x", "W", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("MaxPool", ["r"], ["p"], **pool),
             helper.make_node("Flatten", ["p"], ["f"])]
    probe = helper.make_model(helper.make_graph(
        nodes[:3], "probe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 6, 6])],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.zeros((3, 2, 3, 3), np.float32), "W"),
         numpy_helper.from_array(np.zeros(3, np.float32), "b")]), opset_imports=[helper.make_opsetid("", 13)])
    n = OnnxRunner(probe)(np.zeros((1, 72), np.float32)).shape[1]
    init = [numpy_helper.from_array(a.astype(np.float32), k) for k, a in (
        ("W", rng.normal(size=(3, 2, 3, 3)) * 0.5), ("b", rng.normal(size=3) * 0.1),
        ("G", rng.normal(size=(3, n))), ("h", rng.normal(size=3)))]
    nodes.append(helper.make_node("Gemm", ["f", "G", "h"], ["y"], transB=1))
    g = helper.make_graph(nodes, "pool", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 6, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], init)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


POOLS = [{"kernel_shape": [2, 2], "strides": [2, 2]},
         {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]},
         {"kernel_shape": [3, 2], "strides": [1, 2], "dilations": [1, 2]}]


def test_bounds_of_a_max_are_exact_where_the_winner_is_known():
    """max(a, c) with a in [2, 3] and c in [0, 1]: a always wins, and the bounds are [2, 3] (to rounding); with
    overlapping ranges they contain every sampled value."""
    model = helper.make_model(helper.make_graph(
        [helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[1, 2])], "m",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]), opset_imports=[helper.make_opsetid("", 13)])
    g = graph_from_onnx(model)
    assert g.n_relus == 1
    b = deeppoly_graph(g, Box(np.array([2.0, 0.0]), np.array([3.0, 1.0])))
    (o,) = g.outputs
    lo, hi = float(b.lo[o].min()), float(b.hi[o].max())
    assert lo <= 2.0 <= lo + 1e-8 and hi - 1e-8 <= 3.0 <= hi         # exact up to the outward rounding
    rng = np.random.default_rng(0)
    box = Box(np.array([0.0, 0.5]), np.array([1.0, 1.5]))
    b = deeppoly_graph(g, box)
    x = np.vstack([box.sample(2000, rng), box.vertices(4, rng)])
    y = x.max(axis=1)
    assert np.all(y >= b.lo[o].reshape(-1) - 1e-12) and np.all(y <= b.hi[o].reshape(-1) + 1e-12)
    assert b.lo[o].reshape(-1)[0] >= 0.5 - 1e-8        # at least c's lower bound


@pytest.mark.parametrize("k", range(len(POOLS)))
def test_import_and_export_keep_the_pool(k, rng):
    """The lowered pool computes what onnxruntime computes, and is written back as one MaxPool node."""
    model = pool_cnn(rng, POOLS[k])
    g = graph_from_onnx(model)               # (checked against onnxruntime node by node)
    kh, kw = POOLS[k]["kernel_shape"]
    assert len(max_pools(g)) == 1
    out = graph_to_onnx(g)
    kinds = [n.op_type for n in out.graph.node]
    assert kinds.count("MaxPool") == 1 and kinds.count("Conv") == 1 and "Relu" in kinds
    x = rng.normal(size=(300, 72))
    assert np.abs(OnnxRunner(model)(x) - OnnxRunner(out)(x)).max() <= 1e-5
    assert np.abs(g.forward(x) - OnnxRunner(model)(x)).max() <= 1e-4
    del kh, kw


def test_a_padded_pool_on_a_signed_tensor_is_refused():
    from equiv.errors import UnsupportedModelError
    model = helper.make_model(helper.make_graph(
        [helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], name="signed_pool")], "m",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]), opset_imports=[helper.make_opsetid("", 13)])
    with pytest.raises(UnsupportedModelError, match="signed_pool.*Relu"):
        graph_from_onnx(model)


@pytest.mark.parametrize("k", [0, 1])
def test_simplify_and_check_a_pooling_cnn(k, tmp_path, rng, capsys):
    """`simplify` (MILP method) proves pool winners and ReLUs on a small box, writes a smaller model that
    onnxruntime agrees with; `check` proves it equivalent to the original, and the original to a float16 copy."""
    model = pool_cnn(rng, POOLS[k])
    path, out, rep = tmp_path / "m.onnx", tmp_path / "s.onnx", tmp_path / "r.json"
    onnx.save(model, str(path))
    center = rng.normal(size=72)
    np.save(tmp_path / "c.npy", center)
    region = ["--center", str(tmp_path / "c.npy"), "--radius", "0.05"]
    assert main(["simplify", str(path), *region, "--method", "milp", "--milp-budget", "10", "-o", str(out),
                 "--report", str(rep), "--no-progress"]) == 0
    capsys.readouterr()
    r = json.loads(rep.read_text())
    assert r["validation"]["ok"] and r["relus_after"] < r["relus_before"]
    # the pool's picks, written as one-hot depthwise Convs where ReLUs of the pool were removed, read back as
    # the pool's (not parameters): the written model counts the original's parameters
    written = graph_from_onnx(onnx.load(str(out)))
    assert written.n_params == graph_from_onnx(model).n_params == r["params_after"]
    box = Box(center - 0.05, center + 0.05)
    x = np.vstack([box.sample(2000, rng), box.random_vertices(200, rng)])
    assert np.abs(OnnxRunner(str(path))(x) - OnnxRunner(str(out))(x)).max() <= 1e-4
    code = main(["check", str(path), str(out), *region, "--epsilon", "1e-3", "--json", "--no-progress"])
    c = json.loads(capsys.readouterr().out)
    assert (code, c["verdict"]) == (0, "equivalent") and c["max_diff_upper"] <= 1e-3 and c["max_diff_lower"] <= 1e-4
    assert {p["method"] for p in c["pieces"]} == {"carried"}        # its record, re-proved
    from equiv.bench.graphs import float16_copy
    float16_copy(path, tmp_path / "f16.onnx")
    code = main(["check", str(path), str(tmp_path / "f16.onnx"), *region, "--epsilon", "0.5", "--json",
                 "--no-progress"])
    c = json.loads(capsys.readouterr().out)
    assert (code, c["verdict"]) == (0, "equivalent")


def test_bounds_name_a_pools_relus_after_the_pool(tmp_path, rng, capsys):
    """`bounds` lists a MaxPool's inner ReLUs (max(a, c) = c + relu(a - c)) under names that start with the
    pool's output and says how many of the count are such: they were named equiv/N and counted without a word."""
    path = tmp_path / "m.onnx"
    onnx.save(pool_cnn(rng, POOLS[0]), str(path))
    box = ",".join(["0:0.1"] * 72)
    assert main(["bounds", str(path), "--box", box, "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    relus = [row["relu"] for row in d["layers"] if row["kind"] == "relu input"]
    assert relus[0] == "r" and len(relus) == 4 and all(r.startswith("p/max/") for r in relus[1:])
    assert d["relus"] == 108 + 3 * 27
    assert main(["bounds", str(path), "--box", box]) == 0
    text = capsys.readouterr().out
    assert "relu 2 (p/max/" in text and ", in a MaxPool)" in text and "relu 1 (r):" in text
    assert "81 of the 189 are inside MaxPools" in text
