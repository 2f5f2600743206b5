"""`equiv bench --suite tolerance`: simplification up to a tolerance against the exact mode.

- ACAS Xu 1_1 on the box of prop_1, epsilon from 0 to 0.5: ReLUs left (and a plot);
- all 45 ACAS Xu nets on the box of prop_3 at epsilon 0.05: ReLUs left against the exact mode's;
- mnist-net_256x2 on prop_0_0.03 preserving the top-1 class: ReLUs and parameters against the exact mode's;
- graphs: CIFAR CNNs and the ResNet on one property each, at several epsilons (ReLU positions replaced by lines);
- student/teacher: each model written above checked again by `equiv check` from scratch (no knowledge from
  simplify), with its time.
Every written model is certified (or is the exact simplification) and validated in onnxruntime."""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import numpy as np
import onnx

from ..artifacts.files import write_json_atomic, write_text_atomic
from ..artifacts.validate import OnnxRunner
from .core import machine
from ..ir.chain_export import stored_params
from ..apps.tolerance.pipeline import ToleranceOptions, simplify_within
from ..ir.chain_io import load_onnx
from ..prove.equivalence import CheckOptions, check_models
from ..spec.region import load_region

PARTS = ("sweep", "acas", "mnist", "graphs")
GRAPH_CASES = [("cifar_deep_kw.onnx", "cifar_deep_kw-img386-eps0.024183006535947717.vnnlib", (0.02, 0.05, 0.1)),
               ("cifar_wide_kw.onnx", "cifar_wide_kw-img19-eps0.007973856209150327.vnnlib", (0.05,)),
               ("resnet_2b.onnx", "resnet_2b-img386-eps2_255.vnnlib", (0.05,))]
GRAPH_SELECTION_LIMIT = 120.0
SWEEP = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
ACAS_NETS = [f"ACASXU_run2a_{a}_{b}_batch_2000.onnx" for a in range(1, 6) for b in range(1, 10)]


def run_case(model: Path, spec: Path, epsilon: float | None = None, preserve: str | None = None,
             recheck: bool = True, recheck_limit: float = 120.0) -> dict:
    """One tolerance simplification, its certificate, and (recheck) an independent check of the file."""
    net = load_onnx(model)
    box = load_region(spec=spec)[0]
    t0 = time.perf_counter()
    if epsilon == 0.0:
        opt = ToleranceOptions(epsilon=1e-12, kinds=())     # no candidates: the exact mode
    else:
        opt = ToleranceOptions(epsilon=epsilon, preserve=preserve)
    res = simplify_within(net, OnnxRunner(str(model)), box, opt)
    wall = time.perf_counter() - t0
    row = {"model": model.name, "spec": spec.name, "epsilon": epsilon, "preserve": preserve,
           "relus_before": net.n_relus, "relus_exact": res.exact.n_relus, "relus_after": res.simplified.n_relus,
           "params_before": net.n_params, "params_exact": res.exact.n_params, "params_after": stored_params(res.onnx_model),
           "kept": len(res.kept), "by_kind": {k: sum(e.kind == k for e in res.kept) for k in ("constant", "merge", "affine")},
           "bound_calls": res.selection.bound_calls, "accepted_by_bounds": res.selection.proved,
           "accepted_by_samples": res.selection.sampled,
           "attempts_detail": [[a.kept, a.verdict, round(a.seconds, 2)] for a in res.attempts],
           "certificate": None if res.certificate is None else res.certificate.verdict,
           "certified_upper": None if res.certificate is None else float(res.certificate.max_diff_upper),
           "attempts": len(res.attempts), "validation_max_abs_diff": res.validation["max_abs_diff"],
           "top1_changed": res.validation.get("top1_changed"), "seconds": round(wall, 2),
           "seconds_parts": {k: round(v, 2) for k, v in res.seconds.items()}}
    if recheck and res.kept:
        tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"equiv_tolerance_{os.getpid()}.onnx"
        onnx.save(res.onnx_model, str(tmp))
        t0 = time.perf_counter()
        c = check_models(model, tmp, box, CheckOptions(norm="top1" if preserve else "linf", epsilon=epsilon if not preserve else None,
                                                      time_limit=recheck_limit))
        row["recheck"] = {"verdict": c.verdict, "seconds": round(time.perf_counter() - t0, 2),
                          "upper": float(c.max_diff_upper) if np.isfinite(c.max_diff_upper) else None}
        tmp.unlink()
    return row


