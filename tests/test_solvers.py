"""The three backends answer the same neutral queries with the same proofs; limits never become proofs."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import scipy.sparse as sp

from conftest import random_problem
from equiv.bounds import deeppoly_bounds
from equiv.errors import SolverUnavailableError
from equiv.encode.chain import LinearModel, encode_network
from equiv.solvers import BACKENDS, Status, available_backends, check_backend, make_backend

INSTALLED = available_backends(milp=True)   # admm (LP only) has its own tests: test_admm.py


def _queries(seed):
    """A random net's encoding and objectives for every neuron of its last hidden layer."""
    net, box = random_problem(seed, 3, [6, 6, 5], 2, linear_channels=False)
    b = deeppoly_bounds(net, box)
    k = 2
    enc = encode_network(net, box, b, depth=k)
    W, bias = net.dense[k].W, net.dense[k].b
    return enc, [enc.objective(W[i], bias[i]) for i in range(W.shape[0])]


@pytest.mark.parametrize("seed", range(4))
def test_backends_agree_on_lp_and_milp_bounds(seed):
    enc, objs = _queries(seed)
    results = {}
    for name in INSTALLED:
        be = make_backend(name, enc.model)
        results[name] = [(be.maximize(c, o, integer=False, time_limit=30).bound,
                          be.maximize(c, o, integer=True, time_limit=30).bound) for c, o in objs]
    ref = results["highs"]
    for name, res in results.items():
        for (lp_ref, milp_ref), (lp, milp) in zip(ref, res):
            assert lp == pytest.approx(lp_ref, abs=1e-5), name
            assert milp == pytest.approx(milp_ref, abs=1e-5), name
            assert milp <= lp + 1e-5  # never above its relaxation (up to the safety margins)


@pytest.mark.parametrize("seed", range(3))
def test_backends_agree_on_decisions(seed):
    enc, objs = _queries(seed)
    verdicts = {}
    for name in INSTALLED:
        be = make_backend(name, enc.model)
        verdicts[name] = [be.decide(c, o, 0.0, time_limit=30, margin=1e-6).verdict for c, o in objs]
    # proofs ("below") and witnesses ("above") must agree between any two backends that both answered
    ref = verdicts["highs"]
    for name, v in verdicts.items():
        for a, b in zip(ref, v):
            assert a == b or "unknown" in (a, b), (name, ref, v)


@pytest.mark.parametrize("name", [b for b in INSTALLED if b != "admm"])
def test_a_badly_scaled_milp_proves_nothing(name):
    """z = 1e9 x1 - 1e9 x2 + d (x in [0, 1], d binary): numbers of 1e9 compared at a margin of 1e-6 are past
    any solver's precision (the hunt saw HiGHS, Gurobi and CBC answer "infeasible" on such big-M models with
    feasible points).  Decisions and MILP bounds are unknown there; an LP bound (a safe dual bound) is still
    used."""
    from equiv.solvers.base import MILP_SCALE_MAX, model_scale
    A = sp.csr_matrix(np.array([[1e9, -1e9, 1.0, -1.0]]))         # row: z - (1e9 x1 - 1e9 x2 + d) = 0
    model = LinearModel(A, np.zeros(1), np.zeros(1), np.array([0.0, 0.0, 0.0, -3e9]), np.array([1.0, 1.0, 1.0, 3e9]),
                        np.array([False, False, True, False]))
    be = make_backend(name, model)
    assert model_scale(model) > MILP_SCALE_MAX and "badly scaled" in be.badly_scaled()
    c = np.array([0.0, 0.0, 0.0, 1.0])
    d = be.decide(c, 0.0, 0.5, time_limit=5, margin=1e-6)
    assert d.verdict == "unknown" and "badly scaled" in d.message
    r = be.maximize(c, 0.0, integer=True, time_limit=5)
    assert r.bound is None and "badly scaled" in r.message
    lp = be.maximize(c, 0.0, integer=False, time_limit=5)         # (not refused: a bound from the duals is
    assert lp.bound is None or lp.bound >= 1e9 + 1.0 - 1e-3       # safe at any scale, if the solver gives one)


