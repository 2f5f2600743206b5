"""Proof-carrying simplification: a model `equiv simplify` wrote names the model it came from (sha256) and
the phases it was reduced with, in its ONNX metadata.  `check` then needs no search: it re-proves just those
phases on its own region (so a claim is never trusted, only re-checked) and bounds the written model against
the exact reduction, which equals the original wherever the phases hold.  Anything that does not match
sends the check back to the general search.

Why the bound is sound: on the region, A(x) = R(x) for R = reduce_network(A, dead, active) (pure linear
algebra, exact when the phases hold).  B has R's layers with float32 weights; with e_k a bound on
|h_B - h_R| after layer k (e_0 = 0, both read the same x), z_B - z_R = W_B (h_B - h_R) + (W_B - W_R) h_R
+ (b_B - b_R), so |z_B - z_R| <= |W_B| e_k + |W_B - W_R| |h_R| + |b_B - b_R|, and ReLU is 1-Lipschitz.
|h_R| comes from interval bounds of R on the box.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
import zlib
from dataclasses import dataclass, field

import numpy as np
import onnx

from ..ir.network import Network
from ..spec.region import Box

META_KEY = "equiv.reduction"
FORMAT = 1
PACKED = "zlib+base64:"       # a record stored deflated (`put_record`); plain JSON is read too


@dataclass
class Claims:
    """What a simplified model says about itself: its original's sha256 and the phases it was reduced with."""

    source_sha256: str
    dead: list[np.ndarray]        # per hidden layer of the original: indices proved dead
    active: list[np.ndarray]      # ... and proved active
    region: dict | None = None    # where simplify proved them, {"sha256", "dims"} (older records: {"lo", "hi"});
                                  # information only: check re-proves on its own region

    def masks(self, widths: list[int]) -> tuple[list[np.ndarray], list[np.ndarray]] | None:
        """Boolean masks for a network with these hidden widths; None when the claims do not fit it."""
        if len(widths) != len(self.dead) or len(widths) != len(self.active):
            return None
        dead, active = [], []
        for w, d, a in zip(widths, self.dead, self.active):
            pair = phase_masks(w, d, a)
            if pair is None:
                return None
            dead.append(pair[0]), active.append(pair[1])
        return dead, active


def phase_masks(n: int, dead: np.ndarray, active: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Boolean masks of length n from recorded dead / active indices; None when an index is out of range or
    a position is recorded both ways."""
    if (dead.size and (dead.min() < 0 or dead.max() >= n)) or (active.size and (active.min() < 0 or active.max() >= n)):
        return None
    dm, am = np.zeros(n, bool), np.zeros(n, bool)
    dm[dead], am[active] = True, True
    return None if np.any(dm & am) else (dm, am)


def attach_claims(model: onnx.ModelProto, source_sha256: str, dead: list[np.ndarray], active: list[np.ndarray],
                  region: Box | None = None) -> onnx.ModelProto:
    """Record in the model's metadata the original's sha256 and the phases the reduction used (in place)."""
    doc = {"format": FORMAT, "source_sha256": source_sha256,
           "dead": [np.flatnonzero(d).tolist() for d in dead], "active": [np.flatnonzero(a).tolist() for a in active]}
    return put_record(model, META_KEY, doc, region)


def put_record(model: onnx.ModelProto, key: str, doc: dict, region: Box | None = None) -> onnx.ModelProto:
    """Store `doc` (plus the region's sha256 and size) as JSON under `key` in the model's metadata, replacing an
    older one.  The region is named, not written out: the record is information there (check re-proves on its own
    region), and an image's bounds would be most of the record (~30 KB deflated, 6 % of cifar10_small's file)."""
    if region is not None:
        doc = {**doc, "region": region_stamp(region)}
    keep = [p for p in model.metadata_props if p.key != key]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    model.metadata_props.add(key=key, value=pack_record(json.dumps(doc, separators=(",", ":"))))
    return model


def region_stamp(region: Box) -> dict:
    """How a record names the region it was proved on: `Box.sha256` and the number of inputs."""
    return {"sha256": region.sha256(), "dims": region.dim}


def pack_record(text: str) -> str:
    """A record's JSON as stored: deflated and base64-encoded (prefix PACKED) when that is shorter (long position
    lists compress well)."""
    packed = PACKED + base64.b64encode(zlib.compress(text.encode(), 9)).decode()
    return packed if len(packed) < len(text) else text


def unpack_record(value: str) -> str:
    """A stored record's JSON text (`pack_record` undone; plain JSON as it is)."""
    if value.startswith(PACKED):
        return zlib.decompress(base64.b64decode(value[len(PACKED):], validate=True)).decode()
    return value


