"""Interval and DeepPoly bounds: exact values on hand-made nets, soundness on real and random nets.

Every computed bound is widened outward by ROUND_ABS + ROUND_REL * |bound| (1e-9 each) per layer, so
the hand-computed values are checked as  expected - TOL <= lo <= expected  and  expected <= hi <= expected + TOL
(the bound may only move outward, and only by the safety margin).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from conftest import (ACAS, acas_path, assert_contains, layer_values, load_cached, needs_bench, samples_with_corners,
                      small_problems, tiny_net)
from equiv.bounds import Bounds, deeppoly_bounds, interval_bounds, outward
from equiv.bounds.common import ROUND_ABS, ROUND_REL
from equiv.bounds.deeppoly import backsubstitute, relaxation
from equiv.bounds.interval import relu_image
from equiv.errors import RegionError
from equiv.spec.region import Box, load_region
from equiv.prove.stability import StabilityOptions, prove_stability

TOL = 5e-8   # the widening compounds over layers (a few 1e-9 each)


def assert_outward(bounds: Bounds, lo_expected: list, hi_expected: list):
    """lo/hi equal the hand-computed values, widened outward by at most TOL."""
    assert len(bounds.lo) == len(lo_expected)
    for k, (lo, hi, le, he) in enumerate(zip(bounds.lo, bounds.hi, lo_expected, hi_expected)):
        le, he = np.asarray(le, float), np.asarray(he, float)
        np.testing.assert_allclose(lo, le, rtol=0, atol=TOL, err_msg=f"lower bounds of layer {k + 1}")
        np.testing.assert_allclose(hi, he, rtol=0, atol=TOL, err_msg=f"upper bounds of layer {k + 1}")
        assert np.all(lo <= le) and np.all(hi >= he), f"layer {k + 1}: bounds are not rounded outward"


# ---- net A: one hidden layer -----------------------------------------------------------------------
# x1 in [-1, 1], x2 in [0, 2]
#   z1 = x1 + x2              in [-1, 3]       unstable
#   z2 = x1 - x2 + 0.5        in [-2.5, 1.5]   unstable
#   z3 = 2 x1 + 0.5 x2 - 3.5  in [-5.5, -0.5]  dead
#   z4 = x2 + 1               in [1, 3]        active
#   y  = h1 - h2 + h3 + h4
# interval: h1 in [0, 3], h2 in [0, 1.5], h3 = 0, h4 in [1, 3]  ->  y in [0 - 1.5 + 0 + 1, 3 + 3] = [-0.5, 6]
# back-substitution alone:
#   relu(z1) <= 3/4 (z1 + 1), lower line z1 (since 3 > 1);  relu(z2) <= 3/8 (z2 + 2.5), lower line 0 (1.5 < 2.5)
#   y <= 3/4 (x1 + x2 + 1) - 0 + (x2 + 1) = 0.75 x1 + 1.75 x2 + 1.75          max 0.75 + 3.5 + 1.75 = 6
#   y >= (x1 + x2) - 3/8 (x1 - x2 + 3) + (x2 + 1) = 0.625 x1 + 2.375 x2 - 0.125   min -0.625 - 0.125 = -0.75
# so back-substitution gives [-0.75, 6] and deeppoly_bounds, which intersects with intervals, [-0.5, 6].

def net_a():
    net = tiny_net([([[1, 1], [1, -1], [2, 0.5], [0, 1]], [0, 0.5, -3.5, 1]), ([[1, -1, 1, 1]], [0])])
    return net, Box(np.array([-1.0, 0.0]), np.array([1.0, 2.0]))


def test_net_a_interval():
    net, box = net_a()
    b = interval_bounds(net, box)
    assert_outward(b, [[-1, -2.5, -5.5, 1], [-0.5]], [[3, 1.5, -0.5, 3], [6]])
    assert b.counts(net.masks) == {"dead": 1, "active": 1, "stable": 2, "unstable": 2}


def test_net_a_deeppoly():
    net, box = net_a()
    ib = interval_bounds(net, box)
    lo, hi = backsubstitute(net, box, ib, 1)
    np.testing.assert_allclose([lo[0], hi[0]], [-0.75, 6.0], rtol=0, atol=TOL)
    assert lo[0] <= -0.75 and hi[0] >= 6.0
    dp = deeppoly_bounds(net, box)
    assert_outward(dp, [[-1, -2.5, -5.5, 1], [-0.5]], [[3, 1.5, -0.5, 3], [6]])


# ---- net B: two hidden layers and a linear channel ---------------------------------------------------
# x in [-1, 1]
#   z1 = x, z2 = -x (ReLUs), z3 = x - 0.5 (a linear channel: h3 = z3, NOT clipped)
#   z4 = h1 + h2 - 1.5        (= |x| - 1.5, truly in [-1.5, -0.5])
#   z5 = -h1 + h3 + 2.5       (= x + 2 - relu(x), truly in [1, 2])
#   y  = relu(z4) + relu(z5)
# interval: h1, h2 in [0, 1], h3 in [-1.5, 0.5]
#   z4 in [-1.5, 0.5], z5 in [-1 - 1.5 + 2.5, 0 + 0.5 + 2.5] = [0, 3]; y in [0, 0.5 + 3] = [0, 3.5]
# DeepPoly: relu(z1) <= (x + 1)/2, relu(z2) <= (1 - x)/2, lower lines 0 (hi = -lo)
#   z4 <= (x + 1)/2 + (1 - x)/2 - 1.5 = -0.5 (dead);  z4 >= 0 + 0 - 1.5 = -1.5
#   z5 <= -0 + (x - 0.5) + 2.5 <= 3;  z5 >= -(x + 1)/2 + x - 0.5 + 2.5 = x/2 + 1.5 >= 1 (active)
#   y = 0 + z5 in [1, 3]
# With a ReLU instead of the linear channel, h3 in [0, 0.5] and z5's interval would be [1.5, 3]:
# the tests pin the identity treatment of mask=False.

def net_b():
    net = tiny_net([([[1], [-1], [1]], [0, 0, -0.5]), ([[1, 1, 0], [-1, 0, 1]], [-1.5, 2.5]), ([[1, 1]], [0])],
                   [np.array([True, True, False]), np.array([True, True])])
    return net, Box(np.array([-1.0]), np.array([1.0]))


def test_net_b_interval():
    net, box = net_b()
    b = interval_bounds(net, box)
    assert_outward(b, [[-1, -1, -1.5], [-1.5, 0], [0]], [[1, 1, 0.5], [0.5, 3], [3.5]])
    # the linear channel is not a ReLU and is never counted
    assert b.counts(net.masks) == {"dead": 0, "active": 0, "stable": 0, "unstable": 4}
    relu_net = net.with_layers(net.dense, [np.ones(3, bool), np.ones(2, bool)])
    np.testing.assert_allclose(interval_bounds(relu_net, box).lo[1], [-1.5, 1.5], atol=TOL)


def test_net_b_deeppoly():
    net, box = net_b()
    b = deeppoly_bounds(net, box)
    assert_outward(b, [[-1, -1, -1.5], [-1.5, 1], [1]], [[1, 1, 0.5], [-0.5, 3], [3]])
    assert b.counts(net.masks) == {"dead": 1, "active": 1, "stable": 2, "unstable": 2}


def test_backsubstitute_with_objective_matrix():
    """C @ z_k is bounded as one linear function: h1 cancels in z4 + z5 = h2 + h3 + 1.

    upper: (1 - x)/2 + x - 0.5 + 1 = x/2 + 1 <= 1.5;  lower: 0 + x - 0.5 + 1 >= -0.5
    (adding the separate bounds of z4 and z5 would give [-0.5, 2.5]).
    """
    net, box = net_b()
    dp = deeppoly_bounds(net, box)
    lo, hi = backsubstitute(net, box, dp, 1, C=np.array([[1.0, 1.0], [2.0, 0.0]]))
    np.testing.assert_allclose(lo, [-0.5, -3.0], rtol=0, atol=TOL)
    np.testing.assert_allclose(hi, [1.5, -1.0], rtol=0, atol=TOL)


def test_relaxation_lines():
    lo = np.array([-1.0, -2.5, -3.0, 1.0, -1.0, -1.0])
    hi = np.array([3.0, 1.5, -0.5, 2.0, 1.0, 1.0])
    mask = np.array([True, True, True, True, True, False])
    a_l, a_u, t_u = relaxation(lo, hi, mask)
    # unstable (chord u/(u-l), intercept -l u/(u-l); lower slope 1 iff u > -l), dead, active, tie, linear
    np.testing.assert_allclose(a_u, [0.75, 0.375, 0.0, 1.0, 0.5, 1.0])
    np.testing.assert_allclose(t_u, [0.75, 0.9375, 0.0, 0.0, 0.5, 0.0])
    np.testing.assert_allclose(a_l, [1.0, 0.0, 0.0, 1.0, 0.0, 1.0])


def test_relu_image_and_outward():
    lo, hi = relu_image(np.array([-1.0, -2.0, 0.5]), np.array([2.0, -1.0, 1.0]), np.array([True, True, False]))
    np.testing.assert_array_equal(lo, [0.0, 0.0, 0.5])
    np.testing.assert_array_equal(hi, [2.0, 0.0, 1.0])
    lo, hi = outward(np.array([0.0, -100.0]), np.array([0.0, 100.0]))
    np.testing.assert_allclose(lo, [-ROUND_ABS, -100 - ROUND_ABS - 100 * ROUND_REL], rtol=0, atol=1e-15)
    np.testing.assert_allclose(hi, [ROUND_ABS, 100 + ROUND_ABS + 100 * ROUND_REL], rtol=0, atol=1e-15)


def test_bounds_container():
    a = Bounds([np.array([-1.0, 0.5]), np.array([-3.0])], [np.array([2.0, 1.0]), np.array([3.0])])
    b = Bounds([np.array([-2.0, 0.7]), np.array([-1.0])], [np.array([1.0, 3.0]), np.array([4.0])])
    c = a.intersect(b)
    np.testing.assert_array_equal(c.lo[0], [-1.0, 0.7])
    np.testing.assert_array_equal(c.hi[0], [1.0, 1.0])
    np.testing.assert_array_equal(c.lo[1], [-1.0])
    d = a.copy()
    d.lo[0][0] = 99
    assert a.lo[0][0] == -1.0
    assert len(a.hidden) == 1
    assert a.counts([np.array([True, True])]) == {"dead": 0, "active": 1, "stable": 1, "unstable": 1}
    assert a.counts([np.array([True, False])]) == {"dead": 0, "active": 0, "stable": 0, "unstable": 1}
    assert a.to_json()[1] == {"layer": 2, "lo": [-3.0], "hi": [3.0]}


def test_dead_at_zero_counts_dead():
    """hi == 0 exactly is dead, lo == 0 exactly is active."""
    b = Bounds([np.array([-1.0, 0.0]), np.zeros(1)], [np.array([0.0, 2.0]), np.zeros(1)])
    assert b.counts([np.ones(2, bool)]) == {"dead": 1, "active": 1, "stable": 2, "unstable": 0}


def test_known_bounds_are_intersected():
    net, box = net_a()
    known = interval_bounds(net, box)
    known.hi[0][0] = 2.0     # pretend some other method proved z1 <= 2
    dp = deeppoly_bounds(net, box, known=known)
    assert dp.hi[0][0] == 2.0
    # with h1 in [0, 2]: y <= 2 + 0 + 3 = 5 (interval part) -- the tighter known bound propagates
    assert dp.hi[1][0] <= 5.0 + TOL


def test_wrong_dimension_is_refused():
    net, _ = net_a()
    with pytest.raises(RegionError):
        interval_bounds(net, Box(np.zeros(3), np.ones(3)))
    with pytest.raises(RegionError):
        deeppoly_bounds(net, Box(np.zeros(1), np.ones(1)))


def test_degenerate_box_is_exact():
    """On a single point, both methods give the network's values (up to the widening)."""
    net, _ = net_b()
    for x in (-0.7, 0.0, 0.3):
        box = Box(np.array([x]), np.array([x]))
        vals = layer_values(net, np.array([[x]]))
        for b in (interval_bounds(net, box), deeppoly_bounds(net, box)):
            for z, lo, hi in zip(vals, b.lo, b.hi):
                np.testing.assert_allclose(lo, z[0], atol=TOL)
                np.testing.assert_allclose(hi, z[0], atol=TOL)


