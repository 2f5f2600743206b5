"""The linear relaxation of a ReLU node, and its compact form for batched back-substitution."""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np

from ..ir import ops
from . import kernels


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


@dataclass
class Relax:
    """A ReLU's relaxation on N boxes, flattened to columns: sl z <= h <= sl z + gap z + tu, gap and tu
    nonzero only on U.

    Off U (positions stable on every box) both lines are the same (slope 0 or 1, no intercept), so the
    choice of line by coefficient sign is only made on U.  `keep` (or None: all) are the columns alive on
    some box: when the ReLU's input is a Dense op read by nothing else, the dead columns are dropped
    before its matrix product."""

    sl: np.ndarray        # (N, 1, K) lower slopes of the kept columns
    U: np.ndarray         # positions, among the kept columns, of the columns unstable on some box
    gap: np.ndarray       # (N, 1, |U|) su - sl there
    tu: np.ndarray        # (N, |U|) upper intercepts there
    keep: np.ndarray | None
    lines: tuple | None = None    # (sl, su - sl, tu), (N, K) each, made for the fused loop (`kernels`)

    def full_lines(self) -> tuple:
        """(sl, su - sl, tu) on every kept column, (N, K) each (zero gap and intercept off U)."""
        if self.lines is None:
            sl = np.ascontiguousarray(self.sl[:, 0])
            gap, tu = np.zeros_like(sl), np.zeros_like(sl)
            gap[:, self.U], tu[:, self.U] = self.gap[:, 0], self.tu
            self.lines = (sl, gap, tu)
        return self.lines


def prepare(g, relu: str, lo: np.ndarray, hi: np.ndarray) -> Relax:
    """The compact relaxation of ReLU node `relu` from its input's bounds lo, hi (N, *shape)."""
    N = lo.shape[0]
    sl, su, tu = (a.reshape(N, -1) for a in _relaxation(lo, hi, g.op(relu)))
    z = g.args(relu)[0]
    keep = None
    zop = g.op(z)
    if g.dag.out_degree(z) == 1 and isinstance(zop, ops.Dense) and math.prod(zop.shape[:-1]) == 1:
        alive = np.flatnonzero(((sl != 0) | (su != 0)).any(axis=0))
        if alive.size < sl.shape[1]:
            keep = alive
            sl, su, tu = sl[:, keep], su[:, keep], tu[:, keep]
    U = np.flatnonzero(((su != sl) | (tu != 0)).any(axis=0))
    if U.size > DENSE_SHARE * sl.shape[1]:
        # many unstable columns: every column, with zero gap where stable (a gather and scatter of a few
        # columns costs more than the arithmetic on all of them)
        U = np.arange(sl.shape[1])
    return Relax(sl[:, None], U, (su - sl)[:, None, U], tu[:, U], keep)


DENSE_SHARE = 0.25    # share of unstable columns above which a relaxation steps through all columns


def relu_step(rx: Relax, a: np.ndarray):
    """Through the ReLU for upper bounds: coefficients (n, R, S) of h -> coefficients of z and the intercepts
    (N, R).  An upper bound takes the upper line where its coefficient is > 0, the lower line elsewhere:
    a sl + max(a, 0) (su - sl), intercept max(a, 0) . tu."""
    if rx.keep is not None:
        a = a[..., rx.keep]
    if kernels.worth(rx.sl.shape[0], a):
        return kernels.relu_fused(a, *rx.full_lines())
    out = a * rx.sl
    if rx.U.size == 0:
        return out, np.zeros(out.shape[:2])
    every = rx.U.size == out.shape[-1]   # every column: plain arrays (a gather of all of them is 2-3x slower)
    pos = np.maximum(a if every else a[..., rx.U], 0)
    c = rowdot(pos, rx.tu)
    gap = np.multiply(pos, rx.gap, out=pos if pos.shape[0] == out.shape[0] else None)
    if every:
        out += gap
    else:
        out[..., rx.U] += gap
    return out, c


def rowdot(a: np.ndarray, v: np.ndarray) -> np.ndarray:
    """(N, R): a[n, r] . v[n] for a (n, R, k) with n = 1 or N and v (N, k)."""
    if a.shape[0] == 1:
        return (a[0] @ v.T).T
    return np.einsum("nrk,nk->nr", a, v)


@dataclass
class DiffRelax:
    """A `ops.ReluDiff` node's lines on N boxes, flattened: Pl dz + Ql z_g + Rl <= dh <= Pu dz + Qu z_g + Ru
    (slopes (N, 1, K), intercepts (N, K))."""

    Pl: np.ndarray
    Ql: np.ndarray
    Rl: np.ndarray
    Pu: np.ndarray
    Qu: np.ndarray
    Ru: np.ndarray
    lines: tuple | None = None    # (Pl, Ql, Rl, Pu, Qu, Ru), (N, K) each, made for the fused loop (`kernels`)

    def full_lines(self) -> tuple:
        if self.lines is None:
            self.lines = tuple(np.ascontiguousarray(x.reshape(x.shape[0], -1), np.float64)
                               for x in (self.Pl, self.Ql, self.Rl, self.Pu, self.Qu, self.Ru))
        return self.lines


