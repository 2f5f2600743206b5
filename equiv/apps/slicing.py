"""Slicing: a family of small networks that together equal the original on the region.

On a large region few neurons are stable, so one simplified network stays big.  Bisect the region,
simplify on each piece (each piece's proofs hold on that piece only), and ship every piece's
network plus ONE dispatcher model that routes each input to its piece (`dispatch.py`).

* Splitting: a greedy bisection tree.  The leaf with the most ReLUs left (after simplification) is
  split next.  Strategy "unstable" bisects it along the dimension whose two halves have the fewest
  unstable ReLUs in sum by batched DeepPoly (all candidate halves in one pass, with the leaf's proved
  bounds intersected in); strategy "width" bisects the widest dimension relative to the region.
  Stop when every leaf has at most `target_relus` ReLUs or there are `max_slices` leaves.
* Reuse: a child box lies inside its parent, so the parent's proved bounds hold on it (intersected
  in) and the parent's witnesses that lie inside it are real points of it.
* Tiling: both halves share ONE float64 midpoint, so the leaves tile the region exactly;
  `check_tiling` proves it from the boxes alone (containment, disjoint interiors, exact volume).
* Every slice and the dispatcher are run against the original in onnxruntime before anything is
  written; a difference above the tolerance is a bug (ValidationError, nothing written).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
import onnx

from .. import __version__
from ..artifacts.files import (
    OutputGuard,
    claim_family_dir,
    replace_dir_atomic,
    save_figure_atomic,
    save_onnx_atomic,
    write_json_atomic,
)
from ..bounds import deeppoly_bounds, deeppoly_boxes, interval_bounds
from ..ir.chain_export import network_to_onnx
from ..transform.dispatch import build_dispatcher
from ..errors import EquivError, InputFileError, RegionError, ValidationError
from ..ir.network import Network
from ..ir.chain_io import load_onnx
from ..spec.bisect import Bisection, Node, Open
from ..spec.region import Box
from .simplify import prove_and_reduce, sha256_of, validate_model
from ..prove.stability import StabilityOptions, StabilityResult
from ..artifacts.validate import OnnxRunner, ValidationReport, compare_on_points

STRATEGIES = ("unstable", "width")
MANIFEST = "manifest.json"
DISPATCH = "dispatch.onnx"
PLOT = "slices.png"


@dataclass
class SliceOptions:
    """How far to split and how hard to validate."""

    max_slices: int = 64
    target_relus: int = 0            # stop splitting a leaf at <= this many ReLUs (0: spend the budget)
    strategy: str = "unstable"       # unstable | width
    validation_samples: int = 10000  # random points per slice (plus its corners, centre and witnesses)
    dispatch_samples: int = 100000   # random points of the region for the dispatcher (plus faces and corners)
    face_samples: int = 16           # points per face of every slice box, for the dispatcher
    tolerance: float = 1e-4
    progress: bool = False

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise InputFileError(f"--strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        if self.max_slices < 1 or self.target_relus < 0:
            raise InputFileError(f"need --max-slices >= 1 and --target-relus >= 0, got {self.max_slices} "
                                 f"and {self.target_relus}")


# ---- the bisection tree ---------------------------------------------------------------------------

@dataclass(eq=False)
class Piece:
    """A node of the bisection tree: its box and, once proved, its stability result and smaller network."""

    box: Box
    depth: int = 0
    dim: int | None = None            # split dimension (internal nodes)
    mid: float | None = None          # split point: children[0].hi[dim] == children[1].lo[dim] == mid
    children: list = field(default_factory=list)
    stability: StabilityResult | None = None
    network: Network | None = None
    seconds: float = 0.0
    final: bool = False               # no dimension left to bisect
    slice_id: int | None = None

    @property
    def relus(self) -> int:
        return self.network.n_relus

    def split(self, dim: int) -> list["Piece"]:
        """Bisect at the midpoint of `dim`; the halves share that one float, so they tile this box."""
        a, b = self.box.bisect(dim)
        self.dim, self.mid = int(dim), float(a.hi[dim])
        self.children = [Piece(a, self.depth + 1), Piece(b, self.depth + 1)]
        return self.children

    def leaves(self) -> list["Piece"]:
        """Leaves in depth-first order (the slice order)."""
        return [self] if not self.children else [p for c in self.children for p in c.leaves()]

    def to_json(self) -> dict:
        node = {"lo": self.box.lo.tolist(), "hi": self.box.hi.tolist(), "level": self.depth}
        if self.network is not None:
            node["relus"] = self.relus
        if self.children:
            return {**node, "split_dim": self.dim, "mid": self.mid, "children": [c.to_json() for c in self.children]}
        return {**node, "slice": self.slice_id}


def splittable_dims(box: Box) -> np.ndarray:
    """Dimensions whose midpoint lies strictly inside (false only for empty or 1-ulp-wide intervals)."""
    mid = (box.lo + box.hi) / 2
    return np.flatnonzero((box.lo < mid) & (mid < box.hi))


def widest_dim(box: Box, region: Box, dims: np.ndarray) -> int:
    """The dimension of `dims` widest relative to the region's width in it."""
    rel = (box.hi - box.lo)[dims] / (region.hi - region.lo)[dims]
    return int(dims[np.argmax(rel)])


