"""Optimised lower slopes (alpha-CROWN style) on the DAG: tighter bounds than DeepPoly for chosen positions.

Any lower line h >= a z with a in [0, 1] is sound for an unstable ReLU, so the back-substitution bound
L(a) of a linear form is a valid lower bound for *every* a; DeepPoly fixes a in {0, 1}.  Maximising
L over a (one slope per target row and unstable position) reaches the triangle-relaxation LP optimum for
the given intermediate bounds, at the cost of a few back-substitutions instead of one LP per position.

The gradient needs no autodiff: L is linear in each node's coefficient array A_n given the rest, and
dL/dA_n = v_n, where v is a forward pass of the relaxed network from the concretising input corner
(v_in = lo where A_in > 0, else hi; through an affine op v = op(v_args); through a ReLU, the line that
the row's coefficient sign selected).  So dL/da = A_h^+ * v_z at each ReLU (A_h the coefficient of h).
Soundness never rests on convergence: the returned bound is a fresh back-substitution at the final
slopes, rounded outward like every other bound.
"""

from __future__ import annotations

import time

import networkx as nx
import numpy as np

from ..ir.graph import Graph
from ..spec.region import Box
from .common import outward
from .engine import GraphBounds, _box_parts, _parts, _relaxation, rounding_margins

ROW_BUDGET_BYTES = 256 * 2 ** 20


def _backward(g: Graph, target: str, rows: np.ndarray, signs: np.ndarray, parts: dict, relax: dict, alpha: dict,
              need: set, keep: bool):
    """Lower bound of signs * flat(target)[rows] with per-row lower slopes `alpha` at unstable positions;
    with keep, also every ReLU's coefficient array and every input's, for the gradient."""
    R = rows.size
    shape = g.shape(target)
    e = np.zeros((R, int(np.prod(shape))))
    e[np.arange(R), rows] = signs
    A = {target: e.reshape((R,) + shape)}
    c = np.zeros(R)
    kept = {}
    for name in reversed(g.order):
        if name not in need or name not in A:
            continue
        a = A.pop(name)
        op = g.op(name)
        if op.kind == "input":
            lo, hi = parts[name]
            c += (np.maximum(a, 0) * lo + np.minimum(a, 0) * hi).reshape(R, -1).sum(axis=1)
            if keep:
                kept[name] = a
        elif op.kind == "const":
            c += (a * op.value).reshape(R, -1).sum(axis=1)
        elif op.kind == "relu":
            sl, su, tu, open_ = relax[name]
            slope = np.where(open_, alpha[name], sl) if name in alpha else sl
            ap, an = np.maximum(a, 0), np.minimum(a, 0)
            c += (an * tu).reshape(R, -1).sum(axis=1)
            _send(A, g.args(name)[0], ap * slope + an * su)
            if keep:
                kept[name] = a
        else:
            c += op.bias_dot(a)
            for arg, t in zip(g.args(name), op.transpose(a)):
                _send(A, arg, t)
    return c, kept


def _corner(g: Graph, kept: dict, parts: dict, R: int) -> np.ndarray:
    """Per row, the input point where the linear lower bound is attained (lo where the coefficient is > 0)."""
    cols = []
    for name in g.inputs:
        lo, hi = parts[name]
        a = kept.get(name)
        pt = np.broadcast_to((lo + hi) / 2, (R,) + lo.shape) if a is None else np.where(a > 0, lo, hi)
        cols.append(pt.reshape(R, -1))
    return np.concatenate(cols, axis=1)


def _send(A: dict, dest: str, a: np.ndarray) -> None:
    A[dest] = A[dest] + a if dest in A else a


def _gradient(g: Graph, kept: dict, parts: dict, relax: dict, alpha: dict, need: set, R: int) -> dict:
    """dL/d alpha per ReLU: the forward pass v of the relaxed network from each row's input corner."""
    v = {}
    for name in g.order:
        if name not in need:
            continue
        op = g.op(name)
        if op.kind == "input":
            lo, hi = parts[name]
            a = kept.get(name)
            v[name] = np.broadcast_to(lo, (R,) + lo.shape) if a is None else np.where(a > 0, lo, hi)
        elif op.kind == "const":
            v[name] = np.broadcast_to(op.value, (R,) + tuple(op.shape))
        elif op.kind == "relu":
            z = v[g.args(name)[0]]
            sl, su, tu, open_ = relax[name]
            slope = np.where(open_, alpha[name], sl) if name in alpha else sl
            a = kept.get(name)
            v[name] = z * slope if a is None else np.where(a >= 0, z * slope, z * su + tu)
        else:
            v[name] = op.forward(*[v[x] for x in g.args(name)])
    return {r: np.where(relax[r][3], np.maximum(kept[r], 0) * v[g.args(r)[0]], 0.0) for r in alpha if r in kept}


