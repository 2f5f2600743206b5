"""The bottleneck step of the windowed stages: a layer whose previous layer keeps one live neuron is
decided by bisecting that neuron's range over the layer's thresholds (`bottleneck`), then interval
arithmetic (`interval_step`)."""

from __future__ import annotations

import threading
import time

import numpy as np

from ..distributed.cores import map_on_cores
from ..solvers.lazy import LazyMilp
from .relu_bab import decide_max
from .windows import BAB_SHARE, open_neurons, window_encoding


BOTTLENECK_QUICK = 2.0  # seconds of branch and bound per bottleneck decision in round 1 (no MILP there)


def bottleneck(k, net, box, bounds, tr, opt, budget, queries, milp_ok=True) -> bool:
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
    todo = np.flatnonzero(open_neurons(tr, bounds, k))
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

    def side(sign, stop):
        # sign +1: the smallest threshold with max z_a <= it; -1: the largest with min z_a >= it.  Most
        # neurons turn out stable, so the first query asks the extreme threshold (one proof settles all),
        # then bisection between the real points found and the proofs
        ts = up if sign > 0 else -down[::-1]
        lo_i, hi_i = 0, ts.size
        first = True
        while lo_i < hi_i:
            lim = budget.limit()
            if lim is None or (stop is not None and stop.is_set()):
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
                                   margin=opt.margin, stop=stop)
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
                                  margin=opt.margin, stop=stop)
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
        map_on_cores(side, [1.0, -1.0], one_blas_thread=False)     # leaving early sets their stop
    else:
        side(1.0, None)
        side(-1.0, None)
    if tightened:
        interval_step(net, bounds, j)
    return bool(tightened)


def interval_step(net, bounds, j):
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
