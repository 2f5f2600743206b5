"""Proof-carrying simplification on graphs: `simplify` records the ReLU positions it proved, `check` re-proves
them, rebuilds the reduction and bounds the written file; a record that does not hold is never trusted."""

from __future__ import annotations

import json

import numpy as np
import onnx

from equiv.artifacts.validate import OnnxRunner
from equiv.cli import main
from equiv.ir import load_graph
from equiv.prove.graph_carried import META_KEY, GraphClaims, _bits, read_graph_claims
from equiv.prove.carried import pack_record, unpack_record
from equiv.spec.region import Box
from test_graph_simplify import CIFAR, conv_dense_model, needs_cifar, residual_model

BOX72 = ",".join(["-1:1"] * 72)


def _simplified(tmp_path, rng, model_fn=conv_dense_model, box=BOX72):
    path, out = tmp_path / "m.onnx", tmp_path / "s.onnx"
    onnx.save(model_fn(rng), str(path))
    assert main(["simplify", str(path), "--box", box, "-o", str(out), "--no-progress"]) == 0
    return path, out


def _check(capsys, a, b, box, *extra) -> tuple[int, dict]:
    code = main(["check", str(a), str(b), "--box", box, "--json", "--no-progress", *extra])
    return code, json.loads(capsys.readouterr().out)


def _sampled_max_diff(a, b, box: Box, n: int = 10000) -> float:
    rng = np.random.default_rng(11)
    x = np.vstack([box.sample(n, rng), box.random_vertices(256, rng), box.center[None]])
    return float(np.abs(OnnxRunner(str(a))(x) - OnnxRunner(str(b))(x)).max())


def _edit_record(src, dst, edit):
    m = onnx.load(str(src))
    prop = next(p for p in m.metadata_props if p.key == META_KEY)
    doc = json.loads(unpack_record(prop.value))
    edit(doc)
    prop.value = pack_record(json.dumps(doc))
    onnx.save(m, str(dst))


def test_a_record_of_index_lists_is_still_read(tmp_path, rng, capsys):
    """Records written before bit masks (positions as index lists, the region's bounds written out) give the same
    claims, and still certify."""
    path, out = _simplified(tmp_path, rng)
    capsys.readouterr()
    claims, _ = read_graph_claims(onnx.load(str(out)))
    assert set(claims.region) == {"sha256", "dims"}
    old = tmp_path / "old.onnx"
    bounds = {"lo": [-1.0] * claims.region["dims"], "hi": [1.0] * claims.region["dims"]}

    def as_lists(doc):
        for key in ("dead", "active"):            # (the claims hold flat indices)
            doc[key] = {r: getattr(claims, key)[r].tolist() for r in doc.pop(key + "_bits")}
        doc["region"] = bounds
    _edit_record(out, old, as_lists)
    again, why = read_graph_claims(onnx.load(str(old)))
    assert why is None and again.region == bounds and all(np.array_equal(again.dead[r], claims.dead[r]) and
                               np.array_equal(again.active[r], claims.active[r]) for r in claims.dead)
    code, r = _check(capsys, path, old, BOX72, "--epsilon", "1e-4")
    assert code == 0 and {p["method"] for p in r["pieces"]} == {"carried"}


def test_record_round_trip_and_fit(tmp_path, rng, capsys):
    path, out = _simplified(tmp_path, rng)
    capsys.readouterr()
    claims, why = read_graph_claims(onnx.load(str(out)))
    assert why is None and isinstance(claims, GraphClaims) and claims.method == "milp"
    g = load_graph(path)
    dead, active = claims.masks(g)
    assert set(dead) == set(g.relus) and sum(int(m.sum()) for m in dead.values()) > 0
    m = onnx.load(str(out))
    next(p for p in m.metadata_props if p.key == META_KEY).value = "{broken"
    assert read_graph_claims(m)[0] is None and "malformed" in read_graph_claims(m)[1]


def test_simplified_graph_is_checked_by_its_record_both_orders(tmp_path, rng, capsys):
    path, out = _simplified(tmp_path, rng)
    capsys.readouterr()
    for a, b in ((path, out), (out, path)):
        code, r = _check(capsys, a, b, BOX72, "--epsilon", "1e-5")
        assert code == 0 and r["verdict"] == "equivalent"
        assert {p["method"] for p in r["pieces"]} == {"carried"} and r["stats"]["carried"]["ok"]
    box = Box(np.full(72, -1.0), np.ones(72))
    assert _sampled_max_diff(path, out, box) <= max(r["max_diff_upper"], 1e-6)
    # top-1: the record proves |A - B| <= delta; that decides only where A's own margins exceed it (DeepPoly),
    # which this random net's are not on the whole box: the search decides, and the report says why
    code, r = _check(capsys, path, out, BOX72, "--norm", "top1")
    assert any("top-1 margins on the region could not be proved" in n for n in r["notes"])
    assert "carried" not in {q["method"] for q in r["pieces"]}


