"""`simplify` on graphs the chain pipeline cannot hold: convolutions kept as Conv, residual Adds, masks."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import BENCH
from equiv.bounds.engine import deeppoly_graph
from equiv.cli import main
from equiv.apps.graph_simplify import graph_phases, is_dense_chain, reduce_graph
from equiv.ir import graph_from_onnx, load_graph
from equiv.ir.onnx_export import graph_to_onnx
from equiv.spec.region import Box, load_region
from equiv.artifacts.validate import OnnxRunner

CIFAR = BENCH / "cifar"
needs_cifar = pytest.mark.skipif(not CIFAR.is_dir(), reason=f"CIFAR networks not found at {CIFAR}")


def residual_model(rng) -> onnx.ModelProto:
    """x (1, 2, 4, 4) -> conv -> relu -> conv -> + x -> relu -> flatten -> gemm (3 outputs)."""
    init = [numpy_helper.from_array(a.astype(np.float32), n) for n, a in (
        ("W1", rng.normal(size=(2, 2, 3, 3)) * 0.5), ("b1", rng.normal(size=2) * 0.1),
        ("W2", rng.normal(size=(2, 2, 3, 3)) * 0.5), ("b2", rng.normal(size=2) * 0.1),
        ("W3", rng.normal(size=(3, 32))), ("b3", rng.normal(size=3)))]
    nodes = [helper.make_node("Conv", ["x", "W1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "W2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c2", "x"], ["s"]),
             helper.make_node("Relu", ["s"], ["r2"]),
             helper.make_node("Flatten", ["r2"], ["f"]),
             helper.make_node("Gemm", ["f", "W3", "b3"], ["y"], transB=1)]
    g = helper.make_graph(nodes, "res", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], init)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def test_residual_block_simplifies_exactly(tmp_path, rng):
    model = residual_model(rng)
    g = graph_from_onnx(model)
    assert not is_dense_chain(g)
    box = Box(np.full(32, 0.2), np.full(32, 0.6))
    ph = graph_phases(g, box)
    small = reduce_graph(g, ph)
    c = ph.counts()
    assert c["dead"] + c["active"] > 0 and small.n_relus == g.n_relus - c["dead"] - c["active"]
    exported = graph_to_onnx(small)
    assert [n.op_type for n in exported.graph.node].count("Conv") == 2          # convolutions stay convolutions
    x = np.vstack([box.sample(500, rng), box.random_vertices(64, rng)])
    ref, out = OnnxRunner(model), OnnxRunner(exported)
    assert np.abs(ref(x) - out(x)).max() <= 1e-5
    # bounds of the reduced graph on the region contain its values and are no looser than the original's
    b0, b1 = deeppoly_graph(g, box), deeppoly_graph(small, box)
    for o in g.outputs:
        assert np.all(b1.lo[o] >= b0.lo[o] - 1e-9) and np.all(b1.hi[o] <= b0.hi[o] + 1e-9)
    vals = small.evaluate(x)
    for name in small.order:
        assert np.all(vals[name] >= b1.lo[name] - 1e-6) and np.all(vals[name] <= b1.hi[name] + 1e-6)


def test_real_signs_are_what_no_proof_may_contradict(rng):
    """`real_signs` (the guard behind "proved stable but seen with both signs": kept, a BUG note) flags exactly
    the positions whose sampled values cross 0 beyond float64 noise: on a box where the phases proved
    stable are proved, none of them is flagged, and every position it flags is one no bound calls stable."""
    from equiv.apps.graph_simplify import real_signs
    model = residual_model(rng)
    g = graph_from_onnx(model)
    box = Box(np.full(32, 0.2), np.full(32, 0.6))
    ph = graph_phases(g, box)
    pts = np.vstack([box.sample(3000, rng), box.random_vertices(256, rng)])
    real = real_signs(g, box, g.evaluate(pts[:1000]), pts[1000:])
    vals = g.evaluate(pts)
    for r in g.relus:
        z = vals[g.args(r)[0]].reshape(len(pts), -1)
        both = (z > 1e-9).any(axis=0) & (z < -1e-9).any(axis=0)
        assert np.array_equal(real[r].reshape(-1), both)
        assert not (real[r] & (ph.dead[r] | ph.active[r]).reshape(real[r].shape)).any()
    assert sum(int(v.sum()) for v in real.values()) > 0 and "refuted" not in ph.stats


@needs_cifar
def test_cli_simplify_resnet(tmp_path, capsys):
    model, spec = CIFAR / "resnet_2b.onnx", CIFAR / "resnet_2b-img386-eps2_255.vnnlib"
    out, rep = tmp_path / "small.onnx", tmp_path / "r.json"
    assert main(["simplify", str(model), "--spec", str(spec), "-o", str(out), "--report", str(rep),
                 "--no-progress", "--validation-samples", "2000", "--method", "deeppoly"]) == 0
    capsys.readouterr()
    r = json.loads(rep.read_text())
    assert r["pipeline"] == "graph" and r["relus_before"] == 6244
    assert r["phases"]["dead"] + r["phases"]["active"] >= 5284           # at least CROWN's count
    assert r["relus_after"] == 6244 - r["phases"]["dead"] - r["phases"]["active"]
    assert r["validation"]["ok"] and "ascent" in r["validation"]["by_source"]
    written = onnx.load(str(out))
    assert sum(n.op_type == "Conv" for n in written.graph.node) == 6
    assert out.stat().st_size < 1.5 * model.stat().st_size                 # not densified
    box = load_region(spec=spec)[0]
    x = box.sample(7, np.random.default_rng(3))
    sess_in = written.graph.input[0]
    assert sess_in.type.tensor_type.shape.dim[0].dim_param == "N"
    import onnxruntime as ort
    got = ort.InferenceSession(written.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {sess_in.name: x.reshape(7, 3, 32, 32).astype(np.float32)})[0]
    want = OnnxRunner(str(model))(x)
    assert np.abs(got - want).max() <= 1e-4
    g = load_graph(out)                                                        # equiv reads its own output
    assert g.n_relus == r["relus_after"] and g.n_params == r["params_after"]
    assert g.n_mask_entries == r["mask_entries_after"] > 0                    # masks are not parameters
    assert r["file_bytes_before"] == model.stat().st_size and r["file_bytes_after"] < r["file_bytes_before"]
    assert sum(row["relus_after"] for row in r["per_layer"]) == r["relus_after"]
    assert all(row["relus_before"] == row["positions"] for row in r["per_layer"])


@needs_cifar
def test_certify_on_a_graph_uses_its_record(tmp_path, capsys):
    """--certify on a CNN: the written model's recorded phases re-proved, the reduction rebuilt, the rounding
    bounded: a proof, and the model written."""
    model, spec = CIFAR / "cifar_wide_kw.onnx", CIFAR / "cifar_wide_kw-img19-eps0.007973856209150327.vnnlib"
    out = tmp_path / "s.onnx"
    assert main(["simplify", str(model), "--spec", str(spec), "-o", str(out), "--certify", "--method", "deeppoly",
                 "--validation-samples", "1000", "--json", "--no-progress"]) == 0
    r = json.loads(capsys.readouterr().out)
    cert = r["certificate"]
    assert cert["verdict"] == "equivalent" and cert["max_diff_upper"] <= 1e-4
    assert cert["stats"]["carried"]["ok"] and out.exists()
    box = load_region(spec=spec)[0]
    x = np.vstack([box.sample(3000, np.random.default_rng(5)), box.random_vertices(64, np.random.default_rng(5))])
    assert np.abs(OnnxRunner(str(model))(x) - OnnxRunner(str(out))(x)).max() <= 1e-4


# ---- check on graphs ----------------------------------------------------------------------------------

def _perturbed(model: onnx.ModelProto, name: str, delta: float) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for t in m.graph.initializer:
        if t.name == name:
            a = numpy_helper.to_array(t).copy()
            a.reshape(-1)[0] += delta
            t.CopyFrom(numpy_helper.from_array(a, name))
    return m


def test_check_on_a_residual_graph(tmp_path, rng, capsys):
    model = residual_model(rng)
    a, b, c = tmp_path / "a.onnx", tmp_path / "b.onnx", tmp_path / "c.onnx"
    onnx.save(model, str(a))
    onnx.save(_perturbed(model, "b3", 1e-3), str(b))          # a tiny change of one output bias
    onnx.save(_perturbed(model, "b3", 0.5), str(c))           # a large one
    box = ",".join(["0.2:0.6"] * 32)
    small_box = ",".join(["0.398:0.402"] * 32)      # every ReLU stable there: the product bound is tight
    assert main(["check", str(a), str(b), "--box", small_box, "--epsilon", "0.01", "--json", "--no-progress"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["verdict"] == "equivalent" and r["max_diff_upper"] <= 0.01 and r["stats"]["pipeline"] == "graph"
    # on the wide box DeepPoly on the product cannot prove 0.01 (independent relaxations), but the difference
    # graph (same structure) carries the bias change straight through: f - g = 1e-3 in one output
    assert main(["check", str(a), str(b), "--box", box, "--epsilon", "0.01", "--json", "--no-progress"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["verdict"] == "equivalent" and 1e-3 - 1e-6 <= r["max_diff_upper"] <= 1.01e-3
    # ... and below that, an honest unknown or a confirmed counterexample, never a proof
    code = main(["check", str(a), str(b), "--box", box, "--epsilon", "5e-4", "--json", "--no-progress"])
    r = json.loads(capsys.readouterr().out)
    assert (code, r["verdict"]) in ((1, "not_equivalent"), (3, "unknown"))
    assert main(["check", str(a), str(c), "--box", box, "--epsilon", "0.01", "--json", "--no-progress"]) == 1
    r = json.loads(capsys.readouterr().out)
    x = np.array(r["counterexample"]["input"])
    assert np.abs(OnnxRunner(str(a))(x[None]) - OnnxRunner(str(c))(x[None])).max() > 0.01
    # its own simplified output: the same top-1 class everywhere (both pick one class on this box, or unknown)
    out = tmp_path / "s.onnx"
    assert main(["simplify", str(a), "--box", box, "-o", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    code = main(["check", str(a), str(out), "--box", box, "--norm", "top1", "--json", "--no-progress"])
    r = json.loads(capsys.readouterr().out)
    assert (code, r["verdict"]) in ((0, "equivalent"), (3, "unknown"))


@needs_cifar
def test_check_resnet_against_its_float16_copy(tmp_path, capsys):
    model, spec = CIFAR / "resnet_2b.onnx", CIFAR / "resnet_2b-img386-eps2_255.vnnlib"
    fp16 = onnx.load(str(model))
    for t in fp16.graph.initializer:
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16).astype(np.float32), t.name))
    path = tmp_path / "fp16.onnx"
    onnx.save(fp16, str(path))
    code = main(["check", str(model), str(path), "--spec", str(spec), "--norm", "top1", "--json", "--no-progress",
                 "--samples", "2000"])
    r = json.loads(capsys.readouterr().out)
    assert (code, r["verdict"]) == (0, "equivalent")      # both networks pick the same class on all of img386's ball
    assert r["max_diff_lower"] < 0.01
    # the difference graph bounds |f - g| on the whole ball (the product graph: only ~3.2)
    code = main(["check", str(model), str(path), "--spec", str(spec), "--epsilon", "0.05", "--json", "--no-progress",
                 "--samples", "500"])
    r = json.loads(capsys.readouterr().out)
    assert (code, r["verdict"]) == (0, "equivalent") and r["max_diff_upper"] <= 0.05


# ---- deleting dead rows and channels -------------------------------------------------------------------

def conv_dense_model(rng) -> onnx.ModelProto:
    """x (1,2,6,6) -> conv(4 ch, channel 1 dead: bias -100) -> relu -> conv(3) -> relu -> flatten -> gemm(5 rows,
    row 2 dead) -> relu -> gemm(2)."""
    b1 = rng.normal(size=4) * 0.1
    b1[1] = -100.0
    b3 = rng.normal(size=5) * 0.1
    b3[2] = -1000.0
    init = [numpy_helper.from_array(a.astype(np.float32), n) for n, a in (
        ("W1", rng.normal(size=(4, 2, 3, 3)) * 0.5), ("b1", b1), ("W2", rng.normal(size=(3, 4, 3, 3)) * 0.5),
        ("b2", rng.normal(size=3) * 0.1), ("W3", rng.normal(size=(5, 3 * 2 * 2))), ("b3", b3),
        ("W4", rng.normal(size=(2, 5))), ("b4", rng.normal(size=2)))]
    nodes = [helper.make_node("Conv", ["x", "W1", "b1"], ["c1"]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "W2", "b2"], ["c2"]),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("Flatten", ["r2"], ["f"]),
             helper.make_node("Gemm", ["f", "W3", "b3"], ["d1"], transB=1),
             helper.make_node("Relu", ["d1"], ["r3"]),
             helper.make_node("Gemm", ["r3", "W4", "b4"], ["y"], transB=1)]
    g = helper.make_graph(nodes, "cd", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 6, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])], init)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def test_dead_channels_and_rows_are_deleted(tmp_path, rng, capsys):
    model = conv_dense_model(rng)
    path, out, rep = tmp_path / "m.onnx", tmp_path / "s.onnx", tmp_path / "r.json"
    onnx.save(model, str(path))
    box = ",".join(["-1:1"] * 72)
    assert main(["simplify", str(path), "--box", box, "-o", str(out), "--report", str(rep), "--no-progress"]) == 0
    capsys.readouterr()
    r = json.loads(rep.read_text())
    assert "deleted 1 dead rows of dense layers and 1 dead convolution channels" in " ".join(r["notes"])
    written = onnx.load(str(out))
    shapes = {t.name: numpy_helper.to_array(t).shape for t in written.graph.initializer}
    conv_w = [shapes[n.input[1]] for n in written.graph.node if n.op_type == "Conv"]
    assert conv_w[0][0] == 3 and conv_w[1][1] == 3           # channel 1 gone from the filter and the next input
    gemm_w = [shapes[n.input[1]] for n in written.graph.node if n.op_type == "MatMul"]
    assert gemm_w[0][1] == 4 and gemm_w[1][0] == 4           # row 2 gone from one dense layer, column 2 from the next
    assert r["params_after"] < r["params_before"] and r["macs_after"] < r["macs_before"]
    nodes = {row["node"]: row for row in r["per_node"]}
    assert nodes["c1"]["shape_before"] == [1, 4, 4, 4] and nodes["c1"]["shape_after"] == [1, 3, 4, 4]
    assert sum(row["params_after"] for row in r["per_node"]) == r["params_after"]
    x = np.vstack([Box(np.full(72, -1.0), np.ones(72)).sample(2000, rng),
                   Box(np.full(72, -1.0), np.ones(72)).random_vertices(200, rng)])
    assert np.abs(OnnxRunner(str(path))(x) - OnnxRunner(str(out))(x)).max() <= 1e-4
    # check takes the pair although the widths differ (one channel and one row fewer): a tiny box around a
    # point makes every ReLU stable, so the product graph's bound is tight and proves equivalence
    small = ",".join(["0.1:0.1001"] * 72)
    assert main(["check", str(path), str(out), "--box", small, "--epsilon", "1e-4", "--json", "--no-progress"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["verdict"] == "equivalent" and r["max_diff_upper"] <= 1e-4
    # on the whole box: the written model's record (its phases re-proved) decides it (`prove.graph_carried`)
    code = main(["check", str(path), str(out), "--box", box, "--epsilon", "1e-4", "--json", "--no-progress"])
    r = json.loads(capsys.readouterr().out)
    assert (code, r["verdict"]) == (0, "equivalent") and r["max_diff_lower"] <= r["max_diff_upper"] + 1e-6 <= 1e-4
    assert {p["method"] for p in r["pieces"]} == {"carried"}


def test_an_all_active_block_folds_into_one_conv(tmp_path, rng, capsys):
    """On a region where the residual block's inner ReLU is active everywhere, the block becomes one convolution
    (conv∘conv, then x + conv(x)); the report says which rules fired and the layer's ReLUs are gone."""
    model = residual_model(rng)
    for t in model.graph.initializer:
        if t.name == "b1":
            t.CopyFrom(numpy_helper.from_array(np.full(2, 20.0, np.float32), "b1"))
        if t.name == "W2":          # a 1x1 kernel: the composition conv(3x3) then conv(1x1) is exact and smaller
            t.CopyFrom(numpy_helper.from_array(rng.normal(size=(2, 2, 1, 1)).astype(np.float32), "W2"))
    for n in model.graph.node:
        if n.output[0] == "c2":
            del n.attribute[:]
    path, out, rep = tmp_path / "m.onnx", tmp_path / "s.onnx", tmp_path / "r.json"
    onnx.save(model, str(path))
    assert main(["simplify", str(path), "--box", ",".join(["0.2:0.6"] * 32), "-o", str(out), "--report", str(rep),
                 "--no-progress", "--method", "deeppoly"]) == 0
    assert "folded:" in capsys.readouterr().out
    r = json.loads(rep.read_text())
    assert {"masked_relu", "conv_conv", "residual"} <= set(r["folded"])
    inner = next(row for row in r["per_layer"] if row["relu"] == "r1")
    assert inner["relus_after"] == 0 and inner["folded"] == "masked_relu"
    written = onnx.load(str(out))
    assert [n.op_type for n in written.graph.node].count("Conv") == 1
    assert r["params_after"] < r["params_before"] and r["validation"]["ok"]


