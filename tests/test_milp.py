"""Big-M MILP / triangle LP encoding, the HiGHS backend and rigorous LP bounds.

The "true" maximum of a piecewise-linear function of the input is found by brute force: a dense grid
over a 2-D box (exact when every vertex of the linear regions lies on the grid, as for the hand-made
nets below) and, independently, by enumerating every activation pattern and solving one LP per pattern
with scipy (exact for any small net).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from scipy.optimize import linprog

from conftest import exact_max, layer_values, samples_with_corners, small_problems, tiny_net
from equiv.bounds import Bounds, deeppoly_bounds, interval_bounds
from equiv.errors import SolverUnavailableError
from equiv.encode.chain import encode_network, safe_upper_bound
from equiv.ir.network import Dense, Network
from equiv.spec.region import Box
from equiv.solvers import Status, make_backend

TOL = 1e-6


def _milp_close(bound, truth, c, rel: float = 0.0):
    """A MILP bound is the optimum raised by its tolerance margin (`solvers.base.milp_bound`): at least the
    true maximum, at most the true maximum raised (and a relative MIP gap `rel`)."""
    from equiv.solvers.base import milp_bound
    assert truth - TOL <= bound <= milp_bound(truth + rel * abs(truth), c) + TOL, (bound, truth)


# ---- brute force ---------------------------------------------------------------------------------

def grid(box: Box, n: int = 481) -> np.ndarray:
    """A dense grid over a 2-D box: n = 481 points per side gives a step of (hi - lo) / 480."""
    g0, g1 = (np.linspace(box.lo[i], box.hi[i], n) for i in range(2))
    return np.array(np.meshgrid(g0, g1)).reshape(2, -1).T


def lp_optimum(model, c: np.ndarray, offset: float) -> float:
    """max c.v + offset over the LP relaxation, solved independently with scipy."""
    A = model.A.toarray()
    up, lo = np.isfinite(model.row_hi), np.isfinite(model.row_lo)
    res = linprog(-c, A_ub=np.vstack([A[up], -A[lo]]), b_ub=np.concatenate([model.row_hi[up], -model.row_lo[lo]]),
                  bounds=list(zip(model.col_lo, model.col_hi)), method="highs")
    assert res.status == 0
    return -res.fun + offset


# ---- hand-made nets on [-1, 1]^2 ---------------------------------------------------------------------
# H1: every breakpoint line (x1 + x2 = 0, x1 + x2 = 1/2, x1 - 2 x2 = -1/2, -x1 + x2/2 = -1/4) meets the
# others and the box edges at coordinates with denominators 2, 3, 4, 6: all on the 1/240 grid.
# Its first output is relu(s) - relu(s - 1/2) with s = x1 + x2: max 1/2, while the triangle LP
# allows h1 = (s + 2)/2 at s = 1/2, i.e. 1.25 -- the LP is strictly looser than the MILP.
H1 = ([([[1, 1], [1, 1], [1, -2], [-1, 0.5]], [0, -0.5, 0.5, 0.25]),
       ([[1, -1, 0, 0], [-1, 0, 2, -1], [0.5, 0.5, -1, 1]], [0, 0.25, -0.1])])
# H2: two hidden layers (the breakpoints of layer 2 also fall on the grid; checked against enumeration).
H2 = ([([[1, 0], [0, 1], [1, -1]], [0, -0.5, 0]), ([[1, 1, -1], [-1, 2, 0.5]], [-0.25, 0]),
       ([[1, -1], [-2, 1]], [0, 0.5])])
UNIT = Box(np.array([-1.0, -1.0]), np.array([1.0, 1.0]))


def objectives(net: Network):
    """Every (layer k >= 1, neuron i, sign) to maximise."""
    for k in range(1, net.depth):
        for i in range(net.dense[k].n_out):
            for sign in (1.0, -1.0):
                yield k, i, sign


@pytest.mark.parametrize("layers", [H1, H2], ids=["H1", "H2"])
def test_milp_max_equals_brute_force(layers):
    net = tiny_net(layers)
    bounds = deeppoly_bounds(net, UNIT)
    vals = layer_values(net, grid(UNIT))
    loose = 0
    for k, i, sign in objectives(net):
        truth = np.max(sign * vals[k][:, i])
        assert truth == pytest.approx(exact_max(net, UNIT, k, sign * np.eye(net.dense[k].n_out)[i], 0.0), abs=1e-9)
        enc = encode_network(net, UNIT, bounds, depth=k)
        backend = make_backend("highs", enc.model)
        c, off = enc.objective(sign * net.dense[k].W[i], sign * net.dense[k].b[i])
        milp = backend.maximize(c, off, integer=True, time_limit=30)
        assert milp.status == Status.OPTIMAL
        _milp_close(milp.bound, truth, c)
        assert milp.objective == pytest.approx(truth, abs=TOL)
        # the incumbent is a real input whose network value is the optimum
        x = enc.input_point(milp.x)
        assert np.all(UNIT.contains(x, tol=1e-6))
        assert sign * layer_values(net, x[None])[k][0, i] == pytest.approx(truth, abs=TOL)
        lp = backend.maximize(c, off, integer=False, time_limit=30)
        assert lp.status == Status.OPTIMAL
        assert lp.bound >= truth
        # and the LP upper bound is never looser than DeepPoly (the triangle relaxation dominates it)
        dp = bounds.hi[k][i] if sign > 0 else -bounds.lo[k][i]
        assert lp.bound <= dp + TOL
        loose += lp.bound > truth + 1e-3
    assert loose >= 2   # the MILP does real work on these nets


def test_h1_first_output_values():
    """The worked example in the comment above: MILP 0.5, LP 1.25, DeepPoly 2."""
    net = tiny_net(H1)
    bounds = deeppoly_bounds(net, UNIT)
    enc = encode_network(net, UNIT, bounds, depth=1)
    be = make_backend("highs", enc.model)
    c, off = enc.objective(net.dense[1].W[0], net.dense[1].b[0])
    _milp_close(be.maximize(c, off, integer=True, time_limit=10).bound, 0.5, c)
    assert be.maximize(c, off, integer=False, time_limit=10).bound == pytest.approx(1.25, abs=TOL)
    assert bounds.hi[1][0] == pytest.approx(2.0, abs=1e-7)


# ---- the encoding --------------------------------------------------------------------------------

def test_encoding_structure():
    """Dead neurons are dropped, active/linear ones are equalities, unstable ones get one binary each."""
    # x in [-1, 1]^2: z = [x1 + x2 (unstable), x1 - 3 (dead), x2 + 2 (active), x1 (linear channel)]
    net = Network.from_layers([Dense(np.array([[1.0, 1], [1, 0], [0, 1], [1, 0]]), np.array([0.0, -3, 2, 0])),
                               Dense(np.ones((1, 4)), np.zeros(1))], [np.array([True, True, True, False])])
    bounds = interval_bounds(net, UNIT)
    enc = encode_network(net, UNIT, bounds, depth=1)
    m = enc.model
    assert m.n_binaries == 1
    assert list(enc.prev_index) == [2, -1, 3, 4]                   # x0 x1 | h: 3 alive neurons | d
    assert list(m.groups["x"]) == [0, 1] and list(m.groups["d1"]) == [5]
    assert m.n_vars == 6
    # rows: 2 equalities (active + linear), 3 big-M rows; the dead neuron's cut -4 <= x1 - 3 <= -2 is
    # implied by the input box and left out (a dense row of the input width on MNIST)
    assert m.n_rows == 5
    # bounds tighter than the box's image (from a stronger method) keep their cut: 6 rows
    tight = bounds.copy()
    tight.hi[0][1] = -2.5
    assert encode_network(net, UNIT, tight, depth=1).model.n_rows == 6
    np.testing.assert_array_equal(m.integer, [False] * 5 + [True])
    assert m.relaxed().n_binaries == 0 and m.n_binaries == 1       # relaxed() leaves the model alone
    assert encode_network(net, UNIT, bounds, depth=1, integer=False).model.n_binaries == 0
    # the linear channel may be negative: its column keeps the lower bound
    assert m.col_lo[4] == pytest.approx(-1, abs=1e-8) and m.col_lo[2] == 0.0
    # the objective maps onto the alive neurons only: 1*h0 + 1*h2 + 1*h3 (the dead one is h = 0)
    c, off = enc.objective(np.array([1.0, 5.0, 1.0, 1.0]), 0.5)
    np.testing.assert_array_equal(c, [0, 0, 1, 1, 1, 0])
    assert off == 0.5
    be = make_backend("highs", m)
    # max relu(x1 + x2) + (x2 + 2) + x1 + 0.5 = 2 + 3 + 1 + 0.5
    _milp_close(be.maximize(c, off, integer=True, time_limit=10).bound, 6.5, c)


def test_encoding_depth_zero_is_the_box():
    net = tiny_net(H1)
    enc = encode_network(net, UNIT, interval_bounds(net, UNIT), depth=0)
    assert enc.model.n_vars == 2 and enc.model.n_rows == 0
    c, off = enc.objective(np.array([1.0, -2.0]), 0.25)
    r = make_backend("highs", enc.model).maximize(c, off, integer=True, time_limit=10)
    assert r.bound == pytest.approx(3.25, abs=TOL)


def test_encoding_neuron_with_zero_bounds():
    """A neuron whose bounds are exactly [0, 0] (dead and active at once) is dropped as dead."""
    net = Network.from_layers([Dense(np.array([[1.0], [0.0]]), np.zeros(2)), Dense(np.ones((1, 2)), np.zeros(1))])
    box = Box(np.array([-1.0]), np.array([1.0]))
    bounds = interval_bounds(net, box)
    bounds.lo[0][1] = bounds.hi[0][1] = 0.0
    enc = encode_network(net, box, bounds, depth=1)
    assert enc.prev_index[1] == -1
    c, off = enc.objective(net.dense[1].W[0], 0.0)
    _milp_close(make_backend("highs", enc.model).maximize(c, off, integer=True, time_limit=10).bound, 1.0, c)


def test_unknown_backend():
    net = tiny_net(H1)
    enc = encode_network(net, UNIT, interval_bounds(net, UNIT), depth=1)
    with pytest.raises(SolverUnavailableError, match="nosuch"):
        make_backend("nosuch", enc.model)


# ---- rigorous LP bounds ------------------------------------------------------------------------------

@pytest.mark.parametrize("layers", [H1, H2], ids=["H1", "H2"])
def test_safe_upper_bound_any_multipliers(layers, rng):
    net = tiny_net(layers)
    bounds = deeppoly_bounds(net, UNIT)
    k = net.depth - 1
    enc = encode_network(net, UNIT, bounds, depth=k)
    model = enc.model
    be = make_backend("highs", model)
    vals = layer_values(net, grid(UNIT, 101))
    for i in range(net.dense[k].n_out):
        c, off = enc.objective(net.dense[k].W[i], net.dense[k].b[i])
        opt = lp_optimum(model, c, off)   # scipy's optimum: exact up to the solver's tolerances (~1e-9)
        # values at real network points are exactly feasible objective values: a rigorous floor
        real = vals[k][:, i].max()
        assert opt >= real - 1e-9
        # valid for ANY multipliers: random ones of all signs and scales, including zero
        for scale in (0.0, 0.1, 1.0, 10.0):
            for _ in range(20):
                y = rng.normal(scale=scale, size=model.n_rows)
                bound = safe_upper_bound(model, c, off, y)
                assert bound >= real and bound >= opt - 1e-8
        # y = 0 gives the plain box bound on the variables
        box_bound = off + np.sum(np.where(c > 0, c * model.col_hi, c * model.col_lo))
        assert safe_upper_bound(model, c, off, np.zeros(model.n_rows)) == pytest.approx(box_bound, abs=1e-9)
        # the solver's duals make it tight
        res = be.maximize(c, off, integer=False, time_limit=10)
        assert res.status == Status.OPTIMAL
        assert res.bound == pytest.approx(opt, abs=TOL) and res.bound >= opt - 1e-8
        y = np.array(be.h.getSolution().row_dual)
        assert min(safe_upper_bound(model, c, off, y), safe_upper_bound(model, c, off, -y)) == \
            pytest.approx(opt, abs=TOL)


def test_safe_upper_bound_ignores_infinite_rows():
    """Multipliers pointing at an infinite row side are dropped instead of producing inf or nan."""
    net = tiny_net(H1)
    enc = encode_network(net, UNIT, deeppoly_bounds(net, UNIT), depth=1)
    model = enc.model
    assert (~np.isfinite(model.row_hi)).any() and (~np.isfinite(model.row_lo)).any()
    c, off = enc.objective(net.dense[1].W[0], net.dense[1].b[0])
    y = np.where(np.isfinite(model.row_hi), 0.0, 1.0) - np.where(np.isfinite(model.row_lo), 0.0, 1.0)
    val = safe_upper_bound(model, c, off, y)
    assert np.isfinite(val)
    assert val == pytest.approx(safe_upper_bound(model, c, off, np.zeros(model.n_rows)))


# ---- decisions -----------------------------------------------------------------------------------

def test_decide_below_and_above():
    net = tiny_net(H2)
    bounds = deeppoly_bounds(net, UNIT)
    k = 2
    enc = encode_network(net, UNIT, bounds, depth=k)
    be = make_backend("highs", enc.model)
    vals = layer_values(net, grid(UNIT))
    margin = 1e-6
    for i in range(2):
        w, b = net.dense[k].W[i], net.dense[k].b[i]
        truth = vals[k][:, i].max()
        c, off = enc.objective(w, b)
        before = be.maximize(c, off, integer=True, time_limit=10).bound
        below = be.decide(c, off, truth + 0.01, time_limit=10, margin=margin)
        assert below.verdict == "below" and below.status == Status.INFEASIBLE and below.x is None
        for thr in (truth - 0.01, truth - 1.0, vals[k][:, i].min() - 1.0):
            above = be.decide(c, off, thr, time_limit=10, margin=margin)
            assert above.verdict == "above" and above.status == Status.FEASIBLE
            x = enc.input_point(above.x)
            assert np.all(UNIT.contains(x, tol=1e-6))
            value = layer_values(net, x[None])[k][0, i]
            assert value >= thr - 2 * margin
            assert value <= truth + TOL
        # the decision row is removed again: the model answers as before
        assert be.maximize(c, off, integer=True, time_limit=10).bound == pytest.approx(before, abs=1e-9)
        assert be.model.n_rows == be.h.getNumRow()


def test_infeasible_box_cut():
    """Bounds that contradict each other (a dead-neuron cut outside its own column range) make the model
    infeasible; maximize reports it, with bound -inf (nothing can exceed anything)."""
    net = tiny_net([([[1.0, 0.0]], [0.0]), ([[1.0]], [0.0])])
    bounds = Bounds([np.array([-5.0]), np.array([-1.0])], [np.array([-2.0]), np.array([1.0])])
    enc = encode_network(net, UNIT, bounds, depth=1)   # claims x1 <= -2 on x1 in [-1, 1]
    r = make_backend("highs", enc.model).maximize(np.zeros(enc.model.n_vars), 0.0, integer=True, time_limit=10)
    assert r.status == Status.INFEASIBLE and r.bound == -np.inf


# ---- random small networks (hypothesis) ----------------------------------------------------------

def milp_bounds(net: Network, box: Box, bounds: Bounds) -> tuple[Bounds, list]:
    """Exact (MILP) lower/upper bounds of every layer k >= 1, each layer encoded with the exact bounds of
    the earlier ones; and per layer the most each bound was raised by (`solvers.base.milp_bound`)."""
    from equiv.solvers.base import decision_margin
    exact = bounds.copy()
    slack = [np.zeros(d.n_out) for d in net.dense]
    for k in range(1, net.depth):
        enc = encode_network(net, box, exact, depth=k)
        be = make_backend("highs", enc.model)
        for i in range(net.dense[k].n_out):
            c, off = enc.objective(net.dense[k].W[i], net.dense[k].b[i])
            up = be.maximize(c, off, integer=True, time_limit=30)
            lo = be.maximize(-c, -off, integer=True, time_limit=30)
            assert up.status == lo.status == Status.OPTIMAL
            exact.hi[k][i], exact.lo[k][i] = up.bound, -lo.bound
            slack[k][i] = decision_margin(c, 1e-6 * (1 + max(abs(up.bound), abs(lo.bound))))
    return exact, slack


@settings(max_examples=30, deadline=None)
@given(small_problems())
def test_random_nets_milp_sound_and_tighter(problem):
    net, box = problem
    ib = interval_bounds(net, box)
    dp = deeppoly_bounds(net, box)
    exact, slack = milp_bounds(net, box, dp)
    vals = layer_values(net, samples_with_corners(box, 2000, np.random.default_rng(0)))
    for k in range(net.depth):
        assert np.all(vals[k] <= exact.hi[k][None] + TOL) and np.all(vals[k] >= exact.lo[k][None] - TOL)
        assert np.all(vals[k] <= ib.hi[k][None]) and np.all(vals[k] >= ib.lo[k][None])
        assert np.all(vals[k] <= dp.hi[k][None]) and np.all(vals[k] >= dp.lo[k][None])
        # the MILP optimum is within the DeepPoly bounds
        # (up to the tolerance margin a MILP bound is raised by)
        s = slack[k] + TOL
        assert np.all(exact.hi[k] <= dp.hi[k] + s) and np.all(exact.lo[k] >= dp.lo[k] - s)
        # and sampling gets close to it on these tiny nets (a loose sanity check, not a proof)
        assert np.all(exact.hi[k] - vals[k].max(axis=0) <= 0.5 * (dp.hi[k] - dp.lo[k]) + s)


@settings(max_examples=20, deadline=None)
@given(small_problems(max_layers=2, max_width=3))
def test_random_nets_milp_exact(problem):
    """MILP maximum of output 0 == brute force over activation patterns; LP bound >= it."""
    net, box = problem
    dp = deeppoly_bounds(net, box)
    k = net.depth - 1
    enc = encode_network(net, box, dp, depth=k)
    be = make_backend("highs", enc.model)
    for sign in (1.0, -1.0):
        w = sign * np.eye(net.n_outputs)[0]
        truth = exact_max(net, box, k, w, 0.0)
        c, off = enc.objective(w @ net.dense[k].W, w @ net.dense[k].b)
        milp = be.maximize(c, off, integer=True, time_limit=30)
        assert milp.status == Status.OPTIMAL
        _milp_close(milp.bound, truth, c, rel=1e-4)                   # within HiGHS's default MIP gap
        assert milp.objective <= truth + TOL
        lp = be.maximize(c, off, integer=False, time_limit=30)
        assert lp.bound >= truth - 1e-9
        assert lp.bound >= milp.objective - TOL
