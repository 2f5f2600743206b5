"""Rows of `equiv bench --suite scale` for ResNet-2B: the whole graph-pipeline `simplify` (load, sampling,
DeepPoly, slopes, MILP decisions under one budget, reduction, export, validation in onnxruntime) on each
shared spec, against alpha-CROWN's stable count where shared/benchmarks/cifar/README.md gives one."""

from __future__ import annotations

import resource
import time
from pathlib import Path

NETWORK = "cifar/resnet_2b.onnx"
SPECS = [(f"cifar/resnet_2b-img{i}-eps2_255.vnnlib", 5310 if i == 386 else None) for i in (19, 386, 2399, 4356)]
# solver seconds (slopes and MILP decisions): the MILP yield falls with time (img386: 45 proofs in the first
# 32 s of MILP, 9 more in the next 20 s), so 40 s keeps the whole run within a minute
BUDGET = 40.0


def resnet_rows(root: Path) -> list[dict]:
    from ..apps.graph_simplify import simplify_graph
    from ..artifacts.validate import OnnxRunner
    from ..ir import load_graph
    from ..spec.region import load_region
    rows = []
    path = root / NETWORK
    if not path.is_file():
        return rows
    for spec, alpha_crown in SPECS:
        t0 = time.perf_counter()
        g = load_graph(path)
        box, _ = load_region(spec=str(root / spec))
        res = simplify_graph(g, OnnxRunner(str(path)), box, method="milp", budget=BUDGET)
        c = res.phases.counts()
        rows.append({"network": Path(NETWORK).name, "region": Path(spec).name, "budget": BUDGET,
                     "seconds": round(time.perf_counter() - t0, 1),
                     "prove_seconds": round(res.seconds["prove"], 1),
                     "validate_seconds": round(res.seconds["validate"], 1),
                     "stable": c["dead"] + c["active"], "unknown": c["unknown"], "relus": g.n_relus,
                     "alpha_crown": alpha_crown, "milp_proved": res.phases.stats.get("milp_proved", 0),
                     "validation_points": res.validation.samples,
                     "validation_max_abs_diff": res.validation.max_abs_diff,
                     "peak_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)})
    return rows


def resnet_lines(rows: list[dict]) -> list[str]:
    lines = ["", "## ResNet-2B: the whole simplify", "",
             f"`equiv simplify {NETWORK} --spec SPEC --milp-budget {BUDGET:g}`, timed from loading the model to the "
             "end of validation (Python start-up and imports excluded); alpha-CROWN = its stable count from "
             "shared/benchmarks/cifar/README.md (given for img386 only).", "",
             "| region | budget (s) | time (s) | prove / validate (s) | stable | alpha-CROWN | unknown | MILP proofs | "
             "validation max diff (points) | peak MiB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['region']} | {r['budget']:g} | {r['seconds']} | {r['prove_seconds']} / "
                     f"{r['validate_seconds']} | {r['stable']} / {r['relus']} | {r['alpha_crown'] or '-'} | "
                     f"{r['unknown']} | {r['milp_proved']} | {r['validation_max_abs_diff']:.3g} "
                     f"({r['validation_points']}) | {r['peak_mib']} |")
    return lines
