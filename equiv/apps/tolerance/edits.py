"""Neuron replacements as data, applied to a Network without changing its shape, then compacted.

A ReLU neuron h = relu(z) with z = w.x + b may be replaced on the region by
- a constant c (`kind="constant"`): its row becomes 0 and its bias c, a linear channel, later folded into
  the next layer's bias and deleted;
- an affine map a*z + c (`kind="affine"`): its row becomes a*w, its bias a*b + c, a linear channel, later
  merged into the next layer (or into a pass-through of the layer's input) by `reduce_network`.
Keeping the shape lets the difference engine bound f - g neuron by neuron (`bounds.diff`), and the exact
phases (dead = constant 0, active = affine with a = 1, c = 0) are edits like the others.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...ir.network import Dense, Network
from ...transform.reduce import reduce_network


@dataclass(frozen=True)
class Edit:
    """Replace ReLU neuron `index` of hidden layer `layer` (from 1) by a*z + c (a = 0: the constant c)."""

    layer: int
    index: int
    kind: str          # constant | affine | merge
    a: float = 0.0
    c: float = 0.0
    into: int = -1     # merge: the neuron of the same layer that takes this one's outgoing weights, times a

    def to_json(self) -> dict:
        d = {"layer": self.layer, "index": self.index, "kind": self.kind, "a": self.a, "c": self.c}
        if self.kind == "merge":
            d["into"] = self.into
        return d


def exact_edits(dead: list[np.ndarray], active: list[np.ndarray]) -> list[Edit]:
    """The proved phases as edits: a dead neuron is the constant 0, an active one the identity."""
    out = []
    for k, (d, a) in enumerate(zip(dead, active), start=1):
        out += [Edit(k, int(i), "constant") for i in np.flatnonzero(d)]
        out += [Edit(k, int(i), "affine", 1.0, 0.0) for i in np.flatnonzero(a)]
    return out


def apply_edits(net: Network, edits: list[Edit]) -> Network:
    """net with every edited neuron a linear channel computing its replacement; same widths as net.

    A merge of neuron i into j (h_i = a * h_j on the region, a >= 0) moves i's outgoing weights onto j
    (W_next[:, j] += a * W_next[:, i]) and makes i the constant 0.
    """
    dense = [Dense(d.W.copy(), d.b.copy()) for d in net.dense]
    masks = [m.copy() for m in net.masks]
    for e in edits:
        k, i = e.layer - 1, e.index
        if not masks[k][i]:
            raise ValueError(f"neuron ({e.layer}, {i}) is not a ReLU neuron: it cannot be replaced twice")
        W, b = dense[k].W, dense[k].b
        if e.kind == "merge":
            dense[k + 1].W[:, e.into] += e.a * dense[k + 1].W[:, i]
            W[i], b[i] = 0.0, 0.0
        else:
            W[i] *= e.a
            b[i] = e.a * b[i] + e.c
        masks[k][i] = False
    return net.with_layers(dense, masks)


def compact(net: Network) -> Network:
    """The smallest exact form: constant linear channels (zero row) folded into the next bias and deleted,
    then linear channels merged into the next layer (`reduce_network`)."""
    dense = [Dense(d.W.copy(), d.b.copy()) for d in net.dense]
    masks = [m.copy() for m in net.masks]
    for k in range(len(masks)):
        const = ~masks[k] & ~dense[k].W.any(axis=1)
        if not const.any():
            continue
        nxt = dense[k + 1]
        b_next = nxt.b + nxt.W[:, const] @ dense[k].b[const]
        keep = ~const
        if not keep.any():
            return _constant(net, dense, masks, k)
        dense[k] = Dense(dense[k].W[keep], dense[k].b[keep])
        dense[k + 1] = Dense(nxt.W[:, keep], b_next)
        masks[k] = masks[k][keep]
    small = net.with_layers(dense, masks)
    none = [np.zeros(m.size, bool) for m in masks]
    return reduce_network(small, none, none)


def _constant(net: Network, dense: list[Dense], masks: list[np.ndarray], k: int) -> Network:
    """Every channel of hidden layer k is a constant: so is the output (the rest of the net applied to them)."""
    h = dense[k].b.copy()
    for j in range(k + 1, len(dense)):
        h = dense[j].W @ h + dense[j].b
        if j < len(masks):
            h = np.where(masks[j], np.maximum(h, 0), h)
    return net.with_layers([Dense(np.zeros((h.size, net.n_inputs)), h)], [])
