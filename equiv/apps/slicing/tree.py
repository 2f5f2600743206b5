"""Slicing's bisection tree: options, pieces, split dimensions, and the greedy growth of the tree."""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from ...bounds import deeppoly_boxes
from ...errors import InputFileError
from ...ir.graph import Graph
from ...ir.network import Network
from ...spec.bisect import Bisection, Node, Open
from ...spec.region import Box
from ..simplify import prove_and_reduce
from ...prove.stability import StabilityOptions, StabilityResult
from ..graph_simplify import GraphPhases

STRATEGIES = ("unstable", "width", "gradient")   # gradient: graphs only


@dataclass
class SliceOptions:
    """How far to split and how hard to validate."""

    max_slices: int = 64
    target_relus: int = 0            # stop splitting a leaf at <= this many ReLUs (0: spend the budget)
    strategy: str = "unstable"       # unstable | width (chains); gradient | width (graphs)
    validation_samples: int = 10000  # random points per slice (plus its corners, centre and witnesses)
    dispatch_samples: int = 100000   # random points of the region for the dispatcher (plus faces and corners)
    face_samples: int = 16           # points per face of every slice box, for the dispatcher
    tolerance: float = 1e-4
    progress: bool = False
    epsilon: float | None = None     # slices simplified up to this proved tolerance (see apps/tolerance)

    def __post_init__(self):
        if self.epsilon is not None:
            self.tolerance = max(self.tolerance, self.epsilon)
        if self.strategy not in STRATEGIES:
            raise InputFileError(f"--strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        if self.max_slices < 1 or self.target_relus < 0:
            raise InputFileError(f"need --max-slices >= 1 and --target-relus >= 0, got {self.max_slices} "
                                 f"and {self.target_relus}")


@dataclass(eq=False)
class Piece:
    """A node of the bisection tree: its box and, once proved, its proofs (chains: StabilityResult, graphs:
    GraphPhases) and its smaller network (a Network or a Graph)."""

    box: Box
    depth: int = 0
    dim: int | None = None            # split dimension (internal nodes)
    mid: float | None = None          # split point: children[0].hi[dim] == children[1].lo[dim] == mid
    children: list = field(default_factory=list)
    stability: StabilityResult | GraphPhases | None = None
    network: Network | Graph | None = None
    seconds: float = 0.0
    final: bool = False               # no dimension left to bisect
    slice_id: int | None = None

    @property
    def relus(self) -> int:
        return self.network.n_relus

    def split(self, dim: int) -> list["Piece"]:
        """Bisect at the midpoint of `dim`; the halves share that one float, so they tile this box."""
        a, b = self.box.bisect(dim)
        self.dim, self.mid = int(dim), float(a.hi[dim])
        self.children = [Piece(a, self.depth + 1), Piece(b, self.depth + 1)]
        return self.children

    def leaves(self) -> list["Piece"]:
        """Leaves in depth-first order (the slice order)."""
        return [self] if not self.children else [p for c in self.children for p in c.leaves()]

    def to_json(self) -> dict:
        node = {"lo": self.box.lo.tolist(), "hi": self.box.hi.tolist(), "level": self.depth}
        if self.network is not None:
            node["relus"] = self.relus
        if self.children:
            return {**node, "split_dim": self.dim, "mid": self.mid, "children": [c.to_json() for c in self.children]}
        return {**node, "slice": self.slice_id}


def splittable_dims(box: Box) -> np.ndarray:
    """Dimensions whose midpoint lies strictly inside (false only for empty or 1-ulp-wide intervals)."""
    mid = (box.lo + box.hi) / 2
    return np.flatnonzero((box.lo < mid) & (mid < box.hi))


def widest_dim(box: Box, region: Box, dims: np.ndarray) -> int:
    """The dimension of `dims` widest relative to the region's width in it."""
    rel = (box.hi - box.lo)[dims] / (region.hi - region.lo)[dims]
    return int(dims[np.argmax(rel)])


def fewest_unstable_dim(net: Network, box: Box, region: Box, bounds, dims: np.ndarray) -> int:
    """The dimension whose bisection leaves the fewest unstable ReLUs in its two halves, summed.

    All 2 x len(dims) candidate halves are bounded in one batched DeepPoly pass; `bounds` (proved on
    `box`, hence sound on every half) are intersected in.  Ties go to the relatively widest dimension.
    """
    lo, hi = [], []
    for d in dims:
        for half in box.bisect(d):
            lo.append(half.lo)
            hi.append(half.hi)
    depth = len(net.masks)
    los, his, _ = deeppoly_boxes(net, np.array(lo), np.array(hi), bounds.lo[:depth], bounds.hi[:depth], depth=depth)
    unstable = sum(((l < 0) & (h > 0) & m).sum(axis=1) for l, h, m in zip(los, his, net.masks))
    per_dim = unstable.reshape(len(dims), 2).sum(axis=1)
    rel = (box.hi - box.lo)[dims] / (region.hi - region.lo)[dims]
    return int(dims[np.lexsort((-rel, per_dim))[0]])


def choose_dim(net: Network, piece: Piece, region: Box, strategy: str) -> int | None:
    """The dimension to bisect `piece` along, or None when no dimension can be bisected."""
    dims = splittable_dims(piece.box)
    if not dims.size:
        return None
    if strategy == "width":
        return widest_dim(piece.box, region, dims)
    return fewest_unstable_dim(net, piece.box, region, piece.stability.bounds, dims)


def prove_piece(net: Network, piece: Piece, options: StabilityOptions, parent: Piece | None = None) -> None:
    """Run the core pipeline on the piece's box, reusing the parent's bounds and witnesses (sound: the box
    lies inside the parent's)."""
    t0 = time.perf_counter()
    known = parent.stability.bounds if parent is not None else None
    seen = parent.stability.witnesses if parent is not None else None
    piece.stability, piece.network = prove_and_reduce(net, piece.box, options, known=known, seen_points=seen)
    piece.seconds = time.perf_counter() - t0


def prove_box(net: Network, box: Box, options: StabilityOptions, known, seen) -> tuple:
    """`prove_piece` as a task (work as data): (stability, smaller network, seconds) of the box, given the
    parent's bounds and witnesses; a pure function of its arguments, run on any process."""
    t0 = time.perf_counter()
    stab, small = prove_and_reduce(net, box, options, known=known, seen_points=seen)
    return stab, small, time.perf_counter() - t0


def build_tree(net: Network, region: Box, options: StabilityOptions, sopt: SliceOptions, executor=None) -> Piece:
    """Greedy bisection: split the leaf with the most ReLUs until every leaf meets the target or the
    slice budget is spent.  Every node is proved on its own box.

    executor (`distributed`): the two halves of a split are proved at once, as tasks (the network is
    scattered once); each proof depends only on its box and its parent's proofs, so the tree and every
    slice are the same as without it."""
    options = dataclasses.replace(options, progress=False)   # one progress bar: the slices
    batch = None
    if executor is not None:
        handle = executor.scatter(net)

        def batch(pairs):
            futures = [executor.submit(prove_box, handle, piece.box, options,
                                       None if parent is None else parent.stability.bounds,
                                       None if parent is None else parent.stability.witnesses)
                       for piece, parent in pairs]
            for (piece, parent), f in zip(pairs, futures):
                try:
                    piece.stability, piece.network, piece.seconds = f.result()
                except Exception as exc:
                    # a worker fault (killed, its data lost): the same pure task, run here instead
                    print(f"equiv: note: proving a slice box failed on the cluster ({type(exc).__name__}); "
                          "proving it in this process", file=sys.stderr)
                    piece.stability, piece.network, piece.seconds = prove_box(
                        net, piece.box, options, None if parent is None else parent.stability.bounds,
                        None if parent is None else parent.stability.witnesses)
    return grow_tree(region, sopt, lambda piece, parent: prove_piece(net, piece, options, parent=parent),
                     lambda piece: choose_dim(net, piece, region, sopt.strategy), prove_batch=batch)


def grow_tree(region: Box, sopt: SliceOptions, prove, choose, prove_batch=None) -> Piece:
    """The greedy bisection tree on any model: `prove(piece, parent)` sets the piece's network (and proofs),
    `choose(piece)` its split dimension (None: it cannot be split); `prove_batch([(piece, parent), ...])`,
    when given, does the same for the boxes of one round at once."""
    root = Piece(region)
    bar = _progress(sopt)

    def decide(nodes):
        out = []
        pairs = [((n.data.children[n.path[-1]] if n.data is not None else root), n.data) for n in nodes]
        if prove_batch is not None:
            prove_batch(pairs)
        for node, (piece, parent) in zip(nodes, pairs):
            if prove_batch is None:
                prove(piece, parent)
            # the leaf with the most ReLUs first; ties: the shallower, then the leftmost
            out.append(Open(piece, key=(-piece.relus, piece.depth, node.path)) if piece.relus > sopt.target_relus
                       else None)
        if nodes[0].data is not None:
            bar.update(1)
        bar.set_postfix(max_relus=max(p.relus for p in root.leaves()))
        return out

    def choose_dims(nodes):
        dims = []
        for node in nodes:
            piece = node.data
            dims.append(choose(piece))
            if dims[-1] is None:
                piece.final = True
            else:
                piece.split(dims[-1])
        return dims

    # leaves = 1 + splits < max_slices  <=>  boxes proved = 1 + 2 splits < 2 max_slices - 1
    Bisection(decide, choose_dims=choose_dims, order="best", max_boxes=2 * sopt.max_slices - 1).run(
        [Node(region.lo, region.hi)])
    bar.close()
    return root


def _progress(sopt: SliceOptions):
    from tqdm import tqdm
    return tqdm(total=sopt.max_slices, initial=1, desc="slicing", unit="slice", file=sys.stderr,
                disable=not sopt.progress, leave=False)
