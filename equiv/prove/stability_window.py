"""Solver stages on deep dense chains: optimised slopes first, then LP and MILP queries on *windows* (the
last w hidden layers before the neuron, `prove.windows`), under one budget for the whole stage: per layer
the bottleneck step (`window_bottleneck`), the windowed LPs (`window_lp`) and the MILP decisions
(`window_milp`, or as tasks: `stability_tasks`).
"""

from __future__ import annotations

import time

import numpy as np

from ..bounds import Bounds, deeppoly_bounds
from ..solvers import milp_backend
from .windows import Budget, layer_encodings, open_neurons
from .window_lp import lp_layer
from .window_bottleneck import bottleneck
from .window_milp import milp_layer


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
    layers = [k for k in range(1, len(tr.masks)) if open_neurons(tr, bounds, k).any()]
    total = sum(int(open_neurons(tr, bounds, k).sum()) for k in layers)
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
        return sum(int(open_neurons(tr, bounds, j).sum()) for j in ks)

    for shared_only in rounds:
        for k in layers:
            # a layer's windows encode only the layers before it, so its LPs and first decisions share them;
            # a later round makes them again from the (tighter) bounds current then
            first = k not in encoders
            encoders[k] = layer_encodings(net, box, lambda: bounds, k, opt.backend)
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
                milp_layer(k, net, box, bounds, tr, opt, budget, queries, encoders[k], bar, shared=shared,
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


def _bottleneck_step(k, net, box, bounds, tr, opt, budget, queries, stage_seconds, milp_ok=True) -> tuple:
    """Layer k's bottleneck bisection (`bottleneck`; without MILP unless milp_ok): the bounds to go on with,
    and whether it tightened them."""
    t1 = time.perf_counter()
    done = opt.method == "milp" and opt.bottleneck and bottleneck(k, net, box, bounds, tr, opt, budget, queries,
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
    """Layer k's windowed LPs (`lp_layer`), once per run."""
    t1 = time.perf_counter()
    if opt.window_lp:
        lp_layer(k, net, box, bounds, tr, opt, budget, queries, enc_of, runner)
    tr.record_bounds(k, bounds, "lp")
    stage_seconds["lp"] += time.perf_counter() - t1
