"""Input splitting (ReluVal / Neurify style): prove neuron phases on a tiling of the region by sub-boxes.

DeepPoly bounds on a small box are far tighter than on the whole region, so a candidate neuron that
no single bound proves dead (z <= 0) or active (z >= 0) is often proved on every piece of a
bisection.  Branch and bound over sub-boxes, breadth first, a batch of boxes at a time:

* bound every box of the batch with batched DeepPoly (`deeppoly_boxes`), intersected with the bounds
  inherited from its parent box (sound: the box lies inside its parent);
* a candidate is *closed* on a box when the box's bound proves its phase there, and stays closed on
  every box split from it;
* real points of each box (its centre and, per open candidate, the corner maximising the candidate's
  linear DeepPoly bound) are evaluated in the network: a point where a candidate takes the sign it
  was to be proved never to take shows it unstable, and it is no longer split for;
* a box with no open candidate is a leaf; any other box is bisected along the input dimension where
  the open candidates' linear bounds vary most (|coefficient| x width, normalised per candidate).

When the box budget runs out the unsplit boxes are leaves too.  The leaves always tile the region
(bisection at a midpoint shared by both halves), so for every neuron the widest bound over the
leaves is a sound bound on the whole region: candidates closed on every leaf come out proved, and
the unstable neurons of the earlier layers get tighter bounds for a later LP/MILP stage.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np

from ..ir.network import Network
from ..spec.bisect import Bisection, Node, Open
from ..spec.region import Box
from .batch import deeppoly_boxes
from .common import Bounds

MEMORY_BYTES = 256 * 2 ** 20   # cap on the frontier's storage; lowers the box budget for very wide nets

try:  # optional: measured, OpenBLAS's second thread on these mid-sized products doubles CPU for no speed-up
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover - then BLAS keeps its default threads
    threadpool_limits = None


@dataclass
class SplitResult:
    bounds: Bounds            # sound bounds on the whole region: the known bounds, tightened by the leaves
    witnesses: np.ndarray     # real points of the region where some candidate took its forbidden sign
    refuted: np.ndarray       # per candidate: shown unstable by one of the witnesses
    boxes: int                # boxes bounded
    leaves_open: int          # boxes left with open candidates when the budget ran out


def split_bounds(net: Network, box: Box, known: Bounds, layer: np.ndarray, index: np.ndarray, dead: np.ndarray,
                 max_boxes: int = 10000, batch: int = 256) -> SplitResult:
    """Try to prove candidate neurons (dense layer `layer`, 0-based, neuron `index`) dead (`dead` True:
    z <= 0 on the region) or active (z >= 0) by splitting the input box.  `known` are sound bounds on
    the whole region (e.g. DeepPoly's); the result's bounds are never looser."""
    box.check_dim(net.n_inputs)
    one_thread = threadpool_limits(1, user_api="blas") if threadpool_limits else contextlib.nullcontext()
    with one_thread:
        return _split(net, box, known, layer, index, dead, max_boxes, batch)


def _split(net, box, known, layer, index, dead, max_boxes, batch) -> SplitResult:
    layer, index, dead = np.asarray(layer, int), np.asarray(index, int), np.asarray(dead, bool)
    C = layer.size
    if C == 0:
        return SplitResult(known.copy(), np.empty((0, box.dim)), np.zeros(C, bool), 0, 0)
    st = _SplitState(net, box, known, layer, index, dead)
    # the queue holds at most max_boxes + 1 boxes, each with two float rows of tracked bounds
    max_boxes = int(min(max_boxes, MEMORY_BYTES // (16 * (st.n_tracked + box.dim) + C + 1)))
    root = Node(box.lo.copy(), box.hi.copy(), (np.ones(C, bool), st.root_lo, st.root_hi))
    st.queued_open += 1
    run = Bisection(st.decide, order="fifo", batch=batch, max_boxes=max_boxes).run([root])
    # budget spent: the boxes never bounded are leaves too, with their inherited bounds
    for node in run.pending:
        st.finish(node.data[1][None], node.data[2][None])
    open_left = sum(int((node.data[0] & ~st.refuted).any()) for node in run.pending)
    return SplitResult(st.bounds(), st.witness_points(), st.refuted, run.boxes, open_left)


class _SplitState:
    """What the bisection carries between batches: tracked neurons, refuted candidates, leaf extremes."""

    def __init__(self, net, box, known, layer, index, dead):
        self.net, self.known, self.layer, self.index, self.dead = net, known, layer, index, dead
        self.dim = box.dim
        self.refuted = np.zeros(layer.size, bool)
        self.witnesses: list[np.ndarray] = []
        self.top = int(layer.max()) + 1          # dense layers 0..top-1 are ever bounded
        # neurons whose bounds the leaves can tighten: the ReLUs not already stable
        self.tracked = [np.flatnonzero(net.masks[k] & (known.lo[k] < 0) & (known.hi[k] > 0)) for k in range(self.top)]
        ends = np.cumsum([t.size for t in self.tracked])
        self.parts = [slice(e - t.size, e) for t, e in zip(self.tracked, ends)]   # each layer's columns below
        self.n_tracked = int(ends[-1])
        self.fin_lo, self.fin_hi = np.full(self.n_tracked, np.inf), np.full(self.n_tracked, -np.inf)
        self.root_lo = np.concatenate([known.lo[k][t] for k, t in enumerate(self.tracked)])
        self.root_hi = np.concatenate([known.hi[k][t] for k, t in enumerate(self.tracked)])
        self.splittable = box.hi > box.lo
        self.width0 = np.where(self.splittable, box.hi - box.lo, np.inf)
        self.queued_open = np.zeros(layer.size, int)   # per candidate: queued boxes where it is open

    def finish(self, tlo, thi):
        """Leaves: their tracked bounds widen the extremes over finished leaves."""
        self.fin_lo = np.minimum(self.fin_lo, tlo.min(axis=0))
        self.fin_hi = np.maximum(self.fin_hi, thi.max(axis=0))

    def bounds(self) -> Bounds:
        out = self.known.copy()
        for k in range(self.top):
            t = self.tracked[k]
            out.lo[k][t] = np.maximum(out.lo[k][t], self.fin_lo[self.parts[k]])
            out.hi[k][t] = np.minimum(out.hi[k][t], self.fin_hi[self.parts[k]])
        return out

    def witness_points(self) -> np.ndarray:
        return np.vstack(self.witnesses) if self.witnesses else np.empty((0, self.dim))

    def decide(self, nodes: list) -> list:
        """Bound a batch of boxes, close candidates, refute with real points; bisect the boxes left open."""
        net, known, layer, index, dead, refuted = self.net, self.known, self.layer, self.index, self.dead, self.refuted
        lo, hi = np.array([n.lo for n in nodes]), np.array([n.hi for n in nodes])
        op = np.array([n.data[0] for n in nodes])
        tlo, thi = np.array([n.data[1] for n in nodes]), np.array([n.data[2] for n in nodes])
        n = len(nodes)
        self.queued_open -= op.sum(axis=0)
        op &= ~refuted
        # bound the layers up to the deepest candidate still open anywhere, so that finished leaves
        # carry fresh bounds for every layer a later stage may encode
        alive = ~refuted & (op.any(axis=0) | (self.queued_open > 0))
        depth = int(layer[alive].max()) + 1 if alive.any() else 0
        coef = {}
        if depth:
            kl, kh = [], []
            for k in range(depth):
                kl.append(np.repeat(known.lo[k][None], n, axis=0))
                kh.append(np.repeat(known.hi[k][None], n, axis=0))
                kl[k][:, self.tracked[k]], kh[k][:, self.tracked[k]] = tlo[:, self.parts[k]], thi[:, self.parts[k]]
            los, his, coef = deeppoly_boxes(net, lo, hi, kl, kh, depth=depth)
            for k in range(depth):
                tlo[:, self.parts[k]], thi[:, self.parts[k]] = los[k][:, self.tracked[k]], his[k][:, self.tracked[k]]
            # a candidate is closed on the boxes whose bound proves its phase there
            for c in np.flatnonzero(op.any(axis=0) & (layer < depth)):
                k, i = layer[c], index[c]
                op[:, c] &= ~((his[k][:, i] <= 0) if dead[c] else (los[k][:, i] >= 0))
        # real points (box centres, attack corners): a forbidden sign refutes a candidate for good
        pts = np.vstack([(lo + hi) / 2] + _attack_points(lo, hi, op, layer, index, dead, coef))
        _, pre = net.forward(pts, return_pre=True)
        for c in np.flatnonzero(~refuted):
            z = pre[layer[c]][:, index[c]]
            wrong = np.flatnonzero((z > 0) if dead[c] else (z < 0))
            if wrong.size:
                refuted[c] = True
                self.witnesses.append(pts[wrong[:1]])
        op[:, refuted] = False
        # boxes with nothing open (or nothing left to split) are leaves; the others are bisected
        split = op.any(axis=1) & (hi > lo)[:, self.splittable].any(axis=1)
        if (~split).any():
            self.finish(tlo[~split], thi[~split])
        out = [None] * n
        if not split.any():
            return out
        rows = np.flatnonzero(split)
        coef = {k: tuple(a if j == 0 else a[split] for j, a in enumerate(v)) for k, v in coef.items()}
        dims = _split_dims(lo[split], hi[split], op[split], layer, index, dead, coef, self.width0)
        for r, d in zip(rows, dims):
            out[r] = Open((op[r].copy(), tlo[r].copy(), thi[r].copy()), dim=int(d))
        self.queued_open += 2 * op[split].sum(axis=0)
        return out


def _candidate_coefs(coef, layer, index, dead, c):
    """(N, dim) input coefficients of the linear bound that must prove candidate c (upper for dead), or None."""
    k = layer[c]
    if k not in coef:
        return None
    rows, Al, _, Au, _ = coef[k]
    j = np.searchsorted(rows, index[c])
    if j >= rows.size or rows[j] != index[c]:
        return None
    return Au[:, j] if dead[c] else -Al[:, j]


def _attack_points(lo, hi, op, layer, index, dead, coef):
    """Per open candidate, on each box where it is open, the corner maximising its linear bound
    (for a dead candidate the upper bound of z, for an active one the upper bound of -z): where the
    bound is nearly tight this is where a violating point would be."""
    centre = (lo + hi) / 2
    pts = []
    for c in np.flatnonzero(op.any(axis=0)):
        A = _candidate_coefs(coef, layer, index, dead, c)
        if A is not None:
            on = op[:, c]
            # the corner itself (lo or hi per coordinate), not centre +- radius, which can round outside
            pts.append(np.where(A[on] > 0, hi[on], np.where(A[on] < 0, lo[on], centre[on])))
    return pts


def _split_dims(lo, hi, op, layer, index, dead, coef, width0):
    """Per box, the input dimension to bisect: the largest sum over open candidates of the share of
    |coefficient| x width (the part of the bound's spread over the box due to that input); boxes with
    no usable coefficients fall back to the widest dimension relative to the region."""
    width = hi - lo
    score = np.zeros(lo.shape)
    for c in np.flatnonzero(op.any(axis=0)):
        A = _candidate_coefs(coef, layer, index, dead, c)
        if A is None:
            continue
        s = np.abs(A) * width
        total = s.sum(axis=1, keepdims=True)
        score += np.where(op[:, c:c + 1] & (total > 0), s / np.where(total > 0, total, 1.0), 0.0)
    widest = width / width0
    score = np.where(score.sum(axis=1, keepdims=True) > 0, score, widest)
    score[width <= 0] = -1.0
    return np.argmax(score, axis=1)
