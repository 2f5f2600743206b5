"""Magnitude pruning of a chain network: whole hidden neurons, or single weights.

Neuron pruning scores hidden neuron i of layer k by how much it can move the next layer,
``mean|h_i| * ||W_{k+1}[:, i]||`` over points sampled in the region, removes the lowest-scoring
fraction (at least one neuron stays in every layer) and folds each removed neuron's mean
activation into the next layer's bias (so a nearly constant neuron costs nothing to remove).
Weight pruning zeroes the smallest |w| of every layer (the same fraction in each); it lowers the
non-zero count, not the stored one.
"""

from __future__ import annotations

import numpy as np

from ...ir.network import Dense, Network


def activations(net: Network, points: np.ndarray) -> list[np.ndarray]:
    """Post-activation values h_1..h_{L-1} of every hidden layer on the points, each (n, width)."""
    _, pre = net.forward(points, return_pre=True)
    return [np.where(m, np.maximum(z, 0.0), z) for z, m in zip(pre, net.masks)]


def neuron_scores(net: Network, acts: list[np.ndarray]) -> list[np.ndarray]:
    dense = net.dense
    return [np.abs(h).mean(axis=0) * np.linalg.norm(dense[k + 1].W, axis=0) for k, h in enumerate(acts)]


def refit(net: Network, small: Network, points: np.ndarray, ridge: float = 1e-6, reference: Network | None = None) -> Network:
    """`small` with every dense layer after the first refitted, in order, by least squares: layer k maps the
    small network's own layer-(k-1) outputs on the points to the original's pre-activations of the
    neurons it kept (its outputs, for the last layer), so later layers absorb the error of earlier cuts.
    With `reference` (the network the result will be checked against), the last layer fits its outputs."""
    out, pre = net.forward(points, return_pre=True)
    targets = list(pre) + [out if reference is None else reference.forward(points)]
    keep_rows = small.meta.get("kept_rows")
    if keep_rows is None:
        return small
    dense = list(small.dense)
    h = np.asarray(points, float)
    cur = small.with_layers(dense, small.masks)
    for k in range(len(dense)):
        if k > 0:
            X = np.hstack([h, np.ones((len(h), 1))])
            Y = targets[k][:, keep_rows[k]] if k < len(keep_rows) else targets[k]
            G = X.T @ X
            G += ridge * max(np.trace(G) / G.shape[0], 1e-12) * np.eye(G.shape[0])
            theta = np.linalg.solve(G, X.T @ Y)
            dense[k] = Dense(theta[:-1].T.copy(), theta[-1].copy())
            cur = small.with_layers(dense, small.masks)
        if k < len(dense) - 1:
            h = activations(cur, points)[k]
    cur.meta.pop("kept_rows", None)
    return cur


def prune_neurons(net: Network, fraction: float, points: np.ndarray) -> Network:
    """The network without the `fraction` of hidden neurons that score lowest (see the module doc).
    `meta["kept_rows"]` of the result lists, per dense layer, the rows (neurons) of `net` it kept."""
    acts = activations(net, points)
    scores = neuron_scores(net, acts)
    flat = np.concatenate(scores)
    n_drop = int(np.floor(fraction * flat.size))
    drop = np.zeros(flat.size, bool)
    drop[np.argsort(flat, kind="stable")[:n_drop]] = True
    dense = [Dense(d.W.copy(), d.b.copy()) for d in net.dense]
    masks = [m.copy() for m in net.masks]
    start, kept = 0, []
    for k, s in enumerate(scores):
        d = drop[start:start + s.size]
        start += s.size
        if d.all():                       # keep the best neuron of a layer
            d[np.argmax(s)] = False
        keep = ~d
        nxt = dense[k + 1]
        bias = nxt.b + nxt.W[:, d] @ acts[k][:, d].mean(axis=0)
        dense[k + 1] = Dense(nxt.W[:, keep], bias)
        dense[k] = Dense(dense[k].W[keep], dense[k].b[keep])
        masks[k] = masks[k][keep]
        kept.append(np.flatnonzero(keep))
    out = net.with_layers(dense, masks)
    out.meta["kept_rows"] = kept
    return out


def prune_weights(net: Network, fraction: float) -> Network:
    """The network with the `fraction` smallest-magnitude weights of every layer set to zero."""
    out = []
    for d in net.dense:
        k = int(np.floor(fraction * d.W.size))
        W = d.W.copy()
        if k:
            W.flat[np.argsort(np.abs(W), axis=None, kind="stable")[:k]] = 0.0
        out.append(Dense(W, d.b.copy()))
    return net.with_layers(out, net.masks)
