"""DeepSplit's operator splitting for the triangle-relaxation LP of a dense ReLU chain, batched over many
objectives, with a certified bound at every check.

The LP:  max c.y_L + c0  over  y_0 in the box,  x_k = W_k y_{k-1} + b_k,  (x_kj, y_kj) in S_kj,
where S_kj is neuron j's relaxation under its bounds l <= x <= u: the triangle (l,0), (0,0), (u,u) for an
unstable ReLU, the segment y = x for an active one (or a linear channel), y = 0 for a dead one.

ADMM splits it into affine blocks (y^_{k-1}, x^_k) with x^_k = W_k y^_{k-1} + b_k, whose projection is one
product with the fixed (I + W^T W)^-1, and activation blocks (x_k, y_k) in S_k, whose projection is a 2-d
projection per neuron; consensus x^ = x, y^ = y.  Every objective shares each step's matrix products.

The certificate (why an early stop still proves a bound): for ANY multipliers lam_k of the rows
x_k = W_k y_{k-1} + b_k, weak duality over the sets S and the box gives
    max  <=  c0 + sum_k lam_k.b_k + sum_j max_{y_0j in box} (W_1^T lam_1)_j y_0j
                 + sum_k sum_j max_{(x, y) in S_kj} (-lam_kj x + mu_kj y),     mu_k = W_{k+1}^T lam_{k+1}, mu_L = c,
and a linear function's max over a polygon is its max over the vertices.  The multipliers come from the
ADMM duals (lam = -rho u), and from back-substitution with the slopes those duals (or the iterate) pick;
the smallest value is kept.  Its floating-point error is bounded and added (`lagrangian_bound`).
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import numpy as np

from ..bounds.kernels import jit_all
from .base import SolveResult, Status

TRIANGLE, IDENTITY, ZERO = 0, 1, 2      # kinds of S_kj
EPS = np.finfo(np.float64).eps / 2      # unit roundoff


@dataclass
class ChainRelaxation:
    """The triangle relaxation of hidden layers 1..L of a dense ReLU chain over a box (float64 arrays)."""

    W: list            # W[k]: (n_k, n_{k-1}), the dense layer feeding hidden layer k + 1
    b: list
    lo: list           # pre-activation bounds of hidden layer k + 1 (sound for the network)
    hi: list
    kind: list         # TRIANGLE / IDENTITY / ZERO per neuron
    box_lo: np.ndarray
    box_hi: np.ndarray

    @classmethod
    def from_network(cls, net, box, bounds, depth: int) -> "ChainRelaxation":
        """Layers 1..depth of `net` (a chain) with pre-activation `bounds`: objectives then live on the input
        of dense layer `depth` (0-based), as in `encode_network(net, box, bounds, depth)`."""
        W = [np.asarray(net.dense[k].W, np.float64) for k in range(depth)]
        b = [np.asarray(net.dense[k].b, np.float64) for k in range(depth)]
        lo = [np.asarray(bounds.lo[k], np.float64) for k in range(depth)]
        hi = [np.asarray(bounds.hi[k], np.float64) for k in range(depth)]
        kind = [np.where(~net.masks[k] | (lo[k] >= 0), IDENTITY, np.where(hi[k] <= 0, ZERO, TRIANGLE)).astype(np.int64)
                for k in range(depth)]
        return cls(W, b, lo, hi, kind, np.asarray(box.lo, np.float64), np.asarray(box.hi, np.float64))

    @property
    def depth(self) -> int:
        return len(self.W)


def _project_loop(PX, PY, lo, hi, kind, OX, OY):
    # the nearest point of S_j to (PX, PY), per neuron j and objective: inside the triangle the point
    # itself, else the nearest of the projections on its edges (each a clamped segment projection)
    n, K = PX.shape
    for j in range(n):
        l, u, kd = lo[j], hi[j], kind[j]
        if kd == 0:
            e = ((l, 0.0, 0.0, 0.0), (0.0, 0.0, u, u), (u, u, l, 0.0))
        elif kd == 1:
            e = ((l, l, u, u), (l, l, u, u), (l, l, u, u))
        else:
            e = ((l, 0.0, u, 0.0), (l, 0.0, u, 0.0), (l, 0.0, u, 0.0))
        for k in range(K):
            px, py = PX[j, k], PY[j, k]
            if kd == 0 and py >= 0.0 and py >= px and (u - l) * py <= u * (px - l):
                OX[j, k], OY[j, k] = px, py
                continue
            best = np.inf
            for s in range(3):
                ax, ay, bx, by = e[s]
                dx, dy = bx - ax, by - ay
                d2 = dx * dx + dy * dy
                t = 0.0
                if d2 > 0.0:
                    t = min(1.0, max(0.0, ((px - ax) * dx + (py - ay) * dy) / d2))
                qx, qy = ax + t * dx, ay + t * dy
                dist = (px - qx) ** 2 + (py - qy) ** 2
                if dist < best:
                    best, OX[j, k], OY[j, k] = dist, qx, qy


@functools.cache
def _projector():
    """The projection loop compiled by numba, or the plain Python loop (slow) without it."""
    fs = jit_all(_project_loop)
    return fs[0] if fs is not None else _project_loop


def lagrangian_bound(rel: ChainRelaxation, C: np.ndarray, c0: np.ndarray, lams: list) -> np.ndarray:
    """Certified upper bounds on max C[:, q].y_L + c0[q] over the relaxation, one per column, from the
    multipliers lams[k] (n_k, K) of the rows of layer k (weak duality, module docstring).

    Rounding: each mu = W^T lam is off by at most gamma_n (|W|^T |lam|) (Higham), which moves a vertex
    value by at most that times the largest |y| of the set; every product and sum adds at most gamma_N of
    the total size of the terms.  Both are added, doubled."""
    L, K = rel.depth, C.shape[1]
    total = np.asarray(c0, np.float64).copy()
    size = np.abs(total)
    err = np.zeros(K)
    for k in range(L):
        t = rel.b[k] @ lams[k]
        total += t
        size += np.abs(rel.b[k]) @ np.abs(lams[k])
    # the input box: the first layer's multipliers reach y_0 through W_1
    mu = rel.W[0].T @ lams[0]
    ymax = np.maximum(np.abs(rel.box_lo), np.abs(rel.box_hi))
    err += _gamma(rel.W[0].shape[0]) * (ymax @ (np.abs(rel.W[0]).T @ np.abs(lams[0])))
    t = np.maximum(mu * rel.box_lo[:, None], mu * rel.box_hi[:, None])
    total += t.sum(axis=0)
    size += (np.abs(mu) * ymax[:, None]).sum(axis=0)     # both corners' sizes: rounding may flip the max
    for k in range(L):
        lam, l, u, kd = lams[k], rel.lo[k][:, None], rel.hi[k][:, None], rel.kind[k][:, None]
        if k == L - 1:
            mu = C
        else:
            mu = rel.W[k + 1].T @ lams[k + 1]
            ymax = np.maximum(np.abs(rel.lo[k]), np.abs(rel.hi[k]))
            err += _gamma(rel.W[k + 1].shape[0]) * (ymax @ (np.abs(rel.W[k + 1]).T @ np.abs(lams[k + 1])))
        ident = kd == IDENTITY
        # vertices: (l, l or 0), (u, u or 0), and (0, 0) for a triangle
        v_l = -lam * l + np.where(ident, mu * l, 0.0)
        v_u = -lam * u + np.where(kd == ZERO, 0.0, mu * u)
        t = np.maximum(np.maximum(v_l, v_u), np.where(kd == TRIANGLE, 0.0, -np.inf))
        total += t.sum(axis=0)
        size += (np.abs(lam) * np.maximum(np.abs(l), np.abs(u)) + np.abs(mu) * np.maximum(np.abs(l), np.abs(u))).sum(axis=0)
    n_terms = sum(w.shape[0] + w.shape[1] for w in rel.W) + 4
    bound = total + 2.0 * (err + _gamma(n_terms) * size) + 1e-300
    return np.where(np.isnan(bound), np.inf, bound)


def _scaled(rel: ChainRelaxation) -> tuple[ChainRelaxation, list]:
    """The relaxation in units of each neuron's bound width s (x' = x / s, y' = y / s): every variable then
    ranges over about [-1, 1], which ADMM's single penalty per objective needs (on ACAS Xu, whose layers'
    widths differ by orders of magnitude, unscaled ADMM did not reach 1e-3 in 5000 iterations).  The sets
    S scale with their neuron, so they stay triangles and segments."""
    def width(lo, hi):
        w = hi - lo
        top = float(w.max(initial=0.0))
        return np.where(w > 1e-6 * top, w, max(1e-6 * top, 1e-12))
    s = [width(rel.box_lo, rel.box_hi)] + [width(l, h) for l, h in zip(rel.lo, rel.hi)]
    W = [(1.0 / s[k + 1])[:, None] * rel.W[k] * s[k][None, :] for k in range(rel.depth)]
    out = ChainRelaxation(W, [rel.b[k] / s[k + 1] for k in range(rel.depth)],
                          [rel.lo[k] / s[k + 1] for k in range(rel.depth)],
                          [rel.hi[k] / s[k + 1] for k in range(rel.depth)],
                          rel.kind, rel.box_lo / s[0], rel.box_hi / s[0])
    return out, s


def _gamma(n: int) -> float:
    """Higham's gamma_n = n u / (1 - n u): the relative error bound of an n-term float sum of products."""
    return n * EPS / (1.0 - n * EPS)


