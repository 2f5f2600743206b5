"""`equiv bench --suite graphs`: the CIFAR/MNIST conv and residual nets through the graph pipeline.

Per case: import time, interval and DeepPoly stable counts (against the CROWN / alpha-CROWN reference
counts of shared/benchmarks/cifar/README.md), DeepPoly time and peak memory of its arrays (tracemalloc),
a whole `simplify` as a user runs it (default method: slopes + MILP decisions, `--milp-budget 60`;
stable count, ReLUs after, params (weights and biases) and mask entries, file size, validation, time)
and, for ResNet-2B, `check` against a copy with float16-rounded weights (top-1 and epsilon 0.05) and, on
the first spec, against a copy with rescaled Conv channels and a Mul after each (top-1 and epsilon 1e-4).
Results in results/graphs.md and .json.
"""

from __future__ import annotations

import statistics
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from tqdm import tqdm

from ..artifacts.files import write_json_atomic, write_text_atomic
from .core import machine
from ..bounds.engine import deeppoly_graph, interval_graph
from ..apps.graph_simplify import simplify_graph
from ..apps.simplify import sha256_of
from ..prove.graph_carried import attach_graph_claims
from ..ir import load_graph
from ..spec.region import load_region
from ..artifacts.validate import OnnxRunner

# (network, spec, CROWN reference count, alpha-CROWN reference count), from shared/benchmarks/cifar/README.md
CASES = [("cifar/resnet_2b.onnx", f"cifar/resnet_2b-img{i}-eps2_255.vnnlib", *((5284, 5310) if i == 386 else (None, None)))
         for i in (19, 386, 2399, 4356)] + [
    ("cifar/cifar_deep_kw.onnx", "cifar/cifar_deep_kw-img386-eps0.024183006535947717.vnnlib", 5821, 5858),
    ("cifar/cifar_wide_kw.onnx", "cifar/cifar_wide_kw-img19-eps0.007973856209150327.vnnlib", 5715, 5716),
    ("cifar/Convnet_avgpool.onnx", "cifar/avgpool_prop_0_0.02.vnnlib", 21085, 21085),
    ("cifar/cifar10_small.onnx", "cifar/networkcifar10_small_index1189_eps0.012_target1_orig0.vnnlib", None, None),
]
MILP_BUDGET = 60.0
CHECK_TIME_LIMIT = 120.0


def run_graph_case(root: Path, network: str, spec: str, crown, alpha_crown) -> dict:
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
    res = simplify_graph(g, OnnxRunner(str(root / network)), box, method="milp", budget=MILP_BUDGET)
    t_simplify = time.perf_counter() - t0
    # the record `equiv simplify` stores in the file (so file sizes are those of the files users get)
    attach_graph_claims(res.onnx_model, sha256_of(root / network), res.phases.method, res.phases.dead,
                        res.phases.active, box)
    c = res.phases.counts()
    return {"network": network, "spec": spec, "relus": g.n_relus, "import_seconds": round(t_load, 3),
            "interval_stable": ib.counts(g)["stable"], "deeppoly_stable": dp.counts(g)["stable"],
            "crown_reference": crown, "alpha_crown_reference": alpha_crown, "deeppoly_seconds": round(t_dp, 3),
            "deeppoly_peak_mib": round(peak / 2 ** 20, 1), "stable": c["dead"] + c["active"],
            "relus_after": res.simplified.n_relus,
            "params_before": g.n_params, "params_after": res.simplified.n_params,
            "mask_entries_after": res.simplified.n_mask_entries, "folded": res.folds.to_json(),
            "file_bytes_before": (root / network).stat().st_size, "file_bytes_after": res.onnx_model.ByteSize(),
            "macs_before": g.n_macs, "macs_after": res.simplified.n_macs,
            "unknown": c["unknown"], "validation_points": res.validation.samples,
            "validation_max_abs_diff": res.validation.max_abs_diff, "simplify_seconds": round(t_simplify, 3),
            "prove_seconds": round(res.seconds["prove"], 3), "validate_seconds": round(res.seconds["validate"], 3),
            "queries": {k: round(v, 3) if isinstance(v, float) else v for k, v in res.phases.stats.items()}}


