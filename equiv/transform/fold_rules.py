"""The rules of `fold`: each looks at one node and, when an exact rewrite applies there, makes it.

A rule returns True when it changed the graph.  Shapes: a Conv's output is (..., M, H, W) with the
channel axis -3, a Dense layer's (..., m) with the feature axis -1; a Conv bias is (M, 1, 1).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..ir import ops
from ..ir.conv import ConvGeometry
from .fold import Rewriter


def _along(a, shape, axis) -> np.ndarray | None:
    """a broadcast to `shape` as a 1-D array along `axis`, when it is constant along every other axis."""
    full = np.moveaxis(np.broadcast_to(np.asarray(a, np.float64), shape), axis, 0).reshape(shape[axis], -1)
    return full[:, 0].copy() if (full == full[:, :1]).all() else None


def _zero(a) -> bool:
    return a is None or not np.any(a)


def _plain(op) -> bool:
    """A dense layer or a (non-pooling, ungrouped) convolution: the layers other maps merge into."""
    return isinstance(op, ops.Dense) or (isinstance(op, ops.Conv) and not op.pooling and op.geo.group == 1)


def _affine(op):
    """(s, t) of an elementwise map x * s + t (Scale or Shift), or None."""
    if isinstance(op, ops.Scale):
        return op.s, op.bias
    if isinstance(op, ops.Shift):
        return 1.0, op.bias
    return None


def _conv_bias_or_none(b) -> np.ndarray | None:
    """A per-channel bias as a Conv holds it, (M, 1, 1), or None when it is 0 (no parameters for nothing)."""
    return None if _zero(b) else np.asarray(b, np.float64).reshape(-1, 1, 1)


def _conv_bias(op: ops.Conv) -> np.ndarray:
    return np.zeros(op.geo.out_channels) if op.bias is None else np.asarray(op.bias, np.float64).reshape(-1)


# ---- masked ReLUs, constants, identities -------------------------------------------------------------

def masked_relu(rw: Rewriter, n: str) -> bool:
    """A masked ReLU that is a ReLU everywhere becomes a Relu, the identity everywhere goes, 0 everywhere
    becomes a constant 0."""
    op = rw.op(n)
    if not isinstance(op, ops.MaskedRelu):
        return False
    r, a = np.asarray(op.relu_mask, bool), np.asarray(op.linear_mask, bool)
    if r.all():
        rw.set(n, ops.Relu(op.shape))
        return True
    if a.all():
        return rw.bypass(n, rw.args(n)[0], "masked_relu")
    if not (r | a).any() and n not in rw.outputs:
        x = rw.args(n)[0]
        rw.set(n, ops.Const(op.shape, value=np.zeros(op.shape)), [])
        if rw.outputs_depend_on_inputs():
            return True
        rw.set(n, op, [x])         # the whole output would be constant: keep the batch-preserving x * 0
    return False


def constants(rw: Rewriter, n: str) -> bool:
    """An op whose inputs are all constants becomes the constant it computes; a sum with one constant
    term becomes a Shift (or Scale by -1) of the other."""
    op, args = rw.op(n), rw.args(n)
    if op.kind in ("input", "const") or not args:
        return False
    consts = [rw.op(a).kind == "const" for a in args]
    if all(consts) and n not in rw.outputs:
        xs = [np.broadcast_to(rw.op(a).value, rw.op(a).shape)[None] for a in args]
        value = np.broadcast_to(op.forward(*xs)[0], op.shape).astype(np.float64)
        rw.set(n, ops.Const(op.shape, value=value), [])
        return True
    if isinstance(op, ops.Add) and len(args) == 2 and any(consts):
        k = consts.index(True)
        x, c = args[1 - k], rw.op(args[k]).value
        if tuple(rw.op(x).shape) != tuple(op.shape):
            return False
        bias = ops.compact(op.signs[k] * np.asarray(c, np.float64))
        sx = op.signs[1 - k]
        rw.set(n, ops.Shift(op.shape, bias=bias) if sx == 1.0 else ops.Scale(op.shape, bias=bias, s=np.array(sx)),
               [x])
        return True
    return False


def concat_constants(rw: Rewriter, n: str) -> bool:
    """A Concat of computed tensors and constants (a branch proved dead on the region is a constant 0): each run
    of constants becomes the padding of the computed tensor after it (trailing ones: before it), a Pad with the
    constants as its bias. The same values, and it runs on any batch (a (1, k) constant in a Concat does not
    broadcast over the batch axis in ONNX). With one computed tensor the Concat itself becomes the Pad."""
    op, args = rw.op(n), rw.args(n)
    if not isinstance(op, ops.Concat) or op.bias is not None or op.axis % len(op.shape) == 0:
        return False
    computed = [k for k, a in enumerate(args) if rw.op(a).kind != "const"]
    if not computed or len(computed) == len(args):
        return False
    axis = op.axis % len(op.shape)
    owner = [next((k for k in computed if k >= j), computed[-1]) for j in range(len(args))]
    parts, shapes = [], []
    for k in computed:
        group = [j for j in range(len(args)) if owner[j] == k]
        x_shape = tuple(op.in_shapes[k])
        if group == [k]:
            parts.append(args[k])
            shapes.append(x_shape)
            continue
        before = sum(op.in_shapes[j][axis] for j in group if j < k)
        after = sum(op.in_shapes[j][axis] for j in group if j > k)
        bias = np.concatenate([np.zeros(x_shape) if j == k else
                               np.broadcast_to(np.asarray(rw.op(args[j]).value, np.float64), tuple(op.in_shapes[j]))
                               for j in group], axis=axis)
        pads = tuple((before, after) if ax == axis else (0, 0) for ax in range(len(x_shape)))
        pad = ops.Pad(bias.shape, pads=pads, value=0.0, bias=bias if np.any(bias) else None)
        if len(computed) == 1:
            rw.set(n, dataclasses.replace(pad, shape=op.shape), [args[k]])
            return True
        parts.append(rw.insert(n, f"{n}/pad", pad, [args[k]]))
        shapes.append(bias.shape)
    rw.set(n, dataclasses.replace(op, in_shapes=shapes), parts)
    return True


def identities(rw: Rewriter, n: str) -> bool:
    """x + 0, x * 1, a reshape to the same shape, an identity transpose, and unread nodes go."""
    op, args = rw.op(n), rw.args(n)
    if op.kind != "input" and n not in rw.outputs and not rw.users(n):
        rw.drop(n, "identities")
        return True
    if len(args) != 1 or tuple(rw.op(args[0]).shape) != tuple(op.shape):
        return False
    same = ((isinstance(op, ops.Shift) and _zero(op.bias))
            or (isinstance(op, ops.Scale) and np.all(np.asarray(op.s) == 1) and _zero(op.bias))
            or (isinstance(op, ops.Reshape) and tuple(op.in_shape) == tuple(op.shape))
            or (isinstance(op, ops.Transpose) and tuple(op.perm) == tuple(range(len(op.perm)))))
    return same and rw.bypass(n, args[0], "identities")


# ---- elementwise affine maps into the layer next to them ---------------------------------------------

def affine_into_producer(rw: Rewriter, n: str) -> bool:
    """L(x) * s + t with s, t per output channel (feature): the scale goes into L's rows, t into its bias."""
    st = _affine(rw.op(n))
    if st is None:
        return False
    p = rw.args(n)[0]
    prod, shape = rw.op(p), tuple(rw.op(n).shape)
    if not rw.only_feeds(p, n) or tuple(prod.shape) != shape:
        return False
    s, t = st
    if isinstance(prod, ops.Conv) and prod.pooling:      # an average pool stays one: only a uniform scale
        if np.size(s) != 1 or not _zero(t):
            return False
        new = dataclasses.replace(prod, W=prod.W * float(np.asarray(s).reshape(-1)[0]), shape=shape)
    elif isinstance(prod, ops.Conv) and prod.geo.group == 1:
        s_c, t_c = _along(s, shape, -3), _along(0.0 if t is None else t, shape, -3)
        if s_c is None or t_c is None:
            return False
        new = dataclasses.replace(prod, W=prod.W * s_c[:, None, None, None],
                                  bias=_conv_bias_or_none(_conv_bias(prod) * s_c + t_c))
    elif isinstance(prod, ops.Dense):
        s_k = _along(s, shape, -1)
        if s_k is None:
            return False
        b = (0.0 if prod.bias is None else np.asarray(prod.bias, np.float64) * s) + (0.0 if t is None else t)
        new = dataclasses.replace(prod, W=prod.W * s_k[:, None], bias=None if _zero(b) else b)
    else:
        return False
    if new.params > prod.params + rw.op(n).params:     # e.g. a scalar shift becoming a per-channel bias
        return False
    rw.set(n, new, rw.args(p))
    rw.drop(p, "affine_into_producer")
    return True


