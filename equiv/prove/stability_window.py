"""Solver stages on deep dense chains: optimised slopes first, then LP and MILP
queries on *windows* (the last w hidden layers before the neuron), under one budget for the whole stage.

A window of w layers for a neuron of hidden layer k (0-based) encodes hidden layers k-w .. k-1 and takes
as its input box the known bounds of the activations of layer k-w-1 (the input box itself when k-w = 0):
every real input maps into that box, so a window's "infeasible" is a proof.  A window's feasible point
is not a real input; only the full window (w = k) yields witnesses.  A neuron the window cannot decide
gets the next wider window.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..bounds import Bounds, deeppoly_bounds
from ..encode.chain import encode_network
from ..ir.network import Network
from ..solvers import Status, make_backend, milp_backend
from ..spec.region import Box
from ..solvers.lazy import LazyMilp
from .relu_bab import decide_many, decide_max
from .stability_solvers import settle

FIRST_WINDOW = 2      # w = 1 is little more than interval arithmetic on the previous layer's box
LP_CHUNK = 8          # a layer's LPs stop after a chunk of this many neurons that decides none
PARTIAL_SHARE = 0.3   # binaries kept integral in a decision's first, partial try (the rest LP-relaxed)
PARTIAL_MIN = 24      # windows with fewer binaries go straight to the full MILP
BAB_SHARE = 0.5       # of a decision's time limit: branch and bound first, the windowed MILP gets the rest
BOTTLENECK_QUICK = 2.0  # seconds of branch and bound per bottleneck decision in round 1 (no MILP there)
BAB_LAYER_BASE, BAB_LAYER_PER = 1.0, 0.1   # seconds for a layer's shared branch and bound (+ per question)
BAB_STALL_MIN, BAB_STALL_SHARE = 2.0, 0.25  # it stops early when nothing is decided after this long (or share)


def window(net: Network, box: Box, bounds: Bounds, k: int, w: int):
    """(sub-network, its input box, its bounds) of the window of w hidden layers before hidden layer k."""
    s = k - w
    masks, dense = net.masks, net.dense
    if s == 0:
        sub_box = box
    else:
        m, lo, hi = masks[s - 1], bounds.lo[s - 1], bounds.hi[s - 1]
        # activations of layer s-1: ReLU(z) in [max(lo, 0), max(hi, 0)]; linear channels keep [lo, hi]
        sub_box = Box(np.where(m, np.maximum(lo, 0.0), lo), np.where(m, np.maximum(hi, 0.0), hi))
    sub = Network.from_layers(dense[s:k + 1], masks[s:k])
    return sub, sub_box, Bounds([a for a in bounds.lo[s:k + 1]], [a for a in bounds.hi[s:k + 1]])


def window_encoding(net: Network, box: Box, bounds: Bounds, k: int, w: int):
    sub, sub_box, sub_bounds = window(net, box, bounds, k, w)
    return encode_network(sub, sub_box, sub_bounds, depth=w, integer=True)


def alpha_chain(net, box, bounds, tr, deadline, progress=False) -> tuple[Bounds, dict]:
    """Optimised-slope bounds (`graph_alpha.alpha_stage`) on the chain's graph, mapped back to layers."""
    from ..ir.chain_graph import network_graph
    from ..bounds.engine import GraphBounds
    from .graph_alpha import alpha_stage
    g = network_graph(net)
    names = [f"dense_{k + 1}" for k in range(len(net.dense))]
    gb = GraphBounds(dict(zip(names, bounds.lo)), dict(zip(names, bounds.hi)))
    # the other tensors' bounds (inputs, ReLU outputs) follow from these
    from ..bounds.engine import deeppoly_graph
    gb = deeppoly_graph(g, box, known=gb)
    relus = [f"relu_{k + 1}" for k in range(len(tr.masks))]
    pos = {r: tr.seen_pos[k].copy() for k, r in enumerate(relus)}
    neg = {r: tr.seen_neg[k].copy() for k, r in enumerate(relus)}
    budget = None if deadline is None else max(0.0, deadline - time.perf_counter())
    gb, stats = alpha_stage(g, box, gb, pos, neg, budget=budget, progress=progress)
    for k, r in enumerate(relus):      # corner points the slopes found, run in the real network
        newly = pos[r] & neg[r] & ~tr.unstable(k) & (tr.method[k] == "none")
        tr.method[k][newly] = "witness"
        tr.seen_pos[k] |= pos[r]
        tr.seen_neg[k] |= neg[r]
    out = Bounds([np.maximum(gb.lo[n], lo) for n, lo in zip(names, bounds.lo)],
                 [np.minimum(gb.hi[n], hi) for n, hi in zip(names, bounds.hi)])
    return out, stats


