"""The windowed MILP decisions of one layer as tasks: one `NeuronQuery` per open neuron, sent
out through a `distributed.Runner` (an executor and a journal), the answers recorded in the same order and
by the same rules as the serial `window_milp.milp_layer`.

What stays the same: a neuron is dead/active only by an infeasible decision (the solver's proof); a
witness is a real point, re-run in the network here; an answer is recorded only while its neuron is still
open.  What a cluster changes: the queries of a layer run at once, so a neuron that an earlier neuron's
witness shows unstable may have been asked anyway (its answer is then dropped, as the serial loop would
not have asked) - the proved phases are the same, only the query count grows.  Under --milp-budget a task
is sent only while the budget lasts and carries what is left of it: its decisions stop there, as the serial
loop's do (an answer so cut is not journalled: a query's limit is part of its journal key).
"""

from __future__ import annotations

import numpy as np

from ..distributed.work import LayerSpec, NeuronQuery
from .stability_solvers import settle
from .window_milp import bab_layer
from .windows import FIRST_WINDOW, likelier_sides, ordered_open


def milp_layer_tasks(k, net, box, bounds, tr, opt, budget, queries, runner, bar=None, shared=True):
    """MILP decisions for every open neuron of hidden layer k (0-based), through `runner`; with opt.bab the
    layer's shared branch and bound runs here first (as in the serial loop; seconds, not tasks' worth; not
    with shared=False) and only what it leaves becomes tasks."""
    def is_open(i):
        return not tr.unstable(k)[i] and bounds.hi[k][i] > 0 and bounds.lo[k][i] < 0

    todo = ordered_open(tr, bounds, k)
    if opt.bab and shared and todo.size:
        bq = queries.setdefault("bab", {"tried": 0, "proved": 0, "witness": 0, "domains": 0})
        bab_layer(k, net, box, bounds, tr, opt, budget, bq, [i for i in todo if is_open(i)],
                   [(d.W, d.b) for d in net.dense[:k]], bar)
        todo = np.array([i for i in todo if is_open(i)], dtype=int)
    if todo.size == 0:
        return
    spec = LayerSpec(net, box, bounds.copy(), k)     # a snapshot: settle() changes `bounds` as answers come

    def make_query(i):
        if not is_open(i):
            return None
        return NeuronQuery(k, int(i), likelier_sides(bounds, k, i), FIRST_WINDOW,
                           bool(tr.seen_pos[k][i]), bool(tr.seen_neg[k][i]), float(opt.time_limit),
                           float(opt.margin), opt.backend)

    for i, ans in runner.neuron_answers(spec, todo, make_query, is_open, budget.left, bar):
        if ans is None:
            if is_open(i):            # open, yet not asked: the budget was spent
                queries["milp_skipped"] += 1
            continue
        tr.seconds[k][i] += ans.seconds
        for w, n in ans.windows.items():
            queries["milp"] += n
            queries["windows"][w] = queries["windows"].get(w, 0) + n
        queries["milp_unknown"] += ans.unknown
        if ans.status != "done":
            queries["tasks_failed"] = queries.get("tasks_failed", 0) + 1
            continue
        for side, verdict in ans.verdicts.items():
            if verdict == "below":
                settle(bounds, tr, k, i, side)
        if ans.witnesses:
            tr.absorb(np.array(ans.witnesses, dtype=np.float64), "witness")
        if ans.cut and is_open(i):    # the budget ended its decisions
            queries["milp_skipped"] += 1