@needs_cifar
def test_chain_only_commands_refuse_graphs_quickly(tmp_path, capsys):
    """LP/MILP bounds refuse a conv net at once (no densified convolutions, nothing written); slice takes graphs
    (test_slicing_graph.py)."""
    model, spec = CIFAR / "cifar_deep_kw.onnx", CIFAR / "cifar_deep_kw-img386-eps0.024183006535947717.vnnlib"
    assert main(["bounds", str(model), "--spec", str(spec), "--method", "lp"]) == 2
    assert "chains of dense layers" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def two_io_model(rng) -> onnx.ModelProto:
    """Inputs a (1, 3) and b (1, 2); outputs y1 = relu([a, b] W1) W2 (6 ReLUs) and y2 = relu(a V) + b (2 ReLUs)."""
    init = [numpy_helper.from_array(a.astype(np.float32), n) for n, a in (
        ("W1", rng.normal(size=(5, 6))), ("W2", rng.normal(size=(6, 2))), ("V", rng.normal(size=(3, 2))))]
    nodes = [helper.make_node("Concat", ["a", "b"], ["ab"], axis=1),
             helper.make_node("MatMul", ["ab", "W1"], ["z1"]), helper.make_node("Relu", ["z1"], ["h1"]),
             helper.make_node("MatMul", ["h1", "W2"], ["y1"]),
             helper.make_node("MatMul", ["a", "V"], ["z2"]), helper.make_node("Relu", ["z2"], ["h2"]),
             helper.make_node("Add", ["h2", "b"], ["y2"])]
    ins = [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 3]),
           helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 2])]
    outs = [helper.make_tensor_value_info("y1", TensorProto.FLOAT, [1, 2]),
            helper.make_tensor_value_info("y2", TensorProto.FLOAT, [1, 2])]
    return helper.make_model(helper.make_graph(nodes, "two", ins, outs, init),
                             opset_imports=[helper.make_opsetid("", 13)])


