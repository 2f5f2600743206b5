"""Read back the masked ReLUs equiv writes: `Relu(x) * m` and `Relu(x) * m + x * a` become one MaskedRelu.

In ONNX a masked ReLU is a Relu over the whole tensor followed by masks; counted naively every position
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


def fuse_masked_relus(g: Graph) -> Graph:
    """The graph with the mask patterns replaced by MaskedRelu nodes (named like the pattern's output)."""
    replace, drop = {}, set()
    users = {n: list(g.dag.successors(n)) for n in g.order}
    for r in g.order:
        if not isinstance(g.op(r), ops.Relu) or len(users[r]) != 1 or r in g.outputs:
            continue
        x = g.args(r)[0]
        shape = g.shape(r)
        m_node = users[r][0]
        m = _mask(g.op(m_node), shape)
        if m is None or g.shape(m_node) != shape:
            continue
        relu_mask, lin_mask, out = m, np.zeros(shape, bool), m_node
        add = users[m_node][0] if len(users[m_node]) == 1 and m_node not in g.outputs else None
        if add is not None and isinstance(g.op(add), ops.Add) and g.op(add).signs == (1.0, 1.0):
            other = [a for a in g.args(add) if a != m_node]
            if len(other) == 1 and g.args(other[0]) == [x] and len(users[other[0]]) == 1:
                a = _mask(g.op(other[0]), shape)
                if a is not None and not np.any(a & m) and g.shape(add) == shape:
                    lin_mask, out = a, add
                    drop.add(other[0])
        drop.update({r, m_node} - {out})
        replace[out] = (ops.MaskedRelu(shape, relu_mask=relu_mask, linear_mask=lin_mask), [x])
        if out != m_node:
            drop.add(m_node)
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