def float16_copy(src: Path, dst: Path) -> None:
    """The model with every float32 initializer rounded to float16 and back (same graph, same ops)."""
    model = onnx.load(str(src))
    for t in model.graph.initializer:
        a = numpy_helper.to_array(t)
        if a.dtype == np.float32:
            t.CopyFrom(numpy_helper.from_array(a.astype(np.float16).astype(np.float32), t.name))
    onnx.save(model, str(dst))


def rescaled_copy(src: Path, dst: Path) -> None:
    """The model with each Conv's output channels divided by c (c in [0.5, 2], seeded) and a Mul by c after it:
    the same function with a BatchNorm-like op left unfolded, so another linear structure (a skeleton pair)."""
    model = onnx.load(str(src))
    inits = {t.name: t for t in model.graph.initializer}
    rng, nodes = np.random.default_rng(0), []
    for n in model.graph.node:
        nodes.append(n)
        if n.op_type != "Conv":
            continue
        W = numpy_helper.to_array(inits[n.input[1]]).astype(np.float64)
        c = rng.uniform(0.5, 2.0, W.shape[0])
        inits[n.input[1]].CopyFrom(numpy_helper.from_array((W / c[:, None, None, None]).astype(np.float32), n.input[1]))
        if len(n.input) > 2:
            b = numpy_helper.to_array(inits[n.input[2]]).astype(np.float64)
            inits[n.input[2]].CopyFrom(numpy_helper.from_array((b / c).astype(np.float32), n.input[2]))
        out = n.output[0]
        n.output[0] = out + "_unscaled"
        model.graph.initializer.append(numpy_helper.from_array(c.reshape(1, -1, 1, 1).astype(np.float32), out + "_c"))
        nodes.append(onnx.helper.make_node("Mul", [out + "_unscaled", out + "_c"], [out]))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.save(model, str(dst))


COPIES = {"float16": float16_copy, "rescaled": rescaled_copy}


def run_check_case(root: Path, network: str, spec: str, norm: str, tmp: Path, copy_kind: str = "float16",
                   epsilon: float = 0.05) -> dict:
    """`check` of a network against a copy (float16-rounded weights, or rescaled channels), as the CLI runs it."""
    from ..prove.equivalence import CheckOptions
    from ..prove.graph_check import check_graphs
    copy = tmp / f"{Path(network).stem}_{copy_kind}.onnx"
    if not copy.exists():
        COPIES[copy_kind](root / network, copy)
    box, _ = load_region(spec=str(root / spec))
    eps = epsilon if norm == "linf" else None
    opt = CheckOptions(epsilon=eps, norm=norm, time_limit=CHECK_TIME_LIMIT)
    t0 = time.perf_counter()
    res = check_graphs(load_graph(root / network), load_graph(copy), [box], OnnxRunner(str(root / network)),
                       OnnxRunner(str(copy)), opt)
    return {"network": network, "spec": spec, "copy": copy_kind, "norm": norm, "epsilon": eps,
            "verdict": res.verdict, "max_diff_seen": res.max_diff_lower, "max_diff_proven": res.max_diff_upper,
            "seconds": round(time.perf_counter() - t0, 2)}


