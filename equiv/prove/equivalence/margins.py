"""Top-1 on a region too wide to split, where A keeps one class c: decide with questions on one network at a time.

If f_c - f_k > 0 and g_c - g_k > 0 on the whole box for every k != c, both networks answer c everywhere.
Since g_c - g_k = (f_c - f_k) - (d_c - d_k) with d = f - g, a proof that f's margin exceeds the difference
bound's upper end U_k settles g too; only the classes where it does not need a question on g.  Each
question is on one network, not on the product of the two: branch and bound on its ReLU phases
(`prove/relu_bab.py`) first, then a MILP (its unstable ReLUs as binaries) if that does not decide.  On
MNIST 256x4 against its float16 copy the product MILP ran out of 300 s; nine 5 s margin MILPs decided it,
and branch and bound now does in 2.3 s.
"""

from __future__ import annotations

import threading
import time
from contextlib import closing

import numpy as np

from ...bounds.common import Bounds
from ...distributed.cores import answers_on_threads, map_on_cores
from ...bounds.diff import output_bounds, pair_bounds
from ...encode.chain import encode_network
from ...ir.network import Dense, Network
from ...solvers import milp_backend
from ...solvers.base import Decision, Status
from ...solvers.lazy import LazyMilp
from ..relu_bab import decide_max

PREPASS_SHARE, PREPASS_MAX = 0.3, 20.0   # of the step's budget (at most 20 s): A's neuron bounds before the margins
BAB_SHARE = 0.5          # of a margin query's time limit: branch and bound first, the MILP gets the rest


def margin_network(net: Network, c: int) -> Network:
    """net's hidden layers, then a ReLU layer of the margins net_c - net_k (k != c), then the identity:
    its margin neurons are "active" exactly where c beats every other class strictly."""
    n = net.n_outputs
    C = -np.delete(np.eye(n), c, axis=0)
    C[:, c] = 1.0                                # rows e_c - e_k
    last = net.dense[-1]
    dense = list(net.dense[:-1]) + [Dense(C @ last.W, C @ last.b), Dense(np.eye(n - 1), np.zeros(n - 1))]
    masks = [np.asarray(m, bool) for m in net.masks] + [np.ones(n - 1, bool)]
    return Network.from_layers(dense, masks)


def margin_rows(n_out: int, c: int, pairs: list) -> np.ndarray:
    """Indices, in the ledger's list of class pairs, of (c, k) for k != c in increasing k."""
    return np.array([pairs.index((c, k)) for k in range(n_out) if k != c])


def decide_margins(net: Network, box, hidden: Bounds, thresholds: np.ndarray, todo: np.ndarray, opt, clock,
                   stats, workers: int = 2, bab_lock=None, stop=None) -> tuple[np.ndarray, list]:
    """For each k in `todo` (in that order, `workers` at a time), decide net_c - net_k > thresholds[k] on the box
    (margin network `net`; `hidden`: sound bounds of the original network's hidden pre-activations): by branch
    and bound (`relu_bab`, one query at a time under `bab_lock`), then by MILP when that does not decide; returns
    (proved mask, witness input points of the queries that found a point above).  stop: a caller's event that
    ends the queries once set (it is set here too when this is left early)."""
    bab_lock = threading.Lock() if bab_lock is None else bab_lock
    depth = len(net.masks) - 1                   # the margin layer is the last hidden one
    W, b = net.dense[depth].W, net.dense[depth].b
    # the MILP encoding only when a query needs it (branch and bound often decides them all)
    milp = LazyMilp(lambda: encode_network(net, box, hidden, depth=depth, integer=True), opt.backend)

    proved = np.zeros(W.shape[0], bool)
    witnesses = []

    layers = [(d.W, d.b) for d in net.dense[:depth]]

    def ask(k, stop=None):
        limit = min(opt.query_time_limit, clock.left - 1.0)
        if limit < 0.1 or (stop is not None and stop.is_set()):
            return None
        t0 = time.perf_counter()
        if opt.bab:
            # branch and bound on the ReLU phases first (numpy, no solver): most margins in well under a second
            # (one at a time: two threads of small numpy products run 3-7x slower each, on the GIL and BLAS)
            with bab_lock:
                limit = min(opt.query_time_limit, clock.left - 1.0)
                if limit < 0.1:
                    return None
                r = decide_max(layers, net.masks[:depth], box.lo, box.hi, hidden.lo[:depth], hidden.hi[:depth],
                               -W[k], -b[k], -float(thresholds[k]), time_limit=BAB_SHARE * limit, margin=opt.margin,
                               stop=stop)
                stats["bab_queries"] = stats.get("bab_queries", 0) + 1
                stats["bab_domains"] = stats.get("bab_domains", 0) + r.domains
            if r.verdict != "unknown":
                stats.setdefault("margin_query_seconds", []).append([int(k), round(time.perf_counter() - t0, 2), "bab"])
                status = Status.INFEASIBLE if r.verdict == "below" else Status.FEASIBLE   # as a MILP decision's
                return Decision(r.verdict, r.bound, r.x, r.seconds, status, r.message), "bab"
            limit = min(limit - r.seconds, clock.left - 1.0)
            if limit < 0.1:
                return None
        # max -(m_k) <= -t - margin  <=>  m_k >= t + margin on the whole box
        dec = milp.decide(-W[k], -b[k], -float(thresholds[k]), time_limit=limit, margin=opt.margin, stop=stop)
        stats.setdefault("margin_query_seconds", []).append([int(k), round(time.perf_counter() - t0, 2), "milp"])
        return dec, "milp"

    # (numpy releases the GIL in its products, and HiGHS while it solves; other backends take turns)
    workers = workers if len(todo) > 1 else 1
    with closing(answers_on_threads(ask, list(todo), workers, ordered=True, stop=stop)) as answers:
        for k, got in answers:
            if got is None:
                continue
            dec, by = got
            stats["milp_queries"] += by == "milp"
            if dec.verdict == "below":
                proved[k] = True
            else:
                stats["milp_unknown"] += by == "milp"
                if dec.verdict == "above" and dec.x is not None:
                    witnesses.append(dec.x)
    return proved, witnesses


