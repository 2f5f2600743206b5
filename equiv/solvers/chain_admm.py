"""A dense ReLU chain as a `DagRelaxation` (each layer reads only the one before it), for `DagAdmm`: the
LP stage's and the windows' batches of max and min per neuron."""

from __future__ import annotations

import numpy as np

from .dag_admm import DagAdmm
from .dag_relaxation import IDENTITY, TRIANGLE, ZERO, DagRelaxation


def chain_relaxation(net, box, bounds, depth: int) -> DagRelaxation:
    """Layers 1..depth of `net` (a chain) with pre-activation `bounds`: objectives then live on the input of
    dense layer `depth` (0-based), as in `encode_network(net, box, bounds, depth)`."""
    W = [[np.asarray(net.dense[k].W, np.float64)] for k in range(depth)]
    b = [np.asarray(net.dense[k].b, np.float64) for k in range(depth)]
    lo = [np.asarray(bounds.lo[k], np.float64) for k in range(depth)]
    hi = [np.asarray(bounds.hi[k], np.float64) for k in range(depth)]
    kind = [np.where(~net.masks[k] | (lo[k] >= 0), IDENTITY, np.where(hi[k] <= 0, ZERO, TRIANGLE)).astype(np.int64)
            for k in range(depth)]
    return DagRelaxation([[k] for k in range(depth)], W, b, lo, hi, kind,
                         np.asarray(box.lo, np.float64), np.asarray(box.hi, np.float64))


def neuron_bounds(rel: DagRelaxation, W: np.ndarray, b: np.ndarray, time_limit: float,
                  on_done=None) -> tuple[list, list]:
    """Max and min of W[i] . y_L + b[i] for every row i, from one DagAdmm batch: (ups, downs), the SolveResults
    of max z_i and of max -z_i (certified bounds either way).  on_done(n), if given, hears of each n rows
    whose both sides have stopped, as they stop (for a progress bar)."""
    n, told = len(W), [0]

    def progress(done):
        both = int(np.sum(done[:n] & done[n:]))
        if on_done is not None and both > told[0]:
            on_done(both - told[0])
            told[0] = both
    res = DagAdmm(rel).maximize_many(rel.on_last(np.vstack([W, -W])), np.concatenate([b, -b]), time_limit, progress)
    if on_done is not None and n > told[0]:
        on_done(n - told[0])
    return res[:n], res[n:]
