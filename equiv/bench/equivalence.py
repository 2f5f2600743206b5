"""`equiv bench --suite equivalence`: the checker on real pairs; writes results/equivalence.md and .json.

Pairs (the suite makes the variant models itself):
* every ACAS Xu network against a copy with weights and biases rounded to float16 and back (the
  ReluDiff / NeuroDiff benchmark), epsilon = 0.05, on the boxes of prop_3 and prop_4, and (last,
  being the slowest) prop_1, whose input box is also prop_2's;
* MNIST 256x2 against a copy with the 10% smallest-magnitude weights zeroed, on prop_{0,1,2}_0.03,
  linf with epsilon = 0.5 and top1;
* MNIST 256x4 against its float16 copy on prop_0_0.03, epsilon = 0.05 and top1;
* each model `equiv simplify` makes in the core benchmark (ACAS Xu on prop_3 and prop_4, MNIST 256x2
  on prop_{0,1,2}_0.03) against its original, epsilon = 1e-4 (the validation tolerance).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..artifacts.files import write_json_atomic, write_text_atomic
from .core import machine
from ..ir.chain_export import network_to_onnx
from ..prove.equivalence import CheckOptions, certify_simplified, check_networks
from ..errors import InputFileError
from ..ir.network import Dense, Network
from ..ir.chain_io import load_onnx
from ..spec.region import load_region
from ..apps.simplify import simplify
from ..prove.stability import StabilityOptions
from ..artifacts.validate import OnnxRunner

ACAS = [f"acasxu/ACASXU_run2a_{a}_{b}_batch_2000.onnx" for a in range(1, 6) for b in range(1, 10)]
MNIST = "mnist_fc/mnist-net_256x2.onnx"
MNIST4 = "mnist_fc/mnist-net_256x4.onnx"


def float16_copy(net: Network) -> Network:
    return net.with_layers([Dense(d.W.astype(np.float16).astype(np.float64), d.b.astype(np.float16).astype(np.float64))
                            for d in net.dense], net.masks)


def pruned_copy(net: Network, fraction: float = 0.1) -> Network:
    """The network with the given fraction of its smallest-magnitude weights (over all layers) set to zero."""
    thr = np.quantile(np.concatenate([np.abs(d.W).ravel() for d in net.dense]), fraction)
    return net.with_layers([Dense(np.where(np.abs(d.W) <= thr, 0.0, d.W), d.b.copy()) for d in net.dense], net.masks)


def cases() -> list[dict]:
    acas = lambda props: [{"group": f"ACAS Xu float16, prop_{p}", "kind": "float16", "network": n,  # noqa: E731
                           "prop": f"acasxu/prop_{p}.vnnlib", "norm": "linf", "epsilon": 0.05} for p in props for n in ACAS]
    out = acas((3, 4))
    out += [{"group": f"MNIST 256x2 pruned 10%, {norm}", "kind": "pruned", "network": MNIST,
             "prop": f"mnist_fc/prop_{i}_0.03.vnnlib", "norm": norm, "epsilon": 0.5 if norm == "linf" else None}
            for norm in ("linf", "top1") for i in (0, 1, 2)]
    out += [{"group": f"MNIST 256x4 float16, {norm}", "kind": "float16", "network": MNIST4,
             "prop": "mnist_fc/prop_0_0.03.vnnlib", "norm": norm, "epsilon": 0.05 if norm == "linf" else None}
            for norm in ("linf", "top1")]
    out += [{"group": f"simplified vs original, ACAS Xu prop_{p}", "kind": "simplified", "network": n,
             "prop": f"acasxu/prop_{p}.vnnlib", "norm": "linf", "epsilon": 1e-4} for p in (3, 4) for n in ACAS]
    out += [{"group": "simplified vs original, MNIST 256x2", "kind": "simplified", "network": MNIST,
             "prop": f"mnist_fc/prop_{i}_0.03.vnnlib", "norm": "linf", "epsilon": 1e-4} for i in (0, 1, 2)]
    # the big box of prop_1 last: it takes the longest (prop_2 has exactly the same input box, so it is
    # not run twice)
    return out + acas((1,))


def run_case(case: dict, root: Path, time_limit: float) -> dict:
    box, _ = load_region(spec=str(root / case["prop"]))
    path = root / case["network"]
    extra = {}
    if case["kind"] == "simplified":
        t0 = time.perf_counter()
        s = simplify(path, box, StabilityOptions(milp_budget=60.0))
        extra = {"simplify_seconds": time.perf_counter() - t0, "relus_after": s.simplified.n_relus}
        t0 = time.perf_counter()
        r = certify_simplified(s, tolerance=case["epsilon"], time_limit=time_limit)
    else:
        f = load_onnx(path)
        g = float16_copy(f) if case["kind"] == "float16" else pruned_copy(f)
        run_a, run_b = OnnxRunner(str(path)), OnnxRunner(network_to_onnx(g))
        t0 = time.perf_counter()
        r = check_networks(f, g, box, run_a, run_b, CheckOptions(norm=case["norm"], epsilon=case["epsilon"],
                                                                time_limit=time_limit))
    seconds = time.perf_counter() - t0
    return {**case, "network": Path(case["network"]).stem.replace("_batch_2000", ""), "prop": Path(case["prop"]).stem,
            "verdict": r.verdict, "seconds": seconds, "time_limit": time_limit, "max_diff_upper": r.max_diff_upper,
            "max_diff_lower": r.max_diff_lower, "boxes": r.stats.get("boxes", 0),
            "shallow_boxes": r.stats.get("shallow_boxes", 0),
            "milp_queries": r.stats.get("milp_queries", 0), "pieces": len(r.pieces),
            "methods": sorted({p.method for p in r.pieces}), "notes": r.notes, **extra}


def run_equivalence_bench(root: Path, out: Path, time_limit: float = 300.0, limit: int | None = None,
                          executor=None, group: str | None = None) -> list[dict]:
    """Run the suite (or the cases of one `group`); with a Dask `executor` every pair is one task (the models
    are read from `root` on the workers: a shared file system), the rows kept in suite order."""
    if not (root / "acasxu").is_dir():
        raise InputFileError(f"benchmark folder not found: {root} (expected acasxu/ and mnist_fc/ inside)")
    todo = [c for c in cases() if group is None or c["group"] == group][:limit]
    # one group re-run: the other groups' rows already in `out` are kept (each row says its own time limit)
    kept = _other_groups(out, group) if group is not None else []
    save = lambda rows: _write(_in_suite_order(kept + rows), len(kept) + len(todo), out, time_limit)  # noqa: E731
    if executor is not None:
        from ..distributed.runner import map_tasks
        with tqdm(total=len(todo), desc="bench equivalence", unit="pair") as bar:
            res = map_tasks(executor, run_case, todo, root, time_limit, bar=bar)
        rows = [r if isinstance(r, dict) else _failed_row(c, r[1]) for c, r in zip(todo, res)]
        save(rows)
        return rows
    rows = []
    for case in tqdm(todo, desc="bench equivalence", unit="pair"):
        rows.append(run_case(case, root, time_limit))
        save(rows)
    return rows


def _other_groups(out: Path, group: str) -> list[dict]:
    """The rows of an earlier run in `out` that belong to other groups (None read back as inf where it stood
    for one); rows without their own time limit get the file's."""
    path = out / "equivalence.json"
    if not path.exists():
        return []
    import json
    data = json.loads(path.read_text())
    rows = []
    for r in data.get("cases", []):
        if r["group"] == group:
            continue
        r = dict(r)
        r["max_diff_upper"] = float("inf") if r.get("max_diff_upper") is None else r["max_diff_upper"]
        r["seconds"] = float("nan") if r.get("seconds") is None else r["seconds"]
        r.setdefault("time_limit", data.get("time_limit_per_case"))
        rows.append(r)
    return rows


