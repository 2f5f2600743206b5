"""Windowed MILP decisions of a layer's open neurons: the layer's shared branch and bound first, then per
neuron the likelier phase and the other, on a window widened while it finds only (non-real) points, with a
partial MILP (the most influential binaries integral) tried first where it pays."""

from __future__ import annotations

import threading
import time

import numpy as np

from ..bounds import Bounds
from ..distributed.cores import map_on_cores
from ..ir.network import Network
from .bab_split import BabSplit
from .relu_bab import decide_max
from .stability_solvers import settle
from .windows import BAB_SHARE, FIRST_WINDOW, count_window, likelier_sides, ordered_open


PARTIAL_SHARE = 0.3   # binaries kept integral in a decision's first, partial try (the rest LP-relaxed)
PARTIAL_MIN = 24      # windows with fewer binaries go straight to the full MILP
BAB_LAYER_BASE, BAB_LAYER_PER = 1.0, 0.1   # seconds for a layer's shared branch and bound (+ per question)
BAB_STALL_MIN, BAB_STALL_SHARE = 2.0, 0.25  # it stops early when nothing is decided after this long (or share)


class Influence:
    """Which of a window's binaries matter most to one objective row: each unstable ReLU's triangle gap
    (-l u / (u - l), the most its relaxation can be off) times the row's |weights| carried back to it
    through |W| and each neuron's slope (0 dead, 1 linear, u / (u - l) unstable).  The top share are kept
    integral in a partial MILP; relaxing the others to their triangle keeps the model a relaxation of the
    window, so its "below" is a proof (a point it finds proves nothing)."""

    def __init__(self, net: Network, bounds: Bounds, k: int, w: int, enc):
        self.layers = []                       # per window layer, last first: (slope, gap, U, cols, |W|)
        for j in range(k - 1, k - w - 1, -1):
            lo, hi, m = bounds.lo[j], bounds.hi[j], np.asarray(net.masks[j], bool)
            unstable = m & (lo < 0) & (hi > 0)
            width = np.where(unstable, hi - lo, 1.0)
            slope = np.where(m & (hi <= 0), 0.0, np.where(unstable, hi / width, 1.0))
            gap = np.where(unstable, -lo * hi / width, 0.0)
            cols = enc.model.groups.get(f"d{j - (k - w) + 1}", np.zeros(0, int))
            self.layers.append((slope, gap, np.flatnonzero(unstable), cols, np.abs(net.dense[j].W)))
        self.n = int(sum(layer[3].size for layer in self.layers))

    def keep(self, row: np.ndarray, share: float = PARTIAL_SHARE) -> np.ndarray:
        """The integer columns to keep integral for objective row `row` (over the window's last layer)."""
        s = np.abs(row)
        scores, cols = [], []
        for slope, gap, U, c, absW in self.layers:
            scores.append(s[U] * gap[U])
            cols.append(c)
            s = (s * slope) @ absW
        scores, cols = np.concatenate(scores), np.concatenate(cols)
        top = np.argsort(-scores, kind="stable")[:max(1, int(np.ceil(share * cols.size)))]
        return np.sort(cols[top])


class PartialTries:
    """Whether a layer's decisions on one window width try a partial MILP first.  A partial proof saves
    most of a full query; a failed try costs its own (shorter) query on top.  After TRIES tries it stays on
    only while at least half of them proved."""

    TRIES = 4

    def __init__(self):
        self.on, self.tries, self.proofs = True, 0, 0

    def record(self, proved: bool):
        self.tries += 1
        self.proofs += proved
        if self.tries >= self.TRIES and 2 * self.proofs < self.tries:
            self.on = False


class StartWindow:
    """The window a layer's MILP decisions start from: FIRST_WINDOW, widened for the rest of the layer once
    it stops paying.  A narrow window is cheaper but only helps when it proves; each failed try costs a query
    and then the wider one runs anyway.  It pays while proofs * (wider query's seconds) > its own seconds."""

    TRIES = 4             # narrow tries before judging

    def __init__(self, k: int):
        self.k, self.w = k, min(k, FIRST_WINDOW)
        self.tries = self.proofs = 0
        self.seconds = {"narrow": 0.0, "wider": 0.0}
        self.wider_n = 0

    def record(self, w: int, proved: bool, seconds: float):
        if w == self.w and w < self.k:
            self.tries += 1
            self.proofs += proved
            self.seconds["narrow"] += seconds
        elif w > self.w:
            self.wider_n += 1
            self.seconds["wider"] += seconds
        if self.tries >= self.TRIES and self.wider_n and self.w < self.k:
            gain = self.proofs / self.tries * self.seconds["wider"] / self.wider_n
            if gain < self.seconds["narrow"] / self.tries:
                self.w += 1
                self.tries = self.proofs = self.wider_n = 0
                self.seconds = {"narrow": 0.0, "wider": 0.0}


