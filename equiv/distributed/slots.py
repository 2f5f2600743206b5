"""At most n tasks in flight, answered here as each comes back: in this process (one at a time), on threads
(HiGHS releases the GIL while it solves), or on a Dask executor's workers.  Submitting only when a slot
is free lets an answer (a point showing a position unstable) spare the tasks after it.
"""

from __future__ import annotations

import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait


class SerialSlots:
    """One slot: the task runs at submission, in this process."""

    size = 1
    stop = None          # (a task in the main thread is stopped by a signal itself)

    def submit(self, fn, *args):
        f = Future()
        try:
            f.set_result(fn(*args))
        except Exception as exc:      # (a task's error is its future's, as on the other slots)
            f.set_exception(exc)
        return f

    def wait_first(self, running: set):
        return wait(running, return_when=FIRST_COMPLETED)

    def close(self):
        pass


class ThreadSlots(SerialSlots):
    """n worker threads of this process.  stop: an event for the tasks (solvers given it end within
    milliseconds once it is set), set by close: leaving early (a SIGTERM) does not wait for their limits."""

    def __init__(self, n: int):
        self.size, self.pool = n, ThreadPoolExecutor(max_workers=n)
        self.stop = threading.Event()

    def submit(self, fn, *args):
        return self.pool.submit(fn, *args)

    def close(self):
        self.stop.set()
        self.pool.shutdown()


class ExecutorSlots:
    """A Dask executor's (`distributed.executor.DaskExecutor`) workers, one task each."""

    def __init__(self, executor):
        self.executor, self.size = executor, max(1, executor.workers)

    def submit(self, fn, *args):
        return self.executor.submit(fn, *args)

    def wait_first(self, running: set):
        from concurrent.futures import CancelledError
        from distributed import wait as dask_wait
        try:
            return dask_wait(list(running), return_when="FIRST_COMPLETED")
        except CancelledError:
            # a task was cancelled (its scattered data died with the last worker holding it): it is done, and its
            # result() raises, so the caller counts it as failed (it proves nothing) instead of stopping the run
            done = {f for f in running if f.done()}
            return done, set(running) - done

    def close(self):
        pass


def on_cluster(executor) -> bool:
    """Whether tasks given to `executor` (None: none) run on Dask workers rather than in this process."""
    return executor is not None and getattr(executor, "kind", "in-process") != "in-process"


def slots_for(executor, threads: int = 1):
    """The slots a stage's tasks run on: the executor's workers when it is a cluster, else `threads` threads
    of this process (one: serial)."""
    if on_cluster(executor):
        return ExecutorSlots(executor)
    return ThreadSlots(threads) if threads > 1 else SerialSlots()


def in_flight(items, submit, answer, skip, left, limit: float, slots) -> int:
    """submit(item, seconds) (a future) for the items in order, up to `slots.size` at once, and answer(future)
    here as each comes back (answer calls its result(), which raises a failed task's error).  An item is
    submitted only when a slot is free, so an answer can make skip(item) spare the next ones; and only while
    left() (seconds, None: no end) exceeds 0.05, with at most min(limit, left()) seconds.  Returns how many
    items were submitted or skipped."""
    running, i, stop = set(), 0, False
    while True:
        while i < len(items) and len(running) < slots.size and not stop:
            if skip(items[i]):
                i += 1
                continue
            t = left()
            if t is not None and t <= 0.05:
                stop = True
                break
            running.add(submit(items[i], limit if t is None else min(limit, t)))
            i += 1
        if not running:          # every item submitted and answered, or out of time
            return i
        done, running = slots.wait_first(running)
        running = set(running)
        for f in done:
            answer(f)
