"""The affine lowering of one ONNX op for the chain importer: each shape op an exact row gather of
(A, c) in ONNX's flat order, Gemm/MatMul/Conv/BatchNormalization/elementwise maps as matrices."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UnsupportedModelError


@dataclass
class _Expr:
    """A tensor as an affine function of the current anchor: flat(tensor) = A @ anchor + c."""

    A: np.ndarray
    c: np.ndarray
    shape: tuple
    # (A, c) equals the ONNX ops' real-number function with no rounding so far (only copies of the model's
    # constants): `bounds.exact` may then decide the first layer in rational arithmetic.  False whenever an
    # op rounded (a product of two constants, a sum of a bias and a folded offset, BatchNorm's 1/sqrt, ...)
    exact: bool = False


def _selection(e: _Expr) -> bool:
    """Whether a constant matrix W applied to e is exact: e is exact, its c is 0, and A is 0/1 with at most one 1
    per column (each entry of W @ A is then one entry of W, and W @ c + bias is the bias)."""
    if not e.exact or e.c.any():
        return False
    return bool(np.isin(e.A, (0.0, 1.0)).all() and ((e.A != 0).sum(axis=0) <= 1).all())


def power_of_two(k) -> bool:
    """Every entry of k is +-2^n (multiplying or dividing by it rounds nothing, barring under/overflow)."""
    k = np.asarray(k, np.float64)
    return bool(np.all((k != 0) & np.isfinite(k) & (np.abs(np.frexp(k)[0]) == 0.5)))


def _concat_index(parts, attrs, where) -> np.ndarray:
    """np.concatenate of index arrays along the Concat's axis (ONNX: same rank, negative axis allowed)."""
    if "axis" not in attrs:
        raise UnsupportedModelError(f"{where}: Concat needs an axis")
    rank = parts[0].ndim
    axis = attrs["axis"]
    if any(p.ndim != rank for p in parts) or not -rank <= axis < rank:
        raise UnsupportedModelError(f"{where}: Concat inputs of ranks {[p.ndim for p in parts]} along axis {axis}")
    try:
        return np.concatenate(parts, axis=axis)
    except ValueError as exc:
        raise UnsupportedModelError(f"{where}: Concat of shapes {[p.shape for p in parts]}: {exc}") from None


def _gather(e: _Expr, idx: np.ndarray) -> _Expr:
    """The tensor whose flat element i is flat(e)[idx.flat[i]], of shape idx.shape."""
    flat = idx.reshape(-1)
    if flat.size == e.A.shape[0] and np.array_equal(flat, np.arange(flat.size)):
        return _Expr(e.A, e.c, idx.shape, e.exact)
    return _Expr(e.A[flat], e.c[flat], idx.shape, e.exact)


def _index(e: _Expr) -> np.ndarray:
    return np.arange(e.A.shape[0]).reshape(e.shape)


