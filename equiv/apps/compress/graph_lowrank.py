"""ALDS low rank on graphs: a dense op becomes two (``U (V x) + b``), a k x k convolution becomes a k x k
convolution with r filters per channel group (one grouped conv) followed by a 1 x 1 convolution that sums
the groups -- ALDS's decomposition, kept as convolutions.  Ranks and group counts are allocated min-max
across layers for a weight budget (`lowrank.allocate`).

Data-aware, like the chain maker: what matters is the error on the layer inputs that occur on the region.
A conv reads patches p (its im2col windows); with L_j L_j^T the second moment of group j's patches, the
output error ``sum_j (W_j - W_j,r) p_j`` has mean square ``sum_j ||(W_j - W_j,r) L_j||_F^2`` when the
groups are uncorrelated, so Eckart-Young on ``W_j L_j`` gives each group's best rank.  A conv's bias is
per channel and cannot absorb a per-position mean, so the moments are not centred; a dense op's are (its
bias absorbs the mean, as in `lowrank.truncate_on`).  A layer's error is the relative root-mean-square
output error on the samples, ``sqrt(sum of the dropped s^2) / ||W L||_F``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...ir import ops
from ...ir.conv import ConvGeometry, _patches
from ...ir.graph import Graph
from .lowrank import Option, allocate


@dataclass(frozen=True)
class Factor:
    """How one layer is stored: rank per channel group and the number of groups (dense ops: one group)."""

    rank: int
    groups: int


@dataclass
class Moments:
    """Sampled input moments of one layer: per group the Cholesky factor of the (centred for dense ops)
    second moment, and the mean (dense ops only)."""

    L: list
    mu: np.ndarray | None


def factorable(g: Graph) -> list[str]:
    """Nodes whose weights low rank can factor: dense ops, and ungrouped convolutions (not pooling sums)."""
    out = []
    for n in g.order:
        op = g.op(n)
        if isinstance(op, ops.Dense) and op.W.ndim == 2 and min(op.W.shape) > 1:
            out.append(n)
        elif isinstance(op, ops.Conv) and not op.pooling and op.geo.group == 1 and min(op.W.shape[:2]) > 1:
            out.append(n)
    return out


def _conv_patches(x: np.ndarray, geo: ConvGeometry) -> np.ndarray:
    """(B, C, H, W) -> (B * Ho * Wo, C * kh * kw): the window each output position reads, in W's order."""
    pt, pl, pb, pr = geo.pads
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr))) if any(geo.pads) else x
    p = _patches(xp, geo)                                    # (B, C, Ho, Wo, kh, kw)
    return p.transpose(0, 2, 3, 1, 4, 5).reshape(-1, int(np.prod(p.shape[1:2] + p.shape[4:])))


def _groups(C: int) -> list[int]:
    return [k for k in (1, 2, 4, 8) if k <= C and C % k == 0]


