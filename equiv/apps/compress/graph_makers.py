"""Candidate makers for graphs besides low rank: unstructured magnitude pruning, whole-channel pruning, and
float16 / int8 rounding of the weights of dense and conv ops.

Pruning weights and rounding keep the graph's structure, so the checker bounds the candidate's difference to
its base on the difference graph (`ir.pair_graph`, tight); channel pruning deletes channels (their ReLU
positions masked to 0, then `transform.fold.shrink` removes them with the next layer's matching inputs).
Rounded weights are written as float32 constants holding the rounded values, as for chains (`quantize`).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ...ir import ops
from ...ir.graph import Graph
from .quantize import int8_rows


def weight_layers(g: Graph) -> list[str]:
    """Nodes holding trainable weights: dense ops and convolutions (not an AveragePool's window of ones)."""
    return [n for n in g.order if isinstance(g.op(n), ops.Dense)
            or (isinstance(g.op(n), ops.Conv) and not g.op(n).pooling)]


def _with_ops(g: Graph, new: dict) -> Graph:
    nodes = [(n, new.get(n, g.op(n)), g.args(n)) for n in g.order]
    return Graph.build(nodes, g.inputs, g.outputs, {k: v for k, v in g.meta.items() if k == "source"})


def prune_weights(g: Graph, level: float) -> Graph:
    """Each layer keeps its largest `level` fraction of weights by magnitude (the rest set to 0)."""
    new = {}
    for n in weight_layers(g):
        W = np.asarray(g.op(n).W, float)
        drop = int(np.floor((1.0 - level) * W.size))
        if drop <= 0:
            continue
        flat = W.reshape(-1).copy()
        flat[np.argsort(np.abs(flat), kind="stable")[:drop]] = 0.0
        new[n] = replace(g.op(n), W=flat.reshape(W.shape))
    return _with_ops(g, new)


FLOAT16_MAX = float(np.finfo(np.float16).max)


class Unrepresentable(ValueError):
    """A rounding that cannot hold the model's values (float16 beyond 65 504)."""


def round_graph(g: Graph, kind: str) -> Graph:
    """Weights (float16: and biases) rounded to float16 values, or to int8 levels with one symmetric scale per
    output row / output channel; values kept in float64 arrays, written as float32."""
    if kind not in ("float16", "int8"):
        raise ValueError(f"unknown weight rounding '{kind}'")
    new = {}
    for n in weight_layers(g):
        op = g.op(n)
        W = np.asarray(op.W, float)
        if kind == "float16":
            big = max(float(np.abs(W).max(initial=0.0)), float(np.abs(np.asarray(op.bias, float)).max(initial=0.0))
                      if op.bias is not None else 0.0)
            if big > FLOAT16_MAX:
                raise Unrepresentable(f"a weight or bias of {n} ({big:.3g}) is beyond float16's range")
            bias = None if op.bias is None else np.asarray(op.bias, float).astype(np.float16).astype(float)
            new[n] = replace(op, W=W.astype(np.float16).astype(float), bias=bias)
        else:
            new[n] = replace(op, W=int8_rows(W.reshape(W.shape[0], -1)).reshape(W.shape))
    return _with_ops(g, new)


def channel_scores(g: Graph, points: np.ndarray, batch: int = 250) -> dict:
    """{ReLU node: mean |activation| of each channel (conv: axis 1 of (C, H, W); dense: the last axis)} on the
    points; positions a mask already zeroes do not count."""
    sums, count = {}, 0
    for i in range(0, len(points), batch):
        vals = g.evaluate(np.asarray(points[i:i + batch], float))
        for n in g.relus:
            a = np.abs(np.asarray(vals[n], float))              # (B, *shape)
            keep = 1 + _channel_axis(g.shape(n))
            s = a.sum(axis=tuple(k for k in range(a.ndim) if k != keep))
            sums[n] = s if n not in sums else sums[n] + s
        count += len(points[i:i + batch])
    return {n: s / count for n, s in sums.items()}


def _channel_axis(shape: tuple) -> int:
    """The channel axis of a ReLU output without the batch axis: 1 of (1, C, H, W), else the last."""
    return 1 if len(shape) == 4 else len(shape) - 1


def mask_channels(g: Graph, drop: dict) -> Graph:
    """The graph with the channels in drop {ReLU node: channel indices} set to 0 (their positions dead)."""
    new = {}
    for n, chans in drop.items():
        if not len(chans):
            continue
        op = g.op(n)
        relu = np.asarray(getattr(op, "relu_mask", np.ones(op.shape, bool)), bool)
        lin = np.asarray(getattr(op, "linear_mask", np.zeros(op.shape, bool)), bool)
        relu, lin = np.broadcast_to(relu, op.shape).copy(), np.broadcast_to(lin, op.shape).copy()
        idx = [slice(None)] * len(op.shape)
        idx[_channel_axis(op.shape)] = np.asarray(chans, int)
        relu[tuple(idx)] = False
        lin[tuple(idx)] = False
        new[n] = ops.MaskedRelu(op.shape, relu_mask=relu, linear_mask=lin)
    return _with_ops(g, new)


def prune_channels(g: Graph, fraction: float, scores: dict) -> Graph:
    """Drop the `fraction` of all ReLU channels with the smallest mean |activation| (at least one channel is
    kept per node), then delete them (`shrink`)."""
    from ...transform.fold import shrink
    pool = sorted((s, n, c) for n, v in scores.items() for c, s in enumerate(v))
    k = int(np.floor(fraction * len(pool)))
    drop = {n: [] for n in scores}
    for s, n, c in pool[:k]:
        if len(drop[n]) < len(scores[n]) - 1:
            drop[n].append(c)
    small, _, _ = shrink(mask_channels(g, drop))
    return small