def _apply(op, args, attrs, where) -> _Expr:
    """The affine expression of one linear node's output."""
    x = args[0]
    if op == "Dropout" and len(args) > 2 and args[2] is not None and np.any(args[2]):
        raise UnsupportedModelError(f"{where}: training mode is not supported")
    if op in ("Identity", "Dropout"):
        return x
    if op == "Neg":
        return _Expr(-x.A, -x.c, x.shape, x.exact)
    if op in ("Add", "Sub", "Mul", "Div"):
        return _elementwise(op, args[0], args[1], where)
    if op == "Concat":
        return _concat(args, attrs, where)
    if op == "Flatten":
        rank = len(x.shape)
        axis = attrs.get("axis", 1)
        axis = axis + rank if axis < 0 else axis
        if not 0 <= axis <= rank:
            raise UnsupportedModelError(f"{where}: Flatten axis {attrs.get('axis')} of a rank-{rank} tensor")
        return _Expr(x.A, x.c, (int(np.prod(x.shape[:axis])), int(np.prod(x.shape[axis:]))), x.exact)
    if op == "Reshape":
        target = [int(v) for v in np.asarray(args[1]).reshape(-1)]
        if not attrs.get("allowzero", 0):
            target = [x.shape[i] if v == 0 else v for i, v in enumerate(target)]
        try:
            return _Expr(x.A, x.c, tuple(np.empty(x.shape).reshape(target).shape), x.exact)
        except ValueError:
            raise UnsupportedModelError(f"{where}: cannot reshape {x.shape} to {target}") from None
    if op in ("Squeeze", "Unsqueeze"):
        axes = attrs.get("axes")
        if axes is None and len(args) > 1 and args[1] is not None:
            axes = [int(v) for v in np.asarray(args[1]).reshape(-1)]
        arr = np.empty(x.shape)
        try:
            if op == "Squeeze":
                arr = np.squeeze(arr, axis=tuple(axes)) if axes is not None else np.squeeze(arr)
            else:
                arr = np.expand_dims(arr, axis=tuple(axes))
        except (ValueError, TypeError):
            raise UnsupportedModelError(f"{where}: axes {axes} do not fit shape {x.shape}") from None
        return _Expr(x.A, x.c, arr.shape, x.exact)
    if op == "Transpose":
        perm = attrs.get("perm", list(range(len(x.shape)))[::-1])
        return _gather(x, _index(x).transpose(perm))
    if op == "MatMul":
        a, b = args[0], args[1]
        if isinstance(a, _Expr):
            return _matmul_right(a, np.asarray(b, dtype=np.float64), where)
        return _matmul_left(np.asarray(a, dtype=np.float64), b, where)
    if op == "Gemm":
        return _gemm(args, attrs, where)
    if op == "Conv":
        T, bias, shape = _conv_matrix(x.shape, args[1], args[2] if len(args) > 2 else None, attrs, where)
        return _Expr(T @ x.A, T @ x.c + bias, shape, _selection(x))
    if op == "BatchNormalization":
        scale, B, mean, var = args[1:5]
        k = scale / np.sqrt(var + attrs.get("epsilon", 1e-5))
        cshape = (1, -1) + (1,) * (len(x.shape) - 2)
        kk = np.broadcast_to(k.reshape(cshape), x.shape).reshape(-1)
        off = np.broadcast_to((B - mean * k).reshape(cshape), x.shape).reshape(-1)
        return _Expr(x.A * kk[:, None], x.c * kk + off, x.shape)
    raise UnsupportedModelError(f"{where}: not supported")  # pragma: no cover (guarded by SUPPORTED_OPS)


def _concat(args, attrs, where) -> _Expr:
    """Concat of tensors of one anchor and constants: rows stacked in ONNX's flat order of the output."""
    ncols = next(a.A.shape[1] for a in args if isinstance(a, _Expr))
    As, cs, parts, n = [], [], [], 0
    for a in args:
        if isinstance(a, _Expr):
            As.append(a.A)
            cs.append(a.c)
            shape = a.shape
        else:
            arr = np.asarray(a, dtype=np.float64)
            As.append(np.zeros((arr.size, ncols)))
            cs.append(arr.reshape(-1))
            shape = arr.shape
        size = int(np.prod(shape))
        parts.append(n + np.arange(size).reshape(shape))
        n += size
    idx = _concat_index(parts, attrs, where)
    exact = all(a.exact for a in args if isinstance(a, _Expr))
    return _gather(_Expr(np.vstack(As), np.concatenate(cs), (n,), exact), idx)


def _broadcast(e: _Expr, shape: tuple) -> _Expr:
    """e broadcast (numpy/ONNX multidirectional rules) to shape: a row gather."""
    return _gather(e, np.broadcast_to(_index(e), shape))


def _elementwise(op, a, b, where) -> _Expr:
    a_shape = a.shape if isinstance(a, _Expr) else np.shape(a)
    b_shape = b.shape if isinstance(b, _Expr) else np.shape(b)
    try:
        shape = tuple(np.broadcast_shapes(a_shape, b_shape))
    except ValueError:
        raise UnsupportedModelError(f"{where}: shapes {a_shape} and {b_shape} do not broadcast") from None
    if isinstance(a, _Expr) and isinstance(b, _Expr):
        if op not in ("Add", "Sub"):
            raise UnsupportedModelError(f"{where}: {op} of two computed tensors is not linear")
        a, b = _broadcast(a, shape), _broadcast(b, shape)
        s = 1.0 if op == "Add" else -1.0
        return _Expr(a.A + s * b.A, a.c + s * b.c, shape)
    expr_first = isinstance(a, _Expr)
    expr, const = (a, b) if expr_first else (b, a)
    expr = _broadcast(expr, shape)
    k = np.broadcast_to(np.asarray(const, dtype=np.float64), shape).reshape(-1)
    # c +- k rounds unless c is 0; a product or quotient unless k is a power of two
    added = expr.exact and not expr.c.any()
    scaled = expr.exact and power_of_two(k)
    if op == "Add":
        return _Expr(expr.A, expr.c + k, shape, added)
    if op == "Sub":
        return _Expr(expr.A, expr.c - k, shape, added) if expr_first else _Expr(-expr.A, k - expr.c, shape, added)
    if op == "Mul":
        return _Expr(expr.A * k[:, None], expr.c * k, shape, scaled)
    if not expr_first:
        raise UnsupportedModelError(f"{where}: dividing a constant by a tensor is not linear")
    if np.any(k == 0):
        raise UnsupportedModelError(f"{where}: division by zero in a constant")
    return _Expr(expr.A / k[:, None], expr.c / k, shape, scaled)