# ---- random small networks (hypothesis) ----------------------------------------------------------

@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small_problems())
def test_random_nets_sound(problem):
    net, box = problem
    rng = np.random.default_rng(0)
    vals = layer_values(net, samples_with_corners(box, 2000, rng))
    ib = interval_bounds(net, box)
    dp = deeppoly_bounds(net, box)
    assert_contains(ib, vals, what="interval")
    assert_contains(dp, vals, what="deeppoly")
    # deeppoly_bounds intersects with intervals layer by layer, so its first layer equals the interval one
    np.testing.assert_array_equal(dp.lo[0], ib.lo[0])
    np.testing.assert_array_equal(dp.hi[0], ib.hi[0])
    # and stable-by-interval neurons stay stable
    assert dp.counts(net.masks)["stable"] >= ib.counts(net.masks)["stable"]


@settings(max_examples=30, deadline=None)
@given(small_problems())
def test_interval_is_inclusion_monotone(problem):
    """Bounds on a half of the box lie within the bounds on the whole box."""
    net, box = problem
    whole = interval_bounds(net, box)
    for half in box.bisect(int(np.argmax(box.hi - box.lo))):
        part = interval_bounds(net, half)
        for k in range(len(whole.lo)):
            assert np.all(part.lo[k] >= whole.lo[k] - TOL) and np.all(part.hi[k] <= whole.hi[k] + TOL)


