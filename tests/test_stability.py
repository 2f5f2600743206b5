"""Neuron phase proofs: the right phase by the cheapest method, never a phase contradicted by a real
point, and a solver that gives up (time limit) leaves the neuron "unknown"."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings

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
