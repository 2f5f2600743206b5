"""compress on graphs.  ALDS low rank: the min-max allocation against brute force, exact factors at full rank
(convs stay convs, channel groups included), data-aware factors best on their inputs; pruning and rounding
makers; bounds composed through the simplification never below sampled differences; onnxruntime agreement
of every written candidate; certified compression of a real CIFAR ResNet, re-checked independently."""

from __future__ import annotations

import itertools
import json

import numpy as np
import onnx
import pytest
from hypothesis import given, settings, strategies as st

from equiv.apps.compress.graph_lowrank import (Factor, Moments, factorable, factored_nodes, graph_lowrank, moments,
                                               options)
from equiv.apps.compress.lowrank import Option, allocate
from equiv.artifacts.validate import OnnxRunner
from equiv.cli import main
from equiv.ir import ops
from equiv.ir.graph import Graph
from equiv.ir.onnx_export import graph_to_onnx
from equiv.ir.onnx_import import graph_from_onnx
from equiv.spec.region import Box
from test_graph_simplify import CIFAR, conv_dense_model, needs_cifar, residual_model


# ---- the allocation over arbitrary options --------------------------------------------------------------

@st.composite
def layer_options(draw):
    n = draw(st.integers(1, 4))
    opts = [Option(draw(st.integers(10, 30)), 0.0, "whole")]
    for k in range(n):
        opts.append(Option(draw(st.integers(1, 29)), draw(st.floats(0.01, 1.0)), k))
    return opts


@settings(max_examples=150, deadline=None)
@given(st.lists(layer_options(), min_size=1, max_size=3), st.integers(3, 90))
def test_allocate_matches_brute_force(layers, budget):
    picked, err = allocate(layers, budget)
    assert err == max(o.error for o in picked)
    feasible = [combo for combo in itertools.product(*layers) if sum(o.cost for o in combo) <= budget]
    if not feasible:      # nothing fits: the cheapest option of each layer
        assert [o.cost for o in picked] == [min(o.cost for o in opts) for opts in layers]
        return
    assert sum(o.cost for o in picked) <= budget
    assert err == min(max(o.error for o in combo) for combo in feasible)


# ---- factors ----------------------------------------------------------------------------------------------

def _graph(model) -> Graph:
    return graph_from_onnx(model)


def _full_rank_graph(g: Graph, groups: int) -> Graph:
    """Every factorable layer factored at the largest rank of its groups (an exact rewrite)."""
    nodes = []
    for n in g.order:
        op = g.op(n)
        if n not in factorable(g):
            nodes.append((n, op, g.args(n)))
            continue
        if isinstance(op, ops.Dense):
            m = Moments([np.eye(op.W.shape[1])], np.zeros(op.W.shape[1]))
            f = Factor(min(op.W.shape), 1)
        else:
            gr = groups if op.W.shape[1] % groups == 0 else 1
            k = op.W[0].size // gr
            m = Moments([np.eye(k)] * gr, None)
            f = Factor(min(op.W.shape[0], k), gr)
        nodes += factored_nodes(n, op, g.args(n), f, m)
    return Graph.build(nodes, g.inputs, g.outputs)


@pytest.mark.parametrize("groups", [1, 2, 4])
@pytest.mark.parametrize("make", [conv_dense_model, residual_model])
def test_full_rank_factors_are_exact_and_stay_convolutions(make, groups, rng, tmp_path):
    model = make(rng)
    g = _graph(model)
    f = _full_rank_graph(g, groups)
    exported = graph_to_onnx(f)
    kinds = [n.op_type for n in exported.graph.node]
    assert kinds.count("Conv") == 2 * sum(isinstance(g.op(n), ops.Conv) for n in factorable(g))
    x = rng.uniform(-1, 1, size=(300, g.n_inputs))
    assert np.abs(f.forward(x) - g.forward(x)).max() < 1e-9
    y_ref, y_new = OnnxRunner(model)(x), OnnxRunner(exported)(x)
    assert np.abs(y_ref - y_new).max() < 1e-4


