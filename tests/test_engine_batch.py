"""The graph engine on N boxes at once (equiv.bounds.engine.interval_boxes / deeppoly_boxes): hand-computed exact
bounds of a residual block on three boxes, the same per-box bounds as N one-box runs (tiny DAGs, random DAGs, the
real networks), sound input-space linear bounds, sampled soundness on real networks, and the Network -> Graph
converter the chain code runs on."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import (
    ACAS,
    CIFAR,
    MNIST,
    acas_path,
    load_box,
    load_graph_cached,
    needs_bench,
    needs_cifar,
    small_problems,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_graph_bounds import assert_exact, concat_net, residual_block, small_dags, two_input_net

from equiv.bounds.engine import deeppoly_boxes, deeppoly_graph, interval_boxes, interval_graph
from equiv.ir.chain_graph import dense_names, network_graph
from equiv.spec.region import Box


def sub_boxes(box: Box, n: int, rng: np.random.Generator, shrink: float = 1.0):
    """n random sub-boxes of `box` as (n, dim) arrays; the first is degenerate in coordinate 0."""
    a = box.lo + rng.random((n, box.dim)) * (box.hi - box.lo)
    b = box.lo + shrink * rng.random((n, box.dim)) * (box.hi - box.lo)
    b = np.minimum(b, box.hi)
    b[0, 0] = a[0, 0]
    return np.minimum(a, b), np.maximum(a, b)


def assert_per_box_equal(g, lo, hi, rtol=1e-10):
    """Batched interval and DeepPoly bounds of every tensor equal the one-box bounds of each box."""
    ib = interval_boxes(g, lo, hi)
    db, _ = deeppoly_boxes(g, lo, hi, all_nodes=True)
    for n in range(lo.shape[0]):
        box = Box(lo[n], hi[n])
        for batched, one in ((ib, interval_graph(g, box)), (db, deeppoly_graph(g, box))):
            for name in g.order:
                for got, want in ((batched.lo[name][n], one.lo[name]), (batched.hi[name][n], one.hi[name])):
                    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol, err_msg=f"box {n}, '{name}'")
    return ib, db


def test_residual_block_on_three_boxes_exact():
    g = residual_block()      # y = x - relu(W x + b), W = [[1, 0], [1, 1]], b = [0, 0.5]
    lo = np.array([[-1.0, -1.0], [0.0, -1.0], [0.5, -0.25]])
    hi = np.array([[1.0, 1.0], [1.0, 1.0], [0.5, -0.25]])
    db, _ = deeppoly_boxes(g, lo, hi)
    assert db.lo["y"].shape == (3, 2)
    # box 0 is test_graph_bounds' residual box: y1 in [-1, 1], y2 in [-2.25, 0.5].
    assert_exact(g, db.lo["y"][0], db.hi["y"][0], [-1, -2.25], [1, 0.5], "box 0")
    # box 1, x1 in [0, 1], x2 in [-1, 1]: z1 = x1 >= 0 is active, so y1 = x1 - z1 = 0 exactly;
    # z2 = x1 + x2 + 0.5 in [-0.5, 2.5], u > -l: h2 >= z2, h2 <= 2.5/3 (z2 + 0.5).
    # y2 = x2 - h2 <= x2 - z2 = -x1 - 0.5 <= -0.5;  y2 >= x2 - 5/6 (x1 + x2 + 1) >= -1/6 - 5/6 - 5/6 = -11/6.
    assert_exact(g, db.lo["y"][1], db.hi["y"][1], [0, -11 / 6], [0, -0.5], "box 1")
    # box 2, the point (0.5, -0.25): both ReLUs active, y = x - W x - b = (0, -1)
    assert_exact(g, db.lo["y"][2], db.hi["y"][2], [0, -1], [0, -1], "box 2")
    assert_per_box_equal(g, lo, hi)


@pytest.mark.parametrize("make", [residual_block, concat_net, two_input_net], ids=["residual", "concat", "two_inputs"])
def test_tiny_graphs_batched_equals_one_box(make):
    g = make()
    box = Box(-np.ones(g.n_inputs), np.ones(g.n_inputs))
    lo, hi = sub_boxes(box, 7, np.random.default_rng(3))
    assert_per_box_equal(g, lo, hi)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problem=small_dags(), seed=st.integers(0, 2 ** 32 - 1))
def test_random_dags_batched_equals_one_box_and_sound(problem, seed):
    g, box = problem
    rng = np.random.default_rng(seed)
    lo, hi = sub_boxes(box, 4, rng)
    assert_per_box_equal(g, lo, hi)
    # the input-space linear bounds of the back-substituted rows hold on their boxes
    _, forms = deeppoly_boxes(g, lo, hi, coef=True)
    for n in range(4):
        x = np.vstack([Box(lo[n], hi[n]).sample(100, rng), lo[n][None], hi[n][None]])
        vals = g.evaluate(x)
        for name, (rows, Al, bl, Au, bu) in forms.items():
            v = vals[name].reshape(len(x), -1)[:, rows]
            assert np.all(v <= x @ Au[n].T + bu[n] + 1e-9) and np.all(v >= x @ Al[n].T + bl[n] - 1e-9), name


def _real(path, spec, n, shrink, samples):
    g, box = load_graph_cached(path), load_box(spec)
    rng = np.random.default_rng(5)
    lo, hi = sub_boxes(box, n, rng, shrink)
    ib, db = assert_per_box_equal(g, lo, hi, rtol=1e-8)
    for k in range(n):
        vals = g.evaluate(Box(lo[k], hi[k]).sample(samples, rng))
        for name in g.order:
            v = vals[name].reshape(samples, -1)
            for b in (ib, db):
                l, h = b.lo[name][k].reshape(-1), b.hi[name][k].reshape(-1)
                assert np.all(v >= l - 1e-6 * (1 + np.abs(l))) and np.all(v <= h + 1e-6 * (1 + np.abs(h))), name
    return g, db


@needs_bench
@pytest.mark.parametrize("path, spec", [(lambda: acas_path(1, 1), lambda: ACAS / "prop_3.vnnlib"),
                                        (lambda: MNIST / "mnist-net_256x2.onnx", lambda: MNIST / "prop_0_0.03.vnnlib")],
                         ids=["acas_1_1", "mnist_256x2"])
def test_real_chains_batched(path, spec):
    g, db = _real(path(), spec(), 6, 0.3, 300)
    # smaller boxes: no fewer stable ReLUs than on the whole region
    whole = deeppoly_graph(g, load_box(spec())).counts(g)["stable"]
    for k in range(6):
        one = type(db)({n: a[k] for n, a in db.lo.items()}, {n: a[k] for n, a in db.hi.items()})
        assert one.counts(g)["stable"] >= whole


@needs_cifar
def test_resnet_batched():
    _real(CIFAR / "resnet_2b.onnx", CIFAR / "resnet_2b-img386-eps2_255.vnnlib", 2, 0.5, 50)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small_problems())
def test_network_graph_computes_the_network(problem):
    net, box = problem
    g = network_graph(net)
    x = np.vstack([box.sample(50, np.random.default_rng(0)), box.center[None]])
    out, pre = net.forward(x, return_pre=True)
    vals = g.evaluate(x)
    np.testing.assert_allclose(g.forward(x), out, rtol=1e-12, atol=1e-12)
    for z, name in zip(pre + [out], dense_names(net)):
        np.testing.assert_allclose(vals[name], z, rtol=1e-12, atol=1e-12)
    assert g.n_relus == net.n_relus and network_graph(net) is g