def _in_suite_order(rows: list[dict]) -> list[dict]:
    """Rows sorted by their group's place in the suite (stable within a group)."""
    place = {}
    for c in cases():
        place.setdefault(c["group"], len(place))
    return sorted(rows, key=lambda r: place.get(r["group"], len(place)))


def _failed_row(case: dict, message: str) -> dict:
    """A pair whose task failed on the cluster: no verdict (it proves nothing)."""
    return {**case, "network": Path(case["network"]).stem.replace("_batch_2000", ""), "prop": Path(case["prop"]).stem,
            "verdict": "failed", "seconds": float("nan"), "max_diff_upper": float("inf"), "max_diff_lower": 0.0,
            "boxes": 0, "milp_queries": 0, "pieces": 0, "notes": [message]}


def _limits(rows: list[dict], default: float) -> str:
    return ", ".join(f"{v:g}" for v in sorted({float(r.get("time_limit") or default) for r in rows}))


def _fmt(v: float) -> str:
    return f"{v:.3g}" if np.isfinite(v) else "∞"


def _write(rows: list[dict], planned: int, out: Path, time_limit: float):
    info = machine()
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic({"suite": "equivalence", "machine": info, "time_limit_per_case": time_limit,
                       "cases_planned": planned,
                       "cases": [{k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in r.items()}
                                 for r in rows]}, out / "equivalence.json")
    groups: dict = {}
    for r in rows:
        groups.setdefault(r["group"], []).append(r)
    lines = ["# equiv bench --suite equivalence", "",
             f"Machine: {info['cpu']}, {info['cores']} cores, Python {info['python']} ({info['platform']}).",
             "Backend HiGHS; each group's time limit per pair is in its row. Time is wall-clock for `check` (falsification, "
             "difference bounds, input splitting, MILP), excluding model loading (and, for simplified models, the "
             "simplification itself). 'max diff proven' is the largest proven upper bound on max_j |f_j - g_j| over "
             "the group's pairs; 'seen' the largest difference found in onnxruntime. 'how' names the proofs of the "
             "pieces (carried: the simplified model's recorded phases re-proved, see `equiv/prove/carried.py`).",
             f"Cases done: {len(rows)} of {planned}.", "", "## Summary", "",
             "| pairs | epsilon | cases | equivalent | not equivalent | unknown | median time (s) | max time (s) | "
             "limit per pair (s) | max diff proven | max diff seen |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for g, rs in groups.items():
        t = [r["seconds"] for r in rs]
        eps = rs[0]["epsilon"]
        lines.append(f"| {g} | {'top1' if eps is None else f'{eps:g}'} | {len(rs)} | "
                     f"{sum(r['verdict'] == 'equivalent' for r in rs)} | {sum(r['verdict'] == 'not_equivalent' for r in rs)} | "
                     f"{sum(r['verdict'] == 'unknown' for r in rs)} | {statistics.median(t):.2f} | {max(t):.2f} | "
                     f"{_limits(rs, time_limit)} | {_fmt(max(r['max_diff_upper'] for r in rs))} | {_fmt(max(r['max_diff_lower'] for r in rs))} |")
    lines += ["", "## Cases", "", "'boxes': full bounds (every layer back-substituted); 'shallow': bounds from a "
              "parent's input-space lines and one walk back from the output (`search._bound_boxes`; '-': a run from "
              "before stop 28, which had none).", "",
              "| pairs | network | region | verdict | time (s) | max diff proven | seen | boxes | shallow | "
              "MILP queries | how |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['kind']}{'' if r['norm'] == 'linf' else ' top1'} | {r['network']} | {r['prop']} | "
                     f"{r['verdict']} | {r['seconds']:.2f} | {_fmt(r['max_diff_upper'])} | {_fmt(r['max_diff_lower'])} | "
                     f"{r['boxes']} | {r.get('shallow_boxes', '-')} | {r['milp_queries']} | "
                     f"{', '.join(r.get('methods') or []) or '-'} |")
    write_text_atomic(out / "equivalence.md", "\n".join(lines) + "\n")
