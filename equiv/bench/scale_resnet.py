"""Rows of `equiv bench --suite scale` for ResNet-2B: the whole graph-pipeline `simplify` (load, sampling,
DeepPoly, slopes, MILP decisions under one budget, reduction, export, validation in onnxruntime) on each
shared spec, against alpha-CROWN's stable count where shared/benchmarks/cifar/README.md gives one."""

from __future__ import annotations

import resource
import time
from pathlib import Path

NETWORK = "cifar/resnet_2b.onnx"
# (spec, alpha-CROWN's stable count, branch and bound on): img386 also without it (the MILPs alone, as before)
SPECS = [(f"cifar/resnet_2b-img{i}-eps2_255.vnnlib", 5310 if i == 386 else None, True) for i in (19, 386, 2399, 4356)]
SPECS.insert(2, ("cifar/resnet_2b-img386-eps2_255.vnnlib", 5310, False))
# solver seconds (slopes, branch and bound, MILP decisions): 40 s keeps the whole run within a minute
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
    for spec, alpha_crown, bab in SPECS:
        t0 = time.perf_counter()
        g = load_graph(path)
        box, _ = load_region(spec=str(root / spec))
        res = simplify_graph(g, OnnxRunner(str(path)), box, method="milp", budget=BUDGET, bab=bab)
        c = res.phases.counts()
        rows.append({"network": Path(NETWORK).name, "region": Path(spec).name, "budget": BUDGET,
                     "seconds": round(time.perf_counter() - t0, 1),
                     "prove_seconds": round(res.seconds["prove"], 1),
                     "validate_seconds": round(res.seconds["validate"], 1),
                     "stable": c["dead"] + c["active"], "unknown": c["unknown"], "relus": g.n_relus,
                     "alpha_crown": alpha_crown, "bab": bab, "bab_proved": res.phases.stats.get("bab_proved", 0),
                     "milp_proved": res.phases.stats.get("milp_proved", 0),
                     "validation_points": res.validation.samples,
                     "validation_max_abs_diff": res.validation.max_abs_diff,
                     "peak_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)})
    return rows


def resnet_lines(rows: list[dict]) -> list[str]:
    lines = ["", "## ResNet-2B: the whole simplify", "",
             f"`equiv simplify {NETWORK} --spec SPEC --milp-budget {BUDGET:g}`, timed from loading the model to the "
             "end of validation (Python start-up and imports excluded); alpha-CROWN = its stable count from "
             "shared/benchmarks/cifar/README.md (given for img386 only); bab = branch and bound on ReLU phases "
             "before the MILPs (`--no-bab`: off), with the positions it proved.", "",
             "| region | budget (s) | bab | time (s) | prove / validate (s) | stable | alpha-CROWN | unknown | "
             "bab proofs | MILP proofs | validation max diff (points) | peak MiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['region']} | {r['budget']:g} | {'on' if r['bab'] else 'off'} | {r['seconds']} | "
                     f"{r['prove_seconds']} / {r['validate_seconds']} | {r['stable']} / {r['relus']} | "
                     f"{r['alpha_crown'] or '-'} | {r['unknown']} | {r['bab_proved']} | {r['milp_proved']} | "
                     f"{r['validation_max_abs_diff']:.3g} "
                     f"({r['validation_points']}) | {r['peak_mib']} |")
    return lines
