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
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

import numpy as np
from tqdm import tqdm

from ..bounds.engine import GraphBounds, retightened
from ..encode.graph import ConeError, cone_of, encode_graph
from ..ir.graph import Graph
from ..solvers import Status, make_backend, milp_backend
from ..spec.region import Box
from .graph_journal import PhaseJournal
from .graph_lp import _witness, affine_in_input

QUERIES_PER_LAYER = 4
THREADS = 2        # HiGHS decisions solved at once (highspy releases the GIL while it solves)
MARGIN = 1e-6      # a decision proves z <= -MARGIN (or >= MARGIN) up to the solver's feasibility tolerance


def in_flight(items, ask, answer, skip, left, limit: float, threads: int) -> int:
    """ask(item, seconds) for the items in order, up to `threads` at once in worker threads, and answer(result)
    here as each comes back.  An item is submitted only when a slot is free, so a point an answer found can
    make skip(item) spare the next ones; and only while left() (seconds, None: no end) exceeds 0.05, with at
    most min(limit, left()) seconds.  Returns how many items were submitted or skipped."""
    pool = ThreadPoolExecutor(max_workers=threads) if threads > 1 else None
    running, i, stop = set(), 0, False
    try:
        while True:
            while i < len(items) and len(running) < threads and not stop:
                if skip(items[i]):
                    i += 1
                    continue
                t = left()
                if t is not None and t <= 0.05:
                    stop = True
                    break
                q = limit if t is None else min(limit, t)
                if pool is None:
                    answer(ask(items[i], q))
                else:
                    running.add(pool.submit(ask, items[i], q))
                i += 1
            if not running:          # every item submitted and answered, or out of time
                return i
            done, running = wait(running, return_when=FIRST_COMPLETED)
            for f in done:
                answer(f.result())
    finally:
        if pool is not None:
            pool.shutdown()


def candidates(g: Graph, bounds: GraphBounds, r: str, pos: dict, neg: dict) -> np.ndarray:
    """Positions of ReLU r open to a solver: unstable by their bounds, not seen with both signs."""
    z = g.args(r)[0]
    lo, hi = bounds.lo[z].reshape(-1), bounds.hi[z].reshape(-1)
    if affine_in_input(g, z):
        return np.zeros(0, int)        # affine in the input: DeepPoly is exact there already
    return np.flatnonzero((lo < 0) & (hi > 0) & ~(pos[r] & neg[r]).reshape(-1))


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
               threads: int = THREADS, journal: PhaseJournal | None = None) -> tuple[GraphBounds, dict]:
    """Tighter bounds (phases settled by infeasible decisions) and counts of the decisions made.
    dead_sides: per ReLU, the positions to try to prove dead (the others: active); default, the side the bounds
    make likelier.  points: if given, receives the decisions' points run in the real graph (for validation).
    threads: decisions solved at once (HiGHS only; the other backends one by one).  journal: receives each
    phase as it is proved and each decision's point (`prove.graph_journal`)."""
    journal = journal or PhaseJournal()
    stats = {"milp": 0, "milp_proved": 0, "milp_witnessed": 0, "milp_unknown": 0, "milp_skipped": 0,
             "seconds": 0.0}
    t_start = time.perf_counter()
    end = None if budget is None else t_start + budget
    todo_counts = {r: candidates(g, bounds, r, pos, neg).size for r in g.relus}
    bar = tqdm(total=sum(todo_counts.values()), desc="MILP", unit="query", disable=not progress, leave=False)
    n = max(1, threads) if milp_backend(backend) == "highs" else 1
    lock = threading.Lock()
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
        limit = time_limit if layer_end is None else min(time_limit, max(0.5, (layer_end - now) / QUERIES_PER_LAYER))
        z = g.args(r)[0]
        lo, hi = bounds.lo[z].reshape(-1), bounds.hi[z].reshape(-1)
        new_lo, new_hi = lo.copy(), hi.copy()
        full = []          # the whole graph's encoding, built only if a cone is refused
        order = todo[np.argsort(np.minimum(-lo[todo], hi[todo]) / (hi[todo] - lo[todo]))]
        seen = lambda: (pos[r] & neg[r]).reshape(-1)      # noqa: E731

        def ask(p, limit):
            """One decision on the phase the bounds make likelier (or the one a record claims); in a worker."""
            dead_side = bool(dead_sides[r].reshape(-1)[p]) if dead_sides is not None else hi[p] <= -lo[p]
            with lock:                                   # (the shared whole-graph encoding is built once)
                enc = _encoding(g, box, bounds, z, int(p), full)
            solver = make_backend(milp_backend(backend), enc.model)
            c, off = enc.objective(z, int(p), 1.0 if dead_side else -1.0)
            return p, dead_side, enc, solver.decide(c, off, 0.0, time_limit=limit, margin=MARGIN)

        def answer(res):
            p, dead_side, enc, dec = res
            bar.update(1)
            stats["milp"] += 1
            if dec.verdict == "below":               # sign * z < -MARGIN everywhere on the region
                if dead_side:
                    new_hi[p] = min(new_hi[p], 0.0)
                else:
                    new_lo[p] = max(new_lo[p], 0.0)
                stats["milp_proved"] += 1
                journal.proved(r, [p] if dead_side else [], [] if dead_side else [p], "milp")
            elif dec.x is not None:
                journal.points(_witness(g, enc, dec.x, box, pos, neg, points))
                stats["milp_unknown"] += int(not seen()[p])
            else:
                stats["milp_unknown"] += 1
                if dec.status == Status.TOO_LARGE:        # e.g. gurobi's size-limited licence: proves nothing
                    stats["milp_too_large"] = stats.get("milp_too_large", 0) + 1

        def skip(p):
            if seen()[p]:
                stats["milp_witnessed"] += 1         # an earlier point already showed it unstable
                bar.update(1)
                return True
            return False

        left = (lambda: None) if layer_end is None else (lambda: layer_end - time.perf_counter())  # noqa: E731
        i = in_flight(order, ask, answer, skip, left, limit, n)
        if i < order.size:
            rest = order[i:]
            stats["milp_skipped"] += int((~seen()[rest]).sum())
            bar.update(rest.size)
        bounds = retightened(g, box, bounds, z, new_lo, new_hi)     # later layers start from the tighter bounds
    bar.close()
    stats["seconds"] = time.perf_counter() - t_start
    return bounds, stats
