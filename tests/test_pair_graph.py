"""The difference graph of two networks on the one bounds engine: the graph computes exactly f, g and their
difference; its bounds are exact on a hand-made pair, contain sampled values on random batched pairs (with
linear channels and known parent bounds) and the exact rational difference where large terms meet, and the
engine keeps a rounding margin relative to large cancelling terms."""

from __future__ import annotations

import zlib
from fractions import Fraction

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import CIFAR, load_box, load_graph_cached, needs_cifar, tiny_net
from test_graph_bounds import small_dags
from test_graph_ir import CASE_NAMES, CASES
from equiv.ir import graph_from_onnx
from equiv.bounds.common import ROUND_TERMS
from equiv.bounds.diff import dh_bounds, output_bounds, pair_bounds
from equiv.ir.network import Dense
from equiv.ir.pair_graph import StructureError, difference_graph, pair_graph
from equiv.prove.align import align
from equiv.spec.region import Box


def _random_pair(seed: int, linear: bool):
    r = np.random.default_rng(seed)
    sizes = [2, 4, 3, 2]
    f = tiny_net([(r.normal(size=(b, a)).tolist(), r.normal(scale=0.5, size=b).tolist()) for a, b in zip(sizes, sizes[1:])])
    if linear:      # some linear channels in both networks (what equiv's own simplified models hold)
        masks = [np.array([True, False, True, True]), np.array([False, True, True])]
        f = f.with_layers(f.dense, masks)
    g = f.with_layers([Dense(d.W + 0.05 * r.normal(size=d.W.shape), d.b + 0.05 * r.normal(size=d.b.shape))
                       for d in f.dense], f.masks)
    return f, g


def test_graph_computes_both_networks_and_their_difference():
    f, g = _random_pair(0, linear=True)
    pair = align(f, g)
    G = pair_graph(pair)
    X = np.random.default_rng(1).normal(size=(50, 2))
    vals = G.evaluate(X)
    hf, zf = pair.f.forward(X, return_pre=True)
    _, zg = pair.g.forward(X, return_pre=True)
    d_of = G.meta["d_of"]
    act = lambda z, m: np.where(m, np.maximum(z, 0), z)  # noqa: E731
    for k in range(len(zf)):
        assert np.allclose(vals[d_of[f"dense_{k + 1}"]], zf[k] - zg[k])
        assert np.allclose(vals[f"g:dense_{k + 1}"], zg[k]) and np.allclose(vals[f"f:dense_{k + 1}"], zf[k])
        assert np.allclose(vals[d_of[f"relu_{k + 1}"]], act(zf[k], pair.f.masks[k]) - act(zg[k], pair.g.masks[k]))
    assert np.allclose(vals["pair:f"][:, 0], pair.f.forward(X))
    assert np.allclose(vals[G.outputs[0]][:, 0], pair.f.forward(X) - pair.g.forward(X))


def test_exact_difference_bound_on_a_hand_made_pair():
    # f(x) = relu(x), g(x) = relu(x + 0.1) on [-1, 1]: f - g ranges over exactly [-0.1, 0]
    f = tiny_net([([[1.0]], [0.0]), ([[1.0]], [0.0])])
    g = tiny_net([([[1.0]], [0.1]), ([[1.0]], [0.0])])
    pb = pair_bounds(align(f, g), np.array([[-1.0]]), np.array([[1.0]]))
    lo, hi = pb.out_diff
    assert -0.1 - 1e-8 <= lo[0, 0] <= -0.1 and 0.0 <= hi[0, 0] <= 1e-8
    # dh of the hidden layer: between min(dz, 0) and max(dz, 0) with dz = -0.1 exactly
    hl, hu = dh_bounds(pb, align(f, g), 0)
    assert -0.1 - 1e-8 <= hl[0, 0] and hu[0, 0] <= 1e-8


