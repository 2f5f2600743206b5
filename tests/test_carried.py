"""Proof-carrying simplification: `simplify` records the phases it reduced with, `check` re-proves them
instead of searching, and never trusts a record that does not hold."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import given, settings

from conftest import ACAS, MODELS, acas_path, random_problem, small_problems
from equiv.apps.simplify import sha256_of, simplify
from equiv.artifacts.validate import OnnxRunner
from equiv.cli import main
from equiv.ir.chain_export import network_to_onnx
from equiv.ir.chain_io import load_onnx
from equiv.prove.carried import META_KEY, attach_claims, read_claims, rounding_bound, _export_order
from equiv.prove.equivalence import CheckOptions, check_models
from equiv.prove.stability import StabilityOptions
from equiv.spec.region import Box, load_region
from equiv.transform.reduce import reduce_network


def _sampled_max_diff(a, b, box: Box, n: int = 10000, seed: int = 7) -> float:
    """Largest |A - B| in onnxruntime over n random points, the corners and the centre."""
    rng = np.random.default_rng(seed)
    x = np.vstack([box.sample(n, rng), box.corners(limit=1024), box.center[None]]).astype(np.float32)
    return float(np.abs(OnnxRunner(str(a))(x) - OnnxRunner(str(b))(x)).max())


def _methods(res) -> set:
    return {p.method for p in res.pieces}


def test_metadata_round_trip_and_malformed():
    model = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], []))
    dead, active = [np.array([True, False, True])], [np.array([False, True, False])]
    attach_claims(model, "ab" * 32, dead, active, Box(np.zeros(2), np.ones(2)))
    attach_claims(model, "cd" * 32, dead, active)           # replaces, never duplicates
    assert sum(p.key == META_KEY for p in model.metadata_props) == 1
    claims, why = read_claims(model)
    assert why is None and claims.source_sha256 == "cd" * 32
    assert claims.dead[0].tolist() == [0, 2] and claims.active[0].tolist() == [1]
    d, a = claims.masks([3])
    assert d[0].tolist() == [True, False, True] and a[0].tolist() == [False, True, False]
    assert claims.masks([2]) is None and claims.masks([3, 4]) is None     # does not fit other layers
    model.metadata_props[0].value = "{not json"
    claims, why = read_claims(model)
    assert claims is None and "malformed" in why
    # a large record is stored deflated, and read back the same; a damaged one is malformed, never trusted
    from equiv.prove.carried import PACKED
    big = [np.arange(5000) % 3 == 0]
    attach_claims(model, "ef" * 32, big, [~big[0]], Box(np.linspace(0, 1, 3000), np.linspace(1, 2, 3000)))
    value = model.metadata_props[0].value
    assert value.startswith(PACKED)
    claims, why = read_claims(model)
    assert why is None and claims.dead[0].tolist() == np.flatnonzero(big[0]).tolist()
    region = Box(np.linspace(0, 1, 3000), np.linspace(1, 2, 3000))
    assert claims.region == {"sha256": region.sha256(), "dims": 3000}        # named, not written out
    assert Box(region.lo, region.hi + 1e-12).sha256() != region.sha256()
    model.metadata_props[0].value = value[:-8]
    claims, why = read_claims(model)
    assert claims is None and "malformed" in why


def test_rounding_bound_covers_merged_layers(rng):
    """A reduction that merges layers has weights float32 cannot hold exactly: the bound covers the gap."""
    net, box = random_problem(3, 4, [6, 5, 6], 3, linear_channels=True)
    dead = [np.zeros(w, bool) for w in net.hidden_widths]
    active = [m.copy() for m in net.masks]
    active[1][:] = net.masks[1]          # layer 2 all linear: merged into layer 3
    exact = _export_order(reduce_network(net, dead, active))
    written = load_onnx_proto(network_to_onnx(exact))
    bound = rounding_bound(exact, written, box)
    x = np.vstack([box.sample(20000, rng), box.corners()])
    seen = np.abs(exact.forward(x) - written.forward(x)).max(axis=0)
    assert np.any(seen > 0), "the test needs a reduction float32 cannot hold exactly"
    assert np.all(seen <= bound)
    assert np.all(bound < 1e-4)


def load_onnx_proto(model):
    from equiv.ir.chain_io import network_from_onnx
    return network_from_onnx(model)


@pytest.mark.usefixtures("bench")
def test_acas_simplified_is_checked_by_its_phases(tmp_path):
    a = acas_path(1, 1)
    box = load_region(spec=ACAS / "prop_3.vnnlib")[0]
    out = tmp_path / "small.onnx"
    s = simplify(a, box, output_path=out)
    claims, why = read_claims(onnx.load(str(out)))
    assert why is None and claims.source_sha256 == sha256_of(a)
    assert sum(d.size + x.size for d, x in zip(claims.dead, claims.active)) == s.stability.count("dead") + \
        s.stability.count("active")
    res = check_models(a, out, box, CheckOptions(epsilon=1e-4))
    assert res.verdict == "equivalent" and _methods(res) == {"carried"}
    assert res.stats["carried"]["ok"] and res.max_diff_upper <= 1e-4
    assert _sampled_max_diff(a, out, box) <= res.max_diff_upper + 1e-5
    # a seen difference above the proven one (float32 evaluation) is explained, and only then
    assert (res.max_diff_lower > res.max_diff_upper) == any("exact functions" in n for n in res.notes)
    # either order: A may be the simplified one
    rev = check_models(out, a, box, CheckOptions(epsilon=1e-4))
    assert rev.verdict == "equivalent" and _methods(rev) == {"carried"}


@pytest.mark.usefixtures("bench")
def test_a_false_record_is_never_trusted(tmp_path):
    """A model whose record claims an unstable neuron dead: the claim fails, the search decides alone."""
    a = acas_path(1, 1)
    box = load_region(spec=ACAS / "prop_3.vnnlib")[0]
    net = load_onnx(a)
    s = simplify(a, box)
    dead, active = s.stability.phase_masks(net)
    # the unstable neuron with the largest effect on the output, claimed dead
    unstable = [(k, i) for k, m in enumerate(net.masks) for i in np.flatnonzero(m & ~dead[k] & ~active[k])]
    k, i = max(unstable, key=lambda ki: np.abs(net.dense[ki[0] + 1].W[:, ki[1]]).sum()
               * (s.stability.bounds.hi[ki[0]][ki[1]]))
    dead[k][i] = True
    lie = tmp_path / "lie.onnx"
    lie.write_bytes(attach_claims(network_to_onnx(reduce_network(net, dead, active)), sha256_of(a), dead, active)
                    .SerializeToString())
    res = check_models(a, lie, box, CheckOptions(epsilon=1e-4, time_limit=60))
    assert res.stats["carried"]["ok"] is False and "carried" not in _methods(res)
    assert "not proved" in res.stats["carried"]["reason"]
    assert res.verdict == "not_equivalent"


@pytest.mark.usefixtures("bench")
def test_changed_weights_or_other_original_fall_back(tmp_path):
    a = acas_path(1, 1)
    box = load_region(spec=ACAS / "prop_3.vnnlib")[0]
    out = tmp_path / "small.onnx"
    simplify(a, box, output_path=out)
    model = onnx.load(str(out))
    init = next(i for i in model.graph.initializer if len(i.dims) == 2)     # the first weight matrix
    arr = onnx.numpy_helper.to_array(init).copy()
    arr.flat[0] += 0.5
    init.CopyFrom(onnx.numpy_helper.from_array(arr, init.name))
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(model.SerializeToString())
    res = check_models(a, bad, box, CheckOptions(epsilon=1e-4, time_limit=60))
    assert "carried" not in _methods(res) and res.verdict == "not_equivalent"
    assert any("exceeds epsilon" in n for n in res.notes)
    # a record naming another original is not used, and the report says why
    other = check_models(acas_path(1, 2), out, box, CheckOptions(epsilon=1e-4, time_limit=30))
    assert "carried" not in _methods(other) and "carried" not in other.stats
    assert any("sha256" in n for n in other.notes)


@pytest.mark.usefixtures("bench")
def test_a_wider_region_than_the_records(tmp_path):
    """Phases proved on prop_3 do not hold on prop_1's box: refuted by real points, then searched."""
    a = acas_path(1, 1)
    out = tmp_path / "small.onnx"
    simplify(a, load_region(spec=ACAS / "prop_3.vnnlib")[0], output_path=out)
    wide = load_region(spec=ACAS / "prop_1.vnnlib")[0]
    res = check_models(a, out, wide, CheckOptions(epsilon=1e-4, time_limit=30))
    assert res.stats["carried"]["ok"] is False and "shown wrong by real points" in res.stats["carried"]["reason"]
    assert res.verdict == "not_equivalent"


