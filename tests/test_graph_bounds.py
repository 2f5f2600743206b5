"""The graph bounds engine (equiv.bounds.engine): hand-computed exact interval and DeepPoly bounds of tiny DAGs,
sampled soundness on every shared network, agreement with the chain engine on chains, the published CROWN
counts on the CIFAR networks, and random small DAGs under hypothesis.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import ACAS, CIFAR, CIFAR_REFERENCE, MNIST, acas_path, load_box, load_cached, load_graph_cached, \
    needs_bench, needs_cifar
from equiv.bounds import deeppoly_bounds, interval_bounds
from equiv.bounds.engine import GraphBounds, _box_parts, backsubstitute, deeppoly_graph, interval_graph
from equiv.ir import Graph
from equiv.ir.ops import Add, Concat, Const, Dense, Input, MaskedRelu, Pad, Relu, Reshape
from equiv.bounds.common import outward
from equiv.ir import graph_from_onnx
from equiv.spec.region import Box
from test_graph_ir import CASE_NAMES, CASES

# Every computed bound is widened outward by 1e-9 (1 + |v|) per op (equiv.bounds.common.outward), and the
# margins add up along a path: a hand-computed value v is met within 1e-9 (1 + |v|) per op of the graph
# (twice that, for the rounding of the margins themselves), and always on the sound side.


def assert_exact(g, got_lo, got_hi, lo, hi, what):
    got_lo, got_hi = np.asarray(got_lo, float).reshape(-1), np.asarray(got_hi, float).reshape(-1)
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    assert np.all(got_lo <= lo) and np.all(got_hi >= hi), f"{what}: [{got_lo}, {got_hi}] is not outside [{lo}, {hi}]"
    margin = 2e-9 * len(g.order)
    assert np.all(lo - got_lo <= margin * (1 + np.abs(lo))), f"{what} lower: {got_lo} != {lo}"
    assert np.all(got_hi - hi <= margin * (1 + np.abs(hi))), f"{what} upper: {got_hi} != {hi}"


def assert_values_inside(g: Graph, b: GraphBounds, vals: dict, what: str, rel: float = 1e-6):
    """Every tensor's sampled values lie in its bounds (tolerance rel * (1 + |bound|))."""
    for name in g.order:
        v = vals[name].reshape(vals[name].shape[0], -1)
        lo, hi = b.lo[name].reshape(-1), b.hi[name].reshape(-1)
        below = v < lo - rel * (1 + np.abs(lo))
        above = v > hi + rel * (1 + np.abs(hi))
        assert not below.any(), f"{what}: tensor '{name}': {below.sum()} values below the lower bound " \
                                f"(worst by {np.max(lo - v):.3g})"
        assert not above.any(), f"{what}: tensor '{name}': {above.sum()} values above the upper bound " \
                                f"(worst by {np.max(v - hi):.3g})"


def dense(shape, W, b=None):
    return Dense(tuple(shape), W=np.array(W, float), bias=None if b is None else np.array(b, float))


# ---- 1. tiny DAGs with hand-computed bounds -------------------------------------------------------------

def residual_block() -> Graph:
    """x in [-1, 1]^2, z = W x + b, h = relu(z), y = V h + x with W = [[1, 0], [1, 1]], b = [0, 0.5],
    V = -I."""
    return Graph.build([("x", Input((2,)), []),
                        ("z", dense((2,), [[1, 0], [1, 1]], [0, 0.5]), ["x"]),
                        ("h", Relu((2,)), ["z"]),
                        ("v", dense((2,), [[-1, 0], [0, -1]]), ["h"]),
                        ("y", Add((2,), in_shapes=[(2,), (2,)]), ["v", "x"])], ["x"], ["y"])