def affine_into_consumer(rw: Rewriter, n: str) -> bool:
    """L(x * s + t), possibly through a Flatten: s goes into L's columns (input channels), L(t) into its
    bias.  For a convolution t must be per channel and there must be no padding (a padded border reads
    0, not t)."""
    op = rw.op(n)
    if not _plain(op):
        return False
    p = rw.args(n)[0]
    flat = None
    if isinstance(rw.op(p), ops.Reshape) and isinstance(op, ops.Dense) and rw.only_feeds(p, n):
        flat, p = p, rw.args(p)[0]                     # Scale -> Flatten -> Dense
        if len(rw.op(flat).shape) != 2 or rw.op(flat).shape[0] != 1 or rw.op(flat).in_shape[0] != 1:
            return False
    st = _affine(rw.op(p))
    x = rw.args(p)[0] if st is not None else None
    if st is None or not rw.only_feeds(p, flat or n) or tuple(rw.op(x).shape) != tuple(rw.op(p).shape):
        return False
    s, t = st
    shape = tuple(rw.op(p).shape)
    if isinstance(op, ops.Dense):
        # x (..., k) -> (x * s + t) @ W.T = x @ (W * s).T + t @ W.T (through the Flatten: flattened s, t)
        tshape = rw.op(flat).shape if flat else shape
        s_k = _along(np.broadcast_to(s, shape).reshape(tshape), tshape, -1)
        if s_k is None:
            return False
        bias = op.bias if _zero(t) else (0.0 if op.bias is None else op.bias) + \
            np.broadcast_to(t, shape).reshape(tshape) @ op.W.T
        new = dataclasses.replace(op, W=op.W * s_k[None, :], bias=bias)
    else:
        s_c = _along(s, shape, -3)
        t_c = _along(0.0 if t is None else t, shape, -3)
        if s_c is None or t_c is None or (np.any(t_c) and any(op.geo.pads)):
            return False
        bias = op.bias if _zero(t_c) else _conv_bias_or_none(_conv_bias(op) + np.einsum("mcij,c->m", op.W, t_c))
        new = dataclasses.replace(op, W=op.W * s_c[None, :, None, None], bias=bias)
    if new.params > op.params + rw.op(p).params:       # folding must never make the graph larger
        return False
    rw.set(n, new)
    rw.set(flat or n, rw.op(flat or n), [x])
    rw.drop(p, "affine_into_consumer")
    return True


