"""MILP decisions on graphs: for each position still undecided after the slopes stage, one exact big-M
MILP over its cone of influence (the positions of earlier tensors it depends on: a window of each
convolution) asks "can z reach the other side of 0?".  Infeasible (the
solver's proof, with the house margin) settles the phase; a point found is run in the real graph and,
if it shows both signs, the position is unstable.  A time limit or any other status proves nothing.

The budget is shared out over the ReLU layers in proportion to their candidates (what one layer leaves
unused flows on), and within a layer the positions whose bounds lie nearest to a proof go first.
"""

from __future__ import annotations

import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from ..bounds.engine import GraphBounds, retightened
from ..distributed.slots import in_flight, on_cluster, slots_for
from ..encode.graph import ConeError, cone_of, encode_graph
from ..ir.graph import Graph
from ..solvers import Status, make_backend, milp_backend
from ..spec.region import Box
from .graph_journal import PhaseJournal
from .graph_lp import affine_in_input, input_point, run_points

QUERIES_PER_LAYER = 4
THREADS = 2        # HiGHS decisions solved at once (highspy releases the GIL while it solves)
MARGIN = 1e-6      # a decision proves z <= -MARGIN (or >= MARGIN) up to the solver's feasibility tolerance


def candidates(g: Graph, bounds: GraphBounds, r: str, pos: dict, neg: dict) -> np.ndarray:
    """Positions of ReLU r open to a solver: unstable by their bounds, not seen with both signs."""
    z = g.args(r)[0]
    lo, hi = bounds.lo[z].reshape(-1), bounds.hi[z].reshape(-1)
    if affine_in_input(g, z):
        return np.zeros(0, int)        # affine in the input: DeepPoly is exact there already
    return np.flatnonzero((lo < 0) & (hi > 0) & ~(pos[r] & neg[r]).reshape(-1))


@dataclass
class PositionAnswer:
    """One decision's outcome, as plain data (it may come back from a worker)."""
    p: int
    dead_side: bool
    verdict: str          # "below": the phase is proved; anything else proves nothing
    status: str
    x: np.ndarray | None  # the decision's input point, clipped into the box


def decide_position(shared, z: str, p: int, dead_side: bool, limit: float, backend: str,
                    full: list | None = None, lock=None, stop=None) -> PositionAnswer:
    """Can position p of tensor z reach the other side of 0 (dead_side: above 0)?  One exact MILP over its cone
    of influence.  shared: (graph, box, bounds).  full / lock: a whole-graph encoding shared between threads
    (built once, if a cone is refused); a worker task builds its own.  stop: the slots' event (threads here)."""
    g, box, bounds = shared
    with lock or nullcontext():
        enc = _encoding(g, box, bounds, z, p, [] if full is None else full)
    solver = make_backend(milp_backend(backend), enc.model)
    c, off = enc.objective(z, p, 1.0 if dead_side else -1.0)
    dec = solver.decide(c, off, 0.0, time_limit=limit, margin=MARGIN, stop=stop)
    x = None if dec.x is None else input_point(g, enc, dec.x, box)
    return PositionAnswer(int(p), bool(dead_side), dec.verdict, getattr(dec.status, "name", str(dec.status)), x)


def _encoding(g: Graph, box: Box, bounds: GraphBounds, z: str, p: int, full: list):
    """The exact MILP of position p's cone of influence (small for a convolution), else of the whole graph."""
    try:
        return encode_graph(g, box, bounds, upto=z, integer=True, cone=cone_of(g, z, p))
    except ConeError:
        if not full:
            full.append(encode_graph(g, box, bounds, upto=z, integer=True))
        return full[0]