def get_record(model: onnx.ModelProto, key: str, fmt: int, parse):
    """(parse(doc), None) for the JSON record under `key`, (None, None) without one, (None, why) when it has
    another format or does not parse."""
    text = next((p.value for p in model.metadata_props if p.key == key), None)
    if text is None:
        return None, None
    try:
        doc = json.loads(unpack_record(text))
        if doc.get("format") != fmt:
            return None, f"its {key} metadata has format {doc.get('format')!r}, this equiv reads {fmt}"
        return parse(doc), None
    except (ValueError, KeyError, TypeError, AttributeError, zlib.error) as exc:
        return None, f"its {key} metadata is malformed ({exc})"


def read_claims(model: onnx.ModelProto) -> tuple[Claims | None, str | None]:
    """(claims, None), or (None, why not) when the model carries none or unreadable ones."""
    def parse(doc):
        dead = [np.asarray(d, dtype=np.int64).reshape(-1) for d in doc["dead"]]
        active = [np.asarray(a, dtype=np.int64).reshape(-1) for a in doc["active"]]
        return Claims(str(doc["source_sha256"]), dead, active, doc.get("region"))
    return get_record(model, META_KEY, FORMAT, parse)


def model_sha256(model) -> str:
    """sha256 of a model file (path), or of a ModelProto's serialised bytes."""
    if isinstance(model, onnx.ModelProto):
        return hashlib.sha256(model.SerializeToString()).hexdigest()
    from ..apps.simplify import sha256_of
    return sha256_of(model)


def load_proto(model) -> onnx.ModelProto:
    return model if isinstance(model, onnx.ModelProto) else onnx.load(str(model), load_external_data=False)


def find_claims(model_a, model_b, reader=read_claims) -> tuple:
    """Does one of the two models say it is equiv's reduction of the other (its record read by `reader`)?
    (claims, b_is_reduction, note): note explains a model that carries claims about a different original
    (then claims is None) or unreadable ones."""
    notes = []
    for reduced, original, b_is_reduction in ((model_b, model_a, True), (model_a, model_b, False)):
        claims, why = reader(load_proto(reduced))
        if why:
            notes.append(why)
            continue
        if claims is None:
            continue
        sha = model_sha256(original)
        if claims.source_sha256 == sha:
            return claims, b_is_reduction, None
        notes.append(f"{'B' if b_is_reduction else 'A'} says it was simplified from a model with sha256 "
                     f"{claims.source_sha256[:16]}..., but {'A' if b_is_reduction else 'B'} has {sha[:16]}...")
    return None, True, ("; ".join(notes) or None)


@dataclass
class CarriedCheck:
    """The outcome of checking a reduction's claims: per-output bound on |original - reduced|, or why not."""

    ok: bool
    reason: str
    per_output: np.ndarray | None = None
    seconds: float = 0.0
    stats: dict = field(default_factory=dict)
    witnesses: np.ndarray | None = None

    def to_json(self) -> dict:
        return {"ok": self.ok, "reason": self.reason, "seconds": round(self.seconds, 4),
                "max_diff_upper": None if self.per_output is None else float(np.max(self.per_output)), **self.stats}


