"""Proof-carrying simplification for graphs (convolutions, residual blocks): the model `simplify` writes names
its original (sha256) and the ReLU positions it proved dead or active; `check` re-proves just those on its
own region, rebuilds the reduction (masked ReLUs, folds, dead channels deleted) and bounds the written file
against it with the difference graph.  The chain version, and why this is sound, is `carried`.

On the region, A(x) = R(x) for R = shrink(reduce_graph(A, phases)) when the phases hold (exact algebra);
the written model is R with float32 weights, read back and aligned with R, so DeepPoly on their difference
graph bounds |R - B| and hence |A - B|.
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass

import numpy as np
import onnx

from ..ir.graph import Graph
from ..spec.region import Box
from .carried import find_claims, get_record, load_proto, phase_masks, put_record

META_KEY = "equiv.graph_reduction"
FORMAT = 1


@dataclass
class GraphClaims:
    """A simplified graph's record: its original's sha256, the proof method, and per ReLU node the flat
    indices of the positions proved dead and active."""

    source_sha256: str
    method: str
    dead: dict
    active: dict
    region: dict | None = None
    edits: list | None = None     # tolerance mode: the ReLU positions replaced by lines, [{relu, index, a, c}]

    def masks(self, g: Graph) -> tuple[dict, dict] | None:
        """Boolean masks (each ReLU's input shape) for graph g; None when the record does not fit g."""
        if set(self.dead) != set(g.relus) or set(self.active) != set(g.relus):
            return None
        dead, active = {}, {}
        for r in g.relus:
            shape = g.shape(g.args(r)[0])
            pair = phase_masks(int(np.prod(shape)), self.dead[r], self.active[r])
            if pair is None:
                return None
            dead[r], active[r] = pair[0].reshape(shape), pair[1].reshape(shape)
        return dead, active


def attach_graph_claims(model: onnx.ModelProto, source_sha256: str, method: str, dead: dict, active: dict,
                        region: Box | None = None, edits: list | None = None) -> onnx.ModelProto:
    """Record in the model's metadata the original's sha256 and the proved phases (in place); edits (tolerance
    mode's `PositionEdit`s): the positions replaced by lines, which `check` puts back to align the file."""
    # positions as bit masks (base64 of packed bits): an index list costs ~6 characters per position, and a
    # conv layer has tens of thousands (Convnet_avgpool's record: 67 KB deflated as lists)
    doc = {"format": FORMAT, "source_sha256": source_sha256, "method": method,
           "dead_bits": {r: _bits(m) for r, m in dead.items()},
           "active_bits": {r: _bits(m) for r, m in active.items()}}
    if edits:
        doc["edits"] = [{"relu": e.relu, "index": int(e.index), "a": float(e.a), "c": float(e.c)} for e in edits]
    return put_record(model, META_KEY, doc, region)


def _bits(mask: np.ndarray) -> str:
    return base64.b64encode(np.packbits(np.asarray(mask, bool).reshape(-1)).tobytes()).decode()


def _indices(bits: str) -> np.ndarray:
    """The flat indices of the set bits (`_bits` undone; the padding bits are 0)."""
    return np.flatnonzero(np.unpackbits(np.frombuffer(base64.b64decode(bits, validate=True), np.uint8)))


def read_graph_claims(model: onnx.ModelProto) -> tuple[GraphClaims | None, str | None]:
    """(claims, None), or (None, why not) when the model carries none or unreadable ones."""
    def parse(doc):
        idx = lambda m: {str(r): np.asarray(v, dtype=np.int64).reshape(-1) for r, v in m.items()}  # noqa: E731
        if "dead_bits" in doc:
            dead = {str(r): _indices(v) for r, v in doc["dead_bits"].items()}
            active = {str(r): _indices(v) for r, v in doc["active_bits"].items()}
        else:                           # index lists: the records equiv wrote before bit masks
            dead, active = idx(doc["dead"]), idx(doc["active"])
        edits = doc.get("edits")
        if edits is not None:
            edits = [{"relu": str(e["relu"]), "index": int(e["index"]), "a": float(e["a"]), "c": float(e["c"])}
                     for e in edits]
        return GraphClaims(str(doc["source_sha256"]), str(doc["method"]), dead, active, doc.get("region"), edits)
    return get_record(model, META_KEY, FORMAT, parse)


def find_graph_claims(model_a, model_b) -> tuple[GraphClaims | None, bool, str | None]:
    """Does one of the two models say it is equiv's graph reduction of the other?  (see `carried.find_claims`)"""
    return find_claims(model_a, model_b, reader=read_graph_claims)


@dataclass
class GraphCarriedCheck:
    ok: bool
    reason: str
    per_output: np.ndarray | None = None     # proven bound on |original - written| per (flattened) output
    seconds: float = 0.0
    witnesses: np.ndarray | None = None
    timed_out: bool = False                  # the deadline passed before the bound on the written model started

    def to_json(self) -> dict:
        return {"ok": self.ok, "reason": self.reason, "seconds": round(self.seconds, 3),
                "per_output": None if self.per_output is None else [float(v) for v in self.per_output]}


def check_graph_claims(original: Graph, written: onnx.ModelProto, box: Box, claims: GraphClaims, *,
                       time_limit: float = 60.0, backend: str = "highs", seed: int = 0,
                       deadline: float | None = None) -> GraphCarriedCheck:
    """Re-prove the recorded phases on the box, rebuild the reduction and bound the written model against it.
    deadline (a time.perf_counter() time): when re-proving the phases (one DeepPoly pass with method deeppoly,
    which cannot be cut) ends after it, the bound (another pass, on the difference graph) is not started:
    not ok, timed_out."""
    from ..apps.graph_simplify import graph_phases, reduce_graph
    from ..ir.graph_align import align_to
    from ..ir.onnx_import import graph_from_onnx
    from ..ir.pair_graph import StructureError
    from ..transform.fold import shrink
    from .graph_check import difference_bounds
    t0 = time.perf_counter()
    masks = claims.masks(original)
    if masks is None:
        return GraphCarriedCheck(False, "its record does not fit the original's ReLU nodes")
    dead, active = masks
    n_claims = int(sum(m.sum() for m in dead.values()) + sum(m.sum() for m in active.values()))
    ph = graph_phases(original, box, method=claims.method, seed=seed, budget=time_limit, backend=backend,
                      claims=masks)
    missing = int(sum((dead[r] & ~ph.dead[r]).sum() + (active[r] & ~ph.active[r]).sum() for r in original.relus))
    if missing:
        return GraphCarriedCheck(False, f"{missing} of its {n_claims} recorded phases were not re-proved on this "
                                 "region", seconds=time.perf_counter() - t0, witnesses=ph.witnesses)
    if deadline is not None and time.perf_counter() > deadline:
        return GraphCarriedCheck(False, "the time limit was reached once its phases were re-proved, before the bound "
                                 "on the model", seconds=time.perf_counter() - t0, timed_out=True)
    claimed = _Phases(dead, active)
    if claims.edits:
        return _check_edits(original, written, box, claims, claimed, ph, n_claims, t0)
    exact, _, _ = shrink(reduce_graph(original, claimed))
    try:
        got = align_to(exact, graph_from_onnx(onnx.load_from_string(written.SerializeToString())))
    except StructureError as exc:
        return GraphCarriedCheck(False, f"the model is not the reduction its record describes ({exc})",
                                 seconds=time.perf_counter() - t0)
    lo, hi = difference_bounds(exact, got, box)
    per_output = np.maximum(np.abs(lo), np.abs(hi))
    return GraphCarriedCheck(True, f"all {n_claims} recorded phases re-proved on this region and the model has "
                             "the structure of their reduction of the original", per_output, time.perf_counter() - t0,
                             ph.witnesses)


def _check_edits(original: Graph, written: onnx.ModelProto, box: Box, claims: GraphClaims, claimed, ph, n_claims: int,
                 t0: float) -> GraphCarriedCheck:
    """A tolerance-mode record: the file is the reduction with the recorded positions replaced by lines.  It is
    aligned with that graph, and DeepPoly bounds its difference from the original itself (identity slots at the
    replaced ReLUs), starting from the original's bounds just proved on the box: sound whatever the record
    says, which only decides how the file is read (and how tight the bound is)."""
    from ..apps.tolerance.graph import PositionEdit, slot_known, slotted
    from ..ir.graph_align import align_to
    from ..ir.onnx_import import graph_from_onnx
    from ..ir.pair_graph import StructureError
    from .graph_check import difference_bounds
    relus = set(original.relus)
    edits = [PositionEdit(e["relu"], e["index"], e["a"], e["c"], 0.0) for e in claims.edits]
    bad = next((e for e in edits if e.relu not in relus or not 0 <= e.index < np.prod(original.shape(e.relu))
                or not (np.isfinite(e.a) and np.isfinite(e.c))), None)
    if bad is not None:
        return GraphCarriedCheck(False, f"its recorded replacement {bad.relu}[{bad.index}] does not fit the original",
                                 seconds=time.perf_counter() - t0)
    slots = {e.relu for e in edits}
    try:
        g = slotted(original, claimed, edits, slots)
        got = align_to(g, graph_from_onnx(onnx.load_from_string(written.SerializeToString())))
    except (ValueError, StructureError) as exc:
        return GraphCarriedCheck(False, f"the model is not the reduction with replacements its record describes "
                                 f"({exc})", seconds=time.perf_counter() - t0)
    lo, hi = difference_bounds(slotted(original, None, [], slots), got, box, slot_known(original, ph.bounds, slots))
    per_output = np.maximum(np.abs(lo), np.abs(hi))
    return GraphCarriedCheck(True, f"all {n_claims} recorded phases re-proved on this region, and the model has the "
                             f"structure of their reduction of the original with {len(edits)} ReLU positions replaced "
                             "by lines (their effect is in the bound)", per_output, time.perf_counter() - t0,
                             ph.witnesses)


@dataclass
class _Phases:
    """The proved phases `reduce_graph` reads."""

    dead: dict
    active: dict


def carried_graph_check(model_a, model_b, ga: Graph, gb: Graph, boxes: list[Box], opt, run_a, run_b,
                        then: str = "searched from scratch"):
    """`check` of two graphs when one says it is equiv's simplification of the other: (result, notes), the
    result None when the record decided nothing (the notes say why, and `then` what the caller does next)."""
    from . import falsify
    from .equivalence import CheckResult, Piece, eps_vector, piece_counts
    from .equivalence.result import GRAPH_KINDS
    from .equivalence.ledger import float32_note
    from ..solvers import milp_backend
    from ..spec.region import hull
    t0 = time.perf_counter()
    claims, b_is_reduction, why = find_graph_claims(model_a, model_b)
    notes = [f"not used as a proof: {why}"] if why else []
    if claims is None:
        return None, notes
    which, other = ("B", "A") if b_is_reduction else ("A", "B")
    if opt.norm == "linf" and opt.epsilon is None:
        notes.append(f"{which} carries its reduction's phases, but --measure asks for the bound itself: searched")
        return None, notes
    original, written = (ga, load_proto(model_b)) if b_is_reduction else (gb, load_proto(model_a))
    box = boxes[0] if len(boxes) == 1 else hull(boxes)       # phases proved on the hull hold on every box
    cc = check_graph_claims(original, written, box, claims, time_limit=0.5 * opt.time_limit,
                            backend=milp_backend(opt.backend), seed=opt.seed, deadline=t0 + opt.time_limit)
    eps = eps_vector(opt, ga.n_outputs)
    if cc.timed_out:
        # past --time-limit: no further stage (nor the search from scratch) starts; the verdict is unknown
        notes.append(f"{which} carries its reduction's phases, but {cc.reason} (--time-limit {opt.time_limit:g} s; "
                     "one DeepPoly pass over the original cannot be cut)")
        pieces = [Piece(b.lo, b.hi, "unknown", "none", float("inf")) for b in boxes]
        return CheckResult("unknown", opt.norm, None if opt.epsilon is None else eps.tolist(), float("inf"), 0.0,
                           None, opt.backend, time.perf_counter() - t0, pieces,
                           {"pipeline": "graph", "carried": cc.to_json(), "boxes": 0, "milp_queries": 0,
                            "unknown_reason": f"time limit of {opt.time_limit:g} s reached",
                            "pieces": piece_counts(pieces, GRAPH_KINDS)},
                           notes), notes
    if cc.ok and opt.norm == "top1":
        proved, why_not = _top1_from_rounding(original, boxes, cc.per_output + opt.margin)
    else:
        proved = cc.ok and bool(np.all(cc.per_output + opt.margin <= eps))
        why_not = f"the rounding bound {float(np.max(cc.per_output)):.3g} exceeds epsilon" if cc.ok else cc.reason
    if proved:
        # the proof needs no points, but every verdict is still confronted with onnxruntime
        rng = np.random.default_rng(opt.seed)
        X = [np.vstack([b.center[None], b.sample(opt.samples // len(boxes) + 1, rng), b.corners(limit=256)])
             for b in boxes]
        X = np.vstack(X + ([cc.witnesses] if cc.witnesses is not None else []))
        X = X[np.any([b.contains(X) for b in boxes], axis=0)]
        cex, seen = falsify.confirm(run_a, run_b, X, box, opt.norm, eps)
        if cex is None:
            upper = float(cc.per_output.max())
            notes.append(f"{which} is equiv's simplification of {other} (sha256 recorded in its metadata): {cc.reason}; "
                         "the bound covers every change of its weights from the reduction's (float32 "
                         "rounding, or edits)")
            if seen > upper:
                notes.append(float32_note(seen, upper))
            pieces = [Piece(b.lo, b.hi, "equivalent", "carried", upper) for b in boxes]
            return CheckResult("equivalent", opt.norm, None if opt.epsilon is None else eps.tolist(), upper, seen,
                               None, opt.backend,
                               time.perf_counter() - t0, pieces,
                               {"pipeline": "graph", "carried": cc.to_json(), "boxes": 0, "milp_queries": 0,
                                "pieces": piece_counts(pieces, GRAPH_KINDS)},
                               notes, [float(v) for v in cc.per_output]), notes
        notes.append(f"{which} carries its reduction's phases, but a point differs "
                     f"({'by more than epsilon' if opt.norm == 'linf' else 'in its top-1 class'}): {then}")
        return None, notes
    notes.append(f"{which} carries its reduction's phases, but {why_not}: {then}")
    return None, notes


def certify_graph_model(original_path, original: Graph, written: onnx.ModelProto, box: Box, tolerance: float, *,
                        backend: str = "highs", time_limit: float = 300.0, seed: int = 0):
    """`check` of a model equiv wrote (with its record) against its original on a box, epsilon = tolerance:
    the recorded phases re-proved, the reduction rebuilt, the rounding bounded.  A record that decides
    nothing gives an unknown CheckResult, with the reason in its notes (`simplify --certify`, `slice
    --certify`)."""
    from ..artifacts.validate import OnnxRunner
    from .equivalence import CheckOptions, CheckResult
    opt = CheckOptions(norm="linf", epsilon=tolerance, backend=backend, time_limit=time_limit, seed=seed)
    res, notes = carried_graph_check(original_path, written, original, None, [box], opt, OnnxRunner(str(original_path)),
                                     OnnxRunner(written), then="not certified (the record alone is used; `equiv check` "
                                                               "searches)")
    if res is None:
        notes = notes or ["the model carries no record of the phases it was reduced with (not certified: the record "
                          "alone is used; `equiv check` searches)"]
        res = CheckResult("unknown", "linf", [float(tolerance)] * original.n_outputs, float("inf"), 0.0, None, backend,
                          0.0, [], {"pipeline": "graph"}, notes)
    return res


def _top1_from_rounding(original: Graph, boxes: list[Box], delta: np.ndarray) -> tuple[bool, str]:
    """Top-1 from |A_j - B_j| <= delta_j: on each box, A's class c (at the centre) wins by more than
    delta_c + delta_k against every k (DeepPoly on A's margins), so B's margins B_c - B_k stay positive."""
    from ..bounds.engine import deeppoly_graph
    from .graph_check import margin_graph
    n = original.n_outputs
    for b in boxes:
        c = int(np.argmax(original.forward(b.center[None])[0]))
        head = np.eye(n)[c][None, :] - np.delete(np.eye(n), c, axis=0)
        M = margin_graph(original, head)
        fm = deeppoly_graph(M, b).lo[M.outputs[0]].reshape(-1)
        need = delta[c] + np.delete(delta, c)
        if not np.all(fm > need):
            return False, (f"A's top-1 margins on the region could not be proved above the rounding bound (smallest "
                           f"proven margin {float(fm.min()):.3g}, DeepPoly)")
    return True, ""
