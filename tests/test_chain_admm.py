"""DagAdmm on a dense ReLU chain (DeepSplit's splitting, `chain_relaxation`): its certified bound is never below the LP optimum
(for any multipliers, converged or not) and is close to it when it reports OPTIMAL."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import MNIST, acas_path, load_cached, lp_optima, needs_bench, small_problems
from equiv.bounds import deeppoly_bounds
from equiv.encode.chain import encode_network
from equiv.ir.network import Dense, Network
from equiv.solvers import Status
from equiv.solvers.chain_admm import chain_relaxation
from equiv.solvers.dag_admm import DagAdmm
from equiv.solvers.dag_relaxation import lagrangian_bound, slope_multipliers
from equiv.spec.region import Box


def _lp_optima(net, box, bounds, depth, C, c0):
    """The optimum of max C[q].h_depth + c0[q] over the same triangle relaxation (the chain encoding)."""
    enc = encode_network(net, box, bounds, depth=depth, integer=False)
    return lp_optima(enc.model, [enc.objective(c, o) for c, o in zip(C, c0)])


def _queries(net, depth, rng, n=4):
    """n random objectives on the input of dense layer `depth`, and their negations."""
    C = rng.normal(size=(n, net.dense[depth].n_in))
    c0 = rng.normal(size=n)
    return np.vstack([C, -C]), np.concatenate([c0, -c0])


def test_one_neuron_exact():
    """x in [-1, 2], z = x, y = relu(z): the triangle's top is y <= 2 (x + 1) / 3, so max y - x/2 is at the
    vertex (2, 2): 1; max -y at y = 0: 0; max y + x... = 4.  ADMM's certified bounds agree to its tolerance."""
    net = Network.from_layers([Dense(np.array([[1.0]]), np.zeros(1)), Dense(np.array([[1.0]]), np.zeros(1))])
    box = Box(np.array([-1.0]), np.array([2.0]))
    rel = chain_relaxation(net, box, deeppoly_bounds(net, box), 1)
    res = DagAdmm(rel, tol=1e-6).maximize_many(rel.on_last([[1.0], [-1.0], [0.5]]), [0.0, 0.0, 0.25], 30)
    for r, opt in zip(res, (2.0, 0.0, 1.25)):
        assert r.status == Status.OPTIMAL
        assert opt - 1e-12 <= r.bound <= opt + 1e-5


@settings(max_examples=40, deadline=None)
@given(problem=small_problems(max_layers=3, max_width=6), seed=st.integers(0, 10 ** 6))
def test_any_multipliers_bound_the_lp_optimum(problem, seed):
    """Weak duality: for random multipliers (and for back-substitution with random slopes) the certified
    value is >= HiGHS's LP optimum, on nets with dead, active, unstable and linear neurons."""
    net, box = problem
    rng = np.random.default_rng(seed)
    depth = len(net.dense) - 1
    bounds = deeppoly_bounds(net, box)
    rel = chain_relaxation(net, box, bounds, depth)
    C, c0 = _queries(net, depth, rng)
    opt = _lp_optima(net, box, bounds, depth, C, c0)
    lams = [rng.normal(size=(len(lo), len(C))) * rng.choice([0.0, 0.1, 3.0]) for lo in rel.lo]
    assert (lagrangian_bound(rel, rel.on_last(C), c0, lams) >= opt - 1e-9 * (1 + np.abs(opt))).all()
    alphas = [rng.uniform(size=(len(lo), len(C))) for lo in rel.lo]
    tight = lagrangian_bound(rel, rel.on_last(C), c0, slope_multipliers(rel, rel.on_last(C), alphas))
    assert (tight >= opt - 1e-9 * (1 + np.abs(opt))).all()


@settings(max_examples=40, deadline=None)
@given(problem=small_problems(max_layers=3, max_width=6), seed=st.integers(0, 10 ** 6),
       iters=st.sampled_from([3, 50, 5000]))
def test_admm_bound_never_below_and_close_when_optimal(problem, seed, iters):
    """Stopped after 3 iterations or run to convergence, every bound is >= the LP optimum; an OPTIMAL one is
    within its tolerance of it."""
    net, box = problem
    rng = np.random.default_rng(seed)
    depth = len(net.dense) - 1
    bounds = deeppoly_bounds(net, box)
    C, c0 = _queries(net, depth, rng)
    opt = _lp_optima(net, box, bounds, depth, C, c0)
    rel = chain_relaxation(net, box, bounds, depth)
    admm = DagAdmm(rel, tol=1e-4, max_iter=iters, check_every=1)
    for r, o in zip(admm.maximize_many(rel.on_last(C), c0, 60), opt):
        assert r.bound is not None and r.bound >= o - 1e-9 * (1 + abs(o))
        if r.status == Status.OPTIMAL:
            assert r.bound <= o + 2e-4 * max(1.0, abs(r.bound))
            assert r.objective <= o + 1e-7 * (1 + abs(o))      # the stopping test's point is in the relaxation