def check_claims(original: Network, reduced: Network, box: Box, claims: Claims, *, backend: str = "highs",
                 time_limit: float = 60.0, seed: int = 0, progress: bool = False, known=None,
                 target: np.ndarray | None = None) -> CarriedCheck:
    """Re-prove the claimed phases of `original` on the box, rebuild the reduction and bound |reduced - it|.
    known: sound bounds of the original's pre-activations on the box (e.g. tightened on boxes holding it);
    target: per output, the bound wanted (`rounding_bound` splits the box to get below it, in the time left)."""
    from ..transform.reduce import reduce_network
    from .stability import StabilityOptions, prove_stability
    t0 = time.perf_counter()
    masks = claims.masks(original.hidden_widths)
    if masks is None:
        return CarriedCheck(False, "the recorded phases do not fit the original's layers", seconds=time.perf_counter() - t0)
    dead, active = masks
    if any(np.any((d | a) & ~m) for d, a, m in zip(dead, active, original.masks)):
        return CarriedCheck(False, "the recorded phases name neurons without a ReLU", seconds=time.perf_counter() - t0)
    n_claims = int(sum(d.sum() + a.sum() for d, a in zip(dead, active)))
    # 1. the reduction, rebuilt from the original, must have the written model's shape
    exact = _export_order(reduce_network(original, dead, active))
    why = _same_structure(exact, reduced)
    if why:
        return CarriedCheck(False, f"the model is not the reduction its metadata describes ({why})",
                            seconds=time.perf_counter() - t0, stats={"claims": n_claims})
    # 2. the phases, re-proved on this box (the claimed side only; other neurons are not queried)
    sopt = StabilityOptions(method="milp", backend=backend, time_limit=min(10.0, time_limit), seed=seed,
                            milp_budget=time_limit, progress=progress)
    stab = prove_stability(original, box, sopt, claims=(dead, active), known=known)
    got_dead, got_active = stab.phase_masks(original)
    missing = [(k + 1, int(i), "dead") for k, d in enumerate(dead) for i in np.flatnonzero(d & ~got_dead[k])]
    missing += [(k + 1, int(i), "active") for k, a in enumerate(active) for i in np.flatnonzero(a & ~got_active[k])]
    by = {}
    for p in stab.neurons:
        if p.phase in ("dead", "active") and p.method != "unclaimed":
            by[p.method] = by.get(p.method, 0) + 1
    stats = {"claims": n_claims, "proved_by": by, "queries": stab.queries}
    if missing:
        refuted = sum(stab.neurons[_flat(original, k - 1, i)].phase == "unstable" for k, i, _ in missing)
        return CarriedCheck(False, f"{len(missing)} of {n_claims} recorded phases were not proved on this region"
                            + (f" ({refuted} shown wrong by real points)" if refuted else "")
                            + f", e.g. layer {missing[0][0]} neuron {missing[0][1]} {missing[0][2]}",
                            seconds=time.perf_counter() - t0, stats=stats, witnesses=stab.witnesses)
    # 3. the written weights against the exact reduction: a bound on the float32 rounding's effect
    per_output = rounding_bound(exact, reduced, box, target, t0 + time_limit)
    return CarriedCheck(True, f"all {n_claims} recorded phases re-proved on this region and the model has the "
                        "structure of their reduction of the original", per_output, time.perf_counter() - t0, stats,
                        stab.witnesses)


def _flat(net: Network, k: int, i: int) -> int:
    return int(sum(net.hidden_widths[:k]) + i)


def _export_order(net: Network) -> Network:
    """The layer order the ONNX export writes: in a partly linear layer, ReLU neurons first, then linear ones."""
    dense = [d for d in net.dense]
    masks = []
    from ..ir.network import Dense
    for k, m in enumerate(net.masks):
        perm = np.concatenate([np.flatnonzero(m), np.flatnonzero(~m)])
        dense[k] = Dense(dense[k].W[perm], dense[k].b[perm])
        dense[k + 1] = Dense(dense[k + 1].W[:, perm], dense[k + 1].b)
        masks.append(np.asarray(m)[perm])
    return net.with_layers(dense, masks)


