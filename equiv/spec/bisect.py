"""One bisection driver over boxes, shared by stability splitting, `check`'s input splitting and slicing.

A queue of nodes (a box and the caller's payload).  Each round pops a batch.  A node not yet decided
goes to `decide`; a node already decided open is first bisected (along the dimension `choose_dims`
picks for it) and its two halves are decided.  `decide` returns per box None (decided: the caller
has recorded it as a leaf) or `Open`: split it now along `Open.dim`, or, without a dim, queue the
box itself and choose its dimension only when it is popped (worth it when choosing is costly).

Both halves share the one float midpoint, so the decided leaves and the boxes left in the queue
always tile the root boxes.  Budget: a batch of boxes to decide is cut to the boxes left in
`max_boxes`; the halves of a popped batch are decided whole (the budget may be passed by them).
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections import deque
from dataclasses import dataclass, field
from collections.abc import Callable
from typing import Any

import numpy as np

ORDERS = ("fifo", "lifo", "best")


@dataclass(eq=False)
class Node:
    """A box of the bisection; `path` (0 / 1 per bisection from the root) orders leaves left to right."""

    lo: np.ndarray
    hi: np.ndarray
    data: Any = None
    depth: int = 0
    path: tuple = ()
    decided: bool = False          # decided open: bisect it when popped


@dataclass
class Open:
    """`decide`'s answer for an undecided box."""

    data: Any = None               # the payload of the halves (or of the box, queued whole)
    dim: int | None = None         # bisect now along dim; None: queue the box and choose when popped
    key: Any = 0.0                 # order "best": smallest first, ties in push order


@dataclass
class BisectResult:
    pending: list = field(default_factory=list)   # nodes left in the queue (queue order)
    boxes: int = 0                                 # boxes decided
    stopped: str | None = None                     # boxes | deadline | stop | None (queue empty)


def halves(node: Node, dim: int) -> tuple[Node, Node]:
    """Bisect at the midpoint of `dim`; both halves hold that one float, so they tile the box."""
    mid = (node.lo[dim] + node.hi[dim]) / 2
    hi1, lo2 = node.hi.copy(), node.lo.copy()
    hi1[dim] = lo2[dim] = mid
    return (Node(node.lo, hi1, depth=node.depth + 1, path=node.path + (0,)),
            Node(lo2, node.hi, depth=node.depth + 1, path=node.path + (1,)))


class _Queue:
    """First in first out, last in first out, or smallest key first (a heap, ties in push order)."""

    def __init__(self, order: str):
        if order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
        self.order, self.items, self.seq = order, ([] if order == "best" else deque()), itertools.count()

    def __len__(self):
        return len(self.items)

    def push(self, node: Node, key=0.0):
        if self.order == "best":
            heapq.heappush(self.items, (key, next(self.seq), node))
        else:
            self.items.append(node)

    def pop(self) -> Node:
        if self.order == "best":
            return heapq.heappop(self.items)[2]
        return self.items.popleft() if self.order == "fifo" else self.items.pop()

    def peek(self) -> Node:
        return self.items[0][2] if self.order == "best" else self.items[0 if self.order == "fifo" else -1]

    def nodes(self) -> list:
        return [t[2] for t in self.items] if self.order == "best" else list(self.items)


class Bisection:
    """The driver: `decide(nodes) -> [None | Open]` on a batch of boxes; `choose_dims(nodes) -> [dim | None]`
    for boxes queued whole (None: the box cannot be split and is dropped); `stop()` ends the run early;
    `progress(n)` is told of every batch of n decided boxes; `deadline` is a `time.perf_counter` time."""

    def __init__(self, decide: Callable, *, choose_dims: Callable | None = None, order: str = "fifo",
                 batch: int = 1, max_boxes: float = np.inf, deadline: float | None = None,
                 stop: Callable | None = None, progress: Callable | None = None):
        self.decide, self.choose_dims, self.batch, self.max_boxes = decide, choose_dims, max(1, batch), max_boxes
        self.deadline, self.stop, self.progress = deadline, stop, progress
        self.queue = _Queue(order)
        self.boxes = 0

    @property
    def queued(self) -> int:
        return len(self.queue)

    def push(self, node: Node, key=0.0):
        self.queue.push(node, key)

    def run(self, roots: list[Node] = (), keys=None) -> BisectResult:
        for i, node in enumerate(roots):
            self.push(node, 0.0 if keys is None else keys[i])
        stopped = None
        while self.queue:
            stopped = self._limit()
            if stopped:
                break
            fresh, opened = self._pop()
            if opened:
                fresh += self._bisect(opened)
            if fresh:
                self._decide(fresh)
        return BisectResult(self.queue.nodes(), self.boxes, stopped)

    def _limit(self) -> str | None:
        if self.stop is not None and self.stop():
            return "stop"
        if self.boxes >= self.max_boxes:
            return "boxes"
        if self.deadline is not None and time.perf_counter() >= self.deadline:
            return "deadline"
        return None

    def _pop(self) -> tuple[list, list]:
        """A batch: boxes to decide (cut to the budget left) and boxes to bisect."""
        fresh, opened = [], []
        while self.queue and len(fresh) + len(opened) < self.batch:
            if not self.queue.peek().decided and len(fresh) >= self.max_boxes - self.boxes:
                break
            node = self.queue.pop()
            (opened if node.decided else fresh).append(node)
        return fresh, opened

    def _bisect(self, nodes: list) -> list:
        """All first halves, then all second halves (the order the batch is decided in)."""
        dims = self.choose_dims(nodes)
        pairs = [(n, halves(n, int(d))) for n, d in zip(nodes, dims) if d is not None]
        for n, (a, b) in pairs:
            a.data = b.data = n.data
        return [p[1][0] for p in pairs] + [p[1][1] for p in pairs]

    def _decide(self, nodes: list):
        outcomes = self.decide(nodes)
        self.boxes += len(nodes)
        if self.progress is not None:
            self.progress(len(nodes))
        first, second = [], []
        for node, out in zip(nodes, outcomes):
            if out is None:
                continue
            if out.dim is None:
                self.push(Node(node.lo, node.hi, out.data, node.depth, node.path, decided=True), out.key)
                continue
            a, b = halves(node, int(out.dim))
            a.data = b.data = out.data
            first.append((a, out.key))
            second.append((b, out.key))
        for node, key in first + second:
            self.push(node, key)
