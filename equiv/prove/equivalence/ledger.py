"""The ledger of a check: closed pieces with their verdicts, the counterexample, the largest difference seen,
the clock and the statistics; and the verdict they add up to."""

from __future__ import annotations

import time

import numpy as np

from .. import falsify
from ..align import AlignedPair
from ...bounds.diff import PairBounds, pair_bounds
from ...spec.region import Box
from ...solvers import Status
from .result import CheckOptions, CheckResult, Piece, cex_eps, piece_counts


class _Clock:
    def __init__(self, limit: float):
        self.t0, self.limit = time.perf_counter(), limit

    @property
    def left(self) -> float:
        return self.limit - (time.perf_counter() - self.t0)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.t0


class Ledger:
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
        self.root: PairBounds | None = None      # bounds on the whole region
        self.f_margin: np.ndarray | None = None   # per row of C: a proven lower bound of f's margin on the region
        self.tighten = None                      # callable: known bounds of A by LP/MILP, when worth a try
        self.known: PairBounds | None = None     # bounds known on the whole region (one box), inherited by every piece

    def try_points(self, X: np.ndarray):
        if self.cex is not None or not len(X):
            return
        cex, seen = falsify.confirm(self.run_a, self.run_b, X, self.box, self.opt.norm, cex_eps(self.opt, self.eps))
        self.seen = max(self.seen, seen)
        if cex is not None:
            self.cex = cex

    def close(self, lo, hi, verdict, method, absd):
        self.pieces.append(Piece(lo.copy(), hi.copy(), verdict, method, float(np.max(absd))))
        self.per_out = np.maximum(self.per_out, absd)

    def open_verdict(self) -> str:
        """What a piece left open is: measuring without epsilon, its (valid, looser) bound still counts."""
        return "measured" if self.opt.measure and self.opt.epsilon is None else "unknown"

    def wants_tighter(self, absd) -> bool:
        """In measure mode, is this box's bound still far above the largest difference seen?"""
        if not self.opt.measure:
            return False
        return float(np.max(absd)) > self.seen * (1 + self.opt.measure_rtol) + self.opt.measure_atol

    def note_status(self, r):
        """Count queries a licence or size limit refused: they prove nothing, and the report says so."""
        if r.status == Status.TOO_LARGE:
            self.stats["too_large"] = self.stats.get("too_large", 0) + 1
            self.stats["too_large_message"] = r.message

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
        if verdict == "equivalent" and opt.measure and opt.epsilon is None:
            verdict = "measured"            # (two identical networks: the bound 0 was computed)
        covered = self.cex is None and bool(self.pieces)   # the closed pieces tile the region
        upper = min(float(self.per_out.max()) if covered else np.inf, self.root_upper())
        self.stats["pieces"] = piece_counts(self.pieces)
        if verdict == "unknown" and "unknown_reason" in self.stats:
            notes.append(self.stats["unknown_reason"])
        elif verdict == "measured" and "unknown_reason" in self.stats:
            # the bound is proven, but the search stopped before bringing it within measure_rtol of the seen value
            notes.append(f"the tightening stopped before the bound came within {opt.measure_rtol:.0%} of the largest "
                         f"difference seen: {self.stats['unknown_reason']}")
        if self.stats.get("milp_unconfirmed"):
            notes.append(f"{self.stats['milp_unconfirmed']} MILP points above epsilon (within the solver's margin "
                         "and tolerances) were not confirmed in onnxruntime and a maximisation did not settle them: "
                         "they are not counterexamples, and their pieces were bisected while the budget allowed")
        if self.stats.get("too_large"):
            notes.append(f"{self.stats['too_large']} MILP queries were too large for the {opt.backend} licence and "
                         f"proved nothing: {self.stats.pop('too_large_message')}")
        lower = self.seen
        if self.cex is not None:
            lower = max(lower, float(np.abs(self.cex.output_a - self.cex.output_b).max()))
            if opt.norm == "linf" and self.cex.score <= 1 + 1e-6:
                self.stats["near_miss"] = True
                notes.append(f"near miss: the counterexample exceeds epsilon by a factor of only {self.cex.score:.9g} "
                             "(at most 1 + 1e-6, the size of float32 rounding)")
        if self.cex is None and lower > upper:
            # the proof is about the exact functions of the stored weights; onnxruntime rounds in float32
            notes.append(float32_note(lower, upper))
        return CheckResult(verdict, opt.norm, eps_json, upper, lower, self.cex, opt.backend, seconds, self.pieces,
                           self.stats, notes, [float(v) for v in self.per_out] if covered else None)

    def root_upper(self) -> float:
        """The difference bound on the whole region (valid even when the run stopped early)."""
        if self.root is None:
            self.root = pair_bounds(self.pair, self.box.lo[None], self.box.hi[None], self.known)
        return float(np.maximum(self.root.d_hi[-1], -self.root.d_lo[-1]).max())


def float32_gap_note(box) -> str | None:
    """The note for inputs fixed at a value no float32 equals (onnxruntime runs the nearest float32, just
    outside the region), or None."""
    from ...spec.region import float32_gaps
    gaps = float32_gaps(box)
    if not gaps.size:
        return None
    near = box.lo[gaps].astype(np.float32)
    return (f"inputs {gaps.tolist()} are fixed at values with no float32 in their interval ({box.lo[gaps].tolist()}): "
            f"onnxruntime points use the nearest float32 values ({[float(v) for v in near]}), just outside the "
            "region; the proof covers the box as given, and a counterexample or a difference seen is at those values")


def float32_note(seen: float, upper: float) -> str:
    """Why onnxruntime may show a difference above the proven one (the proof is about exact arithmetic)."""
    return (f"onnxruntime's outputs differ by up to {seen:.3g}, above the proven {upper:.3g}: the proof bounds the "
            "networks' exact functions (stored weights, real arithmetic), and float32 evaluation in a different "
            "summation order adds rounding of about 1e-7 relative")
