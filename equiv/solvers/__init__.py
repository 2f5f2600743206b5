"""Solver backends behind one interface; `make_backend(name, model)` picks one by name.

highs (default, highspy), gurobi (gurobipy, `pip install "equiv[gurobi]"`), cbc (PuLP's bundled CBC,
`pip install "equiv[pulp]"`), admm (operator splitting on LP relaxations only, numpy/scipy: certified LP
bounds, batched over objectives; no MILP).
"""

from __future__ import annotations

import importlib.util

from ..errors import SolverUnavailableError
from ..encode.chain import LinearModel
from .base import Backend, Decision, SolveResult, Status

BACKENDS = ("highs", "gurobi", "cbc", "admm")
MILP_BACKENDS = ("highs", "gurobi", "cbc")      # admm solves LP relaxations only
_PACKAGE = {"highs": ("highspy", "equiv"), "gurobi": ("gurobipy", "equiv[gurobi]"), "cbc": ("pulp", "equiv[pulp]"),
            "admm": ("scipy", "equiv")}


def available_backends(milp: bool = False) -> list[str]:
    """The backends whose Python package is installed (with milp, only those that solve MILPs)."""
    return [b for b in (MILP_BACKENDS if milp else BACKENDS) if importlib.util.find_spec(_PACKAGE[b][0]) is not None]


def milp_backend(name: str) -> str:
    """The backend MILP queries use when `name` is asked for: itself, or highs for an LP-only backend."""
    return name if name in MILP_BACKENDS else "highs"


def check_backend(name: str, milp: bool = False) -> None:
    """Fail early, with a clear message, for a backend that does not exist or is not installed (with milp:
    or that cannot solve MILPs)."""
    if name not in BACKENDS:
        raise SolverUnavailableError(f"unknown solver backend '{name}'; available: {', '.join(BACKENDS)}")
    if milp and name not in MILP_BACKENDS:
        raise SolverUnavailableError(f"the {name} backend solves LP relaxations only; this command needs a MILP "
                                     f"solver: {', '.join(MILP_BACKENDS)}")
    module, extra = _PACKAGE[name]
    if importlib.util.find_spec(module) is None:
        raise SolverUnavailableError(f"the {name} backend needs the Python package {module}: pip install \"{extra}\"")


def make_backend(name: str, model: LinearModel, threads: int = 1) -> Backend:
    """Translate `model` for the named solver."""
    check_backend(name)
    if name == "highs":
        from .highs import HighsBackend
        return HighsBackend(model, threads)
    if name == "admm":
        from .admm import AdmmBackend
        return AdmmBackend(model, threads)
    if name == "gurobi":
        from .gurobi import GurobiBackend
        return GurobiBackend(model, threads)
    from .pulp_cbc import PulpCbcBackend
    return PulpCbcBackend(model, threads)


__all__ = ["Backend", "Decision", "SolveResult", "Status", "make_backend", "check_backend", "available_backends",
           "milp_backend", "BACKENDS", "MILP_BACKENDS"]
