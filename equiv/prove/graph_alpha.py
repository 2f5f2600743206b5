"""Slope optimisation on graphs: ReLU layer by layer, every position neither proved stable nor seen
unstable gets the optimised-slope bound (`bounds.alpha`) of its likelier phase; the proved ones become
stable, and DeepPoly is recomputed from the tighter bounds so later layers start better.  Cheaper than
one LP per position and, per position, as tight as the LP with the same intermediate bounds (when the
ascent converges); the LP stage then gets only what is left.
"""

from __future__ import annotations

import time

import networkx as nx
import numpy as np
from tqdm import tqdm

from ..bounds.alpha import alpha_lower
from ..bounds.engine import GraphBounds, deeppoly_graph
from ..ir.graph import Graph
from ..spec.region import Box


def alpha_stage(g: Graph, box: Box, bounds: GraphBounds, pos: dict, neg: dict, *, iters: int = 20,
                budget: float | None = None, progress: bool = False) -> tuple[GraphBounds, dict]:
    """Tighter bounds (each one a sound back-substitution bound) and counts of the positions tried."""
    stats = {"alpha_rows": 0, "alpha_proved": 0, "alpha_skipped": 0, "seconds": 0.0}
    t0 = time.perf_counter()
    deadline = None if budget is None else t0 + budget
    for r in tqdm(g.relus, desc="slopes", unit="layer", disable=not progress, leave=False):
        z = g.args(r)[0]
        lo, hi = bounds.lo[z].reshape(-1), bounds.hi[z].reshape(-1)
        todo = np.flatnonzero((lo < 0) & (hi > 0) & ~(pos[r] & neg[r]).reshape(-1))
        if todo.size == 0 or not any(g.op(a).kind == "relu" for a in nx.ancestors(g.dag, z)):
            continue        # affine in the input: DeepPoly is already exact there
        if deadline is not None and time.perf_counter() >= deadline:
            stats["alpha_skipped"] += int(todo.size)
            continue
        signs = np.where(hi[todo] <= -lo[todo], -1.0, 1.0)     # -1: try to prove dead (bound -z from below)
        low = alpha_lower(g, box, bounds, z, todo, signs, iters=iters, deadline=deadline)
        new_lo, new_hi = lo.copy(), hi.copy()
        up = signs > 0
        new_lo[todo[up]] = np.maximum(lo[todo[up]], low[up])
        new_hi[todo[~up]] = np.minimum(hi[todo[~up]], -low[~up])
        stats["alpha_rows"] += int(todo.size)
        stats["alpha_proved"] += int(np.sum(low >= 0))
        known = GraphBounds({**bounds.lo, z: new_lo.reshape(bounds.lo[z].shape)},
                            {**bounds.hi, z: new_hi.reshape(bounds.hi[z].shape)})
        bounds = deeppoly_graph(g, box, known=known)
    stats["seconds"] = time.perf_counter() - t0
    return bounds, stats
