"""Optimised slopes (equiv.bounds.alpha, equiv.prove.graph_alpha): the hand-computed optimum of a tiny
net, never looser than DeepPoly, and sound on sampled points of a real residual network.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import CIFAR, CIFAR_REFERENCE, load_box, load_graph_cached, needs_cifar
from equiv.bounds.alpha import alpha_lower
from equiv.bounds.engine import _box_parts, backsubstitute, deeppoly_graph
from equiv.ir import Graph
from equiv.ir.ops import Add, Dense, Input, Relu
from equiv.prove.graph_alpha import alpha_stage
from equiv.spec.region import Box


def kink() -> Graph:
    """x in [-1, 1], y = relu(x) - x / 2: min 0 at x = 0.  DeepPoly's lower line h >= 0 gives -1/2; the
    slope a gives min_x (a - 1/2) x = -|a - 1/2|, so the optimum a = 1/2 reaches the true 0."""
    return Graph.build([("x", Input((1,)), []),
                        ("z", Dense((1,), W=np.array([[1.0]]), bias=None), ["x"]),
                        ("h", Relu((1,)), ["z"]),
                        ("v", Dense((1,), W=np.array([[-0.5]]), bias=None), ["x"]),
                        ("y", Add((1,), in_shapes=[(1,), (1,)]), ["h", "v"])], ["x"], ["y"])


def test_kink_reaches_the_optimum_deeppoly_misses():
    g, box = kink(), Box([-1.0], [1.0])
    b = deeppoly_graph(g, box)
    dp_lo, _ = backsubstitute(g, "y", np.array([0]), b, _box_parts(g, box), {})
    assert dp_lo[0] == pytest.approx(-0.5, abs=1e-9)
    low = alpha_lower(g, box, b, "y", np.array([0]), np.array([1.0]), iters=40)
    assert low[0] <= 0.0                       # sound: y(0) = 0
    assert low[0] >= -0.05                     # and close to the optimum 0 (Adam from a = 0)
    # upper side: -y >= -max y = -1/2 (x = -1 and x = 1 both give 1/2); no slope does better than exact
    up = alpha_lower(g, box, b, "y", np.array([0]), np.array([-1.0]), iters=20)
    assert -0.5 - 1e-6 <= up[0] <= -0.5


@needs_cifar
def test_resnet_slopes_sound_and_never_looser_than_deeppoly():
    spec, _ = CIFAR_REFERENCE["resnet_2b"]
    g = load_graph_cached(CIFAR / "resnet_2b.onnx")
    box = load_box(CIFAR / spec)
    b = deeppoly_graph(g, box)
    r = g.relus[1]
    z = g.args(r)[0]
    lo, hi = b.lo[z].reshape(-1), b.hi[z].reshape(-1)
    rows = np.flatnonzero((lo < 0) & (hi > 0))[:24]
    assert rows.size > 0
    signs = np.where(np.arange(rows.size) % 2 == 0, 1.0, -1.0)
    low = alpha_lower(g, box, b, z, rows, signs, iters=8)
    dp = np.where(signs > 0, lo[rows], -hi[rows])
    assert np.all(low >= dp - 1e-9 * (1 + np.abs(dp)))      # DeepPoly's slopes are the start: never worse
    assert np.any(low > dp + 1e-6)                           # and the ascent does improve some rows
    rng = np.random.default_rng(7)
    n = 256
    x = rng.uniform(box.lo, box.hi, size=(n, box.lo.size))
    x[: n // 2] = np.where(rng.random((n // 2, box.lo.size)) < 0.5, box.lo, box.hi)   # corners of the box
    vals = g.evaluate(x)[z].reshape(n, -1)[:, rows]
    assert np.all(signs * vals >= low - 1e-6 * (1 + np.abs(low)))


@needs_cifar
def test_alpha_stage_never_contradicts_a_sample():
    spec, _ = CIFAR_REFERENCE["cifar_wide_kw"]
    g = load_graph_cached(CIFAR / "cifar_wide_kw.onnx")
    box = load_box(CIFAR / spec)
    b0 = deeppoly_graph(g, box)
    rng = np.random.default_rng(3)
    x = rng.uniform(box.lo, box.hi, size=(64, box.lo.size))
    vals = g.evaluate(x)
    pos = {r: (vals[g.args(r)[0]] > 0).any(axis=0).reshape(-1) for r in g.relus}
    neg = {r: (vals[g.args(r)[0]] < 0).any(axis=0).reshape(-1) for r in g.relus}
    b1, stats = alpha_stage(g, box, b0, pos, neg, iters=6)
    assert stats["alpha_rows"] > 0
    for r in g.relus:
        z = g.args(r)[0]
        lo0, hi0 = b0.lo[z].reshape(-1), b0.hi[z].reshape(-1)
        lo1, hi1 = b1.lo[z].reshape(-1), b1.hi[z].reshape(-1)
        assert np.all(lo1 >= lo0) and np.all(hi1 <= hi0)
        v = vals[z].reshape(64, -1)
        assert np.all(v >= lo1 - 1e-6 * (1 + np.abs(lo1))) and np.all(v <= hi1 + 1e-6 * (1 + np.abs(hi1)))
