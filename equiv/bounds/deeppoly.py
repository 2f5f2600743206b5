"""DeepPoly / CROWN back-substitution for a chain Network: adapters over the graph engine
(`equiv.bounds.engine`) run on the Network's graph (`equiv.ir.chain_graph`).

Every dense layer's neurons are all back-substituted (not only the unstable ones), so stable neurons get
the tighter of their interval and DeepPoly bounds too, which the LP/MILP encodings use.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from ..ir.chain_graph import dense_names, network_graph
from ..ir.network import Network
from ..spec.region import Box
from .common import Bounds, outward
from .engine import GraphBounds, _backward, _parts, _relaxation, deeppoly_boxes, rounding_margins, widen


def relaxation(lo: np.ndarray, hi: np.ndarray, mask: np.ndarray):
    """Linear relaxation of each neuron's activation (ReLU where mask, identity elsewhere): lower slope,
    upper slope and upper intercept (lower line a_l z, upper line a_u z + t_u)."""
    return _relaxation(lo, hi, SimpleNamespace(relu_mask=mask, linear_mask=~np.asarray(mask, bool)))


def chain_known(net: Network, lo: list, hi: list) -> GraphBounds:
    """Per-dense-layer bounds as known bounds of the Network's graph nodes."""
    names = dense_names(net)
    return GraphBounds(dict(zip(names, lo)), dict(zip(names, hi)))


def backsubstitute(net: Network, box: Box, bounds: Bounds, k: int, C: np.ndarray | None = None):
    """Lower and upper bounds of C @ z_k (C defaults to the identity) over the box, from the relaxations
    the bounds of layers < k give; k counts dense layers from 0."""
    g, name = network_graph(net), dense_names(net)[k]
    known = chain_known(net, [a[None] for a in bounds.lo[:k]], [a[None] for a in bounds.hi[:k]])
    rows = np.arange(net.dense[k].n_out) if C is None else np.asarray(C, np.float64)
    parts = _parts(g, box.lo[None], box.hi[None])
    cl, ch = _backward(g, name, rows, known.lo, known.hi, parts, {})
    m = rounding_margins(g, parts)[name][0].reshape(-1)
    return widen(*outward(cl[0], ch[0]), m if C is None else np.abs(rows) @ m)


def deeppoly_bounds(net: Network, box: Box, known: Bounds | None = None) -> Bounds:
    """Bounds of every dense layer's pre-activation; `known` (sound bounds from elsewhere) is intersected in."""
    box.check_dim(net.n_inputs)
    names = dense_names(net)
    kb = None if known is None else chain_known(net, known.lo, known.hi)
    b, _ = deeppoly_boxes(network_graph(net), box.lo[None], box.hi[None], kb, names, rows="all")
    return Bounds([b.lo[n][0] for n in names], [b.hi[n][0] for n in names])
