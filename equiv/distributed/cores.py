"""Work split over this process's cores: threads with BLAS on one thread each.  numpy's many small
operations (a branch and bound's batches, the slopes' ascent steps) use one core, so one stream of them
leaves the others idle; a share per core, each on one BLAS thread, uses them all.  Callers divide their
memory budgets between the shares (branch and bound's open domains, the slopes' row chunks), so splitting
does not multiply a stage's peak.
"""

from __future__ import annotations

import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

from threadpoolctl import threadpool_limits

MAX_SHARES = 8      # shares at most (each keeps its own working set)


def cores_here() -> int:
    """Shares to run at once in this process: its cores (at most MAX_SHARES), or 1 inside a Dask worker (a
    worker is one thread of a cluster that already uses every core)."""
    if "distributed" in sys.modules:
        try:
            from distributed import get_worker
            get_worker()
            return 1
        except ValueError:
            pass
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:         # (not on Linux)
        n = os.cpu_count() or 1
    return max(1, min(MAX_SHARES, n))


def map_on_cores(fn, shares: list) -> list:
    """[fn(share, stop) for share in shares], at once on threads with one BLAS thread each (in order; one
    share: here, as is).  stop: a threading.Event set when this call is left early (an error in a share, a
    SIGTERM or Ctrl-C in the main thread): fn should then end soon, so that leaving does not wait for it."""
    stop = threading.Event()
    if len(shares) <= 1:
        return [fn(s, stop) for s in shares]
    with threadpool_limits(1), ThreadPoolExecutor(len(shares)) as pool:
        futures = [pool.submit(fn, s, stop) for s in shares]
        try:
            return [f.result() for f in futures]
        except BaseException:
            stop.set()
            raise
