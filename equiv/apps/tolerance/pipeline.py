"""`simplify --epsilon / --preserve top1`: exact phases first, then replacements chosen under a sound bound
(`select`), then the written file certified by `check` against the original; when the certificate is not
`equivalent`, the accepted set is bisected (a shorter prefix of the acceptance order) until one is proved.
No model is returned that neither its phase proofs (the exact simplification) nor a certificate prove."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import onnx

from ...artifacts.validate import OnnxRunner, validation_points
from ...errors import ValidationError
from ...ir.chain_export import network_to_onnx
from ...ir.chain_io import network_from_onnx
from ...ir.network import Network
from ...prove.equivalence import CheckOptions, CheckResult, check_networks
from ...prove.stability import StabilityOptions, StabilityResult, prove_stability
from ...spec.region import Box
from .candidates import relu_candidates
from .edits import Edit, apply_edits, compact, exact_edits
from .judge import Judge
from .margins import milp_margins
from ...solvers import milp_backend
from .select import Selection, select


@dataclass
class ToleranceOptions:
    """What may change (linf epsilon per output, or the top-1 class) and how hard to look."""

    epsilon: float | np.ndarray | None = None
    preserve: str | None = None            # "top1"
    pieces: int = 32                       # boxes of the partition on which the selection bounds are proved
    safety: float = 0.9                    # the proved stage aims at safety * epsilon: room for the certificate
    sampled_safety: float = 0.6            # then the sampled stage, up to this fraction on the samples (0: off)
    kinds: tuple = ("constant", "merge", "affine")
    selection_time_limit: float = 300.0    # the top1 margin MILPs and both selection stages
    certify_time_limit: float = 60.0
    time_limit: float | None = None        # selection and every certificate together (None: no end); each
                                           # certificate gets at most what is left, none starts after it
    margin_time_limit: float = 30.0        # top1: seconds per MILP proving a margin of the original
    backoffs: int = 6                      # certificates tried at most (halving the accepted set each time)
    samples: int = 5000                    # points for the sampled stage, the rejection and the merge fits
    validation_samples: int = 10000
    seed: int = 0
    progress: bool = False

    def __post_init__(self):
        if (self.epsilon is None) == (self.preserve is None):
            raise ValueError("give epsilon or preserve='top1', not both")
        if self.preserve not in (None, "top1"):
            raise ValueError(f"preserve must be 'top1', got {self.preserve!r}")

    @property
    def norm(self) -> str:
        return "top1" if self.preserve else "linf"


@dataclass
class Attempt:
    """One certificate: how many accepted replacements the model kept, and the check's verdict."""

    kept: int
    relus: int
    params: int
    verdict: str
    upper: float | None
    seconds: float


@dataclass
class ToleranceResult:
    original: Network
    exact: Network                         # the exact simplification (phases only)
    simplified: Network                    # the model written (exact + the certified replacements)
    onnx_model: onnx.ModelProto
    stability: StabilityResult
    selection: Selection
    kept: list[Edit]                       # the replacements in the written model
    certificate: CheckResult | None        # None: the exact simplification was returned, proved by its phases
    attempts: list[Attempt]
    validation: dict
    notes: list = field(default_factory=list)
    seconds: dict = field(default_factory=dict)


