"""Solver-neutral LP/MILP description of a ReLU network over a box (big-M encoding).

Variables: the input x, then per encoded hidden layer j the activations h_j of its non-dead neurons
and one binary d per unstable ReLU neuron.  With bounds l < 0 < u on z = W h_{j-1} + b:
    h >= z,  h <= z - l (1 - d),  h <= u d,  0 <= h <= u,  d in {0, 1}.
Relaxing d to [0, 1] gives exactly the triangle relaxation, so one model serves LP and MILP.
Active neurons and linear channels are the equality h = z; dead neurons are dropped (h = 0), with
the valid cut l <= z <= u kept as a row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import scipy.sparse as sp

from ..bounds import Bounds
from ..ir.network import Network
from ..spec.region import Box


@dataclass
class LinearModel:
    """row_lo <= A v <= row_hi, col_lo <= v <= col_hi, v[integer] integral.  Objectives come per query."""

    A: sp.csr_matrix
    row_lo: np.ndarray
    row_hi: np.ndarray
    col_lo: np.ndarray
    col_hi: np.ndarray
    integer: np.ndarray
    groups: dict = field(default_factory=dict)  # name -> index array of its variables ("x", "h1", "d1", ...)

    @property
    def n_vars(self) -> int:
        return self.A.shape[1]

    @property
    def n_rows(self) -> int:
        return self.A.shape[0]

    @property
    def n_binaries(self) -> int:
        return int(self.integer.sum())

    @cached_property
    def abs_AT(self) -> sp.csr_matrix:
        """|A|^T, for the rounding error of the dual's reduced costs (`safe_upper_bound`)."""
        return sp.csr_matrix(abs(self.A)).T.tocsr()

    @cached_property
    def col_terms(self) -> int:
        """The most nonzeros in one column of A."""
        return int(np.diff(sp.csc_matrix(self.A).indptr).max(initial=0))

    def relaxed(self) -> "LinearModel":
        return LinearModel(self.A, self.row_lo, self.row_hi, self.col_lo, self.col_hi,
                           np.zeros_like(self.integer), self.groups)


@dataclass
class NetworkEncoding:
    """A LinearModel of layers 1..depth of a network, plus how to read objectives for the next layer."""

    model: LinearModel
    depth: int                  # hidden layers encoded; objectives live on dense layer `depth` (0-based)
    prev_index: np.ndarray      # variable index of each neuron of h_{depth} (or x); -1 where dead (h = 0)

    def objective(self, W_row: np.ndarray, b: float) -> tuple[np.ndarray, float]:
        """Coefficients c and offset so that c @ v + offset = W_row @ h_prev + b."""
        c = np.zeros(self.model.n_vars)
        alive = self.prev_index >= 0
        np.add.at(c, self.prev_index[alive], W_row[alive])
        return c, float(b)

    def input_point(self, v: np.ndarray) -> np.ndarray:
        return np.asarray(v)[self.model.groups["x"]]


def safe_upper_bound(model: LinearModel, c: np.ndarray, offset: float, y: np.ndarray) -> float:
    """A rigorous upper bound on max c.v + offset over the LP relaxation, valid for ANY multipliers y.

    c.v = y.(A v) + (c - A^T y).v and each term is bounded by the row/column bounds (Neumaier and
    Shcherbina, "Safe bounds in linear and mixed-integer programming", 2004).  Solver duals make it
    tight; its validity never depends on the solver's tolerances.
    """
    y = np.where((y > 0) & ~np.isfinite(model.row_hi), 0.0, y)
    y = np.where((y < 0) & ~np.isfinite(model.row_lo), 0.0, y)
    r = c - model.A.T @ y
    # r is rounded: each r_j sums its column's k products, so |fl(r_j) - r_j| <= gamma_{k+1} (|c_j| + (|A|^T|y|)_j),
    # which may far exceed |r_j| itself (terms of 1e9 cancelling to 1e-7: a "safe" bound 3e-6 below the exact
    # one called a crossing neuron dead, found by a hunt, stop 47).  Each column's term moves by at most that
    # times max|v_j|; the products and the final sums add gamma_n of the terms' total size.  Both doubled.
    r_err = 2.0 * _gamma(model.col_terms + 2) * (np.abs(c) + model.abs_AT @ np.abs(y))
    vmax = np.maximum(np.abs(model.col_lo), np.abs(model.col_hi))
    with np.errstate(invalid="ignore"):
        rows = np.where(y > 0, y * model.row_hi, np.where(y < 0, y * model.row_lo, 0.0))
        cols = np.where(r > 0, r * model.col_hi, np.where(r < 0, r * model.col_lo, 0.0))
        moved = np.where(r_err > 0, r_err * vmax, 0.0)
    total = float(rows.sum() + cols.sum()) + offset
    scale = float(np.abs(rows).sum() + np.abs(cols).sum()) + abs(offset)
    bound = total + float(moved.sum()) + 2.0 * _gamma(rows.size + cols.size + moved.size + 4) * (scale + float(moved.sum()))
    bound = bound + 1e-12 * scale + 1e-12
    return bound if np.isfinite(bound) or bound == np.inf else np.inf


