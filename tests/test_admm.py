"""The admm backend: certified LP bounds (never below the optimum, close to it when OPTIMAL), batched."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import acas_path, load_cached, needs_bench
from equiv.bounds import deeppoly_bounds
from equiv.encode.chain import LinearModel, encode_network
from equiv.errors import SolverUnavailableError
from equiv.ir.network import Network
from equiv.solvers import Status, check_backend, make_backend
from equiv.solvers.admm import AdmmBackend


def _model(A, row_lo, row_hi, col_lo, col_hi, integer=None):
    A = sp.csr_matrix(np.asarray(A, dtype=float))
    integer = np.zeros(A.shape[1], bool) if integer is None else np.asarray(integer)
    return LinearModel(A, np.asarray(row_lo, float), np.asarray(row_hi, float), np.asarray(col_lo, float),
                       np.asarray(col_hi, float), integer)


def _highs(model, c, off):
    r = make_backend("highs", model).maximize(c, off, integer=False, time_limit=30)
    assert r.status == Status.OPTIMAL
    return r.objective


def test_tiny_lp_known_optimum():
    # max x + y  s.t.  x + 2y <= 4,  3x + y <= 6,  0 <= x, y <= 10:  optimum 2.8 at (1.6, 1.2)
    m = _model([[1, 2], [3, 1]], [-np.inf, -np.inf], [4, 6], [0, 0], [10, 10])
    r = make_backend("admm", m).maximize(np.array([1.0, 1.0]), 0.5, integer=False, time_limit=30)
    assert r.status == Status.OPTIMAL
    assert 3.3 <= r.bound <= 3.3 + 1e-4
    assert r.x == pytest.approx([1.6, 1.2], abs=1e-3)


def test_equality_rows_and_infinite_row_bounds_batched():
    # x + y = 1, x - 2y >= -2, 0 <= x, y <= 5:  max x - y = 1 (x = 1), max y - x = 1 (y = 1), max y + 2 = 3
    m = _model([[1, 1], [1, -2]], [1, -2], [1, np.inf], [0, 0], [5, 5])
    C = np.array([[1.0, -1.0], [-1.0, 1.0], [0.0, 1.0]])
    res = AdmmBackend(m).maximize_many(C, [0.0, 0.0, 2.0], time_limit=30)
    for r, opt in zip(res, (1.0, 1.0, 3.0)):
        assert r.status == Status.OPTIMAL and opt <= r.bound <= opt + 1e-4


def test_infinite_column_bounds_never_a_false_bound():
    # the same LP with x, y unbounded above (the rows bound them): a bound, if any, is >= the optimum;
    # OPTIMAL only with a finite bound (an inexact reduced cost on an unbounded column gives none)
    m = _model([[1, 1], [1, -2]], [1, -2], [1, np.inf], [0, 0], [np.inf, np.inf])
    C = np.array([[1.0, -1.0], [-1.0, 1.0], [0.0, 1.0]])
    for r, opt in zip(AdmmBackend(m, max_iter=2000).maximize_many(C, [0.0, 0.0, 2.0], time_limit=30), (1, 1, 3)):
        assert r.bound is None or r.bound >= opt
        assert r.status != Status.OPTIMAL or r.bound is not None


def test_unbounded_direction_is_no_proof():
    # max x + y with y unbounded above: no finite bound may be reported
    m = _model([[1, -1]], [-np.inf], [1], [0, 0], [10, np.inf])   # x - y <= 1: y can grow
    r = make_backend("admm", m).maximize(np.array([1.0, 1.0]), 0.0, integer=False, time_limit=2)
    assert r.status != Status.OPTIMAL and r.bound is None


def test_infeasible_is_not_optimal():
    # x + y >= 5 with x, y in [0, 1]: infeasible; any bound is vacuously valid, but no OPTIMAL claim
    be = AdmmBackend(_model([[1, 1]], [5], [np.inf], [0, 0], [1, 1]), max_iter=3000)
    r = be.maximize(np.array([1.0, 0.0]), 0.0, time_limit=5)
    assert r.status == Status.TIME_LIMIT


def test_integer_queries_are_refused():
    m = _model([[1, 1]], [-np.inf], [1.5], [0, 0], [1, 1], integer=[True, False])
    be = make_backend("admm", m)
    r = be.maximize(np.array([1.0, 1.0]), 0.0, integer=True, time_limit=1)
    assert r.status == Status.ERROR and r.bound is None and "LP relaxations only" in r.message
    # decide: a certified LP bound below the threshold proves "below"; otherwise never a witness
    assert be.decide(np.array([1.0, 1.0]), 0.0, 2.0, time_limit=5, margin=1e-6).verdict == "below"
    assert be.decide(np.array([1.0, 1.0]), 0.0, 1.0, time_limit=5, margin=1e-6).verdict == "unknown"
    with pytest.raises(SolverUnavailableError, match="LP relaxations only"):
        check_backend("admm", milp=True)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2 ** 32 - 1), n=st.integers(2, 6), m=st.integers(1, 6))
def test_random_lps_against_highs(seed, n, m):
    """Random bounded LPs with a known feasible point: certified bound >= HiGHS's optimum always, and
    within 1e-4 (relative) of it when ADMM says OPTIMAL."""
    r = np.random.default_rng(seed)
    A = r.normal(size=(m, n)) * (r.random((m, n)) < 0.7)
    col_lo = r.uniform(-3, 0, n)
    col_hi = col_lo + r.uniform(0.1, 4, n)
    x0 = r.uniform(col_lo, col_hi)
    Ax = A @ x0
    row_lo = np.where(r.random(m) < 0.3, -np.inf, Ax - r.uniform(0, 2, m))
    row_hi = np.where(r.random(m) < 0.3, np.inf, Ax + r.uniform(0, 2, m))
    eq = r.random(m) < 0.15
    row_lo[eq] = row_hi[eq] = Ax[eq]
    model = _model(A, row_lo, row_hi, col_lo, col_hi)
    C = r.normal(size=(3, n))
    off = r.normal(size=3)
    res = AdmmBackend(model, max_iter=5000).maximize_many(C, off, time_limit=30)
    for c, o, res_k in zip(C, off, res):
        opt = _highs(model, c, o)
        scale = 1 + abs(opt) + np.abs(c).sum() * np.abs(np.r_[col_lo, col_hi]).max()
        assert res_k.bound is not None
        assert res_k.bound >= opt - 1e-9 * scale
        if res_k.status == Status.OPTIMAL:
            assert res_k.bound <= opt + 1e-4 * (1 + abs(opt))


@needs_bench
def test_acas_layer_lp_batched_against_highs(prop3_box):
    """ACAS Xu 1_1 on prop_3, the triangle-relaxation LP of layers 1-3 (DeepPoly bounds): every neuron
    of layer 4 maximised and minimised in one batch; certified bounds vs HiGHS's optima."""
    net = load_cached(acas_path(1, 1))
    b = deeppoly_bounds(net, prop3_box)
    k = 3
    enc = encode_network(net, prop3_box, b, depth=k)
    W, bias = net.dense[k].W, net.dense[k].b
    todo = np.flatnonzero((b.lo[k] < 0) & (b.hi[k] > 0))[:12]
    C, off = map(np.array, zip(*[enc.objective(W[i], bias[i]) for i in todo]))
    C, off = np.vstack([C, -C]), np.concatenate([off, -off])
    res = AdmmBackend(enc.model).maximize_many(C, off, time_limit=300)
    hb = make_backend("highs", enc.model)
    n_opt = 0
    for c, o, r in zip(C, off, res):
        opt = hb.maximize(c, o, integer=False, time_limit=30).objective
        assert r.bound is not None and r.bound >= opt - 1e-7 * (1 + abs(opt))
        assert r.bound <= opt + 1e-2 * (1 + abs(opt))          # close even when stopped by the limit
        if r.status == Status.OPTIMAL:
            n_opt += 1
            assert r.bound <= opt + 1e-4 * (1 + abs(opt))
    assert n_opt >= len(res) // 2


