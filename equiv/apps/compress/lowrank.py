"""ALDS-style low rank: per-layer ranks that minimise the largest relative error for a parameter budget.

Eckart-Young-Mirsky: the best rank-r approximation of W (in the spectral and the Frobenius norm) is
the truncated SVD, and its spectral error is exactly the (r+1)-th singular value.  So each layer's
relative error for every rank, ``e(r) = s_{r+1} / s_1``, is known from one SVD, and the allocation is
a discrete min-max problem: for a threshold t, each layer's cheapest rank with ``e(r) <= t`` is the
smallest such r (cost grows with r), so the optimum is the smallest candidate t whose cheapest
choice fits the budget -- found by bisection over the sorted candidate errors.

A factored dense layer is two Gemms, ``h -> V h -> U (V h) + b``, costing r (m + n) weights instead
of m n; where that does not pay (r (m + n) >= m n) the layer keeps its original matrix ("full").
Data-aware variant (the default in `equiv compress`): what matters on a small region is the error on the
layer inputs that occur there, not on every unit vector.  With H the sampled inputs of a layer, mean mu and
second moment of H - mu equal to L L^T (Cholesky), the output error ``(W - W_r)(h - mu)`` has mean square
``||(W - W_r) L||_F^2``, so Eckart-Young applied to ``A = W L`` gives the best rank r for those inputs
(``W_r = A_r L^{-1}``), and the bias absorbs the mean (``b += (W - W_r) mu``).  The allocation is the same
min-max, over the singular values of ``W L``.

Channel groups (ALDS splits a layer's input channels into groups, each factored on its own) are not
used for dense layers: one group.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LayerSpectrum:
    """One layer's shape and singular values (descending)."""

    m: int          # outputs
    n: int          # inputs
    s: np.ndarray   # singular values, length min(m, n)

    @property
    def full_rank(self) -> int:
        return int(self.s.size)

    def error(self, r: int) -> float:
        """Relative spectral error of the best rank-r approximation: s_{r+1} / s_1 (0 at full rank)."""
        if r >= self.s.size or self.s[0] <= 0:
            return 0.0
        return float(self.s[r] / self.s[0])

    def cost(self, r: int) -> int:
        """Weights stored at rank r: r (m + n) factored, or m n when factoring does not pay."""
        return min(r * (self.m + self.n), self.m * self.n) if r < self.full_rank else self.m * self.n

    def cheapest_rank(self, t: float) -> int:
        """Smallest rank whose relative error is at most t."""
        for r in range(self.full_rank + 1):
            if self.error(r) <= t:
                return r
        return self.full_rank


def spectrum(W: np.ndarray) -> LayerSpectrum:
    return LayerSpectrum(W.shape[0], W.shape[1], np.linalg.svd(np.asarray(W, float), compute_uv=False))


@dataclass(frozen=True)
class Option:
    """One way to store a layer: its weight count, its relative error, and what to build (a rank, groups...)."""

    cost: int
    error: float
    choice: object = None


def allocate(layers: list[list[Option]], budget: float) -> tuple[list[Option], float]:
    """One option per layer minimising the largest error subject to total cost <= budget (the ALDS min-max).

    For a threshold t each layer's best option is its cheapest with error <= t (ties: the smaller error), and
    the total cost of that choice never grows with t; so the optimum is the smallest candidate t (one of the
    options' errors) whose choice fits, found by bisection.  When nothing fits, the cheapest options are
    returned (the caller sees the cost).  Every layer needs an option of error 0 (keeping it whole)."""
    floor = max(min(o.error for o in opts) for opts in layers) if layers else 0.0
    cands = sorted({o.error for opts in layers for o in opts if o.error >= floor} | {floor})

    def choice(t):
        picked = [min((o for o in opts if o.error <= t), key=lambda o: (o.cost, o.error)) for opts in layers]
        return picked, sum(o.cost for o in picked)

    lo, hi = 0, len(cands) - 1
    if choice(cands[hi])[1] > budget:
        lo = hi                      # nothing fits: the cheapest choice
    while lo < hi:
        mid = (lo + hi) // 2
        if choice(cands[mid])[1] <= budget:
            hi = mid
        else:
            lo = mid + 1
    picked, _ = choice(cands[lo])
    return picked, max((o.error for o in picked), default=0.0)


def allocate_ranks(layers: list[LayerSpectrum], budget: float, min_rank: int = 1) -> tuple[list[int], float]:
    """Ranks (one per layer) minimising max relative error subject to sum of costs <= budget (weights).

    Returns (ranks, the achieved maximum error).  When even the lowest ranks exceed the budget, the
    lowest ranks are returned (the caller sees the cost).  A rank equal to the full rank means "keep";
    a rank that costs as much as the whole layer is never chosen (keeping it is as cheap and exact).
    """
    options = [[Option(L.cost(r), L.error(r), r) for r in range(min(min_rank, L.full_rank), L.full_rank + 1)]
               for L in layers]
    picked, err = allocate(options, budget)
    return [o.choice for o in picked], err


def truncate(W: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray]:
    """(U, V) with U V the best rank-r approximation of W; U is (m, r), V is (r, n)."""
    u, s, vt = np.linalg.svd(np.asarray(W, float), full_matrices=False)
    root = np.sqrt(s[:r])
    return u[:, :r] * root, root[:, None] * vt[:r]


@dataclass(frozen=True)
class Whitening:
    """Mean and Cholesky factor of the centred second moment of one layer's sampled inputs."""

    mu: np.ndarray
    L: np.ndarray


def whitening(H: np.ndarray, ridge: float = 1e-8) -> Whitening:
    """From sampled inputs H (n, in): the mean and L with L L^T = cov(H) + ridge * (trace / in) I."""
    H = np.asarray(H, float)
    mu = H.mean(axis=0)
    C = (H - mu).T @ (H - mu) / max(1, H.shape[0])
    C += (ridge * max(np.trace(C) / C.shape[0], 1e-12)) * np.eye(C.shape[0])
    return Whitening(mu, np.linalg.cholesky(C))


def spectrum_on(W: np.ndarray, w: Whitening) -> LayerSpectrum:
    """The spectrum that rules the error on the sampled inputs: singular values of W L."""
    return spectrum(np.asarray(W, float) @ w.L)


def truncate_on(W: np.ndarray, b: np.ndarray, r: int, w: Whitening) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(U, V, b') with U V the rank-r map best on the sampled inputs (mean-square) and b' the corrected bias."""
    A = np.asarray(W, float) @ w.L
    u, s, vt = np.linalg.svd(A, full_matrices=False)
    root = np.sqrt(s[:r])
    U = u[:, :r] * root
    V = np.linalg.solve(w.L.T, (root[:, None] * vt[:r]).T).T      # (S^1/2 Q^T) L^-1
    return U, V, np.asarray(b, float) + (W - U @ V) @ w.mu