def _gamma(n: int) -> float:
    """gamma_n = n u / (1 - n u), u = 2^-53: the relative error bound of n floating-point operations (Higham)."""
    u = 2.0 ** -53
    return n * u / (1.0 - n * u)


def encode_network(net: Network, box: Box, bounds: Bounds, depth: int, integer: bool = True) -> NetworkEncoding:
    """Encode the input box and hidden layers 1..depth with the given (sound) pre-activation bounds."""
    dense, masks = net.dense, net.masks
    col_lo, col_hi, integral = [box.lo], [box.hi], [np.zeros(box.dim, bool)]
    rows, cols, vals, row_lo, row_hi = [], [], [], [], []
    n_vars, n_rows = box.dim, 0
    groups = {"x": np.arange(box.dim)}
    prev = np.arange(box.dim)

    def add_rows(P, Wsub, extra_cols, extra_vals, lo, hi):
        """Rows  lo <= Wsub @ v[P] + sum(extra) <= hi  (one per row of Wsub)."""
        nonlocal n_rows
        m = Wsub.shape[0]
        alive = P >= 0
        Wa = Wsub[:, alive]
        r = np.repeat(np.arange(n_rows, n_rows + m), alive.sum())
        rows.append(r)
        cols.append(np.tile(P[alive], m))
        vals.append(Wa.reshape(-1))
        for ec, ev in zip(extra_cols, extra_vals):
            rows.append(np.arange(n_rows, n_rows + m))
            cols.append(ec)
            vals.append(ev)
        row_lo.append(lo)
        row_hi.append(hi)
        n_rows += m

    for j in range(depth):
        W, b = dense[j].W, dense[j].b
        lo, hi, m = bounds.lo[j], bounds.hi[j], masks[j]
        dead = m & (hi <= 0)
        linear = (~m | (lo >= 0)) & ~dead  # bounds [0, 0] are both: dead wins (it has no variable)
        unstable = ~dead & ~linear
        alive = ~dead
        idx = np.full(W.shape[0], -1)
        idx[alive] = n_vars + np.arange(alive.sum())
        n_vars += alive.sum()
        col_lo.append(np.where(linear, lo, 0.0)[alive])
        col_hi.append(hi[alive])
        integral.append(np.zeros(alive.sum(), bool))
        groups[f"h{j + 1}"] = idx
        # linear (active or identity) neurons: h - W h_prev = b
        L = np.flatnonzero(linear)
        if L.size:
            add_rows(prev, -W[L], [idx[L]], [np.ones(L.size)], b[L], b[L])
        # dead neurons: valid cut l - b <= W h_prev <= u - b
        D = np.flatnonzero(dead)
        if j == 0 and D.size:
            # on the input box the first layer's range is exact interval arithmetic: a dead cut the box
            # already implies is a dense row of the input width that only slows every LP (MNIST: ~200
            # rows of 784; mnist 256x4 stability decisions 9 % faster without them).  Dropping a valid
            # row is a relaxation anyway, so this is sound whatever the rounding.
            c, r = (box.lo + box.hi) / 2, (box.hi - box.lo) / 2
            zc, zr = W[D] @ c + b[D], np.abs(W[D]) @ r
            D = D[~((zc + zr <= hi[D]) & (zc - zr >= lo[D]))]
        if D.size:
            add_rows(prev, W[D], [], [], lo[D] - b[D], hi[D] - b[D])
        U = np.flatnonzero(unstable)
        if U.size:
            d = n_vars + np.arange(U.size)
            n_vars += U.size
            col_lo.append(np.zeros(U.size))
            col_hi.append(np.ones(U.size))
            integral.append(np.full(U.size, integer))
            groups[f"d{j + 1}"] = d
            hU = idx[U]
            # h - W h_prev >= b
            add_rows(prev, -W[U], [hU], [np.ones(U.size)], b[U], np.full(U.size, np.inf))
            # h - W h_prev - l d <= b - l
            add_rows(prev, -W[U], [hU, d], [np.ones(U.size), -lo[U]], np.full(U.size, -np.inf), b[U] - lo[U])
            # h - u d <= 0
            add_rows(np.array([], int), np.zeros((U.size, 0)), [hU, d], [np.ones(U.size), -hi[U]],
                     np.full(U.size, -np.inf), np.zeros(U.size))
        prev = idx

    A = sp.csr_matrix((np.concatenate(vals) if vals else np.zeros(0),
                       (np.concatenate(rows) if rows else np.zeros(0, int),
                        np.concatenate(cols) if cols else np.zeros(0, int))), shape=(n_rows, n_vars))
    model = LinearModel(A, np.concatenate(row_lo) if row_lo else np.zeros(0),
                        np.concatenate(row_hi) if row_hi else np.zeros(0),
                        np.concatenate(col_lo), np.concatenate(col_hi), np.concatenate(integral), groups)
    return NetworkEncoding(model, depth, prev)
