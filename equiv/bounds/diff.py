"""Bounds on the difference of two aligned networks, neuron by neuron (ReluDiff / NeuroDiff style), by the
one bounds engine on their difference graph (`ir.pair_graph`).

For networks f and g of the same widths, dz_k = z_f,k - z_g,k is small when f and g are close (a float16
copy, a pruned copy), and bounds on it are far tighter than the difference of separate bounds on f and g.
The engine back-substitutes dz in the variables (dz, z_g): h_g = relu(z_g) by DeepPoly's lines, and
dh = act_f(z_g + dz) - act_g(z_g) by lines in (dz, z_g) (`relax.prepare_diff`): the difference of the two
DeepPoly relaxations, or for a ReLU pair unstable in both, the chords of min(dz, 0) <= dh <= max(dz, 0).
Each layer's bounds of z_f, z_g and dz tighten each other (z_f = z_g + dz) before the next layer reads them.

Everything is batched over N boxes (leading axis) so that input splitting bounds many boxes per call.
Bounds are rounded outward like all others in equiv, and the difference rows also by a margin relative to
the size of the terms summed (a small difference of large terms).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ir.ops import ReluDiff
from ..ir.pair_graph import act_masks, pair_graph
from ..prove.align import AlignedPair
from .common import ROUND_TERMS, outward
from .engine import GraphBounds, _backward, _parts, deeppoly_boxes, rounding_margins, widen


@dataclass
class PairBounds:
    """Per dense layer (last: output), (N, width) bounds of z_f, z_g and dz = z_f - z_g on N boxes."""

    f_lo: list
    f_hi: list
    g_lo: list
    g_hi: list
    d_lo: list
    d_hi: list
    state: tuple | None   # (lo, hi, relaxations, cache) of the difference graph, for `output_bounds`
    lo: np.ndarray        # the boxes
    hi: np.ndarray
    forms: dict | None = None   # {tensor: (Al, bl, Au, bu)} input-space lines of its rows on each box (`concretise`)

    def take(self, idx) -> "PairBounds":
        """The bounds of a subset of the boxes, without the engine state (kept as known bounds for
        sub-boxes, so they should be small: a splitting run may hold many thousands)."""
        pick = lambda L: [a[idx] for a in L]  # noqa: E731
        forms = None if self.forms is None else {k: tuple(a[idx] for a in v) for k, v in self.forms.items()}
        return PairBounds(pick(self.f_lo), pick(self.f_hi), pick(self.g_lo), pick(self.g_hi), pick(self.d_lo),
                          pick(self.d_hi), None, self.lo[idx], self.hi[idx], forms)

    @property
    def out_diff(self) -> tuple[np.ndarray, np.ndarray]:
        """(N, n_out) bounds of f(x) - g(x)."""
        return self.d_lo[-1], self.d_hi[-1]


def names(pair: AlignedPair, k: int) -> tuple:
    """The (f, g, difference) nodes of dense layer k's pre-activation in the pair's difference graph; the
    difference is None where it is exactly 0 (two identical first layers)."""
    G = pair_graph(pair)
    n = f"dense_{k + 1}"
    return "f:" + n, "g:" + n, G.meta["d_of"].get(n)


def _known(pair: AlignedPair, known: PairBounds | None, boxes: tuple | None = None) -> GraphBounds:
    """Known bounds of the difference graph's pre-activations: a parent's bounds (and its lines evaluated on
    the `boxes` (lo, hi)), and z = 0 exactly on the padding slots of each network."""
    lo, hi = {}, {}
    for k in range(len(pair.f.dense)):
        fz, gz, dz = names(pair, k)
        for name, pad, i in ((fz, pair.f_pad, 0), (gz, pair.g_pad, 1)):
            l, h = (-np.inf, np.inf) if k >= len(pad) else (np.where(pad[k], 0.0, -np.inf), np.where(pad[k], 0.0, np.inf))
            if known is not None:
                kl, kh = ((known.f_lo, known.f_hi), (known.g_lo, known.g_hi))[i]
                l, h = np.maximum(l, kl[k]), np.minimum(h, kh[k])
            lo[name], hi[name] = l, h
        if known is not None and dz is not None:
            lo[dz], hi[dz] = known.d_lo[k], known.d_hi[k]
    if known is not None and known.forms is not None and boxes is not None:
        # the parent's lines hold on every sub-box: evaluated on the sub-box they are often tighter
        for name, form in known.forms.items():
            l, h = concretise(form, *boxes)
            lo[name], hi[name] = np.maximum(lo.get(name, -np.inf), l), np.minimum(hi.get(name, np.inf), h)
    return GraphBounds(lo, hi)


def concretise(form: tuple, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bounds (N, S) of Al x + bl <= z <= Au x + bu on the boxes [lo[n], hi[n]] inside the box the lines were
    made on, rounded outward (with a margin on the size of the terms, as `engine._backward` does)."""
    Al, bl, Au, bu = form
    x_lo, x_hi = lo[:, None, :], hi[:, None, :]
    size = np.maximum(np.abs(lo), np.abs(hi))[:, None, :]
    low = (np.maximum(Al, 0) * x_lo + np.minimum(Al, 0) * x_hi).sum(axis=2) + bl
    up = (np.maximum(Au, 0) * x_hi + np.minimum(Au, 0) * x_lo).sum(axis=2) + bu
    low = low - ROUND_TERMS * (np.abs(Al) * size).sum(axis=2)
    up = up + ROUND_TERMS * (np.abs(Au) * size).sum(axis=2)
    return outward(low, up)


