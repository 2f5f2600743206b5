"""Skeleton pairs (`ir.pair_skeleton`): two networks with the same ReLUs but other linear parts (a BatchNorm folded
into its Conv, a layer factored into two) as graphs of one structure.  The pair computes exactly f and g; the
bounds it gives contain sampled differences on random DAGs; two forms of one function are bounded near 0
where the product graph is wide; `check` proves a BN-folded CNN equivalent to its original."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from test_graph_bounds import small_dags
from test_pair_graph import perturbed
from equiv.bounds.diff import difference_boxes
from equiv.bounds.engine import deeppoly_graph
from equiv.cli import main
from equiv.ir import graph_from_onnx, ops
from equiv.ir.graph import Graph
from equiv.ir.pair_graph import StructureError, difference_graph
from equiv.ir.pair_skeleton import skeleton_pair
from equiv.prove.graph_check import difference_bounds, product_graph
from equiv.spec.region import Box


def refactored(g: Graph, r) -> Graph:
    """g with every dense layer W x + b written as two ops, (W / c) x then a Scale c with the bias: the same
    function in real arithmetic, another linear structure (how an unfolded BatchNorm looks)."""
    nodes = []
    for n in g.order:
        op, args = g.op(n), g.args(n)
        if isinstance(op, ops.Dense):
            c = r.uniform(0.5, 2.0, size=op.W.shape[0])
            nodes.append((n + "~pre", dataclasses.replace(op, W=op.W / c[:, None], bias=None), args))
            nodes.append((n, ops.Scale(op.shape, s=c, bias=op.bias), [n + "~pre"]))
        else:
            nodes.append((n, op, args))
    return Graph.build(nodes, g.inputs, g.outputs)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problem=small_dags(), seed=st.integers(0, 2 ** 32 - 1), scale=st.sampled_from([0.0, 1e-3, 0.1, 1.0]))
def test_skeleton_pair_computes_both_networks_and_bounds_contain_samples(problem, seed, scale):
    f, box = problem
    r = np.random.default_rng(seed)
    g = refactored(perturbed(f, r, scale), r)
    fp, gp = skeleton_pair(f, g)
    X = np.vstack([box.sample(300, r), box.vertices(32, r)])
    np.testing.assert_array_equal(fp.forward(X), f.forward(X))       # (1 z + 0 z': no rounding at all)
    np.testing.assert_array_equal(gp.forward(X), g.forward(X))
    want = f.forward(X) - g.forward(X)
    tol = 1e-9 * (1 + np.abs(want))
    # the skeleton pair's own bound, whatever the closeness test would choose (it runs only on close pairs)
    G = difference_graph(fp, gp)
    b, _ = difference_boxes(G, box.lo[None], box.hi[None])
    out = G.meta["out"]["d"]
    slo, shi = b.lo[out][0].reshape(-1), b.hi[out][0].reshape(-1)
    assert np.all(want >= slo - tol) and np.all(want <= shi + tol)
    lo, hi = difference_bounds(f, g, box)
    assert np.all(want >= lo - tol) and np.all(want <= hi + tol)
    p = deeppoly_graph(product_graph(f, g), box)
    assert np.all(lo >= p.lo["diff"].reshape(-1)) and np.all(hi <= p.hi["diff"].reshape(-1))   # never looser
    if scale == 0.0:        # one function in two forms: only the engine's rounding margins separate them
        size = 1 + np.abs(f.forward(X)).max()
        assert np.maximum(-lo, hi).max() <= 1e-7 * size


def test_tensors_named_like_the_pairs_own_nodes_keep_their_meaning():
    """A hunt: a tensor of A named E~3/a (the pair's name for a mixing node) was silently replaced by the mix, so
    A's copy computed another function and `check` said EQUIVALENT at a difference of 5; other names made a
    cycle (exit 4).  Every node the pair adds now takes a name no tensor of A has."""
    r = np.random.default_rng(3)
    names = ["E~1/a", "E~1", "E~2/view", "E~2/b", "E~3/a"]
    nodes, cur = [("x", ops.Input((3,)), [])], "x"
    for k, name in enumerate(names[:4]):
        if k % 2 == 0:
            nodes.append((name, ops.Dense((4,), W=r.normal(size=(4, 3 if k == 0 else 4)), bias=r.normal(size=4)), [cur]))
        else:
            nodes.append((name, ops.Relu((4,)), [cur]))
        cur = name
    nodes.append((names[4], ops.Dense((2,), W=r.normal(size=(2, 4)), bias=r.normal(size=2)), [cur]))
    f = Graph.build(nodes, ["x"], [names[4]])
    g = refactored(perturbed(f, r, 0.01), r)
    fp, gp = skeleton_pair(f, g)
    box = Box(-np.ones(3), np.ones(3))
    X = box.sample(200, r)
    np.testing.assert_array_equal(fp.forward(X), f.forward(X))
    np.testing.assert_array_equal(gp.forward(X), g.forward(X))
    lo, hi = difference_bounds(f, g, box)
    want = f.forward(X) - g.forward(X)
    assert np.all(want >= lo - 1e-9) and np.all(want <= hi + 1e-9)


def test_networks_with_other_activations_are_refused():
    f = Graph.build([("x", ops.Input((2,)), []), ("z", ops.Dense((3,), W=np.ones((3, 2))), ["x"]),
                     ("h", ops.Relu((3,)), ["z"]), ("y", ops.Dense((1,), W=np.ones((1, 3))), ["h"])], ["x"], ["y"])
    g = Graph.build([("x", ops.Input((2,)), []), ("z", ops.Dense((4,), W=np.ones((4, 2))), ["x"]),
                     ("h", ops.Relu((4,)), ["z"]), ("y", ops.Dense((1,), W=np.ones((1, 4))), ["h"])], ["x"], ["y"])
    with pytest.raises(StructureError, match="activations differ"):
        skeleton_pair(f, g)


def test_a_zero_scale_passes_nothing_back():
    # y = 0 * relu(x) + x on [-1, 2]: [-1, 2] up to the rounding margin (the zero branch is skipped)
    g = Graph.build([("x", ops.Input((1,)), []), ("h", ops.Relu((1,)), ["x"]),
                     ("z", ops.Scale((1,), s=np.asarray(0.0)), ["h"]),
                     ("y", ops.Add((1,), in_shapes=[(1,), (1,)]), ["z", "x"])], ["x"], ["y"])
    b = deeppoly_graph(g, Box(np.array([-1.0]), np.array([2.0])))
    assert -1.0 - 1e-8 <= b.lo["y"][0] <= -1.0 and 2.0 <= b.hi["y"][0] <= 2.0 + 1e-8


def _cnn(path, folded: bool, gemm: bool = False):
    """A 2-layer CNN with BatchNormalization after each Conv, or the same network with the BNs folded (and with
    gemm, its first Conv written as a Gemm on the flattened image, ReLU on the flat vector, then a Reshape)."""
    r = np.random.default_rng(0)
    W1, b1, W2, b2 = r.normal(0, .5, (4, 2, 3, 3)), r.normal(0, .1, 4), r.normal(0, .3, (4, 4, 3, 3)), r.normal(0, .1, 4)
    bns = [(r.uniform(.5, 1.5, 4), r.normal(0, .1, 4), r.normal(0, .1, 4), r.uniform(.5, 2, 4)) for _ in range(2)]
    Wd, bd = r.normal(0, .3, (3, 16)), r.normal(0, .1, 3)
    inits, nodes, x = {"Wd": Wd, "bd": bd}, [], "x"
    for k, (W, b, (gam, beta, mean, var)) in enumerate([(W1, b1, bns[0]), (W2, b2, bns[1])], start=1):
        if folded:
            s = gam / np.sqrt(var + 1e-5)
            W, b = W * s[:, None, None, None], (b - mean) * s + beta
        inits |= {f"W{k}": W, f"b{k}": b}
        if gemm and k == 1:     # the conv's matrix: its response to each unit image, flattened in C order
            cols = [_conv(e.reshape(2, 6, 6), W) for e in np.eye(72)]
            inits |= {"M1": np.array(cols).T, "b1": np.repeat(b, 16), "shape1": np.array([1, 4, 4, 4])}
            nodes += [helper.make_node("Flatten", ["x"], ["xf"]), helper.make_node("Gemm", ["xf", "M1", "b1"], ["c1"], transB=1),
                      helper.make_node("Relu", ["c1"], ["r1f"]), helper.make_node("Reshape", ["r1f", "shape1"], ["r1"])]
            del inits["W1"]
            x = "r1"
            continue
        nodes.append(helper.make_node("Conv", [x, f"W{k}", f"b{k}"], [f"c{k}"]))
        if not folded:
            inits |= {f"g{k}": gam, f"be{k}": beta, f"m{k}": mean, f"v{k}": var}
            nodes.append(helper.make_node("BatchNormalization", [f"c{k}", f"g{k}", f"be{k}", f"m{k}", f"v{k}"],
                                          [f"n{k}"]))
        nodes.append(helper.make_node("Relu", [f"n{k}" if not folded else f"c{k}"], [f"r{k}"]))
        x = f"r{k}"
    nodes += [helper.make_node("Flatten", ["r2"], ["fl"]), helper.make_node("Gemm", ["fl", "Wd", "bd"], ["y"], transB=1)]
    ints = {k for k in inits if k.startswith("shape")}
    graph = helper.make_graph(nodes, "bn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
                              [numpy_helper.from_array(v.astype(np.int64 if k in ints else np.float32), k)
                               for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def _conv(x, W):
    """A valid 3 x 3 convolution of one (C, H, W) image, flattened in C order."""
    out = np.zeros((W.shape[0], x.shape[1] - 2, x.shape[2] - 2))
    for i in range(out.shape[1]):
        for j in range(out.shape[2]):
            out[:, i, j] = np.tensordot(W, x[:, i:i + 3, j:j + 3], axes=3)
    return out.reshape(-1)


@pytest.mark.parametrize("gemm,norm", [(False, "linf"), (True, "linf"), (True, "top1")],
                         ids=["folded", "folded-conv-as-gemm", "folded-conv-as-gemm-top1"])
def test_check_proves_a_batchnorm_folded_cnn_equivalent(tmp_path, capsys, gemm, norm):
    a, b = _cnn(tmp_path / "bn.onnx", False), _cnn(tmp_path / "folded.onnx", True, gemm)
    np.save(tmp_path / "c.npy", np.full((1, 2, 6, 6), 0.5, np.float32))
    f, g = graph_from_onnx(onnx.load(a)), graph_from_onnx(onnx.load(b))
    box = Box(np.full(72, 0.4), np.full(72, 0.6))
    p = deeppoly_graph(product_graph(f, g), box)
    assert np.maximum(-p.lo["diff"], p.hi["diff"]).max() > 1.0            # the product graph alone: hopeless
    report = tmp_path / "r.json"
    # (top-1 on a smaller ball, where DeepPoly proves A's class; the skeleton's bound then suffices)
    code = main(["check", str(a), str(b), "--center", str(tmp_path / "c.npy"), "--no-progress", "--report", str(report)]
                + (["--radius", "0.1", "--epsilon", "1e-5"] if norm == "linf" else ["--radius", "0.02", "--norm", "top1"]))
    assert code == 0, capsys.readouterr()
    import json
    rep = json.loads(report.read_text())
    assert rep["verdict"] == "equivalent" and rep["max_diff_upper"] <= 1e-5
