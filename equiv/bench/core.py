"""`equiv bench`: run the simplifier over a named suite of real networks; write results/<suite>.md and .json."""

from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from ..errors import InputFileError
from ..spec.region import load_region
from ..artifacts.files import write_json_atomic, write_text_atomic
from ..apps.simplify import simplify
from ..prove.stability import StabilityOptions, prove_stability

DEFAULT_BENCHMARKS = Path(__file__).resolve().parents[2] / ".." / "shared" / "benchmarks"   # <repo>/../shared


@dataclass
class Case:
    network: str      # path relative to the benchmarks folder
    prop: str


def suite_cases(name: str) -> list[Case]:
    acas = [f"acasxu/ACASXU_run2a_{a}_{b}_batch_2000.onnx" for a in range(1, 6) for b in range(1, 10)]
    mnist = [f"mnist_fc/mnist-net_256x{d}.onnx" for d in (2, 4, 6)]
    if name == "quick":
        return [Case(acas[0], "acasxu/prop_3.vnnlib"), Case(mnist[0], "mnist_fc/prop_0_0.03.vnnlib")]
    if name == "core":
        cases = [Case(n, f"acasxu/prop_{p}.vnnlib") for p in (3, 4) for n in acas]
        # 256x2 on three balls; the deeper nets on one ball each (their LP stage alone takes minutes)
        cases += [Case(mnist[0], f"mnist_fc/prop_{i}_0.03.vnnlib") for i in (0, 1, 2)]
        cases += [Case(n, "mnist_fc/prop_0_0.03.vnnlib") for n in mnist[1:]]
        return cases
    raise InputFileError(f"unknown suite '{name}'; available: core, quick, solvers, admm, slicing, equivalence, graphs")


def machine() -> dict:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}


def run_case(case: Case, root: Path, time_limit: float, method: str = "milp", milp_budget: float | None = 60.0) -> dict:
    box, source = load_region(spec=str(root / case.prop))
    t0 = time.perf_counter()
    r = simplify(root / case.network, box, StabilityOptions(method=method, time_limit=time_limit, milp_budget=milp_budget),
                 region_source=source)
    seconds = time.perf_counter() - t0
    st = r.stability
    # the LP layer-by-layer count is the floor the full pipeline must reach; when input splitting ran
    # first, the LP stage saw fewer open neurons, so measure the LP-only count separately (not timed)
    if "split" in st.stage_counts:
        lp_ref = prove_stability(r.original, box, StabilityOptions(method="lp")).stage_counts["lp"]
    else:
        lp_ref = st.stage_counts.get("lp")
    return {
        "network": Path(case.network).stem.replace("_batch_2000", ""), "prop": Path(case.prop).stem,
        "relus_before": r.original.n_relus, "relus_after": r.simplified.n_relus,
        "params_before": r.original.n_params, "params_after": r.simplified.n_params,
        "depth_before": r.original.depth, "depth_after": r.simplified.depth,
        "stable": {k: v for k, v in st.stage_counts.items()}, "lp_only_stable": lp_ref,
        "dead": st.count("dead"), "active": st.count("active"), "unstable": st.count("unstable"),
        "unknown": st.count("unknown"), "proved_by": st.proved_by(), "queries": st.queries,
        "max_abs_diff": r.validation.max_abs_diff, "seconds": seconds,
        "seconds_prove": r.seconds["prove"], "notes": st.notes,
    }


def _md_table(rows: list[dict]) -> list[str]:
    out = ["| network | region | interval | DeepPoly | LP only | final stable | dead | active | unknown | ReLUs after | "
           "params before → after | max diff | time (s) |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s = r["stable"]
        out.append(f"| {r['network']} | {r['prop']} | {s.get('interval', '')} | {s.get('deeppoly', '')} | "
                   f"{r['lp_only_stable']} | {r['dead'] + r['active']} | {r['dead']} | {r['active']} | {r['unknown']} | "
                   f"{r['relus_after']} | {r['params_before']} → {r['params_after']} | {r['max_abs_diff']:.1e} | "
                   f"{r['seconds']:.2f} |")
    return out


def _summary(rows: list[dict]) -> list[str]:
    out = ["| group | cases | median time (s) | max time (s) | mean stable (LP) | mean stable (final) | "
           "cases with fewer than LP | unknown neurons |", "|---|---|---|---|---|---|---|---|"]
    groups: dict = {}
    for r in rows:
        fam = "ACAS Xu" if r["network"].startswith("ACAS") else r["network"]
        groups.setdefault(f"{fam} {r['prop']}", []).append(r)
    for g, rs in groups.items():
        times = [r["seconds"] for r in rs]
        lp = [r["lp_only_stable"] for r in rs]
        fin = [r["dead"] + r["active"] for r in rs]
        worse = sum(f < lp_ for f, lp_ in zip(fin, lp))
        out.append(f"| {g} | {len(rs)} | {statistics.median(times):.2f} | {max(times):.2f} | "
                   f"{statistics.mean(lp):.1f} | {statistics.mean(fin):.1f} | {worse} | {sum(r['unknown'] for r in rs)} |")
    return out


def run_suite(name: str, benchmarks: str | None = None, out: str = "results", time_limit: float = 10.0,
              limit: int | None = None, milp_budget: float | None = 60.0) -> list[dict]:
    root = Path(benchmarks) if benchmarks else DEFAULT_BENCHMARKS
    if not (root / "acasxu").is_dir():
        raise InputFileError(f"benchmark folder not found: {root} (expected acasxu/ and mnist_fc/ inside)")
    cases = suite_cases(name)[:limit]
    rows = []
    for case in tqdm(cases, desc=f"bench {name}", unit="case"):
        rows.append(run_case(case, root, time_limit, milp_budget=milp_budget))
        _write_results(name, rows, len(cases), Path(out), time_limit, milp_budget)  # a long run keeps what it did
    return rows


def _write_results(name, rows, planned, outdir: Path, time_limit, milp_budget):
    outdir.mkdir(parents=True, exist_ok=True)
    info = machine()
    write_json_atomic({"suite": name, "machine": info, "time_limit_per_query": time_limit,
                       "milp_budget_per_case": milp_budget, "cases_planned": planned, "cases": rows},
                      outdir / f"{name}.json")
    lines = [f"# equiv bench --suite {name}", "",
             f"Machine: {info['cpu']}, {info['cores']} cores, Python {info['python']} ({info['platform']}).",
             f"Method: full pipeline (samples, interval, DeepPoly, input splitting, LP, MILP), HiGHS, {time_limit:g} s per "
             f"query, at most {milp_budget} s of MILP per case. "
             "Time is wall-clock per case for the whole `simplify` run (load, proofs, reduction, export and "
             "validation on >= 10 000 onnxruntime points). 'LP only' is the stable count of a separate LP "
             "layer-by-layer run, the floor the full pipeline must reach.",
             f"Cases done: {len(rows)} of {planned}.", "", "## Summary", "", *_summary(rows), "",
             "## Cases", "", *_md_table(rows), ""]
    write_text_atomic(outdir / f"{name}.md", "\n".join(lines))