def test_a_loosely_bounded_active_relu_against_its_linear_channel():
    """z = relu(x) - relu(x) + x + 0.5 is active on [-0.4, 1], but DeepPoly bounds it by [-0.3, 1.5]; g has
    that neuron as a linear channel (what simplify writes).  f's lower slope follows z_g's (1 here), so
    relu(z_f) - z_g >= dz = 0: no gap below (a chord-parallel slope would leave (s - 1) * 1.5 = -0.25)."""
    first = ([[1.0], [1.0], [1.0]], [0.0, 0.0, 0.0])
    second, last = ([[1.0, -1.0, 1.0]], [0.5]), ([[1.0]], [0.0])
    f = tiny_net([first, second, last], [np.array([True, True, False]), np.array([True])])
    g = tiny_net([first, second, last], [np.array([True, True, False]), np.array([False])])
    lo, hi = pair_bounds(align(f, g), np.array([[-0.4]]), np.array([[1.0]])).out_diff
    assert -1e-6 <= lo[0, 0] <= 0.0 <= hi[0, 0]
    x = np.linspace(-0.4, 1.0, 101)[:, None]
    assert np.allclose(f.forward(x), g.forward(x))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10 ** 6), linear=st.booleans())
def test_batched_bounds_contain_samples_and_children_tighten(seed, linear):
    f, g = _random_pair(seed, linear)
    pair = align(f, g)
    r = np.random.default_rng(seed + 1)
    a, b = r.normal(size=(4, 2)), r.normal(size=(4, 2))
    lo, hi = np.minimum(a, b) - 0.1, np.maximum(a, b) + 0.1
    parent = pair_bounds(pair, lo, hi, forms=True)
    # the two halves of each box along dimension 0, with the parent's bounds (and input-space lines) known
    mid = (lo[:, 0] + hi[:, 0]) / 2
    clo, chi = lo.copy(), hi.copy()
    chi[:, 0] = mid
    child = pair_bounds(pair, clo, chi, known=parent)
    # shallow: the parent's lines evaluated on the halves, no walk back but from the output; and one layer deep
    shallow = pair_bounds(pair, clo, chi, known=parent, depth=0)
    one = pair_bounds(pair, clo, chi, known=parent, depth=1)
    C = r.normal(size=(3, 2))
    for pb, (L, H) in ((parent, (lo, hi)), (child, (clo, chi)), (shallow, (clo, chi)), (one, (clo, chi))):
        out = {w: output_bounds(pair, pb, C, w) for w in "fgd"}
        for n in range(4):
            X = Box(L[n], H[n]).sample(300, r)
            X = np.vstack([X, L[n], H[n]])
            hf, zf = pair.f.forward(X, return_pre=True)
            _, zg = pair.g.forward(X, return_pre=True)
            zf.append(pair.f.forward(X))
            zg.append(pair.g.forward(X))
            for k in range(len(zf)):
                for v, l, h in ((zf[k], pb.f_lo, pb.f_hi), (zg[k], pb.g_lo, pb.g_hi), (zf[k] - zg[k], pb.d_lo, pb.d_hi)):
                    assert np.all(v >= l[k][n] - 1e-9) and np.all(v <= h[k][n] + 1e-9), k
            for w, v in (("f", zf[-1]), ("g", zg[-1]), ("d", zf[-1] - zg[-1])):
                y = v @ C.T
                assert np.all(y >= out[w][0][n] - 1e-9) and np.all(y <= out[w][1][n] + 1e-9), w
    for pb in (child, shallow, one):
        for k in range(len(parent.d_lo)):        # a child is never looser than its parent
            assert np.all(pb.d_lo[k] >= parent.d_lo[k]) and np.all(pb.d_hi[k] <= parent.d_hi[k])
    # the parent's lines: one per back-substituted row, free (0 x -/+ inf) elsewhere, holding on its boxes
    assert parent.forms and child.forms is None and shallow.forms is None
    for name, (Al, bl, Au, bu) in parent.forms.items():
        assert Al.shape == (4, bl.shape[1], 2) and np.all((bl == -np.inf) == (bu == np.inf))
        assert np.all(Al[bl == -np.inf] == 0) and np.all(Au[bu == np.inf] == 0)


