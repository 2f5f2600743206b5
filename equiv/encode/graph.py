"""Graph -> solver-neutral LP/MILP (`milp.LinearModel`): the triangle relaxation (binaries optional) of a DAG.

Variables: the input x, and every ReLU output position that is not proved dead (h).  Between ReLUs each
tensor is an affine expression of these variables, propagated through each linear op's sparse matrix
(computed from the op's adjoint on identity rows, so a convolution's matrix is built sparse, never
dense).  With sound bounds [l, u] on a ReLU input z:
    active (l >= 0) or a linear position:  h = z;     dead (u <= 0): no variable (h = 0);
    unstable:  h >= z,  h >= 0,  h <= u (z - l) / (u - l)  [LP]   or the big-M rows with a binary [MILP].
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
import numpy as np
import scipy.sparse as sp

from ..bounds.engine import GraphBounds
from ..ir.graph import Graph
from .chain import LinearModel
from ..spec.region import Box

CHUNK = 512


def op_matrix(op, in_shapes: list, rows: np.ndarray | None = None) -> list[sp.csr_matrix]:
    """The sparse matrices (out_size x in_size_i) of a linear op, one per input, from its adjoint; with
    `rows`, only those output rows (len(rows) x in_size_i)."""
    n = op.size
    todo = np.arange(n) if rows is None else np.asarray(rows)
    mats = [[] for _ in in_shapes]
    if todo.size == 0:
        return [sp.csr_matrix((0, int(np.prod(s)))) for s in in_shapes]
    for s in range(0, todo.size, CHUNK):
        rows = todo[s:s + CHUNK]
        e = np.zeros((rows.size, n))
        e[np.arange(rows.size), rows] = 1.0
        for k, t in enumerate(op.transpose(e.reshape((rows.size,) + tuple(op.shape)))):
            t = np.broadcast_to(t, (rows.size,) + tuple(in_shapes[k]))
            mats[k].append(sp.csr_matrix(t.reshape(rows.size, -1)))
    return [sp.vstack(m).tocsr() for m in mats]


def _bias(op) -> np.ndarray:
    if getattr(op, "bias", None) is None:
        return np.zeros(op.size)
    return np.broadcast_to(op.bias, op.shape).reshape(-1).astype(np.float64)


@dataclass
class GraphEncoding:
    model: LinearModel
    expr: dict          # tensor -> (sparse M (size x n_vars), c (size,)): flat(tensor) = M v + c

    def objective(self, tensor: str, position: int, sign: float = 1.0) -> tuple[np.ndarray, float]:
        """Coefficients and offset of sign * flat(tensor)[position] over the variables."""
        M, c = self.expr[tensor]
        return sign * M.getrow(position).toarray().ravel(), sign * float(c[position])


def cone_of(g: Graph, target: str, position: int) -> dict:
    """Per tensor, the flat positions that position `position` of `target` depends on (its cone of
    influence), found by one adjoint pass with random positive weights (a cancellation to exactly 0 is
    caught by `encode_graph`, which then refuses the cone)."""
    rng = np.random.default_rng(0)
    need = {target} | nx.ancestors(g.dag, target)
    masks = {target: np.zeros(g.op(target).size, bool)}
    masks[target][position] = True
    for name in reversed(g.order):
        if name not in need or name not in masks or not masks[name].any():
            continue
        op, m = g.op(name), masks[name]
        args = g.args(name)
        if op.kind == "relu":
            sent = [m]
        elif op.kind == "linear":
            a = np.zeros((1, op.size))
            a[0, m] = rng.uniform(1.0, 2.0, int(m.sum()))
            sent = [np.broadcast_to(t, (1,) + tuple(g.shape(x))).reshape(-1) != 0
                    for x, t in zip(args, op.transpose(a.reshape((1,) + tuple(op.shape))))]
        else:
            sent = []
        for x, t in zip(args, sent):
            masks[x] = masks[x] | t if x in masks else t.copy()
    return masks


class ConeError(ValueError):
    """A linear op reads a position outside the computed cone: encode the whole graph instead."""


def encode_graph(g: Graph, box: Box, bounds: GraphBounds, upto: str | None = None, integer: bool = False,
                 cone: dict | None = None) -> GraphEncoding:
    """The relaxation (or, with integer, the exact big-M MILP) of every node up to tensor `upto`; with a
    `cone` (from `cone_of`), only the positions in it get rows and variables (a smaller, equally exact
    model for one objective: nothing outside the cone can change that position's value)."""
    need = set(g.order) if upto is None else {upto} | nx.ancestors(g.dag, upto)
    n_vars = 0
    col_lo, col_hi, integral = [], [], []
    blocks, row_lo, row_hi = [], [], []     # row blocks as (sparse over the vars known so far, lo, hi)
    expr = {}
    groups = {}

    def new_vars(lo, hi, is_int=False):
        nonlocal n_vars
        idx = np.arange(n_vars, n_vars + lo.size)
        n_vars += lo.size
        col_lo.append(lo)
        col_hi.append(hi)
        integral.append(np.full(lo.size, is_int))
        return idx

    def onehot(idx):
        return sp.csr_matrix((np.ones(idx.size), (np.arange(idx.size), idx)), shape=(idx.size, n_vars))

    for name in g.order:
        if name not in need:
            continue
        op = g.op(name)
        if op.kind == "input":
            lo = g.split_input(box.lo[None])[name][0].reshape(-1)
            hi = g.split_input(box.hi[None])[name][0].reshape(-1)
            idx = new_vars(lo, hi)
            groups[name] = idx
            expr[name] = (onehot(idx), np.zeros(idx.size))
        elif op.kind == "const":
            expr[name] = (sp.csr_matrix((op.size, n_vars)),
                          np.asarray(np.broadcast_to(op.value, op.shape), float).reshape(-1))
        elif op.kind == "linear":   # M_out = sum_i L_i M_i, c_out = sum_i L_i c_i + bias
            rows = None if cone is None else np.flatnonzero(cone.get(name, np.zeros(op.size, bool)))
            mats = op_matrix(op, [g.shape(a) for a in g.args(name)], rows)
            c, M = _bias(op).copy(), sp.csr_matrix((op.size if rows is None else rows.size, n_vars))
            if rows is not None:
                c = c[rows]
            for Lm, a in zip(mats, g.args(name)):
                if cone is not None and Lm.nnz and not cone.get(a, np.zeros(0, bool))[Lm.indices].all():
                    raise ConeError(f"node {name} reads positions of {a} outside the cone")
                Ma, ca = expr[a]
                c += Lm @ ca
                M = M + Lm @ _pad(Ma, n_vars)
            if rows is not None:      # back to full size: rows outside the cone stay empty (never read)
                S = sp.csr_matrix((np.ones(rows.size), (rows, np.arange(rows.size))), shape=(op.size, rows.size))
                M, c = S @ M, S @ c
            expr[name] = (M.tocsr(), c)
        else:  # relu
            z = g.args(name)[0]
            l, u = bounds.lo[z].reshape(-1), bounds.hi[z].reshape(-1)
            relu_mask = np.broadcast_to(getattr(op, "relu_mask", True), op.shape).reshape(-1)
            lin_mask = np.broadcast_to(getattr(op, "linear_mask", False), op.shape).reshape(-1)
            dead = (relu_mask & (u <= 0)) | (~relu_mask & ~lin_mask)
            linear = ~dead & (lin_mask | (relu_mask & (l >= 0)))
            if cone is not None:        # positions outside the cone get no variable (never read)
                dead = dead | ~cone.get(name, np.zeros(op.size, bool))
                linear = linear & ~dead
            unstable = ~dead & ~linear
            Mz, cz = expr[z]
            alive = np.flatnonzero(~dead)
            h = np.full(op.size, -1)
            h[alive] = new_vars(np.where(linear, l, 0.0)[alive], np.maximum(u, 0.0)[alive])
            groups[name] = h
            Mz = _pad(Mz, n_vars)
            L = np.flatnonzero(linear)
            if L.size:   # h - z = c
                blocks.append(onehot(h[L]) - Mz[L])
                row_lo.append(cz[L])
                row_hi.append(cz[L])
            U = np.flatnonzero(unstable)
            if U.size:
                hU = onehot(h[U])
                blocks.append(hU - Mz[U])                                # h - z >= c
                row_lo.append(cz[U])
                row_hi.append(np.full(U.size, np.inf))
                if integer:
                    d = new_vars(np.zeros(U.size), np.ones(U.size), True)
                    Mz2, hU2 = _pad(Mz[U], n_vars), _pad(hU, n_vars)
                    D = sp.csr_matrix((np.ones(U.size), (np.arange(U.size), d)), shape=(U.size, n_vars))
                    blocks.append(hU2 - Mz2 - D.multiply(l[U][:, None]))     # h - z - l d <= c - l
                    row_lo.append(np.full(U.size, -np.inf))
                    row_hi.append(cz[U] - l[U])
                    blocks.append(hU2 - D.multiply(u[U][:, None]))           # h - u d <= 0
                    row_lo.append(np.full(U.size, -np.inf))
                    row_hi.append(np.zeros(U.size))
                else:
                    s = u[U] / (u[U] - l[U])                                 # h - s z <= s (c - l)
                    blocks.append(hU - Mz[U].multiply(s[:, None]))
                    row_lo.append(np.full(U.size, -np.inf))
                    row_hi.append(s * (cz[U] - l[U]))
            M = sp.csr_matrix((np.ones(alive.size), (alive, h[alive])), shape=(op.size, n_vars))
            expr[name] = (M, np.zeros(op.size))
    A = sp.vstack([_pad(b, n_vars) for b in blocks]).tocsr() if blocks else sp.csr_matrix((0, n_vars))
    model = LinearModel(A, np.concatenate(row_lo) if row_lo else np.zeros(0),
                        np.concatenate(row_hi) if row_hi else np.zeros(0),
                        np.concatenate(col_lo), np.concatenate(col_hi), np.concatenate(integral), groups)
    return GraphEncoding(model, {k: (_pad(M, n_vars), c) for k, (M, c) in expr.items()})


def _pad(M, n_vars):
    """M with as many columns as there are variables now (variables are only ever appended)."""
    M = sp.csr_matrix(M)
    if M.shape[1] < n_vars:
        M = sp.hstack([M, sp.csr_matrix((M.shape[0], n_vars - M.shape[1]))]).tocsr()
    return M
