"""Top-1 checks on regions too wide to split, decided by each network's own margins (`equivalence/margins.py`):
the margin network computes the margins, every `equivalent` survives onnxruntime sampling, a class change is
never proved away, and the real MNIST pruned pair is decided with one-network MILPs."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import random_problem
from equiv.artifacts.validate import OnnxRunner
from equiv.bench.equivalence import pruned_copy
from equiv.ir.chain_io import network_to_onnx
from equiv.ir.network import Dense
from equiv.prove.equivalence import CheckOptions, check_networks
from equiv.prove.equivalence.margins import margin_network
from equiv.spec.region import Box


def _check(f, g, box, **kw):
    kw.setdefault("samples", 500)
    # split_max_inputs=0: every region counts as too wide to split, so small nets take the margins route
    kw.setdefault("split_max_inputs", 0)
    return check_networks(f, g, box, OnnxRunner(network_to_onnx(f)), OnnxRunner(network_to_onnx(g)),
                          CheckOptions(norm="top1", time_limit=60.0, **kw))


def _argmax_agree(f, g, box: Box, n: int = 10000, seed: int = 3) -> bool:
    """Whether the two networks pick the same class at n random points, the corners and the centre, in onnxruntime."""
    rng = np.random.default_rng(seed)
    X = np.vstack([box.sample(n, rng), box.corners(limit=1024), box.center[None]]).astype(np.float32)
    a, b = OnnxRunner(network_to_onnx(f))(X), OnnxRunner(network_to_onnx(g))(X)
    return bool(np.all(a.argmax(axis=1) == b.argmax(axis=1)))


def test_margin_network_computes_relu_of_the_margins(rng):
    net, box = random_problem(5, 4, [7, 6], 4, linear_channels=True)
    X = box.sample(300, rng)
    y = net.forward(X)
    for c in range(4):
        m = margin_network(net, c).forward(X)
        want = np.maximum(y[:, [c]] - np.delete(y, c, axis=1), 0.0)
        assert np.allclose(m, want, atol=1e-9)


def _robust_problem(seed: int, scale: float):
    """A random net whose class is constant on a small box (its margins there are large), and a copy with its
    weights moved by `scale` (relative)."""
    f, box = random_problem(seed, 6, [8, 8], 3, linear_channels=False)
    r = np.random.default_rng(seed + 1)
    # a small box around a point where one class wins clearly
    X = box.sample(2000, r)
    y = f.forward(X)
    top = np.sort(y, axis=1)
    x0 = X[np.argmax(top[:, -1] - top[:, -2])]
    small = Box(np.maximum(box.lo, x0 - 0.02 * (box.hi - box.lo)), np.minimum(box.hi, x0 + 0.02 * (box.hi - box.lo)))
    dense = [Dense(d.W * (1 + scale * r.normal(size=d.W.shape)), d.b.copy()) for d in f.dense]
    return f, f.with_layers(dense, f.masks), small


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10 ** 6))
def test_decided_margins_hold_at_sampled_points(seed):
    """decide_margins proves m_k > t only where every sampled point has m_k > t; above the sampled minimum
    it never proves anything."""
    from equiv.bounds.common import Bounds
    from equiv.bounds.deeppoly import deeppoly_bounds
    from equiv.prove.equivalence.ledger import _Clock
    from equiv.prove.equivalence.margins import decide_margins
    f, _, box = _robust_problem(seed, 0.0)
    c = int(f.forward(box.center[None])[0].argmax())
    fm = margin_network(f, c)
    b = deeppoly_bounds(f, box)
    hidden = Bounds(b.lo[:-1], b.hi[:-1])
    X = np.vstack([box.sample(20000, np.random.default_rng(seed)), box.corners(limit=1024)])
    y = f.forward(X)
    seen = (y[:, [c]] - np.delete(y, c, axis=1)).min(axis=0)
    stats = {"milp_queries": 0, "milp_unknown": 0}
    opt = CheckOptions(norm="top1")
    for t in (seen - 0.05 * np.abs(seen) - 1e-3, seen + 1e-3):
        ok, pts = decide_margins(fm, box, hidden, t, np.arange(2), opt, _Clock(60.0), stats)
        assert np.all(seen[ok] > t[ok])
    assert not ok.any() and len(pts) == 2          # above the sampled minimum: a point each, no proof


@pytest.mark.parametrize("bab", [False, True])
def test_side_by_side_margins_decide_what_one_by_one_decides(bab):
    """Two margin networks (f and its perturbed copy) decided on two threads: the same proofs and points as
    one call after the other, the stats merged; with work for only one network it runs alone.  By MILP
    alone, or branch and bound first (which decides these small nets without a MILP)."""
    from equiv.bounds.common import Bounds
    from equiv.bounds.deeppoly import deeppoly_bounds
    from equiv.prove.equivalence.ledger import _Clock
    from equiv.prove.equivalence.margins import decide_margins, decide_side_by_side
    for seed in (1, 2, 3):
        f, g, box = _robust_problem(seed, 0.05)
        c = int(f.forward(box.center[None])[0].argmax())
        runs, seen = [], []
        for net in (f, g):
            b = deeppoly_bounds(net, box)
            y = net.forward(np.vstack([box.sample(5000, np.random.default_rng(seed)), box.corners(limit=1024)]))
            seen.append((y[:, [c]] - np.delete(y, c, axis=1)).min(axis=0))
            runs.append((margin_network(net, c), Bounds(b.lo[:-1], b.hi[:-1]), np.arange(2)))
        low = 0.5 * np.maximum(np.minimum(*seen), 0.0)       # below both sampled minima: proved here
        high = np.maximum(*seen) + 1e-3                      # above both: a point each, no proof
        opt = CheckOptions(norm="top1", bab=bab)
        for t, proved in ((low, True), (high, False)):
            one = [decide_margins(m, box, h, t, todo, opt, _Clock(60.0), {"milp_queries": 0, "milp_unknown": 0})
                   for m, h, todo in runs]
            stats = {"milp_queries": 0, "milp_unknown": 0}
            both = decide_side_by_side(runs, box, t, opt, _Clock(60.0), stats)
            for (ok1, pts1), (ok2, pts2) in zip(one, both):
                assert np.array_equal(ok1, ok2) and len(pts1) == len(pts2) and ok2.all() == proved
                assert len(pts2) == (0 if proved else 2)
            how = [q[2] for q in stats["margin_query_seconds"]]
            assert len(how) == 4 and stats["milp_queries"] == how.count("milp")
            assert how.count("bab") == (4 if bab else 0) == stats.get("bab_queries", 0)
            assert stats["milp_unknown"] == (0 if proved or bab else 4)
        alone = {"milp_queries": 0, "milp_unknown": 0}
        (ok_f, _), (ok_g, _) = decide_side_by_side([runs[0], runs[1][:2] + (np.arange(0),)], box, low, opt,
                                                   _Clock(60.0), alone)
        assert ok_f.all() and not ok_g.any() and len(alone["margin_query_seconds"]) == 2


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10 ** 6), scale=st.sampled_from([1e-3, 0.05, 0.5]))
def test_verdicts_agree_with_sampling(seed, scale):
    f, g, box = _robust_problem(seed, scale)
    res = _check(f, g, box)
    if res.verdict == "equivalent":
        assert _argmax_agree(f, g, box)
    elif res.verdict == "not_equivalent":
        x = res.counterexample.input.astype(float)
        assert box.contains(x[None])[0]
        assert f.forward(x).argmax() != g.forward(x).argmax()


def test_close_copy_is_proved_by_margins():
    f, g, box = _robust_problem(11, 1e-3)
    res = _check(f, g, box)
    assert res.verdict == "equivalent"
    assert {p.method for p in res.pieces} == {"margins"}
    assert res.stats["margins_proved"] == "2 of 2"
    assert _argmax_agree(f, g, box)


def test_a_class_change_is_not_proved_away():
    """g's bias makes another class win on part of the box: the margins route must not say equivalent."""
    f, _, box = _robust_problem(11, 0.0)
    y = f.forward(box.sample(2000, np.random.default_rng(0)))
    c = int(y[0].argmax())
    m = y[:, c][:, None] - np.delete(y, c, axis=1)
    k = int(np.delete(np.arange(3), c)[m.min(axis=0).argmin()])
    last = f.dense[-1]
    b = last.b.copy()
    # lift class k by the median of its margin: it now wins on about half of the box
    b[k] += float(np.median(y[:, c] - y[:, k]))
    g = f.with_layers(list(f.dense[:-1]) + [Dense(last.W.copy(), b)], f.masks)
    res = _check(f, g, box)
    assert res.verdict == "not_equivalent"
    x = res.counterexample.input.astype(float)
    assert f.forward(x).argmax() != g.forward(x).argmax()


def test_mnist_pruned_copy_top1_by_margins(bench, mnist_256x2, mnist_box):
    """MNIST 256x2 against its 10 %-pruned copy on prop_0 (784 inputs): decided by margins, sampled agreement."""
    f = mnist_256x2
    g = pruned_copy(f, 0.1)
    res = check_networks(f, g, mnist_box, OnnxRunner(network_to_onnx(f)), OnnxRunner(network_to_onnx(g)),
                         CheckOptions(norm="top1", time_limit=120.0, samples=2000))
    assert res.verdict == "equivalent"
    assert {p.method for p in res.pieces} == {"margins"}
    assert _argmax_agree(f, g, mnist_box)
