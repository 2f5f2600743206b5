"""DagAdmm on graphs (residual sums, concatenations, partial ReLU layers, convolutions): the relaxation it
builds from `encode_graph` is that LP exactly, its certified bound is never below the LP optimum (for any
multipliers, converged or not), close to it when OPTIMAL, and `--method lp --backend admm` on a graph is sound."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import CIFAR, load_box, load_graph_cached, lp_optima, needs_bench
from equiv.bounds.engine import deeppoly_graph
from equiv.encode.graph import encode_graph
from equiv.solvers import Status
from equiv.solvers.dag_admm import DagAdmm
from equiv.solvers.dag_relaxation import graph_objectives, graph_relaxation, lagrangian_bound, slope_multipliers
from test_graph_bounds import small_dags


def _problem(g, box, rng, n=3):
    """The relaxation of the whole graph, and n random objectives on its output with their negations."""
    out = g.outputs[0]
    bounds = deeppoly_graph(g, box)
    enc = encode_graph(g, box, bounds, upto=out)
    rel, cols = graph_relaxation(enc, g, bounds, [r for r in g.relus if r in enc.model.groups])
    size = g.op(out).size
    rows = []
    for _ in range(n):
        w = rng.normal(size=size)
        c = sum(w[p] * enc.objective(out, p)[0] for p in range(size))
        off = sum(w[p] * enc.objective(out, p)[1] for p in range(size))
        rows += [(c, off), (-c, -off)]
    C = np.array([c for c, _ in rows])
    c0 = np.array([o for _, o in rows])
    return enc, rel, graph_objectives(cols, C), c0, lp_optima(enc.model, rows)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problem=small_dags(), seed=st.integers(0, 10 ** 6))
def test_any_multipliers_bound_the_graph_lp_optimum(problem, seed):
    """Weak duality on random DAGs: random multipliers and back-substitution with random slopes never give a
    value below HiGHS's optimum of the encoded LP."""
    g, box = problem
    rng = np.random.default_rng(seed)
    enc, rel, C, c0, opt = _problem(g, box, rng)
    K = len(c0)
    lams = [rng.normal(size=(len(lo), K)) * rng.choice([0.0, 0.1, 3.0]) for lo in rel.lo]
    assert (lagrangian_bound(rel, C, c0, lams) >= opt - 1e-9 * (1 + np.abs(opt))).all()
    alphas = [rng.uniform(size=(len(lo), K)) for lo in rel.lo]
    assert (lagrangian_bound(rel, C, c0, slope_multipliers(rel, C, alphas)) >= opt - 1e-9 * (1 + np.abs(opt))).all()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problem=small_dags(), seed=st.integers(0, 10 ** 6), iters=st.sampled_from([3, 50, 5000]),
       slopes=st.sampled_from([0, 2, 50]))
def test_dag_admm_never_below_and_close_when_optimal(problem, seed, iters, slopes):
    """Stopped after 3 iterations or run to convergence, cold or after 2 or 50 slope steps (the warm start),
    every bound is >= the LP optimum; an OPTIMAL one is within its tolerance of it, and its stopping point's
    value is not above the optimum."""
    g, box = problem
    enc, rel, C, c0, opt = _problem(g, box, np.random.default_rng(seed))
    res = DagAdmm(rel, tol=1e-4, max_iter=iters, check_every=1, slope_iters=slopes).maximize_many(C, c0, 60)
    for r, o in zip(res, opt):
        assert r.bound is not None and r.bound >= o - 1e-9 * (1 + abs(o))
        if r.status == Status.OPTIMAL:
            assert r.bound <= o + 2e-4 * max(1.0, abs(r.bound))
            assert r.objective <= o + 1e-7 * (1 + abs(o))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problem=small_dags(), seed=st.integers(0, 10 ** 6))
def test_slope_gradient_is_the_bound_derivative(problem, seed):
    """The warm start's gradient (a forward pass) against finite differences of the back-substitution bound
    in each slope, at random slopes: equal where the bound is differentiable (a one-sided difference either
    way agrees), so Adam descends the bound that is certified."""
    g, box = problem
    rng = np.random.default_rng(seed)
    enc, rel, C, c0, opt = _problem(g, box, rng, n=1)
    admm = DagAdmm(rel)
    K = len(c0)
    tri = [rel.kind[k] == 0 for k in range(rel.depth)]
    upper = [np.where(t, rel.hi[k] / np.where(t, rel.hi[k] - rel.lo[k], 1.0), rel.kind[k] == 1)[:, None]
             for k, t in enumerate(tri)]
    alphas = [rng.uniform(0.1, 0.9, size=(len(lo), K)) for lo in rel.lo]

    def bound(al):
        return lagrangian_bound(rel, C, c0, slope_multipliers(rel, C, al))
    lams, mus = slope_multipliers(rel, C, alphas, with_mus=True)
    grads = admm._slope_gradient(mus, alphas, upper, [t[:, None] for t in tri])
    base, h = bound(alphas), 1e-6
    for k in range(rel.depth):
        for i in range(len(rel.lo[k])):
            moved = [a.copy() for a in alphas]
            moved[k][i] += h
            up = (bound(moved) - base) / h
            moved[k][i] -= 2 * h
            down = (base - bound(moved)) / h
            scale = 1.0 + np.abs(grads[k][i])
            assert (np.minimum(np.abs(up - grads[k][i]), np.abs(down - grads[k][i])) <= 1e-4 * scale).all()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problem=small_dags(), seed=st.integers(0, 10 ** 6), slopes=st.sampled_from([0, 50]))
