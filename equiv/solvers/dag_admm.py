"""DeepSplit's operator splitting for the triangle-relaxation LP (`dag_relaxation`: the LP, its groups and the
certificate), batched over many objectives, with a certified bound at every check.

ADMM splits the LP into affine blocks (one per layer: copies y^_kj of its inputs and x^_k, with
x^_k = sum_j W_kj y^_kj + b_k, whose projection is one product with a fixed inverse), activation blocks
(x_k, y_k) in S_k (a 2-d projection per neuron, weighted by how many copies read y_k), and copies of the
objective's groups; consensus x^ = x and every copy of y_j = y_j.  All objectives share each product.
The multipliers of the certificate come from the ADMM duals, and from back-substitution with the slopes
those duals (or the iterate) pick; the smallest certified value is kept.

The warm start (why ADMM starts near the answer): back-substitution multipliers with the optimal lower
slopes are an optimal dual (Salman et al. 2019), and the bound is piecewise linear in the slopes with a
gradient that one forward pass gives (as in alpha-CROWN).  So a few dozen projected Adam steps on the
slopes bring the certified bound close to the optimum; ADMM then starts from those multipliers (its scaled
duals) and the point they pick, and mostly has to find a point of the relaxation close enough to stop
(ResNet-2B's last ReLU, 86 LPs, `equiv bench --suite admm`: 83 s cold, 33 stopped, the rest at the
5 000-iteration cap; 4.7 s warm, all stopped within 375 iterations).
"""

from __future__ import annotations

import functools
import time

import numpy as np
import scipy.sparse as sp

from ..bounds.kernels import jit_all
from .base import SolveResult, Status
from .dag_relaxation import (IDENTITY, TRIANGLE, DagRelaxation, cast, dense, lagrangian_bound, mus_of, scaled,
                             slope_multipliers)

ALPHA = 1.0                             # over-relaxation (Boyd et al. 3.4.3); 1.6 closed fewer gaps on mnist 256x4
SLOPE_ITERS = 50                        # Adam steps on the lower slopes at most, before ADMM (the warm start)
SLOPE_LR = 0.2
SLOPE_STALL = 10                        # an objective's slopes stop once 10 steps gained < tol / 4 of its bound


def _project_loop(PX, PY, lo, hi, kind, sy, OX, OY):
    # the nearest point of S_i to (PX, PY) in the norm (x^2 + sy^2 y^2), per neuron i and objective: with
    # y' = sy y a Euclidean projection on the set stretched along y.  Inside, the point itself, else the
    # nearest of the projections on its edges (each a clamped segment projection)
    n, K = PX.shape
    for j in range(n):
        l, u, kd = np.float64(lo[j]), np.float64(hi[j]), kind[j]
        if kd == 0:
            e = ((l, 0.0, 0.0, 0.0), (0.0, 0.0, u, sy * u), (u, sy * u, l, 0.0))
        elif kd == 1:
            e = ((l, sy * l, u, sy * u), (l, sy * l, u, sy * u), (l, sy * l, u, sy * u))
        else:
            e = ((l, 0.0, u, 0.0), (l, 0.0, u, 0.0), (l, 0.0, u, 0.0))
        for k in range(K):
            px, py = np.float64(PX[j, k]), sy * np.float64(PY[j, k])
            if kd == 0 and py >= 0.0 and py >= sy * px and (u - l) * py <= sy * u * (px - l):
                OX[j, k], OY[j, k] = px, PY[j, k]
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
                    best, OX[j, k], OY[j, k] = dist, qx, qy / sy


@functools.cache
def _projector():
    """The projection loop compiled by numba, or the plain Python loop (slow) without it."""
    fs = jit_all(_project_loop)
    return fs[0] if fs is not None else _project_loop


