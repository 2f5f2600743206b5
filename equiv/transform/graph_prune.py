"""Delete what a masked ReLU proves dead: rows of dense layers and whole channels of convolutions.

A position that is 0 everywhere on the region contributes nothing downstream, so its producer's row
(or, for a convolution, its filter when the whole channel is dead) and the consumer's matching column
(or input channel) can go.  Done only where the pattern is plain: producer -> masked ReLU -> consumers
that are dense layers or convolutions (possibly through a Flatten), nothing else reading either tensor.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..ir import ops
from ..ir.graph import Graph


def _users(g: Graph) -> dict:
    return {n: list(g.dag.successors(n)) for n in g.order}


def prune_dead(g: Graph) -> tuple[Graph, dict]:
    """The graph without provably dead rows/channels, and counts of what went."""
    nodes = {n: [g.op(n), list(g.args(n))] for n in g.order}
    users = _users(g)
    removed = {"dense_rows": 0, "conv_channels": 0}
    for r in g.relus:
        op = nodes[r][0]
        if not isinstance(op, ops.MaskedRelu) or r in g.outputs:
            continue
        dead = ~(np.asarray(op.relu_mask, bool) | np.asarray(op.linear_mask, bool))
        chain = _producer_chain(g, nodes, users, r)
        if chain is None:
            continue
        if isinstance(nodes[chain[0]][0], ops.Dense) and len(op.shape) == 2 and op.shape[0] == 1:
            keep = ~dead[0]
            if keep.all() or not keep.any() or not _consumers_ok(nodes, users, r, "dense"):
                continue
            _cut(nodes, users, chain, r, keep, axis=-1, flat_block=1)
            removed["dense_rows"] += int((~keep).sum())
        elif isinstance(nodes[chain[0]][0], ops.Conv) and len(op.shape) == 4 and op.shape[0] == 1:
            keep = ~dead.all(axis=(0, 2, 3))
            if keep.all() or not keep.any() or nodes[chain[0]][0].geo.group != 1 \
                    or not _consumers_ok(nodes, users, r, "conv"):
                continue
            _cut(nodes, users, chain, r, keep, axis=1, flat_block=op.shape[2] * op.shape[3])
            removed["conv_channels"] += int((~keep).sum())
    order = [n for n in g.order]
    return Graph.build([(n, *nodes[n]) for n in order], g.inputs, g.outputs, dict(g.meta)), removed


def _producer_chain(g, nodes, users, r) -> list | None:
    """[producer (Dense or Conv), optional Shift] feeding r, each read by the next only."""
    z = nodes[r][1][0]
    chain = [z]
    if isinstance(nodes[z][0], ops.Shift):
        chain.insert(0, nodes[z][1][0])
    if not isinstance(nodes[chain[0]][0], (ops.Dense, ops.Conv)):
        return None
    for a, b in zip(chain, chain[1:] + [r]):
        if users[a] != [b] or a in g.outputs:
            return None
    return chain


def _consumers_ok(nodes, users, r, kind) -> bool:
    """Every reader of r is a dense layer / a group-1 convolution reading only r, or a Flatten to one."""
    for u in users[r]:
        op, args = nodes[u]
        if args != [r]:
            return False
        if isinstance(op, ops.Dense) and kind == "dense":
            continue
        if isinstance(op, ops.Conv) and kind == "conv" and op.geo.group == 1:
            continue
        if kind == "conv" and isinstance(op, ops.Reshape) and len(op.shape) == 2 and op.shape[0] == 1 \
                and len(users[u]) == 1 and isinstance(nodes[users[u][0]][0], ops.Dense) \
                and nodes[users[u][0]][1] == [u]:
            continue
        return False
    return True


def _slice_bias(bias, shape, keep, axis):
    """The bias (broadcastable to `shape`) without the removed entries along `axis`."""
    if bias is None or np.ndim(bias) == 0:
        return bias
    b = np.asarray(bias)
    b = b.reshape((1,) * (len(shape) - b.ndim) + b.shape)
    ax = axis % len(shape)
    return b if b.shape[ax] == 1 else np.take(b, np.flatnonzero(keep), axis=ax)


def _with_shape(op, axis, k):
    shape = list(op.shape)
    shape[axis] = k
    return tuple(shape)


def _cut(nodes, users, chain, r, keep, axis, flat_block):
    k = int(keep.sum())
    idx = np.flatnonzero(keep)
    prod = nodes[chain[0]][0]
    if isinstance(prod, ops.Dense):
        new = dataclasses.replace(prod, shape=_with_shape(prod, -1, k), W=prod.W[idx],
                                  bias=_slice_bias(prod.bias, prod.shape, keep, -1))
    else:
        geo = dataclasses.replace(prod.geo, out_channels=k)
        new = dataclasses.replace(prod, shape=_with_shape(prod, 1, k), W=prod.W[idx], geo=geo,
                                  bias=None if prod.bias is None else np.asarray(prod.bias)[idx])
    nodes[chain[0]][0] = new
    for n in chain[1:]:                        # the Shift between producer and ReLU
        s = nodes[n][0]
        nodes[n][0] = dataclasses.replace(s, shape=new.shape, bias=_slice_bias(s.bias, s.shape, keep, axis))
    m = nodes[r][0]
    nodes[r][0] = dataclasses.replace(m, shape=new.shape, relu_mask=np.take(m.relu_mask, idx, axis=axis),
                                      linear_mask=np.take(m.linear_mask, idx, axis=axis))
    cols = np.repeat(keep, flat_block)         # flattened (channel-major) positions that stay
    for u in users[r]:
        op = nodes[u][0]
        if isinstance(op, ops.Dense):
            nodes[u][0] = dataclasses.replace(op, W=op.W[:, np.flatnonzero(cols)])
        elif isinstance(op, ops.Conv):
            geo = dataclasses.replace(op.geo, in_channels=k)
            nodes[u][0] = dataclasses.replace(op, W=op.W[:, idx], geo=geo)
        else:                                  # Flatten -> Dense
            nodes[u][0] = dataclasses.replace(op, shape=(1, k * flat_block), in_shape=new.shape)
            d = users[u][0]
            dop = nodes[d][0]
            nodes[d][0] = dataclasses.replace(dop, W=dop.W[:, np.flatnonzero(cols)])