def test_dag_admm_inputs_are_box_points_of_its_stopping_points(problem, seed, slopes):
    """`inputs`: per objective the input of the point behind its `objective` (a lower estimate), inside the
    box, NaN exactly where there is no such point."""
    g, box = problem
    enc, rel, C, c0, opt = _problem(g, box, np.random.default_rng(seed))
    admm = DagAdmm(rel, tol=1e-4, slope_iters=slopes)
    res = admm.maximize_many(C, c0, 60)
    assert admm.inputs.shape == (len(res), rel.size(0))
    for r, x in zip(res, admm.inputs):
        assert (r.objective is None) == np.isnan(x).any()
        if r.objective is not None:
            assert (x >= rel.box_lo - 1e-9 * (1 + np.abs(rel.box_lo))).all()
            assert (x <= rel.box_hi + 1e-9 * (1 + np.abs(rel.box_hi))).all()


@needs_bench
def test_resnet_2b_last_layer_against_highs():
    """ResNet-2B on img386 (DeepPoly bounds; convolutions kept sparse, the residual sums as two parents): 4
    unstable positions of the last ReLU maximised and minimised in one batch within 30 s; every certified
    bound at or above HiGHS's optimum and within 1e-3 (relative) of it."""
    g = load_graph_cached(CIFAR / "resnet_2b.onnx")
    box = load_box(CIFAR / "resnet_2b-img386-eps2_255.vnnlib")
    bounds = deeppoly_graph(g, box)
    z = g.args(g.relus[-1])[0]
    lo, hi = bounds.lo[z].reshape(-1), bounds.hi[z].reshape(-1)
    todo = np.flatnonzero((lo < 0) & (hi > 0))[:4]
    enc = encode_graph(g, box, bounds, upto=z)
    rel, cols = graph_relaxation(enc, g, bounds, [r for r in g.relus if r in enc.model.groups])
    assert [len(p) for p in rel.parents] == [1, 1, 2, 1, 2]          # the two residual sums
    rows = [enc.objective(z, int(p), s) for s in (1.0, -1.0) for p in todo]
    opt = np.array([r.objective for r in _highs(enc, rows)])
    res = DagAdmm(rel).maximize_many(graph_objectives(cols, np.array([c for c, _ in rows])),
                                     np.array([o for _, o in rows]), 30)
    U = np.array([r.bound for r in res])
    assert (U >= opt - 1e-7 * (1 + np.abs(opt))).all()
    assert ((U - opt) / np.maximum(1.0, np.abs(opt)) <= 1e-3).all()


def _highs(enc, rows):
    from equiv.solvers.highs import HighsBackend
    hb = HighsBackend(enc.model, warm_lp=True)
    out = [hb.maximize(c, o, integer=False, time_limit=60) for c, o in rows]
    assert all(r.status == Status.OPTIMAL for r in out)
    return out


@needs_bench
def test_graph_lp_stage_with_admm_is_sound():
    """`lp_stage` with backend admm on the small CIFAR CNN (two convolutions, two dense layers), 20 s: every
    tightened bound contains the sampled pre-activations, and it proves more positions stable than DeepPoly.
    ADMM's points are inputs of the box, run in the graph (the signs they show are recorded) and handed on."""
    from equiv.prove.graph_lp import lp_stage
    g = load_graph_cached(CIFAR / "cifar10_small.onnx")
    box = load_box(CIFAR / "networkcifar10_small_index1189_eps0.012_target1_orig0.vnnlib")
    bounds = deeppoly_graph(g, box)
    pos = {r: np.zeros(g.shape(g.args(r)[0]), bool) for r in g.relus}
    neg = {r: np.zeros(g.shape(g.args(r)[0]), bool) for r in g.relus}
    found = []
    tight, stats = lp_stage(g, box, bounds, pos, neg, time_limit=0.02, budget=20, backend="admm", points=found)
    assert stats["lp"] > 0
    X = np.vstack(found)
    assert len(X) > 0 and X.shape[1] == box.lo.size
    assert ((X >= box.lo) & (X <= box.hi)).all()
    signs = g.evaluate(X)
    for r in g.relus:
        v = signs[g.args(r)[0]]
        assert (pos[r] >= (v > 0).any(axis=0)).all() and (neg[r] >= (v < 0).any(axis=0)).all()
    x = box.sample(2000, np.random.default_rng(0))
    vals = g.evaluate(x)
    for r in g.relus:
        zt = g.args(r)[0]
        assert (vals[zt] >= tight.lo[zt] - 1e-7).all() and (vals[zt] <= tight.hi[zt] + 1e-7).all()
        assert (tight.hi[zt] <= bounds.hi[zt] + 1e-12).all() and (tight.lo[zt] >= bounds.lo[zt] - 1e-12).all()
    stable = lambda b: sum(int(((b.lo[g.args(r)[0]] >= 0) | (b.hi[g.args(r)[0]] <= 0)).sum()) for r in g.relus)  # noqa: E731
    assert stable(tight) > stable(bounds)
