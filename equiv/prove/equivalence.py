"""Prove that two networks agree on a region (linf within epsilon, or same top-1 class), or show a real
counterexample.

Order of work, cheapest first:
1. falsification: random points, corners and signed-gradient ascent on the difference; any point
   above epsilon is re-run in onnxruntime on both models, and only a confirmed one is reported;
2. difference bounds (`diff_bounds`) on the whole region; a region where they prove the property is done;
3. input splitting (regions with few varying inputs): best-first bisection of the open pieces, many
   pieces per batched bound computation, until every piece is proved, a counterexample turns up, or
   the box/time budget is spent;
4. the product MILP with difference cuts (`product_milp`) on each remaining piece: one decision per
   output and sign (linf) or per pair of classes (top1); the verdict uses only infeasibility or dual
   bounds.  A piece whose query runs out of time is bisected and retried, up to `max_pieces`.
A piece never proved leaves the verdict "unknown", with the proven interval for the worst difference.

Top-1 semantics: the class of an output is its argmax, ties going to the lowest index (numpy and
ONNX ArgMax).  A proof always shows a *strict* winner, so a region where f has a tie that g breaks
the same way can stay "unknown"; a counterexample is a point whose two argmaxes differ in onnxruntime.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from . import falsify
from .align import AlignedPair, align
from ..bounds.diff import PairBounds, output_bounds, pair_bounds
from ..errors import InputFileError
from ..ir.network import Network
from ..encode.product import product_encoding
from ..spec.bisect import Bisection, Node, Open
from ..spec.region import Box
from ..solvers import Status, make_backend

NORMS = ("linf", "top1")


@dataclass
class CheckOptions:
    """What to prove and how hard to try."""

    norm: str = "linf"
    epsilon: float | np.ndarray | None = None   # linf: scalar or one per output; None only with measure
    measure: bool = False          # tighten the proven bound on max |f - g| instead of stopping at epsilon
    backend: str = "highs"
    time_limit: float = 300.0      # seconds for the whole check
    query_time_limit: float = 60.0  # seconds per MILP query
    max_boxes: int = 200000        # input splitting: pieces bounded at most
    split_max_inputs: int = 12     # input splitting only when at most this many inputs vary
    max_pieces: int = 16           # MILP route: pieces after bisecting on timeouts
    samples: int = 10000
    seed: int = 0
    margin: float = 1e-6
    batch: int = 128
    measure_rtol: float = 0.05     # measure: stop when upper <= lower * (1 + rtol) + atol
    measure_atol: float = 1e-6
    progress: bool = False

    def __post_init__(self):
        if self.norm not in NORMS:
            raise InputFileError(f"--norm must be one of {', '.join(NORMS)}, got '{self.norm}'")
        if self.epsilon is not None:
            e = np.atleast_1d(np.asarray(self.epsilon, float))
            if not np.all(np.isfinite(e)) or np.any(e <= 0):
                raise InputFileError(f"epsilon must be positive and finite, got {self.epsilon}")
        if self.norm == "linf" and self.epsilon is None and not self.measure:
            raise InputFileError("linf equivalence needs --epsilon (or --measure to compute the bound)")


@dataclass
class Piece:
    """One box of the final tiling of the region and what is known on it."""

    lo: np.ndarray
    hi: np.ndarray
    verdict: str            # equivalent | unknown | not_equivalent
    method: str             # bounds | milp | none
    upper: float            # proven upper bound on max_j |f_j - g_j| on the box (inf if none)

    def to_json(self) -> dict:
        return {"lo": self.lo.tolist(), "hi": self.hi.tolist(), "verdict": self.verdict, "method": self.method,
                "max_diff_upper": _num(self.upper)}


@dataclass
class CheckResult:
    verdict: str                   # equivalent | not_equivalent | unknown | measured
    norm: str
    epsilon: list | None
    max_diff_upper: float          # proven upper bound on max_x max_j |f_j(x) - g_j(x)|
    max_diff_lower: float          # largest max_j |f_j - g_j| seen in onnxruntime
    counterexample: falsify.Confirmed | None
    backend: str
    seconds: float
    pieces: list[Piece]
    stats: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    per_output_upper: list | None = None   # proven bound on max |f_j - g_j| per output (linf)

    @property
    def exit_code(self) -> int:
        return {"equivalent": 0, "not_equivalent": 1, "unknown": 3, "measured": 0}[self.verdict]

    def to_json(self) -> dict:
        return {"verdict": self.verdict, "norm": self.norm, "epsilon": self.epsilon,
                "max_diff_upper": _num(self.max_diff_upper), "max_diff_lower": self.max_diff_lower,
                "per_output_upper": None if self.per_output_upper is None else [_num(v) for v in self.per_output_upper],
                "counterexample": None if self.counterexample is None else self.counterexample.to_json(),
                "backend": self.backend, "seconds": round(self.seconds, 4), "stats": self.stats,
                "pieces": [p.to_json() for p in self.pieces[:1000]], "pieces_total": len(self.pieces),
                "notes": self.notes}


def _num(v: float):
    """JSON has no infinity: an unbounded value is null."""
    return float(v) if np.isfinite(v) else None


class _Clock:
    def __init__(self, limit: float):
        self.t0, self.limit = time.perf_counter(), limit

    @property
    def left(self) -> float:
        return self.limit - (time.perf_counter() - self.t0)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.t0


def check_networks(f: Network, g: Network, box: Box, run_a, run_b, options: CheckOptions) -> CheckResult:
    """Check f (run in onnxruntime by run_a) against g (run_b) on the box; see the module docstring."""
    opt = options
    clock = _Clock(opt.time_limit)
    box.check_dim(f.n_inputs)
    rng = np.random.default_rng(opt.seed)
    pair = align(f, g, np.vstack([box.center[None], box.sample(500, rng)]))
    n_out = f.n_outputs
    eps = eps_vector(opt, n_out)
    stats = {"aligned": pair.same_shape, "match_cost": [round(c, 4) for c in pair.match_cost],
             "boxes": 0, "milp_queries": 0, "milp_unknown": 0, "seconds": {}}
    notes = []
    if not pair.same_shape:
        notes.append("the networks have different layer widths or depths: neurons were paired by their values at sample points "
                     f"(mean relative distance per layer {stats['match_cost']})")
    st = _State(pair, box, opt, eps, run_a, run_b, clock, stats)

    # 1. falsification
    t0 = time.perf_counter()
    cand = falsify.search(f, g, box, opt.norm, eps, rng, samples=opt.samples)
    st.try_points(cand.points)
    stats["seconds"]["falsify"] = time.perf_counter() - t0
    if st.cex is None:
        # 2-4. bounds, splitting, MILP
        t0 = time.perf_counter()
        st.prove()
        stats["seconds"]["prove"] = time.perf_counter() - t0
    return st.result(clock.elapsed, notes)


def eps_vector(opt: CheckOptions, n_out: int) -> np.ndarray:
    if opt.epsilon is None:
        return np.ones(n_out)        # measure without epsilon: scores are absolute differences
    e = np.atleast_1d(np.asarray(opt.epsilon, float))
    if e.size == 1:
        return np.full(n_out, float(e[0]))
    if e.size != n_out:
        raise InputFileError(f"epsilon has {e.size} values but the models have {n_out} outputs")
    return e


class _State:
    """The pieces of the region with their status, the best counterexample and the bookkeeping."""

    def __init__(self, pair: AlignedPair, box: Box, opt: CheckOptions, eps, run_a, run_b, clock, stats):
        self.pair, self.box, self.opt, self.eps = pair, box, opt, eps
        self.run_a, self.run_b, self.clock, self.stats = run_a, run_b, clock, stats
        self.cex: falsify.Confirmed | None = None
        self.seen = 0.0                      # largest |f - g| seen in onnxruntime
        self.pieces: list[Piece] = []        # closed pieces (proved, or given up)
        self.per_out = np.zeros(pair.f.n_outputs)   # proven per-output bound over closed pieces
        n_out = pair.f.n_outputs
        self.pairs = [(c, k) for c in range(n_out) for k in range(n_out) if k != c]
        C = np.zeros((len(self.pairs), n_out))
        for r, (c, k) in enumerate(self.pairs):
            C[r, c], C[r, k] = 1.0, -1.0
        self.C = C                           # rows e_c - e_k: class margins
        self.varying = int(np.sum(box.hi > box.lo))
        self._root: PairBounds | None = None

    # -- counterexamples -------------------------------------------------------------------------
    def try_points(self, X: np.ndarray):
        if self.cex is not None or not len(X):
            return
        cex, seen = falsify.confirm(self.run_a, self.run_b, X, self.box, self.opt.norm, self.eps)
        self.seen = max(self.seen, seen)
        if cex is not None:
            self.cex = cex

    # -- per-box analysis --------------------------------------------------------------------------
    def analyse(self, pb: PairBounds):
        """Per box: proved?, a score to order open boxes (higher: worse), the proven |diff| bound per
        output, the attack points, and per box the input coefficients guiding the split."""
        eye = np.eye(self.pair.f.n_outputs)
        dl, du, Al, Au = output_bounds(self.pair, pb, eye, "d", return_coef=True)
        absd = np.maximum(du, -dl)                       # (N, out)
        N = dl.shape[0]
        if self.opt.norm == "linf":
            ratio = absd / self.eps
            score = ratio.max(axis=1)
            proved = score <= 1.0 if self.opt.epsilon is not None else np.zeros(N, bool)
            j = ratio.argmax(axis=1)
            rows = np.arange(N)
            coef = np.where((du[rows, j] >= -dl[rows, j])[:, None], Au[rows, j], -Al[rows, j])
        else:
            mf_lo, _, Afl, _ = output_bounds(self.pair, pb, self.C, "f", return_coef=True)
            mg_lo, _ = output_bounds(self.pair, pb, self.C, "g")
            _, md_hi = output_bounds(self.pair, pb, self.C, "d")
            # g_c - g_k = (f_c - f_k) - (d_c - d_k): the difference bounds often beat g's own
            mg_lo = np.maximum(mg_lo, mf_lo - md_hi)
            n_out = self.pair.f.n_outputs
            win_f = mf_lo.reshape(N, n_out, n_out - 1).min(axis=2)   # per class c: min_k lower(f_c - f_k)
            win_g = mg_lo.reshape(N, n_out, n_out - 1).min(axis=2)
            both = np.minimum(win_f, win_g)
            proved = (both > 0).any(axis=1)
            score = -both.max(axis=1)
            c = both.argmax(axis=1)
            # split along the inputs that move f's weakest margin for the best class the most
            rows = np.arange(N)
            r = c * (n_out - 1) + mf_lo.reshape(N, n_out, n_out - 1)[rows, c].argmin(axis=1)
            coef = -Afl[rows, r]
        # attack points: per box, the corner maximising the worst linear bound, and the centre
        attack = np.where(coef > 0, pb.hi, np.where(coef < 0, pb.lo, (pb.lo + pb.hi) / 2))
        return proved, score, absd, coef, attack

    def close(self, lo, hi, verdict, method, absd):
        self.pieces.append(Piece(lo.copy(), hi.copy(), verdict, method, float(np.max(absd))))
        self.per_out = np.maximum(self.per_out, absd)

    # -- the main loop -----------------------------------------------------------------------------
    def prove(self):
        opt, box = self.opt, self.box
        pb = self._root = pair_bounds(self.pair, box.lo[None], box.hi[None])
        self.stats["boxes"] += 1
        proved, score, absd, coef, attack = self.analyse(pb)
        self.try_points(attack)
        if self.cex is not None:
            return
        if proved[0] and not self._wants_tighter(absd[0]):
            self.close(box.lo, box.hi, "equivalent", "bounds", absd[0])
            return
        if 0 < self.varying <= opt.split_max_inputs:
            open_ = self._split_loop(pb, score, absd, coef)
        else:
            open_ = [(box.lo, box.hi, absd[0], coef[0])]
        self._milp_pieces(open_)

    def _open_verdict(self) -> str:
        """What a piece left open is: measuring without epsilon, its (valid, looser) bound still counts."""
        return "measured" if self.opt.measure and self.opt.epsilon is None else "unknown"

    def _wants_tighter(self, absd) -> bool:
        """In measure mode, is this box's bound still far above the largest difference seen?"""
        if not self.opt.measure:
            return False
        return float(np.max(absd)) > self.seen * (1 + self.opt.measure_rtol) + self.opt.measure_atol

    def _split_loop(self, pb: PairBounds, score, absd, coef) -> list:
        """Best-first bisection; returns the boxes still open when the budget ran out (with their info)."""
        opt = self.opt
        width0 = np.where(self.box.hi > self.box.lo, self.box.hi - self.box.lo, np.inf)
        bar = _bar(opt.progress, opt.max_boxes, "splitting", "box")

        def choose_dims(nodes):
            return _split_dims(np.array([n.lo for n in nodes]), np.array([n.hi for n in nodes]),
                               np.array([n.data[2] for n in nodes]), width0)

        def decide(nodes):
            # the halves inherit their parent's bounds (sound: they lie inside it)
            child = pair_bounds(self.pair, np.array([n.lo for n in nodes]), np.array([n.hi for n in nodes]),
                                _stack_known([n.data[0] for n in nodes]))
            self.stats["boxes"] += child.lo.shape[0]
            proved, sc, ab, cof, attack = self.analyse(child)
            self.try_points(np.vstack([attack, (child.lo + child.hi) / 2]))
            out = []
            for i in range(child.lo.shape[0]):
                out.append(None)
                if proved[i] and not self._wants_tighter(ab[i]):
                    self.close(child.lo[i], child.hi[i], "equivalent", "bounds", ab[i])
                elif self.opt.measure and self.opt.epsilon is None and not self._wants_tighter(ab[i]):
                    self.close(child.lo[i], child.hi[i], "measured", "bounds", ab[i])
                else:
                    out[-1] = Open((child.take([i]), ab[i], cof[i]), key=-float(sc[i]))
            return out

        root = Node(self.box.lo, self.box.hi, (pb, absd[0], coef[0]), decided=True)
        run = Bisection(decide, choose_dims=choose_dims, order="best", batch=opt.batch,
                        max_boxes=opt.max_boxes - self.stats["boxes"], deadline=self.clock.t0 + self.clock.limit,
                        stop=lambda: self.cex is not None, progress=bar.update if bar else None)
        try:
            run = run.run([root], keys=[-float(score[0])])
        finally:
            if bar is not None:
                bar.close()
        return [(n.lo, n.hi, n.data[1], n.data[2]) for n in run.pending]

    def _milp_pieces(self, open_: list):
        """Product MILP on each open piece; a piece whose queries run out of time is bisected and retried."""
        opt = self.opt
        if self.cex is not None:
            return
        if len(open_) > opt.max_pieces:
            # too many to send to the MILP: they stay unknown with their bound
            for lo, hi, ab, _ in open_:
                self.close(lo, hi, self._open_verdict(), "bounds", ab)
            self.stats["unknown_reason"] = (f"{len(open_)} pieces left open after input splitting "
                                            f"(budget {opt.max_boxes} boxes, {opt.time_limit:g} s)")
            return
        width0 = np.where(self.box.hi > self.box.lo, self.box.hi - self.box.lo, np.inf)
        bar = _bar(opt.progress and open_, len(open_), "MILP pieces", "piece")
        bisections = 0

        def decide(nodes):
            nonlocal bisections
            (node,) = nodes
            lo, hi, (ab, cf) = node.lo, node.hi, node.data
            if self.clock.left <= 0.5:
                self.close(lo, hi, self._open_verdict(), "bounds", ab)
                self.stats["unknown_reason"] = f"time limit of {opt.time_limit:g} s reached"
                return [None]
            verdict, ab2 = self._milp_piece(Box(lo, hi), ab)
            if bar is not None:
                bar.update(1)
            if verdict == "timeout" and bisections + run.queued + 2 <= opt.max_pieces and self.clock.left > 1:
                bisections += 1
                if bar is not None:
                    bar.total += 2
                    bar.refresh()
                return [Open((ab2, cf), dim=int(_split_dims(lo[None], hi[None], cf[None], width0)[0]))]
            if verdict in ("equivalent", "measured"):
                self.close(lo, hi, verdict, "milp", ab2)
            elif verdict != "counterexample":
                self.close(lo, hi, self._open_verdict(), "milp", ab2)
                self.stats.setdefault("unknown_reason", "MILP queries did not finish or were inconclusive")
            return [None]

        run = Bisection(decide, order="fifo", stop=lambda: self.cex is not None)
        try:
            run.run([Node(lo, hi, (ab, cf)) for lo, hi, ab, cf in open_])
        finally:
            if bar is not None:
                bar.close()

    def _milp_piece(self, piece: Box, absd_bound: np.ndarray):
        """Decide the piece with the product MILP: equivalent / counterexample / timeout / unknown."""
        opt = self.opt
        pb = pair_bounds(self.pair, piece.lo[None], piece.hi[None])
        self.stats["boxes"] += 1
        pm = product_encoding(self.pair, piece, pb)
        absd = np.minimum(absd_bound, np.maximum(pb.d_hi[-1][0], -pb.d_lo[-1][0]))
        if opt.norm == "linf":
            return self._milp_linf(pm, pb, absd)
        return self._milp_top1(piece, pm, pb, absd)

    def _milp_linf(self, pm, pb: PairBounds, absd):
        """Per output j and sign s, decide s (f_j - g_j) >= eps_j (or, measuring, maximise it)."""
        opt = self.opt
        n_out = self.pair.f.n_outputs
        backend = make_backend(opt.backend, pm.model)
        # proven bounds on max s (f_j - g_j) per (output, sign), tightened by the solver's dual bounds
        side = {(j, s): (pb.d_hi[-1][0, j] if s > 0 else -pb.d_lo[-1][0, j]) for j in range(n_out) for s in (1, -1)}
        timeout = inconclusive = False
        for (j, s), known in list(side.items()):
            if opt.epsilon is not None and known <= self.eps[j] and not opt.measure:
                continue
            cf = np.zeros(n_out)
            cf[j] = s
            c, off = pm.output_objective(self.pair, cf, -cf)
            limit = min(opt.query_time_limit, max(self.clock.left, 0.0))
            if limit < 0.1:
                timeout = True
                continue
            self.stats["milp_queries"] += 1
            if opt.measure:
                r = backend.maximize(c, off, integer=True, time_limit=limit)
                if r.x is not None:
                    self.try_points(pm.input_point(r.x)[None])
                if r.bound is not None and r.status in (Status.OPTIMAL, Status.TIME_LIMIT):
                    # the MIP dual bound carries the solver's tolerances: widen it by the margin
                    b = float(r.bound)
                    side[j, s] = min(known, b + opt.margin * max(1.0, abs(b)))
                if r.status != Status.OPTIMAL:
                    self._note_status(r)
                    self.stats["milp_unknown"] += 1
                    timeout |= r.status == Status.TIME_LIMIT
                    inconclusive |= r.status != Status.TIME_LIMIT
                continue
            dec = backend.decide(c, off, float(self.eps[j]), time_limit=limit, margin=opt.margin)
            if dec.verdict == "below":
                side[j, s] = min(known, float(self.eps[j]))
                continue
            t, i = self._failed_decision(dec, pm)
            if self.cex is not None:
                return "counterexample", absd
            timeout, inconclusive = timeout or t, inconclusive or i
        upper = np.array([max(side[j, 1], side[j, -1], 0.0) for j in range(n_out)])
        upper = np.minimum(upper, absd)
        if timeout or inconclusive:
            return ("timeout" if timeout else "unknown"), upper
        if opt.epsilon is None:
            return "measured", upper
        return ("equivalent" if np.all(upper <= self.eps) else "unknown"), upper

    def _milp_top1(self, piece: Box, pm, pb: PairBounds, absd):
        """For each class c that f can output, prove that wherever f's argmax is c, g's is too."""
        opt = self.opt
        n_out = self.pair.f.n_outputs
        mf_lo, mf_hi = output_bounds(self.pair, pb, self.C, "f")
        mg_lo, mg_hi = output_bounds(self.pair, pb, self.C, "g")
        mf_hi = mf_hi.reshape(n_out, n_out - 1)
        timeout = inconclusive = False
        for c in range(n_out):
            if np.any(mf_hi[c] < 0):
                continue            # some class always beats c in f: f never outputs c on the piece
            # f's argmax is c: f_c >= f_k for every k (a superset of the ties-to-lowest-index rule)
            rows = []
            for k in range(n_out):
                if k != c:
                    e = np.zeros(n_out)
                    e[c], e[k] = 1.0, -1.0
                    cc, off = pm.output_objective(self.pair, e, np.zeros(n_out))
                    rows.append((cc, -off - opt.margin, np.inf))
            backend = make_backend(opt.backend, pm.with_rows(rows))
            for k in range(n_out):
                if k == c:
                    continue
                r = self.pairs.index((c, k))
                if mg_lo[0, r] > 0:
                    continue        # g_c > g_k on the whole piece already
                e = np.zeros(n_out)
                e[k], e[c] = 1.0, -1.0
                cc, off = pm.output_objective(self.pair, np.zeros(n_out), e)
                limit = min(opt.query_time_limit, max(self.clock.left, 0.0))
                if limit < 0.1:
                    timeout = True
                    continue
                self.stats["milp_queries"] += 1
                dec = backend.decide(cc, off, 0.0, time_limit=limit, margin=opt.margin)   # g_k - g_c >= 0 ?
                if dec.verdict == "below":
                    continue
                t, i = self._failed_decision(dec, pm)
                if self.cex is not None:
                    return "counterexample", absd
                timeout, inconclusive = timeout or t, inconclusive or i
        if not (timeout or inconclusive):
            return "equivalent", absd
        return ("timeout" if timeout else "unknown"), absd

    def _failed_decision(self, dec, pm) -> tuple[bool, bool]:
        """A decision that proved nothing: try its point as a counterexample; (timed out, inconclusive)."""
        self.stats["milp_unknown"] += 1
        if dec.verdict == "above" and dec.x is not None:
            self.try_points(pm.input_point(dec.x)[None])
            return False, True       # unless confirmed, a point only the solver's tolerances let through
        self._note_status(dec)
        return dec.status == Status.TIME_LIMIT, dec.status != Status.TIME_LIMIT

    def _note_status(self, r):
        """Count queries a licence or size limit refused: they prove nothing, and the report says so."""
        if r.status == Status.TOO_LARGE:
            self.stats["too_large"] = self.stats.get("too_large", 0) + 1
            self.stats["too_large_message"] = r.message

    # -- the verdict -------------------------------------------------------------------------------
    def result(self, seconds: float, notes: list) -> CheckResult:
        opt = self.opt
        eps_json = None if opt.epsilon is None else [float(e) for e in self.eps]
        if self.cex is not None:
            verdict = "not_equivalent"
        elif self.pieces and all(p.verdict == "equivalent" for p in self.pieces):
            verdict = "equivalent"
        elif opt.measure and opt.epsilon is None and self.pieces and all(
                p.verdict in ("measured", "equivalent") for p in self.pieces):
            verdict = "measured"
        elif opt.measure and opt.epsilon is not None and self.pieces and np.all(self.per_out <= self.eps) \
                and all(p.verdict != "unknown" for p in self.pieces):
            verdict = "equivalent"
        else:
            verdict = "unknown"
        covered = self.cex is None and bool(self.pieces)   # the closed pieces tile the region
        upper = min(float(self.per_out.max()) if covered else np.inf, self.root_upper())
        self.stats["pieces"] = {v: sum(p.verdict == v for p in self.pieces)
                                for v in ("equivalent", "unknown", "measured")}
        if verdict == "unknown" and "unknown_reason" in self.stats:
            notes.append(self.stats["unknown_reason"])
        if self.stats.get("too_large"):
            notes.append(f"{self.stats['too_large']} MILP queries were too large for the {opt.backend} licence and "
                         f"proved nothing: {self.stats.pop('too_large_message')}")
        lower = self.seen
        if self.cex is not None:
            lower = max(lower, float(np.abs(self.cex.output_a - self.cex.output_b).max()))
        return CheckResult(verdict, opt.norm, eps_json, upper, lower, self.cex, opt.backend, seconds, self.pieces,
                           self.stats, notes, [float(v) for v in self.per_out] if covered else None)

    def root_upper(self) -> float:
        """The difference bound on the whole region (valid even when the run stopped early)."""
        if self._root is None:
            self._root = pair_bounds(self.pair, self.box.lo[None], self.box.hi[None])
        return float(np.maximum(self._root.d_hi[-1], -self._root.d_lo[-1]).max())