class Budget:
    """One deadline for the whole solver stage; per-query limits never pass it."""

    def __init__(self, seconds, per_query):
        self.t0 = time.perf_counter()
        self.end = None if seconds is None else self.t0 + seconds
        self.per_query = per_query

    def limit(self) -> float | None:
        """Seconds for the next query, None when the budget is spent."""
        if self.end is None:
            return self.per_query
        left = self.end - time.perf_counter()
        return None if left <= 0.05 else min(self.per_query, left)

    def spent(self) -> float:
        return time.perf_counter() - self.t0


def _open(tr, bounds, k):
    return tr.masks[k] & (bounds.lo[k] < 0) & (bounds.hi[k] > 0) & ~tr.unstable(k)


def _sides(bounds, k, i) -> tuple:
    """Neuron i's two phase questions, the likelier first: the side of 0 its interval reaches less far."""
    return ("dead", "active") if bounds.hi[k][i] <= -bounds.lo[k][i] else ("active", "dead")


def _ordered(tr, bounds, k):
    """Open neurons of layer k, narrowest interval around 0 (relative) first."""
    todo = np.flatnonzero(_open(tr, bounds, k))
    lo, hi = bounds.lo[k][todo], bounds.hi[k][todo]
    return todo[np.argsort(np.minimum(-lo, hi) / (hi - lo), kind="stable")]