def test_residual_block_exact_bounds():
    g, box = residual_block(), Box([-1, -1], [1, 1])
    # z1 = x1 in [-1, 1]; z2 = x1 + x2 + 0.5 in [-1.5, 2.5] (exact for both methods: z is affine in x).
    # interval: h1 in [0, 1], h2 in [0, 2.5]; v = -h: v1 in [-1, 0], v2 in [-2.5, 0];
    #           y = v + x: y1 in [-2, 1], y2 in [-3.5, 1].
    ib = interval_graph(g, box)
    assert_exact(g, ib.lo["z"], ib.hi["z"], [-1, -1.5], [1, 2.5], "interval z")
    assert_exact(g, ib.lo["h"], ib.hi["h"], [0, 0], [1, 2.5], "interval h")
    assert_exact(g, ib.lo["v"], ib.hi["v"], [-1, -2.5], [0, 0], "interval v")
    assert_exact(g, ib.lo["y"], ib.hi["y"], [-2, -3.5], [1, 1], "interval y")
    # DeepPoly relaxations:
    #   z1 in [-1, 1]: u = -l, so the lower line is h1 >= 0 (z only when u > -l); upper h1 <= (z1 + 1) / 2.
    #   z2 in [-1.5, 2.5]: u > -l, lower h2 >= z2; upper h2 <= 2.5/4 (z2 + 1.5) = 0.625 z2 + 0.9375.
    # y1 = x1 - h1:  upper: -h1 <= 0            -> y1 <= x1 <= 1
    #                lower: -h1 >= -(x1 + 1)/2  -> y1 >= x1/2 - 1/2 >= -1     (interval: -2)
    # y2 = x2 - h2:  upper: -h2 <= -z2          -> y2 <= -x1 - 0.5 <= 0.5      (interval: 1)
    #                lower: -h2 >= -0.625 (x1 + x2 + 0.5) - 0.9375
    #                                           -> y2 >= -0.625 x1 + 0.375 x2 - 1.25 >= -2.25  (interval: -3.5)
    # (exact ranges: y1 = min(x1, 0) in [-1, 0]; y2 in [-1.5, 0.5]).
    db = deeppoly_graph(g, box)
    assert_exact(g, db.lo["z"], db.hi["z"], [-1, -1.5], [1, 2.5], "deeppoly z")
    assert_exact(g, db.lo["h"], db.hi["h"], [0, 0], [1, 2.5], "deeppoly h")
    assert_exact(g, db.lo["y"], db.hi["y"], [-1, -2.25], [1, 0.5], "deeppoly y")
    assert db.counts(g) == {"dead": 0, "active": 0, "stable": 0, "unstable": 2}
    # the back-substitution itself, before the intersection with intervals
    cl, ch = backsubstitute(g, "y", np.array([0, 1]), db, _box_parts(g, box))
    np.testing.assert_allclose(cl, [-1, -2.25], atol=1e-12)
    np.testing.assert_allclose(ch, [1, 0.5], atol=1e-12)


def concat_net() -> Graph:
    """x in [-1, 1]^2, a = relu(x1 - x2), b = relu(x1 + x2 + 1), c = concat(a, [1], b),
    y = [[1, 2, -1], [1, 0, 1]] c."""
    return Graph.build([("x", Input((2,)), []),
                        ("za", dense((1,), [[1, -1]]), ["x"]), ("a", Relu((1,)), ["za"]),
                        ("zb", dense((1,), [[1, 1]], [1]), ["x"]), ("b", Relu((1,)), ["zb"]),
                        ("one", Const((1,), value=np.array([1.0])), []),
                        ("c", Concat((3,), axis=0, in_shapes=[(1,), (1,), (1,)]), ["a", "one", "b"]),
                        ("y", dense((2,), [[1, 2, -1], [1, 0, 1]]), ["c"])], ["x"], ["y"])


