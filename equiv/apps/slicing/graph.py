"""`equiv slice` on graphs (convolutions, residual blocks): the same greedy tree, exact tiling, dispatcher
and manifest as on chains, with the graph pipeline on every piece.

* Split dimension ("gradient"): the input whose width times the output's sensitivity to it,
  sum_j |dy_j/dx_d| at the piece's centre, is largest, i.e. the input that moves the outputs most
  across the piece to first order; "width" takes the relatively widest input.
* Each piece: DAG bounds (and, with --method lp/milp, slopes and LPs), each ReLU proved stable on
  the piece dropped, dead channels pruned; only the leaves are exported and validated against the
  original in onnxruntime.  The graph bounds take no inherited bounds, so a child is proved afresh.
* The dispatcher inlines every leaf's model (one input, one output) under its own name prefix.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import InputFileError, UnsupportedModelError
from ...ir.graph import Graph
from ...ir.onnx_export import graph_to_onnx
from ...spec.region import Box
from ...transform.dispatch import ModelIO, build_dispatcher
from ...transform.fold import shrink
from ...artifacts.validate import OnnxRunner
from ...prove.graph_carried import attach_graph_claims, certify_graph_model
from ..graph_simplify import graph_phases, reduce_graph, validate_graph_model
from ..simplify import sha256_of
from .family import SliceFamily, _stop_notes, certify_each, check_dispatcher, export_leaves, tolerance_summary
from .tree import Piece, SliceOptions, grow_tree, splittable_dims, widest_dim

GRAPH_STRATEGIES = ("gradient", "width")


@dataclass
class GraphSliceOptions:
    """How each piece of a graph is proved (see `graph_phases`)."""

    method: str = "deeppoly"
    samples: int = 2000
    seed: int = 0
    time_limit: float = 10.0        # seconds per LP query (method lp/milp)
    budget: float | None = 60.0     # seconds of LP queries per piece (method lp/milp)


def graph_io(g: Graph) -> ModelIO:
    """The graph's one input and one output (UnsupportedModelError otherwise)."""
    if len(g.inputs) != 1 or len(g.outputs) != 1:
        raise UnsupportedModelError(f"slice on a graph needs one input and one output; this model has "
                                    f"{len(g.inputs)} inputs and {len(g.outputs)} outputs")
    meta = g.meta
    in_shape = tuple(meta.get("input_shapes", [g.shape(g.inputs[0])])[0])
    if not all(isinstance(d, int) and d > 0 for d in in_shape[1:]):
        raise UnsupportedModelError(f"slice on a graph needs a fixed input shape after the batch, got {in_shape}")
    return ModelIO(meta.get("input_names", g.inputs)[0], in_shape, meta.get("output_names", g.outputs)[0],
                   tuple(meta.get("output_shapes", [g.shape(g.outputs[0])])[0]), g.n_inputs, g.n_outputs)


def gradient_dim(g: Graph, box: Box, dims: np.ndarray) -> int:
    """The dimension of `dims` with the largest width x sum_j |dy_j/dx_d| at the box centre (first-order
    output change across the box due to that input); ties go to the lowest index."""
    n_out = g.n_outputs
    grad = g.gradient(np.repeat(box.center[None], n_out, axis=0), np.eye(n_out))   # row j: dy_j/dx
    score = np.abs(grad).sum(axis=0)[dims] * (box.hi - box.lo)[dims]
    return int(dims[np.argmax(score)])


def choose_graph_dim(g: Graph, piece: Piece, region: Box, strategy: str) -> int | None:
    dims = splittable_dims(piece.box)
    if not dims.size:
        return None
    return widest_dim(piece.box, region, dims) if strategy == "width" else gradient_dim(g, piece.box, dims)


def prove_graph_piece(g: Graph, piece: Piece, gopt: GraphSliceOptions) -> None:
    """Phases on the piece's box, the ReLUs proved stable dropped, dead channels pruned and masks folded
    (as `simplify` does; not exported)."""
    t0 = time.perf_counter()
    ph = graph_phases(g, piece.box, gopt.method, gopt.samples, gopt.seed, False, gopt.time_limit, gopt.budget)
    piece.stability, piece.network = ph, shrink(reduce_graph(g, ph))[0]
    piece.seconds = time.perf_counter() - t0