@pytest.mark.skipif("gurobi" not in INSTALLED, reason="gurobipy not installed")
def test_gurobi_size_limited_licence_is_unknown_not_a_proof():
    n = 2500  # above the pip licence's ~2000 variable limit
    A = sp.csr_matrix(np.ones((1, n)))
    model = LinearModel(A, np.array([-np.inf]), np.array([1.0]), np.zeros(n), np.ones(n), np.zeros(n, bool))
    be = make_backend("gurobi", model)
    c = np.ones(n)
    r = be.maximize(c, 0.0, integer=False, time_limit=5)
    if r.status == Status.OPTIMAL:
        pytest.skip("this machine has a full Gurobi licence")
    assert r.status == Status.TOO_LARGE and r.bound is None
    assert "size-limited" in r.message and "--backend highs" in r.message
    d = be.decide(c, 0.0, 0.5, time_limit=5, margin=1e-6)
    assert d.verdict == "unknown" and d.status == Status.TOO_LARGE


def test_missing_package_names_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gurobipy" else real(name, *a))
    with pytest.raises(SolverUnavailableError, match=r"equiv\[gurobi\]"):
        check_backend("gurobi")
    with pytest.raises(SolverUnavailableError, match="available"):
        check_backend("cplex")


def test_all_backends_installed_in_test_environment():
    """CI installs every extra, so no backend test is silently skipped there."""
    assert set(available_backends()) == set(BACKENDS)


@pytest.mark.skipif("gurobi" not in INSTALLED, reason="gurobipy not installed")
def test_gurobi_too_large_in_a_run_is_reported_and_proves_nothing():
    """A run whose layer encodings exceed the licence finishes, counts the queries, proves nothing with them."""
    from equiv.prove.stability import StabilityOptions, prove_stability
    # layer 2's LP encoding holds layer 1's ~900 unstable ReLUs: ~3000 rows, over the pip licence
    net, box = random_problem(0, 4, [1500, 5], 2, linear_channels=False)
    gu = prove_stability(net, box, StabilityOptions(method="lp", backend="gurobi"))
    if not gu.queries.get("too_large"):
        pytest.skip("the encodings fit this machine's Gurobi licence")
    assert gu.queries["too_large"] == gu.queries["lp"]
    assert any("too large" in n and "--backend highs" in n and "layer 2" in n for n in gu.notes)
    assert "lp" not in gu.proved_by()


def _cancelling_chain():
    """h = relu([1e9, w, 1e9] x) on x in [1e6, 2e6] (all active), z = h1 + h2 - h3 + b = w x + b exactly: terms of
    1e15 cancel to a z in [-0.025, 0.025], which crosses 0."""
    from equiv.ir.network import Dense, Network
    from equiv.spec.region import Box
    w, b = float(np.float32(5e-8)), float(np.float32(-0.075))
    net = Network.from_layers([Dense(np.array([[1e9], [w], [1e9]]), np.zeros(3)),
                               Dense(np.array([[1.0, 1.0, -1.0]]), np.array([b])), Dense(np.eye(1), np.zeros(1))])
    box = Box(np.array([1e6]), np.array([2e6]))
    from fractions import Fraction as F
    exact = [float(F(w) * F(x) + F(b)) for x in (1e6, 2e6)]
    return net, box, exact


