"""One bounds engine over the graph: interval arithmetic and DeepPoly/CROWN back-substitution on a DAG.

Back-substitution of a tensor's rows walks the graph in reverse topological order.  Each node collects
the coefficient arrays its consumers send it (a residual Add sends its A to both branches, which are
summed where they meet; a Concat sends each input its slice), and passes them on through its op's
adjoint (`transpose`), a ReLU through its linear relaxation on [l, u]:
- dead (u <= 0): 0;  active (l >= 0): the identity;
- unstable: upper line u/(u - l) (z - l), lower line 0 or z (z when u > -l, DeepPoly's choice);
the upper line for positive coefficients of an upper bound (and negative ones of a lower bound).
At an input the box concretises the linear form.  Every result is widened by the float safety margin.

Both passes run on N boxes at once (`interval_boxes`, `deeppoly_boxes`): every bound carries a leading
box axis and the coefficient arrays one more, (boxes, rows, *shape); the one-box functions are N = 1.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace

import networkx as nx
import numpy as np
from tqdm import tqdm

from ..ir import ops
from ..ir.graph import Graph
from ..spec.region import Box
from .common import ROUND_MAG, ROUND_TERMS, outward
from .blocks import find_blocks, jump, make_summary, needed_rows
from .relax import _relaxation, diff_step, prepare, prepare_diff, relu_step, rowdot  # noqa: F401  (_relaxation: alpha)

ROW_BUDGET_BYTES = 256 * 2 ** 20     # memory for the coefficient arrays of one chunk of rows


@dataclass
class GraphBounds:
    """Sound lower/upper bounds of every tensor of a graph on a box: {tensor: array of its shape}
    (with a leading box axis when made on N boxes)."""

    lo: dict
    hi: dict
    seconds: dict = field(default_factory=dict)
    summaries: dict = field(default_factory=dict)    # {block output: blocks.Summary} when made with blocks
    margins: dict = field(default_factory=dict)      # {tensor: its rounding margin} (`rounding_margins`), when kept

    def relu_input(self, g: Graph, relu: str) -> tuple[np.ndarray, np.ndarray]:
        z = g.args(relu)[0]
        return self.lo[z], self.hi[z]

    def counts(self, g: Graph) -> dict:
        """ReLU positions proved dead (hi <= 0), active (lo >= 0) and left unstable (a MaskedRelu's identity
        and zero positions are not ReLUs)."""
        rows = self.per_layer(g)
        dead, active = sum(r["dead"] for r in rows), sum(r["active"] for r in rows)
        return {"dead": dead, "active": active, "stable": dead + active,
                "unstable": sum(r["unstable"] for r in rows)}

    def per_layer(self, g: Graph) -> list[dict]:
        rows = []
        for r in g.relus:
            lo, hi = self.relu_input(g, r)
            m = np.broadcast_to(getattr(g.op(r), "relu_mask", True), lo.shape)
            rows.append({"relu": r, "shape": list(lo.shape), "size": int(m.sum()), "dead": int(np.sum((hi <= 0) & m)),
                         "active": int(np.sum((lo >= 0) & (hi > 0) & m)),
                         "unstable": int(np.sum((lo < 0) & (hi > 0) & m))})
        return rows


def _box_parts(g: Graph, box: Box) -> dict:
    lo, hi = g.split_input(box.lo[None]), g.split_input(box.hi[None])
    return {n: (lo[n][0], hi[n][0]) for n in g.inputs}


def _parts(g: Graph, lo: np.ndarray, hi: np.ndarray) -> dict:
    """{input name: (lo, hi)} of N boxes given as (N, n_inputs) arrays; each (N, *shape)."""
    L, H = g.split_input(lo), g.split_input(hi)
    return {n: (L[n], H[n]) for n in g.inputs}


def _squeeze(b: GraphBounds) -> GraphBounds:
    return GraphBounds({k: v[0] for k, v in b.lo.items()}, {k: v[0] for k, v in b.hi.items()}, b.seconds,
                       b.summaries)


def rounding_margins(g: Graph, parts: dict, names=None) -> dict:
    """{tensor: (N, *shape)} the float64 rounding margin of its bounds: ROUND_MAG x the terms summed on the
    longest way from the input (each op's fan-in or fan-out, the intercept sums over a layer's positions,
    the inputs' count for the final concretisation) x its forward magnitude M (|W| M + |bias| from
    max(|lo|, |hi|) at the inputs; a ReLU keeps its input's).  names: only these tensors (and what they read)."""
    M, C = {}, {}
    N = next(iter(parts.values()))[0].shape[0] if parts else 1
    for n in g.order:
        if names is not None and n not in names:
            continue
        op, args = g.op(n), g.args(n)
        if op.kind == "input":
            l, h = parts[n]
            M[n], C[n] = np.maximum(np.abs(l), np.abs(h)), g.n_inputs
        elif op.kind == "const":
            M[n], C[n] = np.broadcast_to(np.abs(np.asarray(op.value, np.float64)), (N,) + tuple(op.shape)), 0
        elif op.kind == "relu":              # (a back-substitution sums its intercepts over all positions)
            M[n], C[n] = M[args[0]], C[args[0]] + op.size + 2
        elif op.kind == "relu_diff":         # dh = act_f(z_f) - act_g(z_g): |dh| <= |z_f| + |z_g|
            M[n], C[n] = M[args[1]] + M[args[2]], max(C[a] for a in args) + 2 * op.size + 4
        elif op.selects:                      # elements moved (a pad value where no element lands)
            M[n], C[n] = np.abs(op.forward(*[M[a] for a in args])), max(C[a] for a in args)
        else:
            M[n] = op.abs_linear(*[M[a] for a in args])
            if op.bias is not None:
                M[n] = M[n] + np.abs(np.broadcast_to(np.asarray(op.bias, np.float64), op.shape))
            C[n] = max(C[a] for a in args) + _sum_length(op, len(args)) + (op.size if op.bias is not None else 0) + 2
    return {n: ROUND_MAG * C[n] * M[n] for n in M}


def _sum_length(op, n_args: int) -> int:
    """The longest sum one application of the op, or of its adjoint, makes: the fan-in or the fan-out."""
    W = getattr(op, "W", None)
    if W is None:
        return n_args
    W = np.asarray(W)
    if W.ndim == 4:           # a convolution (out, in / group, kh, kw): its adjoint sums out x kh x kw terms
        return max(W[0].size, W.shape[0] * W.shape[2] * W.shape[3])
    return max(W.shape)


def widen(l: np.ndarray, h: np.ndarray, m: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """[l, h] widened by a rounding margin m (`rounding_margins`)."""
    if m is None:
        return l, h
    return l - m, h + m


def _interval_node(g: Graph, name: str, parts: dict, lo: dict, hi: dict, known: GraphBounds | None, N: int,
                   M: dict | None = None):
    """Interval bounds (N, *shape) of one node from those of its arguments (centre/radius through the op,
    |L| for the radius), widened by its rounding margin M[name] (`rounding_margins`) where it sums
    anything, and intersected with `known` where given."""
    op = g.op(name)
    if op.kind == "input":
        l, h = parts[name]
    elif op.kind == "const":
        l = h = np.broadcast_to(np.asarray(op.value, np.float64), (N,) + tuple(op.shape))
    elif op.kind == "relu":   # monotone elementwise (relu, identity or 0 per position)
        a = g.args(name)[0]
        l, h = op.forward(lo[a]), op.forward(hi[a])
    elif op.kind == "relu_diff":
        args = g.args(name)
        l, h = widen(*outward(*op.interval([lo[a] for a in args], [hi[a] for a in args])),
                     None if M is None else M[name])
    elif op.selects:          # elements moved, no arithmetic: exact, no margin
        args = g.args(name)
        l, h = op.forward(*[lo[a] for a in args]), op.forward(*[hi[a] for a in args])
    else:
        args = g.args(name)
        c = op.forward(*[(lo[a] + hi[a]) / 2 for a in args])
        r = op.abs_linear(*[(hi[a] - lo[a]) / 2 for a in args])
        l, h = widen(*outward(c - r, c + r), None if M is None else M[name])
    if known is not None and name in known.lo:
        l, h = np.maximum(l, known.lo[name]), np.minimum(h, known.hi[name])
    lo[name], hi[name] = np.asarray(l, np.float64), np.asarray(h, np.float64)


def interval_boxes(g: Graph, lo: np.ndarray, hi: np.ndarray, known: GraphBounds | None = None) -> GraphBounds:
    """Interval bounds of every tensor on each of the N boxes [lo[n], hi[n]] ((N, n_inputs) arrays):
    {tensor: (N, *shape)}.  `known` bounds (broadcastable to that) are intersected in."""
    parts, L, H = _parts(g, lo, hi), {}, {}
    M = rounding_margins(g, parts)
    for name in g.order:
        _interval_node(g, name, parts, L, H, known, lo.shape[0], M)
    return GraphBounds(L, H)


def interval_graph(g: Graph, box: Box, known: GraphBounds | None = None) -> GraphBounds:
    """Interval bounds of every tensor on one box, intersected with `known` bounds where given."""
    box.check_dim(g.n_inputs)
    return _squeeze(interval_boxes(g, box.lo[None], box.hi[None], known))


def _mm(a: np.ndarray, W: np.ndarray) -> np.ndarray:
    """a (..., k) @ W (k, m) or (k,) as one matrix product over all leading axes (not one per box)."""
    return (a.reshape(math.prod(a.shape[:-1]), a.shape[-1]) @ W).reshape(a.shape[:-1] + W.shape[1:])


def _upstream(g: Graph, target: str) -> list:
    """(name, op, args) of target and its ancestors in reverse topological order (cached on the graph,
    which is never changed after it is built)."""
    cache = g.__dict__.setdefault("_upstream", {})
    if target not in cache:
        anc = nx.ancestors(g.dag, target) | {target}
        cache[target] = [(n, g.op(n), g.args(n)) for n in reversed(g.order) if n in anc]
    return cache[target]


def _backward(g: Graph, target: str, rows: np.ndarray, lo: dict, hi: dict, parts: dict, relax: dict,
              coef: bool = False, summaries: dict | None = None, stop: str | None = None,
              magnitude: bool = False):
    """DeepPoly lower and upper bounds (N, R) of the flat elements `rows` (or of the rows of a 2-D array of
    coefficients) of `target` on N boxes, before rounding, from bounds lo/hi {tensor: (N, *shape)} and parts
    {input: (lo, hi)}; relax caches the ReLUs' compact relaxations.  With coef, also the linear bounds over
    the flat inputs (Al, bl, Au, bu): Al x + bl <= y <= Au x + bu on each box (Al, Au (N, R, n_inputs)).

    The lower bound of a . y is minus the upper bound of -a . y, so both are computed as upper bounds of
    one stacked array of 2R rows (-e; e): one product per op instead of two.

    summaries {block output: blocks.Summary}: the walk jumps each such block in one step (`blocks.jump`).
    stop: a tensor where the walk ends (a block's input): returns its stacked coefficients (n, 2R, |stop|)
    and the intercepts (N, 2R) gathered inside, not concretised (how a block's summary is made).
    magnitude: also sum the absolute values of every term (intercepts, and |a| max(|lo|, |hi|) at the
    inputs) and widen the bounds by ROUND_TERMS times that: a bound that is a small difference of large
    terms (two networks' difference) keeps a rounding margin relative to the terms, not to the result."""
    if magnitude and (summaries or stop is not None):
        raise ValueError("magnitude tracking is not available with block summaries")
    N, R = next(iter(parts.values()))[0].shape[0], rows.shape[0]
    shape = g.shape(target)
    if rows.ndim == 2:          # rows given as coefficient vectors (R, size) of the flat target
        e = np.asarray(rows, np.float64)
    else:
        e = np.zeros((R, math.prod(shape)))
        e[np.arange(R), rows] = 1.0
    A = {target: np.concatenate([-e, e]).reshape((1, 2 * R) + shape)}
    c = np.zeros((N, 2 * R))
    m = np.zeros((N, 2 * R)) if magnitude else None      # sum of |terms| (with magnitude)
    cols, at_input, at_stop = {}, {}, None

    owned = set()       # the entries of A that are arrays made here and referenced nowhere else

    def send(dest, a, fresh=False):
        # fresh: a was just made by this walk (a product, a step's output) and nothing else holds it
        if dest not in A:
            A[dest] = a
            if fresh:
                owned.add(dest)
        elif dest in owned and A[dest].shape == np.broadcast_shapes(A[dest].shape, a.shape):
            np.add(A[dest], a, out=A[dest])
        else:
            A[dest] = A[dest] + a
            owned.add(dest)

    def flat(a):
        return a.reshape(a.shape[:2] + (-1,))

    for name, op, args in _upstream(g, target):
        if name not in A:
            continue
        a = A.pop(name)
        if name == stop:
            at_stop = flat(a)
            continue
        if summaries is not None and name in summaries:
            sm = summaries[name]
            a, dc = jump(sm, flat(a), cols.pop(name, None))
            c = c + dc
            send(sm.block.start, a.reshape(a.shape[:2] + g.shape(sm.block.start)))
        elif op.kind == "input":
            at_input[name] = flat(a)
        elif op.kind == "const":
            v = np.broadcast_to(np.asarray(op.value, np.float64), op.shape).reshape(-1)
            c = c + _mm(flat(a), v)
            if magnitude:
                m = m + _mm(np.abs(flat(a)), np.abs(v))
        elif op.kind == "relu":
            z = args[0]
            if name not in relax:
                relax[name] = prepare(g, name, lo[z], hi[z])
            rx = relax[name]
            a, dc = relu_step(rx, flat(a))
            c = c + dc
            if magnitude:
                m = m + dc          # (max(a, 0) . tu with tu >= 0: already nonnegative)
            if rx.keep is not None:     # z is a Dense op read only here: it multiplies the kept columns
                cols[z] = rx.keep
                send(z, a, fresh=True)
            else:
                send(z, a.reshape(a.shape[:2] + g.shape(z)), fresh=True)
        elif op.kind == "relu_diff":
            if name not in relax:
                relax[name] = prepare_diff(op, [lo[x] for x in args], [hi[x] for x in args])
            a_dz, a_zg, dc, dm = diff_step(relax[name], flat(a), magnitude)
            c = c + dc
            if magnitude:
                m = m + dm
            send(args[0], a_dz.reshape(a_dz.shape[:2] + g.shape(args[0])), fresh=True)
            send(args[1], a_zg.reshape(a_zg.shape[:2] + g.shape(args[1])), fresh=True)
        elif isinstance(op, ops.Dense) and math.prod(op.shape[:-1]) == 1:
            # y = W x + b on the last axis (leading axes of size 1): coefficients a -> a W, intercept a . b
            keep = cols.pop(name, None)
            W = op.W if keep is None else op.W[keep]
            a = flat(a)
            if op.bias is not None:
                b = np.broadcast_to(op.bias, op.shape).reshape(-1)
                b = b if keep is None else b[keep]
                c = c + _mm(a, b)
                if magnitude:
                    m = m + _mm(np.abs(a), np.abs(b))
            t = _mm(a, W)
            send(args[0], t.reshape(t.shape[:2] + g.shape(args[0])), fresh=True)
        elif isinstance(op, ops.Scale) and op.bias is None and not np.any(op.s):
            continue        # y = 0 x: nothing flows back (a skeleton pair's unused branch, `ir.pair_skeleton`)
        else:
            # any other linear op: its adjoint on the (boxes x rows) flattened batch
            n = a.shape[0]
            fa = a.reshape((n * 2 * R,) + a.shape[2:])
            c = c + op.bias_dot(fa).reshape(n, 2 * R)
            if magnitude and op.bias is not None:
                m = m + replace(op, bias=np.abs(op.bias)).bias_dot(np.abs(fa)).reshape(n, 2 * R)
            for x, t in zip(args, op.transpose(fa)):
                send(x, t.reshape((n, 2 * R) + t.shape[1:]))
    if stop is not None:
        return (np.zeros((1, 2 * R, g.op(stop).size)) if at_stop is None else at_stop), c
    # at the inputs the box bounds the linear form from above: positive coefficients at hi, negative at lo
    const, forms = c, []
    for name in g.inputs:
        lo_x, hi_x = (p.reshape(N, -1) for p in parts[name])
        a = at_input.get(name, np.zeros((1, 2 * R, g.op(name).size)))
        forms.append(a)
        c = c + rowdot(np.maximum(a, 0), hi_x) + rowdot(np.minimum(a, 0), lo_x)
        if magnitude:
            m = m + rowdot(np.abs(a), np.maximum(np.abs(lo_x), np.abs(hi_x)))
    if magnitude:
        c, const = c + ROUND_TERMS * m, const + ROUND_TERMS * m
    if not coef:
        return -c[:, :R], c[:, R:]
    F = np.broadcast_to(np.concatenate(forms, axis=2), (N, 2 * R, g.n_inputs))
    return -c[:, :R], c[:, R:], (-F[:, :R], -const[:, :R], F[:, R:], const[:, R:])


def backsubstitute(g: Graph, target: str, rows: np.ndarray, bounds: GraphBounds, parts: dict,
                   relax: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """DeepPoly lower and upper bounds (R,) of the flat elements `rows` of tensor `target` on one box
    (before rounding); parts from `_box_parts`, relax a cache of the relaxations made from `bounds`."""
    lo = {k: np.asarray(v)[None] for k, v in bounds.lo.items()}
    hi = {k: np.asarray(v)[None] for k, v in bounds.hi.items()}
    P = {n: (np.asarray(a)[None], np.asarray(b)[None]) for n, (a, b) in parts.items()}
    cl, ch = _backward(g, target, np.asarray(rows), lo, hi, P, {} if relax is None else relax)
    return cl[0], ch[0]


def _chunk(g: Graph, N: int) -> int:
    widest = g.__dict__.get("_widest") or g.__dict__.setdefault("_widest", max(g.op(n).size for n in g.order))
    return max(1, int(ROW_BUDGET_BYTES // (8 * widest * 4 * N)))


def _rows(g: Graph, z: str, lo: np.ndarray, hi: np.ndarray, rows: str):
    """The flat positions of z to back-substitute and the (N, S) mask of the boxes each one is tightened on
    (None: all).  rows="unstable": on each box its unstable positions, as N one-box runs would;
    rows="open": the positions unstable on some box and the identity positions of a MaskedRelu reading z,
    on every box; rows="all" (and any output): all of them."""
    if rows == "all" or z in g.outputs:
        return np.arange(lo.shape[1]), None
    unstable = (lo < 0) & (hi > 0)
    if rows == "unstable":
        return np.flatnonzero(unstable.any(axis=0)), unstable
    todo = unstable.any(axis=0)
    for r in g.dag.successors(z):
        m = getattr(g.op(r), "relu_mask", None)
        if g.op(r).kind == "relu" and m is not None:
            todo |= ~np.broadcast_to(m, g.shape(z)).reshape(-1)
    return np.flatnonzero(todo), None


def deeppoly_boxes(g: Graph, lo: np.ndarray, hi: np.ndarray, known: GraphBounds | None = None,
                   targets: list | None = None, rows: str = "unstable", coef: bool = False,
                   all_nodes: bool = False, progress: bool = False, blocks=None, tie=None,
                   magnitude=False, relax: dict | None = None, keep_margins: bool = False) -> tuple[GraphBounds, dict]:
    """DeepPoly/CROWN bounds on each of the N boxes [lo[n], hi[n]] ((N, n_inputs) arrays) of every target
    tensor (default: every ReLU input, then the outputs), intersected with interval bounds (and `known`,
    broadcastable to (N, *shape)), and interval bounds of the tensors they need (of every tensor with
    all_nodes or default targets): {tensor: (N, *shape)}.

    One sweep in topological order: a node's interval bounds come from its arguments' final bounds, and a
    target is then tightened by back-substituting its `rows` (see `_rows`) to the input, so every later
    relaxation uses the tighter values.  With coef, also {target: (rows, Al, bl, Au, bu)}, the unrounded
    input-space linear bounds of its back-substituted rows (see `_backward`).

    blocks (a --blocks mode or a list of `blocks.Block`): when the sweep reaches a block's output, the
    block's summary is made (its relaxations inside are final by then), and every later back-substitution
    jumps the block with it; None / "none" leaves the engine exactly as without blocks.

    rows may also be a function (tensor, lo, hi) -> (positions, mask or None) like `_rows`; tie(tensor, L, H)
    is called when a tensor's bounds are final and may tighten them, and earlier ones, in place (bounds
    that relations between tensors imply, such as z_f = z_g + dz); magnitude (True, or the set of targets
    that need it): see `_backward`; relax: a dict to keep the ReLUs' relaxations in (for later walks);
    keep_margins: the result keeps every tensor's rounding margin (`GraphBounds.margins`, for later walks)."""
    t0 = time.perf_counter()
    N = lo.shape[0]
    parts = _parts(g, lo, hi)
    if targets is None:
        targets, all_nodes = [g.args(r)[0] for r in g.relus] + list(g.outputs), True
    need = set(g.order) if all_nodes else {n for t in targets for n, _, _ in _upstream(g, t)}
    todo_targets = set(targets)
    # plain interval bounds first: the sweep's intervals (from tighter arguments) are intersected with
    # them, so no bound comes out looser than the interval one by a rounding difference
    L, H = {}, {}
    M = rounding_margins(g, parts, need)
    for z in g.order:
        if z in need:
            _interval_node(g, z, parts, L, H, known, N, M)
    known, L, H, forms = GraphBounds(L, H), {}, {}, {}
    relax = {} if relax is None else relax
    ends = {b.end: b for b in (blocks if isinstance(blocks, list) else find_blocks(g, blocks))}
    summaries, t_blk = {}, 0.0
    t_int = time.perf_counter() - t0
    chunk = _chunk(g, N)
    # (no tqdm object unless asked: its first creation costs milliseconds, more than a small net's bounds)
    bar = tqdm(total=len(todo_targets), desc="DeepPoly", unit="layer", leave=False) if progress else None
    for z in g.order:
        if z not in need:
            continue
        t1 = time.perf_counter()
        _interval_node(g, z, parts, L, H, known, N, M)
        t_int += time.perf_counter() - t1
        if z in ends:
            t1 = time.perf_counter()
            summaries[z] = _summarize(g, ends[z], L, H, parts, relax, chunk)
            t_blk += time.perf_counter() - t1
        if z in todo_targets:
            if bar is not None:
                bar.update()
            mag = z in magnitude if isinstance(magnitude, (set, frozenset, dict)) else bool(magnitude)
            _tighten(g, z, L, H, parts, relax, rows, coef, summaries, mag, chunk, forms, M[z])
        if tie is not None:
            tie(z, L, H)
    if bar is not None:
        bar.close()
    seconds = {"interval": t_int, "deeppoly": time.perf_counter() - t0 - t_int - t_blk}
    if ends:
        seconds["summaries"] = t_blk
    return GraphBounds(L, H, seconds, summaries, M if keep_margins else {}), forms


def _tighten(g: Graph, z: str, L: dict, H: dict, parts: dict, relax: dict, rows, coef: bool, summaries: dict,
             magnitude: bool, chunk: int, forms: dict, Mz: np.ndarray):
    """One target of the sweep: back-substitute its rows to the input in chunks, widen by its rounding margin
    Mz (`rounding_margins`) and intersect (in L, H)."""
    args = g.args(z)
    if len(set(args)) == len(args) and all(g.op(a).kind == "input" for a in args):
        return                  # one op of distinct inputs (a box): its interval bounds are already exact
    N = L[z].shape[0]
    l, h = L[z].reshape(N, -1).copy(), H[z].reshape(N, -1).copy()
    todo, on = rows(z, l, h) if callable(rows) else _rows(g, z, l, h, rows)
    parts_out = []
    for s in range(0, todo.size, chunk):
        r = todo[s:s + chunk]
        res = _backward(g, z, r, L, H, parts, relax, coef, summaries=summaries or None, magnitude=magnitude)
        m = np.broadcast_to(Mz, L[z].shape).reshape(N, -1)[:, r]
        cl, ch = widen(*outward(res[0], res[1]), m)
        if on is not None:      # off its boxes a row keeps its interval bounds
            cl, ch = np.where(on[:, r], cl, -np.inf), np.where(on[:, r], ch, np.inf)
        l[:, r], h[:, r] = np.maximum(l[:, r], cl), np.minimum(h[:, r], ch)
        if coef:                # the lines hold up to the same rounding: their intercepts get the margin too
            Al, bl, Au, bu = res[2]
            parts_out.append((Al, bl - m, Au, bu + m))
    L[z], H[z] = l.reshape(L[z].shape), h.reshape(H[z].shape)
    if coef and parts_out:
        forms[z] = (todo,) + tuple(np.concatenate([p[j] for p in parts_out], axis=1) for j in range(4))


def _summarize(g: Graph, block, lo: dict, hi: dict, parts: dict, relax: dict, chunk: int):
    """The summary of a block (`blocks.Summary`): its output's reachable rows back-substituted inside the
    block to its input, in chunks of rows."""
    t = block.end
    rows = needed_rows(g, t, lo, hi, _relaxation)
    s = block.start
    cols = np.arange(g.op(s).size) if g.op(s).kind != "relu" else needed_rows(g, s, lo, hi, _relaxation)
    chunks = (_backward(g, t, rows[i:i + chunk], lo, hi, parts, relax, stop=s) for i in range(0, rows.size, chunk))
    return make_summary(block, rows, cols, math.prod(g.shape(t)), g.op(s).size, chunks)


def deeppoly_graph(g: Graph, box: Box, known: GraphBounds | None = None, outputs: bool = True,
                   progress: bool = False, blocks=None) -> GraphBounds:
    """DeepPoly/CROWN bounds of every ReLU input (and of the outputs) on one box, intersected with interval
    bounds: each ReLU input's unstable positions are back-substituted to the input in topological order."""
    targets = [g.args(r)[0] for r in g.relus] + (list(g.outputs) if outputs else [])
    b, _ = deeppoly_boxes(g, box.lo[None], box.hi[None], known, targets, all_nodes=True, progress=progress,
                          blocks=blocks)
    return _squeeze(b)


def retightened(g, box, bounds: GraphBounds, z: str, lo: np.ndarray, hi: np.ndarray) -> GraphBounds:
    """DeepPoly again with tensor z's bounds replaced by the tighter flat lo / hi (a solver stage's proofs),
    so that the later layers start from them; `bounds` itself when nothing is tighter."""
    old_lo, old_hi = bounds.lo[z].reshape(-1), bounds.hi[z].reshape(-1)
    if not ((lo > old_lo).any() or (hi < old_hi).any()):
        return bounds
    known = GraphBounds({**bounds.lo, z: lo.reshape(bounds.lo[z].shape)},
                        {**bounds.hi, z: hi.reshape(bounds.hi[z].shape)})
    return deeppoly_graph(g, box, known=known)