def _linear(e: _Expr, f, shape) -> _Expr:
    """Apply the linear map f (on row blocks: (rows, q) -> (rows', q)) to A and c."""
    return _Expr(f(e.A), f(e.c[:, None])[:, 0], shape, _selection(e))


def _matmul_right(x: _Expr, W: np.ndarray, where) -> _Expr:
    """x @ W (numpy matmul rules: 1-D operands, broadcast batch dims) for a constant W."""
    if len(x.shape) == 0 or W.ndim == 0:
        raise UnsupportedModelError(f"{where}: MatMul of a scalar")
    xs = (1,) + tuple(x.shape) if len(x.shape) == 1 else tuple(x.shape)     # (..., m, k)
    Wm = W[:, None] if W.ndim == 1 else W                                   # (..., k, n)
    m, k, n = xs[-2], xs[-1], Wm.shape[-1]
    if Wm.shape[-2] != k:
        raise UnsupportedModelError(f"{where}: MatMul of shapes {x.shape} and {W.shape}")
    try:
        batch = tuple(np.broadcast_shapes(xs[:-2], Wm.shape[:-2]))
    except ValueError:
        raise UnsupportedModelError(f"{where}: MatMul batch dims {x.shape} and {W.shape} do not broadcast") from None
    idx = np.broadcast_to(np.arange(int(np.prod(xs))).reshape(xs), batch + (m, k)).reshape(-1)
    same = idx.size == int(np.prod(xs))       # no batch broadcast: rows in place
    WT = np.ascontiguousarray(np.broadcast_to(np.swapaxes(Wm, -1, -2), batch + (n, k)))[..., None, :, :]

    def f(X):
        q = X.shape[1]
        Xg = (X if same else X[idx]).reshape(batch + (m, k, q))
        return np.matmul(WT, Xg).reshape(-1, q)          # out[..., i, j, :] = sum_l W[..., l, j] X[..., i, l, :]

    shape = batch + (m, n)
    if len(x.shape) == 1:
        shape = shape[:-2] + shape[-1:]
    if W.ndim == 1:
        shape = shape[:-1]
    return _linear(x, f, shape)


def _matmul_left(W: np.ndarray, x: _Expr, where) -> _Expr:
    """W @ x (numpy matmul rules) for a constant W."""
    if len(x.shape) == 0 or W.ndim == 0:
        raise UnsupportedModelError(f"{where}: MatMul of a scalar")
    Wm = W[None, :] if W.ndim == 1 else W                                   # (..., m, k)
    xs = tuple(x.shape) + (1,) if len(x.shape) == 1 else tuple(x.shape)     # (..., k, n)
    m, k, n = Wm.shape[-2], xs[-2], xs[-1]
    if Wm.shape[-1] != k:
        raise UnsupportedModelError(f"{where}: MatMul of shapes {W.shape} and {x.shape}")
    try:
        batch = tuple(np.broadcast_shapes(Wm.shape[:-2], xs[:-2]))
    except ValueError:
        raise UnsupportedModelError(f"{where}: MatMul batch dims {W.shape} and {x.shape} do not broadcast") from None
    idx = np.broadcast_to(np.arange(int(np.prod(xs))).reshape(xs), batch + (k, n)).reshape(-1)
    same = idx.size == int(np.prod(xs))
    Wb = np.broadcast_to(Wm, batch + (m, k))

    def f(X):
        q = X.shape[1]
        Xg = (X if same else X[idx]).reshape(batch + (k, n * q))
        return np.matmul(Wb, Xg).reshape(-1, q)          # out[..., i, j, :] = sum_l W[..., i, l] X[..., l, j, :]

    shape = batch + (m, n)
    if W.ndim == 1:
        shape = shape[:-2] + shape[-1:]
    if len(x.shape) == 1:
        shape = shape[:-1]
    return _linear(x, f, shape)