def test_concat_of_two_branches_exact_bounds():
    g, box = concat_net(), Box([-1, -1], [1, 1])
    # za = x1 - x2 in [-2, 2], zb = x1 + x2 + 1 in [-1, 3]; interval a in [0, 2], b in [0, 3], c = (a, 1, b);
    # y1 = a + 2 - b in [-1, 4], y2 = a + b in [0, 5].
    ib = interval_graph(g, box)
    assert_exact(g, ib.lo["c"], ib.hi["c"], [0, 1, 0], [2, 1, 3], "interval c")
    assert_exact(g, ib.lo["y"], ib.hi["y"], [-1, 0], [4, 5], "interval y")
    # DeepPoly: za in [-2, 2]: a >= 0, a <= (za + 2)/2 = 0.5 x1 - 0.5 x2 + 1;
    #           zb in [-1, 3]: b >= zb, b <= 3/4 (zb + 1) = 0.75 x1 + 0.75 x2 + 1.5.
    # y1 upper: a <= 0.5 x1 - 0.5 x2 + 1, -b <= -x1 - x2 - 1: y1 <= -0.5 x1 - 1.5 x2 + 2 <= 4   (= interval)
    # y1 lower: a >= 0, -b >= -0.75 x1 - 0.75 x2 - 1.5:       y1 >= -0.75 x1 - 0.75 x2 + 0.5 >= -1 (= interval)
    # y2 upper: 0.5 x1 - 0.5 x2 + 1 + 0.75 x1 + 0.75 x2 + 1.5 = 1.25 x1 + 0.25 x2 + 2.5 <= 4   (interval: 5)
    # y2 lower: 0 + x1 + x2 + 1 >= -1, intersected with the interval's 0 -> 0.
    # (exact: max y2 = 3 at x1 = 1.)
    db = deeppoly_graph(g, box)
    assert_exact(g, db.lo["za"], db.hi["za"], [-2], [2], "deeppoly za")
    assert_exact(g, db.lo["zb"], db.hi["zb"], [-1], [3], "deeppoly zb")
    assert_exact(g, db.lo["y"], db.hi["y"], [-1, 0], [4, 4], "deeppoly y")
    cl, ch = backsubstitute(g, "y", np.array([0, 1]), db, _box_parts(g, box))
    np.testing.assert_allclose(cl, [-1, -1], atol=1e-12)
    np.testing.assert_allclose(ch, [4, 4], atol=1e-12)


def two_input_net() -> Graph:
    """p in [0, 1] (X_0), q in [-1, 1]^2 (X_1, X_2); z = [1, 2]^T p + [[1, 1], [1, -1]] q + [-1, 0];
    h = relu(z); y = h1 + h2 - p."""
    return Graph.build([("p", Input((1,)), []), ("q", Input((2,)), []),
                        ("zp", dense((2,), [[1], [2]], [-1, 0]), ["p"]),
                        ("zq", dense((2,), [[1, 1], [1, -1]]), ["q"]),
                        ("z", Add((2,), in_shapes=[(2,), (2,)]), ["zp", "zq"]),
                        ("h", Relu((2,)), ["z"]),
                        ("s", dense((1,), [[1, 1]]), ["h"]),
                        ("y", Add((1,), in_shapes=[(1,), (1,)], signs=(1.0, -1.0)), ["s", "p"])], ["p", "q"], ["y"])


