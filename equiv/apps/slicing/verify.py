"""`slice --verify`: re-check a written family from its files alone."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from ...errors import EquivError, InputFileError, RegionError
from ...ir.chain_io import load_onnx, network_from_onnx
from ...ir.onnx_import import read_onnx_file
from ...spec.region import Box
from ..simplify import sha256_of
from ...artifacts.validate import OnnxRunner, compare_on_points
from .family import _certify_slice, _record_of
from .manifest import MANIFEST, read_manifest
from .tiling import check_tiling, check_tree, dispatch_points

GRAPH_VERIFY_SAMPLES = 5000


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    unknown: bool = False     # not ok, but nothing was shown wrong (a certificate neither proved nor refuted)


@dataclass
class VerifyReport:
    folder: str
    checks: list[Check] = field(default_factory=list)
    scope: str = ""           # what was verified: the region and the tolerance (both read from the manifest
                              # unless given), and whether the slices were proved or only sampled

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def exit_code(self) -> int:
        """0 all passed, 1 a check failed, 3 only certificates neither proved nor refuted (as when making)."""
        if self.ok:
            return 0
        return 3 if all(c.ok or c.unknown for c in self.checks) else 1

    def add(self, name: str, problems: list[str], ok_detail: str) -> bool:
        self.checks.append(Check(name, not problems, "; ".join(problems) if problems else ok_detail))
        return not problems

    def to_json(self) -> dict:
        return {"folder": self.folder, "ok": self.ok, "exit_code": self.exit_code, "scope": self.scope,
                "checks": [dataclasses.asdict(c) for c in self.checks]}

    def format(self) -> str:
        lines = [f"equiv slice --verify {self.folder}"]
        lines += [f"  {'ok  ' if c.ok else 'UNKN' if c.unknown else 'FAIL'}  {c.name}: {c.detail}" for c in self.checks]
        lines.append({0: "  family verified", 1: "  VERIFICATION FAILED",
                      3: "  NOT VERIFIED: some certificates are unknown, nothing failed"}[self.exit_code]
                     + (f" ({self.scope})" if self.scope else ""))
        return "\n".join(lines)


def _find_model(manifest: dict, model: str | None) -> Path:
    """--model, else the manifest's recorded path or its resolved one: the first with the family's sha256 (a
    relative path read from another folder can name another file), else the first that exists (reported as
    not matching)."""
    candidates = [model] if model else [manifest.get("model"), manifest.get("model_resolved")]
    found = [Path(c) for c in candidates if isinstance(c, str) and c and Path(c).is_file()]
    if not found:
        raise InputFileError(f"original model not found (tried {[c for c in candidates if c]}); pass it with --model")
    if not model:
        for p in found:
            if sha256_of(p) == manifest.get("model_sha256"):
                return p
    return found[0]


def _member(folder: Path, name) -> Path | None:
    """A file named in the manifest, only if it is a plain file name inside the folder."""
    if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
        return None
    return folder / name


def verify_family(folder: str | Path, model: str | None = None, samples: int | None = None, region: Box | None = None,
                  seed: int = 12345, certify: bool = False, certify_time_limit: float = 60.0,
                  backend: str = "highs", tolerance: float | None = None) -> VerifyReport:
    """Re-check a family from its files alone: tiling of the region by the slice boxes, the tree, file
    hashes, every slice against the original on its own box, and the dispatcher on the whole region.
    `samples` defaults to 100000 points (chains) or 5000 (graphs: thousands of inputs, costly passes);
    `tolerance` to the manifest's."""
    folder = Path(folder)
    m = read_manifest(folder)
    graph = m.get("pipeline") == "graph"
    samples = samples or (GRAPH_VERIFY_SAMPLES if graph else 100000)
    rep = VerifyReport(str(folder))
    model_path = _find_model(m, model)
    try:
        reg = Box(np.asarray(m["region"]["lo"], float), np.asarray(m["region"]["hi"], float))
        slices = list(m["slices"])
        lo = [np.asarray(s["lo"], float) for s in slices]
        hi = [np.asarray(s["hi"], float) for s in slices]
    except (KeyError, TypeError, ValueError, RegionError) as exc:
        raise InputFileError(f"{folder / MANIFEST}: malformed region or slices ({exc})") from exc
    if region is not None and region.dim != reg.dim:     # not this family's model: bad input, not a failed check
        raise InputFileError(f"the region given has {region.dim} inputs; the family's region has {reg.dim}")
    # the user's tolerance when given, else the family's own (what it was made and validated with)
    tol = tolerance or float(m.get("options", {}).get("slicing", {}).get("tolerance", 1e-4))
    where = "the region given" if region is not None else \
        f"the manifest's region ({reg.dim} inputs; pass --spec/--box to check it is yours)"
    rep.scope = (f"on {where}, tolerance {tol:g}" + ("" if tolerance else " from the manifest")
                 + (", slices proved" if certify else ", slices sampled: --certify proves them"))

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
    _check_dispatcher(folder, m, reg, lo, hi, tiled, reference, samples, tol, seed, rep, inner_faces=graph)
    _check_dispatcher_build(folder, m, model_path, reg, lo, hi, files, graph, rep)
    if certify:
        _certify_slices(model_path, slices, lo, hi, files, reference, tol, certify_time_limit, backend, rep, graph,
                        m["tree"])
    return rep