def milp_stage(g: Graph, box: Box, bounds: GraphBounds, pos: dict, neg: dict, *, time_limit: float = 10.0,
               budget: float | None = None, progress: bool = False, backend: str = "highs",
               dead_sides: dict | None = None, points: list | None = None,
               threads: int = THREADS, journal: PhaseJournal | None = None,
               executor=None) -> tuple[GraphBounds, dict]:
    """Tighter bounds (phases settled by infeasible decisions) and counts of the decisions made.
    dead_sides: per ReLU, the positions to try to prove dead (the others: active); default, the side the bounds
    make likelier.  points: if given, receives the decisions' points run in the real graph (for validation).
    threads: decisions solved at once (HiGHS only; the other backends one by one).  journal: receives each
    phase as it is proved and each decision's point (`prove.graph_journal`).  executor: a Dask one
    (`distributed.executor`) runs the decisions on its workers, one each (a failed task proves nothing)."""
    journal = journal or PhaseJournal()
    stats = {"milp": 0, "milp_proved": 0, "milp_witnessed": 0, "milp_unknown": 0, "milp_skipped": 0,
             "seconds": 0.0}
    t_start = time.perf_counter()
    end = None if budget is None else t_start + budget
    todo_counts = {r: candidates(g, bounds, r, pos, neg).size for r in g.relus}
    bar = tqdm(total=sum(todo_counts.values()), desc="MILP", unit="query", disable=not progress, leave=False)
    slots = slots_for(executor, max(1, threads) if milp_backend(backend) == "highs" else 1)
    remote = on_cluster(executor)
    lock = threading.Lock()
    try:
        for k, r in enumerate(g.relus):
            todo = candidates(g, bounds, r, pos, neg)
            if todo.size == 0:
                continue
            now = time.perf_counter()
            if end is not None and now >= end:
                stats["milp_skipped"] += int(todo.size)
                continue
            later = sum(todo_counts[q] for q in g.relus[k + 1:])
            layer_end = None if end is None else now + (end - now) * todo.size / max(1, todo.size + later)
            # at least QUERIES_PER_LAYER decisions per layer: one hard query must not eat the layer's share
            limit = time_limit if layer_end is None else \
                min(time_limit, max(0.5, (layer_end - now) / QUERIES_PER_LAYER))
            bounds = _layer(g, box, bounds, r, todo, limit, layer_end, backend, dead_sides, pos, neg, points,
                            journal, stats, bar, slots, executor.scatter((g, box, bounds)) if remote else None,
                            lock)
    finally:
        slots.close()
    bar.close()
    stats["seconds"] = time.perf_counter() - t_start
    return bounds, stats


def _layer(g: Graph, box: Box, bounds: GraphBounds, r: str, todo: np.ndarray, limit: float, layer_end,
           backend: str, dead_sides, pos: dict, neg: dict, points, journal: PhaseJournal, stats: dict, bar,
           slots, handle, lock) -> GraphBounds:
    """Layer r's decisions (the positions whose bounds lie nearest to a proof first) until layer_end;
    returns the bounds with the phases they proved (DeepPoly again for the later layers).  handle: the
    scattered (graph, box, bounds) when the decisions run on a cluster, else None (threads here)."""
    z = g.args(r)[0]
    lo, hi = bounds.lo[z].reshape(-1), bounds.hi[z].reshape(-1)
    new_lo, new_hi = lo.copy(), hi.copy()
    full = []          # the whole graph's encoding, built only if a cone is refused (threads here)
    order = todo[np.argsort(np.minimum(-lo[todo], hi[todo]) / (hi[todo] - lo[todo]))]
    seen = lambda: (pos[r] & neg[r]).reshape(-1)      # noqa: E731

    def submit(p, seconds):
        """One decision on the phase the bounds make likelier (or the one a record claims)."""
        dead_side = bool(dead_sides[r].reshape(-1)[p]) if dead_sides is not None else bool(hi[p] <= -lo[p])
        if handle is not None:
            return slots.submit(decide_position, handle, z, int(p), dead_side, seconds, backend)
        return slots.submit(decide_position, (g, box, bounds), z, int(p), dead_side, seconds, backend, full, lock,
                            slots.stop)

    def answer(fut):
        bar.update(1)
        stats["milp"] += 1
        try:
            a = fut.result()
        except Exception as exc:          # on a cluster (a worker killed too often, ...): proves nothing
            if handle is None:
                raise                     # here it is a bug: never a verdict
            stats["milp_unknown"] += 1
            stats["milp_failed"] = stats.get("milp_failed", 0) + 1
            stats.setdefault("milp_failures", []).append(f"{r}: {type(exc).__name__}: {exc}"[:300])
            return
        if a.verdict == "below":               # sign * z < -MARGIN everywhere on the region
            if a.dead_side:
                new_hi[a.p] = min(new_hi[a.p], 0.0)
            else:
                new_lo[a.p] = max(new_lo[a.p], 0.0)
            stats["milp_proved"] += 1
            journal.proved(r, [a.p] if a.dead_side else [], [] if a.dead_side else [a.p], "milp")
        elif a.x is not None:
            run_points(g, a.x[None], pos, neg, points)
            journal.points(a.x[None])
            stats["milp_unknown"] += int(not seen()[a.p])
        else:
            stats["milp_unknown"] += 1
            if a.status == Status.TOO_LARGE.name:   # e.g. gurobi's size-limited licence: proves nothing
                stats["milp_too_large"] = stats.get("milp_too_large", 0) + 1

    def skip(p):
        if seen()[p]:
            stats["milp_witnessed"] += 1         # an earlier point already showed it unstable
            bar.update(1)
            return True
        return False

    left = (lambda: None) if layer_end is None else (lambda: layer_end - time.perf_counter())  # noqa: E731
    i = in_flight(order, submit, answer, skip, left, limit, slots)
    if i < order.size:
        rest = order[i:]
        stats["milp_skipped"] += int((~seen()[rest]).sum())
        bar.update(rest.size)
    return retightened(g, box, bounds, z, new_lo, new_hi)     # later layers start from the tighter bounds