def slice_graph(model_path: str | Path, g: Graph, region: Box, gopt: GraphSliceOptions | None = None,
                sopt: SliceOptions | None = None, region_source: str = "box") -> SliceFamily:
    """Split the region, simplify the graph on every piece, export and validate the leaves, build and
    validate the dispatcher.  ValidationError (nothing to write) on any difference above the tolerance."""
    gopt, sopt = gopt or GraphSliceOptions(), sopt or SliceOptions(max_slices=4, strategy="gradient")
    if sopt.strategy not in GRAPH_STRATEGIES:
        raise InputFileError(f"--strategy {sopt.strategy} works on chains of dense layers only; on graphs use "
                             f"{' or '.join(GRAPH_STRATEGIES)}")
    t_start = time.perf_counter()
    io = graph_io(g)
    region.check_dim(g.n_inputs)
    reference = OnnxRunner(str(model_path))
    seconds = {}

    t0 = time.perf_counter()
    tree = grow_tree(region, sopt, lambda piece, parent: prove_graph_piece(g, piece, gopt),
                     lambda piece: choose_graph_dim(g, piece, region, sopt.strategy))
    seconds["tree"] = time.perf_counter() - t0
    certificates, edits = None, [None] * len(tree.leaves())
    if sopt.epsilon is not None:
        t0 = time.perf_counter()
        certificates, edits = graph_within_tolerance(g, reference, tree.leaves(), sopt, gopt)
        seconds["tolerance"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    leaves, models, vals = export_leaves(tree, graph_to_onnx, lambda s, leaf, model: validate_graph_model(
        reference, model, g, leaf.network, leaf.box, leaf.stability.witnesses, sopt.validation_samples,
        gopt.seed + 1 + s, sopt.tolerance, what=f"slice {s}"))
    # each slice records the phases it was reduced with (and with --epsilon its replacements), as `simplify`
    # does: `check` (and --certify) re-proves them on the slice's box instead of searching (metadata only)
    sha = sha256_of(model_path)
    for leaf, model, kept in zip(leaves, models, edits):
        attach_graph_claims(model, sha, leaf.stability.method, leaf.stability.dead, leaf.stability.active, leaf.box,
                            edits=kept)
    seconds["validate_slices"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    boxes = [p.box for p in leaves]
    dispatcher = build_dispatcher(region, boxes, models, io)
    dval = check_dispatcher(reference, dispatcher, region, boxes, sopt, gopt.seed + 7, inner_faces=True)
    seconds["dispatch"] = time.perf_counter() - t0
    seconds["total"] = time.perf_counter() - t_start
    notes = _stop_notes(leaves, sopt) + ["graph pipeline: each piece proved afresh (the graph bounds take no "
                                         "inherited bounds)"]
    return SliceFamily(str(model_path), sha256_of(model_path), region, region_source, g, tree, leaves, models, vals,
                       dispatcher, dval, gopt, sopt, [], seconds, notes, pipeline="graph", certificates=certificates)


def graph_within_tolerance(g: Graph, reference: OnnxRunner, leaves: list, sopt: SliceOptions,
                           gopt: GraphSliceOptions) -> tuple[list, list]:
    """`slice --epsilon` on graphs: each leaf simplified further up to epsilon on its box (from the leaf's own
    phase proofs, `apps.tolerance.graph`), its written model certified; per leaf, the certificate summary and
    the replacements kept (for its record)."""
    from ..tolerance.graph import simplify_graph_within
    from ..tolerance.pipeline import ToleranceOptions
    out, kept = [], []
    for leaf in leaves:
        opt = ToleranceOptions(epsilon=sopt.epsilon, validation_samples=min(sopt.validation_samples, 2000),
                               seed=gopt.seed, selection_time_limit=60.0)
        res = simplify_graph_within(g, reference, leaf.box, opt, phases=leaf.stability)
        leaf.network = res.simplified
        out.append(tolerance_summary(res, sopt.epsilon))
        kept.append(res.kept)
    return out, kept


def certify_graph_family(fam: SliceFamily, backend: str = "highs", time_limit: float = 60.0,
                         progress: bool = False) -> list:
    """`slice --certify` on a graph: each slice proved equal to the original on its box by its record (the phases
    re-proved there, the reduction rebuilt, its float32 rounding bounded; `graph_carried.certify_graph_model`),
    epsilon = the slicing tolerance; one certificate summary per slice."""
    return certify_each(fam, lambda p, model: certify_graph_model(
        fam.model_path, fam.original, model, p.box, fam.slice_options.tolerance, backend=backend,
        time_limit=time_limit, seed=fam.options.seed), progress)