def test_data_aware_conv_factor_is_best_on_its_patches(rng):
    """On the sampled inputs, the data-aware rank-r conv beats plain SVD truncation of the kernel (mean square)."""
    g = _graph(conv_dense_model(rng))
    conv = next(n for n in factorable(g) if isinstance(g.op(n), ops.Conv))
    # inputs living near a low-dimensional set: the data-aware factor should exploit it
    basis = rng.normal(size=(3, g.n_inputs))
    pts = rng.normal(size=(600, 3)) @ basis * 0.3 + 0.1
    mom = moments(g, [conv], pts)
    op = g.op(conv)
    r = 2
    aware = Graph.build([(n, g.op(n), g.args(n)) for n in g.order if n != conv and g.order.index(n) < g.order.index(conv)]
                        + factored_nodes(conv, op, g.args(conv), Factor(r, 1), mom[conv][1]), g.inputs, [conv])
    k = op.W[0].size
    plain = Graph.build([(n, g.op(n), g.args(n)) for n in g.order if n != conv and g.order.index(n) < g.order.index(conv)]
                        + factored_nodes(conv, op, g.args(conv), Factor(r, 1), Moments([np.eye(k)], None)),
                        g.inputs, [conv])
    exact = g.evaluate(pts)[conv].reshape(len(pts), -1)
    err_aware = np.mean((aware.forward(pts) - exact) ** 2)
    err_plain = np.mean((plain.forward(pts) - exact) ** 2)
    assert err_aware <= err_plain * (1 + 1e-9)
    # and the allocation's error estimate is the relative rms error of the factored layer on the samples
    opt = next(o for o in options(op, mom[conv]) if o.choice == Factor(r, 1))
    bias = np.broadcast_to(op.bias, exact.shape[1:] if op.bias.ndim == 1 else op.shape[1:]).reshape(-1)
    rel = np.sqrt(np.sum((aware.forward(pts) - exact) ** 2) / np.sum((exact - bias) ** 2))
    assert opt.error == pytest.approx(rel, rel=1e-6)


def test_lowrank_levels_shrink_and_every_written_model_agrees_with_onnxruntime(rng):
    g = _graph(residual_model(rng))
    box = Box(np.full(32, 0.2), np.full(32, 0.6))
    pts = box.sample(500, rng)
    sizes = []
    for level in (0.9, 0.5, 0.2):
        cand, note = graph_lowrank(g, level, pts)
        weights = sum(int(cand.op(n).W.size) for n in cand.order if isinstance(cand.op(n), (ops.Dense, ops.Conv)))
        sizes.append(weights)
        assert "relative rms error" in note
        x = np.vstack([box.sample(200, rng), box.center[None]])
        assert np.abs(OnnxRunner(graph_to_onnx(cand))(x) - cand.forward(x)).max() < 1e-4
    assert sizes == sorted(sizes, reverse=True)


# ---- certified compression of a real ResNet ------------------------------------------------------------

@needs_cifar
def test_compress_resnet_top1_with_lowrank_is_proved_and_rechecked(tmp_path, capsys):
    """ResNet-2B on a shared CIFAR spec, top-1: the search ends with a low-rank model far smaller than the exact
    simplification; the delivered file passes an independent `check --norm top1` and 10 000 onnxruntime points."""
    from equiv.spec.region import load_region
    model = CIFAR / "resnet_2b.onnx"
    spec = CIFAR / "resnet_2b-img386-eps2_255.vnnlib"
    out, rep = tmp_path / "small.onnx", tmp_path / "r.json"
    code = main(["compress", str(model), "--spec", str(spec), "--preserve", "top1", "-o", str(out),
                 "--report", str(rep), "--no-progress", "--simplify-budget", "10", "--bisect-steps", "2",
                 "--makers", "lowrank"])
    report = json.loads(rep.read_text())
    capsys.readouterr()
    assert code == 0, report
    assert report["best"]["maker"] == "lowrank" and report["best"]["verdict"] == "equivalent"
    assert report["best"]["params"] < 0.5 * report["original"]["params"]
    assert all(r["verdict"] != "equivalent" or r["proven_bound"] is not None for r in report["candidates"])
    assert main(["check", str(model), str(out), "--spec", str(spec), "--norm", "top1", "--no-progress"]) == 0
    capsys.readouterr()
    box, _ = load_region(spec=str(spec))
    x = np.vstack([box.sample(10000, np.random.default_rng(9)), box.random_vertices(64, np.random.default_rng(9))])
    ya, yb = OnnxRunner(str(model))(x), OnnxRunner(str(out))(x)
    assert np.array_equal(ya.argmax(axis=1), yb.argmax(axis=1))


# ---- pruning and rounding makers --------------------------------------------------------------------------