def _same_structure(a: Network, b: Network) -> str | None:
    if len(a.dense) != len(b.dense) or len(a.masks) != len(b.masks):
        return f"{len(a.dense)} layers expected, the model has {len(b.dense)}"
    for k, (da, db) in enumerate(zip(a.dense, b.dense), start=1):
        if da.W.shape != db.W.shape or da.b.shape != db.b.shape:
            return f"layer {k} is {db.W.shape[0]}x{db.W.shape[1]}, expected {da.W.shape[0]}x{da.W.shape[1]}"
    for k, (ma, mb) in enumerate(zip(a.masks, b.masks), start=1):
        if not np.array_equal(np.asarray(ma, bool), np.asarray(mb, bool)):
            return f"hidden layer {k} has its ReLUs on other neurons"
    return None


ROUNDING_BOXES = 4096      # sub-boxes `rounding_bound` may bound to get below a target


def rounding_bound(exact: Network, written: Network, box: Box, target: np.ndarray | None = None,
                   deadline: float | None = None) -> np.ndarray:
    """Per output, a bound on |written(x) - exact(x)| over the box, for two networks of one structure: the
    tighter of the difference engine's (one back-substitution pass over the paired networks) and the
    interval propagation of the module docstring.  Above `target` (per output), the sub-boxes still above
    it are bisected (widest side first) and bounded again, batched, until all are below it, ROUNDING_BOXES
    are spent or the `deadline` (perf_counter) passes: the max over sub-boxes that cover the box bounds it
    (ACAS Xu 4_7: 1.04e-4 on a slice's box, 4.9e-5 over 1 024 pieces, against an epsilon of 1e-4)."""
    from ..bounds.diff import pair_bounds
    from .align import align
    pair = align(exact, written)

    def engine(lo, hi):
        pb = pair_bounds(pair, lo, hi)
        return np.maximum(np.maximum(pb.d_hi[-1], -pb.d_lo[-1]), 0.0) + 0.0    # (N, n_out); + 0.0: no -0.0

    b = np.minimum(engine(box.lo[None], box.hi[None]), _interval_rounding(exact, written, box)[None])
    if target is None:
        return b[0]
    lo, hi, used = box.lo[None].astype(float), box.hi[None].astype(float), 1
    scale = np.where(box.hi > box.lo, box.hi - box.lo, 1.0)
    while deadline is None or time.perf_counter() < deadline:
        over = np.any(b > target, axis=1) & np.any(hi > lo, axis=1)
        n = int(over.sum())
        if not n or used + 2 * n > ROUNDING_BOXES:
            break
        L, H = lo[over], hi[over]
        rows, d = np.arange(n), np.argmax((H - L) / scale, axis=1)
        mid = (L[rows, d] + H[rows, d]) / 2
        H1, L2 = H.copy(), L.copy()
        H1[rows, d], L2[rows, d] = mid, mid             # [L, H1] and [L2, H] cover [L, H]
        parent = np.vstack([b[over], b[over]])
        child = np.minimum(engine(np.vstack([L, L2]), np.vstack([H1, H])), parent)
        lo, hi = np.vstack([lo[~over], L, L2]), np.vstack([hi[~over], H1, H])
        b, used = np.vstack([b[~over], child]), used + 2 * n
    return b.max(axis=0)


def _interval_rounding(exact: Network, written: Network, box: Box) -> np.ndarray:
    """|z_B - z_R| <= |W_B| e + |W_B - W_R| |h_R| + |b_B - b_R| layer by layer, |h_R| by interval arithmetic,
    and a relative safety factor on top."""
    lo, hi = box.lo.astype(float), box.hi.astype(float)
    e = np.zeros_like(lo)
    for k, (dx, dw) in enumerate(zip(exact.dense, written.dense)):
        mag = np.maximum(np.abs(lo), np.abs(hi))
        e = np.abs(dw.W) @ e + np.abs(dw.W - dx.W) @ mag + np.abs(dw.b - dx.b)
        c, r = (lo + hi) / 2, (hi - lo) / 2
        zc, zr = dx.W @ c + dx.b, np.abs(dx.W) @ r
        lo, hi = zc - zr, zc + zr
        if k < len(exact.masks):
            m = np.asarray(exact.masks[k], bool)
            lo, hi = np.where(m, np.maximum(lo, 0.0), lo), np.where(m, np.maximum(hi, 0.0), hi)
    # float64 rounding in the sums above is far below this factor for any realistic width
    return e * (1 + 1e-6) + 1e-12
