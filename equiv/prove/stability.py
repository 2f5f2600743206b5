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
from dataclasses import dataclass, field

import numpy as np

from ..bounds import Bounds, deeppoly_bounds, interval_bounds
from ..bounds.exact import exact_zero_sides
from ..bounds.split import split_bounds
from ..ir.network import Network
from ..spec.region import Box
from .stability_solvers import candidates as _candidates
from .stability_solvers import solver_stages as _solver_stages
from .stability_window import windowed_stages

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
    milp_budget: float | None = None  # total seconds for the solver stages; later queries are skipped (unknown)
    # deep chains without input splitting: slopes, then LP/MILP on windows of the last layers
    windowed: str = "auto"        # auto (when the split stage does not run) | on | off
    alpha: bool = True            # optimised slopes before the windowed queries
    window_lp: bool = True        # windowed LPs (stopped when their yield drops) before the MILPs
    bottleneck: bool = True       # a layer left with one live neuron: bisect the next layer's thresholds on it
    bab: bool = True              # each phase decision first by branch and bound on ReLU phases at full depth
                                  # (`relu_bab`, alpha-beta-CROWN bounds), the windowed MILP when it does not decide
    # full-depth chain LP layers (method lp, or the stages after input splitting) whose encoding has at
    # least this many rows go to DagAdmm when the backend is highs (None: never); the CLI sets it unless
    # --backend is given.  Per LP on mnist 256x6 (DeepPoly bounds), HiGHS vs ADMM: 1 004 rows 28 vs 134 ms,
    # 1 772 rows 307 vs 126 ms, 2 540 rows 1 184 vs 38 ms
    lp_admm_rows: int | None = None

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.workers < 1 or self.split_boxes < 0:
            raise ValueError(f"need workers >= 1 and split_boxes >= 0, got {self.workers} and {self.split_boxes}")
        if self.windowed not in ("auto", "on", "off"):
            raise ValueError(f"windowed must be auto, on or off, got {self.windowed!r}")


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
        # signs at real points beyond float64 evaluation noise (never set by `claim`): what no proof may contradict
        self.real_pos = [np.zeros(n, bool) for n in w]
        self.real_neg = [np.zeros(n, bool) for n in w]
        self.noise = _forward_noise(net, box)
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
            self.real_pos[k] |= (z > self.noise[k]).any(axis=0)
            self.real_neg[k] |= (z < -self.noise[k]).any(axis=0)
            newly = ~(self.seen_pos[k] & self.seen_neg[k])
            self.seen_pos[k] |= (z > 0).any(axis=0)
            self.seen_neg[k] |= (z < 0).any(axis=0)
            shown = newly & self.seen_pos[k] & self.seen_neg[k] & (self.method[k] == "none")
            self.method[k][shown] = how
        if how != "samples":
            self.witnesses.append(points)

    def claim(self, dead: list[np.ndarray], active: list[np.ndarray]):
        """Try only these phases: a claimed-dead neuron counts as seen negative (so only 'dead' is asked),
        a claimed-active one as seen positive, any other as seen both ways (never asked)."""
        for k in range(len(self.masks)):
            d, a = np.asarray(dead[k], bool), np.asarray(active[k], bool)
            self.seen_neg[k] |= ~a
            self.seen_pos[k] |= ~d
            self.method[k][~(d | a)] = "unclaimed"

    def unstable(self, k: int) -> np.ndarray:
        return self.seen_pos[k] & self.seen_neg[k]

    def record_bounds(self, k: int, bounds: Bounds, how: str):
        m = self.masks[k]
        stable = m & ((bounds.hi[k] <= 0) | (bounds.lo[k] >= 0)) & (self.method[k] == "none")
        self.method[k][stable] = how

    def stable_count(self, bounds: Bounds) -> int:
        return bounds.counts(self.masks)["stable"]


def _forward_noise(net: Network, box: Box) -> list[np.ndarray]:
    """Per hidden neuron, a bound well above the float64 error of its pre-activation at a point of the box:
    1e-10 x M, with M = |W| M_prev + |b| (M_0 = max |x|) bounding every term the sums add up."""
    M = np.maximum(np.abs(box.lo), np.abs(box.hi))
    out = []
    for d in net.dense[:-1]:
        M = np.abs(d.W) @ M + np.abs(d.b)
        out.append(1e-10 * M + 1e-300)       # the next layer's input: |relu(z)| <= |z| <= M
    return out


def _phase(lo, hi, mask, unstable):
    if not mask:
        return "linear"
    if hi <= 0:
        return "dead"
    if lo >= 0:
        return "active"
    return "unstable" if unstable else "unknown"