# ---- real networks: reference figures and sampled soundness -----------------------------------------

@needs_bench
def test_acas_1_1_prop3_reference_counts(acas_1_1, prop3_box):
    assert interval_bounds(acas_1_1, prop3_box).counts(acas_1_1.masks) == \
        {"dead": 48, "active": 32, "stable": 80, "unstable": 220}
    assert deeppoly_bounds(acas_1_1, prop3_box).counts(acas_1_1.masks) == \
        {"dead": 129, "active": 61, "stable": 190, "unstable": 110}


@needs_bench
def test_mnist_256x2_reference_counts(mnist_256x2, mnist_box):
    ib = interval_bounds(mnist_256x2, mnist_box).counts(mnist_256x2.masks)
    assert (ib["dead"], ib["active"]) == (402, 11)
    dp = deeppoly_bounds(mnist_256x2, mnist_box).counts(mnist_256x2.masks)
    assert dp["stable"] >= 413
    assert dp["dead"] >= 402 and dp["active"] >= 11


ACAS_CASES = [((1, 1), "prop_3"), ((1, 1), "prop_4"), ((2, 3), "prop_3"), ((4, 7), "prop_4"), ((5, 9), "prop_1")]


@needs_bench
@pytest.mark.parametrize("ab, prop", ACAS_CASES, ids=lambda v: f"{v[0]}_{v[1]}" if isinstance(v, tuple) else v)
def test_acas_bounds_sound_on_samples(ab, prop):
    net = load_cached(acas_path(*ab))
    box, _ = load_region(spec=ACAS / f"{prop}.vnnlib")
    vals = layer_values(net, samples_with_corners(box, 5000, np.random.default_rng(1)))
    ib, dp = interval_bounds(net, box), deeppoly_bounds(net, box)
    assert_contains(ib, vals, what="interval")
    assert_contains(dp, vals, what="deeppoly")
    # the DeepPoly bounds are a real improvement and not vacuous
    assert dp.counts(net.masks)["stable"] >= ib.counts(net.masks)["stable"]


