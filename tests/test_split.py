"""Batched DeepPoly and input splitting: the same bounds as the one-box code, exact results on hand-made
nets, sound bounds on real networks (no sampled point outside them, whatever the box budget), and
witnesses that are real points."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from conftest import (assert_contains, layer_values, needs_bench, samples_with_corners,
                      small_problems, tiny_net)
from equiv.bounds import deeppoly_bounds, interval_bounds
from equiv.bounds import split as split_mod
from equiv.bounds.batch import deeppoly_boxes
from equiv.bounds.split import split_bounds
from equiv.spec.region import Box
from equiv.prove.stability import StabilityOptions, prove_stability

TOL = 5e-8


def sub_boxes(box: Box, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n random sub-boxes of `box` (some degenerate in a coordinate)."""
    a = box.lo + rng.random((n, box.dim)) * (box.hi - box.lo)
    b = box.lo + rng.random((n, box.dim)) * (box.hi - box.lo)
    b[0] = a[0]
    return np.minimum(a, b), np.maximum(a, b)


def per_box_interval(net, lo, hi):
    ib = [interval_bounds(net, Box(lo[n], hi[n])) for n in range(lo.shape[0])]
    return ([np.stack([b.lo[k] for b in ib]) for k in range(net.depth)],
            [np.stack([b.hi[k] for b in ib]) for k in range(net.depth)])


# ---- batched DeepPoly ------------------------------------------------------------------------------

@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small_problems())
def test_batch_all_rows_equals_deeppoly(problem):
    """With every row back-substituted, box n of the batch gets exactly deeppoly_bounds(net, box n)."""
    net, box = problem
    lo, hi = sub_boxes(box, 6, np.random.default_rng(0))
    kl, kh = per_box_interval(net, lo, hi)
    los, his, _ = deeppoly_boxes(net, lo, hi, kl, kh, all_rows=True)
    for n in range(lo.shape[0]):
        ref = deeppoly_bounds(net, Box(lo[n], hi[n]))
        for k in range(net.depth):
            np.testing.assert_allclose(los[k][n], ref.lo[k], rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(his[k][n], ref.hi[k], rtol=1e-12, atol=1e-12)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small_problems())
def test_batch_sound_and_coefficients_bound(problem):
    """Default (unstable rows only): every sampled value of each box lies in that box's bounds, and the
    returned linear functions of the input bound z from above and below on the box."""
    net, box = problem
    rng = np.random.default_rng(1)
    lo, hi = sub_boxes(box, 5, rng)
    kl, kh = per_box_interval(net, lo, hi)
    los, his, coef = deeppoly_boxes(net, lo, hi, kl, kh)
    for n in range(lo.shape[0]):
        sub = Box(lo[n], hi[n])
        x = samples_with_corners(sub, 500, rng)
        vals = layer_values(net, x)
        assert_contains(type(deeppoly_bounds(net, sub))([a[n] for a in los], [a[n] for a in his]), vals)
        for k, (rows, Al, bl, Au, bu) in coef.items():
            z = vals[k][:, rows]
            upper, lower = x @ Au[n].T + bu[n], x @ Al[n].T + bl[n]
            assert np.all(z <= upper + TOL) and np.all(z >= lower - TOL), k


@needs_bench
def test_batch_on_acas_sub_boxes(acas_1_1, prop3_box):
    rng = np.random.default_rng(2)
    lo, hi = sub_boxes(prop3_box, 40, rng)
    known = deeppoly_bounds(acas_1_1, prop3_box)     # sound on every sub-box
    los, his, _ = deeppoly_boxes(acas_1_1, lo, hi, known.lo, known.hi)
    for n in range(0, 40, 7):
        sub = Box(lo[n], hi[n])
        vals = layer_values(acas_1_1, samples_with_corners(sub, 2000, rng))
        assert_contains(type(known)([a[n] for a in los], [a[n] for a in his]), vals, what=f"box {n}")
        # never looser than the known bounds it was given
        for k in range(acas_1_1.depth):
            assert np.all(los[k][n] >= known.lo[k]) and np.all(his[k][n] <= known.hi[k])


