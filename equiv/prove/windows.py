"""Windows of a dense chain: the last w hidden layers before a neuron, encoded on their own, and what the
windowed solver stages share (the stage's one budget, which neurons are open, which side to ask first).

A window of w layers for a neuron of hidden layer k (0-based) encodes hidden layers k-w .. k-1 and takes
as its input box the known bounds of the activations of layer k-w-1 (the input box itself when k-w = 0):
every real input maps into that box, so a window's "infeasible" is a proof.  A window's feasible point
is not a real input; only the full window (w = k) yields witnesses.  A neuron the window cannot decide
gets the next wider window.
"""

from __future__ import annotations

import time

import numpy as np

from ..bounds import Bounds
from ..encode.chain import encode_network
from ..ir.network import Network
from ..solvers import make_backend, milp_backend
from ..spec.region import Box


FIRST_WINDOW = 2      # w = 1 is little more than interval arithmetic on the previous layer's box
BAB_SHARE = 0.5       # of a decision's time limit: branch and bound first, the windowed MILP gets the rest


def window(net: Network, box: Box, bounds: Bounds, k: int, w: int):
    """(sub-network, its input box, its bounds) of the window of w hidden layers before hidden layer k."""
    s = k - w
    masks, dense = net.masks, net.dense
    if s == 0:
        sub_box = box
    else:
        m, lo, hi = masks[s - 1], bounds.lo[s - 1], bounds.hi[s - 1]
        # activations of layer s-1: ReLU(z) in [max(lo, 0), max(hi, 0)]; linear channels keep [lo, hi]
        sub_box = Box(np.where(m, np.maximum(lo, 0.0), lo), np.where(m, np.maximum(hi, 0.0), hi))
    sub = Network.from_layers(dense[s:k + 1], masks[s:k])
    return sub, sub_box, Bounds([a for a in bounds.lo[s:k + 1]], [a for a in bounds.hi[s:k + 1]])


def window_encoding(net: Network, box: Box, bounds: Bounds, k: int, w: int):
    sub, sub_box, sub_bounds = window(net, box, bounds, k, w)
    return encode_network(sub, sub_box, sub_bounds, depth=w, integer=True)


class Budget:
    """One deadline for the whole solver stage; per-query limits never pass it."""

    def __init__(self, seconds, per_query):
        self.t0 = time.perf_counter()
        self.end = None if seconds is None else self.t0 + seconds
        self.per_query = per_query

    def limit(self) -> float | None:
        """Seconds for the next query, None when the budget is spent."""
        if self.end is None:
            return self.per_query
        left = self.end - time.perf_counter()
        return None if left <= 0.05 else min(self.per_query, left)

    def left(self) -> float | None:
        """Seconds left (None: no budget); at most 0.05 means spent, as for `limit`."""
        return None if self.end is None else self.end - time.perf_counter()

    def spent(self) -> float:
        return time.perf_counter() - self.t0


def open_neurons(tr, bounds, k):
    return tr.masks[k] & (bounds.lo[k] < 0) & (bounds.hi[k] > 0) & ~tr.unstable(k)


def likelier_sides(bounds, k, i) -> tuple:
    """Neuron i's two phase questions, the likelier first: the side of 0 its interval reaches less far."""
    return ("dead", "active") if bounds.hi[k][i] <= -bounds.lo[k][i] else ("active", "dead")


def ordered_open(tr, bounds, k):
    """Open neurons of layer k, narrowest interval around 0 (relative) first."""
    todo = np.flatnonzero(open_neurons(tr, bounds, k))
    lo, hi = bounds.lo[k][todo], bounds.hi[k][todo]
    return todo[np.argsort(np.minimum(-lo, hi) / (hi - lo), kind="stable")]


def count_window(queries, w):
    queries["windows"][w] = queries["windows"].get(w, 0) + 1


def layer_encodings(net, box, get_bounds, k, backend):
    """enc_of(w): layer k's window encoding of width w and its backend, made on first use (from the bounds
    current then) and kept for the layer's later decisions.  For admm (LP only, and run by `_admm_chunk` on
    the network itself) the backend is highs, which the decisions need."""
    encs = {}

    def enc_of(w):
        if w not in encs:
            e = window_encoding(net, box, get_bounds(), k, w)
            encs[w] = (e, make_backend(milp_backend(backend), e.model))
        return encs[w]
    return enc_of
