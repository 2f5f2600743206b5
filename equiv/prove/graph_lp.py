"""LP tightening on graphs: ReLU layer by layer, each position neither proved stable nor seen unstable gets
one triangle-relaxation LP over the graph up to that layer; only the solver's dual bound (made rigorous by
`milp.safe_upper_bound`) proves it dead or active.  A query that ends any other way proves nothing.

The LP of a layer is built once (sparse; convolutions from their adjoints) and its queries differ only
in the objective, so HiGHS runs them warm, with presolve.  After each layer, DeepPoly is recomputed
with the tighter bounds, so later layers start from better relaxations.
"""

from __future__ import annotations

import time

import networkx as nx
import numpy as np
from tqdm import tqdm

from ..bounds.engine import GraphBounds, retightened
from ..encode.graph import encode_graph
from ..ir.graph import Graph
from ..spec.region import Box
from ..solvers import Status
from ..solvers import make_backend
from ..solvers.highs import HighsBackend
from .graph_journal import PhaseJournal


def lp_stage(g: Graph, box: Box, bounds: GraphBounds, pos: dict, neg: dict, *, time_limit: float = 10.0,
             budget: float | None = None, progress: bool = False, backend: str = "highs",
             points: list | None = None, journal: PhaseJournal | None = None) -> tuple[GraphBounds, dict]:
    """Tighter bounds (sound: intersections with LP dual bounds) and counts of the queries made.

    pos / neg: per ReLU, the positions seen positive / negative at real points (updated in place with each
    LP's input point, run in the real graph: a position seen with both signs is unstable, no query).
    points: if given, receives those input points (for validation).  journal: receives the phases proved
    and the LPs' points (`prove.graph_journal`)."""
    journal = journal or PhaseJournal()
    stats = {"lp": 0, "lp_unknown": 0, "lp_proved": 0, "lp_witnessed": 0, "lp_skipped": 0, "seconds": 0.0}
    t_start = time.perf_counter()
    for r in g.relus:
        z = g.args(r)[0]
        lo, hi = bounds.lo[z].reshape(-1), bounds.hi[z].reshape(-1)
        seen = lambda: (pos[r] & neg[r]).reshape(-1)      # noqa: E731
        todo = np.flatnonzero((lo < 0) & (hi > 0) & ~seen())
        if todo.size == 0 or affine_in_input(g, z):
            continue       # affine in the input: interval/DeepPoly bounds are already exact, an LP adds nothing
        if budget is not None and time.perf_counter() - t_start >= budget:
            stats["lp_skipped"] += int(todo.size)
            continue
        enc = encode_graph(g, box, bounds, upto=z)
        new_lo, new_hi = lo.copy(), hi.copy()
        # the positions nearest to a proof first: the smaller side of [lo, hi] around 0, relative to the width
        order = todo[np.argsort(np.minimum(-lo[todo], hi[todo]) / (hi[todo] - lo[todo]))]
        if backend == "admm":       # one DagAdmm batch for the layer (its bounds are proofs, converged or not)
            lim = time_limit * len(order)
            if budget is not None:
                lim = min(lim, max(0.0, budget - (time.perf_counter() - t_start)))
            X = _admm_layer(g, enc, bounds, z, order, lo, hi, new_lo, new_hi, lim, stats,
                            progress and f"LP {r} (admm)")
            run_points(g, np.clip(X, box.lo, box.hi), pos, neg, points)
            journal.layer(r, lo, hi, new_lo, new_hi, "lp")
            bounds = retightened(g, box, bounds, z, new_lo, new_hi)
            continue
        solver = HighsBackend(enc.model, warm_lp=True) if backend == "highs" else make_backend(backend, enc.model)
        for k, p in enumerate(tqdm(order, desc=f"LP {r}", unit="query", disable=not progress, leave=False)):
            if seen()[p]:                             # an earlier LP's point already showed it unstable
                stats["lp_witnessed"] += 1
                continue
            if budget is not None and time.perf_counter() - t_start >= budget:
                stats["lp_skipped"] += int((~seen()[order[k:]]).sum())
                break
            dead_side = hi[p] <= -lo[p]               # try the phase the bounds make likelier
            c, off = enc.objective(z, int(p), 1.0 if dead_side else -1.0)
            res = solver.maximize(c, off, integer=False, time_limit=time_limit)
            stats["lp"] += 1
            if res.x is not None:
                journal.points(_witness(g, enc, res.x, box, pos, neg, points))
            proved = res.status == Status.OPTIMAL or getattr(solver, "certified_at_limit", False)   # admm: certified
            if not proved or res.bound is None or not np.isfinite(res.bound):
                stats["lp_unknown"] += 1
                continue
            if dead_side:
                new_hi[p] = min(new_hi[p], res.bound)      # max z <= bound
                stats["lp_proved"] += int(new_hi[p] <= 0)
            else:
                new_lo[p] = max(new_lo[p], -res.bound)     # max -z <= bound, so z >= -bound
                stats["lp_proved"] += int(new_lo[p] >= 0)
        journal.layer(r, lo, hi, new_lo, new_hi, "lp")
        bounds = retightened(g, box, bounds, z, new_lo, new_hi)     # later layers start from the tighter bounds
    stats["seconds"] = time.perf_counter() - t_start
    return bounds, stats


