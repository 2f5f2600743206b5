"""Where tasks run: in this process (the default, lazily and in order) or on a Dask cluster.

Both executors offer the same small interface: `scatter(obj)` (ship a large object once; tasks take the
handle it returns), `submit(fn, *args)` (a future with `.result()` and `.cancel()`), `as_completed(futures)`
and `close()`.  The in-process executor runs a task only when its result is asked for, so a caller that
cancels the tasks a previous answer made pointless does exactly the work of a serial loop.

Dask is optional: asking for a cluster without it installed raises `DaskMissingError` (exit 2) naming the
extra `equiv[dask]`.
"""

from __future__ import annotations

import os
import sys

from ..errors import EquivError

ALLOWED_FAILURES = 2      # a task whose worker died this many times is reported as failed, not retried again


class DaskMissingError(EquivError):
    """--workers / --scheduler without dask.distributed installed."""

    exit_code = 2


class SchedulerUnreachableError(EquivError):
    """--scheduler names an address where no Dask scheduler answers (or one that is not an address)."""

    exit_code = 2


CONNECT_SECONDS = 20      # --scheduler: the handshake must be done by then (a port that never answers would hang)


def _connect(Client, scheduler: str):
    """A Client of the scheduler at `scheduler`, or SchedulerUnreachableError (exit 2): an address is the user's
    input, so whatever fails there (no answer, a silent port, another protocol such as the dashboard's HTTP,
    whose reply Dask reads as a frame length of exabytes) is not a bug of equiv."""
    import threading
    got = {}

    def attempt():
        try:
            got["client"] = Client(scheduler, timeout=f"{CONNECT_SECONDS}s")
        except BaseException as exc:        # (reported below, in the caller's thread)
            got["error"] = exc

    t = threading.Thread(target=attempt, name="equiv-connect", daemon=True)
    t.start()
    t.join(CONNECT_SECONDS + 5)
    if "client" in got:
        return got["client"]
    exc = got.get("error")
    if isinstance(exc, KeyboardInterrupt):
        raise exc
    why = "no answer" if exc is None else f"{type(exc).__name__}: {str(exc)[:160]}"
    raise SchedulerUnreachableError(f"--scheduler {scheduler}: no Dask scheduler answered there ({why}"
                                    f"{f' within {CONNECT_SECONDS + 5} s' if exc is None else ''}); a scheduler "
                                    "listens on tcp://HOST:8786 by default (8787 is its dashboard)")


class _Lazy:
    """A future of the in-process executor: the call runs at the first `result()`, never if cancelled."""

    def __init__(self, fn, args):
        self.fn, self.args, self.done, self.value, self.cancelled = fn, args, False, None, False

    def result(self):
        if not self.done:
            self.value, self.done = self.fn(*self.args), True
        return self.value

    def cancel(self):
        self.cancelled = True


class InProcessExecutor:
    """Runs every task in this process, in submission order, when its result is asked for."""

    kind = "in-process"
    workers = 1

    def scatter(self, obj):
        return obj

    def submit(self, fn, *args):
        return _Lazy(fn, args)

    def as_completed(self, futures):
        for f in futures:
            if not f.cancelled:
                f.result()
                yield f

    def close(self):
        pass


class DaskExecutor:
    """Tasks on a dask.distributed cluster: a LocalCluster of `workers` single-threaded worker processes
    on 127.0.0.1, or the existing cluster at `scheduler`.  A worker that dies mid-task has its tasks
    re-run elsewhere by the scheduler; a task that killed ALLOWED_FAILURES workers comes back as an error
    (`distributed.KilledWorker`), which callers record as a failed task that proves nothing."""

    kind = "dask"

    def __init__(self, workers: int | None = None, scheduler: str | None = None, processes: bool = True):
        try:
            import dask
            from distributed import Client, LocalCluster
        except ImportError:
            raise DaskMissingError("--workers and --scheduler need dask.distributed, which is not installed: "
                                   "pip install 'equiv[dask]'") from None
        # Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536: glibc then returns memory to the OS
        # after nearly every numpy temporary, and equiv's tasks (many short-lived arrays) ran 2x slower on a
        # worker than in a plain process (measured: one ACAS prop_1 pair 8.7 s against 4.0 s).  Keep glibc's
        # own adaptive threshold; the single-thread BLAS settings stay.
        environ = {k: v for k, v in dask.config.get("distributed.nanny.pre-spawn-environ", {}).items()
                   if k != "MALLOC_TRIM_THRESHOLD_"}
        dask.config.set({"distributed.scheduler.allowed-failures": ALLOWED_FAILURES,
                         "distributed.worker.daemon": False,
                         "distributed.nanny.pre-spawn-environ": environ})
        self.cluster = None
        self.warning = None
        if scheduler:
            self.client = _connect(Client, scheduler)
            # an existing cluster was started by someone else, with their nanny's environment: say so
            self.warning = slow_worker_environment(self.client.run(_malloc_trim_threshold))
            if self.warning:
                print(f"equiv: warning: {self.warning}", file=sys.stderr)
        else:
            self.cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=processes,
                                        host="127.0.0.1", protocol="tcp://", dashboard_address=":0")
            self.client = Client(self.cluster)
        # closing a worker sets its stop event, which ends the HiGHS MILPs its tasks are running (`worker_stop`)
        from .worker_stop import NAME, StopOnClose
        self.client.register_plugin(StopOnClose(), name=NAME)
        self.workers = max(1, len(self.client.scheduler_info().get("workers", {})) or (workers or 1))

    def scatter(self, obj):
        return self.client.scatter(obj, broadcast=True, hash=False)

    def submit(self, fn, *args):
        return self.client.submit(fn, *args, pure=False)

    def as_completed(self, futures):
        from distributed import as_completed
        return as_completed(futures)

    def close(self):
        try:
            self.client.close()
        finally:
            if self.cluster is not None:
                self.cluster.close()


def _malloc_trim_threshold():
    return os.environ.get("MALLOC_TRIM_THRESHOLD_")


def slow_worker_environment(values: dict) -> str | None:
    """A warning when workers (address -> their MALLOC_TRIM_THRESHOLD_) run with the setting that makes
    equiv's tasks about 2x slower; None when none does."""
    slow = {a: v for a, v in values.items() if v is not None}
    if not slow:
        return None
    return (f"{len(slow)} of {len(values)} workers run with MALLOC_TRIM_THRESHOLD_={sorted(set(slow.values()))[0]} "
            "(Dask's nanny sets it), which makes equiv's tasks up to 2x slower: start the workers with "
            "`dask worker ADDRESS --no-nanny`, or remove MALLOC_TRIM_THRESHOLD_ from "
            "distributed.nanny.pre-spawn-environ in their Dask configuration")


WORKERS_PER_CORE = 4          # --workers above this many per core is refused: each worker is a process


def make_executor(workers: int | None = None, scheduler: str | None = None):
    """The executor the flags ask for: in-process without them, else a Dask one."""
    from ..errors import EquivError
    if workers and scheduler:
        raise EquivError("--workers starts a local cluster and --scheduler uses an existing one: give one of them")
    cores = os.cpu_count() or 1
    if workers and workers > WORKERS_PER_CORE * cores:
        raise EquivError(f"--workers {workers}: each worker is a process, and this machine has {cores} cores; give "
                         f"at most {WORKERS_PER_CORE * cores} (or --scheduler ADDRESS for a larger cluster)")
    if scheduler or (workers and workers > 0):
        return DaskExecutor(workers=workers, scheduler=scheduler)
    return InProcessExecutor()