def robust_class(st, f: Network, budget: float, notes: list) -> bool:
    """Try to decide a top-1 check by the margins of each network (see the module docstring); True when the
    whole box is closed.  Leaves A's proven neuron bounds and margins in the ledger for the search after it."""
    from ..stability import StabilityOptions, prove_stability
    from .search import known_f
    opt, box, pair, clock = st.opt, st.box, st.pair, st.clock
    if len(pair.f.dense) != len(f.dense):
        return False
    t_end = time.perf_counter() + budget
    n_out = f.n_outputs
    c = int(np.argmax(f.forward(box.center[None])[0]))
    rows = margin_rows(n_out, c, st.pairs)
    t0 = time.perf_counter()

    # A's neuron bounds and a first bound of its margins, by the stability pipeline on the margin network
    fm = margin_network(f, c)
    pre = min(PREPASS_SHARE * budget, PREPASS_MAX)
    sopt = StabilityOptions(method="milp", backend=milp_backend(opt.backend), time_limit=min(5.0, pre),
                            seed=opt.seed, milp_budget=pre)
    sres = prove_stability(fm, box, sopt)
    st.tighten = None
    hidden = Bounds(sres.bounds.lo[:-2], sres.bounds.hi[:-2])
    out_lo, out_hi = np.full(n_out, -np.inf), np.full(n_out, np.inf)
    known = known_f(pair, f, Bounds(hidden.lo + [out_lo], hidden.hi + [out_hi]), box)
    if known is None:
        return False
    st.known = known
    f_lo = sres.bounds.lo[-2].copy()                 # proven lower bounds of f_c - f_k
    st.stats["seconds"]["margins_prepass"] = time.perf_counter() - t0

    # what the difference can take away: U_k >= d_c - d_k; and g's margins through the pair
    pb = st.root = pair_bounds(pair, box.lo[None], box.hi[None], known)
    st.stats["boxes"] += 1
    Cc = st.C[rows]
    _, d_up = output_bounds(pair, pb, Cc, "d")
    g_lo, _ = output_bounds(pair, pb, Cc, "g")
    d_up, g_lo = d_up[0], np.maximum(g_lo[0], f_lo - d_up[0])
    done = (f_lo > 0) & (g_lo > 0)

    # 1. f's margin above U_k (settles g as well), or above 0 where g's bound is positive already
    need = np.where(g_lo > 0, 0.0, np.maximum(d_up, 0.0))
    # the classes furthest below their threshold first: their queries take the longest (on MNIST 256x2 pruned,
    # prop_1: gap -1.7 -> 19 s, -0.6 -> 6 s), so two at a time finish closer together
    todo = np.flatnonzero(~done)
    todo = todo[np.argsort(f_lo[todo] - need[todo], kind="stable")]
    # (how far each class's first bound is below its threshold, next to each query's seconds in the report)
    st.stats["margin_gaps"] = {int(k): round(float(f_lo[k] - need[k]), 3) for k in todo}
    clock_step = _Deadline(clock, t_end)
    ok, pts = decide_margins(fm, box, hidden, need, todo, opt, clock_step, st.stats)
    f_lo[ok] = np.maximum(f_lo[ok], need[ok] + opt.margin)
    done |= ok
    if pts:
        st.try_points(np.array(pts))
    # 2. the rest: f's margin above 0 and g's own margin above 0
    todo = np.flatnonzero(~done)
    if todo.size and st.cex is None and pair.same_shape and clock_step.left > 1.0:
        zero = np.zeros(n_out - 1)
        gm = margin_network(pair.g, c)
        g_hidden = Bounds([a[0] for a in pb.g_lo[:-1]], [a[0] for a in pb.g_hi[:-1]])
        (ok_f, pts_f), (ok_g, pts_g) = decide_side_by_side(
            [(fm, hidden, todo[f_lo[todo] <= 0]), (gm, g_hidden, todo[g_lo[todo] <= 0])], box, zero, opt,
            clock_step, st.stats)
        f_lo[ok_f] = np.maximum(f_lo[ok_f], opt.margin)
        g_lo[ok_g] = np.maximum(g_lo[ok_g], opt.margin)
        if pts_f or pts_g:
            st.try_points(np.array(pts_f + pts_g))
        done |= (f_lo > 0) & (g_lo > 0)
    st.f_margin = np.full(len(st.pairs), -np.inf)
    st.f_margin[rows] = f_lo
    st.stats["seconds"]["margins"] = time.perf_counter() - t0
    st.stats["margins_proved"] = f"{int(done.sum())} of {n_out - 1}"
    if st.cex is not None or not done.all():
        if st.cex is None:
            notes.append(f"A answers {c} at the centre; the margins of both networks were proved positive for "
                         f"{int(done.sum())} of the {n_out - 1} other classes: searched on")
        return False
    absd = np.maximum(pb.d_hi[-1][0], -pb.d_lo[-1][0])
    st.close(box.lo, box.hi, "equivalent", "margins", absd)
    notes.append(f"both networks answer class {c} on the whole box: every margin of A proved above what the "
                 f"difference can take away, or B's own margins proved positive (branch and bound or MILPs on one "
                 f"network each)")
    return True