def test_two_inputs_and_two_outputs(tmp_path, rng, capsys):
    """X_0..X_2 are input a, X_3..X_4 input b (flattened in order); outputs are compared in order."""
    model = two_io_model(np.random.default_rng(5))
    path, out = tmp_path / "m.onnx", tmp_path / "s.onnx"
    onnx.save(model, str(path))
    box = "0.1:0.3,-0.2:0.0,0.5:0.6,0.9:1.0,-1.0:-0.9"
    assert main(["simplify", str(path), "--box", box, "-o", str(out), "--json", "--no-progress"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["pipeline"] == "graph" and r["validation"]["ok"] and r["relus_before"] == 8
    written = onnx.load(str(out))
    assert [i.name for i in written.graph.input] == ["a", "b"] and [o.name for o in written.graph.output] == ["y1", "y2"]
    lo, hi = np.array(r["region"]["lo"]), np.array(r["region"]["hi"])
    x = Box(lo, hi).sample(500, rng)
    np.testing.assert_allclose(OnnxRunner(str(out))(x), OnnxRunner(str(path))(x), atol=1e-5)
    assert OnnxRunner(str(path))(x).shape == (500, 4)
    assert main(["check", str(path), str(out), "--box", box, "--epsilon", "0.001", "--json", "--no-progress"]) in (0, 3)
    r = json.loads(capsys.readouterr().out)
    assert r["verdict"] in ("equivalent", "unknown") and r["max_diff_lower"] <= 1e-4


# ---- LP tightening on graphs ------------------------------------------------------------------------------

def test_graph_lp_bounds_are_sound_and_no_looser_than_deeppoly(rng):
    """The triangle LP over the residual graph: its dual bounds contain every sampled value of each ReLU input
    and never lose to DeepPoly; every proof is a dual bound (status OPTIMAL)."""
    from equiv.prove.graph_lp import lp_stage
    model = residual_model(np.random.default_rng(7))
    g = graph_from_onnx(model)
    box = Box(np.full(32, 0.1), np.full(32, 0.7))
    dp = deeppoly_graph(g, box)
    pos = {r: np.zeros(g.shape(r), bool) for r in g.relus}
    neg = {r: np.zeros(g.shape(r), bool) for r in g.relus}
    lp, stats = lp_stage(g, box, dp, pos, neg, time_limit=10.0)
    assert stats["lp"] > 0 and stats["lp_unknown"] == 0
    vals0 = g.evaluate(np.vstack([box.sample(1, rng)]))
    assert all(vals0[r].shape[1:] == pos[r].shape for r in g.relus)
    x = np.vstack([box.sample(3000, rng), box.random_vertices(500, rng)])
    vals = g.evaluate(x)
    for r in g.relus:
        z = g.args(r)[0]
        assert np.all(vals[z] >= lp.lo[z] - 1e-7) and np.all(vals[z] <= lp.hi[z] + 1e-7)
        assert np.all(lp.lo[z] >= dp.lo[z] - 1e-9) and np.all(lp.hi[z] <= dp.hi[z] + 1e-9)


def test_graph_lp_matches_the_chain_lp_on_acas(bench):
    """On a dense chain both encodings are the same LP: the graph LP's bound of a second-layer neuron equals
    the chain encoder's (same DeepPoly bounds of layer 1, which are exact there)."""
    from conftest import acas_path, ACAS
    from equiv.bounds import deeppoly_bounds
    from equiv.encode.graph import encode_graph
    from equiv.encode.chain import encode_network
    from equiv.ir.chain_io import load_onnx
    from equiv.solvers import make_backend
    g, net = load_graph(acas_path(1, 1)), load_onnx(acas_path(1, 1))
    box = load_region(spec=ACAS / "prop_3.vnnlib")[0]
    dpg, dpc = deeppoly_graph(g, box), deeppoly_bounds(net, box)
    z2 = g.args(g.relus[1])[0]
    enc_g = encode_graph(g, box, dpg, upto=z2)
    enc_c = encode_network(net, box, dpc, depth=1, integer=False)
    bg, bc = make_backend("highs", enc_g.model), make_backend("highs", enc_c.model)
    W, b = net.dense[1].W, net.dense[1].b
    for i in (0, 7, 19):
        c, off = enc_g.objective(z2, i)
        got = bg.maximize(c, off, integer=False, time_limit=10).bound
        c2, off2 = enc_c.objective(W[i], b[i])
        want = bc.maximize(c2, off2, integer=False, time_limit=10).bound
        assert abs(got - want) <= 1e-6 * (1 + abs(want))

