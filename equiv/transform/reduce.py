"""Apply proved phases to a Network.  Pure linear algebra: no solver, no bounds.

- dead neuron i of layer k (z <= 0 on the region): its output is 0, so delete row i of (W_k, b_k)
  and column i of W_{k+1};
- active neuron (z >= 0): its ReLU is the identity, so it becomes a linear channel;
- a layer whose neurons are all linear is merged into the next: W' = W_{k+1} W_k,
  b' = W_{k+1} b_k + b_{k+1};
- when a layer keeps more linear channels than it has inputs, they are replaced by a pass-through
  of its input (a linear skip path: identity channels, the maps folded into the next layer),
  which is the smaller of the two exact forms.
"""

from __future__ import annotations

import numpy as np

from ..ir.network import Dense, Network


def reduce_network(net: Network, dead: list[np.ndarray], active: list[np.ndarray]) -> Network:
    """The smaller network equal to `net` wherever the given dead/active phases hold."""
    dense = [Dense(d.W.copy(), d.b.copy()) for d in net.dense]
    masks = [m.copy() for m in net.masks]
    if len(dead) != len(masks) or len(active) != len(masks):
        raise ValueError("need one dead and one active mask per hidden layer")
    for k in range(len(masks)):
        if np.any(dead[k] & ~masks[k]) or np.any(active[k] & ~masks[k]):
            raise ValueError(f"layer {k + 1}: only ReLU neurons can be proved dead or active")
        if np.any(dead[k] & active[k]):
            raise ValueError(f"layer {k + 1}: a neuron cannot be both dead and active")

    # 1. delete dead neurons; active ones lose their ReLU
    for k in range(len(masks)):
        keep = ~dead[k]
        masks[k] = masks[k] & ~active[k]
        if not keep.any():
            return _constant_tail(net, dense, masks, k)
        dense[k] = Dense(dense[k].W[keep], dense[k].b[keep])
        dense[k + 1] = Dense(dense[k + 1].W[:, keep], dense[k + 1].b)
        masks[k] = masks[k][keep]

    # 2. merge fully linear layers, and shrink wide groups of linear channels
    out_dense, out_masks = [dense[0]], []
    for k in range(len(masks)):
        nxt = dense[k + 1]
        cur = out_dense[-1]
        m = masks[k]
        if not m.any():
            out_dense[-1] = Dense(nxt.W @ cur.W, nxt.W @ cur.b + nxt.b)
            continue
        lin = np.flatnonzero(~m)
        if lin.size > cur.n_in:
            cur, nxt, m = _pass_through(cur, nxt, m)
        out_dense[-1] = cur
        out_masks.append(m)
        out_dense.append(nxt)
    return net.with_layers(out_dense, out_masks)


def _pass_through(cur: Dense, nxt: Dense, m: np.ndarray):
    """Replace the linear channels of `cur` by identity copies of its input, folded into `nxt`."""
    relu, lin = np.flatnonzero(m), np.flatnonzero(~m)
    n_in = cur.n_in
    W = np.vstack([cur.W[relu], np.eye(n_in)])
    b = np.concatenate([cur.b[relu], np.zeros(n_in)])
    # next layer: sum over linear channels of W_next[:, lin] (W_lin h + b_lin)
    W_next = np.hstack([nxt.W[:, relu], nxt.W[:, lin] @ cur.W[lin]])
    b_next = nxt.b + nxt.W[:, lin] @ cur.b[lin]
    mask = np.concatenate([np.ones(relu.size, bool), np.zeros(n_in, bool)])
    return Dense(W, b), Dense(W_next, b_next), mask


def _constant_tail(net: Network, dense: list[Dense], masks: list[np.ndarray], k: int) -> Network:
    """Every neuron of layer k is dead: the output is the constant the rest of the net gives to h_k = 0."""
    h = np.zeros(dense[k].n_out)
    for j in range(k + 1, len(dense)):
        h = dense[j].W @ h + dense[j].b
        if j < len(masks):
            h = np.where(masks[j], np.maximum(h, 0), h)
    return net.with_layers([Dense(np.zeros((h.size, net.n_inputs)), h)], [])
