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
    refuted = np.zeros(C, bool)
    witnesses: list[np.ndarray] = []
    out = known.copy()
    if C == 0:
        return SplitResult(out, np.empty((0, box.dim)), refuted, 0, 0)
    top = int(layer.max()) + 1          # dense layers 0..top-1 are ever bounded
    # neurons whose bounds the leaves can tighten: the ReLUs not already stable
    tracked = [np.flatnonzero(net.masks[k] & (known.lo[k] < 0) & (known.hi[k] > 0)) for k in range(top)]
    ends = np.cumsum([t.size for t in tracked])
    parts = [slice(e - t.size, e) for t, e in zip(tracked, ends)]   # each layer's columns in the rows below
    n_tracked = int(ends[-1])
    # the frontier holds at most max_boxes + 1 boxes, each with two float rows of tracked bounds
    max_boxes = int(min(max_boxes, MEMORY_BYTES // (16 * (n_tracked + box.dim) + C + 1)))
    fin_lo, fin_hi = np.full(n_tracked, np.inf), np.full(n_tracked, -np.inf)   # extremes over finished leaves
    splittable = box.hi > box.lo
    width0 = np.where(splittable, box.hi - box.lo, np.inf)

    # the frontier (first in, first out): boxes to bound, their open candidates and inherited bounds
    f_lo, f_hi = box.lo[None].copy(), box.hi[None].copy()
    f_open = np.ones((1, C), bool)
    f_tlo = np.concatenate([known.lo[k][t] for k, t in enumerate(tracked)])[None]
    f_thi = np.concatenate([known.hi[k][t] for k, t in enumerate(tracked)])[None]
    used = 0
    while f_lo.shape[0] and used < max_boxes:
        n = min(batch, f_lo.shape[0], max_boxes - used)
        lo, hi, op, tlo, thi = f_lo[:n], f_hi[:n], f_open[:n], f_tlo[:n].copy(), f_thi[:n].copy()
        f_lo, f_hi, f_open, f_tlo, f_thi = f_lo[n:], f_hi[n:], f_open[n:], f_tlo[n:], f_thi[n:]
        used += n
        # bound the layers up to the deepest candidate still open anywhere, so that finished leaves
        # carry fresh bounds for every layer a later stage may encode
        alive = ~refuted & (op.any(axis=0) | f_open.any(axis=0))
        depth = int(layer[alive].max()) + 1 if alive.any() else 0
        coef = {}
        if depth:
            kl, kh = [], []
            for k in range(depth):
                kl.append(np.repeat(known.lo[k][None], n, axis=0))
                kh.append(np.repeat(known.hi[k][None], n, axis=0))
                kl[k][:, tracked[k]], kh[k][:, tracked[k]] = tlo[:, parts[k]], thi[:, parts[k]]
            los, his, coef = deeppoly_boxes(net, lo, hi, kl, kh, depth=depth)
            for k in range(depth):
                tlo[:, parts[k]], thi[:, parts[k]] = los[k][:, tracked[k]], his[k][:, tracked[k]]
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
                witnesses.append(pts[wrong[:1]])
        op[:, refuted] = False
        f_open[:, refuted] = False
        # boxes with nothing open (or nothing left to split) are leaves; the others are bisected
        split = op.any(axis=1) & (hi > lo)[:, splittable].any(axis=1)
        if (~split).any():
            fin_lo = np.minimum(fin_lo, tlo[~split].min(axis=0))
            fin_hi = np.maximum(fin_hi, thi[~split].max(axis=0))
        if not split.any():
            continue
        lo, hi, op, tlo, thi = lo[split], hi[split], op[split], tlo[split], thi[split]
        coef = {k: tuple(a if j == 0 else a[split] for j, a in enumerate(v)) for k, v in coef.items()}
        d = _split_dims(lo, hi, op, layer, index, dead, coef, width0)
        at = np.arange(lo.shape[0])
        mid = (lo[at, d] + hi[at, d]) / 2        # both halves share the face x_d = mid: a tiling
        hi1, lo2 = hi.copy(), lo.copy()
        hi1[at, d] = mid
        lo2[at, d] = mid
        f_lo = np.vstack([f_lo, lo, lo2])
        f_hi = np.vstack([f_hi, hi1, hi])
        f_open = np.vstack([f_open, op, op])
        f_tlo = np.vstack([f_tlo, tlo, tlo])
        f_thi = np.vstack([f_thi, thi, thi])
    # budget spent: the boxes never bounded are leaves too, with their inherited bounds
    if f_lo.shape[0]:
        fin_lo = np.minimum(fin_lo, f_tlo.min(axis=0))
        fin_hi = np.maximum(fin_hi, f_thi.max(axis=0))
    for k in range(top):
        t = tracked[k]
        out.lo[k][t] = np.maximum(out.lo[k][t], fin_lo[parts[k]])
        out.hi[k][t] = np.minimum(out.hi[k][t], fin_hi[parts[k]])
    wit = np.vstack(witnesses) if witnesses else np.empty((0, box.dim))
    return SplitResult(out, wit, refuted, used, int(f_open.any(axis=1).sum()))


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
