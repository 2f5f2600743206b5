"""HiGHS through highspy: the model is passed once as numpy arrays; queries change only the objective."""

from __future__ import annotations

import time

import highspy
import numpy as np

from ..milp import LinearModel, safe_upper_bound
from .base import Backend, Decision, SolveResult, Status

INF = highspy.kHighsInf


def _finite(a: np.ndarray) -> np.ndarray:
    return np.clip(a, -INF, INF)


class HighsBackend(Backend):
    name = "highs"

    def __init__(self, model: LinearModel, threads: int = 1):
        super().__init__(model, threads)
        t0 = time.perf_counter()
        h = highspy.Highs()
        h.setOptionValue("output_flag", False)
        h.setOptionValue("threads", threads)
        h.setOptionValue("mip_feasibility_tolerance", 1e-7)
        A = model.A.tocsr()
        lp = highspy.HighsLp()
        lp.num_col_, lp.num_row_ = model.n_vars, model.n_rows
        lp.col_cost_ = np.zeros(model.n_vars)
        lp.col_lower_, lp.col_upper_ = _finite(model.col_lo), _finite(model.col_hi)
        lp.row_lower_, lp.row_upper_ = _finite(model.row_lo), _finite(model.row_hi)
        lp.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
        lp.a_matrix_.start_ = A.indptr.astype(np.int32)
        lp.a_matrix_.index_ = A.indices.astype(np.int32)
        lp.a_matrix_.value_ = A.data.astype(np.float64)
        lp.a_matrix_.num_col_, lp.a_matrix_.num_row_ = model.n_vars, model.n_rows
        lp.sense_ = highspy.ObjSense.kMaximize
        h.passModel(lp)
        self.h = h
        self._integer_now = False
        self._int_idx = np.flatnonzero(model.integer).astype(np.int32)
        self.build_seconds = time.perf_counter() - t0

    # -- helpers ---------------------------------------------------------------------------------
    def _set_integrality(self, integer: bool):
        if integer == self._integer_now or self._int_idx.size == 0:
            return
        kind = highspy.HighsVarType.kInteger if integer else highspy.HighsVarType.kContinuous
        self.h.changeColsIntegrality(self._int_idx.size, self._int_idx, np.array([kind] * self._int_idx.size))
        self._integer_now = integer

    def _limits(self, time_limit: float, integer: bool, max_sols: int):
        # HiGHS measures time_limit against its cumulative run time, so offset it by what was used
        self.h.setOptionValue("time_limit", float(self.h.getRunTime() + time_limit))
        self.h.setOptionValue("mip_max_improving_sols", max_sols)
        # presolve would discard the simplex basis that makes consecutive LP queries cheap
        self.h.setOptionValue("presolve", "choose" if integer else "off")

    def _set_objective(self, c, offset):
        n = self.model.n_vars
        self.h.changeColsCost(n, np.arange(n, dtype=np.int32), np.asarray(c, dtype=np.float64))
        self.h.changeObjectiveOffset(float(offset))

    # -- queries ---------------------------------------------------------------------------------
    def maximize(self, c, offset, *, integer, time_limit) -> SolveResult:
        integer = integer and self._int_idx.size > 0
        self._set_integrality(integer)
        self._set_objective(c, offset)
        self._limits(time_limit, integer, 2147483647)
        t0 = time.perf_counter()
        self.h.run()
        secs = time.perf_counter() - t0
        status = self.h.getModelStatus()
        info = self.h.getInfo()
        sol = self.h.getSolution()
        x = np.array(sol.col_value) if sol.value_valid else None
        obj = info.objective_function_value if sol.value_valid else None
        MS = highspy.HighsModelStatus
        if status == MS.kOptimal:
            if integer:
                bound = info.mip_dual_bound
            else:
                # rigorous bound from the LP duals (any multipliers give a valid bound)
                y = np.array(sol.row_dual) if sol.dual_valid else np.zeros(self.model.n_rows)
                bound = min(safe_upper_bound(self.model, c, offset, y), safe_upper_bound(self.model, c, offset, -y))
            return SolveResult(Status.OPTIMAL, bound, obj, x, secs)
        if status == MS.kInfeasible:
            return SolveResult(Status.INFEASIBLE, -np.inf, None, None, secs)
        if status == MS.kTimeLimit:
            bound = info.mip_dual_bound if integer and np.isfinite(info.mip_dual_bound) else None
            return SolveResult(Status.TIME_LIMIT, bound, obj, x, secs, "time limit")
        return SolveResult(Status.ERROR, None, obj, x, secs, self.h.modelStatusToString(status))

    def decide(self, c, offset, threshold, *, time_limit, margin) -> Decision:
        c = np.asarray(c, dtype=np.float64)
        nz = np.flatnonzero(c)
        self._set_integrality(True)
        self._set_objective(c, offset)
        # decision row: c.v + offset >= threshold - margin  (anything above is worth a look)
        self.h.addRow(threshold - margin - offset, INF, nz.size, nz.astype(np.int32), c[nz])
        row = self.model.n_rows
        self._limits(time_limit, True, 1)
        t0 = time.perf_counter()
        try:
            self.h.run()
            secs = time.perf_counter() - t0
            status = self.h.getModelStatus()
            sol = self.h.getSolution()
            x = np.array(sol.col_value) if sol.value_valid else None
            MS = highspy.HighsModelStatus
            if status == MS.kInfeasible:
                return Decision("below", threshold - margin, None, secs, Status.INFEASIBLE)
            if x is not None and status in (MS.kOptimal, MS.kSolutionLimit, MS.kTimeLimit, MS.kInterrupt):
                return Decision("above", None, x, secs, Status.FEASIBLE)
            if status == MS.kOptimal:  # optimal yet no point: treat as nothing proved
                return Decision("unknown", None, None, secs, Status.ERROR, "optimal without a solution")
            st = Status.TIME_LIMIT if status == MS.kTimeLimit else Status.ERROR
            return Decision("unknown", None, None, secs, st, self.h.modelStatusToString(status))
        finally:
            self.h.deleteRows(1, np.array([row], dtype=np.int32))
            self.h.clearSolver()