@pytest.mark.parametrize("make", [conv_dense_model, residual_model])
def test_weight_pruning_and_rounding_keep_the_structure(make, rng):
    from equiv.apps.compress.graph_makers import prune_weights, round_graph, weight_layers
    g = _graph(make(rng))
    x = rng.uniform(-1, 1, size=(200, g.n_inputs))
    for level in (0.9, 0.5, 0.1):
        p = prune_weights(g, level)
        for n in weight_layers(g):
            W = g.op(n).W
            assert np.count_nonzero(p.op(n).W == 0) >= int(np.floor((1 - level) * W.size))
            kept = p.op(n).W != 0
            assert np.array_equal(p.op(n).W[kept], W[kept])           # the survivors are untouched
            if kept.any() and (~kept).any():
                assert np.abs(W[~kept]).max() <= np.abs(W[kept]).min()   # the smallest went
        assert np.abs(OnnxRunner(graph_to_onnx(p))(x) - p.forward(x)).max() < 1e-4
    f16, i8 = round_graph(g, "float16"), round_graph(g, "int8")
    for n in weight_layers(g):
        assert np.array_equal(f16.op(n).W, g.op(n).W.astype(np.float16).astype(float))
        rows = i8.op(n).W.reshape(g.op(n).W.shape[0], -1)
        scale = np.abs(g.op(n).W.reshape(rows.shape[0], -1)).max(axis=1, keepdims=True) / 127
        assert np.allclose(rows / scale, np.round(rows / scale), atol=1e-6)    # integer levels per row
    for r in (f16, i8):
        assert np.abs(OnnxRunner(graph_to_onnx(r))(x) - r.forward(x)).max() < 1e-4