def _gemm(args, attrs, where) -> _Expr:
    """alpha * A' @ B' + beta * C with A' = A^T if transA, B' = B^T if transB (one of A, B constant)."""
    a, b = args[0], args[1]
    c = args[2] if len(args) > 2 else None
    alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
    for v in (a, b):
        if len(v.shape if isinstance(v, _Expr) else np.shape(v)) != 2:
            raise UnsupportedModelError(f"{where}: Gemm needs 2-D A and B")
    if not isinstance(a, _Expr) and not isinstance(b, _Expr):    # only C is computed
        A = np.asarray(a, dtype=np.float64)
        B = np.asarray(b, dtype=np.float64)
        prod = alpha * ((A.T if attrs.get("transA", 0) else A) @ (B.T if attrs.get("transB", 0) else B))
        y = _Expr(np.zeros((prod.size, c.A.shape[1])), prod.reshape(-1), prod.shape)
    elif isinstance(a, _Expr):
        a = _gather(a, _index(a).T) if attrs.get("transA", 0) else a
        B = np.asarray(b, dtype=np.float64)
        B = B.T if attrs.get("transB", 0) else B
        y = _matmul_right(a, alpha * B, where)
    else:
        A = np.asarray(a, dtype=np.float64)
        A = A.T if attrs.get("transA", 0) else A
        b = _gather(b, _index(b).T) if attrs.get("transB", 0) else b
        y = _matmul_left(alpha * A, b, where)
    if not power_of_two(alpha):          # alpha x the weights rounds
        y.exact = False
    if c is None:
        return y
    c_shape = c.shape if isinstance(c, _Expr) else np.shape(c)
    try:
        ok = tuple(np.broadcast_shapes(c_shape, y.shape)) == tuple(y.shape)   # C broadcasts to (M, N) only
    except ValueError:
        ok = False
    if not ok:
        raise UnsupportedModelError(f"{where}: Gemm bias C of shape {c_shape} does not broadcast to {y.shape}")
    c = _Expr(beta * c.A, beta * c.c, c.shape) if isinstance(c, _Expr) else beta * np.asarray(c, dtype=np.float64)
    out = _elementwise("Add", y, c, where)
    out.exact = out.exact and power_of_two(beta)
    return out


def _conv_matrix(in_shape, W, bias, attrs, where):
    """Lower a 2-D Conv exactly to a dense matrix by convolving the identity basis (float64)."""
    if len(in_shape) != 4 or W.ndim != 4:
        raise UnsupportedModelError(f"{where}: only 2-D convolutions on NCHW inputs are supported")
    _, C, H, Wd = in_shape
    M, Cg, kh, kw = W.shape
    group = attrs.get("group", 1)
    sh, sw = attrs.get("strides", [1, 1])
    dh, dw = attrs.get("dilations", [1, 1])
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise UnsupportedModelError(f"{where}: auto_pad is not supported; use explicit pads")
    pt, pl, pb, pr = attrs.get("pads", [0, 0, 0, 0])
    Ho = (H + pt + pb - dh * (kh - 1) - 1) // sh + 1
    Wo = (Wd + pl + pr - dw * (kw - 1) - 1) // sw + 1
    n = C * H * Wd
    basis = np.pad(np.eye(n).reshape(n, C, H, Wd), ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    out = np.zeros((n, M, Ho, Wo))
    mg = M // group
    for gi in range(group):
        xs = basis[:, gi * Cg:(gi + 1) * Cg]
        ws = W[gi * mg:(gi + 1) * mg]
        for i in range(kh):
            for j in range(kw):
                patch = xs[:, :, i * dh:i * dh + sh * (Ho - 1) + 1:sh, j * dw:j * dw + sw * (Wo - 1) + 1:sw]
                out[:, gi * mg:(gi + 1) * mg] += np.einsum("ncij,mc->nmij", patch, ws[:, :, i, j])
    T = out.reshape(n, -1).T
    b = np.zeros(M) if bias is None else bias
    return T, np.repeat(b, Ho * Wo), (1, M, Ho, Wo)


