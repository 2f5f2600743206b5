"""Read back the masked ReLUs equiv writes: `Relu(x * m) + x * a` (and the older `Relu(x) * m + x * a`,
either without its linear term) become one MaskedRelu.

In ONNX a masked ReLU is a Relu over the whole tensor with masks around it; counted naively every position
would still be a ReLU.  The rewrite is exact (the same function), so the graph keeps its meaning while
the positions a mask zeroes stop counting as ReLUs.
"""

from __future__ import annotations

import numpy as np

from . import ops
from .graph import Graph


def _mask(op, shape) -> np.ndarray | None:
    """The 0/1 mask of a Scale without bias, as booleans of the full shape, or None."""
    if not isinstance(op, ops.Scale) or op.bias is not None:
        return None
    s = np.asarray(op.s)
    if not np.all((s == 0) | (s == 1)):
        return None
    try:
        return np.broadcast_to(s, shape).astype(bool)
    except ValueError:
        return None


def _sole_user(g: Graph, users: dict, n: str) -> str | None:
    return users[n][0] if len(users[n]) == 1 and n not in g.outputs else None


def _relu_part(g: Graph, users: dict, r: str):
    """(x, relu mask, node computing the masked ReLU, nodes it replaces) for `Relu(x) * m` or `Relu(x * m)`."""
    shape = g.shape(r)
    post = _sole_user(g, users, r)
    m = None if post is None or g.shape(post) != shape else _mask(g.op(post), shape)
    if m is not None:
        return g.args(r)[0], m, post, {r}
    pre = g.args(r)[0]
    m = _mask(g.op(pre), shape) if g.op(pre).kind == "linear" and _sole_user(g, users, pre) == r else None
    if m is None or g.shape(g.args(pre)[0]) != shape:
        return None
    return g.args(pre)[0], m, r, {pre}


def fuse_masked_relus(g: Graph) -> Graph:
    """The graph with the mask patterns replaced by MaskedRelu nodes (named like the pattern's output)."""
    replace, drop = {}, set()
    users = {n: list(g.dag.successors(n)) for n in g.order}
    for r in g.order:
        if not isinstance(g.op(r), ops.Relu):
            continue
        part = _relu_part(g, users, r)
        if part is None:
            continue
        x, relu_mask, out, gone = part
        shape = g.shape(r)
        lin_mask = np.zeros(shape, bool)
        add = _sole_user(g, users, out)
        if add is not None and isinstance(g.op(add), ops.Add) and g.op(add).signs == (1.0, 1.0):
            other = [a for a in g.args(add) if a != out]
            if len(other) == 1 and g.args(other[0]) == [x] and _sole_user(g, users, other[0]) == add:
                a = _mask(g.op(other[0]), shape)
                if a is not None and not np.any(a & relu_mask) and g.shape(add) == shape:
                    lin_mask = a
                    gone |= {other[0], out}
                    out = add
        drop.update(gone - {out})
        replace[out] = (ops.MaskedRelu(shape, relu_mask=relu_mask, linear_mask=lin_mask), [x])
    if not replace:
        return g
    nodes = []
    for n in g.order:
        if n in drop:
            continue
        op, args = replace.get(n, (g.op(n), g.args(n)))
        nodes.append((n, op, args))
    meta = dict(g.meta)
    meta["onnx_names"] = {k: v for k, v in g.meta.get("onnx_names", {}).items() if k not in drop}
    return Graph.build(nodes, g.inputs, g.outputs, meta)
