"""Block summaries (equiv.bounds.blocks): hand-computed exact summaries of a tiny 2-block chain, every summary
contains the sampled behaviour of its block (block inputs sampled within their bounds, and real inputs on
the real networks), the bounds made with summaries are sound and close to full DeepPoly, the blocks
found on real networks, and batched = one-box runs with blocks."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import CIFAR, MNIST, load_box, load_graph_cached, needs_bench, needs_cifar, random_problem, tiny_net
from test_engine_batch import sub_boxes
from test_graph_bounds import assert_values_inside

from equiv.bounds.blocks import auto_k, chain_blocks, find_blocks, residual_blocks
from equiv.bounds.engine import deeppoly_boxes, deeppoly_graph
from equiv.ir.chain_graph import network_graph
from equiv.spec.region import Box


def two_block_chain():
    """z1 = (x1 + x2, x1 - x2), h1 = relu(z1), z2 = h1_1 - h1_2, h2 = relu(z2), y = h2; on x1 in [-1, 1],
    x2 in [0, 1]; with one ReLU layer per block: blocks input -> h1 and h1 -> h2."""
    net = tiny_net([([[1, 1], [1, -1]], [0, 0]), ([[1, -1]], [0]), ([[1]], [0])])
    return network_graph(net), Box([-1.0, 0.0], [1.0, 1.0])


def test_two_block_chain_exact_summaries():
    g, box = two_block_chain()
    r1, r2 = g.relus
    assert [(b.start, b.end) for b in find_blocks(g, 1)] == [("input", r1), (r1, r2)]
    sm = deeppoly_graph(g, box, blocks=1).summaries
    # block 1: z1_1 in [-1, 2] -> upper line 2/3 (z + 1), lower line z (u > -l);
    #          z1_2 in [-2, 1] -> upper line 1/3 (z + 2), lower line 0
    s1 = sm[r1]
    np.testing.assert_allclose(s1.L[0], [[1, 1], [0, 0]], atol=1e-12)
    np.testing.assert_allclose(s1.l[0], [0, 0], atol=1e-12)
    np.testing.assert_allclose(s1.U[0], [[2 / 3, 2 / 3], [1 / 3, -1 / 3]], atol=1e-12)
    np.testing.assert_allclose(s1.u[0], [2 / 3, 2 / 3], atol=1e-12)
    # z2 = h1_1 - h1_2: interval [0 - 1, 2 - 0] = [-1, 2]; DeepPoly through block 1:
    # upper 2/3 (x1 + x2) + 2/3 <= 2, lower (x1 + x2) - (1/3 (x1 - x2) + 2/3) >= -4/3; so [-1, 2]
    # block 2 over h1: upper 2/3 (h1_1 - h1_2) + 2/3, lower h1_1 - h1_2
    s2 = sm[r2]
    np.testing.assert_allclose(s2.L[0], [[1, -1]], atol=1e-12)
    np.testing.assert_allclose(s2.l[0], [0], atol=1e-12)
    np.testing.assert_allclose(s2.U[0], [[2 / 3, -2 / 3]], atol=1e-12)
    np.testing.assert_allclose(s2.u[0], [2 / 3], atol=1e-12)


def full(sm, which: str) -> tuple:
    """A summary's matrices at full size: (A (n, |t|, |s|), c (N, |t|)) of its lower or upper lines."""
    A, c = (sm.L, sm.l) if which == "lower" else (sm.U, sm.u)
    out = np.zeros((A.shape[0], sm.size_t, sm.size_s))
    out[:, sm.rows[:, None], sm.cols[None, :]] = A
    cc = np.zeros((c.shape[0], sm.size_t))
    cc[:, sm.rows] = c
    return out, cc


def assert_summary_contains(g, sm, s_vals: np.ndarray, t_vals: np.ndarray, what: str, box: int = 0):
    """L s + l <= t <= U s + u at every sampled (s, t) pair (rows the summary leaves out must be 0 or feed
    dead ReLUs; the listed ones are checked)."""
    s = s_vals.reshape(len(s_vals), -1)
    t = t_vals.reshape(len(t_vals), -1)[:, sm.rows]
    for which, sign in (("lower", -1), ("upper", 1)):
        A, c = full(sm, which)
        line = (s @ A[min(box, A.shape[0] - 1)].T + c[min(box, c.shape[0] - 1)])[:, sm.rows]
        scale = 1 + np.abs(line) + np.abs(t)
        gap = sign * (line - t)         # >= 0 when the sample is on the right side of the line
        assert gap.min() >= -1e-9 * scale.max(), f"{what}: {which} line violated by {-gap.min():.3g}"


