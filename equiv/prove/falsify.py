"""Look for inputs where two networks differ: sampling, then projected gradient ascent, then onnxruntime.

Cheap and incomplete by design: it runs before any proof so that a pair that differs is reported
with a real counterexample in seconds, and it supplies `max_diff_lower` (the largest difference
actually seen).  Only points re-run in onnxruntime on both models count (`confirm`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..ir.network import Network
from ..spec.region import Box, floats_in_box


def gradient(net: Network, x: np.ndarray, v: np.ndarray) -> np.ndarray:
    """(n, n_in) gradients of v[i] . net(x) at each point x[i] (backpropagation through the ReLU pattern);
    `net` may also be a Graph."""
    if not isinstance(net, Network):
        return net.gradient(x, v)
    _, pre = net.forward(x, return_pre=True)
    dense = net.dense
    g = v @ dense[-1].W
    for k in range(len(pre) - 1, -1, -1):
        g = np.where(net.masks[k], g * (pre[k] > 0), g) @ dense[k].W   # ReLU' is 0 or 1 (0 at 0)
    return g


def linf_scores(fx: np.ndarray, gx: np.ndarray, eps: np.ndarray) -> np.ndarray:
    """Per point, max_j |f_j - g_j| / eps_j: above 1 is a violation."""
    return (np.abs(fx - gx) / eps).max(axis=1)


def top1_scores(fx: np.ndarray, gx: np.ndarray) -> np.ndarray:
    """Per point, how far f's winner c is from losing in g while still winning in f: min(m_f, -m_g) with
    m_f = f_c - max_{k != c} f_k and m_g = g_c - max_{k != c} g_k.  Positive: the argmaxes differ."""
    c = fx.argmax(axis=1)
    rows = np.arange(fx.shape[0])
    others = lambda y: np.where(np.arange(y.shape[1]) == c[:, None], -np.inf, y).max(axis=1)  # noqa: E731
    m_f = fx[rows, c] - others(fx)
    m_g = gx[rows, c] - others(gx)
    return np.minimum(m_f, -m_g)


@dataclass
class Candidates:
    points: np.ndarray      # (n, dim) the most promising points found, best first
    scores: np.ndarray      # their scores (float64 evaluation)


def search(f: Network, g: Network, box: Box, norm: str, eps: np.ndarray, rng: np.random.Generator,
           samples: int = 10000, restarts: int = 32, steps: int = 40, extra: np.ndarray | None = None,
           runners: tuple | None = None, deadline: float | None = None) -> Candidates:
    """Random points, vertices (all, or 1024 at random), the centre and `extra` points, then signed-gradient ascent
    from the best ones.  runners (run_a, run_b), onnxruntime: the sampled points are scored there, as float32 points
    of the box (on ResNet-2B, 11 000 points take 0.5 s per model there and 4.4 s in the numpy graph); the ascent
    needs gradients and stays in f and g.  deadline (time.perf_counter()): the ascents stop there."""
    pts = [box.sample(samples, rng), box.vertices(1024, rng), box.center[None]]
    if extra is not None and len(extra):
        pts.append(np.clip(extra, box.lo, box.hi))
    X = np.vstack(pts)
    P, A, B = evaluate(*runners, X, box) if runners is not None else (X[:0], None, None)
    if len(P):
        X = P.astype(np.float64)
    else:
        A, B = f.forward(X), g.forward(X)
    score = linf_scores(A, B, eps) if norm == "linf" else top1_scores(A, B)
    start = X[np.argsort(-score)[:restarts]]
    found = _ascend(f, g, box, start, norm, eps, steps, deadline)
    if norm == "top1":
        found = np.vstack([found, _pair_ascent(f, g, box, X, A, B, steps, deadline=deadline)])
    X = np.vstack([X, found])
    score = np.concatenate([score, _scores(f, g, found, norm, eps)])
    order = np.argsort(-score)[:max(restarts, 64)]
    return Candidates(X[order], score[order])


def _scores(f, g, X, norm, eps):
    fx, gx = f.forward(X), g.forward(X)
    return linf_scores(fx, gx, eps) if norm == "linf" else top1_scores(fx, gx)


def _ascend(f, g, box, X, norm, eps, steps, deadline=None):
    """Signed-gradient ascent of the score, projected on the box; the best point of each run."""
    width = box.hi - box.lo
    x = X.copy()
    best, best_s = x.copy(), _scores(f, g, x, norm, eps)
    rows = np.arange(x.shape[0])
    # the (output, sign) or class each run attacks is fixed by its starting point
    fx, gx = f.forward(x), g.forward(x)
    if norm == "linf":
        r = (fx - gx) / eps
        j = np.abs(r).argmax(axis=1)
        sign = np.sign(r[rows, j]) + (r[rows, j] == 0)
    else:
        c = fx.argmax(axis=1)
    step = 0.25
    n_out = fx.shape[1]
    eye = np.eye(n_out)
    for _ in range(steps):
        if deadline is not None and time.perf_counter() > deadline:
            break
        if norm == "linf":
            v = sign[:, None] * eye[j]
            grad = gradient(f, x, v) - gradient(g, x, v)
        else:
            fx, gx = f.forward(x), g.forward(x)
            kf = np.where(np.arange(n_out) == c[:, None], -np.inf, fx).argmax(axis=1)
            kg = np.where(np.arange(n_out) == c[:, None], -np.inf, gx).argmax(axis=1)
            m_f = fx[rows, c] - fx[rows, kf]
            m_g = gx[rows, c] - gx[rows, kg]
            # ascend the smaller of m_f and -m_g
            grad = np.where((m_f < -m_g)[:, None], gradient(f, x, eye[c] - eye[kf]), gradient(g, x, eye[kg] - eye[c]))
        x = np.clip(x + step * np.sign(grad) * width, box.lo, box.hi)
        s = _scores(f, g, x, norm, eps)
        better = s > best_s
        best[better], best_s[better] = x[better], s[better]
        step *= 0.85
    return best


def _pair_ascent(f, g, box, X, fx, gx, steps, per_pair: int = 2, deadline=None):
    """Top-1: for each ordered pair of classes (c, k) and each network b in {f, g} (a being the other), ascend
    b_k - b_c (the class change itself) and (b_k - b_c) - (a_k - a_c) (the change of the margin) from the
    points where a picks c and, respectively, b's margin b_c - b_k is smallest or the change is largest.
    fx, gx: f(X) and g(X)."""
    n_out = fx.shape[1]
    starts, V, cf, cg = [], [], [], []
    for a_out, b_out, b_is_g in ((fx, gx, True), (gx, fx, False)):
        cls = a_out.argmax(axis=1)
        for c in range(n_out):
            idx = np.flatnonzero(cls == c)
            if not idx.size:
                continue
            for k in range(n_out):
                if k == c:
                    continue
                m_b = b_out[idx, c] - b_out[idx, k]
                change = -m_b + (a_out[idx, c] - a_out[idx, k])
                v = np.zeros(n_out)
                v[k], v[c] = 1.0, -1.0
                for order, w in ((np.argsort(m_b), 0.0), (np.argsort(-change), 1.0)):
                    for i in idx[order[:per_pair]]:
                        starts.append(X[i])
                        V.append(v)
                        cb, ca = 1.0, -w       # objective cb * v.b + ca * v.a
                        cf.append(ca if b_is_g else cb)
                        cg.append(cb if b_is_g else ca)
    if not starts:
        return np.empty((0, box.dim))
    x = np.array(starts)
    V, cf, cg = np.array(V), np.array(cf)[:, None], np.array(cg)[:, None]
    width = box.hi - box.lo
    best, best_s = x.copy(), top1_scores(f.forward(x), g.forward(x))
    step = 0.05          # small steps: a class change may live on a small part of the box
    for _ in range(steps):
        if deadline is not None and time.perf_counter() > deadline:
            break
        grad = gradient(f, x, cf * V) + gradient(g, x, cg * V)
        x = np.clip(x + step * np.sign(grad) * width, box.lo, box.hi)
        s = top1_scores(f.forward(x), g.forward(x))
        better = s > best_s
        best[better], best_s[better] = x[better], s[better]
        step *= 0.85
    return best


@dataclass
class Confirmed:
    input: np.ndarray        # float32 point of the region
    output_a: np.ndarray
    output_b: np.ndarray
    score: float             # linf: max_j |a_j - b_j| / eps_j; top1: 1 when the argmaxes differ

    def to_json(self) -> dict:
        return {"input": [float(v) for v in self.input], "output_a": [float(v) for v in self.output_a],
                "output_b": [float(v) for v in self.output_b],
                "max_abs_diff": float(np.abs(self.output_a - self.output_b).max()),
                "argmax_a": int(np.argmax(self.output_a)), "argmax_b": int(np.argmax(self.output_b))}


def evaluate(run_a, run_b, X: np.ndarray, box: Box):
    """Run float32 versions of the points (kept inside the box) in both models: (points, out_a, out_b)."""
    P, ok = floats_in_box(np.atleast_2d(X), box)
    P = P[ok]
    if not len(P):
        return np.empty((0, box.dim), np.float32), np.empty((0, 0)), np.empty((0, 0))
    return P, run_a(P).astype(np.float64), run_b(P).astype(np.float64)


def confirm(run_a, run_b, X: np.ndarray, box: Box, norm: str, eps: np.ndarray | None):
    """The first point of X that is a counterexample in onnxruntime (None if none is), and the largest
    absolute output difference seen at these points.  eps None with linf (`--measure` without epsilon):
    nothing is a counterexample, only the difference is measured."""
    P, A, B = evaluate(run_a, run_b, X, box)
    if not len(P):
        return None, 0.0
    seen = float(np.abs(A - B).max())
    if norm == "linf" and eps is None:
        return None, seen
    if norm == "linf":
        s = linf_scores(A, B, eps)
        bad = np.flatnonzero(s > 1.0)
    else:
        s = (A.argmax(axis=1) != B.argmax(axis=1)).astype(float)
        bad = np.flatnonzero(s > 0)
    if not bad.size:
        return None, seen
    i = bad[np.argmax(s[bad])]
    return Confirmed(P[i], A[i], B[i], float(s[i])), seen
