"""`equiv bench --suite graphs`: the CIFAR/MNIST conv and residual nets through the graph pipeline.

Per case: import time, interval and DeepPoly stable counts (against the CROWN reference counts of
shared/benchmarks/cifar/README.md), DeepPoly time and peak memory of its arrays (tracemalloc), and a
whole `simplify` (ReLUs after, params (weights and biases) and mask entries, file size, validation, time).  Results in results/graphs.md and .json.
"""

from __future__ import annotations

import statistics
import time
import tracemalloc
from pathlib import Path

from tqdm import tqdm

from ..artifacts.files import write_json_atomic, write_text_atomic
from .core import machine
from ..bounds.engine import deeppoly_graph, interval_graph
from ..apps.graph_simplify import simplify_graph
from ..ir import load_graph
from ..spec.region import load_region
from ..artifacts.validate import OnnxRunner

# (network, spec, CROWN reference count or None)
CASES = [("cifar/resnet_2b.onnx", f"cifar/resnet_2b-img{i}-eps2_255.vnnlib", 5284 if i == 386 else None)
         for i in (19, 386, 2399, 4356)] + [
    ("cifar/cifar_deep_kw.onnx", "cifar/cifar_deep_kw-img386-eps0.024183006535947717.vnnlib", 5821),
    ("cifar/cifar_wide_kw.onnx", "cifar/cifar_wide_kw-img19-eps0.007973856209150327.vnnlib", 5715),
    ("cifar/Convnet_avgpool.onnx", "cifar/avgpool_prop_0_0.02.vnnlib", 21085),
    ("cifar/cifar10_small.onnx", "cifar/networkcifar10_small_index1189_eps0.012_target1_orig0.vnnlib", None),
]


def run_graph_case(root: Path, network: str, spec: str, reference) -> dict:
    t0 = time.perf_counter()
    g = load_graph(root / network)
    t_load = time.perf_counter() - t0
    box, _ = load_region(spec=str(root / spec))
    ib = interval_graph(g, box)
    tracemalloc.start()
    t0 = time.perf_counter()
    dp = deeppoly_graph(g, box)
    t_dp = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    t0 = time.perf_counter()
    res = simplify_graph(g, OnnxRunner(str(root / network)), box, method="deeppoly")
    t_simplify = time.perf_counter() - t0
    return {"network": network, "spec": spec, "relus": g.n_relus, "import_seconds": round(t_load, 3),
            "interval_stable": ib.counts(g)["stable"], "deeppoly_stable": dp.counts(g)["stable"],
            "crown_reference": reference, "deeppoly_seconds": round(t_dp, 3),
            "deeppoly_peak_mib": round(peak / 2 ** 20, 1), "relus_after": res.simplified.n_relus,
            "params_before": g.n_params, "params_after": res.simplified.n_params,
            "mask_entries_after": res.simplified.n_mask_entries, "folded": res.folds.to_json(),
            "file_bytes_before": (root / network).stat().st_size, "file_bytes_after": res.onnx_model.ByteSize(),
            "macs_before": g.n_macs, "macs_after": res.simplified.n_macs,
            "unknown": res.phases.counts()["unknown"], "validation_points": res.validation.samples,
            "validation_max_abs_diff": res.validation.max_abs_diff, "simplify_seconds": round(t_simplify, 3)}


def run_graphs_bench(root: Path, out: Path, limit: int | None = None) -> dict:
    rows = []
    for network, spec, ref in tqdm(CASES[:limit], desc="graphs", unit="case", disable=None):
        rows.append(run_graph_case(root, network, spec, ref))
    data = {"suite": "graphs", "machine": machine(), "cases": rows}
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(data, out / "graphs.json")
    write_text_atomic(out / "graphs.md", _markdown(data))
    return data


def _markdown(data: dict) -> str:
    m = data["machine"]
    lines = ["# equiv bench --suite graphs", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}. DeepPoly on the DAG (graph engine); "
             "`simplify` = sampling + DeepPoly phases, masked ReLUs, folds and dead-channel pruning, export, validation "
             "in onnxruntime.", "",
             "| network | spec | ReLUs | interval | DeepPoly | CROWN ref. | DeepPoly s | peak MiB | ReLUs after | "
             "unknown | params before → after | mask entries | file KB before → after | MACs before → after | simplify s | "
             "validation max diff (points) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in data["cases"]:
        lines.append(f"| {Path(r['network']).stem} | {Path(r['spec']).stem} | {r['relus']} | {r['interval_stable']} | "
                     f"{r['deeppoly_stable']} | {r['crown_reference'] or '–'} | {r['deeppoly_seconds']} | "
                     f"{r['deeppoly_peak_mib']} | {r['relus_after']} | {r['unknown']} | "
                     f"{r['params_before']} → {r['params_after']} | {r['mask_entries_after']} | "
                     f"{r['file_bytes_before'] / 1000:.0f} → {r['file_bytes_after'] / 1000:.0f} | "
                     f"{r['macs_before']} → {r['macs_after']} | "
                     f"{r['simplify_seconds']} | "
                     f"{r['validation_max_abs_diff']:.3g} ({r['validation_points']}) |")
    if data["cases"]:
        lines += ["", f"Median DeepPoly time {statistics.median(r['deeppoly_seconds'] for r in data['cases']):.2f} s, "
                      f"median simplify time {statistics.median(r['simplify_seconds'] for r in data['cases']):.2f} s."]
    return "\n".join(lines) + "\n"
