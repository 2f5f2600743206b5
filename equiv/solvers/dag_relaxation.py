"""The triangle-relaxation LP of a ReLU network (a chain or a DAG with convolutions and residual sums) as
DeepSplit's operator splitting sees it, and the certificate that turns any multipliers into a proved bound.

The LP, over groups of variables (group 0 the input box, group k >= 1 the ReLU layer k, its live positions):
    max sum_j C_j.y_j + c0   over   y_0 in the box,   x_k = sum_{j in P_k} W_kj y_j + b_k,   (x_ki, y_ki) in S_ki,
with P_k the groups feeding layer k (one for a chain; two where a residual sum adds a skip), and S_ki
neuron i's relaxation under its bounds l <= x <= u: the triangle (l,0), (0,0), (u,u) for an unstable ReLU,
the segment y = x for an active one (or a linear channel), y = 0 for a dead one.

The certificate (why an early stop of `dag_admm` still proves a bound): for ANY multipliers lam_k of the rows
x_k = sum_j W_kj y_j + b_k, weak duality over the sets S and the box gives
    max  <=  c0 + sum_k lam_k.b_k + max_{y_0 in box} mu_0.y_0 + sum_k sum_i max_{(x, y) in S_ki} (-lam_ki x + mu_ki y),
    mu_j = C_j + sum_{k: j in P_k} W_kj^T lam_k,
and a linear function's max over a polygon is its max over the vertices.  Its floating-point error is
bounded and added (`lagrangian_bound`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

TRIANGLE, IDENTITY, ZERO = 0, 1, 2      # kinds of S_ki
EPS = np.finfo(np.float64).eps / 2      # unit roundoff
SPARSE_BELOW = 0.05                     # a matrix this sparse (or sparser) is kept CSR: convolutions

@dataclass
class DagRelaxation:
    """The triangle relaxation of ReLU layers 1..L over a box (float64; matrices dense or CSR)."""

    parents: list      # parents[k]: the groups feeding layer k + 1 (0: the input box, j: layer j)
    W: list            # W[k][i]: (n_{k+1}, n_{parents[k][i]})
    b: list            # b[k], lo[k], hi[k], kind[k]: layer k + 1's offsets, pre-activation bounds (sound for
    lo: list           # the network) and kinds (TRIANGLE / IDENTITY / ZERO) per neuron
    hi: list
    kind: list
    box_lo: np.ndarray
    box_hi: np.ndarray
    WT: list = field(init=False, repr=False)       # the transposes, CSR where W is
    colabs: list = field(init=False, repr=False)   # the column sums of |W| (for `_mu_error`)

    def __post_init__(self):
        self.WT = [[w.T.tocsr() if sp.issparse(w) else w.T for w in ws] for ws in self.W]
        self.colabs = [[np.asarray(abs(w).sum(axis=0), np.float64).ravel() for w in ws] for ws in self.W]

    @property
    def depth(self) -> int:
        return len(self.W)

    def size(self, j: int) -> int:
        return len(self.box_lo) if j == 0 else len(self.lo[j - 1])

    def children(self, j: int) -> list:
        """The (layer index k, parent slot i) that read group j: parents[k][i] == j."""
        return [(k, i) for k, ps in enumerate(self.parents) for i, p in enumerate(ps) if p == j]

    def on_last(self, C: np.ndarray) -> list:
        """Objectives given as rows on the last layer's output (K, n_L): the per-group columns form."""
        return [None] * self.depth + [np.ascontiguousarray(np.atleast_2d(np.asarray(C, np.float64)).T)]


def dense_or_sparse(M) -> np.ndarray | sp.csr_matrix:
    """M as CSR when sparse enough that a sparse product beats BLAS on it, else as a dense array."""
    if sp.issparse(M):
        if M.nnz >= SPARSE_BELOW * M.shape[0] * M.shape[1]:
            return M.toarray()
        return M.tocsr()
    return np.asarray(M, np.float64)


def _gamma(n: int) -> float:
    """Higham's gamma_n = n u / (1 - n u): the relative error bound of an n-term float sum of products."""
    return n * EPS / (1.0 - n * EPS)


def mus_of(rel: DagRelaxation, C: list, lams: list, j: int, K: int) -> np.ndarray:
    """mu_j = C_j + sum over the layers k reading group j of W_kj^T lam_k (the multipliers' coefficient of y_j)."""
    mu = np.zeros((rel.size(j), K)) if C[j] is None else C[j].copy()
    for k, i in rel.children(j):
        mu += rel.WT[k][i] @ lams[k]
    return mu