def run_graphs_bench(root: Path, out: Path, limit: int | None = None) -> dict:
    rows, checks = [], []
    for network, spec, crown, alpha in tqdm(CASES[:limit], desc="graphs", unit="case", disable=None):
        rows.append(run_graph_case(root, network, spec, crown, alpha))
    resnets = [(n, s) for n, s, *_ in CASES[:limit] if "resnet" in n]
    with tempfile.TemporaryDirectory() as tmp:
        # every ResNet case against its float16 copy (top-1, and epsilon 0.05); the first against a rescaled
        # copy too (the same function: top-1, and epsilon 1e-4)
        jobs = [(c, n, "float16", 0.05) for c in resnets for n in ("top1", "linf")]
        jobs += [(c, n, "rescaled", 1e-4) for c in resnets[:1] for n in ("top1", "linf")]
        for (network, spec), norm, kind, eps in tqdm(jobs, desc="check", unit="case", disable=None):
            checks.append(run_check_case(root, network, spec, norm, Path(tmp), kind, eps))
    data = {"suite": "graphs", "machine": machine(), "cases": rows, "checks": checks}
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(data, out / "graphs.json")
    write_text_atomic(out / "graphs.md", _markdown(data))
    return data


def _markdown(data: dict) -> str:
    m = data["machine"]
    lines = ["# equiv bench --suite graphs", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}. DeepPoly on the DAG (graph engine); "
             "`simplify` as a user runs it: sampling and affine corners, DeepPoly, optimised slopes, branch and "
             f"bound, MILP decisions with `--milp-budget {MILP_BUDGET:g}`, masked ReLUs, folds and dead-channel "
             "pruning, export, validation in onnxruntime.", "",
             "| network | spec | ReLUs | interval | DeepPoly | CROWN ref. | DeepPoly s | peak MiB | stable (simplify) | "
             "α-CROWN ref. | unknown | ReLUs after | params before → after | mask entries | file KB before → after | "
             "MACs before → after | simplify s (prove / validate) | validation max diff (points) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in data["cases"]:
        lines.append(f"| {Path(r['network']).stem} | {Path(r['spec']).stem} | {r['relus']} | {r['interval_stable']} | "
                     f"{r['deeppoly_stable']} | {r['crown_reference'] or '–'} | {r['deeppoly_seconds']} | "
                     f"{r['deeppoly_peak_mib']} | {r['stable']} | {r['alpha_crown_reference'] or '–'} | "
                     f"{r['unknown']} | {r['relus_after']} | "
                     f"{r['params_before']} → {r['params_after']} | {r['mask_entries_after']} | "
                     f"{r['file_bytes_before'] / 1000:.0f} → {r['file_bytes_after'] / 1000:.0f} | "
                     f"{r['macs_before']} → {r['macs_after']} | "
                     f"{r['simplify_seconds']} ({r['prove_seconds']} / {r['validate_seconds']}) | "
                     f"{r['validation_max_abs_diff']:.3g} ({r['validation_points']}) |")
    if data["cases"]:
        lines += ["", f"Median DeepPoly time {statistics.median(r['deeppoly_seconds'] for r in data['cases']):.2f} s, "
                      f"median simplify time {statistics.median(r['simplify_seconds'] for r in data['cases']):.2f} s."]
    if data.get("checks"):
        lines += ["", f"`check` against a copy (time limit {CHECK_TIME_LIMIT:g} s): float16, every weight rounded to "
                      "float16 (the same structure: difference graph); rescaled, each Conv's channels divided by c in "
                      "[0.5, 2] and multiplied back by a Mul after it (the same function, another linear structure: "
                      "skeleton pair):", "",
                  "| network | spec | copy | norm | verdict | max diff seen | max diff proven | s |",
                  "|---|---|---|---|---|---|---|---|"]
        for c in data["checks"]:
            norm = "top-1" if c["norm"] == "top1" else f"linf, ε = {c['epsilon']:g}"
            lines.append(f"| {Path(c['network']).stem} | {Path(c['spec']).stem} | {c.get('copy', 'float16')} | "
                         f"{norm} | {c['verdict']} | "
                         f"{c['max_diff_seen']:.3g} | {c['max_diff_proven']:.3g} | {c['seconds']} |")
    return "\n".join(lines) + "\n"