def fewest_unstable_dim(net: Network, box: Box, region: Box, bounds, dims: np.ndarray) -> int:
    """The dimension whose bisection leaves the fewest unstable ReLUs in its two halves, summed.

    All 2 x len(dims) candidate halves are bounded in one batched DeepPoly pass; `bounds` (proved on
    `box`, hence sound on every half) are intersected in.  Ties go to the relatively widest dimension.
    """
    lo, hi = [], []
    for d in dims:
        for half in box.bisect(d):
            lo.append(half.lo)
            hi.append(half.hi)
    depth = len(net.masks)
    los, his, _ = deeppoly_boxes(net, np.array(lo), np.array(hi), bounds.lo[:depth], bounds.hi[:depth], depth=depth)
    unstable = sum(((l < 0) & (h > 0) & m).sum(axis=1) for l, h, m in zip(los, his, net.masks))
    per_dim = unstable.reshape(len(dims), 2).sum(axis=1)
    rel = (box.hi - box.lo)[dims] / (region.hi - region.lo)[dims]
    return int(dims[np.lexsort((-rel, per_dim))[0]])


def choose_dim(net: Network, piece: Piece, region: Box, strategy: str) -> int | None:
    """The dimension to bisect `piece` along, or None when no dimension can be bisected."""
    dims = splittable_dims(piece.box)
    if not dims.size:
        return None
    if strategy == "width":
        return widest_dim(piece.box, region, dims)
    return fewest_unstable_dim(net, piece.box, region, piece.stability.bounds, dims)


def prove_piece(net: Network, piece: Piece, options: StabilityOptions, parent: Piece | None = None) -> None:
    """Run the core pipeline on the piece's box, reusing the parent's bounds and witnesses (sound: the box
    lies inside the parent's)."""
    t0 = time.perf_counter()
    known = parent.stability.bounds if parent is not None else None
    seen = parent.stability.witnesses if parent is not None else None
    piece.stability, piece.network = prove_and_reduce(net, piece.box, options, known=known, seen_points=seen)
    piece.seconds = time.perf_counter() - t0


def build_tree(net: Network, region: Box, options: StabilityOptions, sopt: SliceOptions) -> Piece:
    """Greedy bisection: split the leaf with the most ReLUs until every leaf meets the target or the
    slice budget is spent.  Every node is proved on its own box."""
    options = dataclasses.replace(options, progress=False)   # one progress bar: the slices
    root = Piece(region)
    bar = _progress(sopt)

    def decide(nodes):
        out = []
        for node in nodes:
            parent = node.data
            piece = parent.children[node.path[-1]] if parent is not None else root
            prove_piece(net, piece, options, parent=parent)
            # the leaf with the most ReLUs first; ties: the shallower, then the leftmost
            out.append(Open(piece, key=(-piece.relus, piece.depth, node.path)) if piece.relus > sopt.target_relus
                       else None)
        if nodes[0].data is not None:
            bar.update(1)
        bar.set_postfix(max_relus=max(p.relus for p in root.leaves()))
        return out

    def choose_dims(nodes):
        dims = []
        for node in nodes:
            piece = node.data
            dims.append(choose_dim(net, piece, region, sopt.strategy))
            if dims[-1] is None:
                piece.final = True
            else:
                piece.split(dims[-1])
        return dims

    # leaves = 1 + splits < max_slices  <=>  boxes proved = 1 + 2 splits < 2 max_slices - 1
    Bisection(decide, choose_dims=choose_dims, order="best", max_boxes=2 * sopt.max_slices - 1).run(
        [Node(region.lo, region.hi)])
    bar.close()
    return root


