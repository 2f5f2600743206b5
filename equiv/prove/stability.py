"""Decide each hidden ReLU's phase on a region, cheapest proof first.

Order: samples and corners (which can only show a neuron *unstable*: a point with z > 0 and one with
z < 0), interval and DeepPoly bounds; then, for method "milp" on regions with few varying inputs,
input splitting (DeepPoly on a tiling of the region by sub-boxes, `bounds.split`), which decides
nearly every neuron of an ACAS Xu network in well under a second; then, for what is still open,
layer by layer an LP (triangle relaxation, tightening the bounds later layers and the MILP use) and
finally MILP decisions ("is there an x with z > 0?") that stop at the first feasible point.  Every
point a solver or the splitter returns is re-evaluated in the real network and, when it shows a
sign, rules neurons unstable for free.  A neuron is dead/active only by a sound bound; a timeout or
non-optimal status leaves it "unknown", and unknown neurons are kept.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field

import numpy as np

from ..bounds import Bounds, deeppoly_bounds, interval_bounds
from ..bounds.split import split_bounds
from ..encode.chain import encode_network
from ..ir.network import Network
from ..spec.region import Box
from ..solvers import Status, make_backend, milp_backend

METHODS = ("interval", "deeppoly", "lp", "milp")


@dataclass
class StabilityOptions:
    """How hard to try: the strongest method to use, the solver, and the limits per query."""

    method: str = "milp"          # interval | deeppoly | lp | milp
    backend: str = "highs"
    time_limit: float = 10.0      # seconds per solver query
    samples: int = 2000           # random points used to witness unstable neurons
    seed: int = 0
    margin: float = 1e-6          # decision margin absorbing solver feasibility/integrality tolerances
    progress: bool = False
    # input splitting (method "milp" only): boxes to bound before the LP/MILP stages take over; it only
    # pays when few inputs vary (bisection needs ~2^dims boxes to halve a box), hence the second limit
    split_boxes: int = 10000
    split_max_inputs: int = 12
    workers: int = 2              # threads solving one layer's LP/MILP queries at once (1 = one by one)
    milp_budget: float | None = None  # total seconds for all MILP decisions; later ones are skipped (unknown)

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.workers < 1 or self.split_boxes < 0:
            raise ValueError(f"need workers >= 1 and split_boxes >= 0, got {self.workers} and {self.split_boxes}")


@dataclass
class NeuronProof:
    layer: int          # hidden layer, from 1
    index: int
    phase: str          # dead | active | unstable | unknown | linear (a linear channel, no ReLU)
    method: str         # interval | deeppoly | inherited | split | lp | milp | samples | witness | none
    seconds: float = 0.0

    def to_json(self) -> dict:
        return {"layer": self.layer, "index": self.index, "phase": self.phase, "method": self.method,
                "seconds": round(self.seconds, 6)}


@dataclass
class StabilityResult:
    neurons: list[NeuronProof]
    bounds: Bounds
    witnesses: np.ndarray
    stage_counts: dict = field(default_factory=dict)   # stable neurons after each stage
    stage_seconds: dict = field(default_factory=dict)
    queries: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)

    def phase_masks(self, net: Network) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Per hidden layer, boolean arrays of proved-dead and proved-active neurons."""
        dead = [np.zeros(w, bool) for w in net.hidden_widths]
        active = [np.zeros(w, bool) for w in net.hidden_widths]
        for p in self.neurons:
            if p.phase == "dead":
                dead[p.layer - 1][p.index] = True
            elif p.phase == "active":
                active[p.layer - 1][p.index] = True
        return dead, active

    def proved_by(self) -> dict:
        out = {}
        for p in self.neurons:
            if p.phase in ("dead", "active"):
                out[p.method] = out.get(p.method, 0) + 1
        return out

    def count(self, phase: str) -> int:
        return sum(p.phase == phase for p in self.neurons)


