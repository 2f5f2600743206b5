"""Block summaries (BBPoly): linear bounds of a block's outputs in terms of its input, computed once.

A block is a part of the graph between two tensors s (its input) and t (its output) that the rest of the
graph sees only through s and t: every node inside reads only s, constants or nodes inside, and every
node inside but t is read only inside.  Two kinds are cut: a residual block (s the tensor where the
branches split, t the Add where they join), and K consecutive ReLU layers of a chain (s a ReLU's output
or the network input, t the input of the K-th ReLU after it).

The summary of a block on each box is DeepPoly's back-substitution of t's rows inside the block only,
stopped at s, with the relaxations of the ReLUs inside made from their already known bounds:

    L s + l  <=  t  <=  U s + u        (L, U: (boxes, |t|, |s|); l, u: (boxes, |t|))

for every s the region can produce.  Back-substitution of a later neuron then jumps the block in one
step: with a the coefficients of t in an upper bound of a . t (the engine bounds everything from above),

    a . t  <=  a+ . (U s + u) + a- . (L s + l)  =  (a+ U + a- L) s + (a+ . u + a- . l)

(a+ = max(a, 0), a- = min(a, 0)): the upper line where the coefficient is positive, the lower line where
it is negative.  This is sound because each row's pair of lines holds for every reachable s, and it
costs one pair of products per block instead of one product per op inside it; so a deep network costs
O(L * blocks) products instead of O(L^2).  The price: the lines are fixed per row of t, while a full
back-substitution would choose each inner ReLU's line by the sign of the composed coefficient.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import networkx as nx
import numpy as np

from ..ir.graph import Graph
from .relax import rowdot

AUTO_MIN_RELU_LAYERS = 16       # chains shallower than this get no blocks under `auto` (they do not pay)
AUTO_MIN_RESIDUAL = 4           # graphs with fewer residual blocks get none under `auto` (ResNet-2B's 2 do not pay)


def auto_k(layers: int) -> int:
    """ReLU layers per block on a deep chain under `auto`: about sqrt(2 L), which balances the steps inside
    a block against the jumps over the blocks behind (measured on random deep chains: 24 and 48 layers
    2-3x faster than full DeepPoly with the same stable count; smaller K lost precision)."""
    return math.ceil(math.sqrt(2 * layers))


@dataclass(frozen=True)
class Block:
    start: str            # s: the tensor the block reads
    end: str              # t: the tensor it computes
    inner: frozenset      # the nodes after s up to and including t


@dataclass
class Summary:
    """The linear bounds of the reachable rows of a block's output over its flat input on N boxes (n = 1 or
    N): L[:, i] . s[cols] + l[:, i] <= t[rows[i]] <= U[:, i] . s[cols] + u[:, i].  Rows not listed only ever
    meet a zero coefficient (they feed ReLUs dead on every box); columns not listed are inputs that are 0
    on the region (dead ReLU outputs), so they are left out of the products."""

    block: Block
    L: np.ndarray          # (n, |rows|, |cols|)
    l: np.ndarray          # (N, |rows|)
    U: np.ndarray
    u: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    size_t: int
    size_s: int


def _region(g: Graph, s: str, t: str) -> frozenset | None:
    """The nodes strictly after s up to and including t, if they form a block (see the module doc)."""
    inner = (nx.descendants(g.dag, s) & nx.ancestors(g.dag, t)) | {t}
    if t not in nx.descendants(g.dag, s) or set(g.outputs) & (inner - {t}):
        return None
    for n in inner:
        if g.op(n).kind == "input":
            return None
        if any(a != s and a not in inner and g.op(a).kind != "const" for a in g.args(n)):
            return None
        if n != t and any(c not in inner for c in g.dag.successors(n)):
            return None
    return frozenset(inner)


def residual_blocks(g: Graph) -> list[Block]:
    """One block per join (a node reading several computed tensors, e.g. a residual Add), from the latest
    tensor where its branches split; blocks overlapping an earlier one are left out."""
    out, taken = [], set()
    pos = {n: i for i, n in enumerate(g.order)}
    for t in g.order:
        if len({a for a in g.args(t) if g.op(a).kind != "const"}) < 2:
            continue
        for s in sorted(nx.ancestors(g.dag, t), key=pos.get, reverse=True):
            if g.dag.out_degree(s) < 2:
                continue
            inner = _region(g, s, t)
            if inner is not None and not (inner & taken) and s not in taken:
                out.append(Block(s, t, inner))
                taken |= inner
                break
    return out


def chain_blocks(g: Graph, k: int) -> list[Block]:
    """Blocks of k ReLU layers each, end to end: from the input (or the output of ReLU layer j k) to the
    output of ReLU layer (j + 1) k; a cut where the graph is not a chain there is skipped."""
    relus = g.relus
    cuts = ([g.inputs[0]] if len(g.inputs) == 1 else []) + relus[k - 1::k]
    out = []
    for s, t in zip(cuts, cuts[1:]):
        inner = _region(g, s, t)
        if inner is not None:
            out.append(Block(s, t, inner))
    return out


def find_blocks(g: Graph, mode) -> list[Block]:
    """The blocks for --blocks mode: "none" (or None, 0), K (ReLU layers per block, an int or its string),
    "residual" (every residual block),
    or "auto": the residual blocks of a graph that has at least AUTO_MIN_RESIDUAL of them (none if it has
    fewer), else K = `auto_k` on chains of at least AUTO_MIN_RELU_LAYERS ReLU layers, else none."""
    if mode in (None, "none", 0, "0"):
        return []
    if mode == "residual":
        return residual_blocks(g)
    if mode == "auto":
        res = residual_blocks(g)
        if res:
            return res if len(res) >= AUTO_MIN_RESIDUAL else []
        n = len(g.relus)
        return chain_blocks(g, auto_k(n)) if n >= AUTO_MIN_RELU_LAYERS else []
    k = int(mode)
    if k < 1:
        raise ValueError(f"--blocks: expected auto, none or a positive number of ReLU layers, got {mode!r}")
    return chain_blocks(g, k)


def needed_rows(g: Graph, t: str, lo: dict, hi: dict, relax_of) -> np.ndarray:
    """Flat positions of t that a later back-substitution can reach with a nonzero coefficient: for a ReLU's
    output, those where its lines are not both 0 on some box; for a tensor read only by ReLUs, those where
    theirs are not; else all of them."""
    relus = [t] if g.op(t).kind == "relu" else list(g.dag.successors(t))
    if t in g.outputs or not relus or any(g.op(r).kind != "relu" for r in relus):
        return np.arange(math.prod(g.shape(t)))
    alive = np.zeros(math.prod(g.shape(t)), bool)
    for r in relus:
        z = g.args(r)[0]
        sl, su, _ = relax_of(lo[z], hi[z], g.op(r))
        N = sl.shape[0]
        alive |= ((sl.reshape(N, -1) != 0) | (su.reshape(N, -1) != 0)).any(axis=0)
    return np.flatnonzero(alive)


def make_summary(block: Block, rows: np.ndarray, cols: np.ndarray, size_t: int, size_s: int, chunks) -> Summary:
    """The summary from the stacked back-substitutions to s of consecutive chunks of its rows: F (n, 2r, |s|)
    and c (N, 2r), the first r rows upper bounds of -t[chunk] (minus the lower lines), the last r upper
    bounds of t[chunk]."""
    Ls, ls, Us, us = [], [], [], []
    for F, c in chunks:
        r = c.shape[1] // 2
        Ls.append(-F[:, :r, cols]), ls.append(-c[:, :r]), Us.append(F[:, r:, cols]), us.append(c[:, r:])
    if not Ls:          # no reachable row: nothing ever crosses the block
        Ls, ls, Us, us = [np.zeros((1, 0, cols.size))], [np.zeros((1, 0))], [np.zeros((1, 0, cols.size))], [np.zeros((1, 0))]
    cat = lambda xs: np.concatenate(xs, axis=1)
    return Summary(block, cat(Ls), cat(ls), cat(Us), cat(us), rows, cols, size_t, size_s)


def jump(sm: Summary, a: np.ndarray, keep: np.ndarray | None = None):
    """Through a block for upper bounds: coefficients a (n, 2R, |t| or |keep|) of t -> coefficients of s
    (n', 2R, |s|) and intercepts (N, 2R): a+ U + a- L and a+ . u + a- . l (see the module doc)."""
    if keep is not None:            # only the kept columns of t arrive (the others feed dead ReLUs)
        full = np.zeros(a.shape[:2] + (sm.size_t,))
        full[..., keep] = a
        a = full
    a = a[..., sm.rows]
    pos, neg = np.maximum(a, 0), np.minimum(a, 0)
    if pos.shape[0] == 1 and sm.U.shape[0] == 1:    # one matrix product over all rows
        t = (pos[0] @ sm.U[0] + neg[0] @ sm.L[0])[None]
    else:
        t = np.matmul(pos, sm.U) + np.matmul(neg, sm.L)
    out = np.zeros(t.shape[:2] + (sm.size_s,))
    out[..., sm.cols] = t
    return out, rowdot(pos, sm.u) + rowdot(neg, sm.l)
