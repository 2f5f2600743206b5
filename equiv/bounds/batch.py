"""DeepPoly / CROWN back-substitution of a chain Network on many boxes at once (the workhorse of input
splitting): the graph engine's batched pass (`engine.deeppoly_boxes`) on the Network's graph.

Only neurons unstable on at least one box of the batch (and linear channels) are back-substituted: a
stable neuron's relaxation is exact whatever its bounds.  Per-box known bounds (e.g. the bounds of the
whole region, or of the parent box a box was split from, both sound on the sub-box) are intersected in,
so a sub-box is never bounded worse than what is already known about it.
"""

from __future__ import annotations

import numpy as np

from ..ir.chain_graph import dense_names, network_graph
from ..ir.network import Network
from .deeppoly import chain_known
from .engine import deeppoly_boxes as graph_boxes


def deeppoly_boxes(net: Network, lo: np.ndarray, hi: np.ndarray, known_lo: list, known_hi: list,
                   depth: int | None = None, all_rows: bool = False):
    """Pre-activation bounds of dense layers 0..depth-1 on each of the N boxes [lo[n], hi[n]].

    lo, hi: (N, dim).  known_lo[k], known_hi[k]: sound bounds of layer k on each box, broadcastable
    to (N, width_k) (a global bound of the region is sound on every sub-box).  all_rows=True
    back-substitutes every neuron (as `deeppoly_bounds` does) instead of only the unstable ones.

    Returns (los, his, coef): per layer (N, width) bounds, and coef[k] = (rows, Al, bl, Au, bu) with
    the input-space linear bounds of each back-substituted row of layer k: on box n,
    Al[n] x + bl[n] <= z_k[rows] <= Au[n] x + bu[n]  (Al, Au: (N, len(rows), dim); bl, bu: (N, len(rows))).
    These are not rounded outward: they guide the splitter (which dimension, which corner to try),
    while proofs use only the returned (outward-rounded) bounds.
    """
    names = dense_names(net)[:depth]
    known = chain_known(net, known_lo, known_hi)
    b, forms = graph_boxes(network_graph(net), np.asarray(lo, np.float64), np.asarray(hi, np.float64), known,
                           names, rows="all" if all_rows else "open", coef=True)
    coef = {k: forms[n] for k, n in enumerate(names) if n in forms}
    return [b.lo[n] for n in names], [b.hi[n] for n in names], coef
