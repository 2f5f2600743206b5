"""Rows of `equiv bench --suite scale` for deep dense chains: the windowed solver
stage (slopes, windowed LP/MILP, one budget) on MNIST nets, with stable/unknown counts, the windows used
and peak memory."""

from __future__ import annotations

import resource
import time
from pathlib import Path

# (network, spec, --milp-budget or None, windowed mode)
CASES = [("mnist-net_256x4.onnx", "prop_0_0.03.vnnlib", None, "auto"),
         ("mnist-net_256x4.onnx", "prop_0_0.03.vnnlib", 20.0, "auto"),
         ("mnist-net_256x4.onnx", "prop_7_0.05.vnnlib", 60.0, "auto"),
         ("mnist-net_256x6.onnx", "prop_0_0.03.vnnlib", 60.0, "auto"),
         ("mnist-net_256x4.onnx", "prop_0_0.03.vnnlib", None, "off")]


def chain_rows(root: Path, cases=CASES) -> list[dict]:
    from ..ir.chain_io import load_onnx
    from ..prove.stability import StabilityOptions, prove_stability
    from ..spec.region import load_region
    rows = []
    for net_name, spec, budget, mode in cases:
        path = root / "mnist_fc" / net_name
        if not path.is_file():
            continue
        net, box = load_onnx(path), load_region(spec=str(root / "mnist_fc" / spec))[0]
        t0 = time.perf_counter()
        r = prove_stability(net, box, StabilityOptions(milp_budget=budget, windowed=mode))
        rows.append({"network": net_name, "region": spec, "budget": budget, "windowed": mode,
                     "seconds": round(time.perf_counter() - t0, 1), "stable": r.count("dead") + r.count("active"),
                     "unknown": r.count("unknown"), "relus": net.n_relus,
                     "windows": {str(k): v for k, v in sorted(r.queries.get("windows", {}).items())},
                     "bottleneck": r.queries.get("bottleneck", {}).get("milp", 0),
                     "peak_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)})
    return rows


def chain_lines(rows: list[dict]) -> list[str]:
    lines = ["", "## Deep chains: slopes, windowed LP/MILP, one budget", "",
             "`equiv simplify MODEL --spec SPEC [--milp-budget S]`; windows = MILP decisions per window width "
             "(hidden layers encoded before the neuron); bottleneck = MILP decisions on a layer's one live neuron that "
             "decide the next layer (`stability_window._bottleneck`); windowed off = the per-layer full-depth LP/MILP "
             "stages.",
             "", "| network | region | budget (s) | windowed | time (s) | stable | unknown | windows | bottleneck | "
             "peak MiB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['network']} | {r['region']} | {r['budget'] or '-'} | {r['windowed']} | {r['seconds']} | "
                     f"{r['stable']} / {r['relus']} | {r['unknown']} | {r['windows']} | {r.get('bottleneck', 0)} | "
                     f"{r['peak_mib']} |")
    return lines