def _progress(sopt: SliceOptions):
    from tqdm import tqdm
    return tqdm(total=sopt.max_slices, initial=1, desc="slicing", unit="slice", file=sys.stderr,
                disable=not sopt.progress, leave=False)


# ---- tiling ----------------------------------------------------------------------------------------

def check_tiling(region_lo, region_hi, lo, hi) -> list[str]:
    """Problems that keep boxes [lo[s], hi[s]] from tiling the region exactly (empty list: they tile it).

    Checked rigorously from the numbers alone: every box lies inside the region, no two boxes share
    interior points, and their volumes add up to the region's, computed exactly with Fractions of the
    float bounds over the region's non-degenerate dimensions.  Together these imply exact coverage:
    the union is closed, so an uncovered point of the region would have an uncovered neighbourhood of
    positive volume, and with disjoint interiors the union's volume would fall short of the region's.
    """
    rlo, rhi = np.asarray(region_lo, float), np.asarray(region_hi, float)
    lo, hi = np.atleast_2d(np.asarray(lo, float)), np.atleast_2d(np.asarray(hi, float))
    if lo.shape != hi.shape or lo.shape[1:] != rlo.shape or lo.shape[0] == 0:
        return [f"slice boxes of shape {lo.shape} / {hi.shape} do not match the region's {rlo.size} dimensions"]
    problems = []
    bad = ~(np.isfinite(lo).all(axis=1) & np.isfinite(hi).all(axis=1)) | (lo > hi).any(axis=1)
    problems += [f"slice {s}: box is not finite or has lo > hi" for s in np.flatnonzero(bad)]
    outside = (lo < rlo).any(axis=1) | (hi > rhi).any(axis=1)
    problems += [f"slice {s}: box is not inside the region" for s in np.flatnonzero(outside & ~bad)]
    free = np.flatnonzero(rhi > rlo)          # dimensions along which volume is measured
    flat = (hi[:, free] <= lo[:, free]).any(axis=1)
    problems += [f"slice {s}: box has no volume" for s in np.flatnonzero(flat & ~bad)]
    if problems:
        return problems
    for s in range(lo.shape[0] - 1):
        # interiors are disjoint iff some dimension separates the boxes (one ends where the other starts)
        sep = ((hi[s, free] <= lo[s + 1:, free]) | (hi[s + 1:, free] <= lo[s, free])).any(axis=1)
        problems += [f"slices {s} and {s + 1 + t} overlap" for t in np.flatnonzero(~sep)]
    if problems:
        return problems[:20] + ([f"... {len(problems) - 20} more overlaps"] if len(problems) > 20 else [])

    def volume(a, b):
        v = Fraction(1)
        for d in free:
            v *= Fraction(b[d]) - Fraction(a[d])
        return v

    total, whole = sum(volume(a, b) for a, b in zip(lo, hi)), volume(rlo, rhi)
    if total != whole:
        problems.append(f"the slices' volumes add up to {float(total / whole):.17g} of the region's: "
                        f"{'a gap' if total < whole else 'an overlap'} somewhere")
    return problems


