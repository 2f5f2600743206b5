"""2-D convolution as a linear operator in numpy: forward on a batch and its transpose on a batch of rows.

Both go through the kernel offsets (i, j): the forward gathers a strided window of the padded input per
offset and contracts channels with W[:, :, i, j]; the transpose scatters back into the same windows.
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


def conv_forward(x: np.ndarray, W: np.ndarray, geo: ConvGeometry) -> np.ndarray:
    """x (B, C, H, W) -> (B, M, Ho, Wo), without bias."""
    pt, pl, pb, pr = geo.pads
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr))) if any(geo.pads) else x
    ho, wo = geo.out_hw
    g, cg, mg = geo.group, geo.in_channels // geo.group, geo.out_channels // geo.group
    out = np.zeros((x.shape[0], geo.out_channels, ho, wo), dtype=np.result_type(x, W))
    kh, kw = geo.kernel
    for gi in range(g):
        xs = xp[:, gi * cg:(gi + 1) * cg]
        ws = W[gi * mg:(gi + 1) * mg]
        acc = out[:, gi * mg:(gi + 1) * mg]
        for i in range(kh):
            for j in range(kw):
                rows, cols = geo._window(i, j)
                # (B, Cg, Ho, Wo) x (Mg, Cg) -> (B, Mg, Ho, Wo)
                acc += np.einsum("bchw,mc->bmhw", xs[:, :, rows, cols], ws[:, :, i, j], optimize=True)
    return out


def conv_transpose(a: np.ndarray, W: np.ndarray, geo: ConvGeometry) -> np.ndarray:
    """The adjoint: a (R, M, Ho, Wo) -> (R, C, H, W), so that <a, conv(x)> = <conv_transpose(a), x>."""
    pt, pl, pb, pr = geo.pads
    g, cg, mg = geo.group, geo.in_channels // geo.group, geo.out_channels // geo.group
    out = np.zeros((a.shape[0], geo.in_channels, geo.height + pt + pb, geo.width + pl + pr),
                   dtype=np.result_type(a, W))
    kh, kw = geo.kernel
    for gi in range(g):
        as_ = a[:, gi * mg:(gi + 1) * mg]
        ws = W[gi * mg:(gi + 1) * mg]
        acc = out[:, gi * cg:(gi + 1) * cg]
        for i in range(kh):
            for j in range(kw):
                rows, cols = geo._window(i, j)
                acc[:, :, rows, cols] += np.einsum("rmhw,mc->rchw", as_, ws[:, :, i, j], optimize=True)
    return out[:, :, pt:pt + geo.height, pl:pl + geo.width]