def decide_side_by_side(runs: list, box, thresholds: np.ndarray, opt, clock, stats: dict) -> list:
    """`decide_margins` for each (margin network, hidden bounds, todo) of `runs`, the networks side by side on
    one thread each when more than one has work (else the one with work gets two), each with its own stats,
    merged into `stats` after (MNIST 256x2 pruned, prop_1: f's and g's last queries, 7 s each, now overlap)."""
    busy = sum(len(r[2]) > 0 for r in runs)
    own = [{"milp_queries": 0, "milp_unknown": 0} for _ in runs]
    bab_lock = threading.Lock()      # one branch and bound at a time over both networks
    # leaving early (a SIGTERM) sets the shared stop: both networks' queries end at once
    out = map_on_cores(lambda r, stop: decide_margins(r[0], box, r[1], thresholds, r[2], opt, clock, r[3],
                                                      workers=1 if busy > 1 else 2, bab_lock=bab_lock, stop=stop),
                       [run + (o,) for run, o in zip(runs, own)], one_blas_thread=False)
    for o in own:
        stats["milp_queries"] = stats.get("milp_queries", 0) + o.pop("milp_queries")
        stats["milp_unknown"] = stats.get("milp_unknown", 0) + o.pop("milp_unknown")
        stats.setdefault("margin_query_seconds", []).extend(o.pop("margin_query_seconds", []))
        for key in ("bab_queries", "bab_domains"):
            stats[key] = stats.get(key, 0) + o.pop(key, 0)
    return out


class _Deadline:
    """The check's clock, cut at the end of this step's budget (`left` is what decide_margins reads)."""

    def __init__(self, clock, t_end: float):
        self.clock, self.t_end = clock, t_end

    @property
    def left(self) -> float:
        return min(self.clock.left, self.t_end - time.perf_counter())
