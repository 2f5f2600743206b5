"""`equiv bench --suite admm`: the same LP queries (max and min of still-unstable neurons of the last hidden
layer over the triangle relaxation) answered by HiGHS one by one and by `DagAdmm` in one batch; time and the
gap of ADMM's certified bounds to HiGHS's optima.  Chains (ACAS Xu, MNIST) and ResNet-2B (convolutions and
residual sums, its last ReLU layer)."""

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
from ..solvers.chain_admm import chain_relaxation
from ..solvers.dag_admm import SLOPE_ITERS, DagAdmm
from ..spec.region import load_region

# (network, property, bounds of layers 1..L-1, every how many-th unstable neuron is asked).  The HiGHS LP stage
# is fast on the small nets and gives their bounds; on 256x4 / 256x6 it takes many minutes (a 256x6 query
# about 1.5 s), so DeepPoly's bounds, and a regular subset of the neurons keeps HiGHS's side to minutes.
CASES = [("acasxu/ACASXU_run2a_1_1_batch_2000.onnx", "acasxu/prop_3.vnnlib", "lp", 1),
         ("mnist_fc/mnist-net_256x2.onnx", "mnist_fc/prop_0_0.03.vnnlib", "lp", 1),
         ("mnist_fc/mnist-net_256x4.onnx", "mnist_fc/prop_0_0.03.vnnlib", "deeppoly", 2),
         ("mnist_fc/mnist-net_256x6.onnx", "mnist_fc/prop_0_0.03.vnnlib", "deeppoly", 4),
         ("cifar/resnet_2b.onnx", "cifar/resnet_2b-img386-eps2_255.vnnlib", "deeppoly", 1)]
TOL = 1e-3          # DagAdmm's stopping gap (relative), the accuracy target


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
    """HiGHS one by one (cold dual simplex, as the chain LP stage runs it) against one DagAdmm batch."""
    enc = encode_network(net, box, bounds, depth=k)
    hb = make_backend("highs", enc.model)
    rows = [enc.objective(c, o) for c, o in zip(C, off)]
    def build():
        rel = chain_relaxation(net, box, bounds, k)
        return rel, rel.on_last(C)
    return _compare(enc.model, hb, rows, build, off, tol, time_limit)


def compare_graph(g, box, bounds, z, rows, tol: float = TOL, time_limit: float = 600.0) -> dict:
    """HiGHS warm (as the graph LP stage runs it) against one DagAdmm batch, on the LP `encode_graph` builds up
    to tensor z; rows: the objectives (c, offset) over its variables."""
    from ..encode.graph import encode_graph
    from ..solvers.dag_relaxation import graph_objectives, graph_relaxation
    from ..solvers.highs import HighsBackend
    enc = encode_graph(g, box, bounds, upto=z)
    rows = rows(enc)

    def build():
        rel, cols = graph_relaxation(enc, g, bounds, [r for r in g.relus if r in enc.model.groups])
        return rel, graph_objectives(cols, np.array([c for c, _ in rows]))
    return _compare(enc.model, HighsBackend(enc.model, warm_lp=True), rows, build,
                    np.array([o for _, o in rows]), tol, time_limit)


def _compare(model, hb, rows, build, off, tol, time_limit) -> dict:
    """The reference optima of `hb` on rows (c, offset), then DagAdmm on build() = (relaxation, the objectives
    in its per-group form), 1 BLAS thread: as it runs (the slope warm start, then ADMM) and cold (ADMM alone);
    times, gaps, iterations."""
    t0 = time.perf_counter()
    ref = [hb.maximize(c, o, integer=False, time_limit=60) for c, o in rows]
    t_highs = time.perf_counter() - t0
    assert all(r.status == Status.OPTIMAL for r in ref), "HiGHS did not solve every reference LP"
    H = np.array([r.objective for r in ref])
    warm = _admm_run(build, off, H, tol, time_limit, slope_iters=SLOPE_ITERS)
    cold = _admm_run(build, off, H, tol, time_limit, slope_iters=0)
    return {"vars": model.n_vars, "rows": model.n_rows, "queries": len(rows), "tol": tol, "highs_s": t_highs,
            **warm, "speedup": t_highs / warm["admm_s"],
            "cold_s": cold["admm_s"], "cold_optimal": cold["optimal"], "cold_within_tol_s": cold["admm_within_tol_s"],
            "cold_below_optimum": cold["below_optimum"], "cold_rel_gap_max": cold["rel_gap_max"]}


