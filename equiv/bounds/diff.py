"""Bounds on the difference of two aligned networks, neuron by neuron (ReluDiff / NeuroDiff style).

For networks f and g of the same widths, write dz_k = z_f,k - z_g,k and dh_k = h_f,k - h_g,k.  Then

    dz_k = W_f,k dh_{k-1} + (W_f,k - W_g,k) h_g,{k-1} + (b_f,k - b_g,k),     dh_{-1} = 0 (shared input),

so when f and g are close (a float16 copy, a pruned copy) dz is small and bounds on it are far
tighter than the difference of separate bounds on f and g.  Bounds come from back-substitution in
the variables (dh, h_g) (DeepPoly on the difference):

* h_g = act(z_g) is relaxed as in DeepPoly: a_l z_g <= h_g <= a_u z_g + t_u;
* dh = act_f(z_g + dz) - act_g(z_g) is relaxed by lines in (dz, z_g): either the difference of the two
  DeepPoly relaxations (exact whenever one of the two neurons is stable), or, for a ReLU pair
  unstable in both, the "delta-only" lines: ReLU is monotone and 1-Lipschitz, so dh lies between
  min(dz, 0) and max(dz, 0), and over dz in [dl, du] the chords of these give
      dl (du - dz)/(du - dl) ... i.e.  -dl/(du-dl) (dz - du) <= dh <= du/(du-dl) (dz - dl).
  Per neuron the relaxation with the smaller gap is used.

Everything is batched over N boxes (leading axis) so that input splitting bounds many boxes per call.
Bounds are rounded outward like all others in equiv.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..prove.align import AlignedPair
from .batch import deeppoly_boxes
from .common import outward
from .deeppoly import relaxation


@dataclass
class PairBounds:
    """Per dense layer (last: output), (N, width) bounds of z_f, z_g and dz = z_f - z_g on N boxes."""

    f_lo: list
    f_hi: list
    g_lo: list
    g_hi: list
    d_lo: list
    d_hi: list
    rel: list          # per hidden layer: the relaxation arrays used for back-substitution
    lo: np.ndarray     # the boxes
    hi: np.ndarray

    def take(self, idx) -> "PairBounds":
        """The bounds of a subset of the boxes, without the relaxations (kept as known bounds for
        sub-boxes, so they should be small: a splitting run may hold many thousands)."""
        pick = lambda L: [a[idx] for a in L]  # noqa: E731
        return PairBounds(pick(self.f_lo), pick(self.f_hi), pick(self.g_lo), pick(self.g_hi), pick(self.d_lo),
                          pick(self.d_hi), [], self.lo[idx], self.hi[idx])

    @property
    def out_diff(self) -> tuple[np.ndarray, np.ndarray]:
        """(N, n_out) bounds of f(x) - g(x)."""
        return self.d_lo[-1], self.d_hi[-1]


def _relax_pair(flo, fhi, glo, ghi, dlo, dhi, mf, mg):
    """Lines  Pl dz + Ql z_g + Rl <= dh <= Pu dz + Qu z_g + Ru  and g's DeepPoly lines, per neuron."""
    alf, auf, tuf = relaxation(flo, fhi, mf)
    alg, aug, tug = relaxation(glo, ghi, mg)
    # difference of the two relaxations, with z_f = z_g + dz
    Pu, Qu, Ru = auf, auf - alg, tuf
    Pl, Ql, Rl = alf, alf - aug, -tug
    both = mf & mg & (flo < 0) & (fhi > 0) & (glo < 0) & (ghi > 0)
    if both.any():
        with np.errstate(divide="ignore", invalid="ignore"):
            span = dhi - dlo
            cross = (dlo < 0) & (dhi > 0)
            su = np.where(cross, dhi / span, np.where(dlo >= 0, 1.0, 0.0))
            ru = np.where(cross, -su * dlo, 0.0)
            sl = np.where(cross, -dlo / span, np.where(dhi <= 0, 1.0, 0.0))
            rl = np.where(cross, -sl * dhi, 0.0)
            gap_delta = np.where(cross, dhi * -dlo / span, 0.0)
            gap_naive = fhi * -flo / (fhi - flo) + ghi * -glo / (ghi - glo)
        use = both & (gap_delta < gap_naive)
        Pu, Qu, Ru = np.where(use, su, Pu), np.where(use, 0.0, Qu), np.where(use, ru, Ru)
        Pl, Ql, Rl = np.where(use, sl, Pl), np.where(use, 0.0, Ql), np.where(use, rl, Rl)
    return Pl, Ql, Rl, Pu, Qu, Ru, alg, aug, tug