def prove_stability(net: Network, box: Box, options: StabilityOptions | None = None, *,
                    known: Bounds | None = None, seen_points: np.ndarray | None = None,
                    runner=None, claims: tuple[list, list] | None = None) -> StabilityResult:
    """Phase of every hidden neuron of `net` on `box`, with the method that decided it.

    known: sound bounds valid on `box` (e.g. proved on a box containing it), intersected in after the
    DeepPoly stage; neurons only they decide get method "inherited".  seen_points: real points (e.g. a
    parent box's witnesses); those inside `box` are evaluated as witnesses, the others are ignored.
    runner: a `distributed.Runner` sending the windowed MILP decisions to an executor and a journal
    (None: in this process, as always).  claims: (dead, active) masks per hidden layer: only these phases
    are tried (each on its claimed side); the other ReLUs count as unstable and are never queried
    (used to re-prove the phases a reduction was made with, see `carried`).
    """
    opt = options or StabilityOptions()
    box.check_dim(net.n_inputs)
    rng = np.random.default_rng(opt.seed)
    tr = _Tracker(net, box)
    if claims is not None:
        tr.claim(*claims)
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
    _exact_first_layer(net, box, ib)
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

    split = opt.method == "milp" and 0 < opt.split_boxes and np.sum(box.hi > box.lo) <= opt.split_max_inputs
    if split:
        bounds = _split_stage(net, box, bounds, tr, opt, stage_seconds, stage_counts, queries)
    if opt.method == "milp" and (opt.windowed == "on" or (opt.windowed == "auto" and not split)):
        bounds = windowed_stages(net, box, bounds, tr, opt, stage_seconds, stage_counts, queries, notes, runner)
    elif opt.method in ("lp", "milp"):
        bounds = _solver_stages(net, box, bounds, tr, opt, stage_seconds, stage_counts, queries, notes)

    neurons, contradicted = [], []
    for k, m in enumerate(tr.masks):
        both = tr.real_pos[k] & tr.real_neg[k]
        for i in range(m.size):
            ph = _phase(bounds.lo[k][i], bounds.hi[k][i], m[i], tr.unstable(k)[i])
            meth = tr.method[k][i] if ph != "unknown" and ph != "linear" else "none"
            if ph in ("dead", "active") and both[i]:
                # a proof that real points refute is wrong: the neuron stays (a bug to report, never a removal)
                contradicted.append(f"{k + 1}:{i} (bounds [{bounds.lo[k][i]:.3g}, {bounds.hi[k][i]:.3g}])")
                ph, meth = "unstable", "samples"
            neurons.append(NeuronProof(k + 1, i, ph, meth, float(tr.seconds[k][i])))
    if contradicted:
        notes.append(f"BUG: {len(contradicted)} neurons proved stable took both signs at real points of the box and "
                     f"were kept as unstable: {', '.join(contradicted[:8])}{' ...' if len(contradicted) > 8 else ''}. "
                     "Please report this.")
    wit = np.vstack(tr.witnesses) if tr.witnesses else np.empty((0, box.dim))
    return StabilityResult(neurons, bounds, wit, stage_counts, stage_seconds, queries, notes)


def _exact_first_layer(net: Network, box: Box, ib: Bounds) -> None:
    """First-layer ReLUs whose exact range on the box ends at 0 (`bounds.exact`): the upper bound set to 0 (dead)
    or the lower one (active), in place; the margins of the float bounds kept them unstable."""
    if len(net.dense) < 2 or not net.meta.get("first_layer_exact", True):
        return          # (W, b) were folded with rounding at import: not the model's own numbers
    d = net.dense[0]
    dead, active = exact_zero_sides(d.W, d.b, box.lo, box.hi, ib.lo[0], ib.hi[0])
    m = net.masks[0]
    ib.hi[0] = np.where(dead & m, 0.0, ib.hi[0])
    ib.lo[0] = np.where(active & m, 0.0, ib.lo[0])


def _first_layer_extremes(net: Network, box: Box) -> np.ndarray:
    """The corners where each first-layer pre-activation w.x + b is largest and smallest on the box.

    Layer 1 is affine in x, so these points attain its exact range: every first-layer ReLU whose
    range straddles 0 is shown unstable by them (random samples miss such corners in many dimensions).
    """
    W, c = net.dense[0].W, box.center
    return np.vstack([np.where(W > 0, box.hi, np.where(W < 0, box.lo, c)),
                      np.where(W > 0, box.lo, np.where(W < 0, box.hi, c))])


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
