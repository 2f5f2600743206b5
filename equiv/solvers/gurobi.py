"""Gurobi through gurobipy's matrix API.  The pip package's size-limited licence rejects models above
about 2000 variables/constraints: that is Status.TOO_LARGE with a clear message, never a proof."""

from __future__ import annotations

import time

import numpy as np

from ..errors import SolverUnavailableError
from ..encode.chain import LinearModel, safe_upper_bound
from .base import Backend, Decision, SolveResult, Status, decision_margin, milp_bound

try:
    import gurobipy as gp
    from gurobipy import GRB
except ImportError:  # pragma: no cover - exercised where gurobipy is absent
    gp = None

TOO_LARGE_ERRNO = 10010
TOO_LARGE_HINT = ("model too large for Gurobi's size-limited licence ({what} with {n_vars} variables and {n_rows} "
                  "constraints, before any decision row); use --backend highs, or install a full Gurobi licence")


class GurobiBackend(Backend):
    name = "gurobi"

    def __init__(self, model: LinearModel, threads: int = 1, what: str = "a query"):
        if gp is None:
            raise SolverUnavailableError("the gurobi backend needs gurobipy: pip install \"equiv[gurobi]\"")
        super().__init__(model, threads)
        t0 = time.perf_counter()
        self.what = what
        env = gp.Env(empty=True)
        env.setParam("OutputFlag", 0)
        try:
            env.start()
        except gp.GurobiError as exc:       # no usable licence: the backend is unavailable, not a bug
            raise SolverUnavailableError(f"the gurobi backend cannot start: {exc}") from None
        self.env = env
        m = gp.Model(env=env)
        m.Params.Threads = threads
        m.Params.FeasibilityTol = 1e-7
        m.Params.IntFeasTol = 1e-7
        m.Params.MIPGap = 0.0
        # a list: gurobipy refuses a length-1 '<U1' numpy array for VType ("could not convert string to float")
        self.vtype = np.where(model.integer, GRB.BINARY, GRB.CONTINUOUS).tolist()
        self.v = m.addMVar(model.n_vars, lb=model.col_lo, ub=model.col_hi)
        A = model.A.tocsr()
        eq = model.row_lo == model.row_hi
        le = ~eq & np.isfinite(model.row_hi)
        ge = ~eq & np.isfinite(model.row_lo)
        # keep each constraint group's row indices so duals can be mapped back to the neutral rows
        self.groups = []
        for sel, sense, rhs in ((eq, GRB.EQUAL, model.row_hi), (le, GRB.LESS_EQUAL, model.row_hi),
                                (ge, GRB.GREATER_EQUAL, model.row_lo)):
            rows = np.flatnonzero(sel)
            if rows.size:
                self.groups.append((rows, m.addMConstr(A[rows], self.v, sense, rhs[rows])))
        m.update()
        self.m = m
        self._integer_now = False
        self.build_seconds = time.perf_counter() - t0

    def _set_integrality(self, integer: bool):
        if integer != self._integer_now:
            self.v.VType = self.vtype if integer else GRB.CONTINUOUS
            self._integer_now = integer

    def _too_large(self, secs) -> SolveResult:
        msg = TOO_LARGE_HINT.format(what=self.what, n_vars=self.model.n_vars, n_rows=self.model.n_rows)
        return SolveResult(Status.TOO_LARGE, None, None, None, secs, message=msg)

    def _optimize(self):
        """Run Gurobi; returns None or the 'too large' SolveResult."""
        t0 = time.perf_counter()
        try:
            self.m.optimize()
        except gp.GurobiError as exc:
            if exc.errno == TOO_LARGE_ERRNO:
                return self._too_large(time.perf_counter() - t0)
            return SolveResult(Status.ERROR, None, None, None, time.perf_counter() - t0, message=str(exc))
        return None

    def maximize(self, c, offset, *, integer, time_limit, stop=None) -> SolveResult:
        integer = integer and bool(self.model.integer.any())
        if integer and (refused := self.scale_refusal()):
            return refused
        self._set_integrality(integer)
        self.m.setMObjective(None, np.asarray(c, float), float(offset), sense=GRB.MAXIMIZE)
        self.m.Params.TimeLimit = float(time_limit)
        self.m.Params.SolutionLimit = 2000000000
        t0 = time.perf_counter()
        failed = self._optimize()
        secs = time.perf_counter() - t0
        if failed is not None:
            return failed
        st = self.m.Status
        x = np.array(self.v.X) if self.m.SolCount > 0 else None
        obj = self.m.ObjVal if self.m.SolCount > 0 else None
        if st == GRB.OPTIMAL:
            if integer:
                return SolveResult(Status.OPTIMAL, milp_bound(self.m.ObjBound, c), obj, x, secs)
            y = np.zeros(self.model.n_rows)
            for rows, constrs in self.groups:
                y[rows] = constrs.Pi
            bound = min(safe_upper_bound(self.model, c, offset, y), safe_upper_bound(self.model, c, offset, -y))
            return SolveResult(Status.OPTIMAL, bound, obj, x, secs)
        if st in (GRB.INFEASIBLE, GRB.INF_OR_UNBD):  # every variable is bounded: cannot be unbounded
            return SolveResult(Status.INFEASIBLE, -np.inf, None, None, secs)
        if st == GRB.TIME_LIMIT:
            bound = milp_bound(self.m.ObjBound, c) if integer and np.isfinite(self.m.ObjBound) else None
            return SolveResult(Status.TIME_LIMIT, bound, obj, x, secs, "time limit")
        return SolveResult(Status.ERROR, None, obj, x, secs, f"gurobi status {st}")

    def decide(self, c, offset, threshold, *, time_limit, margin, stop=None) -> Decision:
        if refused := self.decision_refusal():
            return refused
        c = np.asarray(c, float)
        margin = decision_margin(c, margin)     # the solver's tolerances, as they move c.v
        self._set_integrality(True)
        self.m.setMObjective(None, c, float(offset), sense=GRB.MAXIMIZE)
        row = self.m.addMConstr(c[None, :], self.v, GRB.GREATER_EQUAL, np.array([threshold - margin - offset]))
        self.m.Params.TimeLimit = float(time_limit)
        self.m.Params.SolutionLimit = 1
        t0 = time.perf_counter()
        try:
            failed = self._optimize()
            secs = time.perf_counter() - t0
            if failed is not None:
                return Decision("unknown", None, None, secs, failed.status, failed.message)
            st = self.m.Status
            if st in (GRB.INFEASIBLE, GRB.INF_OR_UNBD):  # every variable is bounded: cannot be unbounded
                return Decision("below", threshold - margin, None, secs, Status.INFEASIBLE)
            if self.m.SolCount > 0:
                return Decision("above", None, np.array(self.v.X), secs, Status.FEASIBLE)
            status = Status.TIME_LIMIT if st == GRB.TIME_LIMIT else Status.ERROR
            return Decision("unknown", None, None, secs, status, f"gurobi status {st}")
        finally:
            self.m.remove(row)
            self.m.update()
