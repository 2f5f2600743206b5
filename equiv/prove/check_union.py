"""`check` on a union of boxes (a VNN-LIB disjunction): each box decided on its own, the verdicts combined.

Checking the hull instead would be sound for a proof but not for a refutation: a counterexample in the
hull may lie outside every box of the spec, and "not equivalent" would then be a wrong verdict.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from .equivalence import CheckOptions, CheckResult, check_networks, piece_counts
from ..spec.region import Box


def check_networks_on_union(f, g, boxes: list[Box], run_a, run_b, options: CheckOptions, carried=None,
                            search: bool = True) -> CheckResult:
    """Equivalent when every box is; not equivalent at the first box with a confirmed counterexample (a
    point of that box, so of the region); otherwise unknown.  The time limit is shared by the boxes."""
    t0 = time.perf_counter()
    results: list[CheckResult] = []
    for i, box in enumerate(boxes):
        left = options.time_limit - (time.perf_counter() - t0)
        if left <= 0:
            break
        share = left / (len(boxes) - i)          # what is left, spread over the boxes still to do
        r = check_networks(f, g, box, run_a, run_b, dataclasses.replace(options, time_limit=share), carried=carried,
                           search=search)
        results.append(r)
        if r.verdict == "not_equivalent":
            break
    return combine(results, len(boxes), options, time.perf_counter() - t0)


def combine(results: list[CheckResult], n_boxes: int, options: CheckOptions, seconds: float) -> CheckResult:
    """One verdict for the region from the verdicts of its boxes (in order; possibly fewer than n_boxes)."""
    bad = [r for r in results if r.verdict == "not_equivalent"]
    done = len(results) == n_boxes
    if bad:
        verdict = "not_equivalent"
    elif done and all(r.verdict == "equivalent" for r in results):
        verdict = "equivalent"
    elif done and all(r.verdict in ("equivalent", "measured") for r in results) and any(
            r.verdict == "measured" for r in results):
        verdict = "measured"
    else:
        verdict = "unknown"
    upper = max(r.max_diff_upper for r in results) if done and results else np.inf
    per_out = None
    if done and results and all(r.per_output_upper is not None for r in results):
        per_out = np.max([r.per_output_upper for r in results], axis=0).tolist()
    stats = {"input_boxes": n_boxes, "input_boxes_checked": len(results),
             "per_box": [{"verdict": r.verdict, "max_diff_upper": _num(r.max_diff_upper),
                          "max_diff_lower": r.max_diff_lower, "seconds": round(r.seconds, 4)} for r in results]}
    for key in ("boxes", "milp_queries", "milp_unknown"):
        stats[key] = sum(int(r.stats.get(key, 0)) for r in results)
    pieces = [p for r in results for p in r.pieces]
    stats["pieces"] = piece_counts(pieces)
    notes = [f"the region is a union of {n_boxes} input boxes (a disjunction in the spec); each box was checked "
             "on its own"]
    if not done and not bad:
        notes.append(f"only {len(results)} of {n_boxes} boxes were checked before the time limit")
    for i, r in enumerate(results):
        notes += [f"box {i}: {n}" for n in r.notes]
    first = results[0] if results else None
    return CheckResult(
        verdict=verdict, norm=options.norm, epsilon=first.epsilon if first else None,
        max_diff_upper=float(upper), max_diff_lower=max((r.max_diff_lower for r in results), default=0.0),
        counterexample=bad[0].counterexample if bad else None, backend=options.backend, seconds=seconds,
        pieces=pieces, stats=stats, notes=notes, per_output_upper=per_out)


def _num(v: float):
    return float(v) if np.isfinite(v) else None
