"""Interval arithmetic: z in W c + b +- |W| r for the box (c, r) of the previous layer. Loose, always sound."""

from __future__ import annotations

import numpy as np

from ..ir.network import Network
from ..spec.region import Box
from .common import Bounds, outward


def relu_image(lo: np.ndarray, hi: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bounds of the activation output: clipped at 0 for ReLU neurons, unchanged for linear channels."""
    return np.where(mask, np.maximum(lo, 0), lo), np.where(mask, np.maximum(hi, 0), hi)


def affine_interval(W, b, lo, hi):
    c, r = (lo + hi) / 2, (hi - lo) / 2
    mid = W @ c + b
    rad = np.abs(W) @ r
    return outward(mid - rad, mid + rad)


def interval_bounds(net: Network, box: Box) -> Bounds:
    """Pre-activation bounds of every dense layer by interval arithmetic."""
    box.check_dim(net.n_inputs)
    lo, hi = box.lo, box.hi
    los, his = [], []
    masks = net.masks
    for k, d in enumerate(net.dense):
        zl, zu = affine_interval(d.W, d.b, lo, hi)
        los.append(zl)
        his.append(zu)
        if k < len(masks):
            lo, hi = relu_image(zl, zu, masks[k])
    return Bounds(los, his)