def prepare_diff(op, lo: list, hi: list) -> DiffRelax:
    """The lines of dh = act_f(z_g + dz) - act_g(z_g) from the bounds (N, *shape) of (dz, z_g, z_f).

    Per neuron, the difference of the two DeepPoly relaxations (z_f = z_g + dz; exact when either neuron
    is stable), or, for a ReLU pair unstable in both, whichever is narrower of that and the chords of
    min(dz, 0) <= dh <= max(dz, 0) over [dl, du]:  -dl/(du-dl) (dz - du) <= dh <= du/(du-dl) (dz - dl)."""
    N = lo[0].shape[0]
    (dlo, glo, flo), (dhi, ghi, fhi) = ([a.reshape(N, -1) for a in x] for x in (lo, hi))
    flat = lambda m: np.broadcast_to(np.asarray(m, bool), op.shape).reshape(1, -1)  # noqa: E731
    f_act = SimpleNamespace(relu_mask=flat(op.f_relu), linear_mask=flat(op.f_linear))
    g_act = SimpleNamespace(relu_mask=flat(op.g_relu), linear_mask=flat(op.g_linear))
    alf, auf, tuf = _relaxation(flo, fhi, f_act)
    alg, aug, tug = _relaxation(glo, ghi, g_act)
    # f unstable against g linear: either a ReLU replaced by a line a z + c (tolerance mode), or a neuron g
    # knows to be active where f's bounds are too loose to tell.  Any lower slope in [0, 1] is sound for f;
    # the one that cancels in dh = relu(z_f) - z_g is z_g's slope in z_f, estimated by the ratio of the two
    # ranges (a for a replaced ReLU, where the gap left is the line's, 1 for an active one, where dh = dz).
    # Only where z_g varies: against a constant nothing cancels and the 0/1 choice has the smaller area
    chord = f_act.relu_mask & ~g_act.relu_mask & g_act.linear_mask & (flo < 0) & (fhi > 0) & (ghi > glo)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.clip((ghi - glo) / (fhi - flo), 0.0, 1.0)
    alf = np.where(chord, ratio, alf)
    Pu, Qu, Ru = auf, auf - alg, tuf
    Pl, Ql, Rl = alf, alf - aug, -tug
    both = f_act.relu_mask & g_act.relu_mask & (flo < 0) & (fhi > 0) & (glo < 0) & (ghi > 0)
    if both.any():
        with np.errstate(divide="ignore", invalid="ignore"):
            span = dhi - dlo
            cross = (dlo < 0) & (dhi > 0)
            su = np.where(cross, dhi / span, np.where(dlo >= 0, 1.0, 0.0))
            ru = np.where(cross, -su * dlo, 0.0)
            sl = np.where(cross, -dlo / span, np.where(dhi <= 0, 1.0, 0.0))
            rl = np.where(cross, -sl * dhi, 0.0)
            gap_delta = np.where(cross, dhi * -dlo / span, 0.0)
            gap_naive = fhi * -flo / (fhi - flo) + ghi * -glo / (ghi - glo)
        use = both & (gap_delta < gap_naive)
        Pu, Qu, Ru = np.where(use, su, Pu), np.where(use, 0.0, Qu), np.where(use, ru, Ru)
        Pl, Ql, Rl = np.where(use, sl, Pl), np.where(use, 0.0, Ql), np.where(use, rl, Rl)
    return DiffRelax(Pl[:, None], Ql[:, None], Rl, Pu[:, None], Qu[:, None], Ru)


def diff_step(rx: DiffRelax, a: np.ndarray, magnitude: bool = False):
    """Through a ReluDiff node for upper bounds: coefficients (n, R, K) of dh -> those of dz and of z_g, the
    intercepts (N, R), and (with magnitude) the size of the intercept terms (N, R), for a rounding margin.
    Positive coefficients take the upper line, negative ones the lower line."""
    if kernels.worth(rx.Pl.shape[0], a):
        a_dz, a_zg, c, m = kernels.diff_fused(a, rx.full_lines())
        return a_dz, a_zg, c, (m if magnitude else None)
    pos = np.maximum(a, 0)
    tmp = np.subtract(a, pos)       # min(a, 0), exactly
    c = rowdot(pos, rx.Ru) + rowdot(tmp, rx.Rl)
    m = rowdot(pos, np.abs(rx.Ru)) - rowdot(tmp, np.abs(rx.Rl)) if magnitude else None
    # with a = pos + neg: pos u + neg l = a l + pos (u - l), one temporary fewer per product
    if tmp.shape != np.broadcast_shapes(tmp.shape, rx.Pu.shape):
        tmp = None
    a_dz = a * rx.Pl
    a_dz += np.multiply(pos, rx.Pu - rx.Pl, out=tmp)
    a_zg = a * rx.Ql
    a_zg += np.multiply(pos, rx.Qu - rx.Ql, out=tmp)
    return a_dz, a_zg, c, m