def run_graph_case(model: Path, spec: Path, epsilon: float) -> dict:
    """One tolerance simplification of a graph (`apps.tolerance.graph`), certified and validated."""
    from ..apps.tolerance.graph import simplify_graph_within
    from ..apps.tolerance.pipeline import validate_within
    from ..ir import load_graph
    g = load_graph(model)
    box = load_region(spec=spec)[0]
    opt = ToleranceOptions(epsilon=epsilon, selection_time_limit=GRAPH_SELECTION_LIMIT)
    t0 = time.perf_counter()
    ref = OnnxRunner(str(model))
    res = simplify_graph_within(g, ref, box, opt)
    wall = time.perf_counter() - t0
    val = validate_within(ref, res.onnx_model, box, opt, np.full(g.n_outputs, epsilon), res.phases.witnesses)
    cert = res.certificate
    return {"model": model.name, "spec": spec.name, "epsilon": epsilon, "relus_before": g.n_relus,
            "relus_exact": res.exact.n_relus, "relus_after": res.simplified.n_relus, "params_before": g.n_params,
            "params_exact": res.exact.n_params, "params_after": res.simplified.n_params,
            "candidates": res.candidates, "accepted": res.accepted, "kept": len(res.kept),
            "bound_calls": res.bound_calls, "certificate": None if cert is None else cert.verdict,
            "certified_upper": None if cert is None else float(cert.max_diff_upper),
            "certificate_seconds": None if cert is None else round(cert.seconds, 2),
            "validation_max_abs_diff": val["max_abs_diff"], "seconds": round(wall, 2),
            "seconds_parts": {k: round(v, 2) for k, v in res.seconds.items()}, "notes": res.notes}


def run_tolerance_bench(benchmarks: Path, out: Path, limit: int | None = None, parts=PARTS) -> dict:
    """Run the parts asked for; the other parts' rows are kept from the last run's tolerance.json."""
    acas, mnist = benchmarks / "acasxu", benchmarks / "mnist_fc"
    import json
    old = json.loads((out / "tolerance.json").read_text()) if (out / "tolerance.json").is_file() else {}
    data = {k: v for k, v in old.items() if k != "machine"}
    data["machine"] = {**machine(), "load_at_start": list(os.getloadavg())}
    if "sweep" in parts:
        data["sweep"] = [run_case(acas / ACAS_NETS[0], acas / "prop_1.vnnlib", e, recheck=e in (0.05,))
                         for e in SWEEP]
    if "acas" in parts:
        data["acas_prop3"] = [run_case(acas / n, acas / "prop_3.vnnlib", 0.05) for n in ACAS_NETS[:limit]]
    if "mnist" in parts:
        data["mnist_top1"] = [run_case(mnist / "mnist-net_256x2.onnx", mnist / "prop_0_0.03.vnnlib", preserve="top1")]
    if "graphs" in parts:
        cifar = benchmarks / "cifar"
        data["graphs"] = [run_graph_case(cifar / m, cifar / sp, e) for m, sp, es in GRAPH_CASES for e in es]
    data["machine"]["load_at_end"] = list(os.getloadavg())
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(data, out / "tolerance.json")
    write_text_atomic(out / "tolerance.md", render(data))
    if "sweep" in data:
        plot_sweep(data["sweep"], out / "tolerance.png")
    return data


