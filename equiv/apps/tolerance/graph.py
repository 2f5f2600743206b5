"""`simplify --epsilon / --preserve top1` on graphs (convolutions, residual blocks): ReLU positions replaced by
their minimax line on [l, u], chosen under a sound bound of the difference graph, the written file certified.

A position with proved bounds l < 0 < u is replaced by a*z + c (a = u/(u-l), c = -a*l/2, off by at most c).
Convolutions share weights across positions, so a position's slope and offset cannot go into the weights:
each ReLU with replacements gets an elementwise Scale before it (a at replaced positions, 1 elsewhere) and a
Shift after it (c at replaced positions), and the replaced positions become linear positions of its
MaskedRelu.  The original gets the same slots as identities, so the two graphs share a structure and the
difference graph (`ir.pair_graph`) bounds f - g directly, with the original's proved bounds known.
Selection takes the candidates in order of their local error and keeps the longest prefix that the bound
accepts (doubling, then bisection); the certificate is `check_graphs` of the file as written and read back.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import onnx

from ...artifacts.validate import OnnxRunner
from ...bounds.engine import deeppoly_boxes
from ...ir import ops
from ...ir.chain_export import fresh_name
from ...ir.graph import Graph
from ...ir.graph_align import align_to
from ...ir.onnx_export import graph_to_onnx
from ...ir.onnx_import import graph_from_onnx
from ...ir.pair_graph import StructureError
from ...prove.equivalence import CheckOptions, CheckResult
from ...prove.graph_check import check_graphs, difference_bounds, known_bounds, margin_graph
from ...spec.region import Box
from ...transform.fold import shrink
from ..graph_simplify import GraphPhases, graph_phases, reduce_graph
from .candidates import minimax_affine

SLOPE, ACT = "{}/equiv_slope", "{}/equiv_act"


def slot_names(g: Graph) -> dict:
    """{relu: (scale name, activation name)} of each ReLU's slot: SLOPE/ACT, stepped aside from every tensor
    name of g (and from each other), so a model's own names never clash with them."""
    taken = set(g.order) | set(g.inputs)
    out = {}
    for r in g.relus:
        s = fresh_name(SLOPE.format(r), taken)
        taken.add(s)
        a = fresh_name(ACT.format(r), taken)
        taken.add(a)
        out[r] = (s, a)
    return out


def slot_known(f: Graph, bounds, slots) -> dict:
    """f's bounds {tensor: (lo, hi)} (a GraphBounds proved on the region) at each ReLU's input, as known bounds
    of f slotted at `slots` (an identity slot's Scale output is its input)."""
    out = {z: (bounds.lo[z], bounds.hi[z]) for z in (f.args(r)[0] for r in f.relus)}
    names = slot_names(f)
    for r in slots:
        out[names[r][0]] = out[f.args(r)[0]]
    return out


FLOAT_MARGIN = 1e-4      # a certificate must prove the difference below epsilon x (1 - this)


@dataclass(frozen=True)
class PositionEdit:
    """Replace ReLU position `index` (flat, C order) of ReLU node `relu` by a*z + c; `error` its local bound."""

    relu: str
    index: int
    a: float
    c: float
    error: float

    def to_json(self) -> dict:
        return {"relu": self.relu, "index": self.index, "a": self.a, "c": self.c, "error": self.error}


def slotted(g: Graph, ph: GraphPhases | None, edits: list[PositionEdit], slots) -> Graph:
    """g with its proved phases masked (when ph is given) and, at each ReLU in `slots`, a Scale before and a
    Shift after (identities except at the edited positions, which become linear).  The Shift takes the
    ReLU's name, so everything downstream reads it unchanged."""
    base = reduce_graph(g, ph) if ph is not None else g
    by_relu: dict = {}
    for e in edits:
        by_relu.setdefault(e.relu, []).append(e)
    names = slot_names(g)
    nodes = []
    for name in base.order:
        op, args = base.op(name), base.args(name)
        if op.kind != "relu" or name not in slots:
            nodes.append((name, op, args))
            continue
        shape = op.shape
        s, c = np.ones(shape), np.zeros(shape)
        act = op
        if name in by_relu:
            relu = np.broadcast_to(getattr(op, "relu_mask", True), shape).copy()
            lin = np.broadcast_to(getattr(op, "linear_mask", False), shape).copy()
            for e in by_relu[name]:
                if not relu.flat[e.index]:
                    raise ValueError(f"position {e.index} of '{name}' is not a ReLU: it cannot be replaced")
                s.flat[e.index], c.flat[e.index] = e.a, e.c
                relu.flat[e.index], lin.flat[e.index] = False, True
            act = ops.MaskedRelu(shape, relu_mask=relu, linear_mask=lin)
        slope, act_name = names[name]
        nodes.append((slope, ops.Scale(shape, s=s), args))
        nodes.append((act_name, act, [slope]))
        nodes.append((name, ops.Shift(shape, bias=c), [act_name]))
    return Graph.build(nodes, base.inputs, base.outputs, dict(base.meta))