def slope_multipliers(rel: ChainRelaxation, C: np.ndarray, alphas: list) -> list:
    """Multipliers of back-substitution from the objectives C: a neuron whose coefficient mu is positive
    takes its upper line (slope u / (u - l)), a negative one the lower slope alphas[k] in [0, 1] (0: y >= 0,
    1: y >= x).  With the slopes of the LP optimum this is an optimal dual (Salman et al. 2019)."""
    lams = [None] * rel.depth
    mu = C
    for k in range(rel.depth - 1, -1, -1):
        l, u, kd = rel.lo[k][:, None], rel.hi[k][:, None], rel.kind[k][:, None]
        tri = kd == TRIANGLE
        upper = np.where(tri, u / np.where(tri, u - l, 1.0), np.where(kd == IDENTITY, 1.0, 0.0))
        lower = np.where(tri, alphas[k], upper)
        lams[k] = np.where(mu > 0, upper * mu, lower * mu)
        mu = rel.W[k].T @ lams[k]
    return lams


class ChainAdmm:
    """ADMM on a ChainRelaxation: many objectives per step, each with its own penalty rho (rho only scales
    its objective and duals: the affine projections do not depend on it, so one factorisation serves all)."""

    certified_at_limit = True

    def __init__(self, rel: ChainRelaxation, *, tol: float = 1e-3, max_iter: int = 5000, check_every: int = 25,
                 rho: float = 0.1):
        self.rel, self.tol, self.max_iter, self.check_every, self.rho0 = rel, tol, max_iter, check_every, rho
        t0 = time.perf_counter()
        self.scaled, self.scale = _scaled(rel)
        # projection on {x = W y + b}:  y = (I + W^T W)^-1 (a + W^T (d - b)),  x = W y + b;  with fewer rows
        # than columns the Woodbury form  (I + W^T W)^-1 = I - W^T (I + W W^T)^-1 W  is the smaller inverse
        self.P = []
        for W in self.scaled.W:
            m, n = W.shape
            if m < n:
                self.P.append(("woodbury", np.linalg.inv(np.eye(m) + W @ W.T)))
            else:
                self.P.append(("direct", np.linalg.inv(np.eye(n) + W.T @ W)))
        self.build_seconds = time.perf_counter() - t0

    def _affine(self, k, a, d):
        W, b = self.scaled.W[k], self.scaled.b[k]
        r = a + W.T @ (d - b[:, None])
        form, M = self.P[k]
        y = M @ r if form == "direct" else r - W.T @ (M @ (W @ r))
        return y, W @ y + b[:, None]

    def maximize_many(self, C, offsets, time_limit: float = 60.0) -> list[SolveResult]:
        """max C[q].y_L + offsets[q] for every row q of C (objectives on the last hidden layer's output)."""
        rel, L = self.scaled, self.rel.depth
        t0 = time.perf_counter()
        C_orig = np.ascontiguousarray(np.atleast_2d(np.asarray(C, np.float64)).T)      # (n_L, K)
        C = C_orig * self.scale[L][:, None]                   # the objectives in scaled units
        c0 = np.broadcast_to(np.asarray(offsets, np.float64), (C.shape[1],)).copy()
        K = C.shape[1]
        project = _projector()
        widths = [np.maximum(h - l, 1e-9) for l, h in zip([rel.box_lo] + rel.lo, [rel.box_hi] + rel.hi)]
        # rho: per objective, its size over the typical width of the (scaled) last layer's outputs
        cn = np.abs(C).max(axis=0)
        rho = self.rho0 * np.where(cn > 0, cn, 1.0) / max(float(np.median(widths[-1])), 1e-9)
        shape = lambda n: np.zeros((n, K))
        y = [shape(len(w)) for w in widths]                 # activation blocks (y_0 in the box)
        x = [None] + [shape(len(w)) for w in widths[1:]]
        yh = [shape(len(w)) for w in widths]                # affine blocks
        xh = [None] + [shape(len(w)) for w in widths[1:]]
        v = [shape(len(w)) for w in widths]                 # scaled duals of y^ = y
        u = [None] + [shape(len(w)) for w in widths[1:]]    # ... of x^ = x
        best = np.full(K, np.inf)
        lower = np.full(K, -np.inf)                         # objective of a feasible point
        done = np.zeros(K, bool)
        iters = np.zeros(K, int)
        act = np.arange(K)
        it = 0
        while act.size and it < self.max_iter and time.perf_counter() - t0 < time_limit:
            it += 1
            y[0] = np.clip(yh[0] + v[0], rel.box_lo[:, None], rel.box_hi[:, None])
            for k in range(1, L + 1):
                project(xh[k] + u[k], yh[k] + v[k], rel.lo[k - 1], rel.hi[k - 1], rel.kind[k - 1], x[k], y[k])
            z_old = [a.copy() for a in yh + xh[1:]] if it % self.check_every == 0 else None
            for k in range(1, L + 1):
                yh[k - 1], xh[k] = self._affine(k - 1, y[k - 1] - v[k - 1], x[k] - u[k])
            yh[L] = y[L] - v[L] + C[:, act] / rho
            for k in range(L + 1):
                v[k] += yh[k] - y[k]
            for k in range(1, L + 1):
                u[k] += xh[k] - x[k]
            if it % self.check_every and it < self.max_iter:
                continue
            Ca, ca = C[:, act], c0[act]
            # the scaled rows x'_k = W'_k y'_{k-1} + b'_k are the original ones divided by s_k
            lams = [-rho * u[k] / self.scale[k][:, None] for k in range(1, L + 1)]
            bound = self._certify(C_orig[:, act], ca, lams, x)
            best[act] = np.minimum(best[act], bound)
            # a lower estimate of the optimum: the better of two points built from the two blocks' iterates
            lower[act] = np.maximum.reduce([lower[act], self._feasible_value(Ca, ca, y[0], y[1:]),
                                            self._feasible_value(Ca, ca, yh[0], yh[1:])])
            conv = best[act] - lower[act] <= self.tol * np.maximum(1.0, np.abs(best[act]))
            # residual balancing (Boyd et al. 3.4.1), per objective: rescaling rho rescales its duals
            prim = np.sqrt(sum(((yh[k] - y[k]) ** 2).sum(0) for k in range(L + 1))
                           + sum(((xh[k] - x[k]) ** 2).sum(0) for k in range(1, L + 1)))
            dual = rho * np.sqrt(sum(((a - b) ** 2).sum(0) for a, b in zip(yh + xh[1:], z_old))) if z_old else None
            if dual is not None:
                f = np.where(prim > 10 * dual, 2.0, np.where(dual > 10 * prim, 0.5, 1.0))
                rho = rho * f
                for k in range(L + 1):
                    v[k] /= f
                for k in range(1, L + 1):
                    u[k] /= f
            if conv.any():
                done[act[conv]] = True
                iters[act[conv]] = it
                keep = ~conv
                act, rho = act[keep], rho[keep]
                for arrs in (y, yh, v):
                    arrs[:] = [a[:, keep] for a in arrs]
                for arrs in (x, xh, u):
                    arrs[1:] = [a[:, keep] for a in arrs[1:]]
        secs = (time.perf_counter() - t0) / max(K, 1)
        out = []
        for q in range(K):
            bnd = float(best[q]) if np.isfinite(best[q]) else None
            obj = float(lower[q]) if np.isfinite(lower[q]) else None
            if done[q]:
                out.append(SolveResult(Status.OPTIMAL, bnd, obj, None, secs, message=f"{iters[q]} iterations"))
            else:
                out.append(SolveResult(Status.TIME_LIMIT, bnd, obj, None, secs,
                                       message=f"ADMM stopped after {it} iterations without closing the gap to "
                                               f"{self.tol:g}; the bound is certified (valid), only looser"))
        return out

    def _certify(self, C, c0, lams, x):
        """The smallest certified bound of three multiplier choices: the ADMM duals themselves, and
        back-substitution with the lower slopes they imply (lam / mu) or the iterate's side of 0."""
        rel, L = self.rel, self.rel.depth
        ratio = []
        for k in range(L):
            mu = C if k == L - 1 else rel.W[k + 1].T @ lams[k + 1]
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio.append(np.clip(np.nan_to_num(lams[k] / mu), 0.0, 1.0))
        side = [(x[k + 1] > 0).astype(np.float64) for k in range(L)]
        cands = [lams, slope_multipliers(rel, C, ratio), slope_multipliers(rel, C, side)]
        return np.minimum.reduce([lagrangian_bound(rel, C, c0, m) for m in cands])

    def _feasible_value(self, C, c0, y0, targets):
        """The objective at a point of the relaxation built forward from y0 (clipped to the box): each y_k
        is targets[k] clipped between the lower and upper faces of S_k at x_k = W_k y_{k-1} + b_k.  -inf when x_k left its bounds (clipped): then the point may lie outside
        the relaxation.  Used only to stop (a lower estimate of the optimum), never as a proof."""
        rel = self.scaled
        yk = np.clip(y0, rel.box_lo[:, None], rel.box_hi[:, None])
        ok = np.ones(C.shape[1], bool)
        for k in range(rel.depth):
            xk = rel.W[k] @ yk + rel.b[k][:, None]
            l, u, kd = rel.lo[k][:, None], rel.hi[k][:, None], rel.kind[k][:, None]
            xc = np.clip(xk, l, u)
            ok &= (np.abs(xc - xk) <= 1e-9 * (1.0 + np.abs(xk))).all(axis=0)
            tri = kd == TRIANGLE
            low = np.where(tri, np.maximum(xc, 0.0), np.where(kd == IDENTITY, xc, 0.0))
            up = np.where(tri, np.maximum(u * (xc - l) / np.where(tri, u - l, 1.0), low), low)
            yk = np.clip(targets[k], low, up)
        return np.where(ok, (C * yk).sum(axis=0) + c0, -np.inf)


def neuron_bounds(rel: ChainRelaxation, W: np.ndarray, b: np.ndarray, time_limit: float) -> tuple[list, list]:
    """Max and min of W[i] . y_L + b[i] for every row i, from one ChainAdmm batch: (ups, downs), the SolveResults
    of max z_i and of max -z_i (certified bounds either way)."""
    res = ChainAdmm(rel).maximize_many(np.vstack([W, -W]), np.concatenate([b, -b]), time_limit)
    return res[:len(W)], res[len(W):]