def test_two_input_net_exact_bounds():
    g, box = two_input_net(), Box([0, -1, -1], [1, 1, 1])
    # z1 = p + q1 + q2 - 1 in [-3, 2]; z2 = 2p + q1 - q2 in [-2, 4].
    # interval: h1 in [0, 2], h2 in [0, 4]; y = h1 + h2 - p in [-1, 6].
    ib = interval_graph(g, box)
    assert_exact(g, ib.lo["z"], ib.hi["z"], [-3, -2], [2, 4], "interval z")
    assert_exact(g, ib.lo["y"], ib.hi["y"], [-1], [6], "interval y")
    # DeepPoly: z1: u < -l -> h1 >= 0; h1 <= 2/5 (z1 + 3) = 0.4 z1 + 1.2.
    #           z2: u > -l -> h2 >= z2; h2 <= 4/6 (z2 + 2) = (2/3) z2 + 4/3.
    # y upper: 0.4 (p + q1 + q2 - 1) + 1.2 + (2/3)(2p + q1 - q2) + 4/3 - p
    #        = (11/15) p + (16/15) q1 - (4/15) q2 + 32/15 <= (11 + 16 + 4 + 32)/15 = 63/15 = 4.2 (interval 6)
    # y lower: 0 + (2p + q1 - q2) - p = p + q1 - q2 >= -2, intersected with the interval's -1 -> -1.
    # (exact maximum: 3, e.g. at p = 1, q = (1, -1).)
    db = deeppoly_graph(g, box)
    assert_exact(g, db.lo["z"], db.hi["z"], [-3, -2], [2, 4], "deeppoly z")
    assert_exact(g, db.lo["y"], db.hi["y"], [-1], [63 / 15], "deeppoly y")
    cl, ch = backsubstitute(g, "y", np.array([0]), db, _box_parts(g, box))
    np.testing.assert_allclose([cl[0], ch[0]], [-2, 63 / 15], atol=1e-12)
    # X_i indexes the inputs in order: the box's first coordinate is p
    vals = g.evaluate(np.array([[1.0, 1.0, -1.0]]))
    np.testing.assert_allclose(vals["z"][0], [0.0, 4.0])
    np.testing.assert_allclose(vals["y"][0], [3.0])


@pytest.mark.parametrize("build, box", [(residual_block, Box([-1, -1], [1, 1])), (concat_net, Box([-1, -1], [1, 1])),
                                        (two_input_net, Box([0, -1, -1], [1, 1, 1]))])
def test_tiny_dags_are_sound(build, box, rng):
    g = build()
    x = np.vstack([box.sample(2000, rng), box.corners()])
    vals = g.evaluate(x)
    assert_values_inside(g, interval_graph(g, box), vals, "interval", rel=0)
    assert_values_inside(g, deeppoly_graph(g, box), vals, "deeppoly", rel=0)


def _two_relus_of_one_tensor() -> Graph:
    """z = W x, r1 = relu(z), r2 = relu(z) (two ReLU nodes read one tensor), y = 1.(r1 + r2) + 5."""
    return Graph.build([("x", Input((2,)), []), ("z", dense((2,), [[1, 1], [1, -1]]), ["x"]),
                        ("r1", Relu((2,)), ["z"]), ("r2", Relu((2,)), ["z"]),
                        ("s", Add((2,), in_shapes=[(2,), (2,)]), ["r1", "r2"]),
                        ("y", dense((1,), [[1, 1]], [5]), ["s"])], ["x"], ["y"])


def _output_read_by_a_relu() -> Graph:
    """z2 = h1 . 1 + 5 (h1 = relu(W x)) is an output AND the input of a ReLU (stable by intervals)."""
    return Graph.build([("x", Input((2,)), []), ("z1", dense((2,), [[1, 1], [1, -1]]), ["x"]),
                        ("h1", Relu((2,)), ["z1"]), ("z2", dense((1,), [[1, 1]], [5]), ["h1"]),
                        ("h2", Relu((1,)), ["z2"]), ("y", dense((1,), [[2]]), ["h2"])], ["x"], ["z2", "y"])


@pytest.mark.parametrize("build", [_two_relus_of_one_tensor, _output_read_by_a_relu])
def test_every_output_is_back_substituted(build):
    # x in [-1, 1]^2; z1 = (x1 + x2, x1 - x2) in [-2, 2]^2, relaxed by h <= (z + 2)/2, h >= 0, so
    # h1 + h2 <= x1 + 2 <= 3 (intervals: 4).  _two_relus_of_one_tensor: y = 2 (h1 + h2) + 5 <= 11 (intervals: 13);
    # _output_read_by_a_relu: z2 = h1 + h2 + 5 <= 8 (intervals: 9).
    g, box = build(), Box([-1, -1], [1, 1])
    db = deeppoly_graph(g, box)
    for o in g.outputs:
        cl, ch = outward(*backsubstitute(g, o, np.arange(g.op(o).size), db, _box_parts(g, box)))
        assert np.all(db.hi[o].reshape(-1) <= ch + 1e-12), (o, db.hi[o], ch)
        assert np.all(db.lo[o].reshape(-1) >= cl - 1e-12), (o, db.lo[o], cl)


