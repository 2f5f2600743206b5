"""`equiv bench --suite admm`: the same LP queries (max and min of still-unstable neurons of the last hidden
layer over the triangle relaxation) answered by HiGHS one by one and by `ChainAdmm` in one batch; time and the
gap of ADMM's certified bounds to HiGHS's optima."""

from __future__ import annotations

import resource
import time
from pathlib import Path

import numpy as np

from ..artifacts.files import write_json_atomic, write_text_atomic
from ..bounds import deeppoly_bounds
from ..encode.chain import encode_network
from ..ir.chain_io import load_onnx
from ..prove.stability import StabilityOptions, prove_stability
from ..solvers import Status, make_backend
from ..solvers.chain_admm import ChainAdmm, ChainRelaxation
from ..spec.region import load_region

# (network, property, bounds of layers 1..L-1, every how many-th unstable neuron is asked).  The HiGHS LP stage
# is fast on the small nets and gives their bounds; on 256x4 / 256x6 it takes many minutes (a 256x6 query
# about 1.5 s), so DeepPoly's bounds, and a regular subset of the neurons keeps HiGHS's side to minutes.
CASES = [("acasxu/ACASXU_run2a_1_1_batch_2000.onnx", "acasxu/prop_3.vnnlib", "lp", 1),
         ("mnist_fc/mnist-net_256x2.onnx", "mnist_fc/prop_0_0.03.vnnlib", "lp", 1),
         ("mnist_fc/mnist-net_256x4.onnx", "mnist_fc/prop_0_0.03.vnnlib", "deeppoly", 2),
         ("mnist_fc/mnist-net_256x6.onnx", "mnist_fc/prop_0_0.03.vnnlib", "deeppoly", 4)]
TOL = 1e-3          # ChainAdmm's stopping gap (relative), the accuracy target


def last_layer_queries(net, box, source: str = "lp", stride: int = 1):
    """(net, box, bounds, k, C, offsets): bounds of layers 1..k (LP-tightened layer by layer as the LP stage
    leaves them, or DeepPoly's) and the objectives +-z_i for every stride-th neuron i of hidden layer k + 1
    still unstable under them (k = L - 1)."""
    if source == "lp":
        bounds = prove_stability(net, box, StabilityOptions(method="lp", samples=0)).bounds
    else:
        bounds = deeppoly_bounds(net, box)
    k = len(net.masks) - 1
    todo = np.flatnonzero(net.masks[k] & (bounds.lo[k] < 0) & (bounds.hi[k] > 0))[::stride]
    W, b = net.dense[k].W[todo], net.dense[k].b[todo]
    return bounds, k, np.vstack([W, -W]), np.concatenate([b, -b])


def compare(net, box, bounds, k, C, off, tol: float = TOL, time_limit: float = 600.0) -> dict:
    """HiGHS one by one (cold dual simplex, as the LP stage runs it) against one ChainAdmm batch."""
    enc = encode_network(net, box, bounds, depth=k)
    t0 = time.perf_counter()
    hb = make_backend("highs", enc.model)
    ref = [hb.maximize(*enc.objective(c, o), integer=False, time_limit=60) for c, o in zip(C, off)]
    t_highs = time.perf_counter() - t0
    assert all(r.status == Status.OPTIMAL for r in ref), "HiGHS did not solve every reference LP"
    H = np.array([r.objective for r in ref])
    from threadpoolctl import threadpool_limits
    with threadpool_limits(limits=1, user_api="blas"):      # one thread, as HiGHS has
        t0 = time.perf_counter()
        ab = ChainAdmm(ChainRelaxation.from_network(net, box, bounds, k), tol=tol)
        build = time.perf_counter() - t0
        res = ab.maximize_many(C, off, time_limit=time_limit)
        t_admm = time.perf_counter() - t0
    U = np.array([np.inf if r.bound is None else r.bound for r in res])
    gap = U - H
    rel = gap / np.maximum(1.0, np.abs(H))
    iters = [int(r.message.split()[0]) for r in res if r.status == Status.OPTIMAL]
    return {"vars": enc.model.n_vars, "rows": enc.model.n_rows, "queries": len(C), "tol": tol,
            "highs_s": t_highs, "admm_s": t_admm, "admm_build_s": build, "speedup": t_highs / t_admm,
            "optimal": int(sum(r.status == Status.OPTIMAL for r in res)),
            "below_optimum": int(np.sum(gap < -1e-7 * (1 + np.abs(H)))),
            "gap_mean": float(gap.mean()), "gap_max": float(gap.max()),
            "rel_gap_median": float(np.median(rel)), "rel_gap_max": float(rel.max()),
            "within_tol": int(np.sum(rel <= tol)),
            "iterations_median": int(np.median(iters)) if iters else None, "iterations_max": max(iters, default=None)}


def run_admm_bench(root: Path, out: Path) -> dict:
    from .core import machine
    rows = []
    for net_path, prop, source, stride in CASES:
        net = load_onnx(root / net_path)
        box, _ = load_region(spec=str(root / prop))
        bounds, k, C, off = last_layer_queries(net, box, source, stride)
        rows.append({"case": f"{Path(net_path).stem.replace('_batch_2000', '')} / {Path(prop).stem}",
                     "bounds": source, **compare(net, box, bounds, k, C, off)})
    data = {"suite": "admm", "machine": machine(), "rows": rows,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(data, out / "admm.json")
    m = data["machine"]
    lines = ["# equiv bench --suite admm: ChainAdmm (batched, certified bounds) vs HiGHS (one by one)", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, 1 thread. Peak memory {data['peak_rss_mib']:.0f} MiB.", "",
             "Queries: max and min of still-unstable neurons of the last hidden layer over the triangle relaxation "
             "of the layers before it, with their bounds from the HiGHS LP stage (`lp`) or DeepPoly (`deeppoly`; "
             "every 2nd / 4th unstable neuron on 256x4 / 256x6). HiGHS: cold dual simplex per query (as the LP "
             "stage runs it), its optimum is the reference. ChainAdmm: all queries in one batch, each bound the "
             "structured Lagrangian bound at its multipliers (a proof whatever the iterate), stopped when within "
             f"{TOL:g} (relative) of a point of the relaxation. Gap = ADMM bound - HiGHS optimum (>= 0 when "
             "sound); relative: / max(1, |optimum|).", "",
             "| case | bounds | vars x rows | queries | HiGHS (s) | ADMM (s) | speed-up | OPTIMAL | below optimum | "
             "rel. gap median | rel. gap max | within 1e-3 | iterations median / max |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['bounds']} | {r['vars']} x {r['rows']} | {r['queries']} | {r['highs_s']:.2f} | "
                     f"{r['admm_s']:.2f} | {r['speedup']:.2f}x | {r['optimal']}/{r['queries']} | {r['below_optimum']} | "
                     f"{r['rel_gap_median']:.1e} | {r['rel_gap_max']:.1e} | {r['within_tol']}/{r['queries']} | "
                     f"{r['iterations_median']} / {r['iterations_max']} |")
    write_text_atomic(out / "admm.md", "\n".join(lines) + "\n")
    return data
