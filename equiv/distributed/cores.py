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
from concurrent.futures import ThreadPoolExecutor, as_completed

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


def map_on_cores(fn, shares: list, one_blas_thread: bool = True) -> list:
    """[fn(share, stop) for share in shares], at once on threads with one BLAS thread each (in order; one
    share: here, as is).  stop: a threading.Event set when this call is left early (an error in a share, a
    SIGTERM or Ctrl-C in the main thread): fn should then end soon, so that leaving does not wait for it
    (HiGHS MILPs given it end within milliseconds).  one_blas_thread=False leaves BLAS's threads as they are
    (shares that mostly wait for a solver)."""
    stop = threading.Event()
    if len(shares) <= 1:
        return [fn(s, stop) for s in shares]
    with threadpool_limits(1 if one_blas_thread else None), ThreadPoolExecutor(len(shares)) as pool:
        futures = [pool.submit(fn, s, stop) for s in shares]
        try:
            return [f.result() for f in futures]
        except BaseException:
            stop.set()
            raise


def answers_on_threads(fn, items: list, threads: int, ordered: bool = False, stop: threading.Event | None = None):
    """Yield (item, fn(item, stop)) for the items, run on `threads` threads of this process (BLAS as it is), as
    each is answered (ordered: in the items' order).  Leaving early (an error here or in a task, a SIGTERM, the
    generator closed) cancels the tasks not yet started and sets stop (a threading.Event; given: a caller's,
    whose setting the tasks also obey) for the running ones, which should then end soon (HiGHS MILPs given it end
    within milliseconds).  Use it under contextlib.closing, so that leaving the loop closes it at once."""
    stop = stop or threading.Event()
    with ThreadPoolExecutor(max(1, threads)) as pool:
        futures = {pool.submit(fn, it, stop): it for it in items}
        try:
            for f in (futures if ordered else as_completed(futures)):
                yield futures[f], f.result()
        except BaseException:          # (GeneratorExit too: the caller left the loop)
            stop.set()
            for f in futures:
                f.cancel()
            raise
