"""DeepPoly / CROWN back-substitution, vectorised over all neurons of a layer.

To bound z_k, express it as A h_{k-1} + c and substitute backwards: through a ReLU layer replace
each relu(z) by a linear upper line (chord u/(u-l) (z-l) for unstable neurons) or lower line
(0 or z, z when u > -l), picking by the sign of each coefficient; through a dense layer
A <- A W, c <- c + A b.  At the input, a linear function over the box is bounded exactly by
A centre +- |A| radius.  Each layer's result is intersected with interval bounds from the previous
layer's (already tightened) box, since neither method dominates the other per neuron.
"""

from __future__ import annotations

import numpy as np

from ..ir.network import Network
from ..spec.region import Box
from .common import Bounds, outward
from .interval import affine_interval, relu_image


def relaxation(lo: np.ndarray, hi: np.ndarray, mask: np.ndarray):
    """Linear relaxation of each neuron's activation: lower slope, upper slope and upper intercept.

    lower line: a_l z;  upper line: a_u z + t_u.  Exact for dead, active and linear neurons.
    """
    unstable = mask & (lo < 0) & (hi > 0)
    dead = mask & (hi <= 0)
    a_u = np.where(dead, 0.0, 1.0)
    t_u = np.zeros_like(lo)
    a_l = a_u.copy()
    with np.errstate(divide="ignore", invalid="ignore"):
        chord = np.where(unstable, hi / (hi - lo), 0.0)
    a_u = np.where(unstable, chord, a_u)
    t_u = np.where(unstable, -chord * lo, t_u)
    a_l = np.where(unstable, (hi > -lo).astype(float), a_l)
    return a_l, a_u, t_u


def backsubstitute(net: Network, box: Box, bounds: Bounds, k: int, C: np.ndarray | None = None):
    """Lower and upper bounds of C @ z_k (C defaults to the identity) over the box.

    Uses bounds.lo/hi of layers < k for the ReLU relaxations; k counts dense layers from 0.
    """
    dense, masks = net.dense, net.masks
    W, b = dense[k].W, dense[k].b
    if C is not None:
        W, b = C @ W, C @ b
    Au, cu = W.copy(), b.copy()
    Al, cl = W.copy(), b.copy()
    for j in range(k - 1, -1, -1):
        a_l, a_u, t_u = relaxation(bounds.lo[j], bounds.hi[j], masks[j])
        pos, neg = np.maximum(Au, 0), np.minimum(Au, 0)
        cu = cu + pos @ t_u
        Au = pos * a_u + neg * a_l
        pos, neg = np.maximum(Al, 0), np.minimum(Al, 0)
        cl = cl + neg @ t_u
        Al = pos * a_l + neg * a_u
        cu, cl = cu + Au @ dense[j].b, cl + Al @ dense[j].b
        Au, Al = Au @ dense[j].W, Al @ dense[j].W
    c, r = box.center, box.radius
    upper = Au @ c + np.abs(Au) @ r + cu
    lower = Al @ c - np.abs(Al) @ r + cl
    return outward(lower, upper)


def deeppoly_bounds(net: Network, box: Box, known: Bounds | None = None) -> Bounds:
    """Bounds of every dense layer's pre-activation; `known` (sound bounds from elsewhere) is intersected in."""
    box.check_dim(net.n_inputs)
    dense, masks = net.dense, net.masks
    los, his = [], []
    prev_lo, prev_hi = box.lo, box.hi
    for k in range(len(dense)):
        il, iu = affine_interval(dense[k].W, dense[k].b, prev_lo, prev_hi)
        dl, du = backsubstitute(net, box, Bounds(los, his), k) if k > 0 else (il, iu)
        lo, hi = np.maximum(il, dl), np.minimum(iu, du)
        if known is not None:
            lo, hi = np.maximum(lo, known.lo[k]), np.minimum(hi, known.hi[k])
        los.append(lo)
        his.append(hi)
        if k < len(masks):
            prev_lo, prev_hi = relu_image(lo, hi, masks[k])
    return Bounds(los, his)