@needs_bench
def test_mnist_256x4_last_layer_against_highs():
    """mnist 256x4 on prop_0 (DeepPoly bounds), 12 neurons of the last hidden layer maximised and minimised in
    one batch: every certified bound within 1e-3 (relative) above HiGHS's optimum, never below, and most of
    them OPTIMAL (the gap to a point of the relaxation closed; that point lags the bound, so a few may stop
    at the iteration limit, still certified)."""
    from equiv.spec.region import load_region
    net = load_cached(MNIST / "mnist-net_256x4.onnx")
    box = load_region(spec=MNIST / "prop_0_0.03.vnnlib")[0]
    bounds = deeppoly_bounds(net, box)
    k = 3
    todo = np.flatnonzero((bounds.lo[k] < 0) & (bounds.hi[k] > 0))[::8][:12]
    W, b = net.dense[k].W[todo], net.dense[k].b[todo]
    C, c0 = np.vstack([W, -W]), np.concatenate([b, -b])
    opt = _lp_optima(net, box, bounds, k, C, c0)
    rel = chain_relaxation(net, box, bounds, k)
    res = DagAdmm(rel).maximize_many(rel.on_last(C), c0, 300)
    U = np.array([r.bound for r in res])
    assert sum(r.status == Status.OPTIMAL for r in res) >= len(res) * 3 // 4
    assert (U >= opt - 1e-9 * (1 + np.abs(opt))).all()
    assert ((U - opt) / np.maximum(1.0, np.abs(opt)) <= 1e-3).all()


@needs_bench
@pytest.mark.parametrize("slopes", [0, 3])
def test_time_limit_still_certified(prop3_box, slopes):
    """ACAS Xu 1_1 prop_3, layer 5 over layers 1-4: with a limit that stops ADMM at its first check (cold, or
    after 3 slope steps), the results that did not stop say TIME_LIMIT, and every bound is still >= the
    optimum (a proof, only looser)."""
    net = load_cached(acas_path(1, 1))
    bounds = deeppoly_bounds(net, prop3_box)
    k = 4
    C, c0 = _queries(net, k, np.random.default_rng(1), n=5)
    opt = _lp_optima(net, prop3_box, bounds, k, C, c0)
    rel = chain_relaxation(net, prop3_box, bounds, k)
    res = DagAdmm(rel, max_iter=25, slope_iters=slopes).maximize_many(rel.on_last(C), c0, 60)
    stopped = [r for r in res if r.status == Status.TIME_LIMIT]
    assert all("certified" in r.message for r in stopped)
    assert len(stopped) == len(res) if slopes == 0 else len(stopped) + sum(r.status == Status.OPTIMAL for r in res) == len(res)
    assert all(r.bound >= o - 1e-9 * (1 + abs(o)) for r, o in zip(res, opt))


@needs_bench
def test_windowed_pipeline_with_admm_is_sound(prop3_box):
    """prove_stability's default (windowed) pipeline with --backend admm on ACAS Xu 1_1 prop_3: the LP step
    runs DagAdmm on each window; every bound contains sampled pre-activations, and it settles as many
    neurons as the pipeline with highs, give or take 2."""
    from equiv.prove.stability import StabilityOptions, prove_stability
    net = load_cached(acas_path(1, 1))
    ad = prove_stability(net, prop3_box, StabilityOptions(backend="admm"))
    hi = prove_stability(net, prop3_box, StabilityOptions(backend="highs"))
    x = prop3_box.sample(5000, np.random.default_rng(0))
    _, pre = net.forward(x, return_pre=True)
    for k, z in enumerate(pre[:-1]):
        assert (z >= ad.bounds.lo[k] - 1e-9).all() and (z <= ad.bounds.hi[k] + 1e-9).all()
    n_ad, n_hi = (r.count("dead") + r.count("active") for r in (ad, hi))
    assert abs(n_ad - n_hi) <= 2


@needs_bench
def test_large_lp_layers_go_to_admm_when_no_backend_is_chosen(prop3_box):
    """With lp_admm_rows (what the CLI sets without --backend) every chain LP layer at least that large runs
    DagAdmm: the report notes it, the bounds contain sampled pre-activations, and the stable count is
    HiGHS's give or take 2 (ADMM's bounds are within 1e-3 of the LP optimum)."""
    from equiv.prove.stability import StabilityOptions, prove_stability
    net = load_cached(acas_path(1, 1))
    small = Network.from_layers(net.dense[:5], net.masks[:4])
    auto = prove_stability(small, prop3_box, StabilityOptions(method="lp", lp_admm_rows=0))
    hi = prove_stability(small, prop3_box, StabilityOptions(method="lp"))
    assert any("ran on admm" in n for n in auto.notes) and not any("ran on admm" in n for n in hi.notes)
    x = prop3_box.sample(3000, np.random.default_rng(0))
    _, pre = small.forward(x, return_pre=True)
    for k, z in enumerate(pre):
        assert (z >= auto.bounds.lo[k] - 1e-9).all() and (z <= auto.bounds.hi[k] + 1e-9).all()
    n_auto, n_hi = (r.count("dead") + r.count("active") for r in (auto, hi))
    assert abs(n_auto - n_hi) <= 2


def test_cli_backend_default_turns_on_admm_for_large_lps():
    """Without --backend the CLI asks for highs with large chain LPs on admm; with --backend highs, none."""
    from equiv.cli import build_parser
    from equiv.commands.common import ADMM_AUTO_ROWS, stability_options
    import equiv.cli as cli
    for argv, rows in ((["bounds", "m.onnx", "--box", "0:1"], ADMM_AUTO_ROWS),
                       (["bounds", "m.onnx", "--box", "0:1", "--backend", "highs"], None)):
        args = build_parser().parse_args(argv)
        cli._resolve_backend(args)
        opt = stability_options(args, progress=False)
        assert opt.backend == "highs" and opt.lp_admm_rows == rows
