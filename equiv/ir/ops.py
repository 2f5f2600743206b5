"""The ops of the graph IR: one class per op, each with the few methods every engine needs.

Every tensor has a concrete shape (the ONNX shape, symbolic dimensions set to 1); arrays carry one more
leading axis, a batch of B evaluations (forward) or of R rows (back-substitution).  A linear op
computes ``y = L(x_1, ..., x_k) + bias`` and offers
- ``linear(*xs)``: L on a batch;
- ``transpose(a)``: L's adjoint on a batch of rows, one array per input (back-substitution: a . y =
  sum_i transpose(a)_i . x_i + a . bias);
- ``abs_linear(*rs)``: |L| on a batch (interval radius);
- ``bias``: an array broadcastable to the output shape, or None.
Convolutions stay convolutions (their adjoint is a transposed convolution): no op builds a dense
matrix of its operator.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .conv import ConvGeometry, conv_forward, conv_transpose


@dataclass
class Op:
    """Base class: `shape` is the output shape without the batch axis."""

    shape: tuple
    kind = "linear"          # input | const | relu | relu_diff | linear
    # every output element is an input element (or a constant), moved without arithmetic: the op is monotone
    # and interval bounds through it are exact, forward(lo) and forward(hi), with no rounding margin
    selects = False

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def params(self) -> int:
        return 0

    @property
    def macs(self) -> int:
        """Multiply-accumulates of one evaluation (0 for ops that only move or add values)."""
        return 0


@dataclass
class Input(Op):
    """A graph input; its values come from the region."""

    kind = "input"


@dataclass
class Const(Op):
    """A constant tensor used by a multi-input op (Concat with constants, Add of a constant tensor)."""

    value: np.ndarray = None
    kind = "const"


@dataclass
class Relu(Op):
    kind = "relu"

    @property
    def n_relus(self) -> int:
        return self.size

    def forward(self, x):
        return np.maximum(x, 0.0)


@dataclass
class MaskedRelu(Op):
    """What a ReLU becomes once phases are proved: relu where `relu_mask`, the identity where `linear_mask`
    (active everywhere on the region), 0 elsewhere (dead everywhere on the region)."""

    relu_mask: np.ndarray = None
    linear_mask: np.ndarray = None
    kind = "relu"

    def forward(self, x):
        return np.where(self.relu_mask, np.maximum(x, 0.0), np.where(self.linear_mask, x, 0.0))

    @property
    def n_relus(self) -> int:
        return int(np.sum(self.relu_mask))

    @property
    def mask_entries(self) -> int:
        """Entries of the masks the written model holds (each mask compacted; an all-0 or all-1 one is not written)."""
        return sum(compact_mask(m).size for m in (self.relu_mask, self.linear_mask)
                   if np.any(m) and not np.all(m))


@dataclass
class ReluDiff(Op):
    """The difference of two aligned activations, dh = act_f(z_f) - act_g(z_g), read as (dz, z_g, z_f) with
    dz = z_f - z_g: the node of a difference graph (`ir.pair_graph`) whose relaxation is in (dz, z_g).
    act is relu where its relu mask is set, the identity where its linear mask is, 0 elsewhere (a
    MaskedRelu's dead positions); the masks broadcast to the shape."""

    f_relu: np.ndarray = True
    f_linear: np.ndarray = False
    g_relu: np.ndarray = True
    g_linear: np.ndarray = False
    kind = "relu_diff"

    @staticmethod
    def _act(z, relu, linear):
        return np.where(relu, np.maximum(z, 0.0), np.where(linear, z, 0.0))

    def forward(self, dz, zg, zf):
        return self._act(zf, self.f_relu, self.f_linear) - self._act(zg, self.g_relu, self.g_linear)

    def interval(self, lo: list, hi: list) -> tuple[np.ndarray, np.ndarray]:
        """Bounds of dh from those of (dz, z_g, z_f): h_f - h_g from the two activations' bounds, and where
        both are relus, between min(dz, 0) and max(dz, 0) (relu is monotone and 1-Lipschitz); where both
        are identities, dz itself."""
        (dl, gl, fl), (du, gu, fu) = lo, hi
        l = self._act(fl, self.f_relu, self.f_linear) - self._act(gu, self.g_relu, self.g_linear)
        h = self._act(fu, self.f_relu, self.f_linear) - self._act(gl, self.g_relu, self.g_linear)
        both_relu = np.asarray(self.f_relu) & np.asarray(self.g_relu)
        both_lin = ~np.asarray(self.f_relu) & ~np.asarray(self.g_relu) & self.f_linear & self.g_linear
        l = np.where(both_relu, np.maximum(l, np.minimum(dl, 0)), np.where(both_lin, np.maximum(l, dl), l))
        h = np.where(both_relu, np.minimum(h, np.maximum(du, 0)), np.where(both_lin, np.minimum(h, du), h))
        return l, h


def compact(a) -> np.ndarray:
    """The array with every axis along which it is constant reduced to length 1 (it broadcasts back)."""
    a = np.asarray(a)
    for ax in range(a.ndim):
        if a.shape[ax] > 1 and (a == np.take(a, [0], axis=ax)).all():
            a = np.take(a, [0], axis=ax)
    return a


def compact_mask(m) -> np.ndarray:
    return compact(np.asarray(m, bool))


@dataclass
class Linear(Op):
    """y = linear(*xs) + bias."""

    bias: np.ndarray | None = None

    def forward(self, *xs):
        y = self.linear(*xs)
        return y if self.bias is None else y + self.bias

    @property
    def params(self) -> int:
        return 0 if self.bias is None else int(np.size(self.bias))

    def bias_dot(self, a: np.ndarray) -> np.ndarray:
        """(R,) the constant a . bias of each row."""
        if self.bias is None:
            return np.zeros(a.shape[0])
        return (a * self.bias).reshape(a.shape[0], -1).sum(axis=1)


@dataclass
class Dense(Linear):
    """y = x @ W.T + b along the last axis (Gemm, MatMul by a constant): W (m, n)."""

    W: np.ndarray = None

    def linear(self, x):
        return x @ self.W.T

    def transpose(self, a):
        return [a @ self.W]

    def abs_linear(self, r):
        return r @ np.abs(self.W).T

    @property
    def selects(self) -> bool:
        """W picks one input per output (a row of one 1, zeros elsewhere) and there is no bias: x @ W.T is then
        exact in floating point (how a chain reads a ReLU straight on an input: an identity layer before it)."""
        W = np.asarray(self.W)
        if (self.bias is not None and np.any(self.bias)) or np.count_nonzero(W[:1]) != 1:
            return False                  # (a real layer fails here at once: no pass over a large W)
        return bool(np.all((W == 0) | (W == 1))) and bool(np.all(np.count_nonzero(W, axis=1) == 1))

    @property
    def macs(self) -> int:
        return self.size * self.W.shape[1]

    @property
    def params(self) -> int:
        return self.W.size + (0 if self.bias is None else int(np.size(self.bias)))


@dataclass
class MatMulLeft(Linear):
    """y = W @ x over the last two axes (a constant on the left of MatMul): W (m, k)."""

    W: np.ndarray = None

    def linear(self, x):
        return np.matmul(self.W, x)

    def transpose(self, a):
        return [np.matmul(self.W.T, a)]

    def abs_linear(self, r):
        return np.matmul(np.abs(self.W), r)

    @property
    def macs(self) -> int:
        return self.size * self.W.shape[1]

    @property
    def params(self) -> int:
        return self.W.size


@dataclass
class MatMulConst(Linear):
    """y = x @ W, or W @ x when `left`, with ONNX/numpy broadcasting of the leading (batch) dimensions;
    W is a constant of rank >= 2 and x has rank >= 2 (1-D operands are reshaped at import)."""

    W: np.ndarray = None
    left: bool = False
    in_shape: tuple = ()

    def _lift(self, x):
        """x (B, *in_shape) with axes inserted after the batch axis up to the output's rank."""
        extra = len(self.shape) + 1 - x.ndim
        return x.reshape((x.shape[0],) + (1,) * extra + x.shape[1:]) if extra > 0 else x

    def _product(self, x, W):
        return np.matmul(W, x) if self.left else np.matmul(x, W)

    def linear(self, x):
        return self._product(self._lift(x), self.W)

    def abs_linear(self, r):
        return self._product(self._lift(r), np.abs(self.W))

    def transpose(self, a):
        Wt = np.swapaxes(self.W, -1, -2)
        return [_unbroadcast(np.matmul(Wt, a) if self.left else np.matmul(a, Wt), self.in_shape)]

    @property
    def params(self) -> int:
        return self.W.size

    @property
    def macs(self) -> int:
        return self.size * self.W.shape[-1 if self.left else -2]


@dataclass
class Conv(Linear):
    """2-D convolution on (..., C, H, W) tensors: W (M, C/group, kh, kw)."""

    W: np.ndarray = None
    geo: ConvGeometry = None
    pooling: bool = False    # an AveragePool's window sum: its ones are not parameters

    def _apply(self, x, W):
        lead = x.shape[:-3]
        y = conv_forward(x.reshape((-1,) + x.shape[-3:]), W, self.geo)
        return y.reshape(lead + y.shape[1:])

    def linear(self, x):
        return self._apply(x, self.W)

    def abs_linear(self, r):
        return self._apply(r, np.abs(self.W))

    def transpose(self, a):
        lead = a.shape[:-3]
        t = conv_transpose(a.reshape((-1,) + a.shape[-3:]), self.W, self.geo)
        return [t.reshape(lead + t.shape[1:])]

    @property
    def params(self) -> int:
        return (0 if self.pooling else self.W.size) + (0 if self.bias is None else self.geo.out_channels)

    @property
    def macs(self) -> int:
        return self.size * int(np.prod(self.W.shape[1:]))


@dataclass
class Scale(Linear):
    """y = x * s + bias elementwise, s broadcastable to the shape (BatchNormalization, Mul/Div/Neg by constants)."""

    s: np.ndarray = None

    def linear(self, x):
        return x * self.s

    def transpose(self, a):
        return [a * self.s]

    def abs_linear(self, r):
        return r * np.abs(self.s)

    @property
    def params(self) -> int:
        return int(np.size(self.s)) + (0 if self.bias is None else int(np.size(self.bias)))


@dataclass
class Shift(Linear):
    """y = x + bias (Add/Sub of a constant): the identity plus a bias."""

    def linear(self, x):
        return x

    def transpose(self, a):
        return [a]

    def abs_linear(self, r):
        return r


@dataclass
class Reshape(Linear):
    """Reshape, Flatten, Squeeze, Unsqueeze, Identity: the same elements in C order."""

    in_shape: tuple = ()

    def linear(self, x):
        return x.reshape((x.shape[0],) + tuple(self.shape))

    @property
    def selects(self) -> bool:
        return self.bias is None

    def transpose(self, a):
        return [a.reshape((a.shape[0],) + tuple(self.in_shape))]

    abs_linear = linear


@dataclass
class Transpose(Linear):
    perm: tuple = ()

    def linear(self, x):
        return np.transpose(x, (0,) + tuple(p + 1 for p in self.perm))

    @property
    def selects(self) -> bool:
        return self.bias is None

    def transpose(self, a):
        inv = np.argsort(self.perm)
        return [np.transpose(a, (0,) + tuple(int(p) + 1 for p in inv))]

    abs_linear = linear


@dataclass
class Pad(Linear):
    """Constant padding: pads[(before, after)] per axis; the pad value enters through the bias."""

    pads: tuple = ()          # ((b0, a0), (b1, a1), ...) per axis of the input
    value: float = 0.0        # the pad value (bias = value on the padded positions)

    @property
    def selects(self) -> bool:
        """No bias inside the padding's frame (0 + value at the pads, x + 0 inside: both exact)."""
        if self.bias is None:
            return True
        inner = tuple(slice(b, n - e) for (b, e), n in zip(self.pads, self.shape))
        return not np.any(np.broadcast_to(self.bias, self.shape)[inner])

    def linear(self, x):
        return np.pad(x, ((0, 0),) + tuple(self.pads))

    def transpose(self, a):
        idx = (slice(None),) + tuple(slice(b, a.shape[k + 1] - e) for k, (b, e) in enumerate(self.pads))
        return [a[idx]]

    abs_linear = linear


@dataclass
class Add(Linear):
    """Sum (or difference, with signs) of tensors, broadcast to the output shape (a residual connection)."""

    in_shapes: list = field(default_factory=list)
    signs: tuple = (1.0, 1.0)

    def _lift(self, x):
        """x (B, *in_shape) with axes inserted after the batch axis up to the output's rank."""
        extra = len(self.shape) + 1 - x.ndim
        return x.reshape((x.shape[0],) + (1,) * extra + x.shape[1:]) if extra else x

    def _sum(self, xs, signs):
        out = sum(s * self._lift(x) for s, x in zip(signs, xs))
        target = (xs[0].shape[0],) + tuple(self.shape)
        return out if out.shape == target else np.broadcast_to(out, target).copy()

    def linear(self, *xs):
        return self._sum(xs, self.signs)

    def transpose(self, a):
        # (a sign of +1 passes the array itself: consumers never change their coefficients in place)
        return [t if s == 1 else s * t for s, t in ((s, _unbroadcast(a, shape)) for s, shape in
                                                    zip(self.signs, self.in_shapes))]

    def abs_linear(self, *rs):
        return self._sum(rs, [abs(s) for s in self.signs])


@dataclass
class Concat(Linear):
    axis: int = 0
    in_shapes: list = field(default_factory=list)

    @property
    def selects(self) -> bool:
        return self.bias is None

    def linear(self, *xs):
        return np.concatenate(xs, axis=self.axis + 1)

    def transpose(self, a):
        cuts = np.cumsum([s[self.axis] for s in self.in_shapes])[:-1]
        return np.split(a, cuts, axis=self.axis + 1)

    abs_linear = linear


def _unbroadcast(a: np.ndarray, shape: tuple) -> np.ndarray:
    """Sum a (R, *out_shape) over the axes along which `shape` was broadcast: the adjoint of broadcasting."""
    shape = tuple(shape)
    extra = a.ndim - 1 - len(shape)
    if extra:
        a = a.sum(axis=tuple(range(1, 1 + extra)))
    axes = tuple(k + 1 for k, d in enumerate(shape) if d == 1 and a.shape[k + 1] != 1)
    return a.sum(axis=axes, keepdims=True) if axes else a