def check_tree(tree: dict, slices: list[dict]) -> list[str]:
    """Problems with the manifest's tree: each split must bisect its node at `mid` along `split_dim`,
    and its leaves must be exactly the slices, with the same boxes."""
    problems, found = [], {}

    def walk(node, path):
        lo, hi = node["lo"], node["hi"]
        if "children" not in node:
            found[node["slice"]] = (lo, hi)
            return
        d, mid = node["split_dim"], node["mid"]
        a, b = node["children"]
        want_a = (lo, hi[:d] + [mid] + hi[d + 1:])
        want_b = (lo[:d] + [mid] + lo[d + 1:], hi)
        if (a["lo"], a["hi"]) != want_a or (b["lo"], b["hi"]) != want_b or not lo[d] < mid < hi[d]:
            problems.append(f"tree node {path or 'root'} is not bisected at {mid} along dimension {d}")
        walk(a, path + "0")
        walk(b, path + "1")

    try:
        walk(tree, "")
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        return [f"the tree is malformed ({type(exc).__name__}: {exc})"]
    listed = {s["id"]: (s["lo"], s["hi"]) for s in slices}
    if set(found) != set(listed):
        problems.append(f"the tree's leaves {sorted(found)} are not the slices {sorted(listed)}")
    problems += [f"slice {i}: its box differs from its tree leaf" for i in listed if i in found and found[i] != listed[i]]
    return problems


# ---- validation points -----------------------------------------------------------------------------

def face_points(boxes: list[Box], per_face: int, rng: np.random.Generator) -> np.ndarray:
    """`per_face` random points on every face (x_d = lo_d or hi_d) of every box: the shared faces where
    the dispatcher has to choose between two slices."""
    pts = []
    for b in boxes:
        for d in np.flatnonzero(b.hi > b.lo):
            for side in (b.lo[d], b.hi[d]):
                x = b.sample(per_face, rng)
                x[:, d] = side
                pts.append(x)
    return np.vstack(pts) if pts else np.empty((0, boxes[0].dim))


def dispatch_points(region: Box, boxes: list[Box], n: int, per_face: int, seed: int) -> dict:
    """Named point sets for checking a dispatcher: random points of the region, slice faces, slice corners."""
    rng = np.random.default_rng(seed)
    corners = [b.corners(limit=64) for b in boxes]
    return {"random": region.sample(n, rng), "faces": face_points(boxes, per_face, rng),
            "slice_corners": np.unique(np.vstack(corners), axis=0), "region_center": region.center[None]}


# ---- building a family -----------------------------------------------------------------------------

@dataclass
class SliceFamily:
    """Everything `slice_model` produced, validated and ready to write."""

    model_path: str
    model_sha256: str
    region: Box
    region_source: str
    original: Network
    tree: Piece
    slices: list[Piece]
    models: list[onnx.ModelProto]
    validations: list[ValidationReport]
    dispatcher: onnx.ModelProto
    dispatch_validation: ValidationReport
    options: StabilityOptions
    slice_options: SliceOptions
    prepass_unstable: list[int]
    seconds: dict
    notes: list = field(default_factory=list)
    certificates: list | None = None      # per slice, the `equiv check` verdict against the original (--certify)


def certify_family(fam: SliceFamily, backend: str = "highs", time_limit: float = 60.0, progress: bool = False) -> list:
    """`slice --certify`: prove each slice equal to the original on its own box with the equivalence checker
    (epsilon = the slicing tolerance); returns one summary per slice."""
    reference = OnnxRunner(str(fam.model_path))
    out = []
    pieces = list(zip(fam.slices, fam.models))
    if progress:
        from tqdm import tqdm
        pieces = tqdm(pieces, desc="certifying slices", unit="slice", leave=False)
    for p, model in pieces:
        r = _certify_slice(fam.original, p.network, p.box, reference, OnnxRunner(model), fam.slice_options.tolerance,
                           backend, time_limit)
        out.append({"verdict": r.verdict, "epsilon": fam.slice_options.tolerance,
                    "max_diff_upper": None if not np.isfinite(r.max_diff_upper) else r.max_diff_upper,
                    "max_diff_lower": r.max_diff_lower, "seconds": round(r.seconds, 4),
                    "counterexample": None if r.counterexample is None else r.counterexample.to_json()})
    fam.certificates = out
    return out


def _certify_slice(original: Network, net: Network, box: Box, reference, run, tolerance: float, backend: str,
                   time_limit: float):
    """`equiv check` of one slice against the original on the slice's box, epsilon = the tolerance."""
    from ..prove.equivalence import CheckOptions, check_networks
    return check_networks(original, net, box, reference, run,
                          CheckOptions(epsilon=tolerance, backend=backend, time_limit=time_limit))


