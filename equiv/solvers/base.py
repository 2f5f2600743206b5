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


# The largest number a MILP may compare (a row's sum of |a| x max|v|, a bound) for its answer to prove
# anything at the decision margin (1e-6): past it the solver's relative tolerances (~1e-9 .. 1e-14) exceed
# the margin.  An adversarial hunt found HiGHS, Gurobi and CBC answering "infeasible" on nets with weights
# and biases ~1e4 per layer (big-M constants 1e13..1e15) where a point had z = +5e11.
MILP_SCALE_MAX = 1e8


# A MILP solver accepts every row and integrality within tolerances (~1e-6 for HiGHS, Gurobi and CBC), and its
# simplex steps on an ill-conditioned basis err by as much: the objective c.v then moves by about 1e-6 x sum|c_j|.
# A hunt (stop 47) found HiGHS and CBC answering "infeasible" for c.v >= -1e-6, and even >= -1e-2, where a point
# of the box has c.v = +3.8e-4 (weights ~2e4 on the objective, biases ~1e5; Gurobi's "optimum" there exceeded
# its own LP bound by 0.07).  A decision's margin is therefore widened by that much (`decision_margin`): its
# "below" then means max c.v <= threshold - margin - 1e-6 sum|c_j|, robust to the tolerance-sized error.
DECIDE_RELATIVE = 1e-6


def decision_margin(c: np.ndarray, margin: float) -> float:
    """The margin a MILP decision uses: the caller's, plus DECIDE_RELATIVE x sum |c_j| (see above)."""
    return float(margin) + DECIDE_RELATIVE * float(np.abs(np.asarray(c, np.float64)).sum())


def milp_bound(bound: float, c: np.ndarray) -> float:
    """A MILP solver's dual bound on max c.v made safe the same way: plus 1e-6 (1 + |bound|) and the tolerance
    share of `decision_margin`."""
    return float(bound) + decision_margin(c, 1e-6 * (1.0 + abs(float(bound))))


def model_scale(model: LinearModel) -> float:
    """The size of the numbers a MILP over the model compares: the largest row sum |a| . max(|lo|, |hi|) of
    the columns, and the largest finite row or column bound."""
    col = np.maximum(np.abs(model.col_lo), np.abs(model.col_hi))
    col = np.where(np.isfinite(col), col, 0.0)
    rows = abs(model.A) @ col if model.n_rows else np.zeros(0)
    bounds = [np.abs(b[np.isfinite(b)]) for b in (model.row_lo, model.row_hi)] + [col]
    return float(max([rows.max(initial=0.0)] + [b.max(initial=0.0) for b in bounds]))


class Backend:
    """Translate a LinearModel once, then answer many objective queries on it (warm starts allowed)."""

    name = "abstract"
    scale_max = MILP_SCALE_MAX     # a backend with less precision (CBC through PuLP's files) sets less

    def badly_scaled(self) -> str | None:
        """Why a MILP answer on this model would prove nothing (None: it may): numbers beyond scale_max."""
        if getattr(self, "_scale", None) is None:
            self._scale = model_scale(self.model)
        if self._scale > self.scale_max:
            return (f"the MILP is badly scaled (numbers up to {self._scale:.3g}, beyond {self.scale_max:g}): "
                    "a solver's answer at the decision margin proves nothing there")
        return None

    def scale_refusal(self) -> SolveResult | None:
        """The error result a MILP `maximize` returns on a badly scaled model (None: solve it)."""
        why = self.badly_scaled()
        return None if why is None else SolveResult(Status.ERROR, None, None, None, 0.0, message=why)

    def decision_refusal(self) -> Decision | None:
        """The unknown decision `decide` returns on a badly scaled model (None: decide it)."""
        why = self.badly_scaled()
        return None if why is None else Decision("unknown", None, None, 0.0, Status.ERROR, why)
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
