"""MILP decisions on graphs (equiv.prove.graph_milp): an exact MILP settles what the triangle relaxation
cannot, finds real witnesses for positions that are unstable, and a zero budget proves nothing.
"""

from __future__ import annotations

import numpy as np

from equiv.bounds.engine import deeppoly_graph
from equiv.ir import Graph
from equiv.ir.ops import Dense, Input, Relu
from equiv.prove.graph_milp import milp_stage
from equiv.spec.region import Box


def two_relus(offset: float) -> Graph:
    """x in [-1, 1]^2, a = relu(x1 + x2), b = relu(x1 - x2), t = a + b + offset, y = relu(t).
    a + b = 2 max(x1, 0) + ... reaches at most 2 (x1 = 1); the triangles give a + b <= x1 + 2 <= 3."""
    return Graph.build([("x", Input((1, 2)), []),
                        ("z", Dense((1, 2), W=np.array([[1.0, 1.0], [1.0, -1.0]]), bias=None), ["x"]),
                        ("h", Relu((1, 2)), ["z"]),
                        ("t", Dense((1, 1), W=np.array([[1.0, 1.0]]), bias=np.array([offset])), ["h"]),
                        ("y", Relu((1, 1)), ["t"])], ["x"], ["y"])


def _signs(g, box, n=500, seed=0):
    x = Box(box.lo, box.hi).sample(n, np.random.default_rng(seed))
    vals = g.evaluate(x)
    return ({r: (vals[g.args(r)[0]] > 0).any(axis=0) for r in g.relus},
            {r: (vals[g.args(r)[0]] < 0).any(axis=0) for r in g.relus})


def test_milp_proves_dead_what_the_triangles_cannot():
    g, box = two_relus(-2.5), Box([-1.0, -1.0], [1.0, 1.0])      # max t = 2 - 2.5 = -0.5: dead
    b = deeppoly_graph(g, box)
    assert b.hi["t"].item() > 0                                    # the relaxation leaves it open
    pos, neg = _signs(g, box)
    b2, stats = milp_stage(g, box, b, pos, neg, time_limit=10)
    assert b2.hi["t"].item() <= 0 and stats["milp_proved"] == 1
    assert b2.lo["t"].item() <= -2.5                               # the lower side is untouched (sound)


def test_milp_witnesses_an_unstable_position_sampling_missed():
    g, box = two_relus(-1.9), Box([-1.0, -1.0], [1.0, 1.0])      # t in [-1.9, 0.1]: positive near x1 = 1
    b = deeppoly_graph(g, box)
    pos = {r: np.zeros(g.shape(g.args(r)[0]), bool) for r in g.relus}
    neg = {r: np.ones(g.shape(g.args(r)[0]), bool) for r in g.relus}
    b2, stats = milp_stage(g, box, b, pos, neg, time_limit=10)
    assert pos["y"].all() and stats["milp_proved"] == 0            # a real point with t > 0, run in the graph
    assert b2.hi["t"].item() >= 0.1


def test_zero_budget_proves_nothing():
    g, box = two_relus(-2.5), Box([-1.0, -1.0], [1.0, 1.0])
    b = deeppoly_graph(g, box)
    pos, neg = _signs(g, box)
    b2, stats = milp_stage(g, box, b, pos, neg, time_limit=10, budget=0.0)
    assert stats["milp"] == 0 and stats["milp_skipped"] == 1
    assert b2.hi["t"].item() == b.hi["t"].item()