def test_difference_of_large_cancelling_terms_keeps_a_margin():
    # f and g differ by 1e-6 in one output weight behind hidden values near 1e8: the difference is small,
    # the terms summed are large; the bound must contain the exact (rational) difference at every point
    W1 = [[1e8, -3e7], [2e7, 5e7]]
    f = tiny_net([(W1, [1e8, 0.0]), ([[1.0, 1.0]], [0.0])])
    g = tiny_net([(W1, [1e8, 0.0]), ([[1.0 + 1e-6, 1.0]], [0.0])])
    pair = align(f, g)
    box = Box([0.3, 0.1], [0.7, 0.4])
    pb = pair_bounds(pair, box.lo[None], box.hi[None])
    lo, hi = pb.out_diff
    X = np.vstack([box.corners(), box.sample(200, np.random.default_rng(0))])
    exact = []
    for x in X:
        fx = [Fraction(v) for v in x]
        h = [max(Fraction(W1[i][0]) * fx[0] + Fraction(W1[i][1]) * fx[1] + Fraction([1e8, 0.0][i]), Fraction(0))
             for i in range(2)]
        exact.append((h[0] + h[1]) - (Fraction(1.0 + 1e-6) * h[0] + h[1]))
    assert all(Fraction(lo[0, 0]) <= e <= Fraction(hi[0, 0]) for e in exact)


def test_magnitude_margin_widens_a_bound_that_cancels_large_terms():
    # y = 1e8 x1 - 1e8 x2 at x = (1, 1): exactly 0 as a sum of two terms of 1e8; the engine's magnitude
    # mode widens it by ROUND_TERMS times the terms, plain mode only by the margin relative to the result
    from equiv.bounds.engine import _backward, _parts
    from equiv.ir import ops
    from equiv.ir.graph import Graph
    G = Graph.build([("x", ops.Input((2,)), []), ("y", ops.Dense((1,), W=np.array([[1e8, -1e8]])), ["x"])],
                    ["x"], ["y"])
    one = np.ones((1, 2))
    args = (G, "y", np.array([0]), {}, {}, _parts(G, one, one), {})
    plain, wide = _backward(*args), _backward(*args, magnitude=True)
    assert plain[0][0, 0] == 0.0 and plain[1][0, 0] == 0.0
    assert wide[0][0, 0] <= -ROUND_TERMS * 2e8 * 0.99 and wide[1][0, 0] >= ROUND_TERMS * 2e8 * 0.99


# ---- difference graphs of DAGs: every op of the catalogue, random residual/concat DAGs, a real CNN ------

def perturbed(g, r, scale: float = 0.01, masks: bool = False):
    """g with every parameter, bias and constant moved by a relative `scale` (a float16-like copy); with
    masks, some ReLU positions of each MaskedRelu switched to identity or 0 (equiv's own output)."""
    import dataclasses
    from equiv.ir import ops
    from equiv.ir.graph import Graph
    nodes = []
    for n in g.order:
        op = g.op(n)
        changes = {}
        for fl in ("W", "s", "bias", "value"):
            v = getattr(op, fl, None)
            if isinstance(v, np.ndarray) and v.dtype.kind == "f":
                changes[fl] = v * (1 + scale * r.normal(size=v.shape))
        if masks and isinstance(op, ops.MaskedRelu):
            phase = r.integers(0, 3, size=np.shape(op.relu_mask))
            changes["relu_mask"], changes["linear_mask"] = op.relu_mask & (phase > 0), op.linear_mask | (phase == 0)
        nodes.append((n, dataclasses.replace(op, **changes) if changes else op, g.args(n)))
    return Graph.build(nodes, g.inputs, g.outputs)