def backsubstitute_pair(pair: AlignedPair, rel: list, k: int, Ed: np.ndarray, Eg: np.ndarray, c: np.ndarray,
                        lo: np.ndarray, hi: np.ndarray, return_coef: bool = False):
    """Lower and upper bounds of  Ed . dz_k + Eg . z_g,k + c  on each box.

    Ed, Eg: (N, r, width_k) coefficients, c: (N, r).  rel holds the relaxations of hidden layers < k.
    Returns ((N, r) lower, (N, r) upper), rounded outward; with return_coef also the input-space
    coefficients (N, r, dim) of the lower and upper linear bounds (to choose a dimension to split).
    """
    f, g = pair.f.dense, pair.g.dense
    Edu, Egu, cu = Ed, Eg, c.copy()
    Edl, Egl, cl = Ed, Eg, c.copy()
    scale = np.abs(c).copy()      # magnitude of the terms summed, for a rounding margin
    for j in range(k, -1, -1):
        dW, db = f[j].W - g[j].W, f[j].b - g[j].b
        # through dense layer j: coefficients on (dh_{j-1}, h_g,{j-1}) (on x when j == 0)
        cu += Edu @ db + Egu @ g[j].b
        cl += Edl @ db + Egl @ g[j].b
        scale += np.abs(Edu) @ np.abs(db) + np.abs(Egu) @ np.abs(g[j].b)
        if j == 0:
            Au = Edu @ dW + Egu @ g[0].W
            Al = Edl @ dW + Egl @ g[0].W
            break
        Cdu, Cgu = Edu @ f[j].W, Edu @ dW + Egu @ g[j].W
        Cdl, Cgl = Edl @ f[j].W, Edl @ dW + Egl @ g[j].W
        Pl, Ql, Rl, Pu, Qu, Ru, alg, aug, tug = (a[:, None, :] for a in rel[j - 1])
        # upper bound: positive coefficients take the upper line, negative ones the lower line
        p, n, pg, ng = np.maximum(Cdu, 0), np.minimum(Cdu, 0), np.maximum(Cgu, 0), np.minimum(Cgu, 0)
        cu += (p * Ru + n * Rl + pg * tug).sum(axis=2)
        Edu = p * Pu + n * Pl
        Egu = p * Qu + n * Ql + pg * aug + ng * alg
        scale += (np.abs(p * Ru) + np.abs(n * Rl) + np.abs(pg * tug)).sum(axis=2)
        # lower bound: the other way round
        p, n, pg, ng = np.maximum(Cdl, 0), np.minimum(Cdl, 0), np.maximum(Cgl, 0), np.minimum(Cgl, 0)
        cl += (p * Rl + n * Ru + ng * tug).sum(axis=2)
        Edl = p * Pl + n * Pu
        Egl = p * Ql + n * Qu + pg * alg + ng * aug
    centre, radius = (lo + hi) / 2, (hi - lo) / 2
    up = np.einsum("nri,ni->nr", Au, centre) + np.einsum("nri,ni->nr", np.abs(Au), radius) + cu
    low = np.einsum("nri,ni->nr", Al, centre) - np.einsum("nri,ni->nr", np.abs(Al), radius) + cl
    # the terms summed can be much larger than the result: widen by a relative margin on their size
    mag = np.einsum("nri,ni->nr", np.abs(Au) + np.abs(Al), np.abs(centre) + radius) + scale
    low, up = outward(low - 1e-12 * mag, up + 1e-12 * mag)
    return (low, up, Al, Au) if return_coef else (low, up)