@needs_bench
def test_lp_tightening_with_admm_backend(prop3_box):
    """prove_stability --method lp with the admm backend on the first three layers of ACAS Xu 1_1: sound
    (the bounds contain samples), and decides at least
    as many neurons as DeepPoly and nearly as many as HiGHS; method milp falls back to highs with a note."""
    from equiv.prove.stability import StabilityOptions, prove_stability
    full = load_cached(acas_path(1, 1))
    small = Network.from_layers(full.dense[:4], full.masks[:3])    # hidden layers 1-3, layer 4 as output
    ad = prove_stability(small, prop3_box, StabilityOptions(method="lp", backend="admm"))
    hi = prove_stability(small, prop3_box, StabilityOptions(method="lp", backend="highs"))
    dp = prove_stability(small, prop3_box, StabilityOptions(method="deeppoly"))
    x = prop3_box.sample(3000, np.random.default_rng(0))
    _, pre = small.forward(x, return_pre=True)
    for k, z in enumerate(pre):
        assert (z >= ad.bounds.lo[k] - 1e-9).all() and (z <= ad.bounds.hi[k] + 1e-9).all()
    n_ad, n_hi, n_dp = (r.count("dead") + r.count("active") for r in (ad, hi, dp))
    assert n_dp <= n_ad <= n_hi + 2
    assert n_ad >= n_hi - 3
    assert "lp" in ad.proved_by()


@needs_bench
def test_bench_compare_reports_no_bound_below_the_optimum(prop3_box):
    """The admm bench's comparison on a small ACAS Xu query set: every certified bound >= HiGHS's optimum, warm
    (as `--backend admm` runs) and cold (ADMM alone)."""
    from equiv.bench.admm import compare
    net = load_cached(acas_path(1, 1))
    b = deeppoly_bounds(net, prop3_box)
    todo = np.flatnonzero((b.lo[2] < 0) & (b.hi[2] > 0))[:6]
    W, bias = net.dense[2].W[todo], net.dense[2].b[todo]
    r = compare(net, prop3_box, b, 2, np.vstack([W, -W]), np.concatenate([bias, -bias]), time_limit=120)
    assert r["queries"] == 2 * todo.size and r["below_optimum"] == 0 and r["gap_max"] >= -1e-7
    assert r["within_tol"] >= r["queries"] - 1
    assert r["cold_below_optimum"] == 0 and r["cold_rel_gap_max"] < np.inf