# ---- compositions of linear layers -------------------------------------------------------------------

def dense_dense(rw: Rewriter, n: str) -> bool:
    """W2 (W1 x + b1) + b2 = (W2 W1) x + (W2 b1 + b2), when W2 W1 has no more entries than W1 and W2."""
    op = rw.op(n)
    p = rw.args(n)[0] if isinstance(op, ops.Dense) else None
    if p is None or not isinstance(rw.op(p), ops.Dense) or not rw.only_feeds(p, n):
        return False
    first = rw.op(p)
    (m, k), j = op.W.shape, first.W.shape[1]
    if m * j > m * k + k * j:
        return False
    bias = op.bias
    if first.bias is not None:
        bias = np.broadcast_to(first.bias, first.shape) @ op.W.T + (0.0 if op.bias is None else op.bias)
    rw.set(n, dataclasses.replace(op, W=op.W @ first.W, bias=bias), rw.args(p))
    rw.drop(p, "dense_dense")
    return True


def conv_conv(rw: Rewriter, n: str) -> bool:
    """Two convolutions as one, in the exactly representable cases (group 1, not larger):
    A. the second has no padding and both have dilation 1: kernels composed, strides multiplied;
    B. the first is 1x1, stride 1, no padding, no bias: channels mixed into the second's kernel."""
    c2 = rw.op(n)
    p = rw.args(n)[0] if _plain(c2) and isinstance(c2, ops.Conv) else None
    if p is None or not isinstance(rw.op(p), ops.Conv) or not _plain(rw.op(p)) or not rw.only_feeds(p, n):
        return False
    c1 = rw.op(p)
    g1, g2 = c1.geo, c2.geo
    if not any(g2.pads) and g1.dilations == (1, 1) and g2.dilations == (1, 1):
        # y[p] = sum_d2 W2[d2] z[s2 p + d2],  z[q] = sum_d1 W1[d1] x[s1 q + d1] + b1
        # => y[p] = sum_e K[e] x[s1 s2 p + e] + (sum_d2 W2[d2]) b1 + b2, K[e] = sum_{s1 d2 + d1 = e} W2[d2] W1[d1]
        (s1h, s1w), (k1h, k1w), (k2h, k2w) = g1.strides, g1.kernel, g2.kernel
        K = np.zeros((g2.out_channels, g1.in_channels, s1h * (k2h - 1) + k1h, s1w * (k2w - 1) + k1w))
        for i in range(k2h):
            for j in range(k2w):
                K[:, :, s1h * i:s1h * i + k1h, s1w * j:s1w * j + k1w] += np.einsum("ab,bcij->acij", c2.W[:, :, i, j], c1.W)
        bias = c2.W.sum(axis=(2, 3)) @ _conv_bias(c1) + _conv_bias(c2)
        geo = ConvGeometry(g1.in_channels, g1.height, g1.width, g2.out_channels, K.shape[2:],
                           (s1h * g2.strides[0], s1w * g2.strides[1]), g1.pads, (1, 1), 1)
    elif g1.kernel == (1, 1) and g1.strides == (1, 1) and not any(g1.pads) and _zero(c1.bias):
        # z = W1 x per position (0 where x is padded, as there is no bias): W2's padding is x's padding
        K = np.einsum("abij,bc->acij", c2.W, c1.W[:, :, 0, 0])
        bias = _conv_bias(c2)
        geo = dataclasses.replace(g2, in_channels=g1.in_channels)
    else:
        return False
    if K.size > c1.W.size + c2.W.size or geo.out_hw != g2.out_hw:
        return False
    rw.set(n, dataclasses.replace(c2, W=K, geo=geo, bias=_conv_bias_or_none(bias)), rw.args(p))
    rw.drop(p, "conv_conv")
    return True


