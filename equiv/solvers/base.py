"""The one backend interface: solve max c.v + offset over a LinearModel, as an LP or MILP, with limits.

A result carries a *proven* upper bound only when the solver proved it (optimal, infeasible decision,
or a finite dual bound at a limit); an incumbent is never a proof.  Anything else is UNKNOWN.
"""

from __future__ import annotations

import enum
import threading
from dataclasses import dataclass

import numpy as np

from ..encode.chain import LinearModel


class Status(enum.Enum):
    OPTIMAL = "optimal"            # solved to optimality: bound is the proven optimum bound
    INFEASIBLE = "infeasible"      # no point satisfies the model (with the decision row: max < threshold)
    FEASIBLE = "feasible"          # stopped early with a feasible point (decision: a witness)
    TIME_LIMIT = "time_limit"      # limit reached; bound may still hold a proven dual bound
    TOO_LARGE = "too_large"        # licence / size limit: proves nothing
    ERROR = "error"                # anything else: proves nothing


@dataclass
class SolveResult:
    status: Status
    bound: float | None = None       # proven upper bound on the maximum (None: nothing proved)
    objective: float | None = None   # value of the best point found (not a proof)
    x: np.ndarray | None = None      # that point, all variables
    seconds: float = 0.0
    build_seconds: float = 0.0
    message: str = ""


@dataclass
class Decision:
    """Outcome of "is max c.v + offset > threshold?" (a phase proof asks exactly this)."""

    verdict: str                     # "below" (proved max <= threshold), "above" (witness found), "unknown"
    bound: float | None
    x: np.ndarray | None
    seconds: float
    status: Status
    message: str = ""


class Backend:
    """Translate a LinearModel once, then answer many objective queries on it (warm starts allowed)."""

    name = "abstract"
    # partial_ok: `decide` takes integer_cols, a subset of the model's integer columns kept integral (the
    # others relaxed to their bounds: a relaxation, so "below" is still a proof; a point proves nothing)
    partial_ok = False

    def __init__(self, model: LinearModel, threads: int = 1):
        self.model = model
        self.threads = threads

    def maximize(self, c: np.ndarray, offset: float, *, integer: bool, time_limit: float,
                 stop: threading.Event | None = None) -> SolveResult:
        raise NotImplementedError

    def decide(self, c: np.ndarray, offset: float, threshold: float, *, time_limit: float,
               margin: float, integer_cols: np.ndarray | None = None, stop: threading.Event | None = None) -> Decision:
        """Prove max c.v + offset <= threshold - margin... or find a point above threshold + margin.

        Implemented with a row  c.v >= threshold - offset  added to the MILP: infeasible means
        the maximum is below the threshold (the solver's dual proof); any feasible point is a witness.
        The margin absorbs the solver's feasibility and integrality tolerances.  integer_cols (backends with
        partial_ok only): the integer columns kept integral, the rest relaxed; None keeps them all.
        stop (MILPs on worker threads; HiGHS only, the others run to their limit): once set, the solve ends at
        HiGHS's next MIP checkpoint, proving nothing; a pool left early (an error, a SIGTERM) sets it so that
        its threads end soon.
        """
        raise NotImplementedError
