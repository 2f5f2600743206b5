"""A MILP encoding and its backend built on first use: branch and bound decides most questions, so the
encoding (dense rows over every input) is often never needed."""

from __future__ import annotations

import threading
from contextlib import nullcontext

from . import make_backend, milp_backend
from .base import Decision


class LazyMilp:
    """`encode()` (an encoding with `.model`, `.objective(w, b)` and `.input_point(x)`) and a MILP backend for
    it, made at the first `decide`; safe from several threads (a backend that is not thread-safe takes turns)."""

    def __init__(self, encode, backend: str):
        self._encode, self._name = encode, milp_backend(backend)
        self._lock, self._turn = threading.Lock(), threading.Lock()
        self._built = None

    def get(self) -> tuple:
        """(encoding, backend), built now if needed."""
        with self._lock:
            if self._built is None:
                enc = self._encode()
                self._built = (enc, make_backend(self._name, enc.model))
            return self._built

    @property
    def threads_ok(self) -> bool:
        return bool(getattr(self.get()[1], "threads_ok", False))

    def decide(self, w, b: float, threshold: float, *, time_limit: float, margin: float, stop=None) -> Decision:
        """Is max w.h + b <= threshold over the encoding?  The decision's point (if any) as an input point.
        stop: as the backends' (`solvers.base.Backend.decide`)."""
        enc, be = self.get()
        c, off = enc.objective(w, b)
        with nullcontext() if getattr(be, "threads_ok", False) else self._turn:
            dec = be.decide(c, off, threshold, time_limit=time_limit, margin=margin, stop=stop)
        dec.x = None if dec.x is None else enc.input_point(dec.x)
        return dec
