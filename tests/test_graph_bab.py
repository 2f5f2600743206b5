"""Branch and bound on graphs (equiv.ir.graph_chain, equiv.prove.graph_bab): the chain form computes exactly
what the graph computes (residual branches carried, masked ReLUs kept), and the stage's proofs hold on
sampled points of the region, on hand-made graphs and on ResNet-2B."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import CIFAR, load_box, load_graph_cached, needs_cifar
from equiv.apps.graph_simplify import graph_phases, reduce_graph
from equiv.bounds.engine import deeppoly_graph
from equiv.ir import Graph, graph_from_onnx
from equiv.ir.graph_chain import NotAChain, lower_to_chain
from equiv.ir.ops import Dense, Input, Relu
from equiv.prove.graph_bab import bab_stage
from equiv.spec.region import Box
from test_graph_milp import two_relus
from test_graph_simplify import residual_model


def chain_inputs(ch, x: np.ndarray) -> list:
    """Each ReLU node's input computed by the chain form at the points x."""
    h, out = x, []
    for k in range(len(ch.relus)):
        A, c = ch.rows[k]
        out.append(h @ A.T + c)
        if k < len(ch.layers):
            W, b = ch.layers[k]
            z = h @ W.T + b
            h = np.where(ch.masks[k], np.maximum(z, 0.0), z)
    return out


def assert_same_as_graph(g: Graph, x: np.ndarray):
    ch = lower_to_chain(g)
    vals = g.evaluate(x)
    for r, z in zip(ch.relus, chain_inputs(ch, x)):
        np.testing.assert_allclose(z, vals[g.args(r)[0]].reshape(len(x), -1), rtol=1e-9, atol=1e-9)


def test_chain_form_of_a_residual_graph_and_of_its_masked_copy(rng):
    """The skip from the input is carried as linear positions; after reduce_graph (masked ReLUs: some
    positions the identity, some 0) the chain form still computes the graph."""
    g = graph_from_onnx(residual_model(rng))
    x = rng.uniform(-1, 1, size=(50, g.n_inputs))
    assert_same_as_graph(g, x)
    ch = lower_to_chain(g)
    assert [W.shape for W, _ in ch.layers] == [(64, 32)]         # relu(conv(x)) (32) and x carried (32)
    assert ch.masks[0].sum() == 32 and ch.rows[1][0].shape == (32, 64)
    box = Box(np.full(g.n_inputs, -1.0), np.ones(g.n_inputs))
    ph = graph_phases(g, box, "deeppoly")
    r = g.relus[0]
    ph.dead[r].reshape(-1)[:5] = True       # pretend-proved phases: only the arithmetic of masks is tested here
    ph.active[r].reshape(-1)[5:9] = True
    small = reduce_graph(g, ph)
    assert_same_as_graph(small, x)
    # the hidden bounds handed to branch and bound hold for the chain's values (0 at the zeroed positions)
    ch, b = lower_to_chain(small), deeppoly_graph(small, box)
    lo, hi = ch.hidden_bounds(small, box, b.lo, b.hi, 1)
    W, c = ch.layers[0]
    h = x @ W.T + c
    assert (h >= lo[0] - 1e-9).all() and (h <= hi[0] + 1e-9).all() and (lo[0][:5] == 0).all() and (hi[0][:5] == 0).all()


@needs_cifar
def test_chain_form_of_resnet_2b():
    g = load_graph_cached(CIFAR / "resnet_2b.onnx")
    box = load_box(CIFAR / "resnet_2b-img386-eps2_255.vnnlib")
    assert_same_as_graph(g, box.sample(20, np.random.default_rng(1)))


def test_a_too_wide_graph_is_not_lowered():
    g = Graph.build([("x", Input((1, 9000)), []),
                     ("z", Dense((1, 2), W=np.ones((2, 9000)), bias=None), ["x"]), ("h", Relu((1, 2)), ["z"]),
                     ("t", Dense((1, 1), W=np.ones((1, 2)), bias=None), ["h"]), ("y", Relu((1, 1)), ["t"])],
                    ["x"], ["y"])
    with pytest.raises(NotAChain, match="too large"):
        lower_to_chain(g)
    box = Box(np.full(9000, -1.0), np.ones(9000))
    b = deeppoly_graph(g, box)
    none = {r: np.zeros(g.shape(g.args(r)[0]), bool) for r in g.relus}
    b2, stats = bab_stage(g, box, b, dict(none), dict(none), budget=5.0)
    assert "too large" in stats["bab_not_run"] and stats["bab"] == 0 and b2 is b


def test_bab_proves_dead_what_the_triangles_cannot_and_hands_on_its_points():
    g, box = two_relus(-2.5), Box([-1.0, -1.0], [1.0, 1.0])      # max t = 2 - 2.5 = -0.5: dead
    b = deeppoly_graph(g, box)
    assert b.hi["t"].item() > 0
    none = lambda: {r: np.zeros(g.shape(g.args(r)[0]), bool) for r in g.relus}   # noqa: E731
    b2, stats = bab_stage(g, box, b, none(), none(), budget=10.0)
    assert b2.hi["t"].item() <= 0 and stats["bab_proved"] >= 1
    g, box = two_relus(-1.9), Box([-1.0, -1.0], [1.0, 1.0])      # t reaches 0.1 near x1 = 1: not dead
    b = deeppoly_graph(g, box)
    pos, neg, found = none(), none(), []
    b2, stats = bab_stage(g, box, b, pos, neg, budget=10.0, points=found)
    assert b2.hi["t"].item() > 0 and pos["y"].all()                # a real point with t > 0, run in the graph
    x = np.vstack(found)
    assert box.contains(x).all() and (g.evaluate(x)["t"] > 0).any()