def test_counts_of_a_masked_relu_follow_its_mask():
    # z = (x1 + x2, x1 - x2, x1 + 3) on [-1, 1]^2; position 0 a ReLU (unstable), 1 the identity, 2 a ReLU (active)
    g = Graph.build([("x", Input((2,)), []), ("z", dense((3,), [[1, 1], [1, -1], [1, 0]], [0, 0, 3]), ["x"]),
                     ("h", MaskedRelu((3,), relu_mask=np.array([True, False, True]),
                                      linear_mask=np.array([False, True, False])), ["z"]),
                     ("y", dense((1,), [[1, 1, 1]]), ["h"])], ["x"], ["y"])
    db = deeppoly_graph(g, Box([-1, -1], [1, 1]))
    assert g.n_relus == 2
    assert db.counts(g) == {"dead": 0, "active": 1, "stable": 1, "unstable": 1}
    assert sum(r["size"] for r in db.per_layer(g)) == g.n_relus


def test_ops_that_only_move_elements_keep_a_zero_bound_exact():
    """A ReLU on an input (or on a reshaped / padded / identity-mapped one) whose box starts at 0 is active, and one
    ending at 0 dead: these ops do no arithmetic, so their bounds take no rounding margin (with it, lo = -1e-9
    left such positions unstable).  An op that does arithmetic keeps its margin."""
    box = Box([0, 0, -1, -1], [1, 2, 0, 1])
    eye = dense((4,), np.eye(4))
    g = Graph.build([("x", Input((4,)), []), ("z", eye, ["x"]), ("h", Relu((4,)), ["z"]),
                     ("f", Reshape((2, 2), in_shape=(4,)), ["h"]),
                     ("p", Pad((2, 3), pads=((0, 0), (0, 1)), value=0.0, bias=np.pad(np.zeros((2, 2)), ((0, 0), (0, 1)))),
                      ["f"]), ("r", Relu((2, 3)), ["p"]), ("y", Reshape((6,), in_shape=(2, 3)), ["r"])], ["x"], ["y"])
    assert eye.selects and g.op("f").selects and g.op("p").selects
    for b in (interval_graph(g, box), deeppoly_graph(g, box)):
        assert b.lo["z"].tolist() == [0, 0, -1, -1] and b.hi["z"].tolist() == [1, 2, 0, 1]
        assert b.lo["p"].reshape(-1).tolist() == [0, 0, 0, 0, 0, 0] and b.hi["p"].reshape(-1).tolist() == [1, 2, 0, 0, 1, 0]
        # h: 0, 1 active (lo = 0), 2 dead (hi = 0), 3 unstable; r reads h >= 0: active, dead where it is
        # [0, 0] (h's dead position and the two pads)
        assert b.counts(g) == {"dead": 1 + 3, "active": 2 + 3, "stable": 9, "unstable": 1}
    # arithmetic keeps the margin: a bias, a coefficient other than 1, two inputs in a row
    for W, bias in ((np.eye(4), np.ones(4)), (2 * np.eye(4), None), (np.ones((4, 4)), None)):
        assert not dense((4,), W, bias).selects
    assert not Pad((2, 3), pads=((0, 0), (0, 1)), bias=np.ones((2, 3))).selects


# ---- sampled soundness on the op catalogue of test_graph_ir (every op's interval and adjoint in use) -----

