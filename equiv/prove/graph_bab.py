"""Branch and bound on ReLU phases for graphs: the graph in its dense chain form (`ir.graph_chain`), then
per ReLU layer both phase questions of every position still open ("is z <= 0 on the region?", "z >= 0?")
in one shared `relu_bab.decide_many` (alpha-beta-CROWN bounds, certified with a rounding margin).

A proof settles the position (bounds tightened, DeepPoly recomputed for the later layers); a point found
above the threshold is run in the real graph (it shows the other sign, and joins validation).  Whatever is
left goes to the MILP stage.  ResNet-2B img386, the layer where most MILPs are spent (107 open positions):
84 proved in 30 s, against about 30 for the MILPs in the same time.
"""

from __future__ import annotations

import time

import numpy as np
from tqdm import tqdm

from ..bounds.engine import GraphBounds, retightened
from ..ir.graph import Graph
from ..ir.graph_chain import NotAChain, lower_to_chain
from ..spec.region import Box
from .graph_journal import PhaseJournal
from .graph_lp import run_points
from .graph_milp import MARGIN, candidates
from .bab_split import BabSplit

STALL_MIN, STALL_SHARE = 2.0, 0.25     # a layer stops early when nothing is proved after this long (or share)
ROUND_MIN = 2.0     # seconds left for a second round over the layers at least
QUANTUM = 16     # domains per question per turn (relu_bab's default, 256, suits MNIST: a ResNet batch costs
                 # ~0.3 s, and 256 domains of each hard question came before the first easy proof)
LAYER_BASE, LAYER_PER = 2.0, 0.2       # seconds for a layer at most (+ per question), also within a budget


def _questions(g: Graph, bounds: GraphBounds, r: str, todo: np.ndarray, pos: dict, neg: dict):
    """Positions and signs (+1: prove dead, -1: prove active) of layer r's questions: each position's likelier
    side first (the nearer end of its interval), a side a real point already showed never; within each
    round the likeliest proofs first (the questioned end nearest 0, relative to the interval's width)."""
    z = g.args(r)[0]
    lo, hi = bounds.lo[z].reshape(-1), bounds.hi[z].reshape(-1)
    P, N = pos[r].reshape(-1), neg[r].reshape(-1)
    asked = []
    for first in (True, False):
        side = []       # (how far the questioned end reaches past 0 relative to the width, position, sign)
        for p in todo:
            dead = (hi[p] <= -lo[p]) == first
            if not (P[p] if dead else N[p]):
                side.append(((hi[p] if dead else -lo[p]) / (hi[p] - lo[p]), int(p), 1.0 if dead else -1.0))
        asked += sorted(side, key=lambda q: q[0])         # (stable: ties keep the position order)
    return np.array([q[1] for q in asked], int), np.array([q[2] for q in asked])


def bab_stage(g: Graph, box: Box, bounds: GraphBounds, pos: dict, neg: dict, *, budget: float | None = None,
              progress: bool = False, points: list | None = None,
              journal: PhaseJournal | None = None, executor=None,
              threads: int | None = None) -> tuple[GraphBounds, dict]:
    """Tighter bounds (phases proved by branch and bound) and counts; pos / neg / points grow with the points
    found, and journal (`prove.graph_journal`) receives both, a layer at a time.  budget: seconds for the
    whole stage, shared over the layers in proportion to their open positions (what one leaves flows on).
    A first round gives a layer at most LAYER_BASE + LAYER_PER s per question, so that the budget reaches
    the deep layers; with a budget, when that cap ended a layer's search while it was still proving, a
    second round gives what is left to every layer still open (one that stalled in the first round may
    become provable once earlier layers gain proofs).  A layer's questions are split by position over the
    workers of `executor` when it is a Dask one (`distributed.executor`), else over `threads` threads here
    (default: this process's cores)."""
    stats = {"bab": 0, "bab_proved": 0, "bab_witness": 0, "bab_domains": 0, "bab_rounds": 0, "seconds": 0.0}
    journal = journal or PhaseJournal()
    t_start = time.perf_counter()
    end = None if budget is None else t_start + budget
    todo_counts = [candidates(g, bounds, r, pos, neg).size for r in g.relus]
    if not any(todo_counts):
        return bounds, stats
    try:
        chain = lower_to_chain(g, upto=max(k for k, n in enumerate(todo_counts) if n))
    except NotAChain as exc:
        stats["bab_not_run"] = str(exc)
        return bounds, stats
    bounds = _rounds(g, box, bounds, chain, todo_counts, end, pos, neg, points, journal, stats, progress,
                     t_start, BabSplit(executor, threads, chain.layers, chain.masks))
    stats["seconds"] = time.perf_counter() - t_start
    return bounds, stats


