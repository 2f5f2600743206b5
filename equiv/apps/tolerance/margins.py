"""Proven lower bounds of the original's top-1 margins f_c - f_k on the region: DeepPoly first, then one MILP
per class k (the solver's dual bound, never an incumbent), on the bounds the exact simplification proved."""

from __future__ import annotations

import time

import numpy as np

from ...bounds import Bounds
from ...encode.chain import encode_network
from ...ir.network import Network
from ...solvers import make_backend
from ...solvers.base import Status
from ...spec.region import Box


def milp_margins(net: Network, box: Box, bounds: Bounds, label: int, lower: np.ndarray, *, backend: str = "highs",
                 time_limit: float = 30.0, margin: float = 1e-6, deadline: float | None = None) -> np.ndarray:
    """Per class k != label (in index order), max(lower_k, a proven lower bound of f_label - f_k), by MILP
    for the classes whose `lower` is not positive.  The caller needs every margin positive, so the MILPs stop
    at the first class left non-positive; and at `deadline` (time.perf_counter()): each MILP gets at most
    what is left of it, none starts once it has passed (the classes not asked keep `lower`)."""
    out = np.asarray(lower, float).copy()
    todo = [r for r in range(out.size) if not out[r] > 0]
    if not todo:
        return out
    enc = encode_network(net, box, bounds, len(net.masks), integer=True)
    solver = make_backend(backend, enc.model)
    last = net.dense[-1]
    others = [k for k in range(net.n_outputs) if k != label]
    for r in todo:
        k = others[r]
        lim = time_limit if deadline is None else min(time_limit, deadline - time.perf_counter())
        if lim <= 0.05:
            break
        # max of -(f_c - f_k): its proven upper bound U gives f_c - f_k >= -U
        c, off = enc.objective(last.W[k] - last.W[label], float(last.b[k] - last.b[label]))
        res = solver.maximize(c, off, integer=True, time_limit=lim)
        if res.status in (Status.OPTIMAL, Status.TIME_LIMIT) and res.bound is not None and np.isfinite(res.bound):
            out[r] = max(out[r], -res.bound - margin * max(1.0, abs(res.bound)))
        if not out[r] > 0:
            break
    return out