def position_candidates(g: Graph, ph: GraphPhases) -> list[PositionEdit]:
    """Every ReLU position neither proved dead nor active, as its minimax line, smallest local error first."""
    out = []
    for r in g.relus:
        z = g.args(r)[0]
        lo, hi = ph.bounds.lo[z].reshape(-1), ph.bounds.hi[z].reshape(-1)
        relu = np.broadcast_to(getattr(g.op(r), "relu_mask", True), g.shape(r)).reshape(-1)
        open_ = relu & ~(ph.dead[r] | ph.active[r]).reshape(-1) & (lo < 0) & (hi > 0)
        for i in np.flatnonzero(open_):
            a, c, err = minimax_affine(float(lo[i]), float(hi[i]))
            out.append(PositionEdit(r, int(i), a, c, err))
    out.sort(key=lambda e: (e.error, e.relu, e.index))
    return out


def by_influence(f: Graph, cands: list[PositionEdit], x0: np.ndarray, scale: np.ndarray) -> list[PositionEdit]:
    """The candidates ordered by how much their error moves the outputs at x0: the position's value moved by
    its error c (one batch row per position), the largest output change divided by `scale` (epsilon per
    output).  Only an order: the judge decides."""
    by_relu: dict = {}
    for k, e in enumerate(cands):
        by_relu.setdefault(e.relu, []).append(k)
    base = f.evaluate(x0[None])
    y0 = f.forward(x0[None])
    score = np.zeros(len(cands))
    for r, ks in by_relu.items():
        for part in np.array_split(np.array(ks), max(1, len(ks) // 512)):
            H = np.repeat(base[r].reshape(1, -1), len(part), axis=0)
            H[np.arange(len(part)), [cands[k].index for k in part]] += [cands[k].error for k in part]
            vals = f.evaluate(np.repeat(x0[None], len(part), axis=0), {r: H.reshape((len(part),) + base[r].shape[1:])})
            y = np.concatenate([vals[o].reshape(len(part), -1) for o in f.outputs], axis=1)
            score[part] = (np.abs(y - y0) / scale).max(axis=1)
    order = np.lexsort((np.array([e.error for e in cands]), score))
    return [cands[k] for k in order]


class GraphJudge:
    """Sound bounds of f - g on the region for g = f with replacements; counts its bound calls."""

    def __init__(self, f: Graph, ph: GraphPhases, box: Box, *, target=None, top1: bool = False,
                 samples: np.ndarray | None = None, safety: float = 1.0):
        self.f, self.ph, self.box, self.safety, self.top1 = f, ph, box, safety, top1
        self.target = None if target is None else np.broadcast_to(np.asarray(target, float), (f.n_outputs,))
        self.calls = 0
        self.X = samples
        self.fX = None if samples is None else f.forward(samples)
        self.label = int(np.argmax(f.forward(box.center[None])[0]))
        self.f_margin = None
        if top1:
            n = f.n_outputs
            head = np.eye(n)[self.label][None, :] - np.delete(np.eye(n), self.label, axis=0)
            # DeepPoly on the margins, with the original's proved (LP/MILP-tightened) bounds known
            M = margin_graph(f, head)
            b, _ = deeppoly_boxes(M, box.lo[None], box.hi[None], known_bounds(self.known(()), "", M))
            self.f_margin = b.lo[M.outputs[0]].reshape(-1)

    def known(self, slots) -> dict:
        """f's proved bounds {tensor: (lo, hi)} of the slotted original (a slot's Scale output is its input)."""
        return slot_known(self.f, self.ph.bounds, slots)

    def bound(self, g: Graph, slots) -> np.ndarray:
        """linf: per output, the proven max |f_j - g_j|; top1: per other class, the proven min of g_c - g_k."""
        self.calls += 1
        dl, dh = difference_bounds(slotted(self.f, None, [], slots), g, self.box, self.known(slots))
        if self.top1:
            c = self.label
            return self.f_margin - (dh[c] - np.delete(dl, c))
        return np.maximum(-dl, dh)

    def sampled_ok(self, g: Graph) -> bool:
        if self.X is None:
            return True
        gX = g.forward(self.X)
        if self.top1:
            c = self.label
            floor = (1 - self.safety) * max(0.0, float((self.fX[:, c][:, None] - np.delete(self.fX, c, axis=1)).min()))
            return bool(np.all(gX[:, c][:, None] - np.delete(gX, c, axis=1) > floor))
        return bool(np.all(np.abs(gX - self.fX) <= self.safety * self.target))

    def ok(self, g: Graph, slots) -> bool:
        if not self.sampled_ok(g):
            return False
        b = self.bound(g, slots)
        return bool(np.all(b > 0)) if self.top1 else bool(np.all(b <= self.safety * self.target))


def with_edits(f: Graph, ph: GraphPhases, edits: list[PositionEdit]) -> tuple[Graph, set]:
    slots = {e.relu for e in edits}
    return slotted(f, ph, edits, slots), slots


def longest_prefix(ok, n_max: int, deadline: float) -> tuple[int, bool]:
    """The largest n <= n_max with ok(n) (doubling from 1, then bisection; ok(0) is taken as true), and
    whether the deadline (a perf_counter time) cut the search short."""
    good, bad, n = 0, n_max + 1, 1
    while n < bad:
        if time.perf_counter() > deadline:
            return good, True
        if ok(min(n, n_max)):
            good = min(n, n_max)
            if good == n_max:
                return good, False
            n *= 2
        else:
            bad = n
    while bad - good > 1:
        if time.perf_counter() > deadline:
            return good, True
        mid = (good + bad) // 2
        if ok(mid):
            good = mid
        else:
            bad = mid
    return good, False


def select_positions(f: Graph, ph: GraphPhases, cands: list[PositionEdit], judge: GraphJudge,
                     time_limit: float = 300.0) -> tuple[list[PositionEdit], str]:
    """Greedy in runs: the longest run of the next candidates that the judge accepts with everything accepted so
    far, then the candidate that broke the run is skipped, until the candidates or the time run out."""
    deadline = time.perf_counter() + time_limit
    accepted: list[PositionEdit] = []
    i = 0
    while i < len(cands):
        rest = cands[i:]
        n, late = longest_prefix(lambda k: judge.ok(*with_edits(f, ph, accepted + rest[:k])), len(rest), deadline)
        accepted += rest[:n]
        i += n + 1                     # rest[n] (if any) failed with the run before it: skip it
        if late:
            return accepted, f"selection time limit ({time_limit:g} s) reached after {min(i, len(cands))} of " \
                             f"{len(cands)} candidates"
    return accepted, ""


@dataclass
class GraphToleranceResult:
    original: Graph
    exact: Graph                           # the exact simplification as the exact mode writes it
    simplified: Graph
    onnx_model: onnx.ModelProto
    phases: GraphPhases
    candidates: int
    accepted: int
    kept: list
    certificate: CheckResult | None
    attempts: list
    bound_calls: int
    notes: list = field(default_factory=list)
    seconds: dict = field(default_factory=dict)


def simplify_graph_within(f: Graph, reference: OnnxRunner, box: Box, opt, *, method: str = "deeppoly",
                          time_limit: float = 10.0, budget: float | None = None, backend: str = "highs",
                          samples: int = 2000, phases: GraphPhases | None = None) -> GraphToleranceResult:
    """Exact phases, then the longest prefix of replacements the bound accepts (at safety x epsilon, or
    positive top-1 margins), then the written file certified; backs off (halving) when the certificate
    fails, and falls back to the exact simplification.  opt: a `pipeline.ToleranceOptions`; phases: the
    region's proved phases when already known (a slice's)."""
    seconds, notes = {}, []
    t0 = time.perf_counter()
    ph = phases or graph_phases(f, box, method, samples, opt.seed, opt.progress, time_limit, budget, None, backend)
    exact = reduce_graph(f, ph)
    seconds["exact"] = time.perf_counter() - t0
    rng = np.random.default_rng(opt.seed)
    points = np.vstack([box.center[None], box.vertices(256, rng), box.sample(opt.samples, rng)])
    eps = None if opt.epsilon is None else np.broadcast_to(np.asarray(opt.epsilon, float), (f.n_outputs,)).copy()
    t0 = time.perf_counter()
    judge = GraphJudge(f, ph, box, target=eps, top1=opt.preserve == "top1", samples=points, safety=opt.safety)
    cands = position_candidates(f, ph)
    if cands:
        cands = by_influence(f, cands, box.center, np.ones(f.n_outputs) if eps is None else eps)
    if judge.top1 and not np.all(judge.f_margin > 0):
        notes.append(f"the original's top-1 class ({judge.label}) could not be proved the same on the whole region "
                     f"(smallest proven margin {float(judge.f_margin.min()):.3g}): only the exact simplification "
                     "is offered")
        cands = []
    chosen, stopped = select_positions(f, ph, cands, judge, opt.selection_time_limit)
    n = len(chosen)
    if stopped:
        notes.append(stopped)
    seconds["select"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    attempts, best = [], None
    k = n
    while k > 0 and len(attempts) < opt.backoffs:
        g, slots = with_edits(f, ph, chosen[:k])
        model = graph_to_onnx(g)
        cert = certify_graph(f, g, slots, model, reference, box, opt, eps, judge)
        attempts.append({"kept": k, "relus": g.n_relus, "params": g.n_params, "verdict": cert.verdict,
                         "upper": float(cert.max_diff_upper) if np.isfinite(cert.max_diff_upper) else None,
                         "seconds": round(cert.seconds, 3)})
        # float32 evaluation of the written file is not in the float64 bound: keep a relative margin
        if cert.verdict == "equivalent" and (eps is None or cert.max_diff_upper <= float(eps.min()) * (1 - FLOAT_MARGIN)):
            best = (g, model, cert, k)
            break
        if cert.verdict == "not_equivalent":
            notes.append(f"with {k} replacements the certificate found a counterexample (the samples missed it)")
        k //= 2
    seconds["certify"] = time.perf_counter() - t0
    small, _, _ = shrink(exact)             # dead channels and rows deleted: the exact mode's model
    if best is None:
        g, model, cert, k = small, graph_to_onnx(small), None, 0
        if n:
            notes.append("no set of replacements was certified within the attempts: the exact simplification "
                         "(proved by its phase proofs) is returned")
    else:
        g, model, cert, k = best
    return GraphToleranceResult(f, small, g, model, ph, len(cands), n, chosen[:k], cert, attempts, judge.calls,
                                notes, seconds)


def certify_graph(f: Graph, g: Graph, slots, model: onnx.ModelProto, reference: OnnxRunner, box: Box, opt, eps,
                  judge: GraphJudge) -> CheckResult:
    """`check_graphs` of the model as written (float32 bytes, read back and aligned with g) against the
    original with identity slots, starting from the original's proved bounds (and top-1 margins)."""
    written = onnx.load_from_string(model.SerializeToString())
    as_read = graph_from_onnx(written)
    try:
        g_file = align_to(g, as_read)
    except StructureError:
        # the writer merged nodes the alignment cannot split again (a slope Scale folded into the layer before
        # it): the file is checked as it reads, on the product graph (sound, often looser)
        g_file = as_read
    fs = slotted(f, None, [], slots)
    copt = CheckOptions(norm=opt.norm, epsilon=eps, time_limit=opt.certify_time_limit, seed=opt.seed)
    return check_graphs(fs, g_file, [box], reference, OnnxRunner(written), copt, f_known=judge.known(slots),
                        f_margins=judge.f_margin)
