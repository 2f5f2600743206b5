"""The branch and bound's fused search loops (`prove/bab_kernels.py`) against the numpy steps they replace
(random domains mixing dead, active, unstable, split and no-ReLU positions, float64 and float32), the
float32 search's corners inside the box, and the same decisions with and without the loops on a real
MNIST network."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from equiv.prove import relu_bab
from equiv.prove.bab_kernels import loops

BENCH = Path(__file__).resolve().parents[2] / "shared" / "benchmarks"


def _random_search(seed: int, dtype):
    """A random chain and D domains whose bounds, splits, slopes and multipliers cover every case."""
    r = np.random.default_rng(seed)
    n_in, K, D = int(r.integers(1, 6)), int(r.integers(1, 4)), int(r.integers(1, 7))
    widths = [int(w) for w in r.integers(1, 9, K)]
    sizes = [n_in] + widths
    layers = [(r.normal(size=(b, a)), r.normal(size=b)) for a, b in zip(sizes, sizes[1:])]
    masks = [r.random(w) < 0.8 for w in widths]
    lo = r.normal(size=n_in)
    hi = lo + r.uniform(0, 2, n_in)
    chain = relu_bab._Chain(layers, masks, lo, hi, r.normal(size=(3, widths[-1])), r.normal(size=3))
    L = [r.normal(size=(D, w)) for w in widths]
    U = [l + np.where(r.random(l.shape) < 0.2, 0.0, r.uniform(0, 3, l.shape)) for l in L]   # some l = u
    S = [r.choice([-1.0, 0.0, 1.0], size=(D, w)) for w in widths]
    alpha = [r.uniform(0, 1, (D, w)) for w in widths]
    beta = [np.where(r.random((D, w)) < 0.5, 0.0, r.uniform(0, 2, (D, w))) for w in widths]
    dom = relu_bab._Domains(L, U, S, alpha, beta, r.integers(0, 3, D))
    if dtype == np.float32:
        chain, dom = chain.single(), dom.astype(np.float32)
    return chain, dom


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10 ** 6), single=st.booleans())
def test_fused_search_step_is_the_numpy_step(seed, single):
    """Bound, kept relaxation, gradients and corner of `_lower(grad=True)` agree with the numpy path."""
    dtype = np.float32 if single else np.float64
    chain, dom = _random_search(seed, dtype)
    low, kept, (ga, gb, x) = relu_bab._lower(chain, dom, grad=True)
    flow, fkept, (fga, fgb, fx) = relu_bab._lower(chain, dom, grad=True, fused=loops())
    tol = dict(rtol=1e-4, atol=1e-4) if single else dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(flow, low, **tol)
    for (a, u, su, tu), (fa, fu, fsu, ftu) in zip(kept, fkept):
        np.testing.assert_array_equal(fu, u)
        for p, q in ((fa, a), (fsu, su), (ftu, tu)):
            np.testing.assert_allclose(p, q, **tol)
    for p, q in zip(fga + fgb, ga + gb):
        np.testing.assert_allclose(p, q, **tol)
    if not single:          # (float32 coefficients near 0 may pick the other corner: any corner is fine)
        np.testing.assert_array_equal(fx, x)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10 ** 6), it=st.integers(1, 50), top=st.sampled_from([1.0, np.inf]))
def test_fused_adam_step_is_numpys(seed, it, top):
    """The fused Adam step against numpy's, also where the gradient and first moment are 0 (the loop skips
    those: a stable neuron's slope, an unsplit neuron's multiplier), with or without a second moment."""
    r = np.random.default_rng(seed)
    P, G = r.uniform(0, 1, (4, 7)), r.normal(size=(4, 7))
    m, v = r.normal(size=(4, 7)) * 0.1, r.uniform(0, 0.1, (4, 7))
    idle = r.random((4, 7)) < 0.4
    G[idle], m[idle] = 0.0, 0.0
    v[idle & (r.random((4, 7)) < 0.5)] = 0.0
    m2 = 0.9 * m + 0.1 * G
    v2 = 0.999 * v + 0.001 * G * G
    want = np.clip(P + 0.1 * (m2 / (1 - 0.9 ** it)) / (np.sqrt(v2 / (1 - 0.999 ** it)) + 1e-8), 0.0, top)
    loops()[2](P, G, m, v, 0.1, top, 1 - 0.9 ** it, 1 - 0.999 ** it)
    np.testing.assert_allclose(P, want, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(m, m2, rtol=1e-12)
    np.testing.assert_allclose(v, v2, rtol=1e-12)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10 ** 6))
def test_float32_search_returns_corners_of_the_float64_box(seed):
    """The search runs in float32, whose copy of lo or hi can lie outside the box: the corners it returns
    (candidate witnesses) are the box's own float64 ends."""
    chain, dom = _random_search(seed, np.float64)
    chain.lo = chain.lo + 1e-9 * np.random.default_rng(seed).random(chain.lo.size)   # not float32 values
    x = relu_bab._optimise(chain, dom, iters=3)
    assert x.dtype == np.float64
    assert np.all((x == chain.lo) | (x == chain.hi))


@pytest.mark.skipif(not (BENCH / "mnist_fc").is_dir(), reason="needs ../shared/benchmarks")
def test_same_decisions_with_and_without_the_loops_on_mnist(monkeypatch):
    """Layer 2 phase questions of mnist 256x4 on prop_0 (both sides of its open neurons): the fused search and
    numpy's decide them the same way (a proof is never the other run's witness)."""
    from equiv.bounds import deeppoly_bounds
    from equiv.ir.chain_io import load_onnx
    from equiv.spec.region import load_region
    net = load_onnx(BENCH / "mnist_fc" / "mnist-net_256x4.onnx")
    box = load_region(spec=str(BENCH / "mnist_fc" / "prop_0_0.03.vnnlib"))[0]
    b = deeppoly_bounds(net, box)
    k = 2
    rows = np.flatnonzero((b.lo[k] < 0) & (b.hi[k] > 0))
    rows, sign = np.r_[rows, rows], np.r_[np.ones(rows.size), -np.ones(rows.size)]
    args = ([(d.W, d.b) for d in net.dense[:k]], net.masks[:k], box.lo, box.hi, b.lo[:k], b.hi[:k],
            sign[:, None] * net.dense[k].W[rows], sign * net.dense[k].b[rows], np.zeros(rows.size))
    assert relu_bab.wanted(128, [256, 256]) is not None          # the loops load for a batch this size
    fused = relu_bab.decide_many(*args, time_limit=30.0)
    monkeypatch.setattr(relu_bab, "wanted", lambda *a: None)
    plain = relu_bab.decide_many(*args, time_limit=30.0)
    verdicts = [(f.verdict, p.verdict) for f, p in zip(fused, plain)]
    assert sum(f == "below" for f, _ in verdicts) >= 10 and sum(f == "above" for f, _ in verdicts) >= 10
    assert all({f, p} != {"below", "above"} for f, p in verdicts)
    assert sum(f == p for f, p in verdicts) >= 0.9 * len(verdicts)
    for r in fused + plain:
        if r.verdict == "above":
            assert box.contains(r.x[None])[0]
