"""Neuron phase proofs: the right phase by the cheapest method, never a phase contradicted by a real
point, and a solver that gives up (time limit) leaves the neuron "unknown"."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import exact_max, needs_bench, random_problem, small_problems, tiny_net
from equiv.errors import RegionError
from equiv.ir.network import Dense, Network
from equiv.spec.region import Box
from equiv.solvers import Decision, Status
from equiv.solvers.highs import HighsBackend
from equiv.prove.stability import StabilityOptions, prove_stability

MARGIN = 1e-6


def phases(res) -> dict:
    return {(p.layer, p.index): (p.phase, p.method) for p in res.neurons}


def sampled_signs(net: Network, box: Box, n: int = 20000, seed: int = 7):
    """Per hidden layer: does any sample (or corner) give z > 0, and z < 0?"""
    rng = np.random.default_rng(seed)
    pts = np.vstack([box.sample(n, rng), box.corners(limit=1024)])
    _, pre = net.forward(pts, return_pre=True)
    return [(z > 0).any(axis=0) for z in pre], [(z < 0).any(axis=0) for z in pre]


def assert_not_contradicted(net: Network, box: Box, res, n: int = 20000):
    """No sampled point has z > 0 at a 'dead' neuron or z < 0 at an 'active' one."""
    pos, neg = sampled_signs(net, box, n)
    for p in res.neurons:
        if p.phase == "dead":
            assert not pos[p.layer - 1][p.index], f"neuron {p.layer}:{p.index} declared dead ({p.method}) but z > 0"
        elif p.phase == "active":
            assert not neg[p.layer - 1][p.index], f"neuron {p.layer}:{p.index} declared active ({p.method}) but z < 0"
        elif p.phase == "unstable":
            assert pos[p.layer - 1][p.index] or p.method == "witness"


# ---- hand-made nets ------------------------------------------------------------------------------
# S1 on x in [0, 1]^2:
#   z1 = x1 + x2 + 1  in [1, 3]     active (interval)
#   z2 = -x1 - 2      in [-3, -2]   dead (interval)
#   z3 = x1 - x2      in [-1, 1]    unstable (samples: x = (1, 0) and (0, 1))
#   z4 = x2 - 5       a linear channel (no ReLU): phase "linear", whatever its sign

def net_s1():
    net = Network.from_layers([Dense(np.array([[1.0, 1], [-1, 0], [1, -1], [0, 1]]), np.array([1.0, -2, 0, -5])),
                               Dense(np.ones((1, 4)), np.zeros(1))], [np.array([True, True, True, False])])
    return net, Box(np.zeros(2), np.ones(2))


# S2 on x in [-1, 1] (one input): h1 = h2 = relu(x), then
#   z3 = h1 - h2 - 1/4 = -1/4 < 0 everywhere: dead
#   z4 = h2 - h1 + 1/4 = +1/4 > 0 everywhere: active
# Neither interval (z3 in [-1.25, 0.75]), DeepPoly (z3 <= (x+1)/2 - 1/4 <= 0.75) nor the triangle LP
# (h1 <= (x+1)/2, h2 >= max(0, x): z3 <= 1/4 at x = 0) proves them; only the MILP does.

def net_s2():
    net = tiny_net([([[1.0], [1.0]], [0, 0]), ([[1, -1], [-1, 1]], [-0.25, 0.25]), ([[1, 1]], [0])])
    return net, Box(np.array([-1.0]), np.array([1.0]))


@pytest.mark.parametrize("method", ["interval", "deeppoly", "lp", "milp"])
def test_s1_phases(method):
    net, box = net_s1()
    res = prove_stability(net, box, StabilityOptions(method=method, samples=200))
    ph = phases(res)
    assert ph[(1, 0)] == ("active", "interval")
    assert ph[(1, 1)] == ("dead", "interval")
    assert ph[(1, 2)] == ("unstable", "samples")
    assert ph[(1, 3)] == ("linear", "none")
    assert res.count("dead") == res.count("active") == res.count("unstable") == 1
    assert res.proved_by() == {"interval": 2}
    dead, active = res.phase_masks(net)
    np.testing.assert_array_equal(dead[0], [False, True, False, False])
    np.testing.assert_array_equal(active[0], [True, False, False, False])
    assert res.stage_counts["interval"] == res.stage_counts.get("deeppoly", 2) == 2
    assert ("deeppoly" in res.stage_counts) == (method != "interval")   # --method interval runs no DeepPoly
    assert res.neurons[0].to_json() == {"layer": 1, "index": 0, "phase": "active", "method": "interval",
                                        "seconds": res.neurons[0].to_json()["seconds"]}
    assert res.witnesses.shape[1] == 2


def test_s2_only_milp_proves():
    net, box = net_s2()
    for method in ("interval", "deeppoly", "lp"):
        ph = phases(prove_stability(net, box, StabilityOptions(method=method, samples=500)))
        assert ph[(1, 0)] == ph[(1, 1)] == ("unstable", "samples")
        assert ph[(2, 0)] == ph[(2, 1)] == ("unknown", "none"), method
    res = prove_stability(net, box, StabilityOptions(method="milp", samples=500, split_boxes=0, bab=False))
    ph = phases(res)
    assert ph[(2, 0)] == ("dead", "milp")
    assert ph[(2, 1)] == ("active", "milp")
    assert res.queries["milp"] == 2 and res.queries["milp_unknown"] == 0
    assert res.bounds.hi[1][0] <= 0 and res.bounds.lo[1][1] >= 0
    assert res.stage_counts["milp"] == 2 and res.stage_counts["lp"] == 0
    # branch and bound on the ReLU phases (the default) proves the same two, with no MILP
    res = prove_stability(net, box, StabilityOptions(method="milp", samples=500, split_boxes=0))
    ph = phases(res)
    assert ph[(2, 0)] == ("dead", "bab") and ph[(2, 1)] == ("active", "bab")
    assert res.queries["milp"] == 0 and res.queries["bab"]["proved"] == 2
    assert res.bounds.hi[1][0] <= 0 and res.bounds.lo[1][1] >= 0
    assert res.stage_counts["milp"] == 2 and res.stage_counts["lp"] == 0


def always_unknown(self, c, offset, threshold, *, time_limit, margin, stop=None):
    return Decision("unknown", None, None, 0.0, Status.TIME_LIMIT)


def test_solver_timeout_leaves_unknown(monkeypatch):
    """A decision that hits its time limit proves nothing: the neurons stay unknown, never dead/active."""
    monkeypatch.setattr(HighsBackend, "decide", always_unknown)
    net, box = net_s2()
    res = prove_stability(net, box, StabilityOptions(method="milp", samples=500, split_boxes=0, bab=False))
    ph = phases(res)
    assert ph[(2, 0)] == ph[(2, 1)] == ("unknown", "none")
    assert res.queries["milp"] == res.queries["milp_unknown"] == 2
    assert res.bounds.hi[1][0] > 0 and res.bounds.lo[1][1] < 0   # the bounds were not touched


def test_lp_timeout_is_not_a_bound(monkeypatch):
    """An LP that stops at its time limit does not tighten anything (its bound is not proven)."""
    from equiv.solvers import SolveResult

    def timed_out(self, c, offset, *, integer, time_limit, stop=None):
        return SolveResult(Status.TIME_LIMIT, -1e9, -1e9, None, 0.0)   # a 'bound' that would be absurd

    monkeypatch.setattr(HighsBackend, "maximize", timed_out)
    monkeypatch.setattr(HighsBackend, "decide", always_unknown)
    net, box = net_s2()
    res = prove_stability(net, box, StabilityOptions(method="milp", samples=500, split_boxes=0, bab=False))
    assert phases(res)[(2, 0)] == ("unknown", "none")
    assert res.bounds.hi[1][0] > 0 and res.bounds.lo[1][0] < 0


def test_real_time_limit_is_sound():
    """A real, tiny time limit (1e-4 s) on MILPs that need branching: timed-out neurons are unknown, and
    everything that is declared agrees with the run without a limit and with sampling."""
    net, box = random_problem(0, 5, [12, 12, 12], 2, linear_channels=False)
    # (MILPs only: branch and bound first decides these nets without any MILP)
    full = prove_stability(net, box, StabilityOptions(method="milp", samples=100, split_boxes=0, bab=False))
    assert full.count("unknown") == 0
    timed = prove_stability(net, box, StabilityOptions(method="milp", samples=100, time_limit=1e-4, split_boxes=0,
                                                       bab=False))
    if timed.queries["milp_unknown"] == 0:
        pytest.skip("HiGHS answered every query within 1e-4 s; the monkeypatched test covers this case")
    assert timed.count("unknown") >= 1
    f, t = phases(full), phases(timed)
    for key, (phase, _) in t.items():
        if phase in ("dead", "active"):
            assert f[key][0] == phase, key
        elif phase == "unknown":
            assert f[key][0] in ("dead", "active", "unstable")
    assert_not_contradicted(net, box, timed)
    assert_not_contradicted(net, box, full)


def test_options_and_dimension_errors():
    with pytest.raises(ValueError, match="method"):
        StabilityOptions(method="magic")
    net, _ = net_s1()
    with pytest.raises(RegionError):
        prove_stability(net, Box(np.zeros(3), np.ones(3)), StabilityOptions(method="interval"))


# ---- small random nets: every MILP verdict checked against brute force -----------------------------

@settings(max_examples=15, deadline=None)
@given(small_problems(max_layers=2, max_width=4))
def test_random_nets_milp_phases_are_exact(problem):
    """Without time pressure the MILP decides every neuron, and each verdict matches an exhaustive
    enumeration of activation patterns."""
    net, box = problem
    res = prove_stability(net, box, StabilityOptions(method="milp", samples=300))
    assert res.count("unknown") == 0
    for p in res.neurons:
        if p.phase == "linear":
            assert not net.masks[p.layer - 1][p.index]
            continue
        k, i = p.layer - 1, p.index
        e = np.eye(net.dense[k].n_out)[i]
        hi, lo = exact_max(net, box, k, e, 0.0), -exact_max(net, box, k, -e, 0.0)
        if p.phase == "dead":
            assert hi <= MARGIN
        elif p.phase == "active":
            assert lo >= -MARGIN
        else:
            assert p.phase == "unstable"
            assert hi > 0 and lo < 0
    assert_not_contradicted(net, box, res, n=3000)


# ---- ACAS Xu: reference figures and sampled validation -----------------------------------------------

@needs_bench
def test_acas_1_1_prop3_lp(acas_1_1, prop3_box):
    res = prove_stability(acas_1_1, prop3_box, StabilityOptions(method="lp"))
    assert res.count("dead") == 140 and res.count("active") == 66
    assert res.count("unstable") + res.count("unknown") == 300 - 206
    assert res.bounds.counts(acas_1_1.masks) == {"dead": 140, "active": 66, "stable": 206, "unstable": 94}
    assert res.stage_counts["interval"] == 80 and res.stage_counts["deeppoly"] == 190
    assert res.stage_counts["lp"] == 206
    assert sum(res.proved_by().values()) == 206 and res.proved_by()["lp"] > 0
    assert res.queries["milp"] == 0
    assert_not_contradicted(acas_1_1, prop3_box, res, n=20000)


@needs_bench
def test_acas_1_1_prop4_lp_sound(acas_1_1, prop4_box):
    res = prove_stability(acas_1_1, prop4_box, StabilityOptions(method="lp"))
    assert res.count("dead") + res.count("active") >= res.stage_counts["deeppoly"]
    assert_not_contradicted(acas_1_1, prop4_box, res, n=20000)


def test_milp_budget_spent_leaves_neurons_unknown_with_a_note():
    """With no MILP budget left, decisions (branch and bound and MILP) are skipped: neurons stay unknown (kept),
    and the report says why."""
    from conftest import random_problem
    for seed in range(40):
        net, box = random_problem(seed, 3, [8, 8, 8], 2, linear_channels=False)
        full = prove_stability(net, box, StabilityOptions(method="milp", split_boxes=0, samples=50))
        asked = lambda r: r.queries["milp"] + r.queries.get("bab", {}).get("tried", 0)  # noqa: E731
        if asked(full) == 0:
            continue
        cut = prove_stability(net, box, StabilityOptions(method="milp", split_boxes=0, samples=50, milp_budget=0.0))
        assert asked(cut) == 0 and cut.queries.get("milp_skipped", 0) > 0
        assert any("budget" in n for n in cut.notes)
        assert cut.count("unknown") >= 1
        # nothing is claimed that the full run did not also prove
        for a, b in zip(cut.neurons, full.neurons):
            if a.phase in ("dead", "active"):
                assert b.phase == a.phase
        return
    pytest.fail("no random net needed a solver decision")


def test_lp_stage_follows_the_solver_budget():
    """--method lp with the budget spent before its first layer: no LP is solved, the skipped bounds are counted
    and noted, the neurons they would have decided stay unknown, and nothing is claimed that the full run did
    not also prove; with DagAdmm (backend admm) the same."""
    from conftest import random_problem
    for seed in range(40):
        net, box = random_problem(seed, 3, [8, 8, 8], 2, linear_channels=False)
        full = prove_stability(net, box, StabilityOptions(method="lp", split_boxes=0, samples=50))
        if full.queries["lp"] == 0:
            continue
        for backend in ("highs", "admm"):
            cut = prove_stability(net, box, StabilityOptions(method="lp", split_boxes=0, samples=50, milp_budget=0.0,
                                                             backend=backend))
            assert cut.queries["lp"] == 0 and cut.queries["lp_skipped"] > 0
            assert any("LP bounds not computed" in n for n in cut.notes)
            for a, b in zip(cut.neurons, full.neurons):
                if a.phase in ("dead", "active"):
                    assert b.phase == a.phase
        return
    pytest.fail("no random net needed an LP")


def test_a_first_layer_range_ending_exactly_at_zero_is_decided():
    """z0 = -x0 - x1/2 has exact maximum 0 on [0, 1]^2 and z1 = x0 + x1/2 exact minimum 0: the float bounds'
    rounding margins (+-1e-9) kept both unknown (a hunt's find).  The first layer's range is now recomputed
    in rational arithmetic where it straddles 0 by less than the margins; a range ending just above 0 in the
    floats' exact values (0.1 x0 + 0.2 x1 - 0.3 reaches 2^-55) stays undecided."""
    box = Box(np.zeros(2), np.ones(2))
    net = tiny_net([([[-1.0, -0.5], [1.0, 0.5], [0.1, 0.2]], [0.0, 0.0, -0.3]), ([[1.0, 1.0, 1.0]], [0.0])])
    res = prove_stability(net, box, StabilityOptions(method="milp"))
    phases = [p.phase for p in res.neurons]
    assert phases[:2] == ["dead", "active"] and [p.method for p in res.neurons[:2]] == ["interval", "interval"]
    assert phases[2] in ("unstable", "unknown")
    assert res.bounds.hi[0][0] == 0.0 and res.bounds.lo[0][1] == 0.0 and res.bounds.hi[0][2] > 0


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_exact_first_layer_decisions_hold_at_every_vertex(data):
    """Random dyadic and decimal rows, many with an extreme exactly 0 on the box: a row called dead has
    w.x + b <= 0 at every vertex of the box, one called active >= 0, both in exact rational arithmetic."""
    from fractions import Fraction
    from itertools import product
    from equiv.bounds.exact import exact_zero_sides
    n, m = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 6))
    vals = st.sampled_from([0.0, 0.5, -0.5, 1.0, -1.0, 0.1, -0.1, 0.2, 0.3, -0.3, 0.25, 1e-17])
    W = np.array([[data.draw(vals) for _ in range(n)] for _ in range(m)])
    lo = np.array([data.draw(st.sampled_from([0.0, -0.5, 0.1, 0.0])) for _ in range(n)])
    hi = lo + np.array([data.draw(st.sampled_from([0.0, 0.5, 1.0, 0.2])) for _ in range(n)])
    b = np.array([data.draw(vals) for _ in range(m)])
    ext = [[sum(Fraction(float(W[i, j])) * Fraction(float(v[j])) for j in range(n)) + Fraction(float(b[i]))
            for v in product(*zip(lo, hi))] for i in range(m)]
    zlo = np.array([float(min(e)) for e in ext]) - 1e-9            # float bounds widened as the engine does
    zhi = np.array([float(max(e)) for e in ext]) + 1e-9
    dead, active = exact_zero_sides(W, b, lo, hi, zlo, zhi)
    for i in range(m):
        if dead[i]:
            assert max(ext[i]) <= 0
        if active[i]:
            assert min(ext[i]) >= 0
        if max(ext[i]) == 0 and min(ext[i]) < 0:
            assert dead[i]                 # an exact zero maximum is always found


