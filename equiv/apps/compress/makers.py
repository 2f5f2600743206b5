"""Candidate makers: each takes a base candidate and a level (the fraction of the base's weights to keep,
in (0, 1]) and returns a new candidate computing a nearby function with the same inputs and outputs."""

from __future__ import annotations

import numpy as np

from ...ir.network import Dense, Network
from .candidate import Candidate
from .lowrank import allocate_ranks, spectrum, spectrum_on, truncate, truncate_on, whitening
from .prune import activations, prune_neurons, prune_weights, refit


def lowrank(base: Candidate, level: float, points: np.ndarray, data_aware: bool = True) -> Candidate:
    """ALDS allocation for a budget of `level` times the base's weights; layers where factoring does not pay
    stay whole.  data_aware: spectra and factors of each layer weighted by its inputs on the region's
    sampled points (see `lowrank`); otherwise plain truncated SVD."""
    dense = base.net.dense
    if data_aware:
        inputs = [np.asarray(points, float)] + activations(base.net, points)
        white = [whitening(H) for H in inputs]
        specs = [spectrum_on(d.W, w) for d, w in zip(dense, white)]
    else:
        specs = [spectrum(d.W) for d in dense]
    ranks, err = allocate_ranks(specs, level * sum(d.W.size for d in dense))
    new, stored = [], []
    for k, (d, L, r) in enumerate(zip(dense, specs, ranks)):
        if r >= L.full_rank or L.cost(r) >= L.m * L.n:
            new.append(d)
            stored.append(None)
        else:
            U, V, b = truncate_on(d.W, d.b, r, white[k]) if data_aware else (*truncate(d.W, r), d.b.copy())
            new.append(Dense(U @ V, b))
            stored.append(r)
    net = base.net.with_layers(new, base.net.masks)
    kind = "lowrank" if data_aware else "lowrank-svd"
    c = Candidate(f"{base.name}+{kind}({level:.3g})", kind, level, net, stored, base.weights, base.name)
    c.note = f"ranks {['full' if r is None else r for r in stored]}, max relative spectral error {err:.3g}"
    return c


def neurons(base: Candidate, level: float, points: np.ndarray, reference: Network | None = None) -> Candidate:
    """Remove about 1 - level of the base's weights by dropping the lowest-scoring hidden neurons."""
    net = base.net
    total = net.n_params
    lo, hi = 0.0, 1.0                       # fraction of neurons to drop: bisect to hit the weight budget
    best = net
    for _ in range(20):
        mid = (lo + hi) / 2
        cand = prune_neurons(net, mid, points)
        if cand.n_params <= level * total:
            best, hi = cand, mid
        else:
            lo = mid
    if best is net:
        best = prune_neurons(net, hi, points)
    best = refit(net, best, points, reference=reference)
    c = Candidate(f"{base.name}+neurons({level:.3g})", "neurons", level, best, [None] * best.depth, base.weights,
                  base.name)
    c.note = f"hidden widths {best.hidden_widths}"
    return c


def weights(base: Candidate, level: float, points: np.ndarray) -> Candidate:
    """Zero the smallest 1 - level of every layer's weights (fewer non-zeros, same stored size)."""
    net = prune_weights(base.net, 1.0 - level)
    return Candidate(f"{base.name}+weights({level:.3g})", "weights", level, net, list(base.ranks), base.weights,
                     base.name)


def minimax_affine(X: np.ndarray, Y: np.ndarray, max_size: int = 40000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(A, c, t): the affine map minimising the largest |A x + c - y| over the points, per output (an LP
    for each output, HiGHS through scipy); t holds each output's largest residual.  Beyond `max_size`
    points x coefficients the LPs get slow: least squares then, its offset moved so the largest residuals
    above and below balance."""
    from scipy.optimize import linprog
    Xa = np.hstack([X, np.ones((len(X), 1))])
    if Xa.size > max_size:
        theta = np.linalg.lstsq(Xa, Y, rcond=None)[0]
        R = Y - Xa @ theta
        mid = (R.max(axis=0) + R.min(axis=0)) / 2
        return theta[:-1].T.copy(), theta[-1] + mid, (R.max(axis=0) - R.min(axis=0)) / 2
    d = Xa.shape[1]
    ones = np.ones((len(X), 1))
    A_ub = np.vstack([np.hstack([Xa, -ones]), np.hstack([-Xa, -ones])])
    thetas, ts = [], []
    for j in range(Y.shape[1]):
        res = linprog(np.r_[np.zeros(d), 1.0], A_ub=A_ub, b_ub=np.r_[Y[:, j], -Y[:, j]],
                      bounds=[(None, None)] * d + [(0, None)], method="highs")
        if res.status != 0:      # fall back to least squares
            th = np.linalg.lstsq(Xa, Y[:, j], rcond=None)[0]
            thetas.append(th)
            ts.append(float(np.abs(Xa @ th - Y[:, j]).max()))
        else:
            thetas.append(res.x[:d])
            ts.append(float(res.x[-1]))
    theta = np.array(thetas)             # (outputs, inputs + 1)
    return theta[:, :-1], theta[:, -1], np.array(ts)


def affine(base: Candidate, points: np.ndarray) -> Candidate:
    """The most aggressive rung: no hidden layer at all, one Gemm ``A x + c`` fitted to the base so that the
    largest residual over the points (region samples, vertices, earlier counterexamples) is smallest.
    On a small region a ReLU network is often nearly affine; the check decides whether this one is close
    enough."""
    X = np.asarray(points, float)
    A, c, t = minimax_affine(X, base.net.forward(X))
    net = base.net.with_layers([Dense(A, c)], [])
    return Candidate(f"{base.name}+affine", "affine", 0.0, net, [None], base.weights, base.name,
                     note=f"no hidden layer; minimax residual on {len(X)} points {float(t.max()):.3g}")


def rounded(base: Candidate, kind: str) -> Candidate:
    """The base with its written weights rounded to float16 or int8 levels."""
    return Candidate(f"{base.name}+{kind}", kind, None, base.net, list(base.ranks), kind, base.name)


def lowrank_svd(base: Candidate, level: float, points: np.ndarray) -> Candidate:
    """Plain ALDS (truncated SVD of the weights alone), for comparison with the data-aware default."""
    return lowrank(base, level, points, data_aware=False)


LEVEL_MAKERS = {"lowrank": lowrank, "lowrank-svd": lowrank_svd, "neurons": neurons, "weights": weights}


def exact_simplified(name: str, net: Network, record: tuple | None = None) -> Candidate:
    return Candidate(name, "simplify", None, net, [None] * net.depth, record=record)