def pair_bounds(pair: AlignedPair, lo: np.ndarray, hi: np.ndarray, known: PairBounds | None = None) -> PairBounds:
    """Bounds of z_f, z_g and z_f - z_g for every dense layer on each box [lo[n], hi[n]].

    `known` (e.g. the parent boxes' bounds, row n for box n) is intersected in; it must be sound on
    each box.  g gets its batched DeepPoly bounds first, and f too unless the two have the same shape
    (then f's bounds are interval bounds tightened by z_g + dz, nearly as good for close networks at
    half the cost); the difference is then bounded layer by layer, and each layer's three bounds
    tighten each other (z_f = z_g + dz).
    """
    lo, hi = np.atleast_2d(lo).astype(float), np.atleast_2d(hi).astype(float)
    N = lo.shape[0]
    L = len(pair.f.dense)
    widths = [d.n_out for d in pair.f.dense]
    inf = [np.full(w, np.inf) for w in widths]
    kf = (known.f_lo, known.f_hi) if known else ([-a for a in inf], inf)
    kg = (known.g_lo, known.g_hi) if known else ([-a for a in inf], inf)
    g_lo, g_hi, _ = deeppoly_boxes(pair.g, lo, hi, *kg)
    own_f = not pair.same_shape
    if own_f:
        f_lo, f_hi, _ = deeppoly_boxes(pair.f, lo, hi, *kf)
    else:
        f_lo, f_hi = [None] * L, [None] * L
    prev_lo, prev_hi = lo, hi          # f's activation bounds of the previous layer (interval route)
    # padding slots compute z = 0 exactly
    for k, (fp, gp) in enumerate(zip(pair.f_pad, pair.g_pad)):
        if own_f:            # (a same-shape pair has no padding)
            f_lo[k][:, fp], f_hi[k][:, fp] = 0.0, 0.0
        g_lo[k][:, gp], g_hi[k][:, gp] = 0.0, 0.0
    d_lo, d_hi, rel = [], [], []
    for k in range(L):
        w = widths[k]
        if not own_f:
            W, b = pair.f.dense[k].W, pair.f.dense[k].b
            c, r = (prev_lo + prev_hi) / 2, (prev_hi - prev_lo) / 2
            mid, rad = c @ W.T + b, r @ np.abs(W).T
            il, iu = outward(mid - rad, mid + rad)
            f_lo[k], f_hi[k] = np.maximum(il, kf[0][k]), np.minimum(iu, kf[1][k])
        dl, du = f_lo[k] - g_hi[k], f_hi[k] - g_lo[k]
        # back-substitute the rows whose relaxation depends on the difference bound: a neuron stable
        # in both networks on every box has an exact relaxation whatever dz is (output rows: always)
        if k < L - 1:
            open_ = (pair.f.masks[k] & (f_lo[k] < 0) & (f_hi[k] > 0)) | (pair.g.masks[k] & (g_lo[k] < 0) & (g_hi[k] > 0))
            rows = np.flatnonzero(open_.any(axis=0))
        else:
            rows = np.arange(w)
        if rows.size:
            E = np.broadcast_to(np.eye(w)[rows], (N, rows.size, w))
            bl, bu = backsubstitute_pair(pair, rel, k, E, np.zeros((N, rows.size, w)), np.zeros((N, rows.size)), lo, hi)
            dl[:, rows], du[:, rows] = np.maximum(dl[:, rows], bl), np.minimum(du[:, rows], bu)
        if known is not None:
            dl, du = np.maximum(dl, known.d_lo[k]), np.minimum(du, known.d_hi[k])
        # z_f = z_g + dz and z_g = z_f - dz
        f_lo[k], f_hi[k] = np.maximum(f_lo[k], g_lo[k] + dl), np.minimum(f_hi[k], g_hi[k] + du)
        g_lo[k], g_hi[k] = np.maximum(g_lo[k], f_lo[k] - du), np.minimum(g_hi[k], f_hi[k] - dl)
        d_lo.append(dl)
        d_hi.append(du)
        if k < L - 1:
            m = pair.f.masks[k]
            prev_lo = np.where(m, np.maximum(f_lo[k], 0), f_lo[k])
            prev_hi = np.where(m, np.maximum(f_hi[k], 0), f_hi[k])
            rel.append(_relax_pair(f_lo[k], f_hi[k], g_lo[k], g_hi[k], dl, du,
                                   pair.f.masks[k][None], pair.g.masks[k][None]))
    return PairBounds(f_lo, f_hi, g_lo, g_hi, d_lo, d_hi, rel, lo, hi)


def output_bounds(pair: AlignedPair, pb: PairBounds, C: np.ndarray, which: str, return_coef: bool = False):
    """Bounds of C @ f(x) (which="f"), C @ g(x) ("g") or C @ (f(x) - g(x)) ("d") on each box, through
    the pair's relaxations.  In the variables (dz, z_g): f = dz + z_g, g = z_g, f - g = dz.
    """
    N, k = pb.lo.shape[0], len(pair.f.dense) - 1
    Cb = np.broadcast_to(C, (N,) + C.shape)
    zero = np.zeros_like(Cb)
    Ed, Eg = {"f": (Cb, Cb), "g": (zero, Cb), "d": (Cb, zero)}[which]
    return backsubstitute_pair(pair, pb.rel, k, Ed, Eg, np.zeros((N, C.shape[0])), pb.lo, pb.hi, return_coef)


def dh_bounds(pb: PairBounds, pair: AlignedPair, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, width) bounds of dh_k = act_f(z_f) - act_g(z_g) for hidden layer k (for MILP cuts)."""
    mf, mg = pair.f.masks[k], pair.g.masks[k]
    hf_lo = np.where(mf, np.maximum(pb.f_lo[k], 0), pb.f_lo[k])
    hf_hi = np.where(mf, np.maximum(pb.f_hi[k], 0), pb.f_hi[k])
    hg_lo = np.where(mg, np.maximum(pb.g_lo[k], 0), pb.g_lo[k])
    hg_hi = np.where(mg, np.maximum(pb.g_hi[k], 0), pb.g_hi[k])
    lo, hi = hf_lo - hg_hi, hf_hi - hg_lo
    # same activation on both sides: monotone and 1-Lipschitz, so dh lies between min(dz,0) and max(dz,0)
    same = mf == mg
    lin = ~mf & ~mg
    lo = np.where(same, np.maximum(lo, np.where(lin, pb.d_lo[k], np.minimum(pb.d_lo[k], 0))), lo)
    hi = np.where(same, np.minimum(hi, np.where(lin, pb.d_hi[k], np.maximum(pb.d_hi[k], 0))), hi)
    return outward(lo, hi)
