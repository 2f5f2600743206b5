"""Work as data, executors and a journal: the independent solver queries of a run can be sent to
a Dask cluster, and every finished answer can be kept in a journal so a killed run resumes where it stopped.

Dask is an optional extra (`pip install equiv[dask]`); nothing here imports it unless a cluster is asked for.
"""

from .executor import InProcessExecutor, make_executor
from .journal import Journal, JournalMismatchError
from .runner import Runner

__all__ = ["InProcessExecutor", "Journal", "JournalMismatchError", "Runner", "make_executor"]