def _rounds(g: Graph, box: Box, bounds: GraphBounds, chain, todo_counts: list, end, pos: dict, neg: dict, points,
            journal: PhaseJournal, stats: dict, progress: bool, t_start: float, split) -> GraphBounds:
    """The layers in order, in one round or (see `bab_stage`) two."""
    bar = tqdm(total=sum(todo_counts), desc="branch and bound", unit="position", disable=not progress, leave=False)
    for first in (True,) if end is None else (True, False):
        if not first:
            todo_counts = [candidates(g, bounds, r, pos, neg).size for r in g.relus]
            if not any(todo_counts) or end - time.perf_counter() < ROUND_MIN:
                break
            bar.total += sum(todo_counts)
            bar.refresh()
        capped = False
        stats["bab_rounds"] += 1
        for k, r in enumerate(g.relus):
            todo = candidates(g, bounds, r, pos, neg)
            if todo.size == 0:
                continue
            share = np.inf if end is None else \
                (end - time.perf_counter()) * todo.size / max(1, todo.size + sum(todo_counts[k + 1:]))
            bounds, cut = _layer(g, box, bounds, chain, k, todo, share, first, pos, neg, points, journal, stats,
                                 bar if progress else None, t_start, split)
            capped |= cut
            bar.update(todo.size)
        if not capped:
            break
    bar.close()
    return bounds


def _layer(g: Graph, box: Box, bounds: GraphBounds, chain, k: int, todo: np.ndarray, share: float, first: bool,
           pos: dict, neg: dict, points, journal: PhaseJournal, stats: dict, bar,
           t_start: float, split) -> tuple[GraphBounds, bool]:
    """One shared branch and bound over layer k's open positions (`todo`) for at most `share` seconds (in a
    first round also at most LAYER_BASE + LAYER_PER s per question): proofs tighten the bounds (DeepPoly
    again for the later layers), points are run in the graph.  Also returns whether the first round's cap,
    below the share, ended a search that was proving (then a later round may give the layer more).
    split: where the search runs (`bab_split.BabSplit`)."""
    r = g.relus[k]
    rows, signs = _questions(g, bounds, r, todo, pos, neg)
    quota = LAYER_BASE + LAYER_PER * rows.size
    cap = min(share, quota) if first else share
    if cap <= 0.05 or rows.size == 0:
        return bounds, cap < share
    z = g.args(r)[0]
    A, c = chain.rows[k]
    hl, hh = chain.hidden_bounds(g, box, bounds.lo, bounds.hi, k)

    def report(proved, found):
        bar.set_postfix(layer=r, proved=f"{proved}/{rows.size}", points=found,
                        spent=f"{time.perf_counter() - t_start:.0f}s")
    C = A[rows].toarray() if hasattr(A, "toarray") else A[rows]
    stall = max(STALL_MIN, STALL_SHARE * min(cap, quota))     # (a later round: the first's)
    res = split.search(k, chain.layers, chain.masks, box.lo, box.hi, hl, hh, signs[:, None] * C, signs * c[rows],
                       rows, time_limit=cap, stall=stall, margin=MARGIN, quantum=QUANTUM,
                       stall_on_points=True,   # (points come cheap: a side is often refuted at once)
                       stats=stats, report=report if bar is not None else None)
    cut = cap < share and any(a.message == "time limit" for a in res) and any(a.verdict == "below" for a in res)
    lo, hi = bounds.lo[z].reshape(-1), bounds.hi[z].reshape(-1)
    new_lo, new_hi = lo.copy(), hi.copy()
    found = []
    for p, s, a in zip(rows, signs, res):
        stats["bab"] += 1
        stats["bab_domains"] += a.domains
        if a.verdict == "below":          # s z <= -MARGIN on every leaf: the phase is proved
            stats["bab_proved"] += 1
            if s > 0:
                new_hi[p] = min(new_hi[p], 0.0)
            else:
                new_lo[p] = max(new_lo[p], 0.0)
        elif a.verdict == "above":
            stats["bab_witness"] += 1
            found.append(a.x)
    if found:
        found = np.clip(np.array(found), box.lo, box.hi)
        run_points(g, found, pos, neg, points)
        journal.points(found)
    journal.layer(r, lo, hi, new_lo, new_hi, "branch and bound")
    return retightened(g, box, bounds, z, new_lo, new_hi), cut     # later layers start from the tighter bounds
