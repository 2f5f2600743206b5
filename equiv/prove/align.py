"""Put two networks with the same inputs and outputs into one common shape, neuron slot by neuron slot.

Difference bounds (`diff_bounds`) pair neuron i of one network with neuron i of the other.  Two
networks of the same widths (a float16 copy, a pruned copy) are already paired; otherwise each
network is *embedded* into common widths without changing the function it computes:

* a missing neuron is a zero slot: zero weights and bias, so z = 0 and its activation is 0 whether
  it is a ReLU or a linear channel, and the next layer reads it with zero weights;
* a missing hidden layer (the shallower net) is an identity layer of linear channels, exact too;
* neurons are paired layer by layer by an optimal assignment (Hungarian method) on the distance
  between their pre-activations at sample points of the region (without a region: between their
  incoming weights, read through the previous layer's pairing), so that a network and its pruned or
  simplified copy line up where they compute the same thing: a neuron kept by `equiv simplify`
  computes exactly its original's pre-activation on the region.

The pairing affects only how tight the bounds are, never their soundness: any embedding computes
exactly the original function.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from ..errors import InputFileError
from ..ir.network import Dense, Network


@dataclass
class AlignedPair:
    """Two networks with identical layer widths (f first), each computing its original's function."""

    f: Network
    g: Network
    f_pad: list[np.ndarray]     # per hidden layer: slots that are zero padding in f (z = 0 exactly)
    g_pad: list[np.ndarray]
    same_shape: bool            # True when no padding or reordering was needed
    match_cost: list[float]     # per hidden layer: mean relative weight distance of the paired neurons

    @property
    def widths(self) -> list[int]:
        return self.f.hidden_widths


def check_compatible(f: Network, g: Network, names=("A", "B")):
    """Both networks must read the same number of inputs and write the same number of outputs."""
    if f.n_inputs != g.n_inputs:
        raise InputFileError(f"the models take different inputs: {names[0]} has {f.n_inputs} input values "
                             f"{tuple(f.input_shape)}, {names[1]} has {g.n_inputs} {tuple(g.input_shape)}")
    if f.n_outputs != g.n_outputs:
        raise InputFileError(f"the models give different outputs: {names[0]} has {f.n_outputs} output values, "
                             f"{names[1]} has {g.n_outputs}")


def _deepen(net: Network, depth: int) -> Network:
    """Insert identity layers of linear channels before the output layer until the net has `depth` hidden layers."""
    dense, masks = list(net.dense), list(net.masks)
    while len(masks) < depth:
        w = dense[-1].n_in
        dense.insert(len(dense) - 1, Dense(np.eye(w), np.zeros(w)))
        masks.append(np.zeros(w, bool))
    return net.with_layers(dense, masks)


def align(f: Network, g: Network, points: np.ndarray | None = None) -> AlignedPair:
    """Embed f and g into common hidden widths, pairing g's neurons with f's most similar ones
    (by their values at `points` of the region when given, else by their weights)."""
    check_compatible(f, g)
    depth = max(len(f.masks), len(g.masks))
    f, g = _deepen(f, depth), _deepen(g, depth)
    if f.hidden_widths == g.hidden_widths and all(
            np.array_equal(a, b) for a, b in zip(f.masks, g.masks)):
        zero = [np.zeros(w, bool) for w in f.hidden_widths]
        cost = [_row_cost(f.dense[k], g.dense[k]) for k in range(depth)]
        return AlignedPair(f, g, zero, [z.copy() for z in zero], True, cost)

    fd, gd = list(f.dense), list(g.dense)
    f_masks, g_masks = [m.copy() for m in f.masks], [m.copy() for m in g.masks]
    f_slot_prev = np.arange(f.n_inputs)    # slot of each f neuron of the previous layer (inputs: themselves)
    g_slot_prev = np.arange(g.n_inputs)
    F, G, f_pad, g_pad, costs = [], [], [], [], []
    n_prev = f.n_inputs
    if points is not None:
        _, zf = f.forward(points, return_pre=True)
        _, zg = g.forward(points, return_pre=True)
    for k in range(depth + 1):
        Wf, bf, Wg, bg = fd[k].W, fd[k].b, gd[k].W, gd[k].b
        # incoming weights in slot coordinates of the previous layer
        Wf_s = np.zeros((Wf.shape[0], n_prev))
        Wf_s[:, f_slot_prev] = Wf
        Wg_s = np.zeros((Wg.shape[0], n_prev))
        Wg_s[:, g_slot_prev] = Wg
        if k == depth:                     # the output layer: outputs are already paired by position
            F.append(Dense(Wf_s, bf.copy()))
            G.append(Dense(Wg_s, bg.copy()))
            break
        nf, ng = Wf.shape[0], Wg.shape[0]
        if points is not None:     # each neuron as its vector of values at the points
            A, B = zf[k].T, zg[k].T
        else:
            A, B = np.hstack([Wf_s, bf[:, None]]), np.hstack([Wg_s, bg[:, None]])
        na, nb = np.linalg.norm(A, axis=1), np.linalg.norm(B, axis=1)
        dist = np.sqrt(np.maximum((na ** 2)[None] + (nb ** 2)[:, None] - 2 * B @ A.T, 0))
        rel = dist / (na[None] + nb[:, None] + 1e-30)          # (ng, nf), in [0, 1]
        rel = rel + (g_masks[k][:, None] != f_masks[k][None]) * 0.5   # prefer same activation kind
        gi, fj = linear_sum_assignment(rel)
        width = max(nf, ng)
        f_slot = np.arange(nf)             # f keeps its order in slots 0..nf-1
        g_slot = np.full(ng, -1)
        g_slot[gi] = fj
        extra = np.flatnonzero(g_slot < 0)  # g wider than f: its unpaired neurons take the spare slots
        g_slot[extra] = nf + np.arange(extra.size)
        costs.append(float(rel[gi, fj].mean()) if gi.size else 0.0)
        F.append(_place(Wf_s, bf, f_slot, width))
        G.append(_place(Wg_s, bg, g_slot, width))
        fm = np.zeros(width, bool)
        gm = np.zeros(width, bool)
        fm[f_slot], gm[g_slot] = f_masks[k], g_masks[k]
        fp, gp = np.ones(width, bool), np.ones(width, bool)
        fp[f_slot], gp[g_slot] = False, False
        # a padding slot copies the other network's activation kind (its value is 0 either way)
        fm = np.where(fp, gm, fm)
        gm = np.where(gp, fm, gm)
        f_masks[k], g_masks[k] = fm, gm
        f_pad.append(fp)
        g_pad.append(gp)
        f_slot_prev, g_slot_prev, n_prev = f_slot, g_slot, width
    Fn = f.with_layers(F, f_masks)
    Gn = g.with_layers(G, g_masks)
    return AlignedPair(Fn, Gn, f_pad, g_pad, False, costs)


def _place(W: np.ndarray, b: np.ndarray, slot: np.ndarray, width: int) -> Dense:
    """Rows of (W, b) moved to their slots; the other slots are zero neurons."""
    Ws = np.zeros((width, W.shape[1]))
    bs = np.zeros(width)
    Ws[slot], bs[slot] = W, b
    return Dense(Ws, bs)


def _row_cost(a: Dense, b: Dense) -> float:
    """Mean relative distance between paired rows (same positions) of two dense layers."""
    A = np.hstack([a.W, a.b[:, None]])
    B = np.hstack([b.W, b.b[:, None]])
    rel = np.linalg.norm(A - B, axis=1) / (np.linalg.norm(A, axis=1) + np.linalg.norm(B, axis=1) + 1e-30)
    return float(rel.mean())
