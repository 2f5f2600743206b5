"""CBC through PuLP.  PuLP builds models one Python object per coefficient and runs CBC as a subprocess,
so model building and I/O are measured separately; PuLP reports no MIP dual bound, so a MILP bound is
taken only from a run CBC finished as optimal with a zero gap (plus a safety margin)."""

from __future__ import annotations

import time

import numpy as np

from ..errors import SolverUnavailableError
from ..encode.chain import LinearModel, safe_upper_bound
from .base import Backend, Decision, SolveResult, Status, decision_margin, milp_bound

try:
    import pulp
except ImportError:  # pragma: no cover - exercised where pulp is absent
    pulp = None


class PulpCbcBackend(Backend):
    name = "cbc"
    # PuLP hands CBC the model in a file with 13 significant digits (relative 5e-13): past 1e5 that
    # rounding reaches the decision margin, and CBC decides another model (an adversarial hunt: an input of
    # 2^34 times a weight 1 + 2^-23 written as 1.000000119209 moved a value by 5e-3)
    scale_max = 1e5

    def __init__(self, model: LinearModel, threads: int = 1):
        if pulp is None:
            raise SolverUnavailableError("the cbc backend needs PuLP: pip install \"equiv[pulp]\"")
        super().__init__(model, threads)
        t0 = time.perf_counter()
        self.vars = [pulp.LpVariable(f"v{j}", lowBound=float(model.col_lo[j]), upBound=float(model.col_hi[j]))
                     for j in range(model.n_vars)]
        A = model.A.tocsr()
        self.rows = []
        for i in range(model.n_rows):
            lo, hi = model.row_lo[i], model.row_hi[i]
            s, e = A.indptr[i], A.indptr[i + 1]
            expr = pulp.LpAffineExpression([(self.vars[j], float(a)) for j, a in zip(A.indices[s:e], A.data[s:e])])
            if lo == hi:
                self.rows.append([(i, expr == float(hi))])
            else:
                cons = []
                if np.isfinite(hi):
                    cons.append((i, expr <= float(hi)))
                if np.isfinite(lo):
                    cons.append((i, expr >= float(lo)))
                self.rows.append(cons)
        self.build_seconds = time.perf_counter() - t0

    def _problem(self, c, offset, integer):
        prob = pulp.LpProblem("equiv", pulp.LpMaximize)
        for j, v in enumerate(self.vars):
            v.cat = pulp.LpInteger if (integer and self.model.integer[j]) else pulp.LpContinuous
        nz = np.flatnonzero(c)
        prob += pulp.LpAffineExpression([(self.vars[j], float(c[j])) for j in nz]) + float(offset)
        names = {}
        for cons in self.rows:
            for i, con in cons:
                name = f"r{len(names)}"
                prob += con, name
                names[name] = i
        return prob, names

    def _solve(self, prob, time_limit, options=()):
        # (CBC's -sec takes fractions of a second; rounding up to whole seconds ran a 0.01 s limit for 1 s)
        solver = pulp.PULP_CBC_CMD(msg=False, timeLimit=max(0.01, float(time_limit)), gapRel=0.0,
                                   gapAbs=0.0, threads=self.threads, options=list(options))
        t0 = time.perf_counter()
        prob.solve(solver)
        return time.perf_counter() - t0

    def _point(self):
        x = np.array([v.varValue if v.varValue is not None else np.nan for v in self.vars])
        return None if np.isnan(x).any() else x

    def maximize(self, c, offset, *, integer, time_limit, stop=None) -> SolveResult:
        c = np.asarray(c, float)
        integer = integer and bool(self.model.integer.any())
        if integer and (refused := self.scale_refusal()):
            return refused
        prob, names = self._problem(c, offset, integer)
        secs = self._solve(prob, time_limit)
        status, sol = prob.status, prob.sol_status
        x = self._point()
        obj = pulp.value(prob.objective) if x is not None else None
        if status == pulp.LpStatusOptimal and sol == pulp.LpSolutionOptimal and obj is not None:
            if integer:
                return SolveResult(Status.OPTIMAL, milp_bound(obj, c), obj, x, secs)
            y = np.zeros(self.model.n_rows)
            for name, con in prob.constraints.items():
                if name in names and con.pi is not None:
                    y[names[name]] += con.pi
            bound = min(safe_upper_bound(self.model, c, offset, y), safe_upper_bound(self.model, c, offset, -y))
            return SolveResult(Status.OPTIMAL, bound, obj, x, secs)
        if status == pulp.LpStatusInfeasible:
            return SolveResult(Status.INFEASIBLE, -np.inf, None, None, secs)
        return SolveResult(Status.TIME_LIMIT if secs >= time_limit else Status.ERROR, None, obj, x, secs,
                           f"cbc status {pulp.LpStatus.get(status, status)}")

    def decide(self, c, offset, threshold, *, time_limit, margin, stop=None) -> Decision:
        if refused := self.decision_refusal():
            return refused
        c = np.asarray(c, float)
        margin = decision_margin(c, margin)     # the solver's tolerances, as they move c.v
        prob, _ = self._problem(c, offset, True)
        nz = np.flatnonzero(c)
        prob += (pulp.LpAffineExpression([(self.vars[j], float(c[j])) for j in nz])
                 >= float(threshold - margin - offset)), "decision"
        secs = self._solve(prob, time_limit, options=["maxSolutions 1"])
        if prob.status == pulp.LpStatusInfeasible:
            return Decision("below", threshold - margin, None, secs, Status.INFEASIBLE)
        x = self._point()
        if x is not None and prob.sol_status in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible):
            return Decision("above", None, x, secs, Status.FEASIBLE)
        return Decision("unknown", None, None, secs, Status.TIME_LIMIT if secs >= time_limit else Status.ERROR,
                        f"cbc status {pulp.LpStatus.get(prob.status, prob.status)}")
