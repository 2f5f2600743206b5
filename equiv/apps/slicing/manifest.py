"""Writing a family (slices, dispatcher, plot, manifest) into a folder, reading its manifest back."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np

from ... import __version__
from ...artifacts.files import (
    OutputGuard,
    claim_family_dir,
    replace_dir_atomic,
    save_figure_atomic,
    save_onnx_atomic,
    write_json_atomic,
)
from ...errors import InputFileError
from ...spec.region import Box
from .family import SliceFamily
from .tree import Piece

MANIFEST = "manifest.json"
DISPATCH = "dispatch.onnx"
PLOT = "slices.png"


def slice_file(s: int) -> str:
    return f"slice_{s:03d}.onnx"


def _is_family(folder: Path) -> bool:
    try:
        read_manifest(folder)
        return True
    except InputFileError:
        return False


def _family_files(folder: Path) -> set:
    """The names equiv wrote into a family folder (from its manifest), plus the fixed ones."""
    try:
        listed = {s["file"] for s in json.loads((folder / MANIFEST).read_text())["slices"]}
    except (OSError, ValueError, KeyError, TypeError):
        listed = set()
    return listed | {MANIFEST, DISPATCH, PLOT}


def claim_output_dir(out: str | Path, guard: OutputGuard, force: bool) -> Path:
    """Check the family folder before any work: new, empty, or (with force) a family equiv made, holding
    only equiv's files and none of the run's inputs."""
    return claim_family_dir(out, guard, force, _is_family, _family_files)


def write_family(fam: SliceFamily, out: str | Path, force: bool = False) -> dict:
    """Write the slices, the dispatcher, the plot and the manifest into a fresh folder that then replaces
    `out` (which `claim_output_dir` checked: new, empty, or with force a family); returns the manifest.  What
    `out` holds is checked again at the swap: a folder another run filled meanwhile is not replaced."""
    manifest = {}

    def may_replace(folder: Path):
        if not any(folder.iterdir()):
            return None
        if force and _is_family(folder):
            return None
        return "it was filled while this run worked (another run writing there?)"

    def fill(folder: Path):
        hashes = []
        for s, model in enumerate(fam.models):
            save_onnx_atomic(model, folder / slice_file(s))
            hashes.append(hashlib.sha256(model.SerializeToString()).hexdigest())
        save_onnx_atomic(fam.dispatcher, folder / DISPATCH)
        notes = list(fam.notes)
        plot_note = plot_family(folder / PLOT, fam)
        notes += [plot_note] if plot_note else []
        manifest.update(build_manifest(fam, hashes, hashlib.sha256(fam.dispatcher.SerializeToString()).hexdigest(),
                                       notes, plot=None if plot_note else PLOT))
        write_json_atomic(manifest, folder / MANIFEST)

    replace_dir_atomic(out, fill, may_replace)
    return manifest


def build_manifest(fam: SliceFamily, hashes: list[str], dispatch_sha: str, notes: list[str], plot: str | None) -> dict:
    """The manifest: model and region, options, summary, one entry per slice, the tree, the dispatcher."""
    slices = []
    for s, (p, val) in enumerate(zip(fam.slices, fam.validations)):
        slices.append({
            "id": s, "file": slice_file(s), "sha256": hashes[s], "lo": p.box.lo.tolist(), "hi": p.box.hi.tolist(),
            "relus": p.network.n_relus, "params": p.network.n_params,
            **(_chain_entry(p, fam.prepass_unstable[s]) if fam.pipeline == "chain" else _graph_entry(p)),
            "seconds": round(p.seconds, 4), "validation": val.to_json(),
            **({"certificate": fam.certificates[s]} if fam.certificates else {}),
        })
    return {
        "equiv_version": __version__, "kind": "equiv slice family", "pipeline": fam.pipeline,
        "model": fam.model_path, "model_resolved": str(Path(fam.model_path).resolve()),
        "model_sha256": fam.model_sha256,
        "region": {"source": fam.region_source, **fam.region.to_json()},
        "options": {"stability": _stability_json(fam.options), "slicing": dataclasses.asdict(fam.slice_options)},
        "summary": family_summary(fam),
        "slices": slices,
        "tree": fam.tree.to_json(),
        "dispatch": DISPATCH, "dispatch_sha256": dispatch_sha, "dispatch_validation": fam.dispatch_validation.to_json(),
        "plot": plot,
        "seconds": {k: round(v, 4) for k, v in fam.seconds.items()},
        "notes": notes,
    }


def _chain_entry(p: Piece, prepass: int) -> dict:
    st = p.stability
    return {"depth": p.network.depth, "hidden_widths": p.network.hidden_widths,
            "phases": {ph: st.count(ph) for ph in ("dead", "active", "unstable", "unknown")},
            "proved_by": st.proved_by(), "prepass_unstable": prepass}


def _graph_entry(p: Piece) -> dict:
    return {"macs": p.network.n_macs, "phases": p.stability.counts(), "proved_by": p.stability.method}


def family_summary(fam: SliceFamily) -> dict:
    relus = np.array([p.network.n_relus for p in fam.slices])
    params = np.array([p.network.n_params for p in fam.slices])
    depths = [p.depth for p in fam.slices]
    chain = fam.pipeline == "chain"
    return {
        "pipeline": fam.pipeline, "relus_original": fam.original.n_relus, "params_original": fam.original.n_params,
        "depth_original": fam.original.depth if chain else None,
        "slices": len(fam.slices), "max_slices": fam.slice_options.max_slices,
        "target_relus": fam.slice_options.target_relus, "strategy": fam.slice_options.strategy,
        "relus_min": int(relus.min()), "relus_mean": float(relus.mean()), "relus_max": int(relus.max()),
        "params_min": int(params.min()), "params_mean": float(params.mean()), "params_max": int(params.max()),
        "prepass_unstable_mean": float(np.mean(fam.prepass_unstable)) if chain else None,
        "prepass_unstable_max": int(np.max(fam.prepass_unstable)) if chain else None,
        "tree_depth_min": min(depths), "tree_depth_max": max(depths),
        "slice_max_abs_diff": max(v.max_abs_diff for v in fam.validations),
        "slice_validation_samples": int(sum(v.samples for v in fam.validations)),
        "dispatch_max_abs_diff": fam.dispatch_validation.max_abs_diff,
        "dispatch_validation_samples": fam.dispatch_validation.samples,
        "seconds": round(fam.seconds.get("total", 0.0), 3),
    }


def format_summary(manifest: dict, folder: str | Path) -> str:
    """The human summary table of a written family."""
    s = manifest["summary"]
    rows = [("ReLUs", s["relus_original"], s["relus_min"], s["relus_mean"], s["relus_max"]),
            ("params", s["params_original"], s["params_min"], s["params_mean"], s["params_max"])]
    lines = [f"equiv slice: {manifest['model']} on {manifest['region']['source']} -> {folder}",
             f"  {'':<8}{'original':>10}{'min':>9}{'mean':>10}{'max':>9}"]
    lines += [f"  {name:<8}{orig:>10}{lo:>9}{mean:>10.1f}{hi:>9}" for name, orig, lo, mean, hi in rows]
    prepass = ("" if s.get("prepass_unstable_mean") is None else
               f"; DeepPoly alone on the same boxes leaves {s['prepass_unstable_mean']:.1f} unstable on average, "
               f"{s['prepass_unstable_max']} at most")
    lines += [
        f"  slices {s['slices']} (budget {s['max_slices']}, strategy {s['strategy']}, tree depth "
        f"{s['tree_depth_min']}..{s['tree_depth_max']}){prepass}",
        f"  validation: slices on {s['slice_validation_samples']} points of their boxes (max |diff| "
        f"{s['slice_max_abs_diff']:.3g}); dispatcher on {s['dispatch_validation_samples']} points of the region "
        f"(max |diff| {s['dispatch_max_abs_diff']:.3g})",
        f"  time {s['seconds']:.1f} s",
    ]
    lines += [f"  note: {n}" for n in manifest.get("notes", [])]
    return "\n".join(lines)


def most_split_dims(tree: Piece, region: Box) -> list[int]:
    """The two input dimensions split most often (ties and too few splits: the widest varying ones)."""
    counts = np.zeros(region.dim)
    stack = [tree]
    while stack:
        p = stack.pop()
        if p.children:
            counts[p.dim] += 1
            stack += p.children
    varying = np.flatnonzero(region.hi > region.lo)
    order = sorted(varying, key=lambda d: (-counts[d], -(region.hi[d] - region.lo[d]), d))
    return [int(d) for d in order[:2]]


def plot_family(path: Path, fam: SliceFamily) -> str | None:
    """Save the pieces projected on the two most-split dimensions, coloured by ReLU count; returns a note
    when no plot could be made.  Pieces are drawn in increasing ReLU order, so where projections overlap
    the colour shows the largest count among them."""
    dims = most_split_dims(fam.tree, fam.region)
    if len(dims) < 2:
        return "no plot: the region varies in fewer than two dimensions"
    try:
        from matplotlib import colormaps
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import Normalize
        from matplotlib.figure import Figure
        from matplotlib.patches import Rectangle
    except ImportError:
        return "no plot: matplotlib is not installed (pip install matplotlib)"
    dx, dy = dims
    relus = [p.network.n_relus for p in fam.slices]
    norm, cmap = Normalize(vmin=min(relus), vmax=max(max(relus), min(relus) + 1)), colormaps["viridis"]
    fig = Figure(figsize=(6.4, 5.0))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for s in np.argsort(relus, kind="stable"):
        b = fam.slices[s].box
        ax.add_patch(Rectangle((b.lo[dx], b.lo[dy]), b.hi[dx] - b.lo[dx], b.hi[dy] - b.lo[dy],
                               facecolor=cmap(norm(relus[s])), edgecolor="white", linewidth=0.6))
    ax.set_xlim(fam.region.lo[dx], fam.region.hi[dx])
    ax.set_ylim(fam.region.lo[dy], fam.region.hi[dy])
    ax.set_xlabel(f"input {dx}")
    ax.set_ylabel(f"input {dy}")
    ax.set_title(f"{len(relus)} slices: ReLUs min {min(relus)} / mean {np.mean(relus):.1f} / max {max(relus)} "
                 f"(original {fam.original.n_relus})", fontsize=9)
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, label="ReLUs (largest where pieces overlap in this view)")
    fig.tight_layout()
    save_figure_atomic(fig, path)
    return None


def read_manifest(folder: str | Path) -> dict:
    """The manifest of a family folder (InputFileError if there is none or it is not one)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputFileError(f"slice family folder not found: {folder}")
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except OSError as exc:
        raise InputFileError(f"{folder} holds no readable {MANIFEST}: {exc}") from exc
    except (ValueError, RecursionError) as exc:
        raise InputFileError(f"{folder / MANIFEST} is not valid JSON: {str(exc)[:200]}") from exc
    missing = {"model_sha256", "region", "slices", "tree", "dispatch"} - set(manifest if isinstance(manifest, dict) else {})
    if missing:
        raise InputFileError(f"{folder / MANIFEST} is not a slice family manifest (missing {sorted(missing)})")
    why = _malformed(manifest)
    if why:
        raise InputFileError(f"{folder / MANIFEST} is malformed: {why}")
    return manifest