def simplify_within(net: Network, reference: OnnxRunner, box: Box, options: ToleranceOptions,
                    stability: StabilityOptions | None = None, stab: StabilityResult | None = None) -> ToleranceResult:
    """The tolerance pipeline on a loaded chain network (reference: the original model in onnxruntime)."""
    opt, stability = options, stability or StabilityOptions()
    seconds, notes = {}, []
    t0 = time.perf_counter()
    if stab is None:
        stab = prove_stability(net, box, stability)
    dead, active = stab.phase_masks(net)
    seconds["exact"] = time.perf_counter() - t0
    base = exact_edits(dead, active)
    exact = compact(apply_edits(net, base))
    rng = np.random.default_rng(opt.seed)
    points = np.vstack([box.center[None], box.vertices(256, rng), box.sample(opt.samples, rng)])

    t0 = time.perf_counter()
    end = None if opt.time_limit is None else t0 + opt.time_limit
    sel_end = t0 + opt.selection_time_limit if end is None else min(end, t0 + opt.selection_time_limit)
    left = [m & ~d & ~a for m, d, a in zip(net.masks, dead, active)]
    eps = None if opt.epsilon is None else np.broadcast_to(np.asarray(opt.epsilon, float), (net.n_outputs,)).copy()
    judge = Judge(net, box, stab.bounds, target=eps, top1=opt.preserve == "top1",
                  pieces=opt.pieces, samples=points, safety=opt.safety)
    cands = relu_candidates(net, stab.bounds.lo, stab.bounds.hi, left, points, kinds=opt.kinds)
    if opt.preserve == "top1":
        margins = judge.f_margins(apply_edits(net, base))
        # a sample where some class k reaches the label's score shows f_c - f_k <= 0 there: no bound can prove
        # that margin positive, so the margin MILPs (up to margin_time_limit each) would be spent for nothing
        other = np.delete(judge.fX, judge.label, axis=1) if judge.fX is not None else None
        beaten = other is not None and bool(np.any(other >= judge.fX[:, [judge.label]]))
        if beaten:
            k = int(np.argmax((other >= judge.fX[:, [judge.label]]).any(axis=0)))
            k += k >= judge.label
            notes.append(f"a sampled point of the region has class {k} at least as high as the original's "
                         f"top-1 class ({judge.label}) at the centre: the class is not the same on the whole region, "
                         "only the exact simplification is offered")
            cands = []
        elif not np.all(margins > 0):
            margins = milp_margins(net, box, stab.bounds, judge.label, margins, backend=milp_backend(stability.backend),
                                   time_limit=opt.margin_time_limit, deadline=sel_end)
        judge.f_margin = margins
        if not beaten and not np.all(margins > 0):
            notes.append(f"the original's top-1 class ({judge.label}) could not be proved the same on the whole "
                         f"region by bounds (smallest proven margin {float(margins.min()):.3g}): only the exact "
                         "simplification is offered")
            cands = []
    bar = _bar(opt.progress, len(cands))
    try:
        sel = select(net, base, cands, judge, time_limit=max(0.0, sel_end - time.perf_counter()), progress=bar)
    finally:
        if bar is not None:
            bar.close()
    if sel.stopped:
        notes.append(sel.stopped)
    proved = len(sel.accepted)
    if opt.sampled_safety > 0 and cands:
        # beyond what the bounds show: candidates accepted on the samples alone, to be certified by `check`
        done = {(e.layer, e.index) for e in sel.accepted}
        rest = [c for c in cands if (c.layer, c.index) not in done]
        judge.sampled_only, judge.safety = True, opt.sampled_safety
        more = select(net, base + sel.accepted, rest, judge, time_limit=max(0.0, sel_end - time.perf_counter()))
        judge.sampled_only, judge.safety = False, opt.safety
        sel.accepted += more.accepted
        sel.sampled = len(more.accepted)
    seconds["select"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    attempts, cert, small, model, kept = [], None, exact, None, 0

    def out_of_time() -> bool:
        return end is not None and end - time.perf_counter() <= 0.05

    def attempt(n: int):
        if out_of_time():                 # not asked: proves nothing
            return None
        limit = opt.certify_time_limit if end is None else min(opt.certify_time_limit, end - time.perf_counter())
        g = compact(apply_edits(net, base + sel.accepted[:n]))
        m = network_to_onnx(g)
        c, att = _certify(net, reference, m, box, opt, eps, n, g, stab.bounds, judge, limit)
        attempts.append(att)
        if c.verdict == "not_equivalent":
            notes.append(f"with {n} replacements the certificate found a counterexample (the samples missed it)")
        return (c, g, m) if c.verdict == "equivalent" else None

    # the whole set first; then bisect between the proved stage's set (lo) and the smallest failure (hi)
    n = len(sel.accepted)
    best = attempt(n) if n else None
    if best is not None:
        kept = n
    elif n:
        lo, hi = (proved, n) if proved < n else (0, n)
        while hi - lo > 1 and len(attempts) < opt.backoffs - 1 and not out_of_time():
            mid = (lo + hi) // 2
            got = attempt(mid)
            if got is not None:
                best, kept, lo = got, mid, mid
            else:
                hi = mid
        if best is None and 0 < lo < n:
            best = attempt(lo)
            kept = lo if best is not None else 0
    if best is not None:
        cert, small, model = best
    if cert is None:
        kept, small, model = 0, exact, network_to_onnx(exact)
        if sel.accepted:
            notes.append("no set of replacements was certified within the attempts"
                         f"{f' and the time limit ({opt.time_limit:g} s)' if out_of_time() else ''}: the exact "
                         "simplification (proved by its phase proofs) is returned")
    seconds["certify"] = time.perf_counter() - t0
    if len(small.dense) == 1 and not small.dense[0].W.any():
        notes.append(f"the written model outputs a constant on every input (stored as x @ 0 + b: "
                     f"{small.dense[0].b.size} nonzero parameters): within the tolerance on this region, the "
                     "original is that constant")

    t0 = time.perf_counter()
    validation = validate_within(reference, model, box, opt, eps, stab.witnesses)
    seconds["validate"] = time.perf_counter() - t0
    return ToleranceResult(net, exact, small, model, stab, sel, sel.accepted[:kept], cert, attempts, validation,
                           notes, seconds)


def _certify(net: Network, reference: OnnxRunner, model: onnx.ModelProto, box: Box, opt: ToleranceOptions,
             eps, kept: int, g: Network, f_bounds, judge: Judge, time_limit: float) -> tuple[CheckResult, Attempt]:
    """`check` of the model as it will be written (float32 bytes, parsed back) against the original, starting
    from the original's neuron bounds proved by the exact simplification, within time_limit seconds."""
    written = onnx.load_from_string(model.SerializeToString())
    b = network_from_onnx(written)
    copt = CheckOptions(norm=opt.norm, epsilon=eps, time_limit=time_limit, seed=opt.seed)
    t0 = time.perf_counter()
    margins = None
    if judge.top1:
        others = [k for k in range(net.n_outputs) if k != judge.label]
        margins = {(judge.label, k): float(m) for k, m in zip(others, judge.f_margin)}
    r = check_networks(net, b, box, reference, OnnxRunner(written), copt, f_bounds=f_bounds, f_margins=margins)
    att = Attempt(kept, g.n_relus, g.n_params, r.verdict, _finite(r.max_diff_upper), time.perf_counter() - t0)
    return r, att


def _finite(v):
    return None if v is None or not np.isfinite(v) else float(v)


def validate_within(reference: OnnxRunner, model: onnx.ModelProto, box: Box, opt: ToleranceOptions, eps,
                    witnesses) -> dict:
    """The written model against the original in onnxruntime: per output the worst |difference| (linf), or the
    points where the top-1 class differs; a violation is a bug (ValidationError, nothing written)."""
    rng = np.random.default_rng(opt.seed + 1)
    pts = np.vstack(list(validation_points(box, opt.validation_samples, rng, witnesses).values()))
    a, b = reference(pts), OnnxRunner(model)(pts)
    diff = np.nan_to_num(np.abs(a - b), nan=np.inf)
    out = {"samples": int(len(pts)), "max_abs_diff": float(diff.max()),
           "max_abs_diff_per_output": diff.max(axis=0).tolist()}
    if opt.preserve == "top1":
        changed = np.flatnonzero(np.argmax(a, axis=1) != np.argmax(b, axis=1))
        out["top1_changed"] = int(changed.size)
        if changed.size:
            raise ValidationError(f"BUG: the simplified model changes the top-1 class at input {pts[changed[0]].tolist()}; "
                                  "nothing was written. Please report this.")
    else:
        # float32 evaluation of both models may add a little to the proven float64 bound
        slack = 1e-6 * (1 + np.abs(a).max(axis=0))
        bad = np.flatnonzero(diff.max(axis=0) > eps + slack)
        if bad.size:
            j = int(bad[0])
            raise ValidationError(f"BUG: output {j} of the simplified model differs from the original by "
                                  f"{diff[:, j].max():.3g} > epsilon {eps[j]:g} at input "
                                  f"{pts[int(np.argmax(diff[:, j]))].tolist()}; nothing was written. Please report this.")
    return out


def _bar(show: bool, total: int):
    if not show or not total:
        return None
    from tqdm import tqdm
    return tqdm(total=total, desc="tolerance: candidates", unit="neuron", leave=False)