class _Tracker:
    """Per-neuron state while proving: bounds, signs seen at real points, decisions and their cost."""

    def __init__(self, net: Network, box: Box):
        self.net, self.box = net, box
        self.masks = net.masks
        w = net.hidden_widths
        self.seen_pos = [np.zeros(n, bool) for n in w]
        self.seen_neg = [np.zeros(n, bool) for n in w]
        self.method = [np.full(n, "none", dtype=object) for n in w]
        self.seconds = [np.zeros(n) for n in w]
        self.witnesses: list[np.ndarray] = []

    def absorb(self, points: np.ndarray, how: str):
        """Evaluate real points (clipped into the box) and record the signs each neuron takes."""
        if points.size == 0:
            return
        points = np.clip(np.atleast_2d(points), self.box.lo, self.box.hi)
        _, pre = self.net.forward(points, return_pre=True)
        for k, z in enumerate(pre):
            newly = ~(self.seen_pos[k] & self.seen_neg[k])
            self.seen_pos[k] |= (z > 0).any(axis=0)
            self.seen_neg[k] |= (z < 0).any(axis=0)
            shown = newly & self.seen_pos[k] & self.seen_neg[k] & (self.method[k] == "none")
            self.method[k][shown] = how
        if how != "samples":
            self.witnesses.append(points)

    def unstable(self, k: int) -> np.ndarray:
        return self.seen_pos[k] & self.seen_neg[k]

    def record_bounds(self, k: int, bounds: Bounds, how: str):
        m = self.masks[k]
        stable = m & ((bounds.hi[k] <= 0) | (bounds.lo[k] >= 0)) & (self.method[k] == "none")
        self.method[k][stable] = how

    def stable_count(self, bounds: Bounds) -> int:
        return bounds.counts(self.masks)["stable"]


def _phase(lo, hi, mask, unstable):
    if not mask:
        return "linear"
    if hi <= 0:
        return "dead"
    if lo >= 0:
        return "active"
    return "unstable" if unstable else "unknown"


