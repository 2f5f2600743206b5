"""DeepPoly / CROWN back-substitution on many boxes at once (the workhorse of input splitting).

The same bounds as `deeppoly_bounds`, computed for N sub-boxes in one pass of batched numpy: every
array carries a leading box axis.  Two savings make it cheap enough to run on thousands of boxes:

* only neurons that are unstable on at least one box of the batch (and linear channels) are
  back-substituted; a stable neuron's relaxation is exact (0 or the identity) whatever its bounds;
* through a ReLU layer, dead neurons drop out of the coefficient matrices, and the two-sided choice
  of relaxation line (by coefficient sign) is only made on the columns that are unstable somewhere.

Per-box known bounds (e.g. the bounds of the whole region, or of the parent box a box was split
from, both sound on the sub-box) are intersected in, so a sub-box is never bounded worse than what
is already known about it.
"""

from __future__ import annotations

import numpy as np

from ..ir.network import Network
from .common import outward
from .deeppoly import relaxation


def _relax(lo: np.ndarray, hi: np.ndarray, mask: np.ndarray):
    """`relaxation` per box, plus the (N, n) mask of neurons unstable on each box."""
    a_l, a_u, t_u = relaxation(lo, hi, mask)
    return a_l, a_u, t_u, mask & (lo < 0) & (hi > 0)


def deeppoly_boxes(net: Network, lo: np.ndarray, hi: np.ndarray, known_lo: list, known_hi: list,
                   depth: int | None = None, all_rows: bool = False):
    """Pre-activation bounds of dense layers 0..depth-1 on each of the N boxes [lo[n], hi[n]].

    lo, hi: (N, dim).  known_lo[k], known_hi[k]: sound bounds of layer k on each box, broadcastable
    to (N, width_k) (a global bound of the region is sound on every sub-box).  all_rows=True
    back-substitutes every neuron (as `deeppoly_bounds` does) instead of only the unstable ones.

    Returns (los, his, coef): per layer (N, width) bounds, and coef[k] = (rows, Al, bl, Au, bu) with
    the input-space linear bounds of each back-substituted row of layer k: on box n,
    Al[n] x + bl[n] <= z_k[rows] <= Au[n] x + bu[n]  (Al, Au: (N, len(rows), dim); bl, bu: (N, len(rows))).
    These are not rounded outward: they guide the splitter (which dimension, which corner to try),
    while proofs use only the returned (outward-rounded) bounds.
    """
    dense, masks = net.dense, net.masks
    depth = len(dense) if depth is None else depth
    N = lo.shape[0]
    centre, radius = (lo + hi) / 2, (hi - lo) / 2
    los, his, rel, coef = [], [], [], {}
    prev_lo, prev_hi = lo, hi
    for k in range(depth):
        W, b = dense[k].W, dense[k].b
        # interval arithmetic from the previous layer's (per-box) activation bounds
        c, r = (prev_lo + prev_hi) / 2, (prev_hi - prev_lo) / 2
        mid, rad = c @ W.T + b, r @ np.abs(W).T
        il, iu = outward(mid - rad, mid + rad)
        zl, zu = np.maximum(il, known_lo[k]), np.minimum(iu, known_hi[k])
        if k > 0:
            mask = masks[k] if k < len(masks) else np.zeros(W.shape[0], bool)
            open_ = ((zl < 0) & (zu > 0)).any(axis=0) | ~mask
            rows = np.arange(W.shape[0]) if all_rows else np.flatnonzero(open_)
            if rows.size:
                bl, bu, Al, Au = _backsubstitute(net, k, rows, rel, N)
                # a linear function over a box: centre +- |coefficients| . radius
                up = np.einsum("nri,ni->nr", Au, centre) + np.einsum("nri,ni->nr", np.abs(Au), radius) + bu
                lw = np.einsum("nri,ni->nr", Al, centre) - np.einsum("nri,ni->nr", np.abs(Al), radius) + bl
                lw, up = outward(lw, up)
                zl[:, rows] = np.maximum(zl[:, rows], lw)
                zu[:, rows] = np.minimum(zu[:, rows], up)
                coef[k] = (rows, Al, bl, Au, bu)
        los.append(zl)
        his.append(zu)
        if k < len(masks):
            rel.append(_relax(zl, zu, masks[k]))
            prev_lo = np.where(masks[k], np.maximum(zl, 0), zl)
            prev_hi = np.where(masks[k], np.maximum(zu, 0), zu)
    return los, his, coef


def _backsubstitute(net: Network, k: int, rows: np.ndarray, rel: list, N: int):
    """Input-space linear bounds of z_k[rows] on every box: (bl, bu, Al, Au) with Al x + bl <= z <= Au x + bu.

    Through ReLU layer j each relu(z) is replaced by its upper line a_u z + t_u where the running
    coefficient is positive (negative for the lower bound) and by its lower line a_l z otherwise.
    Writing the choice as  A * a_l + max(A, 0) * (a_u - a_l)  (upper; min(A, 0) for the lower bound)
    only the columns unstable on some box need the sign split, since a_u = a_l and t_u = 0 elsewhere.
    """
    dense = net.dense
    W, b = dense[k].W[rows], dense[k].b[rows]
    Au = np.broadcast_to(W, (N,) + W.shape).copy()
    Al = Au.copy()
    bu = np.broadcast_to(b, (N, rows.size)).copy()
    bl = bu.copy()
    for j in range(k - 1, -1, -1):
        a_l, a_u, t_u, unstable = rel[j]
        U = np.flatnonzero(unstable.any(axis=0))
        alive = np.flatnonzero((a_u != 0).any(axis=0) | (a_l != 0).any(axis=0))  # dead everywhere: h = 0
        if U.size:
            pos_u = np.maximum(Au[:, :, U], 0)
            neg_l = np.minimum(Al[:, :, U], 0)
            bu += np.einsum("nru,nu->nr", pos_u, t_u[:, U])
            bl += np.einsum("nru,nu->nr", neg_l, t_u[:, U])
            gap = (a_u - a_l)[:, None, U]
        Au = Au[:, :, alive] * a_l[:, None, alive]
        Al = Al[:, :, alive] * a_l[:, None, alive]
        if U.size:
            at = np.searchsorted(alive, U)   # every unstable column is alive (its a_u > 0)
            Au[:, :, at] += pos_u * gap
            Al[:, :, at] += neg_l * gap
        # through the dense layer j: z_j = W_j h_{j-1} + b_j; one (N*rows, alive) @ (alive, in) product
        Wj, bj = dense[j].W[alive], dense[j].b[alive]
        bu += Au @ bj
        bl += Al @ bj
        flat = (N * rows.size, alive.size)
        Au = (Au.reshape(flat) @ Wj).reshape(N, rows.size, Wj.shape[1])
        Al = (Al.reshape(flat) @ Wj).reshape(N, rows.size, Wj.shape[1])
    return bl, bu, Al, Au
