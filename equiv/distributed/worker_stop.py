"""A stop event per Dask worker, set when the worker closes: the HiGHS MILPs its tasks are running then end at
their next checkpoint (proving nothing), so that closing a cluster (a SIGTERMed run) does not wait for them.

Imports dask.distributed: use only when a cluster is in use (`running_worker_stop` is safe anywhere).
"""

from __future__ import annotations

import sys
import threading

from distributed import WorkerPlugin

NAME = "equiv-stop-on-close"


class StopOnClose(WorkerPlugin):
    """Holds the worker's stop event; the worker's close (its plugins' teardown runs before its task threads
    are waited for) sets it."""

    def setup(self, worker):
        self.stop = threading.Event()

    def teardown(self, worker):
        self.stop.set()


def running_worker_stop() -> threading.Event | None:
    """The stop event of the Dask worker running the calling task, or None outside a worker's task."""
    if "distributed" not in sys.modules:
        return None
    from distributed import get_worker
    try:
        worker = get_worker()
    except ValueError:
        return None
    plugin = getattr(worker, "plugins", {}).get(NAME)
    return getattr(plugin, "stop", None)
