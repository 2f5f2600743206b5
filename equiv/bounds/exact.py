"""The exact range of an affine layer on the input box, for the rows whose float bounds straddle 0 by less than
their rounding margins.

Every computed bound is widened by a rounding margin, so a pre-activation whose exact maximum is 0 (a row of
non-positive weights, zero bias, inputs from 0: common with clipped inputs) gets an upper bound of +1e-9 and
never counts as dead.  On the first layer the range is w.x + b over a box: its exact extremes are sums of
products of floats, which rational arithmetic computes without any rounding."""

from __future__ import annotations

from fractions import Fraction

import numpy as np

NEAR = 1e-6          # rows whose bound lies within NEAR x (their magnitude + 1) of 0 are recomputed exactly
MAX_ROWS = 2000      # rows recomputed at most per layer (each costs n_inputs rational products)


def exact_zero_sides(W: np.ndarray, b: np.ndarray, lo: np.ndarray, hi: np.ndarray, zlo: np.ndarray,
                     zhi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For z = W x + b on the box [lo, hi] with float bounds [zlo, zhi]: boolean arrays (dead, active) of the
    rows whose exact maximum is <= 0, and whose exact minimum is >= 0, among those whose float bounds
    straddle 0 by less than NEAR of their magnitude."""
    W = np.asarray(W, np.float64)
    b = np.broadcast_to(np.asarray(b, np.float64), (W.shape[0],))
    mag = np.abs(W) @ np.maximum(np.abs(lo), np.abs(hi)) + np.abs(b) + 1.0
    straddle = (zlo < 0) & (zhi > 0)
    near_hi = straddle & (zhi <= NEAR * mag)
    near_lo = straddle & (zlo >= -NEAR * mag)
    dead, active = np.zeros(W.shape[0], bool), np.zeros(W.shape[0], bool)
    rows = np.flatnonzero(near_hi | near_lo)[:MAX_ROWS]
    if not rows.size:
        return dead, active
    flo, fhi = [Fraction(float(v)) for v in lo], [Fraction(float(v)) for v in hi]
    for i in rows:
        top, bottom = Fraction(float(b[i])), Fraction(float(b[i]))
        for j in np.flatnonzero(W[i]):
            w = Fraction(float(W[i, j]))
            top += w * (fhi[j] if w > 0 else flo[j])
            bottom += w * (flo[j] if w > 0 else fhi[j])
        dead[i] = near_hi[i] and top <= 0
        active[i] = near_lo[i] and bottom >= 0
    return dead, active