def windowed_stages(net, box, bounds, tr, opt, stage_seconds, stage_counts, queries, notes, runner=None) -> Bounds:
    """Slopes, then per layer windowed LPs (stopped when their yield drops) and windowed MILP decisions.

    runner (`distributed.Runner`): the MILP decisions go out as tasks (an executor, a journal); None runs
    them here, one by one, as always."""
    budget = Budget(opt.milp_budget, opt.time_limit)
    queries.setdefault("windows", {})
    queries.setdefault("milp_skipped", 0)
    t0 = time.perf_counter()
    if opt.alpha:
        bounds, st = alpha_chain(net, box, bounds, tr, budget.end, opt.progress)
        bounds = deeppoly_bounds(net, box, known=bounds)
        for k in range(len(tr.masks)):
            tr.record_bounds(k, bounds, "alpha")
        queries["alpha_rows"] = st["alpha_rows"]
        stage_counts["alpha"] = tr.stable_count(bounds)
    stage_seconds["alpha"] = time.perf_counter() - t0
    stage_seconds.setdefault("lp", 0.0)
    stage_seconds.setdefault("milp", 0.0)
    layers = [k for k in range(1, len(tr.masks)) if _open(tr, bounds, k).any()]
    total = sum(int(_open(tr, bounds, k).sum()) for k in layers)
    bar = None
    if opt.progress:
        from tqdm import tqdm
        bar = tqdm(total=total, desc="queries", unit="neuron", leave=False)
    # With branch and bound, two rounds over the layers: first only each layer's shared branch and bound,
    # so that the budget reaches the deep layers; then the full per-neuron decisions with what is left.  A
    # deep layer is provable only once the layers before it are nearly settled (mnist 256x6: the shared
    # branch and bound proves 255 of layer 5's 256 neurons in 14 s with 23 of layer 4 open, none in 20 s
    # with 53 open), and a hard neuron's full decision costs up to a whole time limit: one full round spent
    # a 60 s budget on layers 3-4.  (A first round with also 0.5 s of branch and bound per neuron: mnist
    # 256x6 in 60 s 1 000-1 100 stable; the shared one alone, since it shares its time fairly: 1 090.)
    rounds = [True, False] if opt.method == "milp" and opt.bab and runner is None else [False]
    shared_at = {}      # layer -> open neurons of the layers before it when its shared branch and bound ran
    retry = set()       # layers whose bottleneck step ran without MILP in round 1 and settled nothing
    encoders = {}

    def open_in(ks):
        return sum(int(_open(tr, bounds, j).sum()) for j in ks)

    for shared_only in rounds:
        for k in layers:
            # a layer's windows encode only the layers before it, so its LPs and first decisions share them;
            # a later round makes them again from the (tighter) bounds current then
            first = k not in encoders
            encoders[k] = _layer_encodings(net, box, lambda: bounds, k, opt.backend)
            if first or (k in retry and not shared_only):
                # (the windows are made on first use: after the bottleneck step's bounds).  In round 1 the
                # bottleneck asks only a short branch and bound; a full-depth MILP there cost mnist 256x6 10 s
                # of its 60 s for nothing.  What it left open is asked again, MILP included, in round 2.
                bounds, done = _bottleneck_step(k, net, box, bounds, tr, opt, budget, queries, stage_seconds,
                                                milp_ok=not shared_only)
                if shared_only and not done:
                    retry.add(k)
            if first:
                _lp_step(k, net, box, bounds, tr, opt, budget, queries, stage_seconds, encoders[k], runner)
            t1 = time.perf_counter()
            # the shared branch and bound again only when earlier layers were settled further since it ran
            before = open_in(range(k))
            shared, shared_at[k] = shared_at.get(k) != before, before
            if opt.method == "milp" and runner is not None:
                from .stability_tasks import milp_layer_tasks
                milp_layer_tasks(k, net, box, bounds, tr, opt, budget, queries, runner, bar, shared=shared)
            elif opt.method == "milp":
                _milp_layer(k, net, box, bounds, tr, opt, budget, queries, encoders[k], bar, shared=shared,
                            shared_only=shared_only)
            stage_seconds["milp"] += time.perf_counter() - t1
            bounds = deeppoly_bounds(net, box, known=bounds)   # later layers start from the tighter bounds
            for j in range(k + 1, len(tr.masks)):
                tr.record_bounds(j, bounds, "deeppoly")
            if bar is not None:
                # what this layer's steps, or earlier points, settled counts as done too
                bar.n = max(bar.n, total - open_in(layers))
                bar.refresh()
    if bar is not None:
        bar.close()
    if queries["milp_skipped"]:
        notes.append(f"solver budget of {opt.milp_budget:g} s spent: {queries['milp_skipped']} neurons got no (or no "
                     "further) query; they stay 'unknown' and are kept")
    if opt.method == "milp" and milp_backend(opt.backend) != opt.backend:
        notes.append(f"the {opt.backend} backend solves LP relaxations only: the MILP decisions used highs")
    queries["budget_spent"] = round(budget.spent(), 3)
    stage_counts[opt.method] = tr.stable_count(bounds)
    # stable before the MILP decisions: everything not proved by a MILP (or the branch and bound before it)
    stage_counts["lp"] = stage_counts[opt.method] - sum(int(np.sum((m == "milp") | (m == "bab"))) for m in tr.method)
    return bounds


def _layer_encodings(net, box, get_bounds, k, backend):
    """enc_of(w): layer k's window encoding of width w and its backend, made on first use (from the bounds
    current then) and kept for the layer's later decisions.  For admm (LP only, and run by `_admm_chunk` on
    the network itself) the backend is highs, which the decisions need."""
    encs = {}

    def enc_of(w):
        if w not in encs:
            e = window_encoding(net, box, get_bounds(), k, w)
            encs[w] = (e, make_backend(milp_backend(backend), e.model))
        return encs[w]
    return enc_of


def _bottleneck_step(k, net, box, bounds, tr, opt, budget, queries, stage_seconds, milp_ok=True) -> tuple:
    """Layer k's bottleneck bisection (`_bottleneck`; without MILP unless milp_ok): the bounds to go on with,
    and whether it tightened them."""
    t1 = time.perf_counter()
    done = opt.method == "milp" and opt.bottleneck and _bottleneck(k, net, box, bounds, tr, opt, budget, queries,
                                                                   milp_ok)
    if done:
        tr.record_bounds(k - 1, bounds, "milp")
        tr.record_bounds(k, bounds, "bottleneck")
        bounds = deeppoly_bounds(net, box, known=bounds)
        for j in range(k + 1, len(tr.masks)):
            tr.record_bounds(j, bounds, "deeppoly")
    stage_seconds["bottleneck"] = stage_seconds.get("bottleneck", 0.0) + time.perf_counter() - t1
    return bounds, done