@needs_bench
def test_mnist_bounds_sound_on_samples(mnist_256x2, mnist_box):
    rng = np.random.default_rng(2)
    # uniform samples plus points pushed to the faces of the box (where extremes tend to be)
    pts = np.vstack([mnist_box.sample(3000, rng),
                     np.where(rng.random((1000, mnist_box.dim)) < 0.5, mnist_box.lo, mnist_box.hi)])
    vals = layer_values(mnist_256x2, pts)
    assert_contains(interval_bounds(mnist_256x2, mnist_box), vals, what="interval")
    assert_contains(deeppoly_bounds(mnist_256x2, mnist_box), vals, what="deeppoly")


@needs_bench
@pytest.mark.parametrize("ab, prop", [((1, 1), "prop_3"), ((1, 1), "prop_4"), ((2, 3), "prop_3")],
                         ids=["1_1-prop_3", "1_1-prop_4", "2_3-prop_3"])
def test_lp_bounds_sound_on_samples(ab, prop):
    net = load_cached(acas_path(*ab))
    box, _ = load_region(spec=ACAS / f"{prop}.vnnlib")
    res = prove_stability(net, box, StabilityOptions(method="lp"))
    vals = layer_values(net, samples_with_corners(box, 20000, np.random.default_rng(3)))
    assert_contains(res.bounds, vals, what="lp")
    # LP bounds are never looser than the DeepPoly bounds they start from
    dp = deeppoly_bounds(net, box)
    for k in range(len(dp.lo)):
        assert np.all(res.bounds.lo[k] >= dp.lo[k] - TOL) and np.all(res.bounds.hi[k] <= dp.hi[k] + TOL)
    assert res.bounds.counts(net.masks)["stable"] >= dp.counts(net.masks)["stable"]