def test_a_false_record_is_never_trusted(tmp_path, rng, capsys):
    """A record claiming a position dead that is not: the claim fails, the search decides alone."""
    path, out = _simplified(tmp_path, rng)
    capsys.readouterr()
    g = load_graph(path)
    claims, _ = read_graph_claims(onnx.load(str(out)))
    dead, active = claims.masks(g)
    # a position sampling shows positive somewhere on the box, claimed dead
    box = Box(np.full(72, -1.0), np.ones(72))
    vals = g.evaluate(box.sample(2000, np.random.default_rng(0)))
    r0 = g.relus[0]
    p = int(np.flatnonzero(((vals[g.args(r0)[0]] > 0).any(axis=0)).reshape(-1) & ~dead[r0].reshape(-1))[0])
    lie = tmp_path / "lie.onnx"

    def claim_dead(doc):
        d, a = dead[r0].reshape(-1).copy(), active[r0].reshape(-1).copy()
        d[p], a[p] = True, False
        doc["dead_bits"][r0], doc["active_bits"][r0] = _bits(d), _bits(a)
    _edit_record(out, lie, claim_dead)
    code, r = _check(capsys, path, lie, BOX72, "--epsilon", "1e-5")
    assert "carried" not in {q["method"] for q in r["pieces"]}
    assert any("not re-proved" in n for n in r["notes"])
    assert r["verdict"] in ("equivalent", "unknown")          # the two models are equal: never a counterexample


def test_other_original_or_wider_region_fall_back(tmp_path, rng, capsys):
    path, out = _simplified(tmp_path, rng, residual_model, ",".join(["0.2:0.6"] * 32))
    capsys.readouterr()
    # another original (one weight changed): the sha256 does not match
    other = tmp_path / "other.onnx"
    m = onnx.load(str(path))
    t = m.graph.initializer[-1]
    a = onnx.numpy_helper.to_array(t).copy()
    a.reshape(-1)[0] += 1.0
    t.CopyFrom(onnx.numpy_helper.from_array(a, t.name))
    onnx.save(m, str(other))
    code, r = _check(capsys, other, out, ",".join(["0.2:0.6"] * 32), "--epsilon", "1e-4")
    assert any("sha256" in n for n in r["notes"]) and "carried" not in {q["method"] for q in r["pieces"]}
    # a wider region than the one simplify proved the phases on: they fail there, the search takes over
    code, r = _check(capsys, path, out, ",".join(["-1:1"] * 32), "--epsilon", "1e-4")
    assert "carried" not in {q["method"] for q in r["pieces"]}
    assert any("not re-proved" in n for n in r["notes"])
    if r["verdict"] == "not_equivalent":
        x = np.array(r["counterexample"]["input"])
        assert np.abs(OnnxRunner(str(path))(x[None]) - OnnxRunner(str(out))(x[None])).max() > 1e-4


def _simplified_and_checked(model, spec, tmp_path, capsys):
    """`simplify` (DeepPoly) the network on the spec's box, then `check` it against the original at 1e-4:
    (written model, check report, box); the check must have decided by the record, and onnxruntime agrees."""
    from equiv.spec.region import load_region
    out = tmp_path / "s.onnx"
    assert main(["simplify", str(model), "--spec", str(spec), "-o", str(out), "--method", "deeppoly",
                 "--validation-samples", "1000", "--no-progress"]) == 0
    capsys.readouterr()
    code = main(["check", str(model), str(out), "--spec", str(spec), "--epsilon", "1e-4", "--json", "--no-progress",
                 "--samples", "2000"])
    r = json.loads(capsys.readouterr().out)
    assert code == 0 and r["verdict"] == "equivalent" and {p["method"] for p in r["pieces"]} == {"carried"}
    box = load_region(spec=spec)[0]
    assert _sampled_max_diff(model, out, box, n=3000) <= 1e-4
    return out, r, box


@needs_cifar
def test_resnet_simplified_is_checked_by_its_record(tmp_path, capsys):
    """ResNet-2B, simplified with DeepPoly: check re-proves the 5 000+ recorded phases instead of searching the
    pair (which DeepPoly on the product graph cannot prove once channels are deleted)."""
    model, spec = CIFAR / "resnet_2b.onnx", CIFAR / "resnet_2b-img386-eps2_255.vnnlib"
    out, _, box = _simplified_and_checked(model, spec, tmp_path, capsys)
    # top-1 from the same record: ResNet-2B's class margins on this ball exceed the rounding bound
    code = main(["check", str(model), str(out), "--spec", str(spec), "--norm", "top1", "--json", "--no-progress",
                 "--samples", "2000"])
    r = json.loads(capsys.readouterr().out)
    assert code == 0 and {p["method"] for p in r["pieces"]} == {"carried"}
    x = np.vstack([box.sample(3000, np.random.default_rng(2)), box.random_vertices(64, np.random.default_rng(2))])
    assert np.array_equal(OnnxRunner(str(model))(x).argmax(axis=1), OnnxRunner(str(out))(x).argmax(axis=1))


