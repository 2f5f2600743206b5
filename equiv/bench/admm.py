"""`equiv bench --suite admm`: the same LP queries (max and min of every still-unstable neuron of the last
hidden layer over the triangle relaxation) answered by HiGHS one by one and by ADMM in one batch; time and
the gap of ADMM's certified bounds to HiGHS's optima."""

from __future__ import annotations

import resource
import time
from pathlib import Path

import numpy as np

from ..artifacts.files import write_json_atomic, write_text_atomic
from ..encode.chain import encode_network
from ..ir.chain_io import load_onnx
from ..prove.stability import StabilityOptions, prove_stability
from ..solvers import Status, make_backend
from ..solvers.admm import AdmmBackend
from ..spec.region import load_region

CASES = [("acasxu/ACASXU_run2a_1_1_batch_2000.onnx", "acasxu/prop_3.vnnlib"),
         ("mnist_fc/mnist-net_256x2.onnx", "mnist_fc/prop_0_0.03.vnnlib")]
TOLERANCES = (1e-5, 1e-4)      # ADMM's stopping tolerance (relative gap); 1e-5 is the backend's default


def last_layer_queries(net, box):
    """The encoding of layers 1..L-1 (bounds LP-tightened layer by layer, as the LP stage leaves them) and
    the objectives +-z_i for every neuron i of hidden layer L still unstable under those bounds."""
    bounds = prove_stability(net, box, StabilityOptions(method="lp", samples=0)).bounds
    k = len(net.masks) - 1
    enc = encode_network(net, box, bounds, depth=k)
    todo = np.flatnonzero(net.masks[k] & (bounds.lo[k] < 0) & (bounds.hi[k] > 0))
    W, b = net.dense[k].W, net.dense[k].b
    C, off = map(np.array, zip(*[enc.objective(W[i], b[i]) for i in todo]))
    return enc, np.vstack([C, -C]), np.concatenate([off, -off])


def compare(enc, C, off, tol: float, time_limit: float = 600.0) -> dict:
    """HiGHS one by one against one ADMM batch on the same objectives."""
    t0 = time.perf_counter()
    hb = make_backend("highs", enc.model)
    ref = [hb.maximize(c, o, integer=False, time_limit=60) for c, o in zip(C, off)]
    t_highs = time.perf_counter() - t0
    assert all(r.status == Status.OPTIMAL for r in ref), "HiGHS did not solve every reference LP"
    H = np.array([r.bound for r in ref])
    t0 = time.perf_counter()
    ab = AdmmBackend(enc.model, tol=tol)
    build = time.perf_counter() - t0
    res = ab.maximize_many(C, off, time_limit=time_limit)
    t_admm = time.perf_counter() - t0
    U = np.array([np.inf if r.bound is None else r.bound for r in res])
    gap = U - H
    rel = gap / np.maximum(1.0, np.abs(H))
    iters = [int(r.message.split()[0]) for r in res if r.status == Status.OPTIMAL]
    return {"vars": enc.model.n_vars, "rows": enc.model.n_rows, "queries": len(C), "tol": tol,
            "highs_s": t_highs, "admm_s": t_admm, "admm_build_s": build, "factorisations": ab.factorisations,
            "optimal": int(sum(r.status == Status.OPTIMAL for r in res)),
            "below_optimum": int(np.sum(gap < -1e-9 * (1 + np.abs(H)))),
            "gap_mean": float(gap.mean()), "gap_max": float(gap.max()),
            "rel_gap_mean": float(rel.mean()), "rel_gap_max": float(rel.max()),
            "iterations_median": int(np.median(iters)) if iters else None, "iterations_max": max(iters, default=None)}


def run_admm_bench(root: Path, out: Path) -> dict:
    from .core import machine
    rows = []
    for net_path, prop in CASES:
        net = load_onnx(root / net_path)
        box, _ = load_region(spec=str(root / prop))
        enc, C, off = last_layer_queries(net, box)
        for tol in TOLERANCES:
            rows.append({"case": f"{Path(net_path).stem.replace('_batch_2000', '')} / {Path(prop).stem}",
                         **compare(enc, C, off, tol)})
    data = {"suite": "admm", "machine": machine(), "rows": rows,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(data, out / "admm.json")
    m = data["machine"]
    lines = ["# equiv bench --suite admm: ADMM (batched, certified bounds) vs HiGHS (one by one)", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, 1 thread. Peak memory {data['peak_rss_mib']:.0f} MiB.", "",
             "Queries: max and min of every neuron of the last hidden layer still unstable after the LP stage "
             "(earlier layers LP-tightened), over the triangle relaxation (chain encoding). HiGHS: cold dual "
             "simplex per query, its optimum is the reference. ADMM: all queries in one batch, each bound "
             "`safe_upper_bound` at the ADMM row multipliers (a proof whatever the iterate). Gap = ADMM bound - "
             "HiGHS optimum (>= 0 when sound); relative: / max(1, |optimum|).", "",
             "| case | vars x rows | queries | ADMM tol | HiGHS (s) | ADMM (s) | OPTIMAL | below optimum | "
             "gap mean | gap max | rel. gap max | iterations median / max |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['vars']} x {r['rows']} | {r['queries']} | {r['tol']:g} | {r['highs_s']:.2f} | "
                     f"{r['admm_s']:.2f} | {r['optimal']}/{r['queries']} | {r['below_optimum']} | "
                     f"{r['gap_mean']:.2e} | {r['gap_max']:.2e} | {r['rel_gap_max']:.2e} | "
                     f"{r['iterations_median']} / {r['iterations_max']} |")
    write_text_atomic(out / "admm.md", "\n".join(lines) + "\n")
    return data
