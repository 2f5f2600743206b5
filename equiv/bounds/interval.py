"""Interval bounds of a chain Network: the graph engine's interval pass (`engine.interval_boxes`) on its graph."""

from __future__ import annotations

import numpy as np

from ..ir.chain_graph import dense_names, network_graph
from ..ir.network import Network
from ..spec.region import Box
from .common import Bounds
from .engine import interval_boxes


def relu_image(lo: np.ndarray, hi: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bounds of the activation output: clipped at 0 for ReLU neurons, unchanged for linear channels."""
    return np.where(mask, np.maximum(lo, 0), lo), np.where(mask, np.maximum(hi, 0), hi)


def interval_bounds(net: Network, box: Box) -> Bounds:
    """Pre-activation bounds of every dense layer by interval arithmetic."""
    box.check_dim(net.n_inputs)
    b = interval_boxes(network_graph(net), box.lo[None], box.hi[None])
    names = dense_names(net)
    return Bounds([b.lo[n][0] for n in names], [b.hi[n][0] for n in names])