def _assert_difference_sound(f, g, box, r):
    from equiv.prove.graph_check import difference_bounds
    G = difference_graph(f, g)
    X = np.vstack([box.sample(400, r), box.vertices(64, r)])
    want = f.forward(X) - g.forward(X)
    got = G.evaluate(X)[G.meta["out"]["d"]].reshape(len(X), -1)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)
    lo, hi = difference_bounds(f, g, box)
    tol = 1e-9 * (1 + np.abs(want))
    assert np.all(want >= lo - tol) and np.all(want <= hi + tol)
    return lo, hi


@pytest.mark.parametrize("name", CASE_NAMES)
def test_difference_bounds_are_sound_on_every_op_case(name):
    r = np.random.default_rng(zlib.crc32(name.encode()) + 1)
    f = graph_from_onnx(CASES[name](r), check=False)
    g = perturbed(f, r)
    lo = r.uniform(-2.0, 1.0, size=f.n_inputs)
    _assert_difference_sound(f, g, Box(lo, lo + r.uniform(0.0, 2.0, size=f.n_inputs)), r)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problem=small_dags(), seed=st.integers(0, 2 ** 32 - 1), scale=st.sampled_from([0.0, 1e-3, 0.1]),
       masks=st.booleans())
def test_difference_bounds_are_sound_on_random_dags(problem, seed, scale, masks):
    f, box = problem
    r = np.random.default_rng(seed)
    lo, hi = _assert_difference_sound(f, perturbed(f, r, scale, masks), box, r)
    if scale == 0.0 and not masks:      # the same network: the difference is exactly 0
        assert np.all(lo == 0.0) and np.all(hi == 0.0)


def test_graphs_of_another_structure_are_refused():
    f = graph_from_onnx(CASES[CASE_NAMES[0]](np.random.default_rng(0)), check=False)
    other = graph_from_onnx(CASES[CASE_NAMES[1]](np.random.default_rng(0)), check=False)
    with pytest.raises(StructureError):
        difference_graph(f, other)


@needs_cifar
def test_cnn_against_its_float16_copy_is_bounded_far_tighter_than_by_the_product(tmp_path):
    from equiv.bench.graphs import float16_copy
    from equiv.prove.graph_check import product_graph
    from equiv.bounds.engine import deeppoly_graph
    net = CIFAR / "cifar_wide_kw.onnx"
    float16_copy(net, tmp_path / "fp16.onnx")
    f, g = load_graph_cached(net), graph_from_onnx(onnx.load(tmp_path / "fp16.onnx"))
    box = load_box(CIFAR / "cifar_wide_kw-img19-eps0.007973856209150327.vnnlib")
    lo, hi = _assert_difference_sound(f, g, box, np.random.default_rng(0))
    p = deeppoly_graph(product_graph(f, g), box)
    assert np.maximum(-lo, hi).max() < 0.1 * np.maximum(-p.lo["diff"], p.hi["diff"]).max()


@needs_cifar
def test_graph_falsification_scores_samples_in_onnxruntime(tmp_path):
    """With runners, the sampled points are scored in onnxruntime as float32 points of the box: a copy whose
    last bias moves by 0.3 on output 2 differs by exactly that everywhere, and the candidates say so."""
    from equiv.artifacts.validate import OnnxRunner
    from equiv.prove import falsify
    net = CIFAR / "cifar_wide_kw.onnx"
    model = onnx.load(net)
    last = next(t for t in model.graph.initializer if tuple(t.dims) == (10,))
    b = onnx.numpy_helper.to_array(last).copy()
    b[2] += 0.3
    last.CopyFrom(onnx.numpy_helper.from_array(b, last.name))
    onnx.save(model, tmp_path / "shifted.onnx")
    f, g = load_graph_cached(net), graph_from_onnx(onnx.load(tmp_path / "shifted.onnx"))
    box = load_box(CIFAR / "cifar_wide_kw-img19-eps0.007973856209150327.vnnlib")
    runners = (OnnxRunner(str(net)), OnnxRunner(str(tmp_path / "shifted.onnx")))
    eps = np.full(10, 0.1)
    c = falsify.search(f, g, box, "linf", eps, np.random.default_rng(0), samples=300, runners=runners)
    assert c.points.shape[1] == box.dim and len(c.points) >= 32
    sampled = c.points[np.isclose(c.scores, 3.0, atol=1e-4)]
    assert len(sampled) and np.all(sampled == sampled.astype(np.float32))          # scored as float32 points
    assert np.all((c.points >= box.lo) & (c.points <= box.hi))
    cex, seen = falsify.confirm(*runners, c.points, box, "linf", eps)
    assert cex is not None and abs(seen - 0.3) < 1e-4


