"""One branch and bound over many phase questions (`relu_bab.decide_many`), split by position into shares
searched at once: one per Dask worker, or one per core of this process with BLAS on one thread each.

numpy's many small operations in a search use one core only, so one search leaves the other cores idle.
Measured on 2 cores: ResNet-2B img386's branch and bound stage (29 s) bounds 12 000 domains and proves 128
phases as one search on two BLAS threads, 18 500 and 133 as two shares on one BLAS thread each; MNIST
256x6 prop_0 (60 s budget): 274 000 domains and 14 unknown against 330 000 and 11.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext

import numpy as np
from threadpoolctl import threadpool_limits

from ..distributed.cores import cores_here
from ..distributed.slots import on_cluster
from .relu_bab import MAX_PENDING, QUANTUM, BabResult, decide_many


class BabSplit:
    """Where many questions are searched: the workers of `executor` when it is a Dask one (the chain's
    `layers` and `masks`, given here, scattered once), else `threads` threads here (default: the cores; one:
    a single search, with progress reports)."""

    def __init__(self, executor=None, threads: int | None = None, layers=None, masks=None):
        self.remote = on_cluster(executor)
        if self.remote:
            self.pool, self.n = executor, max(1, executor.workers)
            self.shared = executor.scatter((layers, masks))
        else:
            self.n = max(1, cores_here() if threads is None else threads)
            self.pool = ThreadPoolExecutor(self.n) if self.n > 1 else None
            self.shared = None
        self.stop = threading.Event()      # set when the caller leaves a search early: the shares end

    def close(self):
        if self.pool is not None and not self.remote:
            self.pool.shutdown()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

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
                  "max_pending": MAX_PENDING // (1 if self.remote else self.n),   # (here: one memory for all)
                  **({} if self.remote else {"stop": self.stop})}
        if self.pool is None:
            return split_task((layers, masks), k, *args, C, d, groups, limits, report)
        shared = self.shared if self.remote else (layers, masks)
        _, first = np.unique(groups, return_index=True)
        deal = {int(p): i % self.n for i, p in enumerate(groups[np.sort(first)])}
        share = np.array([deal[int(p)] for p in groups])
        counts = np.zeros((self.n, 2), int)

        def reporter(w):
            def one(proved, found):          # the shares' counts summed (called from their threads)
                counts[w] = proved, found
                report(int(counts[:, 0].sum()), int(counts[:, 1].sum()))
            return one if report is not None and not self.remote else None
        res = [None] * len(groups)
        with nullcontext() if self.remote else threadpool_limits(1):     # (here: one BLAS thread per share)
            tasks = [(idx, self.pool.submit(split_task, shared, k, *args, C[idx], d[idx], groups[idx], limits,
                                            reporter(w)))
                     for w in range(self.n) for idx in [np.flatnonzero(share == w)] if idx.size]
            for idx, fut in tasks:
                try:
                    out = fut.result()
                except BaseException as exc:
                    if not self.remote or not isinstance(exc, Exception):
                        self.stop.set()   # (a SIGTERM, Ctrl-C or a bug: the other shares end at their next batch)
                        raise
                    msg = f"branch and bound on layer {k}: {type(exc).__name__}: {exc}"[:300]
                    if stats is not None:
                        stats["bab_failed"] = stats.get("bab_failed", 0) + 1
                        stats.setdefault("bab_failures", []).append(msg)
                    out = [BabResult("unknown", None, None, 0.0, 0, msg) for _ in idx]
                for i, a in zip(idx, out):
                    res[i] = a
        return res


def split_task(shared, k: int, lo, hi, hidden_lo, hidden_hi, C, d, groups, limits: dict, report=None) -> list:
    """One share of the questions (`BabSplit.search`): decide_many on the first k layers of shared; limits:
    its keyword arguments (time_limit, stall, margin, quantum, stall_on_points, max_pending, stop)."""
    layers, masks = shared
    return decide_many(list(layers[:k]), list(masks[:k]), lo, hi, hidden_lo, hidden_hi, C, d, np.zeros(len(d)),
                       groups=groups, report=report, **limits)
