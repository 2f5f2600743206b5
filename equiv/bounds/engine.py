"""One bounds engine over the graph: interval arithmetic and DeepPoly/CROWN back-substitution on a DAG.

Back-substitution of a tensor's rows walks the graph in reverse topological order.  Each node collects
the coefficient arrays its consumers send it (a residual Add sends its A to both branches, which are
summed where they meet; a Concat sends each input its slice), and passes them on through its op's
adjoint (`transpose`), a ReLU through its linear relaxation on [l, u]:
- dead (u <= 0): 0;  active (l >= 0): the identity;
- unstable: upper line u/(u - l) (z - l), lower line 0 or z (z when u > -l, DeepPoly's choice);
the upper line for positive coefficients of an upper bound (and negative ones of a lower bound).
At an input the box concretises the linear form.  Every result is widened by the float safety margin.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import networkx as nx
import numpy as np
from tqdm import tqdm

from ..ir.graph import Graph
from ..spec.region import Box
from .common import outward

ROW_BUDGET_BYTES = 256 * 2 ** 20     # memory for the coefficient arrays of one chunk of rows


@dataclass
class GraphBounds:
    """Sound lower/upper bounds of every tensor of a graph on a box: {tensor: array of its shape}."""

    lo: dict
    hi: dict
    seconds: dict = field(default_factory=dict)

    def relu_input(self, g: Graph, relu: str) -> tuple[np.ndarray, np.ndarray]:
        z = g.args(relu)[0]
        return self.lo[z], self.hi[z]

    def counts(self, g: Graph) -> dict:
        """ReLU positions proved dead (hi <= 0), active (lo >= 0) and left unstable (a MaskedRelu's identity
        and zero positions are not ReLUs)."""
        rows = self.per_layer(g)
        dead, active = sum(r["dead"] for r in rows), sum(r["active"] for r in rows)
        return {"dead": dead, "active": active, "stable": dead + active,
                "unstable": sum(r["unstable"] for r in rows)}

    def per_layer(self, g: Graph) -> list[dict]:
        rows = []
        for r in g.relus:
            lo, hi = self.relu_input(g, r)
            m = np.broadcast_to(getattr(g.op(r), "relu_mask", True), lo.shape)
            rows.append({"relu": r, "shape": list(lo.shape), "size": int(m.sum()), "dead": int(np.sum((hi <= 0) & m)),
                         "active": int(np.sum((lo >= 0) & (hi > 0) & m)),
                         "unstable": int(np.sum((lo < 0) & (hi > 0) & m))})
        return rows


def _box_parts(g: Graph, box: Box) -> dict:
    lo, hi = g.split_input(box.lo[None]), g.split_input(box.hi[None])
    return {n: (lo[n][0], hi[n][0]) for n in g.inputs}


def interval_graph(g: Graph, box: Box, known: GraphBounds | None = None) -> GraphBounds:
    """Interval bounds of every tensor (centre/radius through each op; |L| for the radius), intersected
    with `known` bounds where given."""
    box.check_dim(g.n_inputs)
    parts = _box_parts(g, box)
    lo, hi = {}, {}
    for name in g.order:
        op = g.op(name)
        if op.kind == "input":
            l, h = parts[name]
        elif op.kind == "const":
            l = h = np.broadcast_to(op.value, op.shape).astype(np.float64)
        elif op.kind == "relu":   # monotone elementwise (relu, identity or 0 per position)
            a = g.args(name)[0]
            l, h = op.forward(lo[a][None])[0], op.forward(hi[a][None])[0]
        else:
            args = g.args(name)
            c = op.forward(*[((lo[a] + hi[a]) / 2)[None] for a in args])[0]
            r = op.abs_linear(*[((hi[a] - lo[a]) / 2)[None] for a in args])[0]
            l, h = outward(c - r, c + r)
        if known is not None and name in known.lo:
            l, h = np.maximum(l, known.lo[name]), np.minimum(h, known.hi[name])
        lo[name], hi[name] = np.asarray(l, np.float64), np.asarray(h, np.float64)
    return GraphBounds(lo, hi)


def _relaxation(l: np.ndarray, u: np.ndarray, op=None):
    """Slopes and upper intercept of the ReLU's linear bounds on [l, u]: h >= sl z, h <= su z + tu.
    A MaskedRelu is exactly the identity or 0 off its ReLU positions, whatever the bounds."""
    unstable = (l < 0) & (u > 0)
    su = np.where(l >= 0, 1.0, 0.0)
    tu = np.zeros_like(l)
    den = np.where(unstable, u - l, 1.0)
    su = np.where(unstable, u / den, su)
    tu = np.where(unstable, -u * l / den, tu)
    sl = np.where(unstable, (u > -l).astype(float), su)
    mask = getattr(op, "relu_mask", None)
    if mask is not None:
        fixed = np.where(op.linear_mask, 1.0, 0.0)
        sl, su, tu = np.where(mask, sl, fixed), np.where(mask, su, fixed), np.where(mask, tu, 0.0)
    return sl, su, tu


def backsubstitute(g: Graph, target: str, rows: np.ndarray, bounds: GraphBounds, parts: dict,
                   relax: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """DeepPoly lower and upper bounds of the flat elements `rows` of tensor `target` (before rounding).

    relax: {relu: (sl, su, tu)} relaxations computed from `bounds` (made here when not given)."""
    R = rows.size
    shape = g.shape(target)
    e = np.zeros((R, int(np.prod(shape))))
    e[np.arange(R), rows] = 1.0
    A_lo = {target: e.reshape((R,) + shape)}
    A_hi = {target: A_lo[target].copy()}
    c_lo, c_hi = np.zeros(R), np.zeros(R)
    relax = {} if relax is None else relax
    need = nx.ancestors(g.dag, target) | {target}

    def send(dest, al, ah):
        if dest in A_lo:
            A_lo[dest] = A_lo[dest] + al
            A_hi[dest] = A_hi[dest] + ah
        else:
            A_lo[dest], A_hi[dest] = al, ah

    for name in reversed(g.order):
        if name not in need or name not in A_lo:
            continue
        al, ah = A_lo.pop(name), A_hi.pop(name)
        op = g.op(name)
        if op.kind == "input":
            lo, hi = parts[name]
            c_lo += (np.maximum(al, 0) * lo + np.minimum(al, 0) * hi).reshape(R, -1).sum(axis=1)
            c_hi += (np.maximum(ah, 0) * hi + np.minimum(ah, 0) * lo).reshape(R, -1).sum(axis=1)
        elif op.kind == "const":
            c_lo += (al * op.value).reshape(R, -1).sum(axis=1)
            c_hi += (ah * op.value).reshape(R, -1).sum(axis=1)
        elif op.kind == "relu":
            z = g.args(name)[0]
            if name not in relax:
                relax[name] = _relaxation(bounds.lo[z], bounds.hi[z], op)
            sl, su, tu = relax[name]
            alp, aln, ahp, ahn = np.maximum(al, 0), np.minimum(al, 0), np.maximum(ah, 0), np.minimum(ah, 0)
            c_lo += (aln * tu).reshape(R, -1).sum(axis=1)
            c_hi += (ahp * tu).reshape(R, -1).sum(axis=1)
            send(z, alp * sl + aln * su, ahp * su + ahn * sl)
        else:
            c_lo += op.bias_dot(al)
            c_hi += op.bias_dot(ah)
            for a, tl, th in zip(g.args(name), op.transpose(al), op.transpose(ah)):
                send(a, tl, th)
    return c_lo, c_hi


def _chunk(g: Graph) -> int:
    widest = max(g.op(n).size for n in g.order)
    return max(1, int(ROW_BUDGET_BYTES // (8 * widest * 4)))


def deeppoly_graph(g: Graph, box: Box, known: GraphBounds | None = None, outputs: bool = True,
                   progress: bool = False) -> GraphBounds:
    """DeepPoly/CROWN bounds of every ReLU input (and of the outputs), intersected with interval bounds:
    each ReLU layer's unstable positions are back-substituted to the input in topological order, then
    interval bounds are re-propagated from the tighter values."""
    t0 = time.perf_counter()
    parts = _box_parts(g, box)
    b = interval_graph(g, box, known)
    seconds = {"interval": time.perf_counter() - t0}
    chunk = _chunk(g)
    relax: dict = {}
    # every ReLU input (its unstable positions), then every output (all of it)
    targets = [(g.args(r)[0], False) for r in g.relus] + ([(o, True) for o in g.outputs] if outputs else [])
    for z, is_output in tqdm(targets, desc="DeepPoly", unit="layer", disable=not progress, leave=False):
        lo, hi = b.lo[z].reshape(-1), b.hi[z].reshape(-1)
        todo = np.arange(lo.size) if is_output else np.flatnonzero((lo < 0) & (hi > 0))
        if todo.size == 0:
            continue
        new_lo, new_hi = lo.copy(), hi.copy()
        for s in range(0, todo.size, chunk):
            rows = todo[s:s + chunk]
            cl, ch = backsubstitute(g, z, rows, b, parts, relax)
            cl, ch = outward(cl, ch)
            new_lo[rows] = np.maximum(new_lo[rows], cl)
            new_hi[rows] = np.minimum(new_hi[rows], ch)
        # the tighter bounds of z flow forward (intervals) to everything after it
        merged = GraphBounds({**b.lo, z: new_lo.reshape(b.lo[z].shape)}, {**b.hi, z: new_hi.reshape(b.hi[z].shape)})
        b = interval_graph(g, box, merged)
        relax = {r: v for r, v in relax.items() if g.args(r)[0] != z}
    seconds["deeppoly"] = time.perf_counter() - t0 - seconds["interval"]
    b.seconds = seconds
    return b