@pytest.mark.parametrize("seed", range(3))
def test_difference_of_a_masked_relu_that_reads_the_input(seed):
    """A ReLU reading a network input directly: both networks read the same input node (the difference graph
    once looked for a copy of it in B), with and without different masks."""
    from test_graph_ir import N, make_model
    r = np.random.default_rng(seed)
    m = make_model([N("Mul", ["x", "m"], ["zm"]), N("Relu", ["zm"], ["r"]), N("Mul", ["x", "a"], ["za"]),
                    N("Add", ["r", "za"], ["h"]), N("MatMul", ["h", "V"], ["y"])], [("x", (1, 5))], ["y"],
                   {"m": np.array([1.0, 0, 1, 0, 1]), "a": np.array([0.0, 1, 0, 0, 0]), "V": r.normal(size=(5, 2))})
    f = graph_from_onnx(m, check=False)
    assert [type(f.op(n)).__name__ for n in f.order][1] == "MaskedRelu"
    lo = r.uniform(-2.0, 1.0, size=f.n_inputs)
    box = Box(lo, lo + r.uniform(0.0, 2.0, size=f.n_inputs))
    for masks in (False, True):
        _assert_difference_sound(f, perturbed(f, r, masks=masks), box, r)


@pytest.mark.parametrize("name", ["avgpool_strides", "maxpool_2x2_s2", "avgpool_pads_exclude"])
def test_a_pool_written_and_read_back_pairs_with_the_original(name):
    """A pool's window sums or picks are Convs labelled `pooling`; equiv's written model reads back as plain
    Convs with the same weights, and the two still pair as one structure (this once fell back to the product
    graph, so `check` of a simplified Convnet_avgpool against its original proved only 0.9, not 1e-9)."""
    from equiv.ir.graph_align import align_to
    from equiv.ir.onnx_export import graph_to_onnx
    from equiv.prove.graph_check import difference_bounds
    from equiv.transform.fold import shrink
    r = np.random.default_rng(0)
    f, _, _ = shrink(graph_from_onnx(CASES[name](r), check=False))       # as `simplify` writes it
    written = graph_to_onnx(f)
    assert ("MaxPool" in [n.op_type for n in written.graph.node]) == name.startswith("maxpool")
    g = align_to(f, graph_from_onnx(written, check=False))
    assert any(getattr(f.op(n), "pooling", False) for n in f.order)
    difference_graph(f, g)                     # no StructureError
    lo = r.uniform(-1.0, 0.0, size=f.n_inputs)
    dlo, dhi = difference_bounds(f, g, Box(lo, lo + 1.0))
    assert np.abs(np.r_[dlo, dhi]).max() <= 1e-6