@pytest.mark.parametrize("name", CASE_NAMES)
def test_bounds_are_sound_on_every_op_case(name):
    r = np.random.default_rng(zlib.crc32(name.encode()))
    g = graph_from_onnx(CASES[name](r), check=False)
    lo = r.uniform(-2.0, 1.0, size=g.n_inputs)
    box = Box(lo, lo + r.uniform(0.0, 2.0, size=g.n_inputs))
    ib, db = interval_graph(g, box), deeppoly_graph(g, box)
    vals = g.evaluate(np.vstack([box.sample(500, r), box.vertices(256, r)]))
    assert_values_inside(g, ib, vals, "interval", rel=1e-9)
    assert_values_inside(g, db, vals, "deeppoly", rel=1e-9)
    for n in g.order:
        assert np.all(db.lo[n] >= ib.lo[n]) and np.all(db.hi[n] <= ib.hi[n]), n
    # a graph without ReLUs is affine: DeepPoly's output bounds are exact (up to rounding) at some vertex
    if not g.relus:
        out = g.outputs[0]
        v = box.vertices(4096, r) if g.n_inputs <= 12 else None
        if v is not None and len(v) == 2 ** g.n_inputs:
            y = g.evaluate(v)[out].reshape(len(v), -1)
            np.testing.assert_allclose(db.lo[out].reshape(-1), y.min(axis=0), rtol=1e-7, atol=1e-7)
            np.testing.assert_allclose(db.hi[out].reshape(-1), y.max(axis=0), rtol=1e-7, atol=1e-7)


# ---- 2. sampled soundness on the real networks -------------------------------------------------------

_BOUNDS: dict = {}


def graph_bounds(path, spec):
    """(graph, box, interval bounds, DeepPoly bounds), once per session."""
    key = (str(path), str(spec))
    if key not in _BOUNDS:
        g, box = load_graph_cached(path), load_box(spec)
        _BOUNDS[key] = (g, box, interval_graph(g, box), deeppoly_graph(g, box))
    return _BOUNDS[key]


def _real_nets():
    nets = [pytest.param(lambda: acas_path(1, 1), lambda: ACAS / "prop_3.vnnlib", id="acas_1_1-prop_3", marks=needs_bench),
            pytest.param(lambda: MNIST / "mnist-net_256x2.onnx", lambda: MNIST / "prop_0_0.03.vnnlib",
                         id="mnist_256x2-prop_0_0.03", marks=needs_bench)]
    for stem, (spec, _) in sorted(CIFAR_REFERENCE.items()):
        nets.append(pytest.param(lambda s=stem: CIFAR / f"{s}.onnx", lambda s=spec: CIFAR / s, id=stem,
                                 marks=needs_cifar))
    return nets


@pytest.mark.parametrize("net, spec", _real_nets())
def test_bounds_contain_sampled_values_on_real_networks(net, spec, rng):
    g, box, ib, db = graph_bounds(net(), spec())
    x = np.vstack([box.sample(2000, rng), box.vertices(256, rng)])
    for s in range(0, len(x), 250):
        vals = g.evaluate(x[s:s + 250])
        assert_values_inside(g, ib, vals, f"interval, points {s}..")
        assert_values_inside(g, db, vals, f"deeppoly, points {s}..")
    # and DeepPoly is never looser than the intervals
    for n in g.order:
        assert np.all(db.lo[n] >= ib.lo[n]) and np.all(db.hi[n] <= ib.hi[n]), n


# ---- 3. the graph engine equals the chain engine on chains ------------------------------------------

@needs_bench
@pytest.mark.parametrize("net, spec, stable", [(lambda: acas_path(1, 1), lambda: ACAS / "prop_3.vnnlib", 190),
                                               (lambda: MNIST / "mnist-net_256x2.onnx",
                                                lambda: MNIST / "prop_0_0.03.vnnlib", None)],
                         ids=["acas_1_1", "mnist_256x2"])