def test_channel_pruning_deletes_what_it_masks(rng):
    from equiv.apps.compress.graph_makers import channel_scores, mask_channels, prune_channels
    g = _graph(conv_dense_model(rng))
    box = Box(np.full(72, -0.5), np.full(72, 0.5))
    pts = box.sample(400, rng)
    scores = channel_scores(g, pts)
    assert set(scores) == set(g.relus)
    small = prune_channels(g, 0.5, scores)
    assert small.n_params < g.n_params
    # the same function as the masked graph: the lowest-scoring half of the channels set to 0
    pool = sorted((s, n, c) for n, v in scores.items() for c, s in enumerate(v))
    drop = {n: [] for n in scores}
    for s, n, c in pool[:len(pool) // 2]:
        if len(drop[n]) < len(scores[n]) - 1:
            drop[n].append(c)
    masked = mask_channels(g, drop)
    x = box.sample(300, rng)
    assert np.abs(small.forward(x) - masked.forward(x)).max() < 1e-9
    assert np.abs(OnnxRunner(graph_to_onnx(small))(x) - small.forward(x)).max() < 1e-4


@pytest.mark.parametrize("make", [conv_dense_model, residual_model])
def test_bounds_through_the_simplification_are_sound(make, rng, tmp_path):
    """check_graphs(A, C, via=(S, -b, b)): the bound composed from |A - S| <= b and DeepPoly of S - C on their
    difference graph is never below the difference sampled in onnxruntime, and is tight for float16."""
    from equiv.apps.compress.graph_makers import prune_weights, round_graph
    from equiv.apps.graph_simplify import simplify_graph
    from equiv.prove.equivalence import CheckOptions
    from equiv.prove.graph_check import check_graphs
    model = make(rng)
    path = tmp_path / "a.onnx"
    onnx.save(model, str(path))
    A = graph_from_onnx(model)
    box = Box(np.full(A.n_inputs, 0.1), np.full(A.n_inputs, 0.4))
    sim = simplify_graph(A, OnnxRunner(model), box, method="milp", budget=5, validation_samples=500)
    s_path = tmp_path / "s.onnx"
    onnx.save(sim.onnx_model, str(s_path))
    S = graph_from_onnx(sim.onnx_model)
    x = np.vstack([box.sample(3000, rng), box.random_vertices(64, rng)])
    b = float(np.abs(OnnxRunner(model)(x) - OnnxRunner(sim.onnx_model)(x)).max()) + 1e-6   # stands in for the record
    for cand in (round_graph(S, "float16"), prune_weights(S, 0.8)):
        c_model = graph_to_onnx(cand)
        c_path = tmp_path / "c.onnx"
        onnx.save(c_model, str(c_path))
        C = graph_from_onnx(c_model)
        opt = CheckOptions(norm="linf", epsilon=10.0, seed=0, samples=500)
        res = check_graphs(A, C, [box], OnnxRunner(model), OnnxRunner(c_model), opt,
                           via=(S, np.full(A.n_outputs, -b), np.full(A.n_outputs, b)))
        seen = np.abs(OnnxRunner(model)(x) - OnnxRunner(c_model)(x)).max()
        assert res.max_diff_upper >= seen - 1e-6
        assert any("through a base" in n for n in res.notes)
        plain = check_graphs(A, C, [box], OnnxRunner(model), OnnxRunner(c_model), opt)
        # (plain: C read as A's structure where it aligns, then as tight as the base's route up to its b)
        assert res.max_diff_upper <= plain.max_diff_upper + b + 1e-9 or not np.isfinite(plain.max_diff_upper)


def test_cli_compress_graph_linf_with_every_maker(tmp_path, capsys, rng):
    """linf on a conv net: simplification, low rank, channels, weights and rounding all tried (each allocation
    once); the delivered file is re-checked by `equiv check` and 10 000 onnxruntime points."""
    path = tmp_path / "m.onnx"
    onnx.save(conv_dense_model(rng), str(path))
    box_text = ",".join(["-0.3:0.3"] * 72)
    box = Box(np.full(72, -0.3), np.full(72, 0.3))
    out, rep = tmp_path / "small.onnx", tmp_path / "r.json"
    code = main(["compress", str(path), "--box", box_text, "--epsilon", "0.2", "--metric", "nonzero",
                 "--makers", "lowrank,neurons,weights,float16,int8,affine", "-o", str(out), "--report", str(rep),
                 "--no-progress"])
    report = json.loads(rep.read_text())
    capsys.readouterr()
    assert code == 0, report
    makers = {r["maker"] for r in report["candidates"]}
    assert {"simplify", "lowrank", "channels", "weights", "float16", "int8"} <= makers
    assert any("affine" in n and "dense chains only" in n for n in report["notes"])
    assert report["validation"]["ok"] and report["best"]["nonzero"] < report["original"]["nonzero"]
    # rounding keeps the simplification's structure: bounded through it, tightly enough to be proved
    f16 = next(r for r in report["candidates"] if r["maker"] == "float16")
    assert f16["verdict"] == "equivalent" and "bounded through" in f16["note"], f16
    assert main(["check", str(path), str(out), "--box", box_text, "--epsilon", "0.2", "--no-progress"]) == 0
    capsys.readouterr()
    x = np.vstack([box.sample(10000, np.random.default_rng(3)), box.random_vertices(256, np.random.default_rng(3))])
    assert np.abs(OnnxRunner(str(path))(x) - OnnxRunner(str(out))(x)).max() <= 0.2


def test_float16_is_skipped_when_a_weight_is_beyond_its_range(tmp_path):
    """A weight of 1e5 has no float16 value: the float16 maker wrote an infinite weight and the whole run
    stopped (exit 2, nothing written, found by a hunt).  Now that candidate is skipped with a note and the
    best proved model is written, within epsilon in onnxruntime."""
    from onnx import TensorProto, helper, numpy_helper
    from equiv.cli import main
    from equiv.spec.region import Box
    r = np.random.default_rng(0)
    W1 = r.normal(0, .6, (2, 1, 3, 3)).astype(np.float32)
    b1 = np.array([0.5, -3.0], np.float32)          # channel 1 dead on the box
    W2 = r.normal(0, .6, (3, 18)).astype(np.float32)
    W2[0, 0] = 1e5
    N = helper.make_node
    g = helper.make_graph([N("Conv", ["x", "W1", "b1"], ["c"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
                           N("Relu", ["c"], ["r"]), N("Flatten", ["r"], ["f"]), N("Gemm", ["f", "W2", "b2"], ["y"], transB=1)],
                          "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 3, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
                          [numpy_helper.from_array(a, k) for k, a in
                           {"W1": W1, "b1": b1, "W2": W2, "b2": r.normal(0, .3, 3).astype(np.float32)}.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    src, out, rep = tmp_path / "m.onnx", tmp_path / "c.onnx", tmp_path / "r.json"
    onnx.save(m, str(src))
    box = Box(np.zeros(9), np.full(9, 0.1))
    assert main(["compress", str(src), "--box", ",".join(["0:0.1"] * 9), "--epsilon", "0.01", "-o", str(out),
                 "--report", str(rep), "--no-progress"]) == 0
    report = json.loads(rep.read_text())
    assert any(n.startswith("float16: not tried") for n in report["notes"]), report["notes"]
    x = np.vstack([box.sample(3000, r), box.vertices(256, r)])
    assert np.abs(OnnxRunner(str(src))(x) - OnnxRunner(str(out))(x)).max() <= 0.01


@needs_cifar
def test_sigterm_after_a_certified_candidate_leaves_no_file(tmp_path):
    """compress on a graph keeps its best certified file beside the work folder while it searches; a SIGTERM
    then left that hidden file in the output folder (found by a hunt).  Now: exit 143 and an empty folder."""
    import glob
    import os
    import sys
    from conftest import sigterm_when
    out = tmp_path / "out"
    out.mkdir()
    cli = [sys.executable, "-c", "import sys\nfrom equiv.cli import main\nsys.exit(main())"]
    code, err = sigterm_when(cli + ["compress", CIFAR / "cifar_wide_kw.onnx", "--spec",
                                    CIFAR / "cifar_wide_kw-img19-eps0.007973856209150327.vnnlib", "--epsilon", "0.05",
                                    "-o", out / "w.onnx", "--no-progress", "--time-limit", "300"],
                             lambda: bool(glob.glob(str(out / ".*.best.onnx"))))
    assert code == 143, err
    assert sorted(os.listdir(out)) == []
