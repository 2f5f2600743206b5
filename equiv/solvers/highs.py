"""HiGHS through highspy: the model is passed once as numpy arrays; queries change only the objective.

LP queries share one Highs object (cold starts, see `maximize`).  Every MILP query (a maximisation
with integers or a decision) runs on a fresh Highs object holding the same model: measured with
highspy 1.15, the LP simplex checks `time_limit` against the object's *cumulative* run time while
the MIP solver checks it against the time of the current run, so no single offset is right for a
reused object (a reused object's MIP query with a 0.2 s limit after 2.6 s of LPs ran for 0.8 s).
On a fresh object both clocks start at zero.  Building one costs ~1 ms, nothing next to a MILP.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time

import highspy
import numpy as np

from ..encode.chain import LinearModel, safe_upper_bound
from .base import Backend, Decision, SolveResult, Status, decision_margin, milp_bound

INF = highspy.kHighsInf


def _silence_banner() -> None:
    """HiGHS prints a banner on standard output when a process makes its first Highs object, before any
    option can turn output off; that would corrupt `--json` output.  Make that first object with file
    descriptor 1 pointed at /dev/null (and flush C's stdio buffer before pointing it back)."""
    import ctypes
    import os
    import sys
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        highspy.Highs()
        ctypes.CDLL(None).fflush(None)
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


_silence_banner()


def _finite(a: np.ndarray) -> np.ndarray:
    return np.clip(a, -INF, INF)


def run_until(h: highspy.Highs, stop: threading.Event | None) -> None:
    """h.run() for a MILP, ended at HiGHS's next MIP checkpoint (status 'interrupt', which proves nothing) once
    - `stop` is set: the pool that owns a worker thread sets it when it is left early;
    - on a Dask worker's task thread, once the worker closes (`distributed.worker_stop`);
    - in the main thread, once SIGINT or SIGTERM arrives; the signal then reaches its handler when the solve has
      returned (`signals_deferred`: a handler that raised inside HiGHS's callback would unwind through C++).
    (Solving on a short-lived helper thread instead made the process abort at exit, "terminate called without
    an active exception", in 6 of 16 SIGTERMed runs.)"""
    if not hasattr(h, "cbMipInterrupt"):
        h.run()
        return
    if threading.current_thread() is threading.main_thread():
        with signals_deferred() as pending:
            def interrupt(event):
                if pending or (stop is not None and stop.is_set()):
                    event.interrupt()
            h.cbMipInterrupt += interrupt
            h.run()
        return
    if stop is None and "distributed" in sys.modules:       # a task on a Dask worker: its worker's event
        from ..distributed.worker_stop import running_worker_stop
        stop = running_worker_stop()
    if stop is None:
        h.run()
        return

    def interrupt(event):
        if stop.is_set():
            event.interrupt()

    h.cbMipInterrupt += interrupt
    h.run()


@contextlib.contextmanager
def signals_deferred(signums=(signal.SIGINT, signal.SIGTERM)):
    """In the main thread: while inside, SIGINT/SIGTERM are only recorded (the list yielded); on the way out the
    previous handlers come back and each recorded signal is raised again, so it reaches them in plain Python."""
    pending: list = []
    previous = {}

    def record(signum, frame):
        pending.append(signum)
    for s in signums:
        old = signal.getsignal(s)
        if old is not None:             # (None: a handler not installed from Python, left alone)
            previous[s] = signal.signal(s, record)
    try:
        yield pending
    finally:
        for s, old in previous.items():
            signal.signal(s, old)
        for s in dict.fromkeys(pending):
            signal.raise_signal(s)


class HighsBackend(Backend):
    name = "highs"
    # threads_ok: backends may be used from separate threads (highspy releases the GIL while solving),
    # and `decide` from several threads at once on one backend: each decision builds its own Highs
    # object and only reads the shared model.  `maximize` shares one object: one thread per backend.
    threads_ok = True
    partial_ok = True

    def __init__(self, model: LinearModel, threads: int = 1, warm_lp: bool = False):
        super().__init__(model, threads)
        # warm_lp: LP queries keep the previous basis and run presolve. Measured on ResNet-2B graph LPs
        # (4 743 variables, 61 k nonzeros): 0.01-0.2 s per query, against 20 s cold without presolve.
        self.warm_lp = warm_lp
        t0 = time.perf_counter()
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
        self._lp = lp
        self._int_idx = np.flatnonzero(model.integer).astype(np.int32)
        self.h = self._new_highs(integer=False)   # shared by the LP queries
        self.build_seconds = time.perf_counter() - t0

    # -- helpers ---------------------------------------------------------------------------------
    def _new_highs(self, integer: bool, integer_cols: np.ndarray | None = None) -> highspy.Highs:
        """A solver object on the model; with `integer`, the integer columns (or only integer_cols) integral."""
        h = highspy.Highs()
        h.setOptionValue("output_flag", False)
        h.setOptionValue("threads", self.threads)
        h.setOptionValue("mip_feasibility_tolerance", 1e-7)
        h.passModel(self._lp)
        idx = self._int_idx if integer_cols is None else np.asarray(integer_cols, dtype=np.int32)
        if integer and idx.size:
            kind = highspy.HighsVarType.kInteger
            h.changeColsIntegrality(idx.size, idx, np.array([kind] * idx.size))
        if not integer:
            # HiGHS's default simplex scaling makes the LPs of deep MNIST windows crawl: 30 LPs of layer 3 of
            # mnist-net_256x4 took 55 s scaled and 0.66 s unscaled (256x6: 125 s and 0.8 s), the same optima
            # to 1e-7; ACAS Xu and MNIST 256x2 LPs take the same time either way.  The bound stays a proof:
            # it is recomputed from the duals by safe_upper_bound whatever the solver's scaling.
            h.setOptionValue("simplex_scale_strategy", 0)
        return h

    def _set_objective(self, h, c, offset):
        n = self.model.n_vars
        h.changeColsCost(n, np.arange(n, dtype=np.int32), np.asarray(c, dtype=np.float64))
        h.changeObjectiveOffset(float(offset))

    # -- queries ---------------------------------------------------------------------------------
    def maximize(self, c, offset, *, integer, time_limit, stop=None) -> SolveResult:
        integer = integer and self._int_idx.size > 0
        if integer and (refused := self.scale_refusal()):
            return refused
        if integer:
            h = self._new_highs(integer=True)
            h.setOptionValue("time_limit", float(time_limit))
        else:
            # Measured on MNIST/ACAS Xu bound tightening: a cold dual simplex without presolve takes
            # ~7 ms per query, while reusing the previous basis (primal or dual) often stalls on these
            # degenerate LPs for seconds.  So every query starts cold.  The LP clock is cumulative over
            # the object's runs, so the limit is offset by the time already used.
            h = self.h
            h.setOptionValue("time_limit", float(h.getRunTime() + time_limit))
            if not self.warm_lp:
                h.clearSolver()
                # presolve would discard the simplex basis that makes consecutive LP queries cheap
                h.setOptionValue("presolve", "off")
        self._set_objective(h, c, offset)
        return self._run(h, c, offset, integer, stop)

    def _run(self, h, c, offset, integer, stop) -> SolveResult:
        t0 = time.perf_counter()
        if integer:
            run_until(h, stop)
        else:
            h.run()
        secs = time.perf_counter() - t0
        status = h.getModelStatus()
        info = h.getInfo()
        sol = h.getSolution()
        x = np.array(sol.col_value) if sol.value_valid else None
        obj = info.objective_function_value if sol.value_valid else None
        MS = highspy.HighsModelStatus
        if status == MS.kOptimal:
            if integer:
                bound = milp_bound(info.mip_dual_bound, c)
            else:
                # rigorous bound from the LP duals (any multipliers give a valid bound)
                y = np.array(sol.row_dual) if sol.dual_valid else np.zeros(self.model.n_rows)
                bound = min(safe_upper_bound(self.model, c, offset, y), safe_upper_bound(self.model, c, offset, -y))
            return SolveResult(Status.OPTIMAL, bound, obj, x, secs)
        if status == MS.kInfeasible:
            return SolveResult(Status.INFEASIBLE, -np.inf, None, None, secs)
        if status == MS.kTimeLimit:
            bound = milp_bound(info.mip_dual_bound, c) if integer and np.isfinite(info.mip_dual_bound) else None
            return SolveResult(Status.TIME_LIMIT, bound, obj, x, secs, "time limit")
        return SolveResult(Status.ERROR, None, obj, x, secs, h.modelStatusToString(status))

    def decide(self, c, offset, threshold, *, time_limit, margin, integer_cols=None, stop=None) -> Decision:
        if refused := self.decision_refusal():
            return refused
        c = np.asarray(c, dtype=np.float64)
        margin = decision_margin(c, margin)     # the solver's tolerances, as they move c.v
        nz = np.flatnonzero(c)
        if integer_cols is not None and not np.all(self.model.integer[np.asarray(integer_cols, dtype=np.int64)]):
            raise ValueError("integer_cols must be integer columns of the model")
        h = self._new_highs(integer=True, integer_cols=integer_cols)
        self._set_objective(h, c, offset)
        # decision row: c.v + offset >= threshold - margin  (anything above is worth a look)
        h.addRow(threshold - margin - offset, INF, nz.size, nz.astype(np.int32), c[nz])
        h.setOptionValue("time_limit", float(time_limit))
        h.setOptionValue("mip_max_improving_sols", 1)
        # RINS/RENS solve sub-MIPs to improve an incumbent; a decision stops at its first point, and
        # on ACAS Xu decisions the sub-MIPs took over half the solve time (28 s -> 12 s on 21 queries)
        h.setOptionValue("mip_heuristic_run_rins", False)
        h.setOptionValue("mip_heuristic_run_rens", False)
        t0 = time.perf_counter()
        run_until(h, stop)
        secs = time.perf_counter() - t0
        status = h.getModelStatus()
        sol = h.getSolution()
        x = np.array(sol.col_value) if sol.value_valid else None
        MS = highspy.HighsModelStatus
        if status == MS.kInfeasible:
            return Decision("below", threshold - margin, None, secs, Status.INFEASIBLE)
        if x is not None and status in (MS.kOptimal, MS.kSolutionLimit, MS.kTimeLimit, MS.kInterrupt):
            return Decision("above", None, x, secs, Status.FEASIBLE)
        if status == MS.kOptimal:  # optimal yet no point: treat as nothing proved
            return Decision("unknown", None, None, secs, Status.ERROR, "optimal without a solution")
        st = Status.TIME_LIMIT if status == MS.kTimeLimit else Status.ERROR
        return Decision("unknown", None, None, secs, st, h.modelStatusToString(status))