def test_graph_engine_equals_chain_engine(net, spec, stable):
    g, box, ib, db = graph_bounds(net(), spec())
    chain = load_cached(net())
    cb, ci = deeppoly_bounds(chain, box), interval_bounds(chain, box)
    assert len(g.relus) == len(chain.masks)
    counts = db.counts(g)
    assert counts == cb.counts(chain.masks)
    assert ib.counts(g) == ci.counts(chain.masks)
    if stable is not None:
        assert counts["stable"] == stable
    for k, r in enumerate(g.relus):
        lo, hi = (a.reshape(-1) for a in db.relu_input(g, r))
        # the graph engine back-substitutes only the positions its intervals leave unstable: there the
        # bounds are the chain engine's; elsewhere both engines prove the same phase, the graph engine
        # keeping its (looser or equal) interval bounds.
        unstable = (lo < 0) & (hi > 0)
        tol = 1e-6 * (1 + np.abs(cb.lo[k]))
        np.testing.assert_allclose(lo[unstable], cb.lo[k][unstable], rtol=0, atol=float(tol.max()),
                                   err_msg=f"layer {k}")
        np.testing.assert_allclose(hi[unstable], cb.hi[k][unstable], rtol=0, atol=float(tol.max()),
                                   err_msg=f"layer {k}")
        assert np.array_equal(hi <= 0, cb.hi[k] <= 0) and np.array_equal(lo >= 0, cb.lo[k] >= 0), f"layer {k}"
        tolu = 1e-6 * (1 + np.abs(cb.hi[k]))
        assert np.all(lo <= cb.lo[k] + tol) and np.all(hi >= cb.hi[k] - tolu), f"layer {k}: tighter than the chain"
    out = g.outputs[0]
    np.testing.assert_allclose(db.lo[out].reshape(-1), cb.lo[-1], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(db.hi[out].reshape(-1), cb.hi[-1], rtol=1e-6, atol=1e-6)
    # intervals: the same to the rounding margins (the graph widens once per op, the chain once per layer)
    for k, r in enumerate(g.relus):
        lo, hi = (a.reshape(-1) for a in ib.relu_input(g, r))
        np.testing.assert_allclose(lo, ci.lo[k], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(hi, ci.hi[k], rtol=1e-6, atol=1e-6)


# ---- 4. the published reference counts on the CIFAR networks ---------------------------------------

@needs_cifar
@pytest.mark.parametrize("stem", sorted(CIFAR_REFERENCE))
def test_reference_stable_counts_are_reached(stem):
    spec, ref = CIFAR_REFERENCE[stem]
    g, box, ib, db = graph_bounds(CIFAR / f"{stem}.onnx", CIFAR / spec)
    assert ib.counts(g)["stable"] == ref["interval"]
    assert db.counts(g)["stable"] >= ib.counts(g)["stable"]
    if "crown" in ref:
        assert db.counts(g)["stable"] >= ref["crown"], (db.counts(g), ref)
    layers = db.per_layer(g)
    assert sum(r["size"] for r in layers) == g.n_relus
    assert sum(r["dead"] + r["active"] for r in layers) == db.counts(g)["stable"]


# ---- 5. random small DAGs ---------------------------------------------------------------------------

@st.composite
def small_dags(draw):
    """(graph, box): 1 or 2 graph inputs (2-3 coordinates), 1-3 blocks (a dense ReLU or MaskedRelu layer, a residual
    block h = relu(W x + b), y = x +- V h (ReLU after it or not), or a Concat of a ReLU branch and a ReLU or
    linear branch), then 1-2 outputs; widths 2-6."""
    r = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    nodes, k = [], [0]

    def add(op, args):
        k[0] += 1
        name = f"t{k[0]}"
        nodes.append((name, op, args))
        return name, op.shape[0]

    def lin(src, w_in, w_out):
        return add(Dense((w_out,), W=r.normal(size=(w_out, w_in)), bias=r.normal(scale=0.5, size=w_out)), [src])

    n_in = draw(st.integers(2, 3))
    if n_in == 3 and draw(st.booleans()):
        nodes += [("p", Input((1,)), []), ("q", Input((2,)), [])]
        inputs = ["p", "q"]
        if draw(st.booleans()):
            cur, w = add(Concat((3,), axis=0, in_shapes=[(1,), (2,)]), ["p", "q"])
        else:
            w = draw(st.integers(2, 6))
            (a, _), (b, _) = lin("p", 1, w), lin("q", 2, w)
            cur, w = add(Add((w,), in_shapes=[(w,), (w,)]), [a, b])
    else:
        nodes.append(("x", Input((n_in,)), []))
        inputs, cur, w = ["x"], "x", n_in
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["dense", "residual", "concat"]))
        if kind == "dense":
            z, w = lin(cur, w, draw(st.integers(2, 6)))
            if draw(st.booleans()):
                cur, w = add(Relu((w,)), [z])
            else:      # a partial ReLU layer: relu, identity or 0 per position
                phase = r.integers(0, 3, size=w)
                cur, w = add(MaskedRelu((w,), relu_mask=phase == 0, linear_mask=phase == 1), [z])
        elif kind == "residual":
            z, m = lin(cur, w, draw(st.integers(2, 6)))
            h, _ = add(Relu((m,)), [z])
            v, _ = lin(h, m, w)
            sign = draw(st.sampled_from([1.0, -1.0]))
            cur, w = add(Add((w,), in_shapes=[(w,), (w,)], signs=(sign, 1.0)), [v, cur])
            if draw(st.booleans()):
                cur, w = add(Relu((w,)), [cur])
        else:
            w1, w2 = draw(st.integers(1, 3)), draw(st.integers(1, 3))
            za, _ = lin(cur, w, w1)
            a, _ = add(Relu((w1,)), [za])
            b, _ = lin(cur, w, w2)
            if draw(st.booleans()):
                b, _ = add(Relu((w2,)), [b])
            cur, w = add(Concat((w1 + w2,), axis=0, in_shapes=[(w1,), (w2,)]), [a, b])
    out, _ = lin(cur, w, draw(st.integers(1, 2)))
    g = Graph.build(nodes, inputs, [out])
    lo = r.uniform(-2.0, 1.0, size=g.n_inputs)
    return g, Box(lo, lo + r.uniform(0.05, 2.0, size=g.n_inputs))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problem=small_dags(), seed=st.integers(0, 2 ** 32 - 1))