def _lp_step(k, net, box, bounds, tr, opt, budget, queries, stage_seconds, enc_of, runner):
    """Layer k's windowed LPs (`_lp_layer`), once per run."""
    t1 = time.perf_counter()
    if opt.window_lp:
        _lp_layer(k, net, box, bounds, tr, opt, budget, queries, enc_of, runner)
    tr.record_bounds(k, bounds, "lp")
    stage_seconds["lp"] += time.perf_counter() - t1


def _count(queries, w):
    queries["windows"][w] = queries["windows"].get(w, 0) + 1


def _bottleneck(k, net, box, bounds, tr, opt, budget, queries, milp_ok=True) -> bool:
    """When one neuron a of layer k-1 is all that is left of it (the others proved dead), every neuron j of
    layer k is z_j = w_j y + b_j with y = act(z_a): its phase depends only on where y's range sits against
    its threshold t_j = -b_j / w_j.  Bisect over the sorted thresholds with full-depth decisions on z_a
    (branch and bound, then the MILP if that does not decide and milp_ok, else it stops there; a proof
    tightens z_a's bound, a point is a real input whose run shows the neurons below it unstable); True when a
    bound of z_a was tightened (then an interval step decides layer k).

    Measured on MNIST 256x4 prop_0: layer 3 keeps 1 of 256 neurons, and 42 layer-4 decisions of ~3 s each
    become one 5 s decision on that neuron (its max is below every open threshold)."""
    j = k - 1
    m = np.asarray(tr.masks[j], bool)
    live = np.flatnonzero(~m | (bounds.hi[j] > 0))
    todo = np.flatnonzero(_open(tr, bounds, k))
    if j < 1 or live.size != 1 or todo.size < 4:
        return False
    a = int(live[0])
    w, bj = net.dense[k].W[todo, a], net.dense[k].b[todo]
    keep = np.abs(w) > 1e-9 * np.maximum(1.0, np.abs(bj))
    t, w, pos, neg = -bj[keep] / w[keep], w[keep], tr.seen_pos[k][todo[keep]], tr.seen_neg[k][todo[keep]]
    # max y <= t_j proves j dead (w_j > 0) or active (w_j < 0), min y >= t_j the other phase; a side is moot
    # for j once a real point showed j on the side that proof would rule out
    inside = (t > bounds.lo[j][a]) & (t < bounds.hi[j][a])
    if m[a]:
        inside &= t > 0                # y = relu(z_a) >= 0 settles the thresholds at or below 0 already
    up = np.unique(t[inside & ~np.where(w > 0, pos, neg)])
    down = np.unique(t[inside & ~np.where(w > 0, neg, pos)])
    if up.size + down.size < 2:
        return False
    # the full-depth encoding only when branch and bound leaves a decision to the MILP
    milp = LazyMilp(lambda: window_encoding(net, box, bounds, j, j), opt.backend)
    bq = queries.setdefault("bottleneck", {"layers": [], "milp": 0, "bab": 0})
    bq["layers"].append(j + 1)
    lock, bab_lock = threading.Lock(), threading.Lock()
    layers = [(d.W, d.b) for d in net.dense[:j]]
    tightened = []

    def side(sign):
        # sign +1: the smallest threshold with max z_a <= it; -1: the largest with min z_a >= it.  Most
        # neurons turn out stable, so the first query asks the extreme threshold (one proof settles all),
        # then bisection between the real points found and the proofs
        ts = up if sign > 0 else -down[::-1]
        lo_i, hi_i = 0, ts.size
        first = True
        while lo_i < hi_i:
            lim = budget.limit()
            if lim is None:
                return
            mid = lo_i if first else (lo_i + hi_i) // 2
            first = False
            # a little below the threshold, so that the interval step decides that neuron despite rounding
            q = ts[mid] - 1e-7 * max(1.0, abs(ts[mid]))
            q0 = time.perf_counter()
            # (a partial MILP first was tried: 3 of 7 proved, 37 s against 27 s on MNIST 256x4 prop_0)
            dec = None
            if opt.bab:
                # branch and bound first (MNIST 256x4 prop_0: the 5 s MILP decision in 0.1 s)
                with bab_lock:
                    r = decide_max(layers, net.masks[:j], box.lo, box.hi, bounds.lo[:j], bounds.hi[:j],
                                   sign * net.dense[j].W[a], sign * net.dense[j].b[a], q,
                                   time_limit=lim * BAB_SHARE if milp_ok else min(lim * BAB_SHARE, BOTTLENECK_QUICK),
                                   margin=opt.margin)
                with lock:
                    bq["bab"] += 1
                if r.verdict != "unknown":
                    dec = r
                lim = budget.limit()
                if lim is None:
                    return
            if dec is None and not milp_ok:
                return
            if dec is None:
                dec = milp.decide(sign * net.dense[j].W[a], sign * net.dense[j].b[a], q, time_limit=lim,
                                  margin=opt.margin)
                with lock:
                    bq["milp"] += 1
                    queries["milp"] += 1
            with lock:
                tr.seconds[j][a] += time.perf_counter() - q0
                if dec.verdict == "below":
                    # (a proof past the other bound would say the region is empty: solver noise, not used)
                    if sign > 0 and bounds.lo[j][a] <= q < bounds.hi[j][a]:
                        bounds.hi[j][a] = q
                        tightened.append(sign)
                    elif sign < 0 and bounds.lo[j][a] < -q <= bounds.hi[j][a]:
                        bounds.lo[j][a] = -q
                        tightened.append(sign)
                    hi_i = mid
                elif dec.verdict == "above":
                    x = np.clip(dec.x, box.lo, box.hi)
                    tr.absorb(x[None], "witness")
                    _, pre = net.forward(x[None], return_pre=True)
                    v = sign * float(pre[j][0, a])   # the real value there: every threshold below it is passed
                    lo_i = max(mid + 1, int(np.searchsorted(ts, v, side="left")))
                else:
                    queries["milp_unknown"] += 1
                    return

    if opt.workers > 1 and (opt.bab or milp.threads_ok):
        with ThreadPoolExecutor(max_workers=2) as pool:
            for f in [pool.submit(side, sg) for sg in (1.0, -1.0)]:
                f.result()
    else:
        side(1.0)
        side(-1.0)
    if tightened:
        _interval_step(net, bounds, j)
    return bool(tightened)


