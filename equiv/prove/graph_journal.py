"""`simplify --journal` on graphs: the phases a run proved and the points its solvers found, kept durably
so that a killed run (or one rerun with a larger budget) starts from them.

A chain run journals answers under the content of their query and replays them query by query.  A graph
run's stages share one budget, so a second run asks other questions; but what they prove is a fact about
the model on the region ("z_p <= 0 at every input of the box"), true whatever bounds or budget found it.
So the journal is keyed by the model's bytes and the region only, and `replay` intersects every journalled
phase into the bounds (DeepPoly recomputed once from them) before the slopes: the solver stages then skip
those positions.  Points are run in the graph again (they show unstable positions and join validation).
"""

from __future__ import annotations

import base64
import hashlib

import numpy as np

from ..bounds.engine import GraphBounds, deeppoly_graph
from ..distributed.journal import JournalMismatchError
from ..ir.graph import Graph
from ..spec.region import Box

PROVED, POINT = "proved:", "point:"


def journal_inputs(model_sha256: str, box: Box) -> dict:
    """What a graph journal's facts depend on: the model's bytes and the region (not the budget or method)."""
    return {"command": "simplify", "pipeline": "graph", "model_sha256": model_sha256, "region": box.to_json(),
            "holds": "phases proved and points found on this region"}


class PhaseJournal:
    """Journals phases as stages prove them and points as solvers find them; `journal` None: records nothing."""

    def __init__(self, journal=None):
        self.journal = journal
        self.replayed = {"journal_proofs_reused": 0, "journal_points_reused": 0}

    def proved(self, r: str, dead, active, stage: str) -> None:
        """Positions (flat indices) of ReLU r proved dead (z <= 0) or active (z >= 0) on the region."""
        dead, active = sorted(int(p) for p in dead), sorted(int(p) for p in active)
        if self.journal is None or not (dead or active):
            return
        fact = {"relu": r, "dead": dead, "active": active, "stage": stage}
        key = PROVED + hashlib.sha256(repr((r, dead, active)).encode()).hexdigest()[:24]
        if key not in self.journal.answers:
            self.journal.put(key, fact)

    def layer(self, r: str, old_lo, old_hi, new_lo, new_hi, stage: str) -> None:
        """The positions a stage made stable on layer r (flat bounds before and after)."""
        self.proved(r, np.flatnonzero((new_hi <= 0) & (old_hi > 0)),
                    np.flatnonzero((new_lo >= 0) & (old_lo < 0) & (new_hi > 0)), stage)

    def points(self, x: np.ndarray) -> None:
        """Input points (n, inputs) a solver returned, already clipped into the box."""
        if self.journal is None:
            return
        for row in np.atleast_2d(np.asarray(x, np.float64)):
            raw = row.tobytes()
            key = POINT + hashlib.sha256(raw).hexdigest()[:24]
            if key not in self.journal.answers:
                self.journal.put(key, {"x": base64.b64encode(raw).decode()})

    def replay(self, g: Graph, box: Box, bounds: GraphBounds) -> tuple[GraphBounds, np.ndarray]:
        """The bounds with every journalled phase intersected in (one DeepPoly pass from them), and the
        journalled points (n, inputs).  A fact naming a ReLU or position this graph lacks is refused: the
        journal's header matched, so the file was edited."""
        if self.journal is None:
            return bounds, np.zeros((0, box.dim))
        lo, hi, pts = {}, {}, []          # flat copies of the ReLU inputs a fact tightens
        for key, fact in self.journal.answers.items():
            if key.startswith(PROVED):
                r = fact["relu"]
                if r not in g.relus:
                    raise JournalMismatchError(f"journal {self.journal.path}: a proof names ReLU {r!r}, which this "
                                               "model does not have; move the journal away")
                z = g.args(r)[0]
                if z not in lo:
                    lo[z], hi[z] = bounds.lo[z].reshape(-1).copy(), bounds.hi[z].reshape(-1).copy()
                dead, active = np.array(fact["dead"], int), np.array(fact["active"], int)
                if any(p.size and (p.min() < 0 or p.max() >= lo[z].size) for p in (dead, active)):
                    raise JournalMismatchError(f"journal {self.journal.path}: a proof names a position outside "
                                               f"ReLU {r!r}; move the journal away")
                hi[z][dead] = np.minimum(hi[z][dead], 0.0)
                lo[z][active] = np.maximum(lo[z][active], 0.0)
                self.replayed["journal_proofs_reused"] += dead.size + active.size
            elif key.startswith(POINT):
                x = np.frombuffer(base64.b64decode(fact["x"]), np.float64)
                if x.size != box.dim:
                    raise JournalMismatchError(f"journal {self.journal.path}: a point has {x.size} inputs, the "
                                               f"region {box.dim}; move the journal away")
                pts.append(x)
        self.replayed["journal_points_reused"] = len(pts)
        self.journal.reused += len(pts) + sum(k.startswith(PROVED) for k in self.journal.answers)
        x = np.clip(np.array(pts), box.lo, box.hi) if pts else np.zeros((0, box.dim))
        self._refuse_contradictions(g, box, lo, hi, x)
        if lo:      # (as `bounds.engine.retightened`, for every tensor a fact tightens, in one pass)
            known = GraphBounds({**bounds.lo, **{z: v.reshape(bounds.lo[z].shape) for z, v in lo.items()}},
                                {**bounds.hi, **{z: v.reshape(bounds.hi[z].shape) for z, v in hi.items()}})
            bounds = deeppoly_graph(g, box, known=known)
        return bounds, x

    def _refuse_contradictions(self, g: Graph, box: Box, lo: dict, hi: dict, x: np.ndarray) -> None:
        """A journalled phase is trusted as a proof, so one that anything refutes means an edited file:
        refused when it contradicts this run's own sound bounds (hi < lo once intersected), or the values at
        real points (the centre, a few random ones, the journalled points) by more than rounding."""
        for z in lo:
            bad = np.flatnonzero(hi[z] < lo[z])
            if bad.size:
                raise JournalMismatchError(f"journal {self.journal.path}: a journalled phase of {z!r} (position "
                                           f"{int(bad[0])}) contradicts its proven bounds: the file was edited; "
                                           "move the journal away")
        if not lo:
            return
        pts = np.vstack([box.center[None], box.sample(8, np.random.default_rng(0)), x])
        vals = g.evaluate(pts)
        for z in lo:
            v = np.asarray(vals[z]).reshape(len(pts), -1)
            slack = 1e-6 * (1.0 + np.abs(v).max(axis=0))
            bad = np.flatnonzero(np.any((v > hi[z] + slack) | (v < lo[z] - slack), axis=0))
            if bad.size:
                raise JournalMismatchError(f"journal {self.journal.path}: a journalled phase of {z!r} (position "
                                           f"{int(bad[0])}) is refuted by a real point: the file was edited; "
                                           "move the journal away")