def sample_block_inputs(g, b, bounds, sm, n: int, rng) -> tuple:
    """Block inputs sampled uniformly within their bounds, run through the block only; kept where every ReLU
    inside sees an input within its bounds (the premise the summary's relaxations rest on)."""
    lo, hi = bounds.lo[b.start], bounds.hi[b.start]
    s = lo + rng.random((n,) + lo.shape) * (hi - lo)
    vals = g.evaluate(np.zeros((n, g.n_inputs)), given={b.start: s})
    ok = np.ones(n, bool)
    for r in b.inner:
        z = g.args(r)[0]
        if g.op(r).kind == "relu" and z != b.start:
            v = vals[z].reshape(n, -1)
            ok &= np.all((v >= bounds.lo[z].reshape(-1) - 1e-12) & (v <= bounds.hi[z].reshape(-1) + 1e-12), axis=1)
    return s[ok], vals[b.end][ok]


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("k", [1, 2])
def test_summaries_contain_sampled_block_behaviour_on_random_chains(seed, k, rng):
    net, box = random_problem(seed, 3, [5, 4, 6, 5], 2, linear_channels=seed % 2 == 0)
    g = network_graph(net)
    b = deeppoly_graph(g, box, blocks=k)
    assert b.summaries, "no blocks were cut"
    for blk in find_blocks(g, k):
        sm = b.summaries[blk.end]
        s, t = sample_block_inputs(g, blk, b, sm, 4000, rng)
        assert len(s) > 0
        assert_summary_contains(g, sm, s, t, f"seed {seed}, block {blk.start} -> {blk.end} (sampled block inputs)")
        x = np.vstack([box.sample(2000, rng), box.corners(limit=64)])
        v = g.evaluate(x)
        assert_summary_contains(g, sm, v[blk.start], v[blk.end], f"seed {seed}, block {blk.start} -> {blk.end}")
    assert_values_inside(g, b, g.evaluate(np.vstack([box.sample(2000, rng), box.corners(limit=64)])), "blocks")


def test_batched_with_blocks_equals_one_box_runs(rng):
    net, box = random_problem(7, 3, [6, 5, 6, 4], 2, linear_channels=True)
    g = network_graph(net)
    lo, hi = sub_boxes(box, 4, rng)
    db, _ = deeppoly_boxes(g, lo, hi, all_nodes=True, blocks=1)
    for n in range(4):
        one = deeppoly_graph(g, Box(lo[n], hi[n]), blocks=1)
        for name in g.order:
            np.testing.assert_allclose(db.lo[name][n], one.lo[name], rtol=1e-9, atol=1e-9, err_msg=f"box {n}, {name}")
            np.testing.assert_allclose(db.hi[name][n], one.hi[name], rtol=1e-9, atol=1e-9, err_msg=f"box {n}, {name}")


def test_auto_and_none_choose_no_blocks_on_shallow_chains():
    net, _ = random_problem(0, 3, [4, 4, 4], 1, linear_channels=False)
    g = network_graph(net)
    assert find_blocks(g, "auto") == [] and find_blocks(g, "none") == [] and find_blocks(g, None) == []
    assert len(chain_blocks(g, 1)) == 3 and auto_k(24) == 7
    with pytest.raises(ValueError):
        find_blocks(g, -1)


def _real_check(g, box, mode, min_share, rng):
    full_b = deeppoly_graph(g, box)
    b = deeppoly_graph(g, box, blocks=mode)
    assert b.summaries
    x = np.vstack([box.sample(1500, rng), box.vertices(64, rng), box.center[None]])
    vals = g.evaluate(x)
    assert_values_inside(g, b, vals, f"blocks={mode}")
    for blk_end, sm in b.summaries.items():
        assert_summary_contains(g, sm, vals[sm.block.start], vals[blk_end], f"block {sm.block.start} -> {blk_end}")
    got, want = b.counts(g)["stable"], full_b.counts(g)["stable"]
    assert got >= min_share * want, f"blocks={mode}: {got} stable, full DeepPoly {want}"
    return got, want


@needs_bench
@pytest.mark.parametrize("mode", [2, 3])
def test_mnist_256x6_with_blocks_is_sound(mode, rng):
    g = load_graph_cached(MNIST / "mnist-net_256x6.onnx")
    _real_check(g, load_box(MNIST / "prop_0_0.03.vnnlib"), mode, 0.75, rng)


@needs_cifar
def test_resnet_2b_residual_blocks_are_sound(rng):
    g = load_graph_cached(CIFAR / "resnet_2b.onnx")
    blocks = residual_blocks(g)
    assert [(b.start, b.end) for b in blocks] == [("18", "23"), ("24", "28")]
    assert find_blocks(g, "auto") == []          # two residual blocks: summaries do not pay (measured)
    _real_check(g, load_box(CIFAR / "resnet_2b-img386-eps2_255.vnnlib"), blocks, 0.95, rng)