def bab_layer(k, net, box, bounds, tr, opt, budget, bq, open_, layers, bar=None):
    """Both sides of every open neuron of layer k as one branch and bound over shared batches (most are
    settled by a root bound, or refuted by a corner, at a fraction of a call each): proofs settle neurons,
    points are run as witnesses.  Capped at BAB_LAYER_BASE + BAB_LAYER_PER s per question (and the
    budget); what it leaves goes to the per-neuron decisions.  Each neuron's likelier side (the nearer end of
    its interval) is asked before any other side, and once one side is proved the other is dropped.  bar:
    a progress bar whose postfix follows the questions proved and refuted."""
    rows, sides = [], []
    for which in (0, 1):
        for i in open_:
            side = likelier_sides(bounds, k, i)[which]
            if not (tr.seen_pos if side == "dead" else tr.seen_neg)[k][i]:
                rows.append(i)       # (a side a real point already ruled out is moot)
                sides.append(side)
    if not rows:
        return
    left = np.inf if budget.end is None else budget.end - time.perf_counter()
    cap = min(left, BAB_LAYER_BASE + BAB_LAYER_PER * len(rows))
    if cap <= 0.05:
        return
    sign = np.where(np.array(sides) == "dead", 1.0, -1.0)
    W, b = net.dense[k].W[rows], net.dense[k].b[rows]
    t0 = time.perf_counter()

    def report(proved, points):
        if bar is not None:
            bar.set_postfix(layer=k + 1, step="branch and bound", proved=f"{proved}/{len(rows)}", points=points,
                            spent=f"{budget.spent():.0f}s")
    res = BabSplit().search(k, layers, net.masks[:k], box.lo, box.hi, bounds.lo[:k], bounds.hi[:k],  # (the cores)
                            sign[:, None] * W, sign * b, np.array(rows), time_limit=cap, margin=opt.margin,
                            stall=max(BAB_STALL_MIN, BAB_STALL_SHARE * cap), report=report)
    share = (time.perf_counter() - t0) / len(rows)
    points = []
    for i, side, r in zip(rows, sides, res):
        tr.seconds[k][i] += share
        x = _record_bab(r, bq, bounds, tr, k, i, side)
        if x is not None:
            points.append(x)
    if points:
        tr.absorb(np.array(points), "witness")


def _record_bab(r, bq, bounds, tr, k: int, i: int, side: str):
    """Count a branch-and-bound answer on one side of neuron i of layer k: a proof settles the neuron (while
    it is open); returns the real point of an 'above' answer (a witness to run), else None."""
    bq["tried"] += 1
    bq["domains"] += r.domains
    if r.verdict == "below" and bounds.lo[k][i] < 0 < bounds.hi[k][i]:
        bq["proved"] += 1
        settle(bounds, tr, k, i, side, method="bab")
    elif r.verdict == "above":
        bq["witness"] += 1
        return r.x
    return None