def _interval_step(net, bounds, j):
    """Intersect layer j+1's bounds with interval arithmetic from layer j's (exact when one neuron of layer j
    is live), rounded outward by a relative 1e-12."""
    from ..bounds.interval import relu_image
    ylo, yhi = relu_image(bounds.lo[j], bounds.hi[j], np.asarray(net.masks[j], bool))
    W, b = net.dense[j + 1].W, net.dense[j + 1].b
    Wp, Wn = np.maximum(W, 0.0), np.minimum(W, 0.0)
    lo, hi = Wp @ ylo + Wn @ yhi + b, Wp @ yhi + Wn @ ylo + b
    pad = 1e-12 * (np.abs(W) @ np.maximum(np.abs(ylo), np.abs(yhi)) + np.abs(b))
    bounds.lo[j + 1] = np.maximum(bounds.lo[j + 1], lo - pad)
    bounds.hi[j + 1] = np.minimum(bounds.hi[j + 1], hi + pad)


def _lp_layer(k, net, box, bounds, tr, opt, budget, queries, enc_of, runner=None):
    """LP bounds of the open neurons (both sides) on the first window, narrowest first, in chunks.

    With a runner that keeps a journal, every LP answer is journalled under the content hash of its model and
    objective, and a journalled one is reused instead of solved (the LPs themselves stay in this process).
    With the admm backend a chunk is one `DagAdmm` batch on the window (not journalled)."""
    maximize = _journalled_lp(runner, opt) if runner is not None and runner.journal is not None else None
    w = min(k, FIRST_WINDOW)
    todo = _ordered(tr, bounds, k)
    for s in range(0, todo.size, LP_CHUNK):
        chunk = todo[s:s + LP_CHUNK]
        if opt.backend == "admm":
            spent = not _admm_chunk(k, net, box, bounds, tr, budget, queries, w, chunk)
        else:
            spent = not _highs_chunk(k, net, bounds, tr, budget, queries, w, chunk, enc_of, maximize)
        if spent:
            return
        if not any(bounds.hi[k][i] <= 0 or bounds.lo[k][i] >= 0 for i in chunk):
            # the yield dropped: the rest (wider intervals) go to the MILPs
            queries["lp_stopped"] = queries.get("lp_stopped", 0) + int(todo.size - s - LP_CHUNK > 0)
            return