def residual(rw: Rewriter, n: str) -> bool:
    """sa x + sb L(x) as one op of L's kind and size: I added to a square dense matrix, a centred delta
    added to a shape-preserving convolution, 1 added to a scale."""
    op, args = rw.op(n), rw.args(n)
    if not isinstance(op, ops.Add) or len(args) != 2 or args[0] == args[1]:
        return False
    for k in (0, 1):
        x, f = args[1 - k], args[k]
        if rw.args(f) == [x] and rw.only_feeds(f, n):
            new = _plus_identity(rw.op(f), op.signs[1 - k], op.signs[k], tuple(rw.op(x).shape), tuple(op.shape))
            if new is not None:
                rw.set(n, new, [x])
                rw.drop(f, "residual")
                return True
    return False


def _plus_identity(L, sa: float, sb: float, in_shape: tuple, shape: tuple):
    """The op computing sa x + sb L(x), or None when L is not of a kind (and shape) where that is exact."""
    if in_shape != shape or tuple(L.shape) != shape or not isinstance(L, (ops.Dense, ops.Scale, ops.Shift, ops.Conv)):
        return None              # (x + relu(x), a hunt's crash: only affine L folds)
    b = None if L.bias is None else sb * np.asarray(L.bias, np.float64)
    if isinstance(L, ops.Dense) and L.W.shape[0] == L.W.shape[1]:
        return dataclasses.replace(L, W=sb * L.W + sa * np.eye(L.W.shape[0]), bias=b)
    if isinstance(L, (ops.Scale, ops.Shift)):
        s = sb * np.asarray(_affine(L)[0], np.float64) + sa
        return ops.Scale(shape, bias=b, s=s)
    if isinstance(L, ops.Conv) and _plain(L) and L.geo.strides == (1, 1) and L.geo.out_channels == L.geo.in_channels:
        # out[c, p] reads x[c, p + i dh - pt]: the identity is the tap (i0, j0) with i0 dh = pt, j0 dw = pl
        (dh, dw), (pt, pl) = L.geo.dilations, L.geo.pads[:2]
        if pt % dh or pl % dw or pt // dh >= L.geo.kernel[0] or pl // dw >= L.geo.kernel[1]:
            return None
        W = sb * L.W
        c = np.arange(L.geo.out_channels)
        W[c, c, pt // dh, pl // dw] += sa
        return dataclasses.replace(L, W=W, bias=b)
    return None


RULES = [(f.__name__, f) for f in (identities, masked_relu, constants, concat_constants, affine_into_producer,
                                   affine_into_consumer, dense_dense, conv_conv, residual)]