def _admm_layer(g: Graph, enc, bounds: GraphBounds, z: str, order, lo, hi, new_lo, new_hi, lim: float,
                stats: dict, desc: str | None = None) -> np.ndarray:
    """The LP step of one layer as one `DagAdmm` batch on the encoding's relaxation: each position's likelier
    phase, as the HiGHS path asks it; every bound it reports is certified (weak duality), so it tightens
    new_lo / new_hi in place whether or not ADMM closed its gap.  desc: a progress bar's label (none without).
    Returns the input points of ADMM's best points of the relaxation (one per query that has one)."""
    from ..solvers.dag_admm import DagAdmm
    from ..solvers.dag_relaxation import graph_objectives, graph_relaxation
    rel, cols = graph_relaxation(enc, g, bounds, [r for r in g.relus if r in enc.model.groups])
    dead_side = hi[order] <= -lo[order]
    rows = [enc.objective(z, int(p), 1.0 if d else -1.0) for p, d in zip(order, dead_side)]
    C, off = np.array([c for c, _ in rows]), np.array([o for _, o in rows])
    with tqdm(total=len(order), desc=desc or "", unit="query", disable=not desc, leave=False) as bar:
        def progress(done):
            bar.update(int(done.sum()) - bar.n)
        admm = DagAdmm(rel)
        results = admm.maximize_many(graph_objectives(cols, C), off, time_limit=lim, progress=progress)
    for p, d, res in zip(order, dead_side, results):
        stats["lp"] += 1
        if res.bound is None or not np.isfinite(res.bound):
            stats["lp_unknown"] += 1
            continue
        if d:
            new_hi[p] = min(new_hi[p], res.bound)
            stats["lp_proved"] += int(new_hi[p] <= 0)
        else:
            new_lo[p] = max(new_lo[p], -res.bound)
            stats["lp_proved"] += int(new_lo[p] >= 0)
    # (the relaxation's input group is the graph's inputs in order, as `_witness` reads an LP solution)
    return admm.inputs[np.isfinite(admm.inputs).all(axis=1)]


def _witness(g: Graph, enc, v: np.ndarray, box: Box, pos: dict, neg: dict,
             points: list | None = None) -> np.ndarray:
    """Run the LP solution's input point (clipped into the box) in the real graph; record the signs seen
    (and the point in `points`, if given).  Returns the point."""
    x = input_point(g, enc, v, box)
    run_points(g, x[None], pos, neg, points)
    return x


def input_point(g: Graph, enc, v: np.ndarray, box: Box) -> np.ndarray:
    """A solution's values of the graph's inputs (`encode.graph` groups them per input), clipped into the box."""
    return np.clip(np.concatenate([np.asarray(v)[enc.model.groups[i]] for i in g.inputs]), box.lo, box.hi)


def affine_in_input(g: Graph, z: str) -> bool:
    """No ReLU before tensor z: it is affine in the network input, so its DeepPoly bounds are exact."""
    return not any(g.op(a).kind == "relu" for a in nx.ancestors(g.dag, z))


def affine_corners(g: Graph, box: Box, bounds: GraphBounds, pos: dict, neg: dict, points: list | None = None) -> int:
    """ReLU inputs affine in the network input have exact bounds, each reached at a box corner (the one the
    signs of the position's row pick): run the two corners of every such position with lo < 0 < hi that no
    sample showed with both signs.  They show it unstable; the solver stages skip such positions (nothing to
    tighten), so before, cifar_wide_kw img19 left 74 first-layer positions unknown.  Returns those asked."""
    from ..ir.graph_chain import affine_in
    state = [(n, g.op(n).size) for n in g.inputs]
    asked = 0
    for r in g.relus:
        z = g.args(r)[0]
        if not affine_in_input(g, z):
            continue
        lo, hi = bounds.lo[z].reshape(-1), bounds.hi[z].reshape(-1)
        todo = np.flatnonzero((lo < 0) & (hi > 0) & ~(pos[r] & neg[r]).reshape(-1))
        if todo.size:
            A, _ = affine_in(g, z, state, rows=todo)
            run_points(g, np.vstack([np.where(A > 0, box.hi, box.lo), np.where(A > 0, box.lo, box.hi)]), pos, neg,
                       points)
        asked += todo.size
    return asked


def run_points(g: Graph, x: np.ndarray, pos: dict, neg: dict, points: list | None = None, batch: int = 256) -> None:
    """Run points (n, inputs) in the real graph and record the signs every ReLU input shows there; append
    them to `points` if given (the solvers' points join the validation's)."""
    for s in range(0, len(x), batch):
        vals = g.evaluate(x[s:s + batch])
        for r in g.relus:
            v = vals[g.args(r)[0]]
            pos[r] |= (v > 0).any(axis=0).reshape(pos[r].shape)
            neg[r] |= (v < 0).any(axis=0).reshape(neg[r].shape)
    if points is not None and len(x):
        points.append(np.asarray(x, np.float64))
