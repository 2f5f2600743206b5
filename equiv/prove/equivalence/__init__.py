"""Prove that two networks agree on a region (linf within epsilon, or same top-1 class), or show a real
counterexample.

Order of work, cheapest first:
1. falsification: random points, corners and signed-gradient ascent on the difference; any point
   above epsilon is re-run in onnxruntime on both models, and only a confirmed one is reported;
2. difference bounds (`diff_bounds`) on the whole region; a region where they prove the property is done;
3. input splitting (regions with few varying inputs): best-first bisection of the open pieces, many
   pieces per batched bound computation, until every piece is proved, a counterexample turns up, or
   the box/time budget is spent;
4. the product MILP with difference cuts (`product_milp`) on each remaining piece: one decision per
   output and sign (linf) or per pair of classes (top1); the verdict uses only infeasibility or dual
   bounds.  A piece whose query runs out of time is bisected and retried, up to `max_pieces`.
A piece never proved leaves the verdict "unknown", with the proven interval for the worst difference.

Top-1 semantics: the class of an output is its argmax, ties going to the lowest index (numpy and
ONNX ArgMax).  A proof always shows a *strict* winner, so a region where f has a tie that g breaks
the same way can stay "unknown"; a counterexample is a point whose two argmaxes differ in onnxruntime.
"""

from __future__ import annotations

import numpy as np

from .result import NORMS, CheckOptions, CheckResult, Piece, eps_vector, piece_counts, summary
from .search import check_networks
from ...spec.region import Box

__all__ = ["NORMS", "CheckOptions", "CheckResult", "Piece", "certify_simplified", "check_models", "check_networks",
           "eps_vector", "piece_counts", "summary"]


def check_models(model_a, model_b, box: Box | list[Box], options: CheckOptions, *, search: bool = True) -> CheckResult:
    """Load two ONNX models (paths or ModelProtos) and check them on the box (see `check_networks`), or on
    a union of boxes, each decided on its own (see `check_union`).  search=False: only what a simplified
    model's record (`carried`) decides, else unknown."""
    from ...ir.chain_io import load_onnx, network_from_onnx
    from ...artifacts.validate import OnnxRunner

    def load(m):
        return load_onnx(m) if isinstance(m, (str, bytes)) or hasattr(m, "__fspath__") else network_from_onnx(m)

    f, g = load(model_a), load(model_b)
    from ..align import check_compatible
    check_compatible(f, g)
    boxes = box if isinstance(box, list) else [box]
    for b in boxes:
        b.check_dim(f.n_inputs)
    from ..carried import find_claims
    claims, b_is_reduction, why = find_claims(model_a, model_b)
    carried = None if claims is None else (claims, b_is_reduction)
    run_a = OnnxRunner(str(model_a) if hasattr(model_a, "__fspath__") else model_a)
    run_b = OnnxRunner(str(model_b) if hasattr(model_b, "__fspath__") else model_b)
    if len(boxes) > 1:
        from ..check_union import check_networks_on_union
        res = check_networks_on_union(f, g, boxes, run_a, run_b, options, carried=carried, search=search)
    else:
        res = check_networks(f, g, boxes[0], run_a, run_b, options, carried=carried, search=search)
    if why:
        res.notes.append(f"not used as a proof: {why}")
    return res


def certify_simplified(result, tolerance: float, backend: str = "highs", time_limit: float = 300.0,
                       progress: bool = False) -> CheckResult:
    """`simplify --certify`: check the simplified model against the original with epsilon = the tolerance."""
    from ...artifacts.validate import OnnxRunner
    opt = CheckOptions(norm="linf", epsilon=tolerance, backend=backend, time_limit=time_limit,
                       seed=result.options.seed, progress=progress)
    from ..carried import Claims
    dead, active = result.stability.phase_masks(result.original)
    claims = Claims(result.model_sha256, [np.flatnonzero(d) for d in dead], [np.flatnonzero(a) for a in active])
    from ...ir.chain_io import network_from_onnx
    written = network_from_onnx(result.onnx_model)      # the float32 weights, in the order they were written
    return check_networks(result.original, written, result.region, OnnxRunner(result.model_path),
                          OnnxRunner(result.onnx_model), opt, carried=(claims, True))