def prove_stability(net: Network, box: Box, options: StabilityOptions | None = None, *,
                    known: Bounds | None = None, seen_points: np.ndarray | None = None) -> StabilityResult:
    """Phase of every hidden neuron of `net` on `box`, with the method that decided it.

    known: sound bounds valid on `box` (e.g. proved on a box containing it), intersected in after the
    DeepPoly stage; neurons only they decide get method "inherited".  seen_points: real points (e.g. a
    parent box's witnesses); those inside `box` are evaluated as witnesses, the others are ignored.
    """
    opt = options or StabilityOptions()
    box.check_dim(net.n_inputs)
    rng = np.random.default_rng(opt.seed)
    tr = _Tracker(net, box)
    stage_seconds, stage_counts, queries, notes = {}, {}, {"lp": 0, "milp": 0, "milp_unknown": 0}, []

    t0 = time.perf_counter()
    pts = np.vstack([box.sample(opt.samples, rng), box.corners(limit=1024), box.center[None],
                     _first_layer_extremes(net, box)])
    tr.absorb(pts, "samples")
    if seen_points is not None and len(seen_points):
        tr.absorb(seen_points[box.contains(seen_points)], "witness")
    stage_seconds["samples"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    ib = interval_bounds(net, box)
    for k in range(len(tr.masks)):
        tr.record_bounds(k, ib, "interval")
    stage_counts["interval"] = tr.stable_count(ib)
    bounds = ib
    if opt.method != "interval":
        bounds = deeppoly_bounds(net, box, known=ib)
        for k in range(len(tr.masks)):
            tr.record_bounds(k, bounds, "deeppoly")
        stage_counts["deeppoly"] = tr.stable_count(bounds)
    if known is not None:
        # both bounds hold on this box, so their intersection does; DeepPoly again to propagate it
        bounds = deeppoly_bounds(net, box, known=bounds.intersect(known))
        for k in range(len(tr.masks)):
            tr.record_bounds(k, bounds, "inherited")
        stage_counts["inherited"] = tr.stable_count(bounds)
    stage_seconds["deeppoly"] = time.perf_counter() - t0

    if opt.method == "milp" and 0 < opt.split_boxes and np.sum(box.hi > box.lo) <= opt.split_max_inputs:
        bounds = _split_stage(net, box, bounds, tr, opt, stage_seconds, stage_counts, queries)
    if opt.method in ("lp", "milp"):
        bounds = _solver_stages(net, box, bounds, tr, opt, stage_seconds, stage_counts, queries, notes)

    neurons = []
    for k, m in enumerate(tr.masks):
        for i in range(m.size):
            ph = _phase(bounds.lo[k][i], bounds.hi[k][i], m[i], tr.unstable(k)[i])
            meth = tr.method[k][i] if ph != "unknown" and ph != "linear" else "none"
            neurons.append(NeuronProof(k + 1, i, ph, meth, float(tr.seconds[k][i])))
    wit = np.vstack(tr.witnesses) if tr.witnesses else np.empty((0, box.dim))
    return StabilityResult(neurons, bounds, wit, stage_counts, stage_seconds, queries, notes)


def _first_layer_extremes(net: Network, box: Box) -> np.ndarray:
    """The corners where each first-layer pre-activation w.x + b is largest and smallest on the box.

    Layer 1 is affine in x, so these points attain its exact range: every first-layer ReLU whose
    range straddles 0 is shown unstable by them (random samples miss such corners in many dimensions).
    """
    W, c = net.dense[0].W, box.center
    return np.vstack([np.where(W > 0, box.hi, np.where(W < 0, box.lo, c)),
                      np.where(W > 0, box.lo, np.where(W < 0, box.hi, c))])


def _candidates(tr: _Tracker, bounds: Bounds, k: int) -> np.ndarray:
    """ReLUs of layer k that no bound decided and no real point showed unstable."""
    return tr.masks[k] & (bounds.lo[k] < 0) & (bounds.hi[k] > 0) & ~tr.unstable(k)


def _split_stage(net, box, bounds, tr, opt, stage_seconds, stage_counts, queries) -> Bounds:
    """Input splitting for every candidate, each asked only the side no point contradicts."""
    t0 = time.perf_counter()
    layer, index, dead = [], [], []
    for k in range(len(tr.masks)):
        for i in np.flatnonzero(_candidates(tr, bounds, k)):
            layer.append(k)
            index.append(i)
            dead.append(not tr.seen_pos[k][i])   # no point with z > 0 seen: try dead, else active
    res = split_bounds(net, box, bounds, np.array(layer, int), np.array(index, int), np.array(dead, bool),
                       max_boxes=opt.split_boxes)
    queries["split_boxes"] = res.boxes
    bounds = res.bounds
    for k in range(len(tr.masks)):
        tr.record_bounds(k, bounds, "split")
    tr.absorb(res.witnesses, "witness")
    # the tightened bounds of earlier layers propagate to the later ones
    bounds = deeppoly_bounds(net, box, known=bounds)
    for k in range(len(tr.masks)):
        tr.record_bounds(k, bounds, "deeppoly")
    stage_counts["split"] = tr.stable_count(bounds)
    stage_seconds["split"] = time.perf_counter() - t0
    return bounds


def _solver_stages(net, box, bounds, tr, opt, stage_seconds, stage_counts, queries, notes) -> Bounds:
    """Layer by layer: LP tightening of every undecided neuron, then MILP decisions (if asked)."""
    dense = net.dense
    stage_seconds.setdefault("lp", 0.0)
    stage_seconds.setdefault("milp", 0.0)
    lp_stable = 0
    layers = range(len(tr.masks))
    if opt.progress:
        from tqdm import tqdm
        layers = tqdm(layers, desc="proving layers", unit="layer", leave=False)
    # method milp only needs bounds up to the deepest layer with an undecided candidate
    last = max([k for k in range(len(tr.masks)) if _candidates(tr, bounds, k).any()], default=-1)
    deadline = None if opt.milp_budget is None else time.perf_counter() + opt.milp_budget
    for k in layers:
        m = tr.masks[k]
        W, b = dense[k].W, dense[k].b
        todo = np.flatnonzero(m & (bounds.lo[k] < 0) & (bounds.hi[k] > 0))
        if k == 0 or todo.size == 0 or (opt.method == "milp" and k > last):
            # layer 1 is affine in x: interval/DeepPoly bounds are already exact
            lp_stable += int(np.sum(m & ((bounds.hi[k] <= 0) | (bounds.lo[k] >= 0))))
            continue
        t0 = time.perf_counter()
        enc = encode_network(net, box, bounds, depth=k, integer=True)
        backend = make_backend(opt.backend, enc.model)
        # --- LP: tighten both sides of every undecided neuron (rigorous dual bounds)
        certified = getattr(backend, "certified_at_limit", False)   # admm: a bound at a limit is a proof too
        for i, up, lo_, secs in _lp_layer(W, b, todo, enc, backend, opt):
            queries["lp"] += 2
            tr.seconds[k][i] += secs
            big = sum(r.status == Status.TOO_LARGE for r in (up, lo_))
            if big:
                queries["too_large"] = queries.get("too_large", 0) + big
                queries["too_large_message"] = (f"LP bounds for hidden layer {k + 1}: "
                                                + (up if up.status == Status.TOO_LARGE else lo_).message)
            if up.bound is not None and (up.status == Status.OPTIMAL or certified):
                bounds.hi[k][i] = min(bounds.hi[k][i], up.bound)
            if lo_.bound is not None and (lo_.status == Status.OPTIMAL or certified):
                bounds.lo[k][i] = max(bounds.lo[k][i], -lo_.bound)
        tr.record_bounds(k, bounds, "lp")
        lp_stable += int(np.sum(m & ((bounds.hi[k] <= 0) | (bounds.lo[k] >= 0))))
        stage_seconds["lp"] += time.perf_counter() - t0

        if opt.method == "milp":
            t0 = time.perf_counter()
            milp_be = backend if milp_backend(opt.backend) == opt.backend else make_backend("highs", enc.model)
            _milp_layer(net, k, enc, milp_be, bounds, tr, opt, queries, deadline)
            stage_seconds["milp"] += time.perf_counter() - t0
        # later layers benefit at once from the tightened bounds of this one
        bounds = deeppoly_bounds(net, box, known=bounds)
        for j in range(k + 1, len(tr.masks)):
            tr.record_bounds(j, bounds, "deeppoly")
    if queries.get("too_large"):
        notes.append(f"{queries['too_large']} solver queries were too large for the {opt.backend} licence and proved "
                     f"nothing (their neurons stay 'unknown' unless another method decided them): "
                     f"{queries.pop('too_large_message')}")
    if opt.method == "milp" and milp_backend(opt.backend) != opt.backend:
        notes.append(f"the {opt.backend} backend solves LP relaxations only: the MILP decisions used highs")
    if queries.get("milp_skipped"):
        notes.append(f"MILP budget of {opt.milp_budget:g} s spent: {queries['milp_skipped']} decisions not "
                     "attempted; their neurons stay 'unknown' and are kept")
    stage_counts["lp"] = lp_stable if opt.method == "lp" else stage_counts.get("lp", lp_stable)
    stage_counts[opt.method] = tr.stable_count(bounds)
    return bounds


def _lp_layer(W, b, todo, enc, backend, opt) -> list:
    """Max and min of W[i] h + b[i] over the LP relaxation for every i in todo: (i, up, down, seconds).

    With `opt.workers` > 1 (and a backend that allows threads) the neurons are dealt round robin to
    that many threads, each with its own backend: LP queries reuse one solver object, which must not be
    shared between threads.
    """
    def run(be, part):
        out = []
        for i in part:
            c, off = enc.objective(W[i], b[i])
            q0 = time.perf_counter()
            up = be.maximize(c, off, integer=False, time_limit=opt.time_limit)
            down = be.maximize(-c, -off, integer=False, time_limit=opt.time_limit)
            out.append((i, up, down, time.perf_counter() - q0))
        return out

    if hasattr(backend, "maximize_many"):   # batched backend (admm): all 2 x len(todo) objectives at once
        C, off = map(np.array, zip(*[enc.objective(W[i], b[i]) for i in todo]))
        res = backend.maximize_many(np.vstack([C, -C]), np.concatenate([off, -off]), opt.time_limit * 2 * len(todo))
        return [(i, res[j], res[len(todo) + j], 2 * res[j].seconds) for j, i in enumerate(todo)]
    n = min(opt.workers, len(todo)) if getattr(backend, "threads_ok", False) else 1
    if n <= 1:
        return run(backend, todo)
    parts = [todo[j::n] for j in range(n)]
    with ThreadPoolExecutor(max_workers=n) as pool:
        done = [pool.submit(run, backend, parts[0])]
        done += [pool.submit(run, make_backend(opt.backend, enc.model), p) for p in parts[1:]]
        return [r for f in done for r in f.result()]


def _milp_layer(net, k, enc, backend, bounds, tr, opt, queries, deadline=None):
    """MILP decisions for layer k's neurons that no bound decided and no point showed unstable.

    All candidates are first asked "dead?" (those no point showed z > 0), then "active?".  The queries
    of one pass share the encoding and are independent, so with `opt.workers` > 1 and a backend whose
    decisions may run concurrently they are solved by a pool of threads (HiGHS releases the GIL while
    solving); results are recorded in this thread as they arrive, and a query whose neuron a witness
    has meanwhile shown unstable is skipped when its turn comes.
    """
    W, b = net.dense[k].W, net.dense[k].b

    def open_side(i, side) -> bool:
        if tr.unstable(k)[i] or bounds.hi[k][i] <= 0 or bounds.lo[k][i] >= 0:
            return False
        # a real point with z > 0 rules out dead, one with z < 0 rules out active
        return not (tr.seen_pos[k][i] if side == "dead" else tr.seen_neg[k][i])

    def ask(i, side):
        if not open_side(i, side):
            return None
        limit = opt.time_limit
        if deadline is not None:
            limit = min(limit, deadline - time.perf_counter())
            if limit <= 0.05:
                return "skipped"
        sign = 1.0 if side == "dead" else -1.0
        c, off = enc.objective(sign * W[i], sign * b[i])
        q0 = time.perf_counter()
        dec = backend.decide(c, off, 0.0, time_limit=limit, margin=opt.margin)
        return dec, time.perf_counter() - q0

    def record(i, side, answer):
        if answer is None:
            return
        if answer == "skipped":
            queries["milp_skipped"] = queries.get("milp_skipped", 0) + 1
            return
        dec, secs = answer
        tr.seconds[k][i] += secs
        queries["milp"] += 1
        if dec.verdict == "below":
            if side == "dead":
                bounds.hi[k][i] = 0.0
            else:
                bounds.lo[k][i] = 0.0
            tr.method[k][i] = "milp"
        elif dec.verdict == "above":
            tr.absorb(enc.input_point(dec.x)[None], "witness")
        else:
            queries["milp_unknown"] += 1
            if dec.status == Status.TOO_LARGE:
                queries["too_large"] = queries.get("too_large", 0) + 1
                queries["too_large_message"] = f"MILP decisions for hidden layer {k + 1}: {dec.message}"

    parallel = opt.workers > 1 and getattr(backend, "threads_ok", False)
    for side in ("dead", "active"):
        jobs = [i for i in np.flatnonzero(_candidates(tr, bounds, k)) if open_side(i, side)]
        if parallel and len(jobs) > 1:
            with ThreadPoolExecutor(max_workers=opt.workers) as pool:
                futures = {pool.submit(ask, i, side): i for i in jobs}
                for f in as_completed(futures):
                    record(futures[f], side, f.result())
        else:
            for i in jobs:
                record(i, side, ask(i, side))
