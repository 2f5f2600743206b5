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


def _thin_positive_net():
    """A hunt's net (stop 47): weights ~2e4 and biases ~1e5 on layer 4, whose neuron 1 reaches only +3.8e-4 at
    the point XW of the box (one input fixed); HiGHS and CBC called it dead ("infeasible" even for z >= -1e-2)."""
    from equiv.ir.network import Dense, Network
    from equiv.spec.region import Box
    layers = [
        ([[0.0, 0.0, 0.0, 0.0], [-1.498679353062471e-06, 3.5853892654813535e-07, 1.6351616238807765e-07,
          4.234924517731997e-07], [-1.498679353062471e-06, 3.5853892654813535e-07, 1.6351616238807765e-07,
          4.234924517731997e-07], [5.433466299109568e-07, -9.604207207303261e-08, -1.0315850431652507e-06,
          -1.1421940371292294e-06]], [0.0, -0.006181646138429642, -0.006181646138429642, 0.0]),
        ([[0.0, 0.0, 1.6695632439223118e-05, 0.02749740518629551], [17.79631805419922, -1.2191717360110488e-05,
          -47642.8359375, 1.4671201142846257e-08]], [0.0, 0.0]),
        ([[20150.001953125, -6884.51416015625], [5219.919921875, 8837.765625], [11996.3681640625, -16089.919921875],
          [23992.736328125, -32179.83984375], [-2160.0029296875, -13176.8955078125],
          [-1378.5052490234375, -11460.5546875], [-4824.525390625, -18377.271484375]],
         [-1.2185555696487427, -1.2807916402816772, 0.042739447206258774, -10.984423637390137,
          8.098102917408756e-12, 0.6311036944389343, -9.841458759041188e-10]),
        ([[0.0, 4186.38134765625, 5042.1435546875, 0.0, 0.0, 0.0, 0.0],
          [9861.84765625, -9139.8955078125, 7937.2646484375, -15482.7216796875, -9128.703125, -7178.4599609375,
           18263.314453125],
          [5748.0205078125, 2274.8046875, -6658.9130859375, -3752.894287109375, 6490.31982421875,
           -1696.9522705078125, 4030.544677734375]], [-8.536096061106946e-07, -112755.8125, 6044.91552734375]),
        ([[-1.0830202102661133, 0.9394131898880005, -1.199163556098938],
          [-0.08016403019428253, 0.04317772760987282, 1.608011245727539]], [3.00428064292646e-06, 5.533199782803422e-07])]
    net = Network.from_layers([Dense(np.array(W), np.array(b)) for W, b in layers])
    box = Box(np.array([-0.7129699401278251, -20.94801977349322, -0.11009718393857268, -14575.413149607239]),
              np.array([-0.7129699401278251, 20.221160724797603, -0.1098912885543, 14577.22727246216]))
    xw = np.array([-0.7129699401278251, -20.94801977349322, -0.11009718393857268, -14575.412834495803])
    return net, box, xw


@pytest.mark.parametrize("name", INSTALLED)
def test_milp_tolerances_never_prove_a_thin_positive_neuron_dead(name):
    """A MILP decision's margin grows with the objective's coefficients (`decision_margin`: the solvers'
    ~1e-6 tolerances move c.v by ~1e-6 sum|c_j|), and so does a MILP dual bound: the neuron stays undecided
    with every backend and every route, and MILP maxima bound its real value."""
    from equiv.prove.stability import StabilityOptions, prove_stability
    net, box, xw = _thin_positive_net()
    assert box.contains(xw[None])[0]
    _, pre = net.forward(xw[None], return_pre=True)
    assert pre[3][0][1] > 3e-4
    for kw in ({}, {"bab": False, "split_boxes": 0, "windowed": "off"}):
        res = prove_stability(net, box, StabilityOptions(method="milp", backend=name, seed=0, time_limit=20, **kw))
        n = next(p for p in res.neurons if (p.layer, p.index) == (4, 1))
        assert n.phase not in ("dead", "active"), (kw, n)
    b = deeppoly_bounds(net, box)
    from equiv.bounds import Bounds
    b = Bounds([np.minimum(lo, z[0]) for lo, z in zip(b.lo, pre)] + b.lo[len(pre):],
               [np.maximum(hi, z[0]) for hi, z in zip(b.hi, pre)] + b.hi[len(pre):])
    enc = encode_network(net, box, b, depth=3)
    c, off = enc.objective(net.dense[3].W[1], net.dense[3].b[1])
    be = make_backend(name, enc.model)
    assert be.decide(c, off, 0.0, time_limit=20, margin=1e-6).verdict != "below"
    r = be.maximize(c, off, integer=True, time_limit=20)
    assert r.status != Status.OPTIMAL or r.bound >= pre[3][0][1]


@pytest.mark.skipif("gurobi" not in INSTALLED, reason="gurobipy not installed")
def test_gurobi_answers_a_model_of_one_variable():
    """A box of one point and one binary: gurobipy refused the one-element numpy array of variable types and
    `simplify --backend gurobi` stopped with exit 4 (a hunt, stop 47)."""
    model = LinearModel(sp.csr_matrix(np.ones((1, 1))), np.array([-1.0]), np.array([1.0]), np.zeros(1), np.ones(1),
                        np.array([True]))
    be = make_backend("gurobi", model)
    r = be.maximize(np.array([1.0]), 0.0, integer=True, time_limit=5)
    assert r.status == Status.OPTIMAL and r.bound >= 1.0
    assert be.decide(np.array([1.0]), 0.0, 2.0, time_limit=5, margin=1e-6).verdict == "below"