def _malformed(m: dict) -> str | None:
    """Why the manifest's fields do not have the types a family's have (None when they do): a tampered manifest
    is refused with a reason (exit 2) instead of failing inside the checks."""
    def numbers(v, n=None):
        return isinstance(v, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v) \
            and (n is None or len(v) == n)
    for key in ("model", "model_resolved"):
        if m.get(key) is not None and not isinstance(m[key], str):
            return f"'{key}' is not a path"
    if not isinstance(m["model_sha256"], str):
        return "'model_sha256' is not a string"
    reg = m["region"]
    if not isinstance(reg, dict) or not numbers(reg.get("lo")) or not numbers(reg.get("hi"), len(reg.get("lo") or [])):
        return "'region' needs lists 'lo' and 'hi' of numbers of one length"
    n = len(reg["lo"])
    if not isinstance(m["slices"], list):
        return "'slices' is not a list"
    for k, sl in enumerate(m["slices"]):
        if not isinstance(sl, dict) or not isinstance(sl.get("id"), int) or isinstance(sl.get("id"), bool) \
                or not numbers(sl.get("lo"), n) or not numbers(sl.get("hi"), n):
            return f"slice entry {k} needs an integer 'id' and 'lo', 'hi' lists of {n} numbers"
    opts = m.get("options", {})
    if not isinstance(opts, dict) or not isinstance(opts.get("slicing", {}), dict):
        return "'options' and 'options.slicing' must be objects"
    tol = opts.get("slicing", {}).get("tolerance", 1e-4)
    if not isinstance(tol, (int, float)) or isinstance(tol, bool) or not tol > 0 or tol != tol or tol == float("inf"):
        return f"the tolerance {tol!r} is not a positive number"
    if m.get("pipeline") not in (None, "chain", "graph"):
        return f"unknown pipeline {m.get('pipeline')!r} (chain or graph)"
    return None


def _stability_json(options) -> dict:
    """The proof options as recorded: `workers` (threads solving one layer's queries in a process) is written
    as `threads`, so that it is not read as the number of Dask workers (--workers)."""
    return {("threads" if k == "workers" else k): v for k, v in dataclasses.asdict(options).items()}