class Sweep:
    """A difference graph's hooks into the engine's sweep: which rows of each target to back-substitute,
    and the ties between each tensor's three bounds (z_f = z_g + dz)."""

    def __init__(self, G, own_f: bool = False, depth: int | None = None):
        self.G, self.kind = G, {}
        pre = G.meta["pre"]
        # the activation inputs back-substituted: the first `depth` in topological order (None: all)
        rank = {n: i for i, n in enumerate(G.order)}
        first = sorted(pre, key=lambda z: rank[pre[z][1]])
        self.deep = set(first if depth is None else first[:depth])
        for z, (fz, gz, dz) in pre.items():
            if gz not in G.inputs:           # (an input's bounds are the box's)
                self.kind[gz] = ("g", z)
            if own_f and fz not in G.inputs:
                self.kind[fz] = ("f", z)
            if dz is not None:
                self.kind[dz] = ("d", z)
        for o in G.meta["outputs"]:
            for n in ["g:" + o, G.meta["d_of"].get(o)] + (["f:" + o] if own_f else []):
                if n is not None:
                    self.kind[n] = ("out", None)
        self.ties = {d: ("f:" + n, "g:" + n) for n, d in G.meta["d_of"].items()}
        self.L = self.H = None

    @property
    def targets(self) -> list:
        return [n for n in self.G.order if n in self.kind]

    @property
    def difference_rows(self) -> set:
        """The targets whose bounds are small differences of large terms (a rounding margin on the terms)."""
        return {n for n, (who, _) in self.kind.items() if who in ("d", "out")}

    def rows(self, z, lo, hi):
        """g's (and f's) unstable positions on each box; a difference row only where its activation's
        relaxation depends on dz (a ReLU unstable in f or g on some box: a position stable in both networks on
        every box has an exact relaxation whatever dz is); every output row."""
        who, t = self.kind[z]
        if who == "out" and len(self.deep) < len(self.G.meta["pre"]) or who != "out" and t not in self.deep:
            return np.empty(0, int), None
        if who == "out":
            return np.arange(lo.shape[1]), None
        if who != "d":
            unstable = (lo < 0) & (hi > 0)
            return np.flatnonzero(unstable.any(axis=0)), unstable
        fz, gz, _ = self.G.meta["pre"][t]
        N = lo.shape[0]
        op = self.G.op(next(r for r in self.G.dag.successors(z) if self.G.op(r).kind == "relu_diff"))
        fr, gr = (np.broadcast_to(np.asarray(m, bool), op.shape).reshape(1, -1) for m in (op.f_relu, op.g_relu))
        L, H = ({n: a.reshape(N, -1) for n, a in ((fz, D[fz]), (gz, D[gz]))} for D in (self.L, self.H))
        open_ = (fr & (L[fz] < 0) & (H[fz] > 0)) | (gr & (L[gz] < 0) & (H[gz] > 0))
        return np.flatnonzero(open_.any(axis=0)), None

    def tie(self, z, L, H):
        """After a difference tensor's bound: dz within z_f - z_g, z_f within z_g + dz, z_g within z_f - dz."""
        self.L, self.H = L, H          # the sweep's dicts (the same objects all along)
        if z not in self.ties:
            return
        fz, gz = self.ties[z]
        if fz not in L or gz not in L:
            return
        dl, du = outward(L[fz] - H[gz], H[fz] - L[gz])
        L[z], H[z] = np.maximum(L[z], dl), np.minimum(H[z], du)
        fl, fh = outward(L[gz] + L[z], H[gz] + H[z])
        L[fz], H[fz] = np.maximum(L[fz], fl), np.minimum(H[fz], fh)
        gl, gh = outward(L[fz] - H[z], H[fz] - L[z])
        L[gz], H[gz] = np.maximum(L[gz], gl), np.minimum(H[gz], gh)