def _highs_chunk(k, net, bounds, tr, budget, queries, w, chunk, enc_of, maximize) -> bool:
    """Both LP bounds of each neuron in `chunk`, one query at a time on the window of width w (the layer's
    backend, or `maximize` through the journal); False when the budget is spent."""
    W, b = net.dense[k].W, net.dense[k].b
    for i in chunk:
        enc, be = enc_of(w)
        c, off = enc.objective(W[i], b[i])
        for sign in (1.0, -1.0):
            lim = budget.limit()
            if lim is None:
                return False
            q0 = time.perf_counter()
            if maximize is not None:
                r = maximize(enc, be, sign * c, sign * off, lim)
            else:
                r = be.maximize(sign * c, sign * off, integer=False, time_limit=lim)
            tr.seconds[k][i] += time.perf_counter() - q0
            queries["lp"] += 1
            if r.bound is not None and r.status == Status.OPTIMAL:
                if sign > 0:
                    bounds.hi[k][i] = min(bounds.hi[k][i], r.bound)
                else:
                    bounds.lo[k][i] = max(bounds.lo[k][i], -r.bound)
    return True


def _admm_chunk(k, net, box, bounds, tr, budget, queries, w, chunk) -> bool:
    """Both LP bounds of each neuron in `chunk` from one `DagAdmm` batch on the window of width w; False
    when the budget is spent.  Every bound it reports is certified, converged or not."""
    from ..solvers.chain_admm import chain_relaxation, neuron_bounds
    lim = budget.limit()
    if lim is None:
        return False
    lim *= 2 * len(chunk)           # the batch may take the chunk's share of per-query limits ...
    if budget.end is not None:      # ... within the budget
        lim = min(lim, max(0.0, budget.end - time.perf_counter()))
    sub, sub_box, sub_bounds = window(net, box, bounds, k, w)
    q0 = time.perf_counter()
    ups, downs = neuron_bounds(chain_relaxation(sub, sub_box, sub_bounds, w), net.dense[k].W[chunk],
                               net.dense[k].b[chunk], lim)
    for i, up, down in zip(chunk, ups, downs):
        tr.seconds[k][i] += (time.perf_counter() - q0) / len(chunk)
        if up.bound is not None:
            bounds.hi[k][i] = min(bounds.hi[k][i], up.bound)
        if down.bound is not None:
            bounds.lo[k][i] = max(bounds.lo[k][i], -down.bound)
    queries["lp"] += 2 * len(chunk)
    return True


def _journalled_lp(runner, opt):
    """maximize(enc, backend, c, offset, limit) -> SolveResult, through the runner's journal: only the status and
    the proven bound are kept (all the LP stage uses); a journalled answer costs no solver time."""
    from types import SimpleNamespace
    from ..distributed.work import lp_key, model_digest
    digests = {}

    def maximize(enc, be, c, off, lim):
        held = digests.get(id(enc.model))         # (model, digest): the reference keeps the id from being reused
        if held is None or held[0] is not enc.model:
            held = digests[id(enc.model)] = (enc.model, model_digest(enc.model))
        mkey = held[1]
        key = lp_key(mkey, c, off, opt.time_limit, opt.backend)
        hit = runner.journal.get(key)
        if hit is not None:
            return SimpleNamespace(status=Status(hit["status"]), bound=hit["bound"])
        r = be.maximize(c, off, integer=False, time_limit=lim)
        if lim >= opt.time_limit:       # a limit cut by the budget is not the keyed one: not journalled
            runner.journal.put(key, {"status": r.status.value, "bound": None if r.bound is None else float(r.bound)})
        return r
    return maximize


class _Influence:
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


class _Partial:
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


class _StartWindow:
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