def milp_layer(k, net, box, bounds, tr, opt, budget, queries, enc_of, bar, shared=True, shared_only=False):
    """Per open neuron, narrowest first: decide the likelier phase, then the other, widening the window
    while it finds only (non-real) points; a full-window point is run in the real network.  With opt.bab
    (and shared) the layer's shared branch and bound first; shared_only: only that (a first round; what it
    leaves open waits for the next).

    With opt.workers > 1 (and a thread-safe backend) that many neurons are decided at once; answers are
    recorded under one lock, and a neuron is taken only while no real point has shown it unstable."""
    W, b = net.dense[k].W, net.dense[k].b
    todo = ordered_open(tr, bounds, k)
    lock = threading.Lock()
    start = StartWindow(k)
    partial, influence = {}, {}            # per window width
    pq = queries.setdefault("partial_milp", {"tried": 0, "proved": 0})

    def keep_cols(w, enc, be, row):
        """Integer columns of a partial first try at window w, or None (full MILP only)."""
        if not (partial.setdefault(w, PartialTries()).on and getattr(be, "partial_ok", False)):
            return None
        if w not in influence:
            influence[w] = Influence(net, bounds, k, w, enc)
        return influence[w].keep(row) if influence[w].n >= PARTIAL_MIN else None

    queue = iter(todo)
    finished = set()

    def is_open(i):
        return not tr.unstable(k)[i] and bounds.hi[k][i] > 0 and bounds.lo[k][i] < 0

    layers = [(d.W, d.b) for d in net.dense[:k]]
    bq = queries.setdefault("bab", {"tried": 0, "proved": 0, "witness": 0, "domains": 0})
    if opt.bab and shared and todo.size:
        if bar is not None:
            bar.set_postfix(layer=k + 1, step="branch and bound", left=int(todo.size))
        bab_layer(k, net, box, bounds, tr, opt, budget, bq, [i for i in todo if is_open(i)], layers, bar)

    if shared_only:
        return

    def take(stop):
        with lock:
            if stop is not None and stop.is_set():
                return None
            for i in queue:
                if is_open(i):
                    return i
                finished.add(i)
                if bar is not None:       # settled meanwhile (the layer's branch and bound, a witness)
                    bar.update(1)
            return None

    bab_lock = threading.Lock()

    def bab_side(i, side, sign, stop) -> bool | None:
        """Branch and bound at full depth on one side of neuron i: True when it decided (a proof, or a real
        point that shows the neuron on that side), False to go on with the MILP, None when the budget is spent."""
        with bab_lock:              # one at a time: numpy on two threads is slower than one after the other
            lim = budget.limit()
            if lim is None:
                return None
            with lock:
                hl, hh = [a.copy() for a in bounds.lo[:k]], [a.copy() for a in bounds.hi[:k]]
            q0 = time.perf_counter()
            cap = min(lim, opt.time_limit) * BAB_SHARE
            r = decide_max(layers, net.masks[:k], box.lo, box.hi, hl, hh, sign * W[i], sign * b[i], 0.0,
                           time_limit=cap, margin=opt.margin, stop=stop)
            secs = time.perf_counter() - q0
        with lock:
            tr.seconds[k][i] += secs
            x = _record_bab(r, bq, bounds, tr, k, i, side)
            if x is not None:
                tr.absorb(x[None], "witness")
        return r.verdict != "unknown"

    def decide(i, stop) -> bool:
        """All of neuron i's decisions; False once the budget is spent (or stop, an event, is set)."""
        with lock:
            order = likelier_sides(bounds, k, i)
        for side in order:
            with lock:
                if not is_open(i):
                    break
                if tr.seen_pos[k][i] if side == "dead" else tr.seen_neg[k][i]:
                    continue
                w = start.w
            sign = 1.0 if side == "dead" else -1.0
            if opt.bab:
                got = bab_side(i, side, sign, stop)
                if got is None:
                    return False
                if got:
                    continue
            while True:
                lim = budget.limit()
                if lim is None or (stop is not None and stop.is_set()):
                    return False
                with lock:
                    enc, be = enc_of(w)     # (a MILP backend: highs for admm)
                with lock:
                    cols = keep_cols(w, enc, be, W[i])
                c, off = enc.objective(sign * W[i], sign * b[i])
                q0 = time.perf_counter()
                dec, calls = None, 1
                if cols is not None:
                    # partial MILP first: a relaxation of the window, so "below" proves; else the full one
                    dec = be.decide(c, off, 0.0, time_limit=min(lim, opt.time_limit / 2), margin=opt.margin,
                                    integer_cols=cols, stop=stop)
                    with lock:
                        partial[w].record(dec.verdict == "below")
                        pq["tried"] += 1
                        pq["proved"] += int(dec.verdict == "below")
                    if dec.verdict != "below":
                        dec, lim = None, budget.limit()
                        if lim is not None:
                            dec, calls = be.decide(c, off, 0.0, time_limit=lim, margin=opt.margin, stop=stop), 2
                else:
                    dec = be.decide(c, off, 0.0, time_limit=lim, margin=opt.margin, stop=stop)
                secs = time.perf_counter() - q0
                with lock:
                    tr.seconds[k][i] += secs
                    queries["milp"] += calls
                    if dec is None:
                        return False
                    count_window(queries, w)
                    start.record(w, dec.verdict == "below", secs)
                    if dec.verdict == "below":
                        settle(bounds, tr, k, i, side)
                        break
                    if dec.verdict == "above" and w < k:
                        w += 1                  # the window's point may not be reachable: widen
                        continue
                    if dec.verdict == "above":
                        tr.absorb(enc.input_point(dec.x)[None], "witness")
                    else:
                        queries["milp_unknown"] += 1
                    break
        return True

    def worker(_, stop):
        while True:
            i = take(stop)
            if i is None:
                return
            if not decide(i, stop):
                return
            with lock:
                finished.add(i)
                if bar is not None:
                    bar.set_postfix(layer=k + 1, left=int(todo.size - len(finished)), spent=f"{budget.spent():.0f}s")
                    bar.update(1)

    be0 = enc_of(min(k, FIRST_WINDOW))[1]
    n = min(opt.workers, todo.size) if getattr(be0, "threads_ok", False) else 1
    # leaving early (a SIGTERM) sets the threads' stop: they end at their next step, their MILPs at once
    map_on_cores(worker, list(range(n)), one_blas_thread=False)
    queries["milp_skipped"] += sum(int(is_open(i)) for i in todo if i not in finished)
    queries.setdefault("start_window", {})[k + 1] = start.w