def test_cli_check_of_a_simplified_model_and_top1(tmp_path, capsys):
    a, spec = MODELS / "digits_mlp.onnx", MODELS / "digits_mlp_ball.vnnlib"
    out = tmp_path / "d.onnx"
    assert main(["simplify", str(a), "--spec", str(spec), "-o", str(out)]) == 0
    capsys.readouterr()
    assert main(["check", str(a), str(out), "--spec", str(spec), "--epsilon", "1e-4", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["verdict"] == "equivalent" and {p["method"] for p in rep["pieces"]} == {"carried"}
    assert rep["stats"]["carried"]["claims"] > 0
    box = load_region(spec=spec)[0]
    assert _sampled_max_diff(a, out, box) <= rep["max_diff_upper"] + 1e-5
    # top-1 is not what the record bounds: the search decides, and says so
    main(["check", str(a), str(out), "--spec", str(spec), "--norm", "top1", "--json"])
    rep = json.loads(capsys.readouterr().out)
    assert "carried" not in {p["method"] for p in rep["pieces"]}
    assert any("top-1" in n for n in rep["notes"])


@settings(max_examples=25, deadline=None)
@given(small_problems(max_layers=3, max_width=6))
def test_random_nets_simplified_then_checked(problem):
    net, box = problem
    with tempfile.TemporaryDirectory() as d:
        a, out = Path(d) / "a.onnx", Path(d) / "s.onnx"
        a.write_bytes(network_to_onnx(net).SerializeToString())
        simplify(a, box, StabilityOptions(samples=500), output_path=out, validation_samples=2000)
        res = check_models(a, out, box, CheckOptions(epsilon=1e-4, samples=2000))
        assert res.verdict == "equivalent", res.notes
        assert _methods(res) in ({"carried"}, {"identical"})
        assert _sampled_max_diff(a, out, box, n=10000) <= res.max_diff_upper + 1e-5


def test_the_sub_box_path_uses_the_record_first(tmp_path, capsys):
    """--journal (as --workers / --scheduler) sends a check to the sub-box search; a record decides first."""
    a, spec = MODELS / "digits_mlp.onnx", MODELS / "digits_mlp_ball.vnnlib"
    out = tmp_path / "d.onnx"
    assert main(["simplify", str(a), "--spec", str(spec), "-o", str(out)]) == 0
    capsys.readouterr()
    args = ["check", str(a), str(out), "--spec", str(spec), "--json", "--journal", str(tmp_path / "run.jnl")]
    assert main(args + ["--epsilon", "1e-4"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["verdict"] == "equivalent" and {p["method"] for p in rep["pieces"]} == {"carried"}
    # epsilon below the rounding bound: the record does not decide, the sub-box search does, with the note
    main(args[:-2] + ["--journal", str(tmp_path / "run2.jnl"), "--epsilon", "1e-12", "--time-limit", "20"])
    rep = json.loads(capsys.readouterr().out)
    assert "carried" not in {p["method"] for p in rep["pieces"]}
    assert any("carries its reduction's phases" in n for n in rep["notes"])
    assert rep["verdict"] != "equivalent" or rep["max_diff_upper"] <= 1e-12


@pytest.mark.usefixtures("bench")
def test_compress_writes_the_record_only_on_the_exact_reduction(tmp_path):
    """compress's exact-simplification candidate carries its phases (its check re-proves them); a candidate
    made from it (other weights or factored layers) does not, since it is no longer that reduction."""
    import dataclasses
    from equiv.apps.compress.makers import exact_simplified
    from equiv.prove.stability import prove_stability
    a = acas_path(1, 1)
    box = load_region(spec=ACAS / "prop_3.vnnlib")[0]
    net = load_onnx(a)
    dead, active = prove_stability(net, box).phase_masks(net)
    cand = exact_simplified("simplified", reduce_network(net, dead, active), (sha256_of(a), dead, active))
    out = tmp_path / "c.onnx"
    out.write_bytes(cand.to_onnx().SerializeToString())
    res = check_models(a, out, box, CheckOptions(epsilon=1e-4))
    assert res.verdict == "equivalent" and _methods(res) == {"carried"}
    assert read_claims(dataclasses.replace(cand, weights="float16").to_onnx()) == (None, None)


def test_rounding_bound_splits_the_box_down_to_a_target(bench):
    """Above a target, `rounding_bound` bisects the sub-boxes still above it and bounds them again: on ACAS Xu
    1_1 against a float16 copy of its weights, half the one-box bound is reached, and the result still holds
    the largest difference sampled in float64."""
    from equiv.ir.network import Dense
    net = load_onnx(acas_path(1, 1))
    f16 = net.with_layers([Dense(d.W.astype(np.float16).astype(float), d.b.astype(np.float16).astype(float))
                           for d in net.dense], net.masks)
    box, _ = load_region(spec=ACAS / "prop_3.vnnlib")
    one = rounding_bound(net, f16, box)
    split = rounding_bound(net, f16, box, target=one / 2)
    assert np.all(split <= one) and np.all(split <= one / 2)
    x = np.vstack([box.sample(20000, np.random.default_rng(0)), box.corners()])
    seen = np.abs(net.forward(x) - f16.forward(x)).max(axis=0)
    assert np.all(seen <= split) and np.all(rounding_bound(net, f16, box, target=np.zeros(5), deadline=0.0) == one)
