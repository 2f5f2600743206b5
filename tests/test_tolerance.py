"""Simplification up to a tolerance: exact algebra of the edits, sound selection, certified written files."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from conftest import ACAS, MNIST, MODELS, acas_path, load_box, needs_bench, small_problems, tiny_net
from equiv.apps.tolerance.candidates import _merge_fits, minimax_affine
from equiv.apps.tolerance.edits import Edit, apply_edits, compact, exact_edits
from equiv.apps.tolerance.judge import Judge, partition
from equiv.apps.tolerance.pipeline import ToleranceOptions, simplify_within
from equiv.artifacts.validate import OnnxRunner
from equiv.ir.chain_export import network_to_onnx
from equiv.ir.chain_io import load_onnx
from equiv.prove.equivalence import CheckOptions, check_models
from equiv.spec.region import Box


def _net():
    # 2 inputs, 3 hidden ReLUs, 2 hidden ReLUs, 1 output
    return tiny_net([([[1, -1], [2, 1], [-1, 1]], [0.5, -0.25, 0.0]),
                     ([[1, 2, -1], [0.5, -1, 1]], [0.1, -0.2]),
                     ([[1, -2]], [0.3])])


def test_edits_are_exact_replacements_and_compact_keeps_the_function():
    net = _net()
    X = np.random.default_rng(0).uniform(-1, 1, (500, 2))
    edits = [Edit(1, 0, "constant", 0.0, 0.7), Edit(1, 2, "affine", 0.5, 0.25), Edit(2, 1, "affine", 1.0, 0.0)]
    g = apply_edits(net, edits)
    assert g.hidden_widths == net.hidden_widths and g.n_relus == net.n_relus - 3
    # by hand: h1 = [0.7, relu(2x0 + x1 - 0.25), 0.5 (-x0 + x1) + 0.25]
    h1 = np.stack([np.full(len(X), 0.7), np.maximum(2 * X[:, 0] + X[:, 1] - 0.25, 0),
                   0.5 * (-X[:, 0] + X[:, 1]) + 0.25], axis=1)
    z2 = h1 @ np.array([[1, 2, -1], [0.5, -1, 1]]).T + [0.1, -0.2]
    h2 = np.stack([np.maximum(z2[:, 0], 0), z2[:, 1]], axis=1)
    expect = h2 @ np.array([[1, -2]]).T + 0.3
    np.testing.assert_allclose(g.forward(X), expect, atol=1e-12)
    small = compact(g)
    assert small.n_relus == 2 and small.hidden_widths[0] < 3       # the constant neuron is gone
    np.testing.assert_allclose(small.forward(X), expect, atol=1e-12)


def test_merge_moves_the_outgoing_weights():
    # neuron 1 is exactly 2 x neuron 0: merging it into 0 changes nothing
    net = tiny_net([([[1, -1], [2, -2]], [0.5, 1.0]), ([[3, -1]], [0.0])])
    g = apply_edits(net, [Edit(1, 1, "merge", 2.0, 0.0, 0)])
    X = np.random.default_rng(1).uniform(-2, 2, (300, 2))
    np.testing.assert_allclose(g.forward(X), net.forward(X), atol=1e-12)
    assert compact(g).n_relus == 1
    _, pre = net.forward(X, return_pre=True)
    fits = _merge_fits(np.maximum(pre[0], 0), np.ones(2, bool), 1e-9)
    assert fits[1][0] == 0 and fits[1][1] == pytest.approx(2.0)


def test_an_edited_neuron_cannot_be_edited_again():
    net = _net()
    with pytest.raises(ValueError, match="replaced twice"):
        apply_edits(net, [Edit(1, 0, "constant"), Edit(1, 0, "affine", 1.0, 0.0)])


def test_minimax_affine_error_is_the_stated_one():
    for lo, hi in [(-1.0, 3.0), (-5.0, 0.5), (-0.1, 0.1)]:
        s, t, err = minimax_affine(lo, hi)
        z = np.linspace(lo, hi, 100001)
        gap = np.abs(np.maximum(z, 0) - (s * z + t))
        assert gap.max() <= err + 1e-12 and gap.max() >= err - 1e-6
    assert minimax_affine(-2, -1) == (0.0, 0.0, 0.0) and minimax_affine(1, 2) == (1.0, 0.0, 0.0)


def test_exact_edits_compact_to_the_reduction():
    from equiv.transform.reduce import reduce_network
    net = _net()
    dead = [np.array([True, False, False]), np.array([False, False])]
    active = [np.array([False, False, True]), np.array([False, True])]
    X = np.random.default_rng(2).uniform(-1, 1, (200, 2))
    np.testing.assert_allclose(compact(apply_edits(net, exact_edits(dead, active))).forward(X),
                               reduce_network(net, dead, active).forward(X), atol=1e-12)


def test_partition_tiles_the_box():
    box = Box(np.array([0.0, -1.0, 2.0]), np.array([1.0, 1.0, 2.0]))
    lo, hi = partition(box, 8)
    assert len(lo) == 8 and np.all(lo[:, 2] == 2.0) and np.all(hi[:, 2] == 2.0)
    vol = np.prod(np.where(hi > lo, hi - lo, 1.0), axis=1).sum()
    assert vol == pytest.approx(2.0)
    assert len(partition(Box(np.zeros(20), np.ones(20)), 64)[0]) == 1     # too many inputs: one box


def _run(net, box, opt, stability=None):
    model = network_to_onnx(net)
    return model, simplify_within(net, OnnxRunner(model), box, opt, stability)


def _worst(model_a, model_b, box, n=10000, seed=5):
    X = np.vstack([box.sample(n, np.random.default_rng(seed)), box.vertices(256, np.random.default_rng(seed))])
    return np.abs(OnnxRunner(model_a)(X) - OnnxRunner(model_b)(X)).max(axis=0), X


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problem=small_problems(max_layers=2, max_width=6, linear_channels=False))
def test_random_nets_written_model_within_epsilon(problem):
    net, box = problem
    out = net.forward(box.sample(200, np.random.default_rng(0)))
    eps = 0.05 * (1 + np.abs(out).max())
    model, res = _run(net, box, ToleranceOptions(epsilon=eps, certify_time_limit=30, validation_samples=2000))
    worst, _ = _worst(model, res.onnx_model, box, n=5000)
    assert np.all(worst <= eps * (1 + 1e-5) + 1e-5)
    assert res.simplified.n_relus <= res.exact.n_relus
    if res.kept:
        assert res.certificate is not None and res.certificate.verdict == "equivalent"
    else:
        assert worst.max() <= 1e-4       # the exact simplification


def test_a_selection_past_epsilon_is_backed_off_never_written():
    # the selection aims 20x past epsilon; only a certified (smaller) set or the exact model may come back
    net = load_onnx(acas_path(1, 1)) if ACAS.is_dir() else None
    if net is None:
        pytest.skip("benchmarks absent")
    box = load_box(ACAS / "prop_3.vnnlib")
    opt = ToleranceOptions(epsilon=0.01, safety=20.0, certify_time_limit=20, backoffs=4, validation_samples=3000)
    res = simplify_within(net, OnnxRunner(str(acas_path(1, 1))), box, opt)
    assert len(res.attempts) >= 2 and res.attempts[0].verdict != "equivalent"
    assert res.attempts[0].kept == len(res.selection.accepted) > len(res.kept)
    worst, _ = _worst(str(acas_path(1, 1)), res.onnx_model, box)
    assert worst.max() <= 0.01
    assert res.certificate is None or res.certificate.verdict == "equivalent"


@needs_bench
def test_cli_acas_prop1_epsilon_certified_and_independently_rechecked(tmp_path):
    model, spec = acas_path(1, 1), ACAS / "prop_1.vnnlib"
    out, rep = tmp_path / "small.onnx", tmp_path / "r.json"
    p = subprocess.run([sys.executable, "-m", "equiv.cli", "simplify", str(model), "--spec", str(spec),
                        "--epsilon", "0.05", "-o", str(out), "--report", str(rep), "--no-progress"],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    r = json.loads(rep.read_text())
    assert r["certificate"]["verdict"] == "equivalent" and r["relus_after"] < r["relus_exact"] <= 111
    assert r["certificate"]["max_diff_upper"] <= 0.05
    # the written file, checked from scratch (no knowledge from simplify)
    box = load_box(spec)
    c = check_models(model, out, box, CheckOptions(epsilon=0.05, time_limit=120))
    assert c.verdict == "equivalent"
    worst, _ = _worst(str(model), str(out), box)
    assert worst.max() <= 0.05 and worst.max() <= c.max_diff_upper


@needs_bench
def test_per_output_epsilon_is_respected():
    model, box = acas_path(1, 2), load_box(ACAS / "prop_3.vnnlib")
    eps = np.array([0.01, 0.2, 0.2, 0.2, 0.2])
    res = simplify_within(load_onnx(model), OnnxRunner(str(model)), box,
                          ToleranceOptions(epsilon=eps, certify_time_limit=60, validation_samples=3000))
    worst, _ = _worst(str(model), res.onnx_model, box)
    assert np.all(worst <= eps)
    assert res.certificate is not None and res.certificate.verdict == "equivalent"
    assert res.simplified.n_relus < res.exact.n_relus


def test_top1_judge_bounds_margins_not_sums():
    """The judge's rows are f_c - f_k: a network whose class flips on part of the box is never proved to keep
    it (rows e_c + e_k, as an earlier version had, bounded 20.3 + h > 0 and said yes)."""
    from equiv.bounds.deeppoly import deeppoly_bounds
    # h = relu(x) on [0, 1]; outputs 10 + h, 10.3, 0: class 0 for x > 0.3, class 1 below
    f = tiny_net([([[1.0]], [0.0]), ([[1.0], [0.0], [0.0]], [10.0, 10.3, 0.0])])
    box = Box([0.0], [1.0])
    judge = Judge(f, box, deeppoly_bounds(f, box), top1=True, pieces=4)
    assert judge.label == 0
    assert np.array_equal(judge.C, [[1.0, -1.0, 0.0], [1.0, 0.0, -1.0]])
    assert not judge.proved_ok(f)
    assert judge.bound(f)[0] < 0


@needs_bench
def test_mnist_top1_preserved():
    model, box = MNIST / "mnist-net_256x2.onnx", load_box(MNIST / "prop_0_0.03.vnnlib")
    res = simplify_within(load_onnx(model), OnnxRunner(str(model)), box,
                          ToleranceOptions(preserve="top1", certify_time_limit=60, validation_samples=5000))
    assert res.certificate is not None and res.certificate.verdict == "equivalent"
    X = np.vstack([box.sample(10000, np.random.default_rng(7)), box.vertices(512, np.random.default_rng(7))])
    a, b = OnnxRunner(str(model))(X), OnnxRunner(res.onnx_model)(X)
    assert np.array_equal(a.argmax(axis=1), b.argmax(axis=1))
    assert res.simplified.n_relus <= res.exact.n_relus // 2
    from equiv.ir.chain_export import stored_params
    assert stored_params(res.onnx_model) <= res.exact.n_params // 2


def test_cli_refuses_epsilon_with_preserve(tmp_path):
    p = subprocess.run([sys.executable, "-m", "equiv.cli", "simplify", str(MODELS / "digits_mlp.onnx"), "--spec",
                        str(MODELS / "digits_mlp_ball.vnnlib"), "--epsilon", "0.1", "--preserve", "top1", "-o",
                        str(tmp_path / "x.onnx")], capture_output=True, text=True)
    assert p.returncode == 2 and "not both" in p.stderr and not (tmp_path / "x.onnx").exists()


@needs_bench
def test_slice_epsilon_family_is_certified_and_verifies(tmp_path, capsys):
    from equiv.cli import main
    fam = tmp_path / "fam"
    model, spec = acas_path(1, 1), ACAS / "prop_1.vnnlib"
    assert main(["slice", str(model), "--spec", str(spec), "--epsilon", "0.05", "--max-slices", "2", "-o", str(fam),
                 "--no-progress", "--json", "--dispatch-samples", "5000", "--validation-samples", "2000"]) == 0
    m = json.loads((fam / "manifest.json").read_text())
    certs = [s["certificate"] for s in m["slices"]]
    assert all(c["verdict"] in ("equivalent", "exact") for c in certs)
    assert any(c["verdict"] == "equivalent" and c["replaced"] > 0 for c in certs)
    assert all(s["relus"] <= c["relus_exact"] for s, c in zip(m["slices"], certs))
    capsys.readouterr()
    # the files, checked from scratch against the original with the family's tolerance
    assert main(["slice", "--verify", str(fam), "--certify", "--json"]) == 0


def test_a_constant_model_is_written_without_a_zero_matrix():
    from equiv.ir.chain_export import stored_params
    from equiv.ir.chain_io import network_from_onnx
    from equiv.ir.network import Dense, Network
    net = Network.from_layers([Dense(np.zeros((3, 50)), np.array([1.0, -2.0, 0.5]))], [])
    model = network_to_onnx(net)
    assert stored_params(model) == 50 + 3
    X = np.random.default_rng(0).normal(size=(7, 50))
    np.testing.assert_allclose(OnnxRunner(model)(X), np.tile([1.0, -2.0, 0.5], (7, 1)))
    np.testing.assert_allclose(network_from_onnx(model).forward(X), np.tile([1.0, -2.0, 0.5], (7, 1)))


@needs_bench
def test_check_certifies_a_constant_model_on_the_chain_checker(tmp_path):
    """Tolerance mode writes a constant model as x @ zeros(n, 1) + b (the bias broadcast to the outputs); the
    graph importer holds that Add as a broadcast, so `check` sent the pair to the graph checker, which answered
    unknown (bound 0.96) where simplify's own certificate had proved 0.5.  The chain checker now takes it."""
    from equiv.apps.graph_simplify import takes_chain_pipeline
    from equiv.cli import main
    from equiv.ir import load_graph
    from equiv.ir.network import Dense, Network
    model, spec = MNIST / "mnist-net_256x2.onnx", MNIST / "prop_0_0.03.vnnlib"
    box = load_box(spec)
    y = OnnxRunner(str(model))(np.vstack([box.center[None], box.sample(2000, np.random.default_rng(0))]))
    const = tmp_path / "const.onnx"
    net = Network.from_layers([Dense(np.zeros((10, 784)), (y.min(0) + y.max(0)) / 2)], [])
    const.write_bytes(network_to_onnx(net).SerializeToString())
    assert takes_chain_pipeline(load_graph(const), const)
    rep = tmp_path / "r.json"
    assert main(["check", str(model), str(const), "--spec", str(spec), "--epsilon", "0.4", "--no-progress",
                 "--report", str(rep)]) == 0
    r = json.loads(rep.read_text())
    assert r["verdict"] == "equivalent" and r["max_diff_upper"] <= 0.4
    assert r["max_diff_lower"] > 0.01          # the models do differ: the proof is not of a trivial pair


