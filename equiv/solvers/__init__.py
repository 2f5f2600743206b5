"""Solver backends behind one interface; `make_backend(name, model)` picks one by name.

highs (default, highspy), gurobi (gurobipy, `pip install "equiv[gurobi]"`), cbc (PuLP's bundled CBC,
`pip install "equiv[pulp]"`).
"""

from __future__ import annotations

import importlib.util

from ..errors import SolverUnavailableError
from ..encode.chain import LinearModel
from .base import Backend, Decision, SolveResult, Status

BACKENDS = ("highs", "gurobi", "cbc")
_PACKAGE = {"highs": ("highspy", "equiv"), "gurobi": ("gurobipy", "equiv[gurobi]"), "cbc": ("pulp", "equiv[pulp]")}


def available_backends() -> list[str]:
    """The backends whose Python package is installed."""
    return [b for b in BACKENDS if importlib.util.find_spec(_PACKAGE[b][0]) is not None]


def check_backend(name: str) -> None:
    """Fail early, with a clear message, for a backend that does not exist or is not installed."""
    if name not in BACKENDS:
        raise SolverUnavailableError(f"unknown solver backend '{name}'; available: {', '.join(BACKENDS)}")
    module, extra = _PACKAGE[name]
    if importlib.util.find_spec(module) is None:
        raise SolverUnavailableError(f"the {name} backend needs the Python package {module}: pip install \"{extra}\"")


def make_backend(name: str, model: LinearModel, threads: int = 1) -> Backend:
    """Translate `model` for the named solver."""
    check_backend(name)
    if name == "highs":
        from .highs import HighsBackend
        return HighsBackend(model, threads)
    if name == "gurobi":
        from .gurobi import GurobiBackend
        return GurobiBackend(model, threads)
    from .pulp_cbc import PulpCbcBackend
    return PulpCbcBackend(model, threads)


__all__ = ["Backend", "Decision", "SolveResult", "Status", "make_backend", "check_backend", "available_backends",
           "BACKENDS"]
