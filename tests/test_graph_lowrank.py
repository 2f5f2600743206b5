"""ALDS low rank on graphs: the min-max allocation against brute force, exact factors at full rank (convs stay
convs, channel groups included), data-aware factors best on their inputs, onnxruntime agreement of every
written candidate, and certified compression of a real CIFAR ResNet."""

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
                 "--report", str(rep), "--no-progress", "--simplify-budget", "10", "--bisect-steps", "2"])
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
