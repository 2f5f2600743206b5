"""Making a family: the tree, one validated model per leaf, the dispatcher, and optional certificates."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from ...bounds import deeppoly_bounds, interval_bounds
from ...ir.chain_export import network_to_onnx
from ...transform.dispatch import build_dispatcher, network_io
from ...errors import RegionError, ValidationError
from ...ir.network import Network
from ...ir.chain_io import load_onnx, network_from_onnx
from ...prove.carried import attach_claims, read_claims
from ...spec.region import Box
from ..simplify import sha256_of, validate_model
from ...prove.stability import StabilityOptions, prove_stability
from ...artifacts.validate import OnnxRunner, ValidationReport, compare_on_points
from .tree import Piece, SliceOptions, build_tree
from .tiling import dispatch_points


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
    pipeline: str = "chain"               # chain (Network pieces) | graph (Graph pieces, see graph.py)


def certify_family(fam: SliceFamily, backend: str = "highs", time_limit: float = 60.0, progress: bool = False) -> list:
    """`slice --certify`: prove each slice file equal to the original on its own box with the equivalence checker
    (epsilon = the slicing tolerance), by the record of its phases first when it has one; returns one summary
    per slice."""
    reference = OnnxRunner(str(fam.model_path))
    # the file's float32 weights, as written (the proof is about the file, not the float64 network)
    tree, cache = fam.tree.to_json(), {}
    return certify_each(fam, lambda p, model: _certify_slice(
        fam.original, network_from_onnx(model), p.box, reference, OnnxRunner(model), fam.slice_options.tolerance,
        backend, time_limit, carried=_record_of(model, fam.model_sha256), ancestors=(tree, p.slice_id, cache)),
        progress)


def certify_each(fam: SliceFamily, certify, progress: bool) -> list:
    """`certify(slice, model)` (a CheckResult) for every slice, with a progress bar; the certificate summaries,
    also kept in fam.certificates."""
    pieces = list(zip(fam.slices, fam.models))
    if progress:
        from tqdm import tqdm
        pieces = tqdm(pieces, desc="certifying slices", unit="slice", leave=False)
    fam.certificates = [certificate_entry(certify(p, model), fam.slice_options.tolerance) for p, model in pieces]
    return fam.certificates


def certificate_entry(r, epsilon: float) -> dict:
    """A slice's certificate in the manifest, from its `check` result (a CheckResult); its notes say why it is
    unknown, or why onnxruntime sees more than the proved bound (float32 evaluation)."""
    return {"verdict": r.verdict, "epsilon": epsilon,
            "max_diff_upper": None if not np.isfinite(r.max_diff_upper) else r.max_diff_upper,
            "max_diff_lower": r.max_diff_lower, "seconds": round(r.seconds, 4),
            "counterexample": None if r.counterexample is None else r.counterexample.to_json(),
            **({"notes": list(r.notes)} if r.notes else {})}


def _certify_slice(original: Network, net: Network, box: Box, reference, run, tolerance: float, backend: str,
                   time_limit: float, carried=None, ancestors=None):
    """`equiv check` of one slice against the original on the slice's box, epsilon = the tolerance; carried:
    (claims, True) when the slice records the phases it was reduced with (re-proved before any search).
    ancestors: (manifest tree, slice index, cache): when the check is left unknown, it runs again from the
    bounds the slice's ancestors tighten, root first, as the slice was made (`ancestor_bounds`): a leaf's
    box alone can leave its recorded phases too hard to re-prove (ACAS Xu 4_7 prop_2)."""
    from ...prove.equivalence import CheckOptions, check_networks
    opt = CheckOptions(epsilon=tolerance, backend=backend, time_limit=time_limit)
    r = check_networks(original, net, box, reference, run, opt, carried=carried)
    if r.verdict in ("equivalent", "not_equivalent") or ancestors is None:
        return r
    tree, i, cache = ancestors
    bounds = ancestor_bounds(original, tree, i, box, backend, time_limit, cache)
    if bounds is None:
        return r
    again = check_networks(original, net, box, reference, run, opt, carried=carried, f_bounds=bounds)
    again.notes.append(f"checked again from the bounds of its {len(tree_path(tree, i))} ancestors in the tree "
                       "(on the slice's box alone it was left unknown)")
    return again


def tree_path(tree: dict, i: int) -> list[dict] | None:
    """The nodes from the root down to slice i's parent in a manifest's tree (None: no such leaf)."""
    stack = [(tree, [])]
    while stack:
        node, path = stack.pop()
        if not isinstance(node, dict):          # (a malformed manifest: `check_tree` reports it)
            continue
        if "children" not in node:
            if node.get("slice") == i:
                return path
            continue
        if isinstance(node["children"], list):
            stack += [(c, path + [node]) for c in node["children"]]
    return None


def ancestor_bounds(original, tree: dict, i: int, box: Box, backend: str, time_limit: float, cache: dict):
    """Bounds of the original on slice i's `box`: each ancestor's box proved (LP/MILP, within `time_limit`) from
    its parent's bounds, root first, as the tree was made; sound on the slice since each box holds the next
    (checked here: a manifest's tree is read from a file; None when it does not hold, or no ancestor).
    cache: {(lo, hi): Bounds} shared by the slices of one family (siblings share their ancestors)."""
    bounds, inner = None, box
    path = tree_path(tree, i) or []
    try:
        boxes = [Box(np.asarray(n["lo"], float), np.asarray(n["hi"], float)) for n in path]
    except (KeyError, TypeError, ValueError, RegionError):
        return None
    for outer in reversed(boxes):
        if outer.dim != inner.dim or np.any(outer.lo > inner.lo) or np.any(outer.hi < inner.hi):
            return None
        inner = outer
    for node in boxes:
        key = (tuple(node.lo), tuple(node.hi))
        if key not in cache:
            sopt = StabilityOptions(backend=backend, time_limit=min(10.0, time_limit), milp_budget=time_limit)
            cache[key] = prove_stability(original, node, sopt, known=bounds).bounds
        bounds = cache[key]
    return bounds


def _record_of(model: onnx.ModelProto, original_sha256: str):
    """(claims, True) when the slice model records phases of the original (sha256), else None."""
    claims, _ = read_claims(model)
    return (claims, True) if claims is not None and claims.source_sha256 == original_sha256 else None


def prepass_unstable(net: Network, box: Box) -> int:
    """Unstable ReLUs on the box by interval and DeepPoly bounds alone (the reference the pipeline beats)."""
    return deeppoly_bounds(net, box, known=interval_bounds(net, box)).counts(net.masks)["unstable"]


def slice_model(model_path: str | Path, region: Box, options: StabilityOptions | None = None,
                slice_options: SliceOptions | None = None, region_source: str = "box", executor=None) -> SliceFamily:
    """Split the region, simplify on every piece, build the dispatcher, and validate all of it against the
    original model in onnxruntime.  Raises ValidationError (nothing to write) on any difference above the
    tolerance.  executor (`distributed`): the slice boxes are proved as tasks there (same family)."""
    options, sopt = options or StabilityOptions(), slice_options or SliceOptions()
    t_start = time.perf_counter()
    net = load_onnx(model_path)
    region.check_dim(net.n_inputs)
    reference = OnnxRunner(str(model_path))
    seconds = {}

    t0 = time.perf_counter()
    tree = build_tree(net, region, options, sopt, executor)
    seconds["tree"] = time.perf_counter() - t0
    certificates = None
    if sopt.epsilon is not None:
        t0 = time.perf_counter()
        certificates = within_tolerance(net, reference, tree.leaves(), sopt, options)
        seconds["tolerance"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    leaves, models, vals = export_leaves(tree, network_to_onnx, lambda s, leaf, model: validate_model(
        reference, model, leaf.box, leaf.stability.witnesses, sopt.validation_samples, options.seed + 1 + s,
        sopt.tolerance, what=f"slice {s}", networks=(net, leaf.network)))
    if sopt.epsilon is None:
        # each slice records the phases it was reduced with, as `simplify` does: `check` (and --certify) re-proves
        # them on the slice's box instead of searching (metadata only: the computation is unchanged)
        sha = sha256_of(model_path)
        for leaf, model in zip(leaves, models):
            attach_claims(model, sha, *leaf.stability.phase_masks(net), leaf.box)
    seconds["validate_slices"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    boxes = [p.box for p in leaves]
    dispatcher = build_dispatcher(region, boxes, models, network_io(net))
    dval = check_dispatcher(reference, dispatcher, region, boxes, sopt, options.seed + 7)
    seconds["dispatch"] = time.perf_counter() - t0
    prepass = [prepass_unstable(net, b) for b in boxes]
    seconds["total"] = time.perf_counter() - t_start
    return SliceFamily(str(model_path), sha256_of(model_path), region, region_source, net, tree, leaves, models, vals,
                       dispatcher, dval, options, sopt, prepass, seconds, _stop_notes(leaves, sopt),
                       certificates=certificates)


def within_tolerance(net: Network, reference: OnnxRunner, leaves: list[Piece], sopt: SliceOptions,
                     options: StabilityOptions) -> list:
    """`slice --epsilon`: each leaf's network simplified further up to epsilon on its box (from the leaf's own
    proofs), certified by `check` against the original there; one certificate summary per leaf."""
    from ..tolerance.pipeline import ToleranceOptions, simplify_within
    out = []
    for leaf in leaves:
        res = simplify_within(net, reference, leaf.box, ToleranceOptions(
            epsilon=sopt.epsilon, validation_samples=min(sopt.validation_samples, 2000), seed=options.seed),
            options, stab=leaf.stability)
        leaf.network = res.simplified
        out.append(tolerance_summary(res, sopt.epsilon))
    return out


def tolerance_summary(res, epsilon: float) -> dict:
    """A slice's certificate entry from a tolerance result (chain or graph)."""
    c = res.certificate
    return {"verdict": "equivalent" if c is not None else "exact", "epsilon": epsilon,
            "max_diff_upper": None if c is None else float(c.max_diff_upper),
            "max_diff_lower": None if c is None else c.max_diff_lower,
            "seconds": None if c is None else round(c.seconds, 4), "replaced": len(res.kept),
            "relus_exact": res.exact.n_relus, "counterexample": None}


def export_leaves(tree: Piece, export, validate) -> tuple[list, list, list]:
    """Number the leaves in slice order, export each leaf's network, and validate the model:
    `validate(s, leaf, model)` returns its report (or raises ValidationError)."""
    leaves = tree.leaves()
    models, vals = [], []
    for s, leaf in enumerate(leaves):
        leaf.slice_id = s
        models.append(export(leaf.network))
        vals.append(validate(s, leaf, models[-1]))
    return leaves, models, vals


def check_dispatcher(reference: OnnxRunner, dispatcher: onnx.ModelProto, region: Box, boxes: list[Box],
                     sopt: SliceOptions, seed: int, inner_faces: bool = False) -> ValidationReport:
    """The dispatcher against the original on the region, its slices' faces and corners; ValidationError
    (nothing to write) above the tolerance."""
    points = dispatch_points(region, boxes, sopt.dispatch_samples, sopt.face_samples, seed, inner_faces)
    dval = compare_on_points(reference, OnnxRunner(dispatcher), points, sopt.tolerance, region)
    if not dval.ok:
        raise ValidationError(f"BUG: the dispatcher {dval.failure()}; nothing was written. Please report this.")
    return dval


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
