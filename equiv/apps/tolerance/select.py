"""Greedy selection of replacements under a sound bound: candidates in score order, each accepted only when
the running network (all accepted replacements and this one) still passes the judge.  The whole network is
re-bounded at every step: errors do not add up through later ReLUs, so no sum of local errors is used.

Runs of accepted candidates are tried in growing batches (one bound for several candidates); a failed batch
is retried one candidate at a time, each candidate's options in order.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ...ir.network import Network
from .candidates import Candidate
from .edits import Edit, apply_edits
from .judge import Judge


@dataclass
class Selection:
    """The accepted replacements, in the order they were accepted, and what the search cost."""

    accepted: list[Edit]
    tried: int
    bound_calls: int
    seconds: float
    rejected_by_samples: int = 0
    proved: int = 0                        # the first `proved` accepted were accepted under the sound bound
    sampled: int = 0                       # the rest, accepted on the samples alone (the certificate decides)
    stopped: str = ""                      # why the search stopped early ("" when every candidate was tried)


def select(f: Network, base: list[Edit], candidates: list[Candidate], judge: Judge, *, time_limit: float = 300.0,
           max_batch: int = 16, progress=None) -> Selection:
    """Accept as many candidates as the judge allows, on top of the `base` edits (the exact phases)."""
    t0 = time.perf_counter()
    accepted: list[Edit] = []
    merged_away: set = set()
    n_sampled = 0
    batch = 1
    i, stopped = 0, ""

    edited: set = set()

    def usable(e: Edit) -> bool:
        # a merge moves weights onto a neuron that must still carry its own value
        return e.kind != "merge" or (e.layer, e.into) not in merged_away

    def net_with(extra):
        return apply_edits(f, base + accepted + extra)

    while i < len(candidates):
        if time.perf_counter() - t0 > time_limit:
            stopped = f"selection time limit ({time_limit:g} s) reached after {i} of {len(candidates)} candidates"
            break
        # a batch: the first usable option of each of the next `batch` candidates that passes the samples
        group, j = [], i
        while j < len(candidates) and len(group) < batch:
            c = candidates[j]
            opt = next((e for e in c.options if usable(e)), None)
            if opt is not None:
                group.append(opt)
            j += 1
        if len(group) > 1 and judge.ok(net_with(group)):
            _take(group, accepted, edited, merged_away)
            batch = min(2 * batch, max_batch)
            _tick(progress, j - i, len(accepted), judge.calls)
            i = j
            continue
        # one at a time
        before = len(accepted)
        for c in candidates[i:j]:
            for e in c.options:
                if not usable(e):
                    continue
                g = net_with([e])
                if not judge.sampled_ok(g):
                    n_sampled += 1
                    continue
                if judge.proved_ok(g):
                    _take([e], accepted, edited, merged_away)
                    break
            _tick(progress, 1, len(accepted), judge.calls)
        batch = 2 if len(group) <= 1 and len(accepted) > before else 1
        i = j
    return Selection(accepted, i, judge.calls, time.perf_counter() - t0, rejected_by_samples=n_sampled,
                     proved=0 if judge.sampled_only else len(accepted), stopped=stopped)


def _take(edits, accepted, edited, merged_away):
    for e in edits:
        accepted.append(e)
        edited.add((e.layer, e.index))
        if e.kind == "merge":
            merged_away.add((e.layer, e.index))


def _tick(progress, n, accepted, calls):
    if progress is not None:
        progress.update(n)
        progress.set_postfix(accepted=accepted, bounds=calls, refresh=False)