def _cancelling_pairs():
    """3 inputs; two pairs of identical rows ~1e7..1e8 and a row ~1e-9, all active; layer 2 takes the pairs'
    differences, so each pre-activation is a tiny affine function of x (exact range from the 8 corners)."""
    import itertools
    from fractions import Fraction as F
    from equiv.ir.network import Dense, Network
    from equiv.spec.region import Box
    f32 = lambda a: np.asarray(a, np.float32).astype(np.float64)
    W1 = f32([[16866504.0, 60328532.0, 47882856.0], [40033264.0, 38402824.0, 78492960.0],
              [7.062978535365971e-10, 6.030108412602431e-09, 2.9137287027580783e-10],
              [16866504.0, 60328532.0, 47882856.0], [40033264.0, 38402824.0, 78492960.0]])
    W2 = f32([[-1.0, -1.0, -1.0, 1.0, 1.0], [-1.0, -1.0, -1.0, 1.0, 1.0], [-1.0, -1.0, 1.0, 1.0, 1.0]])
    b2 = f32([2.1977116375637706e-06, 2.9476452709786827e-06, -2.9476452709786827e-06])
    net = Network.from_layers([Dense(W1, np.zeros(5)), Dense(W2, b2), Dense(np.ones((1, 3)), np.zeros(1))])
    box = Box(np.array([302.49571973658567, 256.6771286036801, 210.39011983020208]),
              np.array([551.4078555045506, 467.88690155242233, 383.51208703362727]))
    zs = []
    for bits in itertools.product([0, 1], repeat=3):
        x = [F(v) for v in np.where(np.array(bits, bool), box.hi, box.lo)]
        h = [sum(F(W1[i, j]) * x[j] for j in range(3)) for i in range(5)]
        zs.append([float(sum(F(W2[r, i]) * h[i] for i in range(5)) + F(b2[r])) for r in range(3)])
    return net, box, np.min(zs, axis=0), np.max(zs, axis=0)


@pytest.mark.parametrize("name", INSTALLED)
def test_lp_bounds_of_cancelling_pairs_contain_the_exact_ranges(name):
    """The hunt's second net: highs's LP gave lo > hi ([2.2e-6, 3.8e-7]) and, with all defaults, `simplify` called
    three neurons crossing 0 stable.  Now every interval contains the exact range and none is called stable."""
    from equiv.prove.stability import StabilityOptions, prove_stability
    net, box, zlo, zhi = _cancelling_pairs()
    assert np.all(zlo < 0) and np.all(zhi > 0)
    for method in ("lp", "milp"):
        res = prove_stability(net, box, StabilityOptions(method=method, backend=name, time_limit=10, seed=0))
        lo, hi = res.bounds.lo[1], res.bounds.hi[1]
        assert np.all(lo <= zlo) and np.all(hi >= zhi), (method, lo, hi)
        dead, active = res.phase_masks(net)
        assert not (dead[1].any() or active[1].any())


@pytest.mark.parametrize("name", INSTALLED)
def test_lp_bound_covers_the_rounding_of_the_reduced_costs(name):
    """`safe_upper_bound` once took r = c - A^T y as exact: its rounding (~2^-53 |A|^T|y|, here ~1e-7 on a column
    bounded by 2e6) exceeded its margin, and gurobi/cbc bounded z by -0.075 (dead) where z reaches +0.025; highs
    gave lo > hi on a similar net (a hunt, stop 47).  Every backend's LP interval now contains the exact range,
    however loose, and no neuron is called stable."""
    net, box, (zlo, zhi) = _cancelling_chain()
    b = deeppoly_bounds(net, box)
    enc = encode_network(net, box, b, depth=1)
    c, off = enc.objective(net.dense[1].W[0], net.dense[1].b[0])
    be = make_backend(name, enc.model)
    up, down = be.maximize(c, off, integer=False, time_limit=30), be.maximize(-c, -off, integer=False, time_limit=30)
    if up.status == Status.OPTIMAL:
        assert up.bound >= zhi
    if down.status == Status.OPTIMAL:
        assert -down.bound <= zlo
    from equiv.prove.stability import StabilityOptions, prove_stability
    res = prove_stability(net, box, StabilityOptions(method="lp", backend=name, time_limit=10, seed=0))
    lo, hi = res.bounds.lo[1][0], res.bounds.hi[1][0]
    assert lo <= zlo and hi >= zhi and lo <= hi
    assert not (res.phase_masks(net)[0][1].any() or res.phase_masks(net)[1][1].any())