def _admm_run(build, off, H, tol, time_limit, slope_iters) -> dict:
    """One DagAdmm batch on build() against the reference optima H, on 1 BLAS thread (as HiGHS has)."""
    from threadpoolctl import threadpool_limits
    with threadpool_limits(limits=1, user_api="blas"):
        t0 = time.perf_counter()
        rel, C = build()
        ab = DagAdmm(rel, tol=tol, slope_iters=slope_iters)
        build_s = time.perf_counter() - t0
        res = ab.maximize_many(C, off, time_limit=time_limit)
        t_admm = time.perf_counter() - t0
    U = np.array([np.inf if r.bound is None else r.bound for r in res])
    gap = U - H
    rel = gap / np.maximum(1.0, np.abs(H))
    iters = [int(r.message.split()[0]) for r in res if r.status == Status.OPTIMAL]
    # when the bounds first were all within tol of HiGHS's optima (known only here, from the reference)
    reached = next((build_s + secs for _, secs, best in ab.history
                    if ((best - H) / np.maximum(1.0, np.abs(H)) <= tol).all()), None)
    return {"admm_s": t_admm, "admm_build_s": build_s, "admm_within_tol_s": reached,
            "slope_steps": getattr(ab, "slope_steps", 0),
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
        box, _ = load_region(spec=str(root / prop))
        case = {"case": f"{Path(net_path).stem.replace('_batch_2000', '')} / {Path(prop).stem}", "bounds": source}
        if net_path.startswith("cifar/"):
            from ..bounds.engine import deeppoly_graph
            from ..ir.onnx_import import load_graph
            g = load_graph(root / net_path)
            bounds = deeppoly_graph(g, box)
            z = g.args(g.relus[-1])[0]
            lo, hi = bounds.lo[z].reshape(-1), bounds.hi[z].reshape(-1)
            todo = np.flatnonzero((lo < 0) & (hi > 0))[::stride]
            rows.append({**case, **compare_graph(g, box, bounds, z, lambda enc: [
                enc.objective(z, int(p), s) for s in (1.0, -1.0) for p in todo])})
            continue
        net = load_onnx(root / net_path)
        bounds, k, C, off = last_layer_queries(net, box, source, stride)
        rows.append({**case, **compare(net, box, bounds, k, C, off)})
    data = {"suite": "admm", "machine": machine(), "rows": rows,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(data, out / "admm.json")
    m = data["machine"]
    lines = ["# equiv bench --suite admm: DagAdmm (batched, certified bounds) vs HiGHS (one by one)", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, 1 thread. Peak memory {data['peak_rss_mib']:.0f} MiB.", "",
             "Queries: max and min of still-unstable neurons of the last hidden layer (ResNet-2B: of its last "
             "ReLU) over the triangle relaxation of the layers before it, with their bounds from the HiGHS LP stage "
             "(`lp`) or DeepPoly (`deeppoly`; every 2nd / 4th unstable neuron on 256x4 / 256x6). HiGHS: its optimum "
             "is the reference; on chains a cold dual simplex per query (as the chain LP stage runs it), on "
             "ResNet-2B warm (as the graph LP stage runs it). DagAdmm: all queries in one batch, as `--backend "
             f"admm` runs it: up to {SLOPE_ITERS} Adam steps on the back-substitution slopes (the warm start: "
             "certified bounds, and the multipliers and point ADMM starts from), then ADMM iterations in float32; "
             "each bound the structured Lagrangian bound at its multipliers in float64 (a proof whatever the "
             f"iterate), stopped when within {TOL:g} (relative) of a point of the relaxation. Cold: ADMM alone "
             "(no slope steps), for comparison. `bounds within 1e-3 at`: when the certified bounds were first all "
             "within 1e-3 of HiGHS's optima (known only against the reference: ADMM cannot stop there by itself). "
             "Gap = ADMM bound - HiGHS optimum (>= 0 when sound); relative: / max(1, |optimum|).", "",
             "| case | bounds | vars x rows | queries | HiGHS (s) | DagAdmm (s) | speed-up | bounds within 1e-3 at (s) | "
             "slope steps | OPTIMAL | below optimum | rel. gap median | rel. gap max | within 1e-3 | "
             "ADMM iterations median / max | cold: s, OPTIMAL, within 1e-3 at (s), below optimum |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        at = "-" if r["admm_within_tol_s"] is None else f"{r['admm_within_tol_s']:.2f}"
        cat = "-" if r["cold_within_tol_s"] is None else f"{r['cold_within_tol_s']:.2f}"
        lines.append(f"| {r['case']} | {r['bounds']} | {r['vars']} x {r['rows']} | {r['queries']} | {r['highs_s']:.2f} | "
                     f"{r['admm_s']:.2f} | {r['speedup']:.2f}x | {at} | {r['slope_steps']} | "
                     f"{r['optimal']}/{r['queries']} | {r['below_optimum']} | {r['rel_gap_median']:.1e} | "
                     f"{r['rel_gap_max']:.1e} | {r['within_tol']}/{r['queries']} | "
                     f"{r['iterations_median']} / {r['iterations_max']} | {r['cold_s']:.2f}, "
                     f"{r['cold_optimal']}/{r['queries']}, {cat}, {r['cold_below_optimum']} |")
    write_text_atomic(out / "admm.md", "\n".join(lines) + "\n")
    return data