def _mu_error(rel: DagRelaxation, C: list, lams: list, j: int, K: int) -> np.ndarray:
    """A bound per entry on the rounding error of `mus_of`: gamma_m (|C_j| + sum |W_kj|^T |lam_k|) with m terms
    (Higham), with |W|^T |lam| bounded by W's column sums of |.| times max |lam| (one vector product, not a
    matrix product: the bound is ~1e-13 relative either way)."""
    e = np.zeros((rel.size(j), K)) if C[j] is None else np.abs(C[j])
    m = 1
    for k, i in rel.children(j):
        e = e + rel.colabs[k][i][:, None] * np.abs(lams[k]).max(axis=0, initial=0.0)[None, :]
        m += rel.W[k][i].shape[0]
    return _gamma(m) * e


def lagrangian_bound(rel: DagRelaxation, C: list, c0: np.ndarray, lams: list, mus: list | None = None) -> np.ndarray:
    """Certified upper bounds on max sum_j C[j][:, q].y_j + c0[q] over the relaxation, one per column q, from
    the multipliers lams[k] (n_{k+1}, K) of layer k + 1's rows (weak duality, module docstring); mus, when
    given, are their `mus_of` (computed here otherwise).

    Rounding: each mu_j is off by at most its `mus_of` error, which moves a vertex value by at most that times
    the largest |y| of the set; every product and sum adds at most gamma_N of the total size of the terms.
    Both are added, doubled."""
    L = rel.depth
    total = np.asarray(c0, np.float64).copy()
    K = total.size
    size = np.abs(total)
    err = np.zeros(K)
    for k in range(L):
        total += rel.b[k] @ lams[k]
        size += np.abs(rel.b[k]) @ np.abs(lams[k])
    mus = mus if mus is not None else [mus_of(rel, C, lams, j, K) for j in range(L + 1)]
    mu, e = mus[0], _mu_error(rel, C, lams, 0, K)
    ymax = np.maximum(np.abs(rel.box_lo), np.abs(rel.box_hi))
    err += ymax @ e
    total += np.maximum(mu * rel.box_lo[:, None], mu * rel.box_hi[:, None]).sum(axis=0)
    size += (np.abs(mu) * ymax[:, None]).sum(axis=0)     # both corners' sizes: rounding may flip the max
    for k in range(L):
        lam, l, u, kd = lams[k], rel.lo[k][:, None], rel.hi[k][:, None], rel.kind[k][:, None]
        mu, e = mus[k + 1], _mu_error(rel, C, lams, k + 1, K)
        ymax = np.maximum(np.abs(rel.lo[k]), np.abs(rel.hi[k]))
        err += ymax @ e
        ident = kd == IDENTITY
        # vertices: (l, l or 0), (u, u or 0), and (0, 0) for a triangle
        v_l = -lam * l + np.where(ident, mu * l, 0.0)
        v_u = -lam * u + np.where(kd == ZERO, 0.0, mu * u)
        total += np.maximum(np.maximum(v_l, v_u), np.where(kd == TRIANGLE, 0.0, -np.inf)).sum(axis=0)
        size += ((np.abs(lam) + np.abs(mu)) * ymax[:, None]).sum(axis=0)
    n_terms = rel.size(0) + sum(2 * rel.size(k + 1) for k in range(L)) + 4
    bound = total + 2.0 * (err + _gamma(n_terms) * size) + 1e-300
    return np.where(np.isnan(bound), np.inf, bound)


def slope_multipliers(rel: DagRelaxation, C: list, alphas: list, with_mus: bool = False):
    """Multipliers of back-substitution from the objectives C: a neuron whose coefficient mu is positive
    takes its upper line (slope u / (u - l)), a negative one the lower slope alphas[k] in [0, 1] (0: y >= 0,
    1: y >= x).  With the slopes of the LP optimum this is an optimal dual (Salman et al. 2019).  Layers are
    in topological order, so going backwards every reader of a group is done before the group.  with_mus:
    (lams, their `mus_of`)."""
    K = next(c.shape[1] for c in C if c is not None)
    lams = [None] * rel.depth
    mus = [None] * (rel.depth + 1)
    for k in range(rel.depth - 1, -1, -1):
        mu = mus[k + 1] = mus_of(rel, C, lams, k + 1, K)
        l, u, kd = rel.lo[k][:, None], rel.hi[k][:, None], rel.kind[k][:, None]
        tri = kd == TRIANGLE
        upper = np.where(tri, u / np.where(tri, u - l, 1.0), np.where(kd == IDENTITY, 1.0, 0.0))
        lower = np.where(tri, alphas[k], upper)
        lams[k] = np.where(mu > 0, upper * mu, lower * mu)
    if with_mus:
        mus[0] = mus_of(rel, C, lams, 0, K)
        return lams, mus
    return lams