@needs_cifar
def test_avgpool_cnn_simplified_is_checked_by_its_record(tmp_path, capsys):
    """Convnet_avgpool (Pad + AveragePool), simplified with DeepPoly: its written pool reads back as a plain
    Conv, which once made the pair fall back to the product graph (a 0.9 bound, 'unknown' at 1e-4)."""
    _, r, _ = _simplified_and_checked(CIFAR / "Convnet_avgpool.onnx", CIFAR / "avgpool_prop_0_0.02.vnnlib", tmp_path,
                                      capsys)
    assert r["max_diff_upper"] <= 1e-6


def test_past_the_deadline_no_bound_starts_and_the_verdict_is_unknown(tmp_path, rng):
    """--time-limit on graphs: a DeepPoly pass cannot be cut, but no stage starts after the limit.  The record's
    check stops once its phases are re-proved (no difference-graph bound) and `carried_graph_check` answers
    unknown without a search from scratch; `check_graphs` starts no box's bounds past its deadline."""
    from equiv.prove.equivalence import CheckOptions
    from equiv.prove.graph_carried import carried_graph_check, check_graph_claims
    from equiv.prove.graph_check import check_graphs
    path, out = _simplified(tmp_path, rng)
    ga, gb = load_graph(path), load_graph(out)
    box = Box(np.full(72, -1.0), np.ones(72))
    claims, _ = read_graph_claims(onnx.load(str(out)))
    cc = check_graph_claims(ga, onnx.load(str(out)), box, claims, deadline=0.0)
    assert cc.timed_out and not cc.ok and cc.per_output is None
    assert check_graph_claims(ga, onnx.load(str(out)), box, claims).ok          # (no deadline: proved)
    opt = CheckOptions(norm="linf", epsilon=1e-5, time_limit=1e-9)
    res, notes = carried_graph_check(str(path), str(out), ga, gb, [box], opt, OnnxRunner(str(path)), OnnxRunner(str(out)))
    assert res.verdict == "unknown" and res.stats["carried"]["ok"] is False and "time limit" in notes[-1]
    res = check_graphs(ga, gb, [box], OnnxRunner(str(path)), OnnxRunner(str(out)), opt, deadline=0.0)
    assert res.verdict == "unknown" and res.max_diff_upper == np.inf and any("time limit" in n for n in res.notes)


def _transpose_matvec_model(rng):
    """Gemm, Relu, Reshape (1, 4, 4), Transpose, then MatMul by a 1-D constant: tensor @ vector."""
    from onnx import TensorProto, helper, numpy_helper
    W1, b1 = rng.normal(size=(5, 16)).astype(np.float32), rng.normal(size=16).astype(np.float32)
    b1[:5], b1[5:8] = -20.0, 20.0          # dead and active positions on the box [-1, 1]^5: something to remove
    v = rng.normal(size=4).astype(np.float32)
    nodes = [helper.make_node("Gemm", ["x", "W1", "b1"], ["z1"]), helper.make_node("Relu", ["z1"], ["h1"]),
             helper.make_node("Reshape", ["h1", "shp"], ["r1"]),
             helper.make_node("Transpose", ["r1"], ["t1"], perm=[0, 2, 1]), helper.make_node("MatMul", ["t1", "v"], ["y"])]
    inits = [numpy_helper.from_array(W1, "W1"), numpy_helper.from_array(b1, "b1"),
             numpy_helper.from_array(np.array([1, 4, 4], np.int64), "shp"), numpy_helper.from_array(v, "v")]
    g = helper.make_graph(nodes, "tmv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 5])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_a_tensor_times_vector_model_is_certified_by_its_record(tmp_path, rng, capsys):
    """x @ v with a 1-D constant v reads as a one-output dense layer, as the written file (a MatMul by a (k, 1)
    matrix) reads back: once read as two different ops, the record could not match and equiv could not certify
    its own output (`simplify --certify` unknown, exit 3)."""
    box = ",".join(["-1:1"] * 5)
    path, out = _simplified(tmp_path, rng, _transpose_matvec_model, box)
    capsys.readouterr()
    code, r = _check(capsys, path, out, box, "--epsilon", "1e-4")
    assert code == 0 and r["verdict"] == "equivalent" and {p["method"] for p in r["pieces"]} == {"carried"}, r["notes"]
    assert _sampled_max_diff(path, out, Box(-np.ones(5), np.ones(5))) <= 1e-5