def difference_boxes(G, lo: np.ndarray, hi: np.ndarray, known: GraphBounds | None = None, own_f: bool = False,
                     relax: dict | None = None, forms: bool = False, depth: int | None = None):
    """Bounds of every tensor of a difference graph (`ir.pair_graph`) on each of the N boxes: g's activation
    inputs (and f's with own_f) and every difference by DeepPoly through the pair, f's by interval through f
    tied to z_g + dz; with forms, also the input-space lines of every back-substituted tensor
    ({tensor: (Al, bl, Au, bu)}, rows not back-substituted free); depth: back-substitute only the first
    `depth` activation inputs (the others get interval bounds and ties, and the outputs too)."""
    sweep = Sweep(G, own_f, depth)
    b, got = deeppoly_boxes(G, lo, hi, known, sweep.targets, rows=sweep.rows, all_nodes=True, tie=sweep.tie,
                            magnitude=sweep.difference_rows, relax=relax, coef=forms, keep_margins=True)
    if not forms:
        return b, None
    out = {}
    for z, (rows, Al, bl, Au, bu) in got.items():
        N, S = lo.shape[0], G.op(z).size
        full = (np.zeros((N, S, lo.shape[1])), np.full((N, S), -np.inf), np.zeros((N, S, lo.shape[1])),
                np.full((N, S), np.inf))
        for dst, src in zip(full, (Al, bl, Au, bu)):
            dst[:, rows] = src
        out[z] = full
    return b, out


def pair_bounds(pair: AlignedPair, lo: np.ndarray, hi: np.ndarray, known: PairBounds | None = None,
                forms: bool = False, depth: int | None = None) -> PairBounds:
    """Bounds of z_f, z_g and z_f - z_g for every dense layer on each box [lo[n], hi[n]].

    `known` (e.g. the parent boxes' bounds, row n for box n) is intersected in; it must be sound on each
    box.  g's pre-activations get DeepPoly bounds, and f's too unless the two have the same shape (then
    f's are interval bounds through f tightened by z_g + dz, nearly as good for close networks at half
    the cost); the difference is back-substituted through the difference graph, layer by layer.
    Lines of `known` (a parent's `forms`) are evaluated on the boxes.  forms: keep this call's lines (for
    its sub-boxes); depth: back-substitute only the first `depth` hidden layers (0: the parent's lines and
    intervals only; `output_bounds` still walks back from the output through every layer).
    """
    lo, hi = np.atleast_2d(lo).astype(float), np.atleast_2d(hi).astype(float)
    relax = {}
    b, lines = difference_boxes(pair_graph(pair), lo, hi, _known(pair, known, (lo, hi)), not pair.same_shape, relax,
                                forms, depth)
    fl, fh, gl, gh, dl, dh = [], [], [], [], [], []
    for k in range(len(pair.f.dense)):
        fz, gz, dz = names(pair, k)
        fl.append(b.lo[fz]), fh.append(b.hi[fz]), gl.append(b.lo[gz]), gh.append(b.hi[gz])
        zero = np.zeros_like(b.lo[fz])
        dl.append(zero if dz is None else b.lo[dz]), dh.append(zero if dz is None else b.hi[dz])
    return PairBounds(fl, fh, gl, gh, dl, dh, (b.lo, b.hi, relax, {"margins": b.margins}), lo, hi, lines)


def output_bounds(pair: AlignedPair, pb: PairBounds, C: np.ndarray, which: str, return_coef: bool = False):
    """Bounds of C @ f(x) (which="f"), C @ g(x) ("g") or C @ (f(x) - g(x)) ("d") on each box, through the
    pair's relaxations (f = dz + z_g, g = z_g, f - g = dz at the output); with return_coef also the
    input-space coefficients (N, r, dim) of the lower and upper linear bounds (to choose a split)."""
    G = pair_graph(pair)
    L, H, relax, cache = pb.state
    parts, out = _parts(G, pb.lo, pb.hi), G.meta["out"][which]
    C = np.asarray(C, np.float64)
    res = _backward(G, out, C, L, H, parts, relax, coef=return_coef, magnitude=True)
    # the forward-magnitude rounding margin of the output (`engine.rounding_margins`, once per boxes), through |C|
    if out not in cache.get("margins", {}):
        cache["margins"] = rounding_margins(G, parts)
    m = cache["margins"][out]
    low, up = widen(*outward(res[0], res[1]), m.reshape(m.shape[0], -1) @ np.abs(C).T)
    return (low, up, res[2][0], res[2][2]) if return_coef else (low, up)


def dh_bounds(pb: PairBounds, pair: AlignedPair, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, width) bounds of dh_k = act_f(z_f) - act_g(z_g) for hidden layer k (for MILP cuts)."""
    G = pair_graph(pair)
    f_op, g_op = G.op(f"f:relu_{k + 1}"), G.op(f"g:relu_{k + 1}")
    d = ReluDiff(f_op.shape, *act_masks(f_op), *act_masks(g_op))
    return outward(*d.interval([pb.d_lo[k], pb.g_lo[k], pb.f_lo[k]], [pb.d_hi[k], pb.g_hi[k], pb.f_hi[k]]))
