"""What a check is asked (`CheckOptions`) and what it answers (`CheckResult`, its pieces, its summary)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .. import falsify
from ...errors import InputFileError

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
    split_choice: str = "auto"     # guess | lookahead | auto (lookahead for two networks of one shape)
    tighten: bool = True           # prove A's neuron bounds by LP/MILP when the first bound does not decide
                                   # (networks of different shapes, or a region too wide to split)
    bab: bool = True               # top-1 margins: branch and bound on ReLU phases (alpha-beta-CROWN bounds,
                                   # `prove.relu_bab`) before each MILP
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
        if self.split_choice not in ("auto", "guess", "lookahead"):
            raise InputFileError(f"--split-choice must be auto, guess or lookahead, got '{self.split_choice}'")
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


CHAIN_KINDS = ("equivalent", "unknown", "measured")
GRAPH_KINDS = ("equivalent", "unknown", "not_equivalent", "measured")


def piece_counts(pieces: list, kinds: tuple = CHAIN_KINDS) -> dict:
    """How many pieces have each verdict of `kinds` (the report's `stats.pieces`)."""
    return {v: sum(p.verdict == v for p in pieces) for v in kinds}


def eps_vector(opt: CheckOptions, n_out: int) -> np.ndarray:
    if opt.epsilon is None:
        return np.ones(n_out)        # measure without epsilon: scores are absolute differences
    e = np.atleast_1d(np.asarray(opt.epsilon, float))
    if e.size == 1:
        return np.full(n_out, float(e[0]))
    if e.size != n_out:
        raise InputFileError(f"epsilon has {e.size} values but the models have {n_out} outputs")
    return e


def cex_eps(opt: CheckOptions, eps: np.ndarray) -> np.ndarray | None:
    """What a point must exceed to be a counterexample (`falsify.confirm`): None when measuring without
    epsilon, where no point is one (eps_vector's ones only scale the search there)."""
    return None if opt.norm == "linf" and opt.epsilon is None else eps


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
    kinds = ", ".join(f"{k} {v}" for k, v in r.stats.get("pieces", {}).items() if v)
    closed = f"{len(r.pieces)}" + (f" ({kinds})" if kinds else "")
    if r.verdict == "not_equivalent" and r.pieces:
        closed += " closed before the counterexample"
    lines.append(f"  pieces: {closed}, boxes bounded {r.stats.get('boxes', 0)}, MILP queries "
                 f"{r.stats.get('milp_queries', 0)} ({r.backend})")
    lines += [f"  note: {n}" for n in r.notes]
    lines.append(f"  time {r.seconds:.2f} s")
    return "\n".join(lines)


def _eps_text(eps) -> str:
    if eps is None:
        return "?"
    return f"{eps[0]:g}" if len(set(eps)) == 1 else "[" + ", ".join(f"{e:g}" for e in eps) + "]"
