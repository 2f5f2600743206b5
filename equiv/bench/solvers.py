"""`equiv bench --suite solvers`: one fixed set of LP/MILP queries on real networks, answered by each
installed backend, with model-build and solve time kept apart and every disagreement reported."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..encode.chain import encode_network
from ..ir.chain_io import load_onnx
from ..spec.region import load_region
from ..artifacts.files import save_figure_atomic, write_json_atomic, write_text_atomic
from ..solvers import Status, available_backends, make_backend
from ..prove.stability import StabilityOptions, prove_stability

# (network, property, hidden layers whose neurons are queried, max neurons per layer, bounds for big-M)
QUERY_SOURCES = [
    ("acasxu/ACASXU_run2a_1_1_batch_2000.onnx", "acasxu/prop_3.vnnlib", (2, 4, 6), 8, "lp"),
    ("acasxu/ACASXU_run2a_2_3_batch_2000.onnx", "acasxu/prop_4.vnnlib", (3, 5), 8, "lp"),
    ("mnist_fc/mnist-net_256x2.onnx", "mnist_fc/prop_0_0.03.vnnlib", (2,), 8, "lp"),
    ("mnist_fc/mnist-net_256x4.onnx", "mnist_fc/prop_1_0.03.vnnlib", (3,), 4, "deeppoly"),
]


@dataclass
class Query:
    source: str
    layer: int          # hidden layer (from 1) whose neuron is the objective
    index: int
    kind: str           # "lp_max", "lp_min", "decide_dead", "decide_active"


def build_queries(root: Path):
    """Encodings with LP-tightened bounds and the queries on them (deterministic)."""
    out = []
    for net_path, prop, layers, per_layer, method in tqdm(QUERY_SOURCES, desc="building queries", unit="net"):
        net = load_onnx(root / net_path)
        box, _ = load_region(spec=str(root / prop))
        bounds = prove_stability(net, box, StabilityOptions(method=method)).bounds
        name = f"{Path(net_path).stem.replace('_batch_2000', '')}/{Path(prop).stem}"
        for layer in layers:
            k = layer - 1
            enc = encode_network(net, box, bounds, depth=k)
            lo, hi = bounds.lo[k], bounds.hi[k]
            open_ = np.flatnonzero((lo < 0) & (hi > 0))[:per_layer]
            qs = []
            for i in open_:
                qs += [Query(name, layer, int(i), "lp_max"), Query(name, layer, int(i), "lp_min"),
                       Query(name, layer, int(i), "decide_dead" if abs(lo[i]) > hi[i] else "decide_active")]
            out.append((net, enc, qs))
    return out


def run_query(backend, net, enc, q: Query, time_limit: float) -> dict:
    W, b = net.dense[q.layer - 1].W, net.dense[q.layer - 1].b
    c, off = enc.objective(W[q.index], b[q.index])
    if q.kind == "lp_min" or q.kind == "decide_active":
        c, off = -c, -off
    if q.kind.startswith("lp"):
        r = backend.maximize(c, off, integer=False, time_limit=time_limit)
        answer = r.bound if r.status == Status.OPTIMAL else None
        return {"status": r.status.value, "answer": answer, "seconds": r.seconds, "message": r.message}
    d = backend.decide(c, off, 0.0, time_limit=time_limit, margin=1e-6)
    return {"status": d.status.value, "answer": d.verdict if d.verdict != "unknown" else None,
            "seconds": d.seconds, "message": d.message}


def _agree(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= 1e-5 * (1 + abs(a))
    return a == b


def run_solvers_bench(root: Path, out: Path, backends: list[str] | None = None, time_limit: float = 30.0,
                      plot: str | None = None) -> dict:
    backends = backends or available_backends(milp=True)   # admm: `equiv bench --suite admm`
    sets = build_queries(root)
    rows = []   # one per (query, backend)
    build = {b: 0.0 for b in backends}
    total = sum(len(qs) for _, _, qs in sets) * len(backends)
    with tqdm(total=total, desc="bench solvers", unit="query") as bar:
        for net, enc, qs in sets:
            for name in backends:
                t0 = time.perf_counter()
                be = make_backend(name, enc.model)
                build[name] += time.perf_counter() - t0
                for q in qs:
                    r = run_query(be, net, enc, q, time_limit)
                    rows.append({"backend": name, "source": q.source, "layer": q.layer, "index": q.index,
                                 "kind": q.kind, "vars": enc.model.n_vars, "rows": enc.model.n_rows, **r})
                    bar.update(1)
    # disagreements: two backends that both answered must agree
    by_query: dict = {}
    for r in rows:
        by_query.setdefault((r["source"], r["layer"], r["index"], r["kind"]), {})[r["backend"]] = r["answer"]
    disagreements = []
    for key, answers in by_query.items():
        got = {b: a for b, a in answers.items() if a is not None}
        names = sorted(got)
        for i in range(len(names)):
            for j in range(i + 1, len(names)):
                if not _agree(got[names[i]], got[names[j]]):
                    disagreements.append({"query": list(key), names[i]: got[names[i]], names[j]: got[names[j]]})
    summary = {}
    for name in backends:
        rs = [r for r in rows if r["backend"] == name]
        times = [r["seconds"] for r in rs]
        solved = sum(r["answer"] is not None for r in rs)
        summary[name] = {"queries": len(rs), "solved": solved, "unknown": len(rs) - solved,
                         "too_large": sum(r["status"] == "too_large" for r in rs),
                         "median_solve_s": statistics.median(times), "total_solve_s": sum(times),
                         "build_s": build[name],
                         "disagreements": sum(name in d for d in disagreements)}
    from .core import machine
    data = {"suite": "solvers", "machine": machine(), "time_limit_per_query": time_limit, "summary": summary,
            "disagreements": disagreements, "queries": rows}
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(data, out / "solvers.json")
    _write_md(data, out / "solvers.md")
    if plot:
        _plot(rows, backends, plot)
    return data


def _write_md(data, path: Path):
    m = data["machine"]
    lines = ["# equiv bench --suite solvers", "",
             f"Machine: {m['cpu']}, {m['cores']} cores. Limit {data['time_limit_per_query']:g} s per query, "
             "1 solver thread.", "",
             "Queries: LP bound tightening (max and min of a neuron over the triangle relaxation, with bounds "
             "LP-tightened layer by layer) and MILP phase decisions (\"is there an x with z > 0?\") on ACAS Xu 1_1 "
             "(prop_3), 2_3 (prop_4), MNIST 256x2 (prop_0_0.03) and 256x4 (prop_1_0.03). Build time is the "
             "translation of the neutral model into the solver's own (once per encoding); solve time is per query.",
             "", "| backend | queries | solved | unknown | of which too large | median solve (ms) | total solve (s) | "
             "build total (s) | disagreements |", "|---|---|---|---|---|---|---|---|---|"]
    for name, s in data["summary"].items():
        lines.append(f"| {name} | {s['queries']} | {s['solved']} | {s['unknown']} | {s['too_large']} | "
                     f"{1000 * s['median_solve_s']:.1f} | {s['total_solve_s']:.2f} | {s['build_s']:.3f} | "
                     f"{s['disagreements']} |")
    lines += ["", f"Disagreements between backends that both returned an answer: **{len(data['disagreements'])}**."]
    for d in data["disagreements"][:20]:
        lines.append(f"- {d}")
    kinds = sorted({r["kind"] for r in data["queries"]})
    lines += ["", "Median solve time (ms) by query kind:", "", "| backend | " + " | ".join(kinds) + " |",
              "|---|" + "---|" * len(kinds)]
    for name in data["summary"]:
        cells = []
        for kd in kinds:
            ts = [r["seconds"] for r in data["queries"] if r["backend"] == name and r["kind"] == kd]
            cells.append(f"{1000 * statistics.median(ts):.1f}" if ts else "")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    write_text_atomic(path, "\n".join(lines) + "\n")


def _plot(rows, backends, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, group, title in ((axes[0], ("lp_max", "lp_min"), "LP bound queries"),
                             (axes[1], ("decide_dead", "decide_active"), "MILP decisions")):
        data = [[max(r["seconds"], 1e-4) for r in rows if r["backend"] == b and r["kind"] in group] for b in backends]
        ax.boxplot(data, tick_labels=backends)
        ax.set_yscale("log")
        ax.set_ylabel("solve time per query (s)")
        ax.set_title(title)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_figure_atomic(fig, path)
    plt.close(fig)
