"""Is a candidate network g close enough to the original f on the region?  A sound answer by the difference
engine (`bounds.diff`) on a fixed partition of the region, after a cheap sampled rejection.

linf: max over the partition's boxes of the proven bound on |f_j - g_j| must be at most target_j.
top1: on every box, f's class c must be proved the strict winner (once, for f) and g's margins
g_c - g_k proved positive; then g and f have the same argmax everywhere on the region.
f's pre-activations are known on the whole region from the exact simplification's proofs (LP/MILP-tightened
bounds); they are intersected in on every box, which is what keeps the difference bounds of dead and
active neurons at zero.
"""

from __future__ import annotations

import numpy as np

from ...bounds.common import Bounds
from ...bounds.diff import output_bounds, pair_bounds
from ...prove.equivalence.search import known_f
from ...ir.network import Network
from ...prove.align import AlignedPair
from ...spec.region import Box


def partition(box: Box, pieces: int, max_inputs: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) of `pieces` (rounded up to a power of 2) boxes tiling the box, bisecting the widest input
    each time; one box when more than max_inputs inputs vary (bisection would not pay)."""
    lo, hi = [box.lo.astype(float)], [box.hi.astype(float)]
    width = np.where(box.hi > box.lo, box.hi - box.lo, 0.0)
    if int((width > 0).sum()) > max_inputs:
        return np.array(lo), np.array(hi)
    while len(lo) < pieces:
        nlo, nhi = [], []
        for l, h in zip(lo, hi):
            d = int(np.argmax(np.where(width > 0, (h - l) / np.where(width > 0, width, 1), -1)))
            m = 0.5 * (l[d] + h[d])
            h1, l2 = h.copy(), l.copy()
            h1[d], l2[d] = m, m
            nlo += [l, l2]
            nhi += [h1, h]
        lo, hi = nlo, nhi
    return np.array(lo), np.array(hi)


class Judge:
    """Decides `ok(g)` for networks g of f's widths; counts the sound bound calls it made."""

    def __init__(self, f: Network, box: Box, known: Bounds, *, target: np.ndarray | None = None,
                 top1: bool = False, pieces: int = 64, samples: np.ndarray | None = None, safety: float = 1.0):
        if (target is None) == (not top1):
            raise ValueError("give a linf target or top1, not both")
        self.f, self.top1, self.safety = f, top1, safety
        self.target = None if target is None else np.broadcast_to(np.asarray(target, float), (f.n_outputs,))
        self.lo, self.hi = partition(box, pieces)
        self._known = known_f(self.pair(f), f, known, box, self.lo, self.hi)
        self.X = samples
        self.fX = None if samples is None else f.forward(samples)
        self.calls = 0
        self.label = None
        self.sampled_only = False      # the sampled stage: accept on the samples alone (not a proof)
        if top1:
            self.label = int(np.argmax(f.forward(box.center)))
            self.C = -np.delete(np.eye(f.n_outputs), self.label, axis=0)
            self.C[:, self.label] = 1.0       # rows e_c - e_k: the margins of class c
            self.f_margin = np.full(f.n_outputs - 1, -np.inf)   # proven lower bounds of f_c - f_k (see `margins`)

    def pair(self, g: Network) -> AlignedPair:
        z = [np.zeros(w, bool) for w in self.f.hidden_widths]
        return AlignedPair(self.f, g, z, [a.copy() for a in z], False, [0.0] * len(z))

    def sampled_ok(self, g: Network, fraction: float | None = None) -> bool:
        """Whether g stays within `fraction` (default: the safety factor) of the tolerance on the samples:
        linf |g - f| <= fraction * epsilon; top1 every margin of g >= (1 - fraction) x f's smallest margin."""
        if self.X is None:
            return True
        fraction = self.safety if fraction is None else fraction
        gX = g.forward(self.X)
        if self.top1:
            c = self.label
            floor = (1 - fraction) * max(0.0, float((self.fX[:, c][:, None] - np.delete(self.fX, c, axis=1)).min()))
            return bool(np.all(gX[:, c][:, None] - np.delete(gX, c, axis=1) > floor))
        return bool(np.all(np.abs(gX - self.fX) <= fraction * self.target))

    def bound(self, g: Network) -> np.ndarray:
        """linf: per output, the proven max |f_j - g_j| over the region; top1: per other class k, the proven
        min of g_c - g_k."""
        self.calls += 1
        pair = self.pair(g)
        pb = pair_bounds(pair, self.lo, self.hi, known=self._known)
        if self.top1:
            low, _ = output_bounds(pair, pb, self.C, "g")
            # g_c - g_k = (f_c - f_k) - C (f - g): f's proven margins minus the difference's upper bound
            _, up_d = output_bounds(pair, pb, self.C, "d")
            return np.maximum(low, self.f_margin[None] - up_d).min(axis=0)
        lo, hi = pb.out_diff
        return np.maximum(-lo, hi).max(axis=0)

    def f_margins(self, g0: Network) -> np.ndarray:
        """top1: per other class, the proven min of f_c - f_k over the region (f through its pair with g0)."""
        pair = self.pair(g0)
        pb = pair_bounds(pair, self.lo, self.hi, known=self._known)
        low, _ = output_bounds(pair, pb, self.C, "f")
        return low.min(axis=0)

    def ok(self, g: Network) -> bool:
        return self.sampled_ok(g) and self.proved_ok(g)

    def proved_ok(self, g: Network) -> bool:
        """The sound part of `ok` (True in the sampled stage, where only the samples decide)."""
        if self.sampled_only:
            return True
        b = self.bound(g)
        return bool(np.all(b > 0)) if self.top1 else bool(np.all(b <= self.safety * self.target))