def scaled(rel: DagRelaxation) -> tuple[DagRelaxation, list]:
    """The relaxation in units of each neuron's bound width s (x' = x / s, y' = y / s): every variable then
    ranges over about [-1, 1], which ADMM's single penalty per objective needs (on ACAS Xu, whose layers'
    widths differ by orders of magnitude, unscaled ADMM did not reach 1e-3 in 5000 iterations).  The sets
    S scale with their neuron, so they stay triangles and segments."""
    def width(lo, hi):
        w = hi - lo
        top = float(w.max(initial=0.0))
        return np.where(w > 1e-6 * top, w, max(1e-6 * top, 1e-12))

    def scale(M, out, inp):
        if sp.issparse(M):
            return (sp.diags(1.0 / out) @ M @ sp.diags(inp)).tocsr()
        return (1.0 / out)[:, None] * M * inp[None, :]
    s = [width(rel.box_lo, rel.box_hi)] + [width(l, h) for l, h in zip(rel.lo, rel.hi)]
    W = [[scale(w, s[k + 1], s[p]) for w, p in zip(ws, rel.parents[k])] for k, ws in enumerate(rel.W)]
    out = DagRelaxation(rel.parents, W, [rel.b[k] / s[k + 1] for k in range(rel.depth)],
                        [rel.lo[k] / s[k + 1] for k in range(rel.depth)],
                        [rel.hi[k] / s[k + 1] for k in range(rel.depth)],
                        rel.kind, rel.box_lo / s[0], rel.box_hi / s[0])
    return out, s


def cast(rel: DagRelaxation, dtype) -> DagRelaxation:
    """The same relaxation with its arrays in `dtype`."""
    def to(a):
        return a.astype(dtype)
    return DagRelaxation(rel.parents, [[to(w) for w in ws] for ws in rel.W], [to(b) for b in rel.b],
                         [to(a) for a in rel.lo], [to(a) for a in rel.hi], rel.kind, to(rel.box_lo), to(rel.box_hi))


def dense(M) -> np.ndarray:
    return M.toarray() if sp.issparse(M) else np.asarray(M)


def graph_relaxation(enc, g, bounds, relus: list) -> tuple[DagRelaxation, list]:
    """The relaxation `encode_graph` built (its LP, exactly), as groups: the graph's inputs, then each ReLU of
    `relus` (in topological order) with its live positions.  Also, per group, those positions' variables in
    the encoding (to move objectives over its variables to per-group form, `graph_objectives`)."""
    groups = enc.model.groups
    cols = [np.concatenate([groups[i] for i in g.inputs])]
    parents, W, b, lo, hi, kind = [], [], [], [], [], []
    for r in relus:
        h = groups[r]
        alive = np.flatnonzero(h >= 0)
        z = g.args(r)[0]
        M, c = enc.expr[z]
        rows = M.tocsr()[alive]
        ps, ws = [], []
        for j, cj in enumerate(cols):
            part = rows[:, cj]
            if part.nnz:
                ps.append(j)
                ws.append(dense_or_sparse(part))
        if not ps:                  # a constant pre-activation (its inputs dead): a zero row block on the box
            ps, ws = [0], [sp.csr_matrix((alive.size, cols[0].size))]
        covered = np.concatenate(cols)
        if rows[:, np.setdiff1d(np.arange(rows.shape[1]), covered)].nnz:
            raise ValueError(f"ReLU {r} reads variables outside the relaxation's groups")
        l, u = bounds.lo[z].reshape(-1)[alive], bounds.hi[z].reshape(-1)[alive]
        op = g.op(r)
        relu_mask = np.broadcast_to(getattr(op, "relu_mask", True), op.shape).reshape(-1)[alive]
        lin_mask = np.broadcast_to(getattr(op, "linear_mask", False), op.shape).reshape(-1)[alive]
        linear = lin_mask | (relu_mask & (l >= 0))
        parents.append(ps)
        W.append(ws)
        b.append(np.asarray(c, np.float64)[alive])
        # the encoding bounds a linear position's variable by [l, max(u, 0)], and an unstable one's by its triangle
        lo.append(np.asarray(l, np.float64))
        hi.append(np.where(linear, np.maximum(u, 0.0), u).astype(np.float64))
        kind.append(np.where(linear, IDENTITY, TRIANGLE).astype(np.int64))
        cols.append(h[alive])
    rel = DagRelaxation(parents, W, b, lo, hi, kind, enc.model.col_lo[cols[0]].astype(np.float64),
                        enc.model.col_hi[cols[0]].astype(np.float64))
    return rel, cols


def graph_objectives(cols: list, C: np.ndarray) -> list:
    """Objectives as rows over an encoding's variables (K, n_vars) in per-group form for `DagAdmm`; a group the
    objectives do not read is None."""
    C = np.atleast_2d(np.asarray(C, np.float64))
    out = [np.ascontiguousarray(C[:, c].T) if np.any(C[:, c]) else None for c in cols]
    if all(c is None for c in out):       # constant objectives: zero coefficients on the box (one group is read)
        out[0] = np.zeros((cols[0].size, C.shape[0]))
    covered = np.zeros(C.shape[1], bool)
    covered[np.concatenate(cols)] = True
    if np.any(C[:, ~covered]):
        raise ValueError("an objective reads variables outside the relaxation's groups")
    return out
