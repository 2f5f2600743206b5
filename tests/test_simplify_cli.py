"""End to end: `simplify` on the shipped model and real networks, the CLI's outputs and exit codes."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from conftest import ACAS, MNIST, MODELS, acas_path, needs_bench
from equiv.transform import reduce as reduce_mod
from equiv.cli import main
from equiv.errors import ValidationError
from equiv.spec.region import load_region
from equiv.apps.simplify import simplify
from equiv.prove.stability import StabilityOptions
from equiv.artifacts.validate import OnnxRunner

DIGITS = MODELS / "digits_mlp.onnx"
DIGITS_SPEC = MODELS / "digits_mlp_ball.vnnlib"
REPORT_KEYS = {"model_sha256", "region", "relus_before", "relus_after", "params_before", "params_after",
               "depth_before", "depth_after", "neurons", "proved_by", "unknown", "validation", "backend", "seconds"}


def _io(model: onnx.ModelProto):
    g = model.graph
    dims = lambda vi: [d.dim_value if d.HasField("dim_value") else 1 for d in vi.type.tensor_type.shape.dim]  # noqa: E731
    inits = {t.name for t in g.initializer}
    inp = [i for i in g.input if i.name not in inits][0]
    return inp.name, dims(inp), g.output[0].name, dims(g.output[0])


def _check_written(original, written, box, n=3000):
    """The written file passes the checker, keeps names/shapes, and matches the original on fresh points."""
    m = onnx.load(str(written))
    onnx.checker.check_model(m)
    assert _io(m) == _io(onnx.load(str(original)))
    x = box.sample(n, np.random.default_rng(123))
    diff = np.abs(OnnxRunner(str(original))(x) - OnnxRunner(m)(x)).max()
    assert diff <= 1e-4
    return diff


def test_cli_simplify_shipped_model(tmp_path, capsys):
    out, rep = tmp_path / "small.onnx", tmp_path / "r.json"
    code = main(["simplify", str(DIGITS), "--spec", str(DIGITS_SPEC), "-o", str(out), "--report", str(rep),
                 "--no-progress"])
    assert code == 0
    text = capsys.readouterr().out
    assert "ReLUs" in text and "validation" in text
    r = json.loads(rep.read_text())
    assert REPORT_KEYS <= r.keys()
    assert r["relus_after"] < r["relus_before"] == 64
    assert len(r["neurons"]) == 64
    assert r["validation"]["samples"] >= 10000 and r["validation"]["max_abs_diff"] <= 1e-4
    assert sum(r["proved_by"].values()) == r["relus_before"] - r["phases"]["unstable"] - r["unknown"]
    assert r["unknown"] == 0
    box, _ = load_region(spec=DIGITS_SPEC)
    _check_written(DIGITS, out, box)


def test_cli_json_on_stdout(tmp_path, capsys):
    code = main(["simplify", str(DIGITS), "--spec", str(DIGITS_SPEC), "-o", str(tmp_path / "s.onnx"), "--json",
                 "--method", "deeppoly"])
    assert code == 0
    r = json.loads(capsys.readouterr().out)
    assert r["method"] == "deeppoly" and r["queries"]["milp"] == 0


def test_a_relu_on_the_input_is_decided_by_the_box(tmp_path, capsys):
    """A ReLU straight on an input reads the box itself: [0, 1] is active and [-1, 0] dead, with no query (the
    chain reads it through an identity layer, whose bounds once took a rounding margin: both stayed unknown)."""
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    W1, b1, W2 = rng.normal(size=(4, 6)), rng.normal(size=6), rng.normal(size=(6, 2))
    init = [numpy_helper.from_array(a.astype(np.float32), n) for a, n in ((W1, "W1"), (b1, "b1"), (W2, "W2"))]
    nodes = [helper.make_node("Relu", ["x"], ["r0"]), helper.make_node("MatMul", ["r0", "W1"], ["m1"]),
             helper.make_node("Add", ["m1", "b1"], ["z1"]), helper.make_node("Relu", ["z1"], ["r1"]),
             helper.make_node("MatMul", ["r1", "W2"], ["y"])]
    graph = helper.make_graph(nodes, "relu_on_input", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])], init)
    path, out = tmp_path / "m.onnx", tmp_path / "s.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    code = main(["simplify", str(path), "--box", "0:1,0:2,-1:1,-1:0", "-o", str(out), "--json", "--no-progress"])
    assert code == 0
    r = json.loads(capsys.readouterr().out)
    first = [(n["phase"], n["method"]) for n in r["neurons"] if n["layer"] == 1]
    assert first == [("active", "interval"), ("active", "interval"), ("unstable", "samples"), ("dead", "interval")]
    assert r["unknown"] == 0 and r["validation"]["ok"]
    _check_written(path, out, load_region(box="0:1,0:2,-1:1,-1:0")[0])


def test_cli_bounds_json(capsys):
    assert main(["bounds", str(DIGITS), "--spec", str(DIGITS_SPEC), "--method", "interval", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert len(r["layers"]) == 3 and r["counts"]["stable"] > 0
    lo, hi = np.array(r["layers"][0]["lo"]), np.array(r["layers"][0]["hi"])
    assert np.all(lo <= hi)


def test_cli_bounds_json_has_one_layout_for_every_method(capsys):
    """LP/MILP bounds (the chain pipeline) carried only layer, lo and hi; a hunt found no way to pair them with
    the model's tensors.  Every method now names the tensor, its shape, the ReLU and the per-layer counts, and
    a stronger method's intervals lie inside a weaker one's."""
    rows = {}
    for method in ("interval", "deeppoly", "lp", "milp"):
        assert main(["bounds", str(DIGITS), "--spec", str(DIGITS_SPEC), "--method", method, "--json",
                     "--no-progress"]) == 0
        rows[method] = json.loads(capsys.readouterr().out)["layers"]
    meta = {m: [{k: L.get(k) for k in ("layer", "kind", "tensor", "shape", "relu", "size")} for L in r]
            for m, r in rows.items()}
    assert meta["lp"] == meta["milp"] == meta["deeppoly"] == meta["interval"]
    assert [L["kind"] for L in rows["lp"]] == ["relu input", "relu input", "output"]
    for weak, strong in (("interval", "deeppoly"), ("deeppoly", "lp")):
        for a, b in zip(rows[weak], rows[strong]):
            assert np.all(np.array(b["lo"]) >= np.array(a["lo"]) - 1e-7)
            assert np.all(np.array(b["hi"]) <= np.array(a["hi"]) + 1e-7)


@pytest.mark.parametrize("args, message", [
    (["--box", "0:1,0:1"], "2 dimensions but the network has 64"),
    (["--box", "1:0" + ",0:1" * 63], "above upper bound"),
    (["--box", "a:b"], "lo:hi"),
    (["--center", "missing.npy", "--radius", "0.1"], "cannot read"),
    (["--spec", "missing.vnnlib"], "not found"),
    ([], "exactly one region"),
])
def test_cli_bad_region_exits_2(tmp_path, capsys, args, message):
    out = tmp_path / "s.onnx"
    assert main(["simplify", str(DIGITS), "-o", str(out), *args]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_cli_unsupported_op_exits_2_and_writes_nothing(tmp_path, capsys):
    from onnx import TensorProto, helper
    node = helper.make_node("Sigmoid", ["x"], ["y"], name="squash")
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])])
    path = tmp_path / "sig.onnx"
    onnx.save(helper.make_model(g), str(path))
    out = tmp_path / "s.onnx"
    assert main(["simplify", str(path), "--box", "0:1,0:1", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "squash" in err and "Sigmoid" in err and "supported ops" in err
    assert not out.exists()


def test_cli_refuses_to_overwrite_input(tmp_path, capsys):
    copy = tmp_path / "m.onnx"
    copy.write_bytes(DIGITS.read_bytes())
    before = copy.read_bytes()
    assert main(["simplify", str(copy), "--spec", str(DIGITS_SPEC), "-o", str(copy)]) == 2
    assert "overwrite" in capsys.readouterr().err
    assert copy.read_bytes() == before


def test_cli_unknown_backend_exits_2(tmp_path, capsys):
    assert main(["simplify", str(DIGITS), "--spec", str(DIGITS_SPEC), "-o", str(tmp_path / "s.onnx"),
                 "--backend", "nosuch"]) == 2
    assert "nosuch" in capsys.readouterr().err


def test_validation_failure_is_loud_and_writes_nothing(tmp_path, monkeypatch, capsys):
    """A wrong reduction (simulated) must be caught by validation: exit 1, nothing written."""
    real = reduce_mod.reduce_network

    def broken(net, dead, active):
        small = real(net, dead, active)
        small.dense[-1].b[:] += 0.5
        return small

    monkeypatch.setattr("equiv.apps.simplify.reduce_network", broken)
    out = tmp_path / "s.onnx"
    assert main(["simplify", str(DIGITS), "--spec", str(DIGITS_SPEC), "-o", str(out), "--method", "deeppoly"]) == 1
    assert "BUG" in capsys.readouterr().err
    assert not out.exists()
    box, _ = load_region(spec=DIGITS_SPEC)
    with pytest.raises(ValidationError):
        simplify(DIGITS, box, StabilityOptions(method="deeppoly"))


@needs_bench
def test_simplify_acas_prop3_lp(tmp_path):
    """LP pipeline on ACAS Xu 1_1 / prop_3: the 206 LP-stable ReLUs go, the model stays equal on the box."""
    box, _ = load_region(spec=ACAS / "prop_3.vnnlib")
    out = tmp_path / "acas.onnx"
    r = simplify(acas_path(1, 1), box, StabilityOptions(method="lp"), output_path=out)
    assert r.stability.count("dead") == 140 and r.stability.count("active") == 66
    assert r.simplified.n_relus == 300 - 206
    assert r.validation.ok and r.validation.samples >= 10000
    assert "vertices" in r.validation.by_source and "ascent" in r.validation.by_source
    _check_written(acas_path(1, 1), out, box, n=20000)


@needs_bench
def test_simplify_mnist_lp(tmp_path):
    """LP pipeline on MNIST 256x2 / prop_0_0.03 reaches the reference LP count (407 dead, 14 active)."""
    box, _ = load_region(spec=MNIST / "prop_0_0.03.vnnlib")
    out = tmp_path / "mnist.onnx"
    r = simplify(MNIST / "mnist-net_256x2.onnx", box, StabilityOptions(method="lp"), output_path=out)
    assert r.stability.count("dead") >= 407 and r.stability.count("active") >= 14
    assert r.simplified.n_relus <= 512 - 421
    _check_written(MNIST / "mnist-net_256x2.onnx", out, box)