def alpha_lower(g: Graph, box: Box, bounds: GraphBounds, target: str, rows: np.ndarray, signs: np.ndarray, *,
                iters: int = 20, lr: float = 0.2, deadline: float | None = None,
                corners: np.ndarray | None = None, row_bytes: float = ROW_BUDGET_BYTES, stop=None) -> np.ndarray:
    """Sound lower bounds of signs[i] * flat(target)[rows[i]] with optimised lower slopes (Adam on [0, 1]).
    corners (rows x inputs), if given, receives each row's input corner of its last relaxed minimum: a
    point worth running in the real network (it often shows the row's other sign).  row_bytes: memory for
    one chunk of rows' coefficients.  stop: an event that ends the ascent early, as the deadline does."""
    parts = _box_parts(g, box)
    need = nx.ancestors(g.dag, target) | {target}
    margin = rounding_margins(g, _parts(g, box.lo[None], box.hi[None]), need)[target][0].reshape(-1)
    relax = {}
    for r in g.relus:
        if r in need:
            z = g.args(r)[0]
            sl, su, tu = _relaxation(bounds.lo[z], bounds.hi[z], g.op(r))
            mask = np.broadcast_to(getattr(g.op(r), "relu_mask", True), sl.shape)
            relax[r] = (sl, su, tu, mask & (bounds.lo[z] < 0) & (bounds.hi[z] > 0))
    opt = [r for r in relax if relax[r][3].any()]
    widest = sum(g.op(n).size for n in need)
    chunk = max(1, int(row_bytes // (8 * widest * 6)))
    out = np.empty(rows.size)
    for s in range(0, rows.size, chunk):
        rr, ss = rows[s:s + chunk], signs[s:s + chunk]
        best_c = np.full(rr.size, -np.inf)
        best = {r: np.broadcast_to(relax[r][0], (rr.size,) + relax[r][0].shape).copy() for r in opt}
        live = np.arange(rr.size)             # rows not yet proved (L >= 0 settles a phase: they stop)
        alpha = {r: best[r].copy() for r in opt}
        m = {r: np.zeros_like(alpha[r]) for r in opt}
        v2 = {r: np.zeros_like(alpha[r]) for r in opt}
        for it in range(1, iters + 1):
            c, kept = _backward(g, target, rr[live], ss[live], parts, relax, alpha, need, keep=True)
            if corners is not None:
                corners[s + live] = _corner(g, kept, parts, live.size)
            better = c > best_c[live]
            best_c[live[better]] = c[better]
            for r in opt:
                best[r][live[better]] = alpha[r][better]
            if it == iters or (deadline is not None and time.perf_counter() > deadline) or \
                    (stop is not None and stop.is_set()):
                break
            grad = _gradient(g, kept, parts, relax, alpha, need, live.size)
            for r in opt:          # Adam ascent, projected onto [0, 1]
                gr = grad.get(r, 0.0)
                m[r] = 0.9 * m[r] + 0.1 * gr
                v2[r] = 0.999 * v2[r] + 0.001 * gr ** 2
                step = lr * (m[r] / (1 - 0.9 ** it)) / (np.sqrt(v2[r] / (1 - 0.999 ** it)) + 1e-12)
                alpha[r] = np.clip(alpha[r] + step, 0.0, 1.0)
            still = best_c[live] < 0
            if not still.any():
                break
            if still.mean() < 0.9:             # drop the proved rows from the working arrays
                live = live[still]
                for d in (alpha, m, v2):
                    for r in opt:
                        d[r] = d[r][still]
        # the bound reported is a fresh back-substitution at the best slopes found, less the target's rounding
        # margin (`engine.rounding_margins`)
        c, _ = _backward(g, target, rr, ss, parts, relax, best, need, keep=False)
        out[s:s + chunk] = outward(c, c)[0] - margin[rr]
    return out
