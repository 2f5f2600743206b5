"""One MILP for two networks over a shared input: the product encoding, with difference cuts.

Each network is encoded by `milp.encode_network` (big-M, exact with the binaries); the two models
share their input columns x.  When difference bounds are known (`diff_bounds.PairBounds`), every
paired neuron adds the rows  dl <= z_f - z_g <= du  and  hl <= h_f - h_g <= hu.  They hold at every
real input, so they remove no real point (the encoding stays exact), but they tie the two LP
relaxations together, which is where a product encoding of close networks gets its strength.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from ..prove.align import AlignedPair
from ..bounds import Bounds
from ..bounds.diff import PairBounds, dh_bounds
from .chain import LinearModel, encode_network
from ..spec.region import Box


@dataclass
class ProductModel:
    model: LinearModel
    f_prev: np.ndarray      # variable of each neuron of f's last hidden layer (-1: dead, h = 0)
    g_prev: np.ndarray
    f_h: list               # per hidden layer, variable index of each neuron of f (-1: dead)
    g_h: list
    dim: int

    def output_objective(self, pair: AlignedPair, cf: np.ndarray, cg: np.ndarray) -> tuple[np.ndarray, float]:
        """Coefficients and offset of  cf . f(x) + cg . g(x)."""
        Wf, bf = pair.f.dense[-1].W, pair.f.dense[-1].b
        Wg, bg = pair.g.dense[-1].W, pair.g.dense[-1].b
        c = np.zeros(self.model.n_vars)
        _scatter(c, self.f_prev, cf @ Wf)
        _scatter(c, self.g_prev, cg @ Wg)
        return c, float(cf @ bf + cg @ bg)

    def input_point(self, v: np.ndarray) -> np.ndarray:
        return np.asarray(v)[:self.dim]

    def with_rows(self, rows: list[tuple[np.ndarray, float, float]]) -> LinearModel:
        """The model plus rows  lo <= c . v <= hi  given as (c, lo, hi)."""
        m = self.model
        if not rows:
            return m
        A = sp.vstack([m.A, sp.csr_matrix(np.vstack([r[0] for r in rows]))]).tocsr()
        return LinearModel(A, np.concatenate([m.row_lo, [r[1] for r in rows]]),
                           np.concatenate([m.row_hi, [r[2] for r in rows]]), m.col_lo, m.col_hi, m.integer, m.groups)


def _scatter(c, idx, w):
    alive = idx >= 0
    np.add.at(c, idx[alive], w[alive])


def product_encoding(pair: AlignedPair, box: Box, pb: PairBounds, n: int = 0, cuts: bool = True) -> ProductModel:
    """The product MILP of the pair on `box`, with the bounds of box n of `pb` (sound on `box`)."""
    depth = len(pair.f.masks)
    fb = Bounds([a[n] for a in pb.f_lo], [a[n] for a in pb.f_hi])
    gb = Bounds([a[n] for a in pb.g_lo], [a[n] for a in pb.g_hi])
    ef = encode_network(pair.f, box, fb, depth)
    eg = encode_network(pair.g, box, gb, depth)
    d, nf = box.dim, ef.model.n_vars
    remap = np.concatenate([np.arange(d), nf + np.arange(eg.model.n_vars - d)])   # g's columns -> product
    Ag = eg.model.A.tocoo()
    A = sp.vstack([sp.csr_matrix((ef.model.A.data, ef.model.A.indices, ef.model.A.indptr),
                                 shape=(ef.model.n_rows, nf + eg.model.n_vars - d)),
                   sp.csr_matrix((Ag.data, (Ag.row, remap[Ag.col])), shape=(eg.model.n_rows, nf + eg.model.n_vars - d))])
    f_h = [ef.model.groups[f"h{k + 1}"] for k in range(depth)]
    g_h = [np.where(eg.model.groups[f"h{k + 1}"] >= 0, remap[np.maximum(eg.model.groups[f"h{k + 1}"], 0)], -1)
           for k in range(depth)]
    model = LinearModel(
        A.tocsr(), np.concatenate([ef.model.row_lo, eg.model.row_lo]), np.concatenate([ef.model.row_hi, eg.model.row_hi]),
        np.concatenate([ef.model.col_lo, eg.model.col_lo[d:]]), np.concatenate([ef.model.col_hi, eg.model.col_hi[d:]]),
        np.concatenate([ef.model.integer, eg.model.integer[d:]]),
        {"x": np.arange(d), **{f"f:h{k + 1}": f_h[k] for k in range(depth)},
         **{f"g:h{k + 1}": g_h[k] for k in range(depth)}})
    pm = ProductModel(model, f_h[-1] if depth else np.arange(d), g_h[-1] if depth else np.arange(d), f_h, g_h, d)
    if cuts:
        pm.model = _with_difference_cuts(pm, pair, pb, n)
    return pm


def _with_difference_cuts(pm: ProductModel, pair: AlignedPair, pb: PairBounds, n: int) -> LinearModel:
    """Rows dl <= z_f,k - z_g,k <= du for every layer (x-only rows for k = 0) and bounds on h_f - h_g."""
    rows, cols, vals, lo, hi = [], [], [], [], []
    r = 0
    nv, d = pm.model.n_vars, pm.dim
    x = np.arange(d)
    for k in range(len(pair.f.dense)):
        Wf, bf, Wg, bg = pair.f.dense[k].W, pair.f.dense[k].b, pair.g.dense[k].W, pair.g.dense[k].b
        fin = x if k == 0 else pm.f_h[k - 1]
        gin = x if k == 0 else pm.g_h[k - 1]
        M = np.zeros((Wf.shape[0], nv))
        if k == 0:
            M[:, x] = Wf - Wg
        else:
            _scatter2(M, fin, Wf)
            _scatter2(M, gin, -Wg)
        db = bf - bg
        dl, du = pb.d_lo[k][n] - db, pb.d_hi[k][n] - db
        keep = np.flatnonzero(np.any(M != 0, axis=1) & np.isfinite(dl) & np.isfinite(du))
        for i in keep:
            nz = np.flatnonzero(M[i])
            rows.append(np.full(nz.size, r))
            cols.append(nz)
            vals.append(M[i, nz])
            lo.append(dl[i])
            hi.append(du[i])
            r += 1
        if k < len(pair.f.masks):
            hl, hu = dh_bounds(pb.take([n]), pair, k)
            for i in range(Wf.shape[0]):
                a, b = pm.f_h[k][i], pm.g_h[k][i]
                if (a < 0 and b < 0) or not (np.isfinite(hl[0, i]) and np.isfinite(hu[0, i])):
                    continue
                c_, v_ = [], []
                if a >= 0:
                    c_.append(a)
                    v_.append(1.0)
                if b >= 0:
                    c_.append(b)
                    v_.append(-1.0)
                rows.append(np.full(len(c_), r))
                cols.append(np.array(c_))
                vals.append(np.array(v_))
                lo.append(hl[0, i])
                hi.append(hu[0, i])
                r += 1
    m = pm.model
    if not r:
        return m
    extra = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(r, nv))
    return LinearModel(sp.vstack([m.A, extra]).tocsr(), np.concatenate([m.row_lo, lo]), np.concatenate([m.row_hi, hi]),
                       m.col_lo, m.col_hi, m.integer, m.groups)


def _scatter2(M, idx, W):
    alive = np.flatnonzero(idx >= 0)
    np.add.at(M.T, idx[alive], W[:, alive].T)
