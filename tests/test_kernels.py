"""The fused back-substitution loops (`bounds.kernels`, numba) against the numpy steps they replace: the same
coefficients and intercepts on random relaxations (stable, unstable and masked positions, kept columns,
one coefficient array broadcast over the boxes), and sound, equal pair bounds when every step is fused."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import ACAS, acas_path, needs_bench, tiny_net
from equiv.bounds import kernels
from equiv.bounds.diff import output_bounds, pair_bounds
from equiv.bounds.relax import diff_step, prepare, prepare_diff, relu_step
from equiv.ir.chain_graph import network_graph
from equiv.ir.ops import ReluDiff
from equiv.prove.align import align
from test_pair_graph import _random_pair


def test_numba_is_there():
    assert kernels.compiled() is not None, "numba is a dependency: the fused loops must load"


def _bounds(r, N, K):
    """Random pre-activation bounds with stable-dead, stable-active, unstable and degenerate positions."""
    lo = r.normal(size=(N, K))
    hi = lo + np.abs(r.normal(size=(N, K))) * r.choice([0.0, 1.0, 3.0], size=(N, K))
    return lo, hi


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 5), st.integers(1, 6), st.integers(1, 9), st.booleans())
def test_relu_step_fused_equals_numpy(seed, N, R, K, broadcast):
    r = np.random.default_rng(seed)
    # a real ReLU node (of a tiny net's graph), some of its positions masked linear
    net = tiny_net([(r.normal(size=(K, 2)).tolist(), r.normal(size=K).tolist()),
                    (r.normal(size=(1, K)).tolist(), [0.0])], masks=[r.random(K) < 0.8])
    g = network_graph(net)
    lo, hi = _bounds(r, N, K)
    rx = prepare(g, g.relus[0], lo, hi)
    cols = K if rx.keep is None else rx.keep.size      # (dead columns dropped before a Dense op)
    a = r.normal(size=(1 if broadcast else N, R, cols)) * r.choice([0.0, 1.0], size=(1 if broadcast else N, R, cols))
    want_out, want_c = _numpy_relu(rx, a)
    got_out, got_c = kernels.relu_fused(a, *rx.full_lines())
    np.testing.assert_allclose(got_out, want_out, rtol=1e-14, atol=0)
    np.testing.assert_allclose(got_c, want_c, rtol=1e-12, atol=1e-14)


def _numpy(step, rx, *args):
    """step(rx, *args) by the numpy code (the loops switched off)."""
    saved = kernels.FUSED_MIN, kernels.FUSED_LOADED_MIN
    kernels.FUSED_MIN = kernels.FUSED_LOADED_MIN = np.inf
    try:
        return step(rx, *args)
    finally:
        kernels.FUSED_MIN, kernels.FUSED_LOADED_MIN = saved


def _numpy_relu(rx, a):
    keep, rx.keep = rx.keep, None      # a already holds the kept columns
    try:
        return _numpy(relu_step, rx, a)
    finally:
        rx.keep = keep


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 5), st.integers(1, 6), st.integers(1, 9), st.booleans())
def test_diff_step_fused_equals_numpy(seed, N, R, K, broadcast):
    r = np.random.default_rng(seed)
    op = ReluDiff((1, K), r.random(K) < 0.8, r.random(K) < 0.1, r.random(K) < 0.8, r.random(K) < 0.1)
    # bounds of (dz, z_g, z_f) with z_f = z_g + dz
    glo, ghi = _bounds(r, N, K)
    dlo = -np.abs(r.normal(scale=0.3, size=(N, K)))
    dhi = np.abs(r.normal(scale=0.3, size=(N, K))) * r.choice([0.0, 1.0], size=(N, K))
    lo = [dlo.reshape(N, 1, K), glo.reshape(N, 1, K), (glo + dlo).reshape(N, 1, K)]
    hi = [dhi.reshape(N, 1, K), ghi.reshape(N, 1, K), (ghi + dhi).reshape(N, 1, K)]
    rx = prepare_diff(op, lo, hi)
    a = r.normal(size=(1 if broadcast else N, R, K)) * r.choice([0.0, 1.0], size=(1 if broadcast else N, R, K))
    want = _numpy(diff_step, rx, a, True)
    got = kernels.diff_fused(a, rx.full_lines())
    for g_, w_ in zip(got, want):
        np.testing.assert_allclose(g_, w_, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("seed", range(6))
def test_pair_bounds_fused_are_sound_and_equal(seed, monkeypatch):
    """Every step fused (FUSED_MIN 0) on random pairs with linear channels, on 8 boxes at once: the bounds of
    the numpy steps up to summation order, and they contain sampled differences."""
    f, g = _random_pair(seed, linear=seed % 2 == 0)
    pair = align(f, g)
    r = np.random.default_rng(seed)
    c = r.normal(size=(8, 2))
    lo, hi = c - 0.5, c + 0.5
    monkeypatch.setattr(kernels, "FUSED_MIN", np.inf)
    monkeypatch.setattr(kernels, "FUSED_LOADED_MIN", np.inf)
    want = pair_bounds(pair, lo, hi)
    want_out = output_bounds(pair, want, np.eye(f.n_outputs), "d")
    monkeypatch.setattr(kernels, "FUSED_MIN", 0)
    monkeypatch.setattr(kernels, "FUSED_LOADED_MIN", 0)
    got = pair_bounds(pair, lo, hi)
    got_out = output_bounds(pair, got, np.eye(f.n_outputs), "d")
    for a, b in zip(got.d_lo + got.d_hi + list(got_out), want.d_lo + want.d_hi + list(want_out)):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    X = lo[:, None] + (hi - lo)[:, None] * r.random(size=(8, 500, 2))
    diff = np.stack([f.forward(x) - g.forward(x) for x in X])          # (8, 500, outputs)
    assert np.all(diff.min(axis=1) >= got_out[0] - 1e-12) and np.all(diff.max(axis=1) <= got_out[1] + 1e-12)


@needs_bench
def test_acas_float16_check_same_with_and_without_fused(monkeypatch):
    """A real check (ACAS Xu 1_1 against its float16 copy on prop_1's box: about 200 boxes in batches big
    enough for the loops): the same verdict, the same boxes and bounds equal to 1e-9 with and without them."""
    from equiv.bench.equivalence import float16_copy
    from equiv.artifacts.validate import OnnxRunner
    from equiv.ir.chain_export import network_to_onnx
    from equiv.ir.chain_io import load_onnx
    from equiv.prove.equivalence.result import CheckOptions
    from equiv.prove.equivalence.search import check_networks
    from equiv.spec.region import load_region
    path = acas_path(1, 1)
    f = load_onnx(path)
    gnet = float16_copy(f)
    box, _ = load_region(spec=str(ACAS / "prop_1.vnnlib"))
    out = {}
    for fuse in (False, True):
        monkeypatch.setattr(kernels, "FUSED_MIN", 0 if fuse else np.inf)
        monkeypatch.setattr(kernels, "FUSED_LOADED_MIN", 0 if fuse else np.inf)
        r = check_networks(f, gnet, box, OnnxRunner(str(path)), OnnxRunner(network_to_onnx(gnet)),
                           CheckOptions(norm="linf", epsilon=0.05, time_limit=60, progress=False))
        out[fuse] = r
    assert out[True].verdict == out[False].verdict == "equivalent"
    assert out[True].stats["boxes"] == out[False].stats["boxes"] > 1
    assert out[True].max_diff_upper == pytest.approx(out[False].max_diff_upper, rel=1e-9)


def test_one_box_lines_under_many_coefficient_arrays_stay_with_numpy(monkeypatch):
    """Lines of one box (N = 1) against coefficients of 4 (n = 4): numpy broadcasts; the loops would read
    only the first array, so `worth` sends this case to numpy, and the result has all 4."""
    monkeypatch.setattr(kernels, "FUSED_MIN", 0)
    monkeypatch.setattr(kernels, "FUSED_LOADED_MIN", 0)
    r = np.random.default_rng(3)
    net = tiny_net([(r.normal(size=(5, 2)).tolist(), r.normal(size=5).tolist()), (r.normal(size=(1, 5)).tolist(), [0.0])])
    g = network_graph(net)
    lo, hi = _bounds(r, 1, 5)
    rx = prepare(g, g.relus[0], lo - 1.0, hi + 1.0)
    a = r.normal(size=(4, 3, 5))        # (relu_step drops the dead columns itself)
    assert not kernels.worth(1, a)
    out, c = relu_step(rx, a)
    assert out.shape[0] == 4 and c.shape == (4, 3)
    want = _numpy(relu_step, rx, a)
    np.testing.assert_array_equal(out, want[0])
    np.testing.assert_array_equal(c, want[1])
