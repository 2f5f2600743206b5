"""`simplify` on any graph (convolutions, residual blocks, several inputs): phases by sampling and the
DAG bounds engine, each ReLU replaced by a masked one, exported with Conv kept as Conv, validated.

A position proved dead on the region outputs 0 and one proved active passes its input through; both
lose their ReLU (a verifier downstream has no case split there).  Only positions that are neither
proved stable nor shown unstable by a real point stay `unknown`, and keep their ReLU.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from dataclasses import dataclass, field

import numpy as np
import onnx

from ..bounds.engine import GraphBounds, deeppoly_graph, interval_graph
from ..errors import ValidationError
from ..solvers import milp_backend
from ..prove.graph_alpha import alpha_stage
from ..prove.graph_bab import bab_stage
from ..prove.graph_journal import PhaseJournal
from ..prove.graph_lp import affine_corners, lp_stage, run_points
from ..prove.graph_milp import milp_stage
from ..transform.fold import FoldLog, shrink
from ..ir import ops
from ..ir.graph import Graph
from ..ir.onnx_export import graph_to_onnx
from ..spec.region import Box
from ..artifacts.validate import OnnxRunner, ValidationReport, ascent_points, compare_on_points, validation_points

BAB_SHARE = 0.9     # of the solver budget left after the slopes: branch and bound first, MILPs on the rest

# ops that the chain pipeline (dense layers, LP/MILP proofs) represents as well
CHAIN_OPS = (ops.Input, ops.Relu, ops.Dense, ops.Scale, ops.Shift, ops.Reshape, ops.Transpose)


def is_dense_chain(g: Graph) -> bool:
    """One input, one output, and only dense layers, elementwise affine maps and reshapes between ReLUs."""
    return (len(g.inputs) == 1 and len(g.outputs) == 1 and all(isinstance(g.op(n), CHAIN_OPS) for n in g.order)
            and all(g.dag.out_degree(n) <= 1 for n in g.order))


def _chain_like(g: Graph, n: str) -> bool:
    """A node the chain importer may hold: a chain op, a Concat (partial-ReLU layers), a constant, or the Add of
    a constant to one tensor (a bias broadcast to a wider shape, e.g. tolerance mode's constant output x @ 0 + b)."""
    op = g.op(n)
    if isinstance(op, CHAIN_OPS + (ops.Concat, ops.Const)):
        return True
    return isinstance(op, ops.Add) and sum(isinstance(g.op(a), ops.Const) for a in g.args(n)) == len(g.args(n)) - 1


def takes_chain_pipeline(g: Graph, path) -> bool:
    """Dense chains, and equiv's own partial-ReLU layers (Concat of a Relu and a linear branch), go to the
    chain pipeline (input splitting, LP/MILP, the difference checker); everything else to the graph one.  Either
    way the chain importer must read the file (it does not fold constant subgraphs, e.g. a Cast of weights)."""
    if not is_dense_chain(g) and (len(g.inputs) != 1 or len(g.outputs) != 1 or
                                  not all(_chain_like(g, n) for n in g.order)):
        return False
    from ..errors import UnsupportedModelError
    from ..ir.chain_io import load_onnx
    try:
        load_onnx(path, check=False)      # (the pipeline reads it again, with the onnxruntime check)
        return True
    except UnsupportedModelError:
        return False


def real_signs(g: Graph, box: Box, values: dict, x: np.ndarray, batch: int = 256) -> dict:
    """{relu: positions whose input took both signs at real points (`values`, the graph's tensors at some points,
    and the points x), each beyond 100 x its float64 rounding margin (`engine.rounding_margins`): what no proof
    may contradict."""
    from ..bounds.engine import _parts, rounding_margins
    noise = rounding_margins(g, _parts(g, box.lo[None], box.hi[None]), None)
    pos = {r: False for r in g.relus}
    neg = {r: False for r in g.relus}
    batches = (g.evaluate(x[s:s + batch]) for s in range(0, len(x), batch))     # evaluated one at a time
    for vals in itertools.chain([values], batches):
        for r in g.relus:
            z = g.args(r)[0]
            t = 100.0 * noise[z][0].reshape(-1)
            v = vals[z].reshape(len(vals[z]), -1)
            pos[r] = pos[r] | (v > t).any(axis=0)
            neg[r] = neg[r] | (v < -t).any(axis=0)
    return {r: np.asarray(pos[r] & neg[r]) for r in g.relus}


@dataclass
class GraphPhases:
    """Per ReLU node, boolean arrays (the shape of its input) of proved and observed phases."""

    dead: dict
    active: dict
    unstable: dict
    bounds: GraphBounds
    witnesses: np.ndarray
    method: str
    stats: dict = field(default_factory=dict)     # LP queries made, undecided, proofs, skipped by the budget

    def counts(self) -> dict:
        c = {k: int(sum(np.sum(v) for v in getattr(self, k).values())) for k in ("dead", "active", "unstable")}
        total = int(sum(v.size for v in self.dead.values()))
        c["unknown"] = total - c["dead"] - c["active"] - c["unstable"]
        return c

    def per_layer(self, g: Graph) -> list[dict]:
        rows = []
        for r in self.dead:
            d, a, u = self.dead[r], self.active[r], self.unstable[r]
            rows.append({"relu": r, "shape": list(d.shape), "positions": int(d.size), "dead": int(d.sum()),
                         "active": int(a.sum()), "unstable": int(u.sum()), "unknown": int(d.size - d.sum() - a.sum() - u.sum())})
        return rows


def graph_phases(g: Graph, box: Box, method: str = "deeppoly", samples: int = 2000, seed: int = 0,
                 progress: bool = False, time_limit: float = 10.0, budget: float | None = None,
                 blocks=None, backend: str = "highs", claims: tuple[dict, dict] | None = None,
                 bab: bool = True, journal: PhaseJournal | None = None, executor=None) -> GraphPhases:
    """Proved phases (interval or DeepPoly bounds on the DAG; with lp/milp then optimised slopes, with milp
    branch and bound on ReLU phases (unless not bab, BAB_SHARE of the budget), and one LP or MILP decision
    per position still undecided) and positions seen with both signs at real points.
    claims: (dead, active) boolean masks per ReLU: only these phases are tried, each on its claimed side; the
    other positions count as unstable and get no query (re-proving a record, see `prove.graph_carried`).
    journal (`prove.graph_journal`, lp / milp): its phases and points are taken first, new ones kept there.
    executor (milp): a Dask one (`distributed.executor`) runs the branch and bound and the MILP decisions on
    its workers."""
    rng = np.random.default_rng(seed)
    pts = np.vstack([box.sample(samples, rng), box.vertices(256, rng), box.center[None]])
    vals = g.evaluate(pts)
    pos = {r: (vals[g.args(r)[0]] > 0).any(axis=0) for r in g.relus}
    neg = {r: (vals[g.args(r)[0]] < 0).any(axis=0) for r in g.relus}
    dead_sides = None
    if claims is not None:
        # an unclaimed position counts as seen with both signs (no query); a claimed one is asked on its side
        for r in g.relus:
            d, a = claims[0][r], claims[1][r]
            pos[r] = pos[r] | ~d
            neg[r] = neg[r] | ~a
        dead_sides = claims[0]
    b = interval_graph(g, box) if method == "interval" else deeppoly_graph(g, box, progress=progress, blocks=blocks)
    exact_first_dense(g, box, b)
    stats = {}
    found = []          # the solvers' points run in the graph (slopes' corners, LP and MILP points): validated too
    if method != "interval":
        stats["affine_corners"] = affine_corners(g, box, b, pos, neg, found)
    if method in ("lp", "milp"):      # slopes first (cheap), then LPs / MILPs on what is left; pos / neg grow with the LPs' points
        t0 = time.perf_counter()
        journal = journal or PhaseJournal()
        b, again = journal.replay(g, box, b)         # an earlier run's proofs and points (a resumed run)
        if len(again):
            run_points(g, again, pos, neg, found)
        if journal.journal is not None:
            stats.update(journal.replayed)
        b, more = alpha_stage(g, box, b, pos, neg, budget=budget, progress=progress, points=found, journal=journal)
        stats.update(_stage_stats(more, "alpha"))
        left = lambda: None if budget is None else max(0.0, budget - (time.perf_counter() - t0))  # noqa: E731
        if method == "milp" and bab:
            b, more = bab_stage(g, box, b, pos, neg, budget=None if budget is None else BAB_SHARE * left(),
                                progress=progress, points=found, journal=journal, executor=executor)
            stats.update(_stage_stats(more, "bab"))
        stage = milp_stage if method == "milp" else lp_stage
        extra = {"dead_sides": dead_sides, "executor": executor} if method == "milp" else {}
        b, more = stage(g, box, b, pos, neg, time_limit=time_limit, budget=left(), progress=progress, backend=backend,
                        points=found, journal=journal, **extra)
        stats.update(_stage_stats(more, method))
    seen = {r: pos[r] & neg[r] for r in g.relus}
    real = real_signs(g, box, vals, np.clip(np.vstack(found), box.lo, box.hi) if found else np.empty((0, box.dim)))
    dead, active, unstable = {}, {}, {}
    for r in g.relus:
        z = g.args(r)[0]
        dead[r] = b.hi[z] <= 0
        active[r] = (b.lo[z] >= 0) & ~dead[r]
        # a proof that real points refute is wrong: the position stays (a bug to report, never a removal)
        refuted = (dead[r] | active[r]) & real[r].reshape(dead[r].shape)
        if refuted.any():
            stats["refuted"] = stats.get("refuted", 0) + int(refuted.sum())
            stats.setdefault("refuted_at", []).append(f"{r}: {int(refuted.sum())}")
            dead[r], active[r] = dead[r] & ~refuted, active[r] & ~refuted
            seen[r] = seen[r] | refuted
        unstable[r] = seen[r] & ~dead[r] & ~active[r]
    # the witnesses: a thinned subset of the sampled points (they show the unstable positions), and every point
    # a solver returned (near the phase boundaries its queries were about)
    wit = np.vstack([pts[:: max(1, len(pts) // 64)]] + found)
    return GraphPhases(dead, active, unstable, b, wit, method, stats)


def exact_first_dense(g: Graph, box: Box, b) -> None:
    """ReLUs on a dense layer of a graph input whose exact range on the box ends at 0 (`bounds.exact`): their
    input's upper bound set to 0 (dead) or lower bound (active), in place; the margins kept them unstable."""
    from ..bounds.exact import exact_zero_sides
    L, H = g.split_input(box.lo[None]), g.split_input(box.hi[None])
    for r in g.relus:
        z = g.args(r)[0]
        op, args = g.op(z), g.args(z)
        if not isinstance(op, ops.Dense) or len(args) != 1 or g.op(args[0]).kind != "input" \
                or int(np.prod(g.shape(args[0])[:-1])) != 1 or z in g.meta.get("rounded", ()):
            continue        # (rounded: Gemm's alpha or beta scaled the weights with rounding)
        bias = np.zeros(op.W.shape[0]) if op.bias is None else \
            np.broadcast_to(np.asarray(op.bias, np.float64), op.shape).reshape(-1)
        shape = b.hi[z].shape
        dead, active = exact_zero_sides(op.W, bias, L[args[0]][0].reshape(-1), H[args[0]][0].reshape(-1),
                                        b.lo[z].reshape(-1), b.hi[z].reshape(-1))
        b.hi[z] = np.where(dead.reshape(shape), 0.0, b.hi[z])
        b.lo[z] = np.where(active.reshape(shape), 0.0, b.lo[z])


def _stage_stats(stats: dict, name: str) -> dict:
    """A stage's counts, its "seconds" renamed to name_seconds."""
    return {(f"{name}_seconds" if k == "seconds" else k): v for k, v in stats.items()}


def reduce_graph(g: Graph, ph: GraphPhases) -> Graph:
    """Each ReLU becomes a MaskedRelu: ReLU where not proved stable, identity where active, 0 where dead."""
    nodes = []
    for name in g.order:
        op = g.op(name)
        if name in ph.dead:
            keep = ~(ph.dead[name] | ph.active[name])
            prev = getattr(op, "relu_mask", np.ones(op.shape, bool))
            lin = getattr(op, "linear_mask", np.zeros(op.shape, bool))
            op = ops.MaskedRelu(op.shape, relu_mask=keep & prev, linear_mask=lin | (ph.active[name] & prev))
        nodes.append((name, op, g.args(name)))
    return Graph.build(nodes, g.inputs, g.outputs, meta=dict(g.meta))


@dataclass
class GraphSimplifyResult:
    original: Graph
    simplified: Graph
    phases: GraphPhases
    onnx_model: onnx.ModelProto
    validation: ValidationReport
    seconds: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    folds: FoldLog = field(default_factory=FoldLog)

    def report(self) -> dict:
        c = self.phases.counts()
        return {"relus_before": self.original.n_relus, "relus_after": self.simplified.n_relus,
                "params_before": self.original.n_params, "params_after": self.simplified.n_params,
                "mask_entries_after": self.simplified.n_mask_entries, "file_bytes_before": _file_size(self.original),
                "file_bytes_after": self.onnx_model.ByteSize(),
                "folded": self.folds.to_json(),
                "macs_before": self.original.n_macs, "macs_after": self.simplified.n_macs,
                "relu_layers": len(self.original.relus), "method": self.phases.method,
                "phases": c, "unknown": c["unknown"], "queries": self.phases.stats,
                "per_layer": self.per_layer(),
                "per_node": self.per_node(), "validation": self.validation.to_json(),
                "seconds": {k: round(v, 4) for k, v in self.seconds.items()}, "notes": self.notes}

    def per_layer(self) -> list[dict]:
        """Per ReLU layer: its phases, ReLUs and mask entries before -> after, and the rule that folded it away."""
        rows = self.phases.per_layer(self.original)
        for row in rows:
            r = row["relu"]
            op = self.simplified.op(r) if r in self.simplified.dag else None
            row.update({"relus_before": row["positions"], "relus_after": getattr(op, "n_relus", 0),
                        "mask_entries": getattr(op, "mask_entries", 0), "folded": self.folds.removed.get(r)})
        return rows

    def per_node(self) -> list[dict]:
        """Per node of the original graph that has parameters, MACs or ReLUs: before -> after (a node that a
        fold merged into its neighbour has 0 after)."""
        rows = []
        for n in self.original.order:
            a = self.original.op(n)
            b = self.simplified.op(n) if n in self.simplified.dag else ops.Op(())
            relus = getattr(a, "n_relus", 0), getattr(b, "n_relus", 0)
            if a.params or a.macs or relus[0] or b.params or b.macs or relus[1]:
                rows.append({"node": n, "op": type(a).__name__, "op_after": type(b).__name__ if n in self.simplified.dag
                             else None, "shape_before": list(a.shape),
                             "shape_after": list(b.shape), "params_before": a.params, "params_after": b.params,
                             "macs_before": a.macs, "macs_after": b.macs, "relus_before": relus[0],
                             "relus_after": relus[1]})
        return rows


def validate_graph_model(reference: OnnxRunner, model: onnx.ModelProto, g: Graph, small: Graph, box: Box,
                         witnesses: np.ndarray, n: int, seed: int, tolerance: float,
                         what: str = "the simplified model") -> ValidationReport:
    """Run `model` (computing `small`) against the original on random points, vertices, the centre, the
    witnesses and gradient-ascent points of the box; ValidationError (nothing to write) above the tolerance."""
    points = validation_points(box, n, np.random.default_rng(seed + 1), witnesses)
    points["ascent"] = ascent_points(g, small, box, np.vstack(list(points.values())))
    val = compare_on_points(reference, OnnxRunner(model), points, tolerance, box, exact=g.forward, intended=small.forward)
    if not val.ok:
        raise ValidationError(f"BUG: {what} {val.failure()}; nothing was written. Please report this.")
    return val


def _file_size(g: Graph) -> int | None:
    src = g.meta.get("source")
    return Path(src).stat().st_size if src and Path(src).is_file() else None


def simplify_graph(g: Graph, reference: OnnxRunner, box: Box, *, method: str = "deeppoly", samples: int = 2000,
                   seed: int = 0, validation_samples: int = 10000, tolerance: float = 1e-4,
                   progress: bool = False, time_limit: float = 10.0, budget: float | None = None,
                   blocks=None, backend: str = "highs", bab: bool = True,
                   journal: PhaseJournal | None = None, executor=None) -> GraphSimplifyResult:
    """Prove, reduce, export and validate; ValidationError (nothing to write) above the tolerance."""
    t0 = time.perf_counter()
    ph = graph_phases(g, box, method, samples, seed, progress, time_limit, budget, blocks, backend, bab=bab,
                      journal=journal, executor=executor)
    seconds = {"prove": time.perf_counter() - t0}
    t1 = time.perf_counter()
    small, removed, folds = shrink(reduce_graph(g, ph))
    model = graph_to_onnx(small)
    seconds["reduce_export"] = time.perf_counter() - t1
    t1 = time.perf_counter()
    val = validate_graph_model(reference, model, g, small, box, ph.witnesses, validation_samples, seed, tolerance)
    seconds["validate"] = time.perf_counter() - t1
    seconds["total"] = time.perf_counter() - t0
    notes = []
    if any(removed.values()):
        notes.append(f"deleted {removed['dense_rows']} dead rows of dense layers and {removed['conv_channels']} dead "
                     "convolution channels (with the next layer's matching columns / input channels)")
    skipped = ph.stats.get("lp_skipped", 0) + ph.stats.get("milp_skipped", 0) + ph.stats.get("alpha_skipped", 0)
    if skipped:
        notes.append(f"the solver budget ran out: {skipped} positions got no solver query (they stay 'unknown' "
                     "unless sampling showed them unstable)")
    if ph.stats.get("journal_proofs_reused") or ph.stats.get("journal_points_reused"):
        notes.append(f"{ph.stats['journal_proofs_reused']} proved phases and {ph.stats['journal_points_reused']} "
                     "solver points taken from the journal")
    failed = ph.stats.get("bab_failed", 0) + ph.stats.get("milp_failed", 0)
    if failed:
        notes.append(f"{failed} tasks failed on the cluster (their workers died, or they raised) and proved nothing: "
                     + "; ".join((ph.stats.get("bab_failures", []) + ph.stats.get("milp_failures", []))[:3]))
    if ph.stats.get("refuted"):
        notes.append(f"BUG: {ph.stats['refuted']} ReLU positions proved stable took both signs at real points of the "
                     f"box and were kept ({'; '.join(ph.stats['refuted_at'][:4])}). Please report this.")
    if ph.stats.get("milp_too_large"):
        notes.append(f"{ph.stats['milp_too_large']} MILP decisions were too large for the {backend} licence and proved "
                     "nothing")
    if method == "milp" and milp_backend(backend) != backend:
        notes.append(f"the {backend} backend solves LP relaxations only: the MILP decisions used highs")
    if ph.counts()["unknown"]:
        notes.append(f"{ph.counts()['unknown']} ReLU positions are neither proved stable nor seen unstable; they "
                     "keep their ReLU")
    return GraphSimplifyResult(g, small, ph, model, val, seconds, notes, folds)
