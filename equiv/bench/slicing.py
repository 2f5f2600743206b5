"""`equiv bench --suite slicing`: slice real ACAS Xu networks on whole property boxes; write
results/slicing.md and results/slicing.json.

Each case makes a family (bisection tree, per-piece proofs, slice and dispatcher validation against the
original on >= 100 000 points), writes it to a temporary folder, and re-checks it with `verify_family`.
The reference numbers: the ReLUs of ONE network simplified on the whole box (the tree's root), and the
unstable ReLUs that interval + DeepPoly bounds alone leave on the same final pieces.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from .core import machine
from ..errors import InputFileError
from ..spec.region import load_region
from ..artifacts.files import write_json_atomic, write_text_atomic
from ..apps.slicing import SliceOptions, slice_model, verify_family, write_family
from ..prove.stability import StabilityOptions

# the issue's target for the first case: at most 64 slices, mean ReLUs <= 45, max <= 80, under 2 minutes
TARGET = {"relus_mean": 45, "relus_max": 80, "seconds": 120.0}


@dataclass
class SliceCase:
    network: str          # relative to the benchmarks folder
    prop: str
    strategy: str = "unstable"
    max_slices: int = 64
    target: bool = False  # the case the issue's target is about


def slicing_cases() -> list[SliceCase]:
    acas = "acasxu/ACASXU_run2a_{}_{}_batch_2000.onnx"
    return [SliceCase(acas.format(1, 1), "acasxu/prop_1.vnnlib", target=True),
            SliceCase(acas.format(1, 1), "acasxu/prop_1.vnnlib", strategy="width"),
            SliceCase(acas.format(2, 1), "acasxu/prop_1.vnnlib"),
            SliceCase(acas.format(5, 5), "acasxu/prop_1.vnnlib")]


def run_slicing_case(case: SliceCase, root: Path, time_limit: float, milp_budget: float | None) -> dict:
    """One family, made, written, and verified; its numbers as a result row."""
    box, source = load_region(spec=str(root / case.prop))
    sopt = SliceOptions(max_slices=case.max_slices, strategy=case.strategy)
    t0 = time.perf_counter()
    fam = slice_model(root / case.network, box, StabilityOptions(time_limit=time_limit, milp_budget=milp_budget),
                      sopt, region_source=source)
    with tempfile.TemporaryDirectory(prefix="equiv-slicing-") as tmp:
        manifest = write_family(fam, tmp)
        seconds = time.perf_counter() - t0
        t1 = time.perf_counter()
        report = verify_family(tmp, model=str(root / case.network), samples=sopt.dispatch_samples)
        verify_seconds = time.perf_counter() - t1
    s = manifest["summary"]
    row = {"network": Path(case.network).stem.replace("_batch_2000", ""), "prop": Path(case.prop).stem,
           "strategy": case.strategy, "target_case": case.target, "relus_whole_box": fam.tree.relus,
           **s, "seconds": seconds, "seconds_tree": fam.seconds["tree"], "verified": report.ok,
           "verify_seconds": verify_seconds, "verify_failures": [c.detail for c in report.checks if not c.ok],
           "notes": manifest["notes"]}
    if case.target:
        row["target_met"] = (s["relus_mean"] <= TARGET["relus_mean"] and s["relus_max"] <= TARGET["relus_max"]
                             and seconds < TARGET["seconds"] and s["slices"] <= case.max_slices)
    return row


def run_slicing_bench(root: Path, out: Path, time_limit: float = 10.0, milp_budget: float | None = 60.0,
                      limit: int | None = None) -> dict:
    """Run every case (or the first `limit`), writing the results after each one."""
    if not (root / "acasxu").is_dir():
        raise InputFileError(f"benchmark folder not found: {root} (expected acasxu/ inside)")
    cases = slicing_cases()[:limit]
    rows = []
    data = {}
    for case in tqdm(cases, desc="bench slicing", unit="case"):
        rows.append(run_slicing_case(case, root, time_limit, milp_budget))
        data = {"suite": "slicing", "machine": machine(), "time_limit_per_query": time_limit,
                "milp_budget_per_piece": milp_budget, "target": TARGET, "cases_planned": len(cases), "cases": rows,
                "all_verified": all(r["verified"] for r in rows)}
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(data, out / "slicing.json")
        write_text_atomic(out / "slicing.md", _markdown(data))
    return data


def _markdown(data: dict) -> str:
    info, rows = data["machine"], data["cases"]
    lines = ["# equiv bench --suite slicing", "",
             f"Machine: {info['cpu']}, {info['cores']} cores, Python {info['python']} ({info['platform']}).",
             f"Each case: `equiv slice` with at most 64 slices, HiGHS, {data['time_limit_per_query']:g} s per query, "
             f"at most {data['milp_budget_per_piece']} s of MILP per piece; "
             "then `equiv slice --verify` on the written family. 'whole box' is ONE network simplified on the whole "
             "region; 'DeepPoly alone' counts the unstable ReLUs that interval + DeepPoly bounds leave on the same "
             "final pieces (mean / max). Time is wall-clock for making the family: bisection and proofs, "
             "validation of every slice (>= 10 000 points of its box) and of the dispatcher (100 000 random points "
             "of the region plus points on every slice face and corner), and writing it.",
             f"Cases done: {len(rows)} of {data['cases_planned']}.", "",
             "| network | region | strategy | slices | ReLUs original | whole box | ReLUs per slice min / mean / max | "
             "DeepPoly alone mean / max | params mean | time (s) | tree (s) | dispatcher points | dispatcher max diff | "
             "verified |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['network']} | {r['prop']} | {r['strategy']} | {r['slices']} | {r['relus_original']} | "
            f"{r['relus_whole_box']} | {r['relus_min']} / {r['relus_mean']:.1f} / {r['relus_max']} | "
            f"{r['prepass_unstable_mean']:.1f} / {r['prepass_unstable_max']} | {r['params_mean']:.0f} | "
            f"{r['seconds']:.1f} | {r['seconds_tree']:.1f} | {r['dispatch_validation_samples']} | "
            f"{r['dispatch_max_abs_diff']:.1e} | {'yes' if r['verified'] else 'NO'} ({r['verify_seconds']:.1f} s) |")
    target = [r for r in rows if r.get("target_case")]
    if target:
        r, t = target[0], data["target"]
        lines += ["", f"Target (ACAS Xu 1_1 on prop_1, at most 64 slices: mean ReLUs <= {t['relus_mean']}, max <= "
                      f"{t['relus_max']}, under {t['seconds']:.0f} s): **{'met' if r['target_met'] else 'MISSED'}** "
                      f"(mean {r['relus_mean']:.1f}, max {r['relus_max']}, {r['seconds']:.1f} s; dispatcher max diff "
                      f"{r['dispatch_max_abs_diff']:.1e} on {r['dispatch_validation_samples']} points)."]
    lines += ["", "Reproduce: `equiv bench --suite slicing` (writes results/slicing.md and results/slicing.json).", ""]
    return "\n".join(lines)