def test_a_spent_time_limit_starts_no_selection_and_no_certificate():
    """ToleranceOptions.time_limit bounds the selection and the certificates together (compress gives the stage
    half of its time left): with none left, no candidate is tried, no certificate is started, and the exact
    simplification is written and validated."""
    net = _net()
    box = Box(np.array([-1.0, -1.0]), np.array([1.0, 1.0]))
    model, res = _run(net, box, ToleranceOptions(epsilon=0.5, time_limit=0.0, validation_samples=2000))
    assert res.selection.accepted == [] and res.attempts == [] and res.certificate is None
    assert "selection time limit" in res.selection.stopped
    assert res.simplified is res.exact and res.validation["samples"] > 0


def test_top1_skips_the_margin_milps_when_a_sample_shows_another_class():
    """A sampled point where another class reaches the centre's class shows that margin <= 0: no bound can
    prove it positive, so no margin MILP runs (each took up to margin_time_limit: 80 s on ACAS 1_1 prop_3)
    and only the exact simplification is offered."""
    from equiv.apps.tolerance.margins import milp_margins
    # outputs relu(x) and relu(-x) on x in [-1, 1]: class 0 at x > 0 (the centre ties), class 1 at x < 0
    net = tiny_net([([[1.0], [-1.0]], [0.0, 0.0]), ([[1.0, 0.0], [0.0, 1.0]], [0.0, 0.0])])
    box = Box(np.array([-1.0]), np.array([1.0]))
    model, res = _run(net, box, ToleranceOptions(preserve="top1", validation_samples=500))
    assert any("sampled point" in n for n in res.notes) and res.selection.tried == 0 and res.kept == []
    # and a margin MILP never starts past its deadline: the classes keep the bounds given
    from equiv.bounds import deeppoly_bounds
    lower = np.array([-1.0])
    out = milp_margins(net, box, deeppoly_bounds(net, box), 0, lower, deadline=0.0)
    assert out.tolist() == lower.tolist()
