"""2-D convolution as a linear operator in numpy: forward on a batch and its transpose on a batch of rows.

The forward multiplies the im2col patches (a strided view of the padded input) by the flattened kernel;
the transpose, channels last, adds one product per kernel offset into the windows that offset reads.
Nothing of size (outputs x inputs) is ever built, so memory scales with the tensors, not with the
dense matrix of the convolution.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ConvGeometry:
    """Shapes and hyper-parameters of one 2-D convolution (NCHW, ONNX semantics)."""

    in_channels: int
    height: int
    width: int
    out_channels: int
    kernel: tuple          # (kh, kw)
    strides: tuple         # (sh, sw)
    pads: tuple            # (top, left, bottom, right)
    dilations: tuple       # (dh, dw)
    group: int

    @property
    def out_hw(self) -> tuple:
        (kh, kw), (sh, sw), (dh, dw) = self.kernel, self.strides, self.dilations
        pt, pl, pb, pr = self.pads
        return ((self.height + pt + pb - dh * (kh - 1) - 1) // sh + 1,
                (self.width + pl + pr - dw * (kw - 1) - 1) // sw + 1)

    def _window(self, i: int, j: int):
        """Slices of the padded input read by kernel offset (i, j) for every output position."""
        (sh, sw), (dh, dw) = self.strides, self.dilations
        ho, wo = self.out_hw
        return (slice(i * dh, i * dh + sh * (ho - 1) + 1, sh), slice(j * dw, j * dw + sw * (wo - 1) + 1, sw))


def _patches(xp: np.ndarray, geo: ConvGeometry) -> np.ndarray:
    """im2col: (B, C, Hp, Wp) padded input -> view (B, C, Ho, Wo, kh, kw) of the window each output reads."""
    (kh, kw), (sh, sw), (dh, dw) = geo.kernel, geo.strides, geo.dilations
    ho, wo = geo.out_hw
    win = np.lib.stride_tricks.sliding_window_view(xp, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(2, 3))
    return win[:, :, :(ho - 1) * sh + 1:sh, :(wo - 1) * sw + 1:sw, ::dh, ::dw]


def conv_forward(x: np.ndarray, W: np.ndarray, geo: ConvGeometry) -> np.ndarray:
    """x (B, C, H, W) -> (B, M, Ho, Wo), without bias: one matrix product per group over the im2col patches."""
    pt, pl, pb, pr = geo.pads
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr))) if any(geo.pads) else x
    ho, wo = geo.out_hw
    g, cg, mg = geo.group, geo.in_channels // geo.group, geo.out_channels // geo.group
    B = x.shape[0]
    cols = _patches(xp, geo)
    outs = []
    for gi in range(g):
        # (B, Ho, Wo, Cg*kh*kw) @ (Cg*kh*kw, Mg)
        p = cols[:, gi * cg:(gi + 1) * cg].transpose(0, 2, 3, 1, 4, 5).reshape(B * ho * wo, -1)
        outs.append((p @ W[gi * mg:(gi + 1) * mg].reshape(mg, -1).T).reshape(B, ho, wo, mg))
    out = outs[0] if g == 1 else np.concatenate(outs, axis=3)
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


def conv_transpose(a: np.ndarray, W: np.ndarray, geo: ConvGeometry) -> np.ndarray:
    """The adjoint: a (R, M, Ho, Wo) -> (R, C, H, W), so that <a, conv(x)> = <conv_transpose(a), x>.

    Channels last, one matrix product per kernel offset (i, j): every output position sends a[., m] W[m, c, i, j]
    to the input its window reads at that offset, so the products are added into the padded input's
    strided window with the channel axis contiguous.  (Four times faster on ResNet-2B's 3x3 layers than one
    product for all offsets, whose (R, Ho, Wo, C, kh, kw) result had to be scattered back offset by offset.)"""
    pt, pl, pb, pr = geo.pads
    g, cg, mg = geo.group, geo.in_channels // geo.group, geo.out_channels // geo.group
    (kh, kw) = geo.kernel
    ho, wo = geo.out_hw
    R = a.shape[0]
    out = np.zeros((R, geo.height + pt + pb, geo.width + pl + pr, geo.in_channels), dtype=np.result_type(a, W))
    at = np.ascontiguousarray(a.transpose(0, 2, 3, 1)).reshape(R * ho * wo, g, mg).transpose(1, 0, 2)
    Wg = W.reshape(g, mg, cg, kh, kw)
    for i in range(kh):
        for j in range(kw):
            rows, cols = geo._window(i, j)
            # per group (n, Mg) @ (Mg, Cg); the groups' channel blocks side by side
            t = at @ Wg[:, :, :, i, j]                              # (g, R*Ho*Wo, Cg)
            t = t[0] if g == 1 else t.transpose(1, 0, 2)
            out[:, rows, cols, :] += t.reshape(R, ho, wo, geo.in_channels)
    return np.ascontiguousarray(out[:, pt:pt + geo.height, pl:pl + geo.width, :].transpose(0, 3, 1, 2))


def pool_kernel(W: np.ndarray, geo: ConvGeometry, bias=None) -> str | None:
    """'sum' or 'pick' when a convolution is a pool's: depthwise, without bias, one kernel for every channel that
    is uniform (an AveragePool's window sum) or one-hot with a 1 (a MaxPool's pick of one window offset, as equiv
    reads and writes a MaxPool); else None."""
    if bias is not None or geo.group != geo.in_channels or W.shape[:2] != (geo.in_channels, 1):
        return None
    k = W[0, 0]
    if not np.array_equal(W, np.broadcast_to(k, W.shape)):
        return None
    if np.all(k == k.flat[0]):
        return "sum"
    return "pick" if np.count_nonzero(k) == 1 and k.max() == 1.0 else None