def render(data: dict) -> str:
    m = data["machine"]
    lines = ["# Simplification up to a tolerance", "",
             f"Machine: {m.get('cpu', '?')}, {m.get('cores', m.get('cpu_count'))} cores, Python {m['python']}; load average at start {m['load_at_start'][0]:.2f}, "
             f"at end {m['load_at_end'][0]:.2f}. Command: `equiv bench --suite tolerance`. Every model written was "
             "certified by `check` against the original (the written float32 file) or is the exact simplification; "
             "'recheck' is `equiv check` of the written file from scratch (no knowledge from simplify).", ""]
    if "sweep" in data:
        lines += ["## ACAS Xu 1_1, box of prop_1: ReLUs left against epsilon", "",
                  "| epsilon | ReLUs (exact 111) | params | constant / merged / affine | certificate (proven max diff) | validation max diff | s |",
                  "|---|---|---|---|---|---|---|"]
        for r in data["sweep"]:
            k = r["by_kind"]
            lines.append(f"| {r['epsilon']} | {r['relus_after']} | {r['params_after']} | {k['constant']} / {k['merge']} / "
                         f"{k['affine']} | {r['certificate'] or 'exact'} ({_g(r['certified_upper'])}) | "
                         f"{r['validation_max_abs_diff']:.3g} | {r['seconds']} |")
        lines += ["", "![ReLUs left against epsilon](tolerance.png)", ""]
    if "acas_prop3" in data:
        rows = data["acas_prop3"]
        ratio = [r["relus_after"] / r["relus_exact"] for r in rows if r["relus_exact"]]
        certified = sum(r["certificate"] == "equivalent" or not r["kept"] for r in rows)
        rechecked = [r["recheck"] for r in rows if "recheck" in r]
        lines += ["## All ACAS Xu nets, box of prop_3, epsilon 0.05", "",
                  f"{len(rows)} nets: mean ReLUs {statistics.mean(r['relus_after'] for r in rows):.1f} against "
                  f"{statistics.mean(r['relus_exact'] for r in rows):.1f} in exact mode; mean ratio "
                  f"**{statistics.mean(ratio):.3f}** (target <= 0.5); proved {certified}/{len(rows)}; median time "
                  f"{statistics.median(r['seconds'] for r in rows):.1f} s, max {max(r['seconds'] for r in rows):.1f} s. "
                  f"Recheck from scratch: {sum(c['verdict'] == 'equivalent' for c in rechecked)}/{len(rechecked)} "
                  f"equivalent, median {statistics.median([c['seconds'] for c in rechecked] or [0]):.2f} s, max "
                  f"{max([c['seconds'] for c in rechecked] or [0]):.2f} s.", "",
                  "| net | ReLUs exact -> tolerance | params exact -> tolerance | certificate | recheck (s) | s |",
                  "|---|---|---|---|---|---|"]
        for r in rows:
            rc = r.get("recheck")
            lines.append(f"| {r['model'].replace('_batch_2000.onnx', '')} | {r['relus_exact']} -> {r['relus_after']} | "
                         f"{r['params_exact']} -> {r['params_after']} | {r['certificate'] or 'exact'} | "
                         f"{(rc['verdict'] + ' (' + str(rc['seconds']) + ')') if rc else '-'} | {r['seconds']} |")
        lines.append("")
    if "mnist_top1" in data:
        lines += ["## mnist-net_256x2, prop_0_0.03, top-1 preserved", "",
                  "| ReLUs before / exact / top-1 | params before / exact / top-1 | certificate | recheck (s) | top-1 changed in validation | s |",
                  "|---|---|---|---|---|---|"]
        for r in data["mnist_top1"]:
            rc = r.get("recheck")
            lines.append(f"| {r['relus_before']} / {r['relus_exact']} / {r['relus_after']} | {r['params_before']} / "
                         f"{r['params_exact']} / {r['params_after']} | {r['certificate'] or 'exact'} | "
                         f"{(rc['verdict'] + ' (' + str(rc['seconds']) + ')') if rc else '-'} | {r['top1_changed']} | {r['seconds']} |")
        lines.append("")
    if "graphs" in data:
        lines += ["## Graphs (convolutions, residual blocks): ReLU positions replaced by lines", "",
                  f"Selection limited to {GRAPH_SELECTION_LIMIT:g} s per case. Parameters grow: each ReLU layer with "
                  "replacements stores a slope and an offset per position (fewer ReLUs to verify, not a smaller file).",
                  "", "| net, property | epsilon | ReLUs before / exact / tolerance | params exact -> tolerance | "
                  "kept / candidates | certificate (proven max diff, s) | validation max diff | s |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in data["graphs"]:
            lines.append(f"| {r['model'].replace('.onnx', '')}, {r['spec'].replace('.vnnlib', '')[:40]} | {r['epsilon']} | "
                         f"{r['relus_before']} / {r['relus_exact']} / {r['relus_after']} | {r['params_exact']} -> "
                         f"{r['params_after']} | {r['kept']} / {r['candidates']} | {r['certificate'] or 'exact'} "
                         f"({_g(r['certified_upper'])}, {r['certificate_seconds']}) | {r['validation_max_abs_diff']:.3g} | "
                         f"{r['seconds']} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def _g(v):
    return "-" if v is None else f"{v:.3g}"


def plot_sweep(rows: list, path: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot([r["epsilon"] for r in rows], [r["relus_after"] for r in rows], "o-")
    ax.set_xlabel("epsilon (max |output change|, proved)")
    ax.set_ylabel("ReLUs left")
    ax.set_title("ACAS Xu 1_1, box of prop_1")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument("--benchmarks", default=str(Path(__file__).resolve().parents[3] / "shared" / "benchmarks"))
    ap.add_argument("--out", default="results")
    ap.add_argument("--parts", default=",".join(PARTS))
    ap.add_argument("--limit", type=int, default=None)
    a = ap.parse_args()
    run_tolerance_bench(Path(a.benchmarks), Path(a.out), a.limit, tuple(a.parts.split(",")))