def _bab_layer(k, net, box, bounds, tr, opt, budget, bq, open_, layers, bar=None):
    """Both sides of every open neuron of layer k as one branch and bound over shared batches (most are
    settled by a root bound, or refuted by a corner, at a fraction of a call each): proofs settle neurons,
    points are run as witnesses.  Capped at BAB_LAYER_BASE + BAB_LAYER_PER s per question (and the
    budget); what it leaves goes to the per-neuron decisions.  Each neuron's likelier side (the nearer end of
    its interval) is asked before any other side, and once one side is proved the other is dropped.  bar:
    a progress bar whose postfix follows the questions proved and refuted."""
    rows, sides = [], []
    for which in (0, 1):
        for i in open_:
            side = _sides(bounds, k, i)[which]
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
    res = decide_many(layers, net.masks[:k], box.lo, box.hi, bounds.lo[:k], bounds.hi[:k], sign[:, None] * W,
                      sign * b, np.zeros(len(rows)), time_limit=cap, margin=opt.margin, groups=np.array(rows),
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


def _milp_layer(k, net, box, bounds, tr, opt, budget, queries, enc_of, bar, shared=True, shared_only=False):
    """Per open neuron, narrowest first: decide the likelier phase, then the other, widening the window
    while it finds only (non-real) points; a full-window point is run in the real network.  With opt.bab
    (and shared) the layer's shared branch and bound first; shared_only: only that (a first round; what it
    leaves open waits for the next).

    With opt.workers > 1 (and a thread-safe backend) that many neurons are decided at once; answers are
    recorded under one lock, and a neuron is taken only while no real point has shown it unstable."""
    W, b = net.dense[k].W, net.dense[k].b
    todo = _ordered(tr, bounds, k)
    lock = threading.Lock()
    start = _StartWindow(k)
    partial, influence = {}, {}            # per window width
    pq = queries.setdefault("partial_milp", {"tried": 0, "proved": 0})

    def keep_cols(w, enc, be, row):
        """Integer columns of a partial first try at window w, or None (full MILP only)."""
        if not (partial.setdefault(w, _Partial()).on and getattr(be, "partial_ok", False)):
            return None
        if w not in influence:
            influence[w] = _Influence(net, bounds, k, w, enc)
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
        _bab_layer(k, net, box, bounds, tr, opt, budget, bq, [i for i in todo if is_open(i)], layers, bar)

    if shared_only:
        return

    def take():
        with lock:
            for i in queue:
                if is_open(i):
                    return i
                finished.add(i)
                if bar is not None:       # settled meanwhile (the layer's branch and bound, a witness)
                    bar.update(1)
            return None

    bab_lock = threading.Lock()

    def bab_side(i, side, sign) -> bool | None:
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
                           time_limit=cap, margin=opt.margin)
            secs = time.perf_counter() - q0
        with lock:
            tr.seconds[k][i] += secs
            x = _record_bab(r, bq, bounds, tr, k, i, side)
            if x is not None:
                tr.absorb(x[None], "witness")
        return r.verdict != "unknown"

    def decide(i) -> bool:
        """All of neuron i's decisions; False once the budget is spent."""
        with lock:
            order = _sides(bounds, k, i)
        for side in order:
            with lock:
                if not is_open(i):
                    break
                if tr.seen_pos[k][i] if side == "dead" else tr.seen_neg[k][i]:
                    continue
                w = start.w
            sign = 1.0 if side == "dead" else -1.0
            if opt.bab:
                got = bab_side(i, side, sign)
                if got is None:
                    return False
                if got:
                    continue
            while True:
                lim = budget.limit()
                if lim is None:
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
                                    integer_cols=cols)
                    with lock:
                        partial[w].record(dec.verdict == "below")
                        pq["tried"] += 1
                        pq["proved"] += int(dec.verdict == "below")
                    if dec.verdict != "below":
                        dec, lim = None, budget.limit()
                        if lim is not None:
                            dec, calls = be.decide(c, off, 0.0, time_limit=lim, margin=opt.margin), 2
                else:
                    dec = be.decide(c, off, 0.0, time_limit=lim, margin=opt.margin)
                secs = time.perf_counter() - q0
                with lock:
                    tr.seconds[k][i] += secs
                    queries["milp"] += calls
                    if dec is None:
                        return False
                    _count(queries, w)
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

    def worker():
        while True:
            i = take()
            if i is None:
                return
            if not decide(i):
                return
            with lock:
                finished.add(i)
                if bar is not None:
                    bar.set_postfix(layer=k + 1, left=int(todo.size - len(finished)), spent=f"{budget.spent():.0f}s")
                    bar.update(1)

    be0 = enc_of(min(k, FIRST_WINDOW))[1]
    n = min(opt.workers, todo.size) if getattr(be0, "threads_ok", False) else 1
    if n <= 1:
        worker()
    else:
        with ThreadPoolExecutor(max_workers=n) as pool:
            for f in [pool.submit(worker) for _ in range(n)]:
                f.result()
    queries["milp_skipped"] += sum(int(is_open(i)) for i in todo if i not in finished)
    queries.setdefault("start_window", {})[k + 1] = start.w