def prepass_unstable(net: Network, box: Box) -> int:
    """Unstable ReLUs on the box by interval and DeepPoly bounds alone (the reference the pipeline beats)."""
    return deeppoly_bounds(net, box, known=interval_bounds(net, box)).counts(net.masks)["unstable"]


def slice_model(model_path: str | Path, region: Box, options: StabilityOptions | None = None,
                slice_options: SliceOptions | None = None, region_source: str = "box") -> SliceFamily:
    """Split the region, simplify on every piece, build the dispatcher, and validate all of it against the
    original model in onnxruntime.  Raises ValidationError (nothing to write) on any difference above the
    tolerance."""
    options, sopt = options or StabilityOptions(), slice_options or SliceOptions()
    t_start = time.perf_counter()
    net = load_onnx(model_path)
    region.check_dim(net.n_inputs)
    reference = OnnxRunner(str(model_path))
    seconds = {}

    t0 = time.perf_counter()
    tree = build_tree(net, region, options, sopt)
    seconds["tree"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    leaves = tree.leaves()
    models, vals = [], []
    for s, leaf in enumerate(leaves):
        leaf.slice_id = s
        models.append(network_to_onnx(leaf.network))
        vals.append(validate_model(reference, models[-1], leaf.box, leaf.stability.witnesses, sopt.validation_samples,
                                   options.seed + 1 + s, sopt.tolerance, what=f"slice {s}",
                                   networks=(net, leaf.network)))
    seconds["validate_slices"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    boxes = [p.box for p in leaves]
    dispatcher = build_dispatcher(region, boxes, [p.network for p in leaves])
    points = dispatch_points(region, boxes, sopt.dispatch_samples, sopt.face_samples, options.seed + 7)
    dval = compare_on_points(reference, OnnxRunner(dispatcher), points, sopt.tolerance)
    if not dval.ok:
        raise ValidationError(f"BUG: the dispatcher differs from the original by {dval.max_abs_diff:.3g} (tolerance "
                              f"{sopt.tolerance:g}) at input {dval.worst_input}; nothing was written. Please report this.")
    seconds["dispatch"] = time.perf_counter() - t0
    prepass = [prepass_unstable(net, b) for b in boxes]
    seconds["total"] = time.perf_counter() - t_start
    return SliceFamily(str(model_path), sha256_of(model_path), region, region_source, net, tree, leaves, models, vals,
                       dispatcher, dval, options, sopt, prepass, seconds, _stop_notes(leaves, sopt))


def _stop_notes(leaves: list[Piece], sopt: SliceOptions) -> list[str]:
    over = [p for p in leaves if p.relus > sopt.target_relus]
    notes = []
    if not over:
        notes.append(f"every slice has at most {sopt.target_relus} ReLUs")
    elif len(leaves) >= sopt.max_slices:
        notes.append(f"slice budget of {sopt.max_slices} spent; {len(over)} of {len(leaves)} slices have more "
                     f"than {sopt.target_relus} ReLUs")
    if any(p.final for p in over):
        notes.append(f"{sum(p.final for p in over)} slice(s) too thin to bisect further")
    return notes


# ---- writing ---------------------------------------------------------------------------------------

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


def write_family(fam: SliceFamily, out: str | Path) -> dict:
    """Write the slices, the dispatcher, the plot and the manifest into a fresh folder that then replaces
    `out` (which `claim_output_dir` checked); returns the manifest."""
    manifest = {}

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

    replace_dir_atomic(out, fill)
    return manifest


def build_manifest(fam: SliceFamily, hashes: list[str], dispatch_sha: str, notes: list[str], plot: str | None) -> dict:
    """The manifest: model and region, options, summary, one entry per slice, the tree, the dispatcher."""
    slices = []
    for s, (p, val, pre) in enumerate(zip(fam.slices, fam.validations, fam.prepass_unstable)):
        st = p.stability
        slices.append({
            "id": s, "file": slice_file(s), "sha256": hashes[s], "lo": p.box.lo.tolist(), "hi": p.box.hi.tolist(),
            "relus": p.network.n_relus, "params": p.network.n_params, "depth": p.network.depth,
            "hidden_widths": p.network.hidden_widths,
            "phases": {ph: st.count(ph) for ph in ("dead", "active", "unstable", "unknown")},
            "proved_by": st.proved_by(), "prepass_unstable": pre, "seconds": round(p.seconds, 4),
            "validation": val.to_json(),
            **({"certificate": fam.certificates[s]} if fam.certificates else {}),
        })
    return {
        "equiv_version": __version__, "kind": "equiv slice family",
        "model": fam.model_path, "model_resolved": str(Path(fam.model_path).resolve()),
        "model_sha256": fam.model_sha256,
        "region": {"source": fam.region_source, **fam.region.to_json()},
        "options": {"stability": dataclasses.asdict(fam.options), "slicing": dataclasses.asdict(fam.slice_options)},
        "summary": family_summary(fam),
        "slices": slices,
        "tree": fam.tree.to_json(),
        "dispatch": DISPATCH, "dispatch_sha256": dispatch_sha, "dispatch_validation": fam.dispatch_validation.to_json(),
        "plot": plot,
        "seconds": {k: round(v, 4) for k, v in fam.seconds.items()},
        "notes": notes,
    }


def family_summary(fam: SliceFamily) -> dict:
    relus = np.array([p.network.n_relus for p in fam.slices])
    params = np.array([p.network.n_params for p in fam.slices])
    depths = [p.depth for p in fam.slices]
    return {
        "relus_original": fam.original.n_relus, "params_original": fam.original.n_params,
        "depth_original": fam.original.depth,
        "slices": len(fam.slices), "max_slices": fam.slice_options.max_slices,
        "target_relus": fam.slice_options.target_relus, "strategy": fam.slice_options.strategy,
        "relus_min": int(relus.min()), "relus_mean": float(relus.mean()), "relus_max": int(relus.max()),
        "params_min": int(params.min()), "params_mean": float(params.mean()), "params_max": int(params.max()),
        "prepass_unstable_mean": float(np.mean(fam.prepass_unstable)),
        "prepass_unstable_max": int(np.max(fam.prepass_unstable)),
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
    lines += [
        f"  slices {s['slices']} (budget {s['max_slices']}, strategy {s['strategy']}, tree depth "
        f"{s['tree_depth_min']}..{s['tree_depth_max']}); DeepPoly alone on the same boxes leaves "
        f"{s['prepass_unstable_mean']:.1f} unstable on average, {s['prepass_unstable_max']} at most",
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


# ---- verifying a written family -------------------------------------------------------------------

@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class VerifyReport:
    folder: str
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def add(self, name: str, problems: list[str], ok_detail: str) -> bool:
        self.checks.append(Check(name, not problems, "; ".join(problems) if problems else ok_detail))
        return not problems

    def to_json(self) -> dict:
        return {"folder": self.folder, "ok": self.ok, "checks": [dataclasses.asdict(c) for c in self.checks]}

    def format(self) -> str:
        lines = [f"equiv slice --verify {self.folder}"]
        lines += [f"  {'ok  ' if c.ok else 'FAIL'}  {c.name}: {c.detail}" for c in self.checks]
        lines.append("  family verified" if self.ok else "  VERIFICATION FAILED")
        return "\n".join(lines)


def read_manifest(folder: str | Path) -> dict:
    """The manifest of a family folder (InputFileError if there is none or it is not one)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputFileError(f"slice family folder not found: {folder}")
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except OSError as exc:
        raise InputFileError(f"{folder} holds no readable {MANIFEST}: {exc}") from exc
    except ValueError as exc:
        raise InputFileError(f"{folder / MANIFEST} is not valid JSON: {exc}") from exc
    missing = {"model_sha256", "region", "slices", "tree", "dispatch"} - set(manifest if isinstance(manifest, dict) else {})
    if missing:
        raise InputFileError(f"{folder / MANIFEST} is not a slice family manifest (missing {sorted(missing)})")
    return manifest


def _find_model(manifest: dict, model: str | None) -> Path:
    candidates = [model] if model else [manifest.get("model"), manifest.get("model_resolved")]
    for c in candidates:
        if c and Path(c).is_file():
            return Path(c)
    raise InputFileError(f"original model not found (tried {[c for c in candidates if c]}); pass it with --model")


def _member(folder: Path, name) -> Path | None:
    """A file named in the manifest, only if it is a plain file name inside the folder."""
    if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
        return None
    return folder / name


def verify_family(folder: str | Path, model: str | None = None, samples: int = 100000, region: Box | None = None,
                  seed: int = 12345, certify: bool = False, certify_time_limit: float = 60.0,
                  backend: str = "highs") -> VerifyReport:
    """Re-check a family from its files alone: tiling of the region by the slice boxes, the tree, file
    hashes, every slice against the original on its own box, and the dispatcher on the whole region."""
    folder = Path(folder)
    m = read_manifest(folder)
    rep = VerifyReport(str(folder))
    model_path = _find_model(m, model)
    try:
        reg = Box(np.asarray(m["region"]["lo"], float), np.asarray(m["region"]["hi"], float))
        slices = list(m["slices"])
        lo = [np.asarray(s["lo"], float) for s in slices]
        hi = [np.asarray(s["hi"], float) for s in slices]
    except (KeyError, TypeError, ValueError, RegionError) as exc:
        raise InputFileError(f"{folder / MANIFEST}: malformed region or slices ({exc})") from exc
    tol = float(m.get("options", {}).get("slicing", {}).get("tolerance", 1e-4))

    sha = sha256_of(model_path)
    model_ok = rep.add("original model", [] if sha == m["model_sha256"] else
                       [f"{model_path} has sha256 {sha[:16]}..., the family was made from {str(m['model_sha256'])[:16]}..."],
                       f"{model_path} (sha256 matches)")
    if region is not None:
        same = region.dim == reg.dim and np.array_equal(region.lo, reg.lo) and np.array_equal(region.hi, reg.hi)
        rep.add("region", [] if same else ["the manifest's region is not the region given"], "equals the region given")
    tiling = check_tiling(reg.lo, reg.hi, np.array(lo) if slices else np.empty((0, reg.dim)), np.array(hi) if slices
                          else np.empty((0, reg.dim)))
    tiled = rep.add("tiling", tiling, f"{len(slices)} boxes tile the region exactly (inside it, disjoint interiors, "
                                      "volumes add up exactly)")
    rep.add("tree", check_tree(m["tree"], slices), "every split is a bisection and its leaves are the slices")
    files = _check_files(folder, slices, m, rep)
    if not model_ok:
        rep.checks.append(Check("outputs", False, "not compared: the original model is not the one the family was made from"))
        return rep
    reference = OnnxRunner(str(model_path))
    per_slice = max(1000, samples // max(len(slices), 1))
    _check_slice_outputs(slices, lo, hi, files, reference, per_slice, tol, seed, rep)
    _check_dispatcher(folder, m, reg, lo, hi, tiled, reference, samples, tol, seed, rep)
    if certify:
        _certify_slices(model_path, slices, lo, hi, files, reference, tol, certify_time_limit, backend, rep)
    return rep


def _certify_slices(model_path, slices, lo, hi, files, reference, tol, time_limit, backend, rep):
    """`--verify --certify`: prove every slice file equal to the original on its box with `equiv check`."""
    from ..ir.chain_io import load_onnx
    original = load_onnx(model_path)
    problems, proved, worst = [], 0, 0.0
    for i in range(len(slices)):
        if i not in files:
            problems.append(f"slice {i}: no file to certify")
            continue
        try:
            net = load_onnx(files[i])
        except EquivError as exc:
            problems.append(f"slice {i}: cannot be read for certification ({exc})")
            continue
        r = _certify_slice(original, net, Box(lo[i], hi[i]), reference, OnnxRunner(str(files[i])), tol, backend,
                           time_limit)
        if r.verdict == "equivalent":
            proved += 1
            worst = max(worst, r.max_diff_upper)
        elif r.verdict == "not_equivalent":
            problems.append(f"slice {i}: differs from the original by {r.max_diff_lower:.3g} > {tol:g} at "
                            f"{r.counterexample.input.tolist()}")
        else:
            problems.append(f"slice {i}: equivalence neither proved nor refuted in {time_limit:g} s")
    rep.add("certificates", problems, f"all {proved} slices proved equal to the original on their boxes "
                                      f"(max |diff| <= {worst:.3g}, epsilon {tol:g})")


def _check_files(folder: Path, slices: list, m: dict, rep: VerifyReport) -> dict:
    """sha256 of every slice file and the dispatcher against the manifest; returns {slice index: path} of
    the slice files that exist."""
    problems, found = [], {}
    for i, s in enumerate(slices):
        path = _member(folder, s.get("file"))
        if path is None:
            problems.append(f"slice {i}: file name {s.get('file')!r} is not a file of the folder")
        elif not path.is_file():
            problems.append(f"slice {i}: {s['file']} is missing")
        else:
            found[i] = path
            if sha256_of(path) != s.get("sha256"):
                problems.append(f"slice {i}: {s['file']} was changed (sha256 differs from the manifest)")
    path = _member(folder, m["dispatch"])
    if path is None or not path.is_file():
        problems.append(f"dispatcher {m['dispatch']!r} is missing")
    elif sha256_of(path) != m.get("dispatch_sha256"):
        problems.append(f"dispatcher {m['dispatch']} was changed (sha256 differs from the manifest)")
    rep.add("files", problems, f"{len(slices)} slice files and the dispatcher match their sha256")
    return found


def _runner(path: Path) -> tuple[OnnxRunner | None, str]:
    try:
        return OnnxRunner(str(path)), ""
    except Exception as exc:  # a tampered file may fail in protobuf or onnxruntime in many ways
        return None, f"{path.name} cannot be run ({type(exc).__name__}: {str(exc)[:120]})"


def _check_slice_outputs(slices, lo, hi, files, reference, n, tol, seed, rep):
    problems, worst = [], 0.0
    for i in range(len(slices)):
        if i not in files:
            problems.append(f"slice {i}: no file to run")
            continue
        run, err = _runner(files[i])
        if run is None:
            problems.append(f"slice {i}: {err}")
            continue
        try:
            box = Box(lo[i], hi[i])
            pts = {"random": box.sample(n, np.random.default_rng(seed + i)), "corners": box.corners(limit=1024),
                   "center": box.center[None]}
            val = compare_on_points(reference, run, pts, tol)
        except Exception as exc:  # wrong shapes, bad box: a failed check, not a crash
            problems.append(f"slice {i}: cannot be compared ({type(exc).__name__}: {str(exc)[:120]})")
            continue
        worst = max(worst, val.max_abs_diff)
        if not val.ok:
            problems.append(f"slice {i}: differs from the original by {val.max_abs_diff:.3g} on its box "
                            f"(tolerance {tol:g}) at {np.round(val.worst_input, 6).tolist()}")
    rep.add("slices vs original", problems, f"{len(slices)} slices, each on {n} random points, corners and centre "
                                            f"of its box: max |diff| {worst:.3g} (tolerance {tol:g})")


def _check_dispatcher(folder, m, reg, lo, hi, tiled, reference, samples, tol, seed, rep):
    path = _member(folder, m["dispatch"])
    run, err = _runner(path) if path is not None and path.is_file() else (None, "the dispatcher file is missing")
    if run is None:
        rep.add("dispatcher vs original", [err], "")
        return
    try:
        boxes = [Box(a, b) for a, b in zip(lo, hi)] if tiled else []
        pts = dispatch_points(reg, boxes, samples, 16, seed) if boxes else \
            {"random": reg.sample(samples, np.random.default_rng(seed))}
        val = compare_on_points(reference, run, pts, tol)
    except Exception as exc:
        rep.add("dispatcher vs original", [f"cannot be compared ({type(exc).__name__}: {str(exc)[:120]})"], "")
        return
    rep.add("dispatcher vs original",
            [] if val.ok else [f"differs from the original by {val.max_abs_diff:.3g} (tolerance {tol:g}) at "
                               f"{np.round(val.worst_input, 6).tolist()}"],
            f"{val.samples} points ({', '.join(f'{k} {c}' for k, (c, _) in val.by_source.items())}): "
            f"max |diff| {val.max_abs_diff:.3g} (tolerance {tol:g})")

