"""Fused loops (numba) for the two activation steps of a back-substitution (`relax.relu_step`,
`relax.diff_step`): one pass over the coefficients instead of the five to ten array passes of numpy.

On the boxes of `equiv check` (ACAS Xu against its float16 copy: coefficient arrays of 128 boxes x 100
rows x 50 neurons) these steps were half the time of a bound.  The arithmetic is numpy's up to the order
of summation in the intercepts (which the engine's outward rounding and term margin cover): each
coefficient takes the upper line of its activation when positive and the lower line otherwise.
numba is imported and the loops loaded only when an array is large enough to pay for it (`worth`); without
numba, or with EQUIV_NO_NUMBA=1, the numpy steps are used.
"""

from __future__ import annotations

import functools
import os

import numpy as np

FUSED_MIN = 100_000     # coefficients per step from which the loops are loaded (about 0.3 s, once per process)
FUSED_LOADED_MIN = 0    # ... and from which they are used once loaded


def _relu_loop(a, sl, gap, tu, out, c):
    # out[i, r, k] = a sl + max(a, 0) (su - sl): the upper line where a > 0, the lower one elsewhere;
    # c[i, r] = max(a, 0) . tu.  Written without branches so that the loops vectorise.
    n, R, K = a.shape
    N = sl.shape[0]
    for i in range(N):
        ia = i if n > 1 else 0
        for r in range(R):
            s = 0.0
            for k in range(K):
                v = a[ia, r, k]
                p = max(v, 0.0)
                out[i, r, k] = v * sl[i, k] + p * gap[i, k]
                s += p * tu[i, k]
            c[i, r] = s


def _diff_loop(a, Pl, Ql, Rl, Pu, Qu, Ru, a_dz, a_zg, c, m):
    # each coefficient of dh takes the upper line (Pu dz + Qu z_g + Ru) when positive, else the lower one;
    # m sums the sizes |a R| of the intercept terms (for the rounding margin)
    n, R, K = a.shape
    N = Pl.shape[0]
    for i in range(N):
        ia = i if n > 1 else 0
        for r in range(R):
            s = 0.0
            t = 0.0
            for k in range(K):
                v = a[ia, r, k]
                if v > 0:
                    a_dz[i, r, k] = v * Pu[i, k]
                    a_zg[i, r, k] = v * Qu[i, k]
                    w = v * Ru[i, k]
                else:
                    a_dz[i, r, k] = v * Pl[i, k]
                    a_zg[i, r, k] = v * Ql[i, k]
                    w = v * Rl[i, k]
                s += w
                t += abs(w)
            c[i, r] = s
            m[i, r] = t


def jit_all(*funcs) -> tuple | None:
    """Each function compiled by numba (loaded from numba's on-disk cache, else compiled, about a second),
    or None without numba or with EQUIV_NO_NUMBA=1."""
    if os.environ.get("EQUIV_NO_NUMBA"):
        return None
    try:
        from numba import njit
    except ImportError:     # pragma: no cover - numba is a dependency; this keeps numpy alone working
        return None
    # reassoc: sums may be vectorised (any order is as good: the engine's outward rounding and margin on
    # the size of the terms cover it); products and signs are untouched
    try:
        jit = njit(cache=True, nogil=True, fastmath={"reassoc"})
        return tuple(jit(f) for f in funcs)
    except RuntimeError:    # pragma: no cover - no writable cache directory: compile in memory
        jit = njit(nogil=True, fastmath={"reassoc"})
        return tuple(jit(f) for f in funcs)


@functools.cache
def compiled() -> tuple | None:
    """The compiled loops (relu, diff), or None without numba; loaded on first use."""
    return jit_all(_relu_loop, _diff_loop)


def worth(N: int, a: np.ndarray) -> bool:
    """Whether a step from coefficients a (n, R, K) on N boxes should use the loops: a large one, or any
    once they are loaded (they beat numpy's several calls at every size).  The loops take n = 1 or N only
    (numpy broadcasts the rest, e.g. one box's lines under many coefficient arrays)."""
    if a.ndim != 3 or a.shape[0] not in (1, N):
        return False
    loaded = compiled.cache_info().currsize > 0
    size = N * a.shape[1] * a.shape[2]
    return size >= (FUSED_LOADED_MIN if loaded else FUSED_MIN) and compiled() is not None


def relu_fused(a: np.ndarray, sl: np.ndarray, gap: np.ndarray, tu: np.ndarray):
    """Coefficients (N, R, K) of z and intercepts (N, R) from those of h = relu(z), a (n, R, K) with n 1 or
    N; the lines sl z <= h <= (sl + gap) z + tu given as (N, K) arrays."""
    N, K = sl.shape
    out = np.empty((N, a.shape[1], K))
    c = np.empty((N, a.shape[1]))
    compiled()[0](np.ascontiguousarray(a, np.float64), sl, gap, tu, out, c)
    return out, c


def diff_fused(a: np.ndarray, lines: tuple):
    """Coefficients (N, R, K) of dz and of z_g, intercepts (N, R) and their sizes (N, R) from those of dh
    (a (n, R, K)); lines (Pl, Ql, Rl, Pu, Qu, Ru), each (N, K)."""
    N, K = lines[0].shape
    R = a.shape[1]
    a_dz, a_zg = np.empty((N, R, K)), np.empty((N, R, K))
    c, m = np.empty((N, R)), np.empty((N, R))
    compiled()[1](np.ascontiguousarray(a, np.float64), *lines, a_dz, a_zg, c, m)
    return a_dz, a_zg, c, m