def _bar(show, total: int, desc: str, unit: str):
    """A progress bar, or None."""
    if not show:
        return None
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit=unit, leave=False)


def _stack_known(pbs: list[PairBounds]) -> PairBounds:
    cat = lambda name: [np.vstack([getattr(p, name)[k] for p in pbs]) for k in range(len(getattr(pbs[0], name)))]  # noqa: E731
    return PairBounds(cat("f_lo"), cat("f_hi"), cat("g_lo"), cat("g_hi"), cat("d_lo"), cat("d_hi"), [],
                      np.vstack([p.lo for p in pbs]), np.vstack([p.hi for p in pbs]))


def _split_dims(lo, hi, coef, width0):
    """Per box, the input dimension to bisect: the largest |coefficient| x width of the worst linear
    bound (the part of its spread over the box due to that input); else the widest relative dimension."""
    width = hi - lo
    score = np.abs(coef) * width
    widest = width / width0
    score = np.where(score.sum(axis=1, keepdims=True) > 0, score, widest)
    score[width <= 0] = -1.0
    return np.argmax(score, axis=1)


def check_models(model_a, model_b, box: Box | list[Box], options: CheckOptions) -> CheckResult:
    """Load two ONNX models (paths or ModelProtos) and check them on the box (see `check_networks`), or on
    a union of boxes, each decided on its own (see `check_union`)."""
    from ..ir.chain_io import load_onnx, network_from_onnx
    from ..artifacts.validate import OnnxRunner

    def load(m):
        return load_onnx(m) if isinstance(m, (str, bytes)) or hasattr(m, "__fspath__") else network_from_onnx(m)

    f, g = load(model_a), load(model_b)
    from .align import check_compatible
    check_compatible(f, g)
    boxes = box if isinstance(box, list) else [box]
    for b in boxes:
        b.check_dim(f.n_inputs)
    run_a = OnnxRunner(str(model_a) if hasattr(model_a, "__fspath__") else model_a)
    run_b = OnnxRunner(str(model_b) if hasattr(model_b, "__fspath__") else model_b)
    if len(boxes) > 1:
        from .check_union import check_networks_on_union
        return check_networks_on_union(f, g, boxes, run_a, run_b, options)
    return check_networks(f, g, boxes[0], run_a, run_b, options)