def test_questions_ask_the_likelier_side_first_and_the_likeliest_proofs_first():
    """One position per line: z in [lo, hi]; the dead side is likelier when hi <= -lo.  All likelier sides
    come before any other side, and within each round the questioned end nearest 0 (relative) first."""
    from equiv.bounds.engine import GraphBounds
    from equiv.prove.graph_bab import _questions
    g = Graph.build([("x", Input((1, 4)), []), ("z", Dense((1, 4), W=np.eye(4), bias=None), ["x"]),
                     ("h", Relu((1, 4)), ["z"])], ["x"], ["h"])
    lo, hi = np.array([-1.0, -0.1, -3.0, -1.0]), np.array([0.5, 2.0, 0.3, 0.9])
    b = GraphBounds({"z": lo[None]}, {"z": hi[None]})
    none = {"h": np.zeros((1, 4), bool)}
    rows, signs = _questions(g, b, "h", np.arange(4), none, none)
    # likelier: 0 dead (0.5 / 1.5), 1 active (0.1 / 2.1), 2 dead (0.3 / 3.3), 3 dead (0.9 / 1.9)
    assert rows.tolist() == [1, 2, 0, 3, 3, 0, 2, 1] and signs.tolist() == [-1, 1, 1, 1, -1, -1, -1, 1]
    pos = {"h": np.array([[True, False, False, False]])}          # a real point showed z_0 > 0: never "dead"
    rows, signs = _questions(g, b, "h", np.arange(4), pos, none)
    assert (0, 1.0) not in set(zip(rows.tolist(), signs.tolist())) and rows.size == 7


def test_later_rounds_take_what_the_first_left(monkeypatch):
    """With no time for any layer in the first round (caps 0), a second round with the budget's rest proves
    the dead position; without a budget there is no second round."""
    import equiv.prove.graph_bab as gb
    monkeypatch.setattr(gb, "LAYER_BASE", 0.0)
    monkeypatch.setattr(gb, "LAYER_PER", 0.0)
    g, box = two_relus(-2.5), Box([-1.0, -1.0], [1.0, 1.0])
    b = deeppoly_graph(g, box)
    none = lambda: {r: np.zeros(g.shape(g.args(r)[0]), bool) for r in g.relus}   # noqa: E731
    b2, stats = bab_stage(g, box, b, none(), none(), budget=10.0)
    assert b2.hi["t"].item() <= 0 and stats["bab_proved"] >= 1 and stats["bab_rounds"] == 2
    b3, stats = bab_stage(g, box, b, none(), none(), budget=None)
    assert b3.hi["t"].item() > 0 and stats["bab_proved"] == 0 and stats["bab_rounds"] == 1


@needs_cifar
def test_bab_on_resnet_2b_is_sampled_sound():
    """A few seconds of the stage on ResNet-2B (from DeepPoly bounds) settles positions; none is contradicted
    by 3000 sampled points and the vertices, and every point it hands on lies in the box."""
    g = load_graph_cached(CIFAR / "resnet_2b.onnx")
    box = load_box(CIFAR / "resnet_2b-img386-eps2_255.vnnlib")
    rng = np.random.default_rng(0)
    x = np.vstack([box.sample(3000, rng), box.vertices(64, rng)])
    vals = g.evaluate(x[:200])
    pos = {r: (vals[g.args(r)[0]] > 0).any(axis=0) for r in g.relus}
    neg = {r: (vals[g.args(r)[0]] < 0).any(axis=0) for r in g.relus}
    b = deeppoly_graph(g, box)
    found = []
    b2, stats = bab_stage(g, box, b, pos, neg, budget=8.0, points=found)
    assert stats["bab_proved"] > 0
    vals = g.evaluate(x)
    newly = 0
    for r in g.relus:
        z = g.args(r)[0]
        v = vals[z]
        dead, active = b2.hi[z] <= 0, b2.lo[z] >= 0
        newly += int((dead & ~(b.hi[z] <= 0)).sum() + (active & ~(b.lo[z] >= 0)).sum())
        assert not (v[:, dead] > 1e-9).any() and not (v[:, active] < -1e-9).any()
    assert newly >= stats["bab_proved"] > 0
    assert all(box.contains(p).all() for p in found)


def test_affine_layers_are_shown_unstable_by_their_corners():
    """t = sum(x) - 99.5 on [0, 1]^100 is positive only near the all-ones corner, which no sample or random
    vertex reaches; its bounds are exact (affine in the input), and the corner they come from is run in the
    graph: t is unstable, not unknown, and that corner is a validation witness."""
    n = 100
    g = Graph.build([("x", Input((1, n)), []), ("t", Dense((1, 1), W=np.ones((1, n)), bias=np.array([-99.5])), ["x"]),
                     ("y", Relu((1, 1)), ["t"])], ["x"], ["y"])
    box = Box(np.zeros(n), np.ones(n))
    ph = graph_phases(g, box, "deeppoly", samples=200)
    assert ph.unstable["y"].all() and ph.counts()["unknown"] == 0 and ph.stats["affine_corners"] == 1
    assert (g.evaluate(ph.witnesses)["t"] > 0).any() and box.contains(ph.witnesses).all()