def test_a_graph_dense_layer_on_the_input_is_decided_exactly(tmp_path, capsys):
    """The same on the graph pipeline (a skip connection makes it a DAG): ReLUs on a dense layer of the input whose
    range ends at exactly 0 are proved dead / active, `bounds` shows the 0, and the written model is exact."""
    import json
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from equiv.apps.graph_simplify import graph_phases, takes_chain_pipeline
    from equiv.artifacts.validate import OnnxRunner
    from equiv.cli import main
    from equiv.ir import graph_from_onnx
    arrays = {"W": np.array([[-1.0, -0.5], [1.0, 0.5]]), "b": np.zeros(2), "W2": np.array([[1.0, 1.0]]),
              "S": np.array([[2.0, -1.0]])}
    N = helper.make_node
    nodes = [N("Gemm", ["x", "W", "b"], ["h"], transB=1), N("Relu", ["h"], ["r"]),
             N("Gemm", ["r", "W2"], ["y1"], transB=1), N("Gemm", ["x", "S"], ["y2"], transB=1),
             N("Add", ["y1", "y2"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])],
                          [numpy_helper.from_array(a.astype(np.float32), k) for k, a in arrays.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    path, out = tmp_path / "m.onnx", tmp_path / "s.onnx"
    onnx.save(m, path)
    graph = graph_from_onnx(m)
    assert not takes_chain_pipeline(graph, path)
    box = Box(np.zeros(2), np.ones(2))
    ph = graph_phases(graph, box)
    (r,) = graph.relus
    assert ph.dead[r].reshape(-1).tolist() == [True, False] and ph.active[r].reshape(-1).tolist() == [False, True]
    assert main(["bounds", str(path), "--box", "0:1,0:1", "--json"]) == 0
    layer = json.loads(capsys.readouterr().out)["layers"][0]
    assert layer["hi"][0] == 0.0 and layer["lo"][1] == 0.0 and layer["dead"] == layer["active"] == 1
    assert main(["simplify", str(path), "--box", "0:1,0:1", "-o", str(out), "--no-progress"]) == 0
    x = np.random.default_rng(0).uniform(0, 1, size=(2000, 2))
    assert np.abs(OnnxRunner(m)(x) - OnnxRunner(str(out))(x)).max() <= 1e-6


def test_a_proof_refuted_by_real_points_keeps_the_neuron_and_says_bug():
    """Defence in depth (a hunt, stop 47, found LP bounds that called crossing neurons stable): a neuron whose
    bound says stable while real points of the box give it both signs (beyond float64 noise) is kept as
    unstable, with a BUG note, whatever proved it.  Simulated with wrong `known` bounds."""
    from equiv.bounds import Bounds
    net = tiny_net([([[1.0], [1.0]], [0.0, 0.5]), ([[1.0, 1.0]], [0.0])])
    box = Box(np.array([-1.0]), np.array([1.0]))        # z1 = x and z2 = x + 0.5 both cross 0
    wrong = Bounds([np.array([-1.0, -0.5]), np.array([-10.0])], [np.array([-0.1, 1.5]), np.array([10.0])])
    res = prove_stability(net, box, StabilityOptions(method="interval", seed=0), known=wrong)
    phases = {(n.layer, n.index): (n.phase, n.method) for n in res.neurons}
    assert phases[(1, 0)] == ("unstable", "samples") and phases[(1, 1)] == ("unstable", "samples")
    assert any(n.startswith("BUG: 1 neurons proved stable took both signs") and "1:0 (bounds [-1, -0.1])" in n
               for n in res.notes)
    assert not res.phase_masks(net)[0][0].any()
    # a decision at exactly 0 (the exact first layer) is not refuted by float64 noise at its corner
    net = tiny_net([([[-1.0, -1.0]], [0.0]), ([[1.0]], [0.0])])
    box = Box(np.zeros(2), np.array([0.3, 0.7]))
    res = prove_stability(net, box, StabilityOptions(method="interval", seed=0))
    assert [(n.phase) for n in res.neurons] == ["dead"] and not res.notes


def _chain_model(pre, W1, b1, W2, b2):
    """X -> pre (Sub/Mul/Div by constants) -> Gemm -> Relu -> Gemm, float32 constants."""
    from onnx import TensorProto, helper, numpy_helper
    nodes, inits, cur = [], [], "X"
    for k, (op, v) in enumerate(pre):
        inits.append(numpy_helper.from_array(np.asarray(v, np.float32).reshape(1, -1), f"p{k}"))
        nodes.append(helper.make_node(op, [cur, f"p{k}"], [f"q{k}"]))
        cur = f"q{k}"
    for k, (W, b) in enumerate(((W1, b1), (W2, b2))):
        inits += [numpy_helper.from_array(np.asarray(W, np.float32), f"W{k}"),
                  numpy_helper.from_array(np.asarray(b, np.float32), f"B{k}")]
        out = "Y" if k else "z"
        nodes.append(helper.make_node("Gemm", [cur, f"W{k}", f"B{k}"], [out], transB=1))
        if not k:
            nodes.append(helper.make_node("Relu", ["z"], ["h"]))
            cur = "h"
    g = helper.make_graph(nodes, "c", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, np.shape(W1)[1]])],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, np.shape(W2)[0]])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def test_exact_first_layer_is_not_used_on_weights_folded_with_rounding():
    """Y = 1e-6 relu(1e9 (X - 1e9) + 60) on X in [1e9 - 128, 1e9]: z = 60 at X = 1e9.  The importer folds the
    Sub into the bias in float64 (60 - 1e18 rounds to -1e18), and the rational first-layer stage then "proved"
    max z = 0 on the folded numbers: dead (a hunt, stop 47).  Folded layers are now marked inexact and never
    decided in rationals; a plain Gemm on the input still is."""
    from equiv.ir.chain_io import network_from_onnx
    net = network_from_onnx(_chain_model([("Sub", [1e9])], [[1e9]], [60.0], [[1e-6]], [0.0]))
    assert net.meta["first_layer_exact"] is False
    box = Box(np.array([1e9 - 128]), np.array([1e9]))
    res = prove_stability(net, box, StabilityOptions(method="milp", seed=0, time_limit=10))
    assert res.neurons[0].phase not in ("dead", "active")
    # the same range ending at 0 without a fold: decided exactly (dead)
    net = network_from_onnx(_chain_model([], [[-1.0, -1.0]], [0.0], [[1.0]], [0.0]))
    assert net.meta["first_layer_exact"] is True
    res = prove_stability(net, Box(np.zeros(2), np.array([0.3, 0.7])), StabilityOptions(method="interval", seed=0))
    assert res.neurons[0].phase == "dead"
    # what rounds and what does not
    # what may round (conservatively: a constant scaling or a non-zero offset before the Gemm does)
    cases = [([], True), ([("Sub", [0.0])], True), ([("Sub", [0.5])], False), ([("Mul", [3.0])], False),
             ([("Div", [0.3])], False)]
    for pre, exact in cases:
        m = _chain_model(pre, [[1.0, 2.0]], [0.5], [[1.0]], [0.0])
        assert network_from_onnx(m).meta["first_layer_exact"] is exact, pre


def test_a_graph_gemm_scaled_with_rounding_is_not_decided_in_rationals():
    """The graph reading of a Gemm with alpha or beta not a power of two holds alpha x B and beta x C, rounded:
    its node is listed in meta['rounded'] and `exact_first_dense` leaves it to the float bounds."""
    from onnx import helper
    from equiv.ir import graph_from_onnx
    for alpha, beta, rounded in ((1.0, 1.0, False), (0.5, 2.0, False), (0.3, 1.0, True), (1.0, 0.1, True)):
        m = _chain_model([], [[1.0, 2.0]], [0.5], [[1.0]], [0.0])
        gemm = m.graph.node[0]
        gemm.attribute.extend([helper.make_attribute("alpha", alpha), helper.make_attribute("beta", beta)])
        g = graph_from_onnx(m)
        z = g.args(g.relus[0])[0]
        assert (z in g.meta["rounded"]) is rounded, (alpha, beta)
