"""Fused loops (numba) for the slope and multiplier search of `relu_bab` (`_optimise`): per layer one
pass for the backward relaxation step, one for the forward gradient step and one for the Adam update,
instead of numpy's five to ten array passes each.

They only ever run inside the search, in float32: the parameters it finds are valid whatever they are
(alpha in [0, 1], beta >= 0), and every bound that proves anything is `relu_bab._lower(certify=True)` in
float64 numpy at those parameters.  So the loops need not reproduce numpy bit for bit (they do, up to
the order of the intercept sums).  Loaded, like `bounds.kernels`, only for batches large enough to pay
for the load (about 0.3 s once per process); without numba, or with EQUIV_NO_NUMBA=1, numpy runs.
"""

from __future__ import annotations

import functools

import numpy as np

from ..bounds.kernels import jit_all

FUSED_MIN = 50_000      # domains x hidden neurons of a search from which the loops are loaded


def _back(a, L, U, relu, alpha, beta, S, az, unst, su, tu, c):
    # one layer of the backward pass: a h >= a+ alpha z + a- (su z + tu) on unstable positions, a z on
    # linear ones (active, or no ReLU), 0 on dead ones; minus beta s z for the splits; c += a- . tu
    D, n = a.shape
    for d in range(D):
        s = c[d]
        for j in range(n):
            lo, up, v = L[d, j], U[d, j], a[d, j]
            w = 0.0
            slope, icpt, un = 0.0, 0.0, False
            if lo >= 0 or not relu[j]:
                w = v
            elif up > 0:
                un = True
                slope = up / (up - lo)
                icpt = -slope * lo
                if v > 0:
                    w = v * alpha[d, j]
                else:
                    w = v * slope
                    s += v * icpt
            az[d, j] = w - beta[d, j] * S[d, j]
            unst[d, j], su[d, j], tu[d, j] = un, slope, icpt
        c[d] = s


def _fwd(vz, ah, L, relu, unst, su, tu, alpha, S, v, ga, gb):
    # one layer of the gradient's forward pass from the minimising corner, through the line each
    # coefficient's sign chose: d/dalpha = max(ah, 0) z, d/dbeta = -s z
    D, n = vz.shape
    for d in range(D):
        for j in range(n):
            z = vz[d, j]
            gb[d, j] = -S[d, j] * z
            if unst[d, j]:
                h = ah[d, j]
                ga[d, j] = max(h, 0.0) * z
                v[d, j] = alpha[d, j] * z if h > 0 else su[d, j] * z + tu[d, j]
            else:
                ga[d, j] = 0.0
                v[d, j] = z if (L[d, j] >= 0 or not relu[j]) else 0.0


def _adam(P, G, m, v, lr, top, c1, c2):
    # m, v: Adam's moments (0.9, 0.999); P += lr m^ / (sqrt(v^) + 1e-8), clipped to [0, top].  A parameter
    # whose gradient and first moment are 0 (a stable neuron's slope, an unsplit neuron's multiplier: most
    # of them) would move by exactly 0: skipped, which saves the square root and division
    D, n = P.shape
    for d in range(D):
        for j in range(n):
            g = G[d, j]
            if g == 0.0 and m[d, j] == 0.0:
                v[d, j] *= 0.999
                P[d, j] = min(max(P[d, j], 0.0), top)
                continue
            mm = 0.9 * m[d, j] + 0.1 * g
            vv = 0.999 * v[d, j] + 0.001 * g * g
            m[d, j], v[d, j] = mm, vv
            p = P[d, j] + lr * (mm / c1) / (np.sqrt(vv / c2) + 1e-8)
            P[d, j] = min(max(p, 0.0), top)


@functools.cache
def loops() -> tuple | None:
    """The compiled (back, fwd, adam) loops, or None without numba."""
    return jit_all(_back, _fwd, _adam)


def wanted(domains: int, widths: list) -> tuple | None:
    """The loops for a search over `domains` domains of a chain with these hidden widths, when they pay."""
    if loops.cache_info().currsize == 0 and domains * sum(widths) < FUSED_MIN:
        return None
    return loops()
