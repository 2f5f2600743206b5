"""Windowed LP bounds of a layer's open neurons (both sides, narrowest interval first, in chunks that stop
when their yield drops), on HiGHS (optionally through the journal) or as one certified ADMM batch."""

from __future__ import annotations

import time


from ..solvers import Status
from .windows import FIRST_WINDOW, ordered_open, window


LP_CHUNK = 8          # a layer's LPs stop after a chunk of this many neurons that decides none


def lp_layer(k, net, box, bounds, tr, opt, budget, queries, enc_of, runner=None):
    """LP bounds of the open neurons (both sides) on the first window, narrowest first, in chunks.

    With a runner that keeps a journal, every LP answer is journalled under the content hash of its model and
    objective, and a journalled one is reused instead of solved (the LPs themselves stay in this process).
    With the admm backend a chunk is one `DagAdmm` batch on the window (not journalled)."""
    maximize = _journalled_lp(runner, opt) if runner is not None and runner.journal is not None else None
    w = min(k, FIRST_WINDOW)
    todo = ordered_open(tr, bounds, k)
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