# ---- input splitting ---------------------------------------------------------------------------------
# S2 on x in [-1, 1]: h1 = h2 = relu(x), z3 = h1 - h2 - 1/4 = -1/4, z4 = h2 - h1 + 1/4 = +1/4.
# DeepPoly on the whole box gives z3 <= 0.75; on [-1, 0] both ReLUs are dead and on [0, 1] both active,
# so one bisection bounds z3 and z4 exactly: three boxes (the root and its halves).

def net_s2():
    net = tiny_net([([[1.0], [1.0]], [0, 0]), ([[1, -1], [-1, 1]], [-0.25, 0.25]), ([[1, 1]], [0])])
    return net, Box(np.array([-1.0]), np.array([1.0]))


def test_split_proves_s2_exactly():
    net, box = net_s2()
    known = deeppoly_bounds(net, box)
    assert known.hi[1][0] > 0 and known.lo[1][1] < 0
    res = split_bounds(net, box, known, [1, 1], [0, 1], [True, False])
    assert res.boxes == 3 and res.leaves_open == 0 and not res.refuted.any()
    assert res.witnesses.shape == (0, 1)
    assert -0.25 <= res.bounds.hi[1][0] <= -0.25 + TOL
    assert 0.25 - TOL <= res.bounds.lo[1][1] <= 0.25
    # the first layer is not tightened (its neurons are unstable, and the leaves' union is the box)
    np.testing.assert_array_equal(res.bounds.lo[0], known.lo[0])


def test_split_refutes_with_a_real_point():
    """Asking to prove an unstable neuron dead: a real point with z > 0 comes back, and nothing is proved."""
    net, box = net_s2()
    known = deeppoly_bounds(net, box)
    res = split_bounds(net, box, known, [0], [0], [True])      # h1 = relu(x): z1 = x takes both signs
    assert res.refuted.tolist() == [True]
    assert res.witnesses.shape[0] == 1 and np.all(box.contains(res.witnesses))
    assert net.forward(res.witnesses, return_pre=True)[1][0][0, 0] > 0
    assert res.bounds.hi[0][0] > 0


def test_split_no_candidates_and_zero_budget():
    net, box = net_s2()
    known = deeppoly_bounds(net, box)
    res = split_bounds(net, box, known, [], [], [])
    assert res.boxes == 0 and res.bounds.hi[1][0] == known.hi[1][0]
    res = split_bounds(net, box, known, [1], [0], [True], max_boxes=0)
    assert res.boxes == 0 and res.leaves_open == 1 and res.bounds.hi[1][0] == known.hi[1][0]


def test_split_point_box_stops():
    """A box with no width cannot be split: the splitter stops instead of spending its budget."""
    net, _ = net_s2()
    box = Box(np.array([0.0]), np.array([0.0]))
    res = split_bounds(net, box, deeppoly_bounds(net, box), [1], [0], [True], max_boxes=100)
    assert res.boxes == 1


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small_problems(max_layers=3, max_width=5))
def test_random_split_sound(problem):
    """Candidates = every ReLU not stable by DeepPoly, both sides asked; any budget gives sound bounds."""
    net, box = problem
    known = deeppoly_bounds(net, box)
    cand = [(k, i) for k in range(len(net.masks)) for i in np.flatnonzero(net.masks[k] & (known.lo[k] < 0)
                                                                          & (known.hi[k] > 0))]
    if not cand:
        return
    layer = [k for k, _ in cand] * 2
    index = [i for _, i in cand] * 2
    dead = [True] * len(cand) + [False] * len(cand)
    vals = layer_values(net, samples_with_corners(box, 3000, np.random.default_rng(3)))
    for budget in (1, 7, 300):
        res = split_bounds(net, box, known, layer, index, dead, max_boxes=budget, batch=4)
        assert res.boxes <= budget
        assert_contains(res.bounds, vals, what=f"split, budget {budget}")
        for k in range(net.depth):
            assert np.all(res.bounds.lo[k] >= known.lo[k]) and np.all(res.bounds.hi[k] <= known.hi[k])
        # witnesses are real points of the box showing a forbidden sign for a refuted candidate
        if res.witnesses.shape[0]:
            assert np.all(box.contains(res.witnesses))
            _, pre = net.forward(res.witnesses, return_pre=True)
            for c in np.flatnonzero(res.refuted):
                z = pre[layer[c]][:, index[c]]
                assert ((z > 0) if dead[c] else (z < 0)).any()


