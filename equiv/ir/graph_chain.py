"""A graph as a dense ReLU chain, for the chain's branch and bound (`prove.relu_bab`): layer k computes the
k-th ReLU node's input and carries every earlier tensor a later ReLU still reads (a residual branch, say).

Between ReLU nodes a graph is affine, so each ReLU input z_k is A_k s + c_k over the *state* s: the
concatenated flat tensors (the inputs, earlier ReLU outputs) that z_k and later ReLU inputs read.  Chain
layer k maps state k-1 to state k = [relu(z_k), the tensors carried on], the carried ones as linear
positions (mask False, identity rows: exact).  A, c come from the graph's own forward pass, run on the
zero state (c) and on unit states (the columns), so every op the graph evaluates lowers without a rule.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from .graph import Graph

MAX_STATE = 8192          # widest state lowered (dense matrices: a wider graph is left to the MILPs)
MAX_ENTRIES = 40_000_000  # dense matrix entries of all layers at most (ResNet-2B: 20 M)
SPARSE_DENSITY = 0.05     # matrices with fewer non-zeros than this share are kept sparse (convolutions)


class NotAChain(ValueError):
    """The graph has no dense chain form of a workable size."""


@dataclass
class GraphChain:
    """layers[k] = (W, b) and masks[k] of chain layer k; states[k] = [(tensor, size)] after layer k
    (states[-1]: before the first layer, the graph inputs); rows[k] = (A, c) of ReLU k's input over the
    state before its layer (= the first rows of layer k, but for a masked ReLU's zero positions: kept[k]).
    W and A are scipy sparse where that is smaller (`SPARSE_DENSITY`), else dense arrays."""

    relus: list
    layers: list
    masks: list
    states: dict
    rows: list
    kept: list

    def hidden_bounds(self, g: Graph, box, lo: dict, hi: dict, k: int) -> tuple[list, list]:
        """Sound bounds of the positions of chain layers 0..k-1 on the box: ReLU inputs from the graph's
        bounds lo / hi (per tensor), carried tensors from those of the ReLU (or input) they are."""
        out_lo, out_hi = [], []
        for j in range(k):
            z = g.args(self.relus[j])[0]          # (a masked ReLU's zero positions compute exactly 0)
            parts_lo = [np.where(self.kept[j], lo[z].reshape(-1), 0.0)]
            parts_hi = [np.where(self.kept[j], hi[z].reshape(-1), 0.0)]
            for name, _ in self.states[j][1:]:
                a, b = tensor_bounds(g, box, lo, hi, name)
                parts_lo.append(a)
                parts_hi.append(b)
            out_lo.append(np.concatenate(parts_lo))
            out_hi.append(np.concatenate(parts_hi))
        return out_lo, out_hi


def tensor_bounds(g: Graph, box, lo: dict, hi: dict, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Bounds of a state tensor: the box for an input, the ReLU of its input's bounds for a ReLU output."""
    op = g.op(name)
    if op.kind == "input":
        return (g.split_input(box.lo[None])[name].reshape(-1), g.split_input(box.hi[None])[name].reshape(-1))
    z = g.args(name)[0]         # (a ReLU, masked or not, is monotone)
    return op.forward(lo[z]).reshape(-1), op.forward(hi[z]).reshape(-1)


def compact(M: np.ndarray):
    """M as a sparse matrix if it is mostly zeros (a convolution's), else as it is."""
    return sp.csr_array(M) if np.count_nonzero(M) < SPARSE_DENSITY * M.size else M


def affine_in(g: Graph, target: str, state: list, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(A, c) with flat(target) = A s + c for the state s (its tensors given, everything between computed);
    only the given rows of A (and c) if rows is not None."""
    names = [n for n, _ in state]
    n_state = sum(size for _, size in state)

    def run(S):          # S: (B, n_state) -> target (B, size)
        vals, k = {}, 0
        for name, size in state:
            vals[name] = S[:, k:k + size].reshape((S.shape[0],) + g.shape(name))
            k += size
        for name in g.order:
            if name in vals:
                continue
            op = g.op(name)
            if op.kind == "const":
                vals[name] = np.broadcast_to(op.value, (S.shape[0],) + tuple(op.shape))
            elif op.kind == "linear" and all(a in vals for a in g.args(name)):
                vals[name] = op.forward(*[vals[a] for a in g.args(name)])
            if name == target:
                break
        if target not in vals:
            raise NotAChain(f"{target} is not affine in {names}")
        return vals[target].reshape(S.shape[0], -1)

    c = run(np.zeros((1, n_state)))[0]
    keep = np.arange(c.size) if rows is None else np.asarray(rows)
    A = np.empty((keep.size, n_state))
    for k0 in range(0, n_state, 1024):           # unit states in chunks (memory)
        E = np.eye(n_state)[k0:k0 + 1024]
        A[:, k0:k0 + E.shape[0]] = (run(E)[:, keep] - c[keep]).T
    return A, c[keep]


def lower_to_chain(g: Graph, upto: int | None = None) -> GraphChain:
    """The chain form of g up to ReLU node `upto` (default the last): chain layers 0..upto-1 and the rows of
    ReLU inputs 0..upto.  NotAChain if a state would be wider than MAX_STATE, the matrices would hold more
    than MAX_ENTRIES, or a ReLU input is not affine in the tensors before it."""
    relus = g.relus[:None if upto is None else upto + 1]
    size = {n: int(np.prod(g.shape(n))) for n in g.order}
    reads = {}             # ReLU index -> the state tensors its input reads
    anchors = set(g.inputs) | set(relus)
    for k, r in enumerate(relus):
        seen, stack, found = set(), [g.args(r)[0]], set()
        while stack:
            n = stack.pop()
            if n in seen:
                continue
            seen.add(n)
            if n in anchors:
                found.add(n)
            else:
                stack.extend(g.args(n))
        reads[k] = found
    state = [(n, size[n]) for n in g.inputs]
    states, layers, masks, rows, kept = {-1: state}, [], [], [], []
    entries = 0
    for k, r in enumerate(relus):
        entries += size[r] * sum(s for _, s in state)
        if sum(s for _, s in state) > MAX_STATE or entries > MAX_ENTRIES:
            raise NotAChain(f"ReLU {r}: a chain form of {entries} matrix entries (state of "
                            f"{sum(s for _, s in state)} values) is too large")
        A, c = affine_in(g, g.args(r)[0], state)
        rows.append((compact(A), c))
        if k == len(relus) - 1:
            break                 # (the last ReLU's rows only: no layer after it is needed)
        later = set().union(*[reads[j] for j in range(k + 1, len(relus))])
        carried = [(n, s) for n, s in state if n in later]
        op = g.op(r)
        relu_mask = np.broadcast_to(getattr(op, "relu_mask", True), op.shape).reshape(-1)
        keep = relu_mask | np.broadcast_to(getattr(op, "linear_mask", False), op.shape).reshape(-1)
        kept.append(keep)
        W, b = [A * keep[:, None]], [c * keep]        # a masked ReLU's zero positions: rows of 0
        offset = np.cumsum([0] + [s for _, s in state])
        where = {n: offset[i] for i, (n, _) in enumerate(state)}
        for n, s in carried:
            rows_n = np.zeros((s, A.shape[1]))
            rows_n[np.arange(s), where[n] + np.arange(s)] = 1.0
            W.append(rows_n)
            b.append(np.zeros(s))
        layers.append((compact(np.vstack(W)), np.concatenate(b)))
        entries += sum(s for _, s in carried) * A.shape[1]
        masks.append(np.concatenate([relu_mask] + [np.zeros(s, bool) for _, s in carried]))
        state = [(r, size[r])] + carried
        states[k] = state
    return GraphChain(relus, layers, masks, states, rows, kept)
