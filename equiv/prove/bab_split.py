"""One branch and bound over many phase questions (`relu_bab.decide_many`), split by position into shares
searched at once: one per Dask worker, or one per core of this process with BLAS on one thread each.

numpy's many small operations in a search use one core only, so one search leaves the other cores idle.
Measured on 2 cores: ResNet-2B img386's branch and bound stage (29 s) bounds 12 000 domains and proves 128
phases as one search on two BLAS threads, 18 500 and 133 as two shares on one BLAS thread each; MNIST
256x6 prop_0 (60 s budget): 274 000 domains and 14 unknown against 330 000 and 11.
"""

from __future__ import annotations

import numpy as np

from ..distributed.cores import cores_here, map_on_cores
from ..distributed.slots import on_cluster
from .relu_bab import MAX_PENDING, QUANTUM, BabResult, decide_many


class BabSplit:
    """Where many questions are searched: the workers of `executor` when it is a Dask one (the chain's
    `layers` and `masks`, given here, scattered once), else `threads` shares on this process's cores
    (`distributed.cores.map_on_cores`; default: the cores; one: a single search, with progress reports)."""

    def __init__(self, executor=None, threads: int | None = None, layers=None, masks=None):
        self.remote = on_cluster(executor)
        if self.remote:
            self.executor, self.n = executor, max(1, executor.workers)
            self.shared = executor.scatter((layers, masks))
        else:
            self.executor, self.n = None, max(1, cores_here() if threads is None else threads)

    def search(self, k: int, layers, masks, lo, hi, hidden_lo, hidden_hi, C, d, groups, *, time_limit: float,
               stall: float, margin: float, quantum: int = QUANTUM, stall_on_points: bool = False,
               stats: dict | None = None, report=None) -> list:
        """One BabResult per question (rows of C, d; groups: their positions; "is max C h + d <= -margin?") on
        the first k layers (on a cluster: of the scattered chain; here: of `layers`, `masks`).  The two sides
        of a position are alternatives: they stay in one share, and positions are dealt out in the order
        asked.  A share that failed on a cluster (its workers killed) leaves its questions unknown, counted in
        stats["bab_failed"] and named in stats["bab_failures"]; here an error is a bug and propagates."""
        args = (lo, hi, hidden_lo, hidden_hi)
        limits = {"time_limit": time_limit, "stall": stall, "margin": margin, "quantum": quantum,
                  "stall_on_points": stall_on_points,
                  "max_pending": MAX_PENDING // (1 if self.remote else self.n)}   # (here: one memory for all)
        if self.n == 1 and not self.remote:
            return split_task((layers, masks), k, *args, C, d, groups, limits, report)
        _, first = np.unique(groups, return_index=True)
        deal = {int(p): i % self.n for i, p in enumerate(groups[np.sort(first)])}
        share = np.array([deal[int(p)] for p in groups])
        parts = [(w, idx) for w in range(self.n) for idx in [np.flatnonzero(share == w)] if idx.size]
        if self.remote:
            outs = self._on_cluster(k, args, C, d, groups, limits, parts, stats)
        else:
            counts = np.zeros((self.n, 2), int)

            def one_share(part, stop):
                w, idx = part

                def reported(proved, found):      # the shares' counts summed (called from their threads)
                    counts[w] = proved, found
                    report(int(counts[:, 0].sum()), int(counts[:, 1].sum()))
                return split_task((layers, masks), k, *args, C[idx], d[idx], groups[idx], {**limits, "stop": stop},
                                  reported if report is not None else None)
            outs = map_on_cores(one_share, parts)
        res = [None] * len(groups)
        for (_, idx), out in zip(parts, outs):
            for i, a in zip(idx, out):
                res[i] = a
        return res

    def _on_cluster(self, k, args, C, d, groups, limits, parts, stats) -> list:
        """The shares as tasks on the workers; a failed one gives unknowns (and is counted in stats)."""
        futures = [self.executor.submit(split_task, self.shared, k, *args, C[idx], d[idx], groups[idx], limits)
                   for _, idx in parts]
        outs = []
        for (_, idx), fut in zip(parts, futures):
            try:
                outs.append(fut.result())
            except Exception as exc:
                msg = f"branch and bound on layer {k}: {type(exc).__name__}: {exc}"[:300]
                if stats is not None:
                    stats["bab_failed"] = stats.get("bab_failed", 0) + 1
                    stats.setdefault("bab_failures", []).append(msg)
                outs.append([BabResult("unknown", None, None, 0.0, 0, msg) for _ in idx])
        return outs


def split_task(shared, k: int, lo, hi, hidden_lo, hidden_hi, C, d, groups, limits: dict, report=None) -> list:
    """One share of the questions (`BabSplit.search`): decide_many on the first k layers of shared; limits:
    its keyword arguments (time_limit, stall, margin, quantum, stall_on_points, max_pending, stop)."""
    layers, masks = shared
    return decide_many(list(layers[:k]), list(masks[:k]), lo, hi, hidden_lo, hidden_hi, C, d, np.zeros(len(d)),
                       groups=groups, report=report, **limits)