class DagAdmm:
    """ADMM on a DagRelaxation: many objectives per step, each with its own penalty rho (rho only scales
    its objective and duals: the affine projections do not depend on it, so one factorisation serves all)."""

    certified_at_limit = True

    def __init__(self, rel: DagRelaxation, *, tol: float = 1e-3, max_iter: int = 5000, check_every: int = 25,
                 rho: float = 0.1, alpha: float = ALPHA, dtype=np.float32, slope_iters: int = SLOPE_ITERS):
        self.rel, self.tol, self.max_iter, self.check_every, self.rho0 = rel, tol, max_iter, check_every, rho
        self.alpha, self.dtype, self.slope_iters = alpha, np.dtype(dtype), slope_iters
        t0 = time.perf_counter()
        self.scaled, self.scale = scaled(rel)
        # projection on {x = M a + b}, M = [W_k1 ... W_kp]:  with fewer rows than columns (Woodbury)
        #   lam = (I + M M^T)^-1 (M a + b - d),  a^ = a - M^T lam,  x^ = d + lam;
        # else  a^ = (I + M^T M)^-1 (a + M^T (d - b)),  x^ = M a^ + b.  The smaller inverse, once for all.
        self.P = []
        for ws in self.scaled.W:
            m, n = ws[0].shape[0], sum(w.shape[1] for w in ws)
            if m <= n:
                G = sum(dense(w @ w.T) for w in ws)
                self.P.append(("woodbury", np.linalg.inv(np.eye(m) + G).astype(self.dtype)))
            else:
                M = sp.hstack(ws).tocsr() if any(sp.issparse(w) for w in ws) else np.hstack(ws)
                self.P.append(("direct", np.linalg.inv(np.eye(n) + dense(M.T @ M)).astype(self.dtype)))
        # the iterations run in self.dtype (float32 by default: half the memory traffic of float64, and
        # ADMM's 1e-3 needs no more); the certificate is computed in float64 from the multipliers
        self.exact, self.scaled = self.scaled, cast(self.scaled, self.dtype)
        self.build_seconds = time.perf_counter() - t0

    def _affine(self, k, a, d):
        """The projection of (copies a of layer k + 1's inputs, d) on its affine block."""
        ws, wts, b = self.scaled.W[k], self.scaled.WT[k], self.scaled.b[k][:, None]
        form, P = self.P[k]
        if form == "woodbury":
            lam = P @ (sum(w @ x for w, x in zip(ws, a)) + b - d)
            return [x - wt @ lam for x, wt in zip(a, wts)], d + lam
        r = np.vstack([x + wt @ (d - b) for x, wt in zip(a, wts)])
        y = P @ r
        cuts = np.cumsum([0] + [w.shape[1] for w in ws])
        ys = [y[cuts[i]:cuts[i + 1]] for i in range(len(ws))]
        return ys, sum(w @ x for w, x in zip(ws, ys)) + b

    def maximize_many(self, C, offsets, time_limit: float = 60.0, progress=None) -> list[SolveResult]:
        """max sum_j C[j][:, q].y_j + offsets[q] for every column q (C: per group, (n_j, K) or None);
        progress(done), if given, is called at every check with the mask of the objectives that have stopped.
        Afterwards `self.inputs` (K, n_0) holds each objective's best point's input (NaN where none was found):
        a point of the box worth running in the real network (it is not a proof of anything)."""
        rel, L = self.scaled, self.rel.depth
        t0 = time.perf_counter()
        self.history = []           # (iteration, seconds, best bounds) at every check: for benchmarks
        C_orig = [None if c is None else np.ascontiguousarray(np.asarray(c, np.float64)) for c in C]
        support = [j for j, c in enumerate(C_orig) if c is not None]
        K = C_orig[support[0]].shape[1]
        C64 = [None if c is None else c * self.scale[j][:, None] for j, c in enumerate(C_orig)]   # scaled units
        C = [None if c is None else c.astype(self.dtype) for c in C64]
        c0 = np.broadcast_to(np.asarray(offsets, np.float64), (K,)).copy()
        project = _projector()
        n = [rel.size(j) for j in range(L + 1)]
        readers = [rel.children(j) for j in range(L + 1)]
        # y_j's copies: one per reading layer, plus the objective's; the activation step weighs y by their number
        mult = [len(readers[j]) + (C[j] is not None) for j in range(L + 1)]
        sy = [float(np.sqrt(max(m, 1))) for m in mult]
        cn = np.max([np.abs(C[j]).max(axis=0) for j in support], axis=0)
        top = max(support)
        widths = np.maximum((rel.hi[top - 1] - rel.lo[top - 1]) if top else (rel.box_hi - rel.box_lo), 1e-9)
        rho = (self.rho0 * np.where(cn > 0, cn, 1.0) / max(float(np.median(widths)), 1e-9)).astype(self.dtype)
        best = np.full(K, np.inf)
        lower = np.full(K, -np.inf)                          # objective of a feasible point
        start = np.full((rel.size(0), K), np.nan)            # its input (scaled units), a point worth running
        done = np.zeros(K, bool)
        iters = np.zeros(K, int)
        warm = None
        if self.slope_iters > 0:
            # the warm start: optimised slopes give certified bounds and multipliers, and their signs a point
            best, lams0, signs = self._slopes(C_orig, c0, t0, t0 + time_limit)
            ex = self.exact
            y0 = np.where(signs[0] > 0, ex.box_hi[:, None], np.where(signs[0] < 0, ex.box_lo[:, None],
                                                                    (ex.box_lo + ex.box_hi)[:, None] / 2))
            lower, pts = self._point_value(C64, c0, y0, lambda k, low, up: np.where(signs[k + 1] > 0, up, low),
                                           with_point=True)
            done = best - lower <= self.tol * np.maximum(1.0, np.abs(best))
            start[:, np.isfinite(lower)] = y0[:, np.isfinite(lower)]
            if progress is not None:
                progress(done)
            warm = (lams0, pts)
        act = np.flatnonzero(~done)
        rho = rho[act]
        z = lambda j: np.zeros((n[j], act.size), self.dtype)                # noqa: E731
        y = [z(j) for j in range(L + 1)]                     # activation blocks (y_0 in the box)
        x = [None] + [z(j) for j in range(1, L + 1)]
        ya = [[z(p) for p in rel.parents[k]] for k in range(L)]             # affine blocks' copies ...
        xa = [None] + [z(j) for j in range(1, L + 1)]
        va = [[z(p) for p in rel.parents[k]] for k in range(L)]             # ... and their scaled duals
        u = [None] + [z(j) for j in range(1, L + 1)]                        # duals of x^ = x
        yo = {j: z(j) for j in support}                                     # the objective's copies
        vo = {j: z(j) for j in support}
        it = 0
        if warm is not None:
            # ADMM's state at the warm start: every copy at the point, the duals from the multipliers (at a
            # fixed point u_k = -rho lam'_k, the copies' duals -W'^T u, the objective's C' / rho; ' = scaled)
            lams0, pts = warm
            for j in range(L + 1):
                y[j] = pts[j][:, act].astype(self.dtype)
            ex = self.exact
            for k in range(L):
                xk = sum(w @ pts[p][:, act] for w, p in zip(ex.W[k], ex.parents[k])) + ex.b[k][:, None]
                x[k + 1] = np.clip(xk, ex.lo[k][:, None], ex.hi[k][:, None]).astype(self.dtype)
                xa[k + 1] = x[k + 1].copy()
                ya[k] = [y[p].copy() for p in rel.parents[k]]
                u[k + 1] = (-lams0[k][:, act] * self.scale[k + 1][:, None] / rho).astype(self.dtype)
                va[k] = [-(wt @ u[k + 1]) for wt in rel.WT[k]]
            for j in support:
                yo[j] = y[j].copy()
                vo[j] = C[j][:, act] / rho

        def copies(j):
            return [(ya[k][i], va[k][i]) for k, i in readers[j]] + ([(yo[j], vo[j])] if j in yo else [])

        while act.size and it < self.max_iter and time.perf_counter() - t0 < time_limit:
            it += 1
            for j in range(L + 1):
                target = sum(a + w for a, w in copies(j)) / mult[j] if mult[j] else y[j]
                if j == 0:
                    y[0] = np.clip(target, rel.box_lo[:, None], rel.box_hi[:, None])
                else:
                    project(xa[j] + u[j], target, rel.lo[j - 1], rel.hi[j - 1], rel.kind[j - 1], sy[j], x[j], y[j])
            old = [a.copy() for a in [c for cs in ya for c in cs] + xa[1:]] if it % self.check_every == 0 else None
            al = self.alpha         # over-relaxation: the affine step sees al X + (1 - al) Z_old (Boyd et al. 3.4.3)
            if al == 1.0:
                ry, rx, ro = [[y[p] for p in rel.parents[k]] for k in range(L)], x, {j: y[j] for j in support}
            else:
                ry = [[al * y[p] + (1 - al) * c for p, c in zip(rel.parents[k], ya[k])] for k in range(L)]
                rx = [None] + [al * x[k] + (1 - al) * xa[k] for k in range(1, L + 1)]
                ro = {j: al * y[j] + (1 - al) * yo[j] for j in support}
            for k in range(L):
                ya[k], xa[k + 1] = self._affine(k, [r - v for r, v in zip(ry[k], va[k])], rx[k + 1] - u[k + 1])
            for j in support:
                yo[j] = ro[j] - vo[j] + C[j][:, act] / rho
            for k in range(L):
                for i, p in enumerate(rel.parents[k]):
                    va[k][i] += ya[k][i] - ry[k][i]
                u[k + 1] += xa[k + 1] - rx[k + 1]
            for j in support:
                vo[j] += yo[j] - ro[j]
            if it % self.check_every and it < self.max_iter:
                continue
            Ca = [None if c is None else c[:, act] for c in C64]      # the stopping test's values: float64
            Co = [None if c is None else c[:, act] for c in C_orig]
            ca = c0[act]
            # the scaled rows x'_k = sum W'_kj y'_j + b'_k are the original ones divided by s_k
            lams = [-rho.astype(np.float64) * u[k] / self.scale[k][:, None] for k in range(1, L + 1)]
            best[act] = np.minimum(best[act], self._certify(Co, ca, lams, x))
            # a lower estimate of the optimum: the better of two points built from the two blocks' iterates
            first = [y[0]] + [y[j] for j in range(1, L + 1)]
            copy1 = [copies(j)[0][0] if mult[j] else y[j] for j in range(L + 1)]
            for val, y0 in (self._feasible_value(Ca, ca, first), self._feasible_value(Ca, ca, copy1),
                            self._greedy_value(Ca, ca, y[0], self.signs)):
                up = val > lower[act]
                lower[act[up]] = val[up]
                start[:, act[up]] = y0[:, up]
            conv = best[act] - lower[act] <= self.tol * np.maximum(1.0, np.abs(best[act]))
            self.history.append((it, time.perf_counter() - t0, best.copy()))
            # residual balancing (Boyd et al. 3.4.1), per objective: rescaling rho rescales its duals
            if old is not None:
                prim = sum(((ya[k][i] - y[p]) ** 2).sum(0) for k in range(L) for i, p in enumerate(rel.parents[k]))
                prim = np.sqrt(prim + sum(((xa[j] - x[j]) ** 2).sum(0) for j in range(1, L + 1))
                               + sum(((yo[j] - y[j]) ** 2).sum(0) for j in support))
                new = [c for cs in ya for c in cs] + xa[1:]
                dual = rho * np.sqrt(sum(((a - b) ** 2).sum(0) for a, b in zip(new, old)))
                f = np.where(prim > 10 * dual, 2.0, np.where(dual > 10 * prim, 0.5, 1.0)).astype(self.dtype)
                rho = rho * f
                for arr in [v for vs in va for v in vs] + u[1:] + list(vo.values()):
                    arr /= f
            if conv.any():
                done[act[conv]] = True
                iters[act[conv]] = it
                keep = ~conv
                act, rho = act[keep], rho[keep]
                y = [a[:, keep] for a in y]
                x = [None] + [a[:, keep] for a in x[1:]]
                xa = [None] + [a[:, keep] for a in xa[1:]]
                u = [None] + [a[:, keep] for a in u[1:]]
                ya = [[a[:, keep] for a in cs] for cs in ya]
                va = [[a[:, keep] for a in cs] for cs in va]
                yo = {j: a[:, keep] for j, a in yo.items()}
                vo = {j: a[:, keep] for j, a in vo.items()}
            if progress is not None:
                progress(done)
        secs = (time.perf_counter() - t0) / max(K, 1)
        # per objective, the input of its best point in original units (NaN where none): `inputs`
        self.inputs = (start * self.scale[0][:, None]).T
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

    def _slopes(self, C, c0, t0, deadline):
        """The warm start: projected Adam steps on the lower slopes of back-substitution from the objectives C
        (original units), each a certified bound (`slope_multipliers`, `lagrangian_bound`).  The gradient of
        the bound in a slope is mu x, x that neuron's input in a forward pass of the network relaxed by the
        chosen lines from the box corner that mu_0 picks.  Returns the best bounds, their multipliers and the
        signs of their mu's (which face of each set, which corner of the box, the Lagrangian's maximiser
        takes)."""
        rel, L, K = self.rel, self.rel.depth, len(c0)
        tri = [rel.kind[k] == TRIANGLE for k in range(L)]
        upper = [np.where(t, rel.hi[k] / np.where(t, rel.hi[k] - rel.lo[k], 1.0), rel.kind[k] == IDENTITY)[:, None]
                 for k, t in enumerate(tri)]
        tri = [t[:, None] for t in tri]
        # DeepPoly's slopes to start: y >= x where the interval leans positive, else y >= 0
        alphas = [np.repeat((rel.hi[k] > -rel.lo[k]).astype(np.float64)[:, None], K, axis=1) for k in range(L)]
        m1 = [np.zeros_like(a) for a in alphas]
        m2 = [np.zeros_like(a) for a in alphas]
        best = np.full(K, np.inf)
        lams_best = [np.zeros((rel.size(k + 1), K)) for k in range(L)]
        signs = [np.zeros((rel.size(j), K)) for j in range(L + 1)]
        trail = []                          # the best bounds of the last SLOPE_STALL steps
        live = np.arange(K)
        steps = self.slope_iters if any(t.any() for t in tri) else 1    # (no triangle: nothing to optimise)
        for step in range(1, steps + 1):
            Cl = [None if c is None else c[:, live] for c in C]
            lams, mus = slope_multipliers(rel, Cl, [a[:, live] for a in alphas], with_mus=True)
            bound = lagrangian_bound(rel, Cl, c0[live], lams, mus)
            better = bound < best[live]
            cols = live[better]
            best[cols] = bound[better]
            for k in range(L):
                lams_best[k][:, cols] = lams[k][:, better]
            for j in range(L + 1):
                signs[j][:, cols] = np.sign(mus[j][:, better])
            self.history.append((0, time.perf_counter() - t0, best.copy()))
            trail.append(best.copy())
            if len(trail) > SLOPE_STALL:
                gained = trail.pop(0)[live] - best[live]
                keep = gained > self.tol / 4 * np.maximum(1.0, np.abs(best[live]))
                live, mus = live[keep], [mu[:, keep] for mu in mus]
            if step == steps or not live.size or time.perf_counter() > deadline:
                break
            grads = self._slope_gradient(mus, [a[:, live] for a in alphas], upper, tri)
            for k in range(L):        # Adam descent on the bound, projected onto [0, 1]
                g = grads[k]
                m1[k][:, live] = 0.9 * m1[k][:, live] + 0.1 * g
                m2[k][:, live] = 0.999 * m2[k][:, live] + 0.001 * g * g
                hat1, hat2 = m1[k][:, live] / (1 - 0.9 ** step), m2[k][:, live] / (1 - 0.999 ** step)
                alphas[k][:, live] = np.clip(alphas[k][:, live] - SLOPE_LR * hat1 / (np.sqrt(hat2) + 1e-12), 0.0, 1.0)
        self.slope_steps = step
        return best, lams_best, signs

    def _slope_gradient(self, mus, alphas, upper, tri):
        """d bound / d slope per layer: mu x where mu < 0 on a triangle (else 0), x from the forward pass of the
        relaxed network (upper line where mu > 0, lower slope elsewhere) from the box corner mu_0 picks."""
        rel = self.rel
        ys = [np.where(mus[0] > 0, rel.box_hi[:, None], rel.box_lo[:, None])]
        grads = []
        for k in range(rel.depth):
            xk = sum(w @ ys[p] for w, p in zip(rel.W[k], rel.parents[k])) + rel.b[k][:, None]
            mu = mus[k + 1]
            # the upper line y = s (x - l) on a triangle, y = x (identity) or 0; the lower one y = alpha x
            ys.append(np.where(mu > 0, upper[k] * (xk - np.where(tri[k], rel.lo[k][:, None], 0.0)),
                               np.where(tri[k], alphas[k], upper[k]) * xk))
            grads.append(np.where(tri[k] & (mu < 0), mu * xk, 0.0))
        return grads

    def _certify(self, C, c0, lams, x):
        """The smallest certified bound of three multiplier choices: the ADMM duals themselves, and
        back-substitution with the lower slopes they imply (lam / mu) or the iterate's side of 0."""
        rel, L, K = self.rel, self.rel.depth, len(c0)
        mus = [mus_of(rel, C, lams, j, K) for j in range(L + 1)]
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = [np.clip(np.nan_to_num(lams[k] / mus[k + 1]), 0.0, 1.0) for k in range(L)]
        side = [(x[k + 1] > 0).astype(np.float64) for k in range(L)]
        cands = [(lams, mus), slope_multipliers(rel, C, ratio, True), slope_multipliers(rel, C, side, True)]
        vals = [lagrangian_bound(rel, C, c0, lm, mu) for lm, mu in cands]
        pick = np.argmin(vals, axis=0)
        # the coefficients of y_j under the best multipliers: which face of each set, which corner of the box
        # the Lagrangian's maximiser takes (for the stopping test's greedy point)
        self.signs = [np.choose(pick, [np.sign(c[1][j]) for c in cands]) for j in range(L + 1)]
        return np.minimum.reduce(vals)

    def _greedy_value(self, C, c0, y0, signs):
        """The objective at the point built forward from the box corner the best multipliers pick (y0 where
        their coefficient is 0), each neuron on the upper face of its set where its coefficient is positive and
        on the lower face elsewhere (`_point_value`); and that corner."""
        rel = self.exact
        inside = np.clip(y0.astype(np.float64), rel.box_lo[:, None], rel.box_hi[:, None])
        start = np.where(signs[0] > 0, rel.box_hi[:, None], np.where(signs[0] < 0, rel.box_lo[:, None], inside))
        return self._point_value(C, c0, start, lambda k, low, up: np.where(signs[k + 1] > 0, up, low)), start

    def _feasible_value(self, C, c0, targets):
        """The objective at the point built forward from targets[0] (clipped to the box), each y_k targets[k]
        clipped between the lower and upper faces of S_k at x_k (`_point_value`); and its start in the box."""
        rel = self.exact
        start = np.clip(targets[0].astype(np.float64), rel.box_lo[:, None], rel.box_hi[:, None])
        return self._point_value(C, c0, start,
                                 lambda k, low, up: np.clip(targets[k + 1].astype(np.float64), low, up)), start

    def _point_value(self, C, c0, y0, choose, with_point: bool = False):
        """The objective at a point of the relaxation built forward from y0 in the box: x_k = sum_j W_kj y_j + b_k,
        y_k = choose(k, lower face, upper face of S_k at x_k).  -inf when some x_k left its bounds (then the
        point may lie outside the relaxation).  Used only to stop (a lower estimate of the optimum), never as a
        proof; in float64 whatever the iterations' dtype.  with_point: also the point (per group)."""
        rel = self.exact
        ys = [y0]
        ok = np.ones(len(c0), bool)
        for k in range(rel.depth):
            xk = sum(w @ ys[p] for w, p in zip(rel.W[k], rel.parents[k])) + rel.b[k][:, None]
            l, u, kd = rel.lo[k][:, None], rel.hi[k][:, None], rel.kind[k][:, None]
            xc = np.clip(xk, l, u)
            ok &= (np.abs(xc - xk) <= 1e-9 * (1.0 + np.abs(xk))).all(axis=0)
            tri = kd == TRIANGLE
            low = np.where(tri, np.maximum(xc, 0.0), np.where(kd == IDENTITY, xc, 0.0))
            up = np.where(tri, np.maximum(u * (xc - l) / np.where(tri, u - l, 1.0), low), low)
            ys.append(choose(k, low, up))
        value = np.where(ok, sum((C[j] * ys[j]).sum(axis=0) for j in range(len(C)) if C[j] is not None) + c0, -np.inf)
        return (value, ys) if with_point else value