def test_random_dags_deeppoly_sound_and_no_looser_than_interval(problem, seed):
    g, box = problem
    rng = np.random.default_rng(seed)
    ib, db = interval_graph(g, box), deeppoly_graph(g, box)
    vals = g.evaluate(np.vstack([box.sample(300, rng), box.corners(), box.center[None]]))
    assert_values_inside(g, ib, vals, "interval", rel=1e-9)
    assert_values_inside(g, db, vals, "deeppoly", rel=1e-9)
    for n in g.order:
        assert np.all(db.lo[n] >= ib.lo[n]) and np.all(db.hi[n] <= ib.hi[n]), n
    assert db.counts(g)["stable"] >= ib.counts(g)["stable"]


def test_bounds_hold_where_large_terms_cancel():
    """z = w . x with terms of 1e10 that cancel to about +1e-7 (weights ~1e6, inputs ~1e4, a point box): the
    margin relative to |bound| alone left interval and DeepPoly upper bounds below the exact z, and the ReLU
    was called dead.  The margin on the forward magnitude keeps every bound above it (exact, in Fractions)."""
    from fractions import Fraction
    from equiv.bounds.engine import interval_graph
    rng = np.random.default_rng(0)
    tried = 0
    for _ in range(300):
        W = np.array([[rng.choice([1e6, -1e6, 3e5]), rng.choice([1e6, -1e6, -7e5]), -1e6, 1.0]], np.float32)
        x = np.array([1e4 + rng.random(), 1e4 + rng.random(), 1e4 + rng.random(), 0.0])
        big = sum(Fraction(float(W[0, i])) * Fraction(x[i]) for i in range(3))
        x[3] = float(-big + Fraction(1, 10 ** 7))
        z = big + Fraction(x[3])
        if z <= 0:
            continue
        tried += 1
        g = Graph.build([("x", Input((1, 4)), []), ("z", Dense((1, 1), W=W.astype(np.float64)), ["x"]),
                         ("y", Relu((1, 1)), ["z"])], ["x"], ["y"])
        box = Box(x, x.copy())
        for b in (interval_graph(g, box), deeppoly_graph(g, box)):
            assert Fraction(float(b.lo["z"].item())) <= z <= Fraction(float(b.hi["z"].item()))
    assert tried > 100
