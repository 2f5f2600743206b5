"""MILP decisions on graphs (equiv.prove.graph_milp): an exact MILP settles what the triangle relaxation
cannot, finds real witnesses for positions that are unstable, and a zero budget proves nothing.
"""

from __future__ import annotations

import numpy as np
import pytest

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


def two_convs(seed: int = 5) -> tuple[Graph, Box]:
    """Two random 3x3 convolutions with ReLUs on a 6x6 image in [-0.5, 0.5]^36."""
    from equiv.ir.conv import ConvGeometry
    from equiv.ir.ops import Conv
    rng = np.random.default_rng(seed)
    g = Graph.build([("x", Input((1, 1, 6, 6)), []),
                     ("c1", Conv((1, 2, 6, 6), W=rng.normal(size=(2, 1, 3, 3)), bias=rng.normal(size=(2, 1, 1)) * 0.3,
                                 geo=ConvGeometry(1, 6, 6, 2, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1)), ["x"]),
                     ("r1", Relu((1, 2, 6, 6)), ["c1"]),
                     ("c2", Conv((1, 2, 6, 6), W=rng.normal(size=(2, 2, 3, 3)), bias=np.full((2, 1, 1), -1.0),
                                 geo=ConvGeometry(2, 6, 6, 2, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1)), ["r1"]),
                     ("r2", Relu((1, 2, 6, 6)), ["c2"])], ["x"], ["r2"])
    return g, Box(np.full(36, -0.5), np.full(36, 0.5))


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
    found = []
    b2, stats = milp_stage(g, box, b, pos, neg, time_limit=10, points=found)
    assert pos["y"].all() and stats["milp_proved"] == 0            # a real point with t > 0, run in the graph
    assert b2.hi["t"].item() >= 0.1
    x = np.vstack(found)                                           # ... and handed on for validation
    assert len(x) == 1 and box.contains(x).all() and g.evaluate(x)["t"].item() > 0


@pytest.mark.parametrize("bab", [True, False])
def test_graph_phases_hands_the_solvers_points_to_validation(bab):
    """graph_phases with milp on t = 0.1 - |x1 - 0.5|, positive only for x1 in (0.4, 0.6): no vertex and not
    the centre shows it, branch and bound's point does (or without it, the MILP's), and that point is among the
    witnesses the simplified model is validated on."""
    from equiv.apps.graph_simplify import graph_phases
    g = Graph.build([("x", Input((1, 2)), []),
                     ("z", Dense((1, 2), W=np.array([[1.0, 0.0], [-1.0, 0.0]]), bias=np.array([-0.5, 0.5])), ["x"]),
                     ("h", Relu((1, 2)), ["z"]),
                     ("t", Dense((1, 1), W=np.array([[-1.0, -1.0]]), bias=np.array([0.1])), ["h"]),
                     ("y", Relu((1, 1)), ["t"])], ["x"], ["y"])
    box = Box([-1.0, -1.0], [1.0, 1.0])
    ph = graph_phases(g, box, method="milp", samples=0, time_limit=10, bab=bab)
    assert ph.unstable["y"].all()
    assert (ph.stats["bab_witness"] == 1 and ph.stats["milp"] == 0) if bab else \
        (ph.stats["milp"] == 1 and "bab" not in ph.stats)
    assert box.contains(ph.witnesses).all()
    assert (g.evaluate(ph.witnesses)["t"] > 0).any()


def test_zero_budget_proves_nothing():
    g, box = two_relus(-2.5), Box([-1.0, -1.0], [1.0, 1.0])
    b = deeppoly_graph(g, box)
    pos, neg = _signs(g, box)
    b2, stats = milp_stage(g, box, b, pos, neg, time_limit=10, budget=0.0)
    assert stats["milp"] == 0 and stats["milp_skipped"] == 1
    assert b2.hi["t"].item() == b.hi["t"].item()


