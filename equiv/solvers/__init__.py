"""Solver backends behind one interface; `make_backend(name, model)` picks one by name."""

from __future__ import annotations

from ..errors import SolverUnavailableError
from ..milp import LinearModel
from .base import Backend, Decision, SolveResult, Status

BACKENDS = ("highs",)


def check_backend(name: str) -> None:
    """Fail early, with a clear message, for a backend that does not exist or is not installed."""
    if name not in BACKENDS:
        raise SolverUnavailableError(f"unknown solver backend '{name}'; available: {', '.join(BACKENDS)}")


def make_backend(name: str, model: LinearModel, threads: int = 1) -> Backend:
    """Translate `model` for the named solver ("highs" by default)."""
    if name == "highs":
        from .highs import HighsBackend
        return HighsBackend(model, threads)
    raise SolverUnavailableError(f"unknown solver backend '{name}'; available: {', '.join(BACKENDS)}")


__all__ = ["Backend", "Decision", "SolveResult", "Status", "make_backend", "check_backend", "BACKENDS"]