@needs_bench
@pytest.mark.parametrize("budget", [40, 20000])
def test_split_acas_sound(acas_1_1, prop3_box, budget):
    """ACAS Xu 1_1 on prop_3, every ReLU not stable by DeepPoly asked dead and active: no sampled point
    lies outside the bounds, with a tiny budget (leaves left open) and a full one."""
    known = deeppoly_bounds(acas_1_1, prop3_box)
    masks = acas_1_1.masks
    cand = [(k, i) for k in range(6) for i in np.flatnonzero(masks[k] & (known.lo[k] < 0) & (known.hi[k] > 0))]
    layer = [k for k, _ in cand] * 2
    index = [i for _, i in cand] * 2
    dead = [True] * len(cand) + [False] * len(cand)
    res = split_bounds(acas_1_1, prop3_box, known, layer, index, dead, max_boxes=budget)
    vals = layer_values(acas_1_1, samples_with_corners(prop3_box, 20000, np.random.default_rng(4)))
    assert_contains(res.bounds, vals, what="split")
    stable = res.bounds.counts(masks)["stable"]
    assert stable >= 190
    if budget > 1000:
        assert stable == 233   # the MILP reference figure (README of the benchmarks)


def test_memory_cap_lowers_budget(monkeypatch):
    net, box = net_s2()
    known = deeppoly_bounds(net, box)
    monkeypatch.setattr(split_mod, "MEMORY_BYTES", 16 * 4 * 2)   # room for two boxes of 2 tracked + 1 dim
    res = split_bounds(net, box, known, [1], [0], [True], max_boxes=100, batch=1)
    assert res.boxes <= 2
    assert res.bounds.hi[1][0] >= -0.25


# ---- the split stage inside prove_stability ------------------------------------------------------------

def test_stability_split_stage_on_s2():
    net, box = net_s2()
    res = prove_stability(net, box, StabilityOptions(method="milp", samples=500))
    ph = {(p.layer, p.index): (p.phase, p.method) for p in res.neurons}
    assert ph[(2, 0)] == ("dead", "split") and ph[(2, 1)] == ("active", "split")
    assert res.queries["split_boxes"] == 3 and res.queries["milp"] == 0
    assert res.stage_counts["split"] == 2
    # no splitting below method milp, with a zero budget, or with too many varying inputs
    for opt in (StabilityOptions(method="lp", samples=500), StabilityOptions(method="milp", samples=500, split_boxes=0),
                StabilityOptions(method="milp", samples=500, split_max_inputs=0)):
        r = prove_stability(net, box, opt)
        assert "split" not in r.stage_counts and "split" not in r.proved_by()


@needs_bench
@pytest.mark.parametrize("prop", ["prop_3", "prop_4"])
def test_stability_acas_milp_fast_and_sound(acas_1_1, prop3_box, prop4_box, prop):
    """The MILP method on ACAS Xu 1_1: prop_3 reaches the reference 233 (158 dead, 75 active) with input
    splitting alone; no sampled point contradicts a proof; at least everything the LP stage proves."""
    from test_stability import assert_not_contradicted

    box = prop3_box if prop == "prop_3" else prop4_box
    res = prove_stability(acas_1_1, box, StabilityOptions(method="milp"))
    lp = prove_stability(acas_1_1, box, StabilityOptions(method="lp"))
    assert res.count("unknown") == 0
    if prop == "prop_3":
        assert (res.count("dead"), res.count("active")) == (158, 75)
        assert res.proved_by()["split"] > 0 and res.queries["milp"] == 0
    d, a = res.phase_masks(acas_1_1)
    ld, la = lp.phase_masks(acas_1_1)
    for k in range(6):
        assert np.all(d[k] >= ld[k]) and np.all(a[k] >= la[k])
    assert_not_contradicted(acas_1_1, box, res, n=20000)