def summary(r: CheckResult, a: str = "A", b: str = "B") -> str:
    """A few lines for people: the verdict, the proven interval of the worst difference, the work done."""
    what = {"linf": f"max |{a} - {b}| <= {_eps_text(r.epsilon)}", "top1": "same top-1 class"}[r.norm]
    head = {"equivalent": f"EQUIVALENT: proved {what} on the whole region",
            "not_equivalent": f"NOT EQUIVALENT: counterexample confirmed in onnxruntime ({what} fails)",
            "unknown": f"UNKNOWN: neither proved nor refuted ({what})",
            "measured": "MEASURED: proven bound on the worst difference"}[r.verdict]
    lines = [f"equiv check: {head}",
             f"  worst difference max_j |{a}_j - {b}_j|: seen {r.max_diff_lower:.6g}, proven <= "
             + (f"{r.max_diff_upper:.6g}" if np.isfinite(r.max_diff_upper) else "(no bound)")]
    if r.counterexample is not None:
        c = r.counterexample
        lines.append(f"  counterexample: input {np.array2string(c.input, precision=6, threshold=12)}")
        lines.append(f"    {a}: {np.array2string(c.output_a, precision=5, threshold=12)} (argmax {int(np.argmax(c.output_a))})")
        lines.append(f"    {b}: {np.array2string(c.output_b, precision=5, threshold=12)} (argmax {int(np.argmax(c.output_b))})")
    p = r.stats.get("pieces", {})
    lines.append(f"  pieces: {len(r.pieces)} ({', '.join(f'{k} {v}' for k, v in p.items() if v)}), boxes bounded "
                 f"{r.stats.get('boxes', 0)}, MILP queries {r.stats.get('milp_queries', 0)} ({r.backend})")
    lines += [f"  note: {n}" for n in r.notes]
    lines.append(f"  time {r.seconds:.2f} s")
    return "\n".join(lines)


def _eps_text(eps) -> str:
    if eps is None:
        return "?"
    return f"{eps[0]:g}" if len(set(eps)) == 1 else "[" + ", ".join(f"{e:g}" for e in eps) + "]"


def certify_simplified(result, tolerance: float, backend: str = "highs", time_limit: float = 300.0,
                       progress: bool = False) -> CheckResult:
    """`simplify --certify`: check the simplified model against the original with epsilon = the tolerance."""
    from ..artifacts.validate import OnnxRunner
    opt = CheckOptions(norm="linf", epsilon=tolerance, backend=backend, time_limit=time_limit,
                       seed=result.options.seed, progress=progress)
    return check_networks(result.original, result.simplified, result.region, OnnxRunner(result.model_path),
                          OnnxRunner(result.onnx_model), opt)
