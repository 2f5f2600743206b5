"""Replacement candidates for the ReLU neurons left after the exact simplification, each with a cheap score.

For z in [l, u] with l < 0 < u (the proved pre-activation bounds on the region):
- constant: relu(z) is in [0, u]; the constant u/2 is off by at most u/2;
- affine: the minimax line of relu on [l, u] is s*z + t with s = u/(u-l), t = -s*l/2, off by at most t;
- merge: h_i ~ a*h_j (a >= 0) for a neuron j of the same layer, fitted on sample points.
The score (error at the neuron times the size of its outgoing weights) only orders the candidates: whether a
set of replacements is acceptable is decided by a sound bound on the whole network's change (`select`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...ir.network import Network
from .edits import Edit


@dataclass(frozen=True)
class Candidate:
    """The replacements tried for one neuron, most saving first (constant, merge, affine)."""

    layer: int
    index: int
    options: tuple
    score: float


def minimax_affine(lo: float, hi: float) -> tuple[float, float, float]:
    """(slope, offset, max error) of the best line through relu on [lo, hi]."""
    if hi <= 0:
        return 0.0, 0.0, 0.0
    if lo >= 0:
        return 1.0, 0.0, 0.0
    s = hi / (hi - lo)
    return s, -s * lo / 2, -s * lo / 2


def relu_candidates(net: Network, lo: list[np.ndarray], hi: list[np.ndarray], phases_left: list[np.ndarray],
                    points: np.ndarray | None = None, kinds=("constant", "merge", "affine"),
                    merge_rtol: float = 0.05) -> list[Candidate]:
    """One candidate per ReLU neuron marked in phases_left (per hidden layer), sorted by score (smallest first).

    lo/hi: per hidden layer, sound bounds of the neuron's pre-activation on the region.  points: sample points
    of the region for fitting merges (none without them); a merge is offered when the fit's relative residual
    is at most merge_rtol (the bound decides whether it is acceptable).
    """
    out = []
    acts = _activations(net, points) if points is not None and "merge" in kinds else None
    dense = net.dense
    for k, left in enumerate(phases_left):
        w_out = np.abs(dense[k + 1].W).sum(axis=0)
        fits = _merge_fits(acts[k], left, merge_rtol) if acts is not None else {}
        for i in np.flatnonzero(left):
            l, u = float(lo[k][i]), float(hi[k][i])
            s, t, err = minimax_affine(l, u)
            opts = []
            if "constant" in kinds:
                opts.append(Edit(k + 1, int(i), "constant", 0.0, max(u, 0.0) / 2))
            if i in fits:
                j, a = fits[i]
                opts.append(Edit(k + 1, int(i), "merge", a, 0.0, int(j)))
            if "affine" in kinds:
                opts.append(Edit(k + 1, int(i), "affine", s, t))
            out.append(Candidate(k + 1, int(i), tuple(opts), float(err * w_out[i])))
    out.sort(key=lambda c: (c.score, c.layer, c.index))
    return out


def _activations(net: Network, points: np.ndarray) -> list[np.ndarray]:
    """Post-activation values (n, width) of every hidden layer at the points."""
    _, pre = net.forward(points, return_pre=True)
    return [np.where(m, np.maximum(z, 0), z) for z, m in zip(pre, net.masks)]


def _merge_fits(H: np.ndarray, left: np.ndarray, rtol: float) -> dict:
    """{i: (j, a)}: for each neuron i of `left`, the neuron j != i of `left` with h_i ~ a*h_j (a >= 0) of the
    smallest relative residual, when that residual is at most rtol."""
    idx = np.flatnonzero(left)
    if idx.size < 2:
        return {}
    A = H[:, idx]
    norms = np.linalg.norm(A, axis=0)
    ok = norms > 0
    U = np.where(ok, A / np.where(ok, norms, 1), 0)
    cos = U.T @ U                                   # h_i ~ a h_j with relative residual sqrt(1 - cos^2)
    np.fill_diagonal(cos, -1)
    out = {}
    for p, i in enumerate(idx):
        q = int(np.argmax(cos[p]))
        c = cos[p, q]
        if not ok[p] or not ok[q] or c <= 0 or np.sqrt(max(0.0, 1 - c * c)) > rtol:
            continue
        out[int(i)] = (int(idx[q]), float(c * norms[p] / norms[q]))
    return out