def test_output_bounds_and_parent_lines_keep_the_forward_magnitude_margin():
    """`output_bounds` (the verdict of `check` on chains) and a parent's input-space lines (evaluated on its
    sub-boxes) are widened by the forward-magnitude rounding margin, as every engine bound is: on a point box
    where terms of ~1e11 cancel in f and g, each is at least that margin wide and holds the exact (rational)
    value (the difference reads W_f - W_g, exact here, so its margin is small)."""
    from equiv.bounds.engine import _parts, rounding_margins
    W1 = [[1.0, 1.0], [1.0, 1.0 + 2.0 ** -40]]
    f = tiny_net([(W1, [0.0, 0.0]), ([[1e8, -1e8]], [0.0])])
    g = tiny_net([(W1, [0.0, 0.0]), ([[1e8, -1e8 * (1 + 2.0 ** -30)]], [0.0])])
    pair = align(f, g)
    x = np.array([[1000.25, 1000.75]])
    pb = pair_bounds(pair, x, x, forms=True)
    G = pair_graph(pair)
    M = rounding_margins(G, _parts(G, x, x))
    h = [Fraction(x[0, 0]) + Fraction(x[0, 1]), Fraction(x[0, 0]) + Fraction(1.0 + 2.0 ** -40) * Fraction(x[0, 1])]
    yf = Fraction(1e8) * h[0] - Fraction(1e8) * h[1]
    yg = Fraction(1e8) * h[0] - Fraction(1e8 * (1 + 2.0 ** -30)) * h[1]
    for which, exact in (("f", yf), ("g", yg), ("d", yf - yg)):
        lo, hi = output_bounds(pair, pb, np.eye(1), which)
        margin = M[G.meta["out"][which]].reshape(-1)[0]
        assert (margin > 1e-6 or which == "d") and hi[0, 0] - lo[0, 0] >= 2 * margin, which
        assert Fraction(lo[0, 0]) <= exact <= Fraction(hi[0, 0]), which
    for name, (Al, bl, Au, bu) in pb.forms.items():
        rows = np.isfinite(bl[0])
        width = (Au[0] @ x[0] + bu[0]) - (Al[0] @ x[0] + bl[0])
        assert np.all(width[rows] >= 2 * M[name].reshape(-1)[rows] * 0.999), name


def _residual_pair(path, d: float):
    """A 2-input residual DAG (Concat, Gemm, Relu, Gemm + skip, Relu, Gemm); d moves its second layer's weights."""
    from onnx import TensorProto, helper, numpy_helper
    rng, moved = np.random.default_rng(0), np.random.default_rng(5)
    W1, b1, W2, b2 = rng.normal(size=(4, 2)), rng.normal(size=4) * .5, rng.normal(size=(4, 4)), rng.normal(size=4) * .5
    W3, b3 = rng.normal(size=(1, 4)), np.zeros(1)
    C = lambda n, a: numpy_helper.from_array(np.asarray(a, np.float32), n)      # noqa: E731
    nodes = [helper.make_node("Concat", ["x", "y"], ["xy"], axis=1),
             helper.make_node("Gemm", ["xy", "W1", "b1"], ["z1"], transB=1), helper.make_node("Relu", ["z1"], ["h1"]),
             helper.make_node("Gemm", ["h1", "W2", "b2"], ["z2"], transB=1), helper.make_node("Add", ["z2", "h1"], ["r"]),
             helper.make_node("Relu", ["r"], ["h2"]), helper.make_node("Gemm", ["h2", "W3", "b3"], ["out"], transB=1)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 1]) for n in "xy"],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 1])],
                          [C("W1", W1), C("b1", b1), C("W2", W2 + d * moved.normal(size=W2.shape)), C("b2", b2),
                           C("W3", W3), C("b3", b3)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.save(m, path)
    return str(path)


def test_graph_measure_bisects_until_the_bound_meets_the_difference_seen(tmp_path, capsys):
    """A hunt: `check --measure` on graphs returned its first DeepPoly bound (0.095 against 0.073 seen) and
    called the piece equivalent; it now bisects (at most 6 varying inputs) until the bound is within 5 % of the
    largest difference seen, and the pieces say measured."""
    import json
    from equiv.cli import main
    a, b = _residual_pair(tmp_path / "a.onnx", 0.0), _residual_pair(tmp_path / "b.onnx", 0.01)
    code = main(["check", a, b, "--box", "-3:3,-3:3", "--measure", "--no-progress", "--time-limit", "60",
                 "--report", str(tmp_path / "r.json")])
    assert code == 0, capsys.readouterr().err
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["verdict"] == "measured" and rep["stats"]["pieces"]["measured"] >= 2
    assert rep["max_diff_lower"] <= rep["max_diff_upper"] <= rep["max_diff_lower"] * 1.05 + 1e-6