def _certify_slices(model_path, slices, lo, hi, files, reference, tol, time_limit, backend, rep, graph=False,
                    tree=None):
    """`--verify --certify`: prove every slice file equal to the original on its box with `equiv check` (a graph
    family's slices by their records: `graph_carried.certify_graph_model`).  A chain slice left unknown is
    tried again from the bounds its ancestors in `tree` (the manifest's) tighten, top-down, as when made."""
    if graph:
        from ...ir import load_graph
        from ...prove.graph_carried import certify_graph_model
        original = load_graph(model_path)
    else:
        original = load_onnx(model_path)
    sha = sha256_of(model_path)
    problems, unknown, proved, worst, along = [], [], 0, 0.0, {}    # along: the ancestors' bounds
    for i in range(len(slices)):
        if i not in files:
            problems.append(f"slice {i}: no file to certify")
            continue
        try:
            written = read_onnx_file(files[i])          # (read once: the network and its record)
            net = None if graph else network_from_onnx(written)
        except EquivError as exc:
            problems.append(f"slice {i}: cannot be read for certification ({exc})")
            continue
        if graph:
            r = certify_graph_model(model_path, original, written, Box(lo[i], hi[i]), tol, backend=backend,
                                    time_limit=time_limit)
        else:
            r = _certify_slice(original, net, Box(lo[i], hi[i]), reference, OnnxRunner(written), tol, backend,
                               time_limit, carried=_record_of(written, sha), ancestors=(tree, i, along))
        if r.verdict == "equivalent":
            proved += 1
            worst = max(worst, r.max_diff_upper)
        elif r.verdict == "not_equivalent":
            problems.append(f"slice {i}: differs from the original by {r.max_diff_lower:.3g} > {tol:g} at "
                            f"{r.counterexample.input.tolist()}")
        elif graph:
            unknown.append(f"slice {i}: not certified by its record ({'; '.join(r.notes) or 'no reason given'})")
        else:
            unknown.append(f"slice {i}: equivalence neither proved nor refuted in {time_limit:g} s")
    rep.add("certificates", problems + unknown, f"all {proved} slices proved equal to the original on their boxes "
                                                f"(max |diff| <= {worst:.3g}, epsilon {tol:g})")
    rep.checks[-1].unknown = bool(unknown) and not problems


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
    named = {s.get("file") for s in slices} | {m.get("dispatch")}
    extra = sorted(p.name for p in folder.glob("*.onnx") if p.name not in named)
    if extra:
        problems.append(f"{', '.join(extra[:5])} in the folder {'is' if len(extra) == 1 else 'are'} no slice of the "
                        "manifest (an edit? a deployment may pick it up)")
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
            val = compare_on_points(reference, run, pts, tol, box)
        except Exception as exc:  # wrong shapes, bad box: a failed check, not a crash
            problems.append(f"slice {i}: cannot be compared ({type(exc).__name__}: {str(exc)[:120]})")
            continue
        worst = max(worst, val.max_abs_diff)
        if not val.ok:
            problems.append(f"slice {i}: {val.failure()} (on its box)")
    rep.add("slices vs original", problems, f"{len(slices)} slices, each on {n} random points, corners and centre "
                                            f"of its box: max |diff| {worst:.3g} (tolerance {tol:g})")


def _check_dispatcher_build(folder, m, model_path, reg, lo, hi, files, graph, rep) -> None:
    """The dispatcher file is exactly the routing equiv builds from these slice files, these boxes and this
    region (`transform.dispatch`: a float32 input goes to the first slice whose real box holds it): with the
    tiling and the slices' certificates, a proof about the dispatcher, which sampling alone is not."""
    from ...transform.dispatch import build_dispatcher, network_io
    path = _member(folder, m["dispatch"])
    if path is None or not path.is_file() or len(files) != len(lo):
        rep.add("dispatcher build", ["not rebuilt: a slice file or the dispatcher is missing"], "")
        return
    try:
        if graph:
            from ...ir import load_graph
            from .graph import graph_io
            io = graph_io(load_graph(model_path))
        else:
            io = network_io(load_onnx(model_path))
        models = [onnx.load(str(files[i])) for i in range(len(lo))]
        rebuilt = build_dispatcher(reg, [Box(a, b) for a, b in zip(lo, hi)], models, io)
        same = rebuilt.graph.SerializeToString() == onnx.load(str(path)).graph.SerializeToString()
    except Exception as exc:  # a tampered file may fail in protobuf or onnx in many ways
        rep.add("dispatcher build", [f"not rebuilt ({type(exc).__name__}: {str(exc)[:120]})"], "")
        return
    rep.add("dispatcher build", [] if same else [
        f"{m['dispatch']} is not the routing of these slice files over these boxes (edited, or made by an older "
        "equiv, whose float32 box limits could send an input to a slice not proved on it: slice again)"],
        "the dispatcher is the routing of these slice files over these boxes, rebuilt identically")


def _check_dispatcher(folder, m, reg, lo, hi, tiled, reference, samples, tol, seed, rep, inner_faces=False):
    path = _member(folder, m["dispatch"])
    run, err = _runner(path) if path is not None and path.is_file() else (None, "the dispatcher file is missing")
    if run is None:
        rep.add("dispatcher vs original", [err], "")
        return
    try:
        boxes = [Box(a, b) for a, b in zip(lo, hi)] if tiled else []
        pts = dispatch_points(reg, boxes, samples, 16, seed, inner_faces) if boxes else \
            {"random": reg.sample(samples, np.random.default_rng(seed))}
        val = compare_on_points(reference, run, pts, tol, reg)
    except Exception as exc:
        rep.add("dispatcher vs original", [f"cannot be compared ({type(exc).__name__}: {str(exc)[:120]})"], "")
        return
    rep.add("dispatcher vs original",
            [] if val.ok else [val.failure()],
            f"{val.samples} points ({', '.join(f'{k} {c}' for k, (c, _) in val.by_source.items())}): "
            f"max |diff| {val.max_abs_diff:.3g} (tolerance {tol:g})")