def moments(g: Graph, names: list[str], points: np.ndarray, batch: int = 250, ridge: float = 1e-8) -> dict:
    """{node: {groups: Moments}} from the sampled points, accumulated batch by batch (memory stays small).
    Dense inputs are accumulated around the first batch's mean, so that a tiny spread around a large mean
    does not cancel away (E[x x^T] - mu mu^T would)."""
    sums, shift, count = {}, {}, {n: 0 for n in names}
    for i in range(0, len(points), batch):
        vals = g.evaluate(np.asarray(points[i:i + batch], float))
        for n in names:
            op, x = g.op(n), np.asarray(vals[g.args(n)[0]], float)
            conv = isinstance(op, ops.Conv)
            rows = _conv_patches(x.reshape((-1,) + x.shape[-3:]), op.geo) if conv else x.reshape(-1, op.W.shape[1])
            if n not in shift:
                shift[n] = np.zeros(rows.shape[1]) if conv else rows.mean(axis=0)
            d = rows - shift[n]
            s = (d.sum(axis=0), d.T @ d)
            sums[n] = s if n not in sums else (sums[n][0] + s[0], sums[n][1] + s[1])
            count[n] += len(rows)
    out = {}
    for n in names:
        op = g.op(n)
        mean, M2 = sums[n][0] / count[n], sums[n][1] / count[n]
        if isinstance(op, ops.Dense):
            out[n] = {1: Moments([_cholesky(M2 - np.outer(mean, mean), ridge)], mean + shift[n])}
        else:
            k = int(np.prod(op.W.shape[2:]))
            cin = op.W.shape[1]
            out[n] = {gr: Moments([_cholesky(M2[j * (cin // gr) * k:(j + 1) * (cin // gr) * k,
                                                 j * (cin // gr) * k:(j + 1) * (cin // gr) * k], ridge)
                                   for j in range(gr)], None)
                      for gr in _groups(cin)}
    return out


def _cholesky(C: np.ndarray, ridge: float) -> np.ndarray:
    """L with L L^T = C + a ridge (relative to C's mean eigenvalue), the ridge grown until C is numerically
    positive definite; a scaled identity when C is (numerically) zero."""
    C = (C + C.T) / 2
    scale = max(np.trace(C) / C.shape[0], 1e-12)     # spreads below 1e-6 are float32 rounding: a constant
    eye = np.eye(C.shape[0])
    for k in range(8):
        try:
            return np.linalg.cholesky(C + ridge * 100.0 ** k * scale * eye)
        except np.linalg.LinAlgError:
            continue
    return np.sqrt(scale) * eye


def _blocks(op, gr: int) -> list[np.ndarray]:
    """The weight matrix of each channel group: (M, C/gr * kh * kw) (a dense op: the whole W)."""
    if isinstance(op, ops.Dense):
        return [np.asarray(op.W, float)]
    cg = op.W.shape[1] // gr
    return [np.asarray(op.W[:, j * cg:(j + 1) * cg], float).reshape(op.W.shape[0], -1) for j in range(gr)]


def options(op, mom: dict) -> list[Option]:
    """Every (groups, rank) that stores fewer weights than the layer, with its relative error; and keeping it."""
    full = int(op.W.size)
    out = [Option(full, 0.0, None)]
    for gr, m in mom.items():
        svals = [np.linalg.svd(Wj @ Lj, compute_uv=False) for Wj, Lj in zip(_blocks(op, gr), m.L)]
        total = sum(float(np.sum(s ** 2)) for s in svals)
        if total <= 0:
            continue
        M = op.W.shape[0]
        per_rank = op.W[0].size + gr * M if isinstance(op, ops.Conv) else op.W.shape[0] + op.W.shape[1]
        for r in range(1, max(s.size for s in svals)):
            cost = r * per_rank
            if cost >= full:
                break
            tail = sum(float(np.sum(s[r:] ** 2)) for s in svals)
            out.append(Option(cost, float(np.sqrt(tail / total)), Factor(r, gr)))
    return out


def _factor(Wj: np.ndarray, Lj: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray]:
    """(U, V), U V the rank-r map best on inputs with second moment Lj Lj^T: U (M, r), V (r, n)."""
    u, s, vt = np.linalg.svd(Wj @ Lj, full_matrices=False)
    U, V = u[:, :r] * s[:r], np.linalg.solve(Lj.T, vt[:r].T).T
    # balance each rank-one term (U e_i)(e_i^T V): equal norms keep both factors well inside float32
    a, b = np.linalg.norm(U, axis=0), np.linalg.norm(V, axis=1)
    t = np.sqrt(np.where((a > 0) & (b > 0), b / np.where(a > 0, a, 1), 1.0))
    return U * t, V / t[:, None]


def factored_nodes(name: str, op, args: list, f: Factor, m: Moments) -> list[tuple]:
    """The two nodes replacing `name` (the second keeps the name, so readers are unchanged)."""
    mid = f"{name}_lowrank"
    if isinstance(op, ops.Dense):
        U, V = _factor(np.asarray(op.W, float), m.L[0], f.rank)
        # the bias absorbs the mean: (W - U V) mu (inputs were centred)
        b = (np.asarray(op.W, float) - U @ V) @ m.mu
        if op.bias is not None:
            b = np.asarray(op.bias, float) + b
        first = ops.Dense(tuple(op.shape[:-1]) + (f.rank,), W=V)
        second = ops.Dense(tuple(op.shape), bias=b, W=U)
        return [(mid, first, list(args)), (name, second, [mid])]
    geo, M = op.geo, op.W.shape[0]
    cg, (kh, kw) = op.W.shape[1] // f.groups, geo.kernel
    Us, Vs = zip(*[_factor(Wj, Lj, f.rank) for Wj, Lj in zip(_blocks(op, f.groups), m.L)])
    W1 = np.concatenate([V.reshape(f.rank, cg, kh, kw) for V in Vs], axis=0)        # (groups * r, C/groups, kh, kw)
    W2 = np.concatenate(Us, axis=1)[:, :, None, None]                              # (M, groups * r, 1, 1)
    ho, wo = geo.out_hw
    g1 = ConvGeometry(geo.in_channels, geo.height, geo.width, f.groups * f.rank, geo.kernel, geo.strides, geo.pads,
                      geo.dilations, f.groups)
    g2 = ConvGeometry(f.groups * f.rank, ho, wo, M, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1)
    first = ops.Conv((op.shape[0], f.groups * f.rank, ho, wo), W=W1, geo=g1)
    second = ops.Conv(tuple(op.shape), bias=op.bias, W=W2, geo=g2)
    return [(mid, first, list(args)), (name, second, [mid])]


def graph_lowrank(g: Graph, level: float, points: np.ndarray, mom: dict | None = None) -> tuple[Graph, str]:
    """The graph with its factorable layers stored in about `level` of their weights (min-max allocation);
    returns the new graph and a note with each layer's choice and the largest relative error."""
    names = factorable(g)
    mom = mom if mom is not None else moments(g, names, points)
    opts = [options(g.op(n), mom[n]) for n in names]
    budget = level * sum(int(g.op(n).W.size) for n in names)
    picked, err = allocate(opts, budget)
    choice = dict(zip(names, picked))
    nodes = []
    for n in g.order:
        op, args = g.op(n), g.args(n)
        o = choice.get(n)
        if o is None or o.choice is None:
            nodes.append((n, op, args))
        else:
            nodes += factored_nodes(n, op, args, o.choice, mom[n][o.choice.groups])
    new = Graph.build(nodes, g.inputs, g.outputs, {k: v for k, v in g.meta.items() if k == "source"})
    desc = ", ".join(f"{n}: " + ("whole" if o.choice is None else f"rank {o.choice.rank}"
                                 + (f" x {o.choice.groups} groups" if o.choice.groups > 1 else ""))
                     for n, o in choice.items())
    return new, f"{desc}; max relative rms error on the samples {err:.3g}"