def test_cone_encoding_matches_the_whole_graph_on_a_conv_net():
    """The MILP of one position's cone of influence has the same optimum as the whole graph's MILP,
    and far fewer variables (a 3x3 window per convolution)."""
    from equiv.encode.graph import cone_of, encode_graph
    from equiv.ir.conv import ConvGeometry
    from equiv.ir.ops import Conv
    from equiv.solvers.base import Status
    from equiv.solvers.highs import HighsBackend
    rng = np.random.default_rng(5)
    g = Graph.build([("x", Input((1, 1, 8, 8)), []),
                     ("c1", Conv((1, 3, 8, 8), W=rng.normal(size=(3, 1, 3, 3)), bias=rng.normal(size=(3, 1, 1)) * 0.1,
                                 geo=ConvGeometry(1, 8, 8, 3, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1)), ["x"]),
                     ("r1", Relu((1, 3, 8, 8)), ["c1"]),
                     ("c2", Conv((1, 2, 8, 8), W=rng.normal(size=(2, 3, 3, 3)), bias=rng.normal(size=(2, 1, 1)) * 0.1,
                                 geo=ConvGeometry(3, 8, 8, 2, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1)), ["r1"]),
                     ("r2", Relu((1, 2, 8, 8)), ["c2"])], ["x"], ["r2"])
    box = Box(np.full(64, -1.0), np.ones(64))
    b = deeppoly_graph(g, box)
    whole = encode_graph(g, box, b, upto="c2", integer=True)
    for p in (0, 27, 100):
        cone = cone_of(g, "c2", p)
        assert cone["r1"].sum() <= 27 and cone["x"].sum() <= 25
        part = encode_graph(g, box, b, upto="c2", integer=True, cone=cone)
        assert part.model.A.shape[1] < whole.model.A.shape[1] / 3      # (every input keeps its variable)
        for sign in (1.0, -1.0):
            r_whole = HighsBackend(whole.model).maximize(*whole.objective("c2", p, sign), integer=True, time_limit=5)
            r_part = HighsBackend(part.model).maximize(*part.objective("c2", p, sign), integer=True, time_limit=30)
            assert r_part.status == Status.OPTIMAL
            # both bounds hold for the same optimum (each >= the other's point), and the point of the cone's
            # optimum is real: run in the graph, it reaches the bound (up to the MIP gap)
            assert r_part.bound >= r_whole.objective - 1e-7 and r_whole.bound >= r_part.objective - 1e-7
            x = r_part.x[part.model.groups["x"]]
            assert sign * g.evaluate(x[None])["c2"].reshape(-1)[p] == pytest.approx(r_part.bound, rel=1e-3)
            if r_whole.status == Status.OPTIMAL:     # (the whole graph's MILP may run out of time: that is the point)
                assert r_part.bound == pytest.approx(r_whole.bound, rel=1e-3, abs=1e-6)


@pytest.mark.parametrize("backend", ["highs", "gurobi", "cbc", "admm"])
def test_graph_lp_and_milp_stages_on_every_backend(backend):
    """The graph's LP and MILP stages run on every backend (admm solves the LPs; its MILP decisions use
    highs): the same LP bound (max t = 0.5 on the triangles) and the same MILP proof (t is dead)."""
    from equiv.prove.graph_lp import lp_stage
    from equiv.solvers import available_backends
    if backend not in available_backends():
        pytest.skip(f"{backend} not installed")
    g, box = two_relus(-2.5), Box([-1.0, -1.0], [1.0, 1.0])
    b = deeppoly_graph(g, box)
    pos, neg = _signs(g, box)
    b_lp, s_lp = lp_stage(g, box, b, dict(pos), dict(neg), time_limit=10, backend=backend)
    assert s_lp["lp"] == 1 and b_lp.hi["t"].item() == pytest.approx(0.5, abs=1e-4) and b_lp.hi["t"].item() >= 0.5 - 1e-9
    b_milp, s_milp = milp_stage(g, box, b, dict(pos), dict(neg), time_limit=10, backend=backend)
    assert s_milp["milp_proved"] == 1 and b_milp.hi["t"].item() <= 0


@pytest.mark.parametrize("seed", [5, 7])
def test_threads_decide_what_one_by_one_decides(seed):
    """Two decisions in flight (threads) settle the same positions as one at a time, with no budget (they may
    ask more: a point found by one decision cannot spare the one already running); every position they settle
    keeps its sign on sampled points of the region (sampled soundness)."""
    g, box = two_convs(seed)      # (seeds where the MILPs prove what DeepPoly cannot)
    b = deeppoly_graph(g, box)
    out = {}
    for threads in (1, 2):
        pos = {r: np.zeros(g.shape(g.args(r)[0]), bool) for r in g.relus}   # no sampled signs: every open
        neg = {r: np.zeros(g.shape(g.args(r)[0]), bool) for r in g.relus}   # position gets a decision
        out[threads] = milp_stage(g, box, b, pos, neg, time_limit=30, threads=threads)
    (b1, s1), (b2, s2) = out[1], out[2]
    assert s2["milp"] >= s1["milp"] > 4 and s1["milp_proved"] == s2["milp_proved"] > 0
    x = box.sample(3000, np.random.default_rng(0))
    vals = g.evaluate(x)
    for z in ("c1", "c2"):
        assert np.array_equal(b1.hi[z] <= 0, b2.hi[z] <= 0) and np.array_equal(b1.lo[z] >= 0, b2.lo[z] >= 0)
        assert (vals[z] <= np.maximum(b2.hi[z], 0) + 1e-9).all() and (vals[z] >= np.minimum(b2.lo[z], 0) - 1e-9).all()
