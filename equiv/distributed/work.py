"""Work as data: a neuron's MILP decisions as a picklable query, its outcome as a picklable answer.

A `LayerSpec` holds what every query of one hidden layer shares (the network, the input box and the
bounds at the start of the layer's MILP pass): it is built once per layer and scattered to the workers
once.  A `NeuronQuery` names one neuron and the limits; `run_neuron` runs on a worker, builds the
window encodings there (cached per worker thread: solver objects never cross a process boundary) and
returns a `NeuronAnswer`.  The decision logic is the one of `window_milp.milp_layer`: the likelier
phase first, windows widened while they find only non-real points, a full-window point run in the real
network.  Only infeasibility (a solver's proof) settles a side; a timeout or error proves nothing.
"""

from __future__ import annotations

import hashlib
import sys
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from ..bounds import Bounds
from ..ir.network import Network
from ..spec.region import Box


def _digest(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str(a.dtype).encode() + str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


@dataclass
class LayerSpec:
    """Everything one hidden layer's queries share; `key` is a content hash (sha256) of all of it."""

    net: Network
    box: Box
    bounds: Bounds
    k: int                       # hidden layer, 0-based (objectives on dense layer k)
    key: str = ""

    def __post_init__(self):
        if not self.key:
            arrays = [self.box.lo, self.box.hi, np.array([self.k])]
            for d in self.net.dense:
                arrays += [d.W, d.b]
            arrays += [np.asarray(m) for m in self.net.masks]
            arrays += list(self.bounds.lo[:self.k + 1]) + list(self.bounds.hi[:self.k + 1])
            self.key = _digest(*arrays)


@dataclass(frozen=True)
class NeuronQuery:
    """Decide the phase of neuron `i` of hidden layer `k`: `sides` in order (dead / active), starting on a
    window of `first_window` layers (widened up to k).  seen_pos / seen_neg: signs real points already
    showed for this neuron (a side they contradict is not asked)."""

    k: int
    i: int
    sides: tuple
    first_window: int
    seen_pos: bool
    seen_neg: bool
    time_limit: float
    margin: float
    backend: str
    budget: float | None = None   # seconds all its decisions may take (the run's --milp-budget left when it
                                  # was sent; None: no end); not in the key: an answer it cut is not journalled

    def key(self, spec_key: str) -> str:
        """The journal key: the layer's content hash and every field of the query but `budget`."""
        text = f"{spec_key}|{self.k}|{self.i}|{','.join(self.sides)}|{self.first_window}|{int(self.seen_pos)}|" \
               f"{int(self.seen_neg)}|{self.time_limit!r}|{self.margin!r}|{self.backend}"
        return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class NeuronAnswer:
    """What the queries of one neuron found: per side "below" (proved), "above" (a real witness) or
    "unknown"; the witness input points; solver seconds; queries per window width."""

    k: int
    i: int
    verdicts: dict = field(default_factory=dict)      # side -> below | above | unknown
    witnesses: list = field(default_factory=list)     # real input points (lists of floats)
    seconds: float = 0.0
    windows: dict = field(default_factory=dict)       # window width -> queries
    unknown: int = 0                                  # queries that ended without a proof or a point
    status: str = "done"                              # done | failed (a task that proves nothing)
    message: str = ""
    cut: bool = False                                 # the query's budget ended a decision (or a side unasked)


    def to_json(self) -> dict:
        return {"k": self.k, "i": self.i, "verdicts": self.verdicts, "witnesses": self.witnesses,
                "seconds": self.seconds, "windows": {str(w): n for w, n in self.windows.items()},
                "unknown": self.unknown, "status": self.status, "message": self.message, "cut": self.cut}

    @classmethod
    def from_json(cls, d: dict) -> "NeuronAnswer":
        return cls(d["k"], d["i"], dict(d["verdicts"]), [list(map(float, p)) for p in d["witnesses"]],
                   float(d["seconds"]), {int(w): n for w, n in d["windows"].items()}, int(d["unknown"]),
                   d["status"], d.get("message", ""), bool(d.get("cut", False)))

    @classmethod
    def failed(cls, q: NeuronQuery, message: str) -> "NeuronAnswer":
        return cls(q.k, q.i, status="failed", message=message)


_cache = threading.local()          # per worker thread: {(spec key, window): (encoding, backend)}


def _encoding(spec: LayerSpec, w: int, backend: str):
    from ..prove.windows import window_encoding
    from ..solvers import make_backend, milp_backend
    store = getattr(_cache, "store", None)
    if store is None or store[0] != spec.key:          # one layer at a time: drop the previous layer's models
        store = _cache.store = (spec.key, {})
    encs = store[1]
    if w not in encs:
        e = window_encoding(spec.net, spec.box, spec.bounds, spec.k, w)
        encs[w] = (e, make_backend(milp_backend(backend), e.model))
    return encs[w]


def run_neuron(spec: LayerSpec, q: NeuronQuery) -> NeuronAnswer:
    """Run one neuron's decisions (on whatever process holds `spec`); pure function of its arguments
    except for time limits.  With q.budget, every decision gets min(time_limit, what is left of the budget)
    counted from the task's start, and none starts once it is spent (within 0.05 s, as `windows.Budget`): the
    answer is then `cut` (a decision it ended proves nothing, a side it left unasked has no verdict)."""
    net, k, i = spec.net, spec.k, q.i
    W, b = net.dense[k].W, net.dense[k].b
    ans = NeuronAnswer(k, i)
    t_start = time.perf_counter()
    seen = {"dead": q.seen_pos, "active": q.seen_neg}     # a point with z > 0 rules out dead, z < 0 active
    for side in q.sides:
        if seen["dead"] and seen["active"]:
            break
        if seen[side]:
            continue
        sign = 1.0 if side == "dead" else -1.0
        w = min(k, q.first_window)
        while True:
            lim = q.time_limit
            if q.budget is not None:
                lim = min(lim, q.budget - (time.perf_counter() - t_start))
                if lim <= 0.05:
                    ans.cut = True
                    break
            enc, be = _encoding(spec, w, q.backend)
            c, off = enc.objective(sign * W[i], sign * b[i])
            q0 = time.perf_counter()
            dec = be.decide(c, off, 0.0, time_limit=lim, margin=q.margin)
            ans.seconds += time.perf_counter() - q0
            ans.windows[w] = ans.windows.get(w, 0) + 1
            ans.cut |= dec.verdict == "unknown" and lim < q.time_limit
            if dec.verdict == "above" and w < k:
                w += 1                  # the window's point may not be reachable: widen
                continue
            ans.verdicts[side] = dec.verdict
            if dec.verdict == "above":
                x = np.clip(enc.input_point(dec.x), spec.box.lo, spec.box.hi)
                ans.witnesses.append([float(v) for v in x])
                _, pre = net.forward(x[None], return_pre=True)
                z = float(pre[k][0, i])
                seen["dead"] |= z > 0
                seen["active"] |= z < 0
            elif dec.verdict == "unknown":
                ans.unknown += 1
            break
        if ans.verdicts.get(side) == "below" or ans.cut:
            break
    if "distributed" in sys.modules:
        from .worker_stop import running_worker_stop
        stop = running_worker_stop()
        if stop is not None and stop.is_set():
            # its MILPs were interrupted by the worker's close: a failed task (never journalled), not an answer
            raise RuntimeError("the Dask worker closed while this neuron's MILPs ran")
    return ans


def model_digest(model) -> str:
    """sha256 of a LinearModel's content (matrix, row and column bounds, integrality): the identity of every
    query on it."""
    A = model.A.tocsr()
    return _digest(A.indptr, A.indices, A.data, np.array(A.shape), model.row_lo, model.row_hi, model.col_lo,
                   model.col_hi, model.integer)


def lp_key(model_key: str, c: np.ndarray, offset: float, time_limit: float, backend: str) -> str:
    """The journal key of one LP bound query: max c.v + offset over the relaxation of that model."""
    return "lp:" + _digest(np.frombuffer(model_key.encode(), np.uint8), np.asarray(c, np.float64),
                           np.array([offset, time_limit]), np.frombuffer(backend.encode(), np.uint8))
