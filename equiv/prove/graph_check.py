"""`check` for graphs the chain checker cannot hold (convolutions, residual blocks): falsification, then
DeepPoly on their *difference graph* (`ir.pair_graph`: when the two networks share a structure, their
difference is back-substituted as one, NeuroDiff-style) or else on the *product graph* (both networks over
one shared input, ending in their difference), and on each network's class margins for top-1.  A proof needs the product's bound; anything else is `unknown` with the proven
interval.  No input splitting or MILP on graphs yet: high-dimensional regions are rarely split anyway.
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque

import numpy as np

from . import falsify
from ..bounds.diff import difference_boxes
from ..bounds.engine import GraphBounds, deeppoly_graph
from ..ir.graph_align import align_to, normalised
from ..ir.chain_export import fresh_name
from ..ir.pair_graph import StructureError, difference_graph
from ..ir.pair_skeleton import skeleton_gap, skeleton_pair
from .equivalence import CheckOptions, CheckResult, Piece, eps_vector, piece_counts
from .equivalence.ledger import float32_gap_note, float32_note
from .equivalence.result import GRAPH_KINDS, cex_eps
from ..errors import InputFileError
from ..ir import ops
from ..ir.graph import Graph
from ..spec.region import Box


def product_graph(f: Graph, g: Graph) -> Graph:
    """One graph computing f(x) - g(x) (outputs flattened and concatenated) over a shared input: A's inputs
    when B's have the same shapes, else one flat input of every value in order (how `check` numbers them,
    as VNN-LIB's X_i), which each model reads through a selection and a reshape into its own layout."""
    nodes = []
    same = [tuple(f.shape(n)) for n in f.inputs] == [tuple(g.shape(n)) for n in g.inputs]
    if same:
        inputs = ["a:" + n for n in f.inputs]
        nodes += [("a:" + n, f.op(n), []) for n in f.inputs]
        read = {"a:": dict(zip(f.inputs, inputs)), "b:": dict(zip(g.inputs, inputs))}
    else:
        total = f.n_inputs
        inputs = ["x"]
        nodes.append(("x", ops.Input((1, total)), []))
        read = {"a:": _read_flat(nodes, f, "a:", total), "b:": _read_flat(nodes, g, "b:", total)}
    for prefix, net in (("a:", f), ("b:", g)):
        for name in net.order:
            op = net.op(name)
            if op.kind != "input":
                nodes.append((prefix + name, op, [read[prefix].get(a, prefix + a) for a in net.args(name)]))
    flat_a, flat_b = _flatten(nodes, f, "a:", "a#"), _flatten(nodes, g, "b:", "b#")
    m = f.n_outputs
    nodes.append(("diff", ops.Add((1, m), in_shapes=[(1, m), (1, m)], signs=(1.0, -1.0)), [flat_a, flat_b]))
    return Graph.build(nodes, inputs, ["diff"])


def _read_flat(nodes: list, net: Graph, prefix: str, total: int) -> dict:
    """{input of net: node holding it} read from the flat input "x" (1, total): the values of input k are
    those after the sizes of inputs 0..k-1, picked by a 0/1 Dense when there are several, then reshaped."""
    out, offset = {}, 0
    for n in net.inputs:
        shape = tuple(net.shape(n))
        size = int(np.prod(shape))
        src = "x"
        if len(net.inputs) > 1:
            W = np.zeros((size, total))
            W[np.arange(size), offset + np.arange(size)] = 1.0
            src = prefix[:-1] + "#pick:" + n            # (helpers: "a#...", never a tensor's "a:...")
            nodes.append((src, ops.Dense((1, size), W=W), ["x"]))
        nodes.append((prefix + n, ops.Reshape(shape, in_shape=(1, size) if len(net.inputs) > 1 else (1, total)),
                      [src]))
        out[n] = prefix + n
        offset += size
    return out


def margin_graph(net: Graph, head: np.ndarray) -> Graph:
    """net followed by head @ (its outputs flattened): e.g. the margins f_c - f_k of a class c; its output
    (graph.outputs[0]) is "margins", or that with "#" added when net has a tensor of that name."""
    nodes = [(n, net.op(n), net.args(n)) for n in net.order]
    tag = "#"
    while any(n.startswith(tag) for n in net.order):     # helper names no tensor of net has
        tag += "#"
    flat = _flatten(nodes, net, "", tag)
    out = fresh_name("margins", set(net.order))
    nodes.append((out, ops.Dense((1, head.shape[0]), W=head), [flat]))
    return Graph.build(nodes, net.inputs, [out])


def _flatten(nodes: list, net: Graph, prefix: str, helper: str) -> str:
    """A (1, n_outputs) tensor: the outputs of `net` (named with `prefix`) flattened and concatenated, by nodes
    named with `helper` (a prefix no tensor name of the graph being built has)."""
    parts, shapes = [], []
    for k, o in enumerate(net.outputs):
        shape = net.shape(o)
        name = f"{helper}equiv_flat{k}"
        nodes.append((name, ops.Reshape((1, int(np.prod(shape))), in_shape=shape), [prefix + o]))
        parts.append(name)
        shapes.append((1, int(np.prod(shape))))
    if len(parts) == 1:
        return parts[0]
    name = f"{helper}equiv_flat"
    nodes.append((name, ops.Concat((1, net.n_outputs), axis=1, in_shapes=shapes), parts))
    return name


def difference_bounds(f: Graph, g: Graph, box: Box, f_known: dict | None = None, enough=None,
                      deadline: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Bounds of f(x) - g(x) (flattened outputs) on the box: DeepPoly on their difference graph when the two
    share a structure (a float16 copy, equiv's own output), else on the product graph, intersected with the
    difference graph of their ReLU skeletons when those match (`ir.pair_skeleton`: a folded BatchNorm, a
    factored layer).  f_known: {tensor of f: (lo, hi)} bounds proved on the box beforehand (intersected in).
    enough(lo, hi) -> bool: the skeleton's bounds suffice (the product graph is then not bounded, nor after
    the deadline)."""
    try:
        G = difference_graph(f, g)
    except StructureError:
        try:     # the same structure under other names, or with Identity nodes: g read as f's (`align_to`)
            base = normalised(f)
            G = difference_graph(base, align_to(base, g))
            f_known = None
        except StructureError:
            return _unaligned_bounds(f, g, box, f_known, enough, deadline)
    if not any(o in G.meta["d_of"] for o in G.meta["outputs"]):      # the outputs differ by exactly 0
        return np.zeros(f.n_outputs), np.zeros(f.n_outputs)
    return _difference_graph_bounds(G, box, f_known)


def _difference_graph_bounds(G: Graph, box: Box, f_known: dict | None) -> tuple[np.ndarray, np.ndarray]:
    out = G.meta["out"]["d"]
    known = known_bounds(f_known, "f:", G) if f_known else None
    b, _ = difference_boxes(G, box.lo[None], box.hi[None], known)
    return b.lo[out][0].reshape(-1), b.hi[out][0].reshape(-1)


SKELETON_PROBES = 16     # random points (and the centre) comparing the paired activations of a skeleton pair
SKELETON_GAP = 1e-2      # the skeleton pair is bounded when they differ by at most this, relative to their size


def _unaligned_bounds(f: Graph, g: Graph, box: Box, f_known: dict | None, enough, deadline) -> tuple:
    """The skeleton pair's difference-graph bounds of f - g, intersected with the product graph's (both sound:
    the skeleton's are the tight ones for two forms of one function, the product's for unrelated networks)."""
    lo, hi = np.full(f.n_outputs, -np.inf), np.full(f.n_outputs, np.inf)
    try:
        pair = skeleton_pair(f, g)
        X = np.vstack([box.center[None], box.sample(SKELETON_PROBES, np.random.default_rng(0))])
        if skeleton_gap(f, g, X) <= SKELETON_GAP:      # (else a wasted pass: the product graph is the tight one)
            lo, hi = _difference_graph_bounds(difference_graph(*pair), box, f_known)
            if (enough is not None and enough(lo, hi)) or (deadline is not None and time.perf_counter() > deadline):
                return lo, hi
    except StructureError:
        pass
    d = deeppoly_graph(product_graph(f, g), box)
    return np.maximum(lo, d.lo["diff"].reshape(-1)), np.minimum(hi, d.hi["diff"].reshape(-1))


def known_bounds(known: dict, prefix: str, G: Graph) -> GraphBounds:
    """{tensor: (lo, hi)} proved on one box -> known bounds of the tensors `prefix + tensor` of G (one box)."""
    names = [z for z in known if prefix + z in G.dag]
    return GraphBounds({prefix + z: np.asarray(known[z][0])[None] for z in names},
                       {prefix + z: np.asarray(known[z][1])[None] for z in names})


SPLIT_SAMPLES = 32       # random points a bisected piece's falsification adds
SPLIT_MAX_INPUTS = 6     # graphs: bisect only boxes with at most this many varying inputs (each piece costs a DeepPoly
                         # pass over the pair; with 9 inputs a product-graph pair was still open after 300 s)


TOP1_BOUNDARY = ("top-1: A's class changes inside the box; the graph check proves top-1 only where one class wins "
                 "on a whole piece (the product MILP of chains decides pairs across class boundaries)")


def _check_box(f, g, box, run_a, run_b, opt: CheckOptions, eps, rng, f_known=None, f_margins=None,
               via=None, deadline: float | None = None) -> tuple:
    """(verdict, upper bound on max_j |f_j - g_j|, largest difference seen, counterexample, notes) on one box.
    f_margins (top1): proven lower bounds of f_c - f_k on the box (c the centre's class, k the others in order).
    via (base, lo, hi): a graph `base` with f - base proved within [lo, hi] on the box (e.g. equiv's own
    simplification of f, by its record); then f - g = (f - base) + (base - g), the second bounded on the
    difference graph of base and g (g aligned to base's names), which is tight when g is base with edited
    weights; when g does not have base's structure, via is ignored."""
    cands = falsify.search(f, g, box, opt.norm, eps, rng, samples=opt.samples, runners=(run_a, run_b),
                           deadline=deadline)
    cex, seen = falsify.confirm(run_a, run_b, cands.points, box, opt.norm, cex_eps(opt, eps))
    if cex is not None:
        return "not_equivalent", np.inf, seen, cex, []
    if deadline is not None and time.perf_counter() > deadline:
        return "unknown", np.inf, seen, None, [f"time limit of {opt.time_limit:g} s reached before the bounds"]
    notes = []
    if via is not None:
        try:
            base = normalised(via[0])                                 # the same function, as files read back
            via = (base, align_to(base, g), via[1], via[2])            # g read as the base's structure
        except StructureError:
            via = None
            notes.append("B does not keep the base's structure: A and B bounded directly")
    # top1: one class c winning strictly in both networks on the whole box (margins f_c - f_k > 0)
    n = f.n_outputs
    c = int(np.argmax(f.forward(box.center[None])[0]))
    head = np.eye(n)[c][None, :] - np.delete(np.eye(n), c, axis=0)
    fm_cache = []

    def f_margins_lo():
        """Lower bounds of f_c - f_k on the box (DeepPoly on f's margin graph, once)."""
        if not fm_cache:
            M = margin_graph(f, head)
            fm = deeppoly_graph(M, box).lo[M.outputs[0]].reshape(-1)
            fm_cache.append(fm if f_margins is None else np.maximum(fm, f_margins))
        return fm_cache[0]

    # bounds that already prove end the search (no product graph after a tight skeleton pair)
    enough = None
    if opt.norm == "linf" and not opt.measure:
        enough = lambda lo, hi: bool(np.all(np.maximum(np.abs(lo), np.abs(hi)) <= eps))     # noqa: E731
    elif opt.norm == "top1":
        enough = lambda lo, hi: bool(np.all(f_margins_lo() - (hi[c] - np.delete(lo, c)) > 0)   # noqa: E731
                                     and np.all(f_margins_lo() > 0))
    if via is None:
        dlo, dhi = difference_bounds(f, g, box, f_known, enough, deadline)
    else:
        base, g_as_base, lo, hi = via
        blo, bhi = difference_bounds(base, g_as_base, box, deadline=deadline)
        dlo, dhi = np.asarray(lo) + blo, np.asarray(hi) + bhi
        notes.append("bounded through a base proved close to A beforehand: |A - base| by its proof, base - B by "
                     "DeepPoly on their difference graph")
    per_out = np.maximum(np.abs(dlo), np.abs(dhi)).reshape(-1)
    upper = float(per_out.max())
    if opt.norm == "linf":
        return ("equivalent" if np.all(per_out <= eps) else "unknown"), upper, seen, None, notes
    late = [f"time limit of {opt.time_limit:g} s reached before the top-1 margins"]
    if not (np.any(dlo) or np.any(dhi)):       # proved equal outputs (e.g. the same weights): the same argmax
        return "equivalent", upper, seen, None, notes + ["top-1: the outputs are proved equal on the box"]
    if not fm_cache and deadline is not None and time.perf_counter() > deadline:
        return "unknown", upper, seen, None, notes + late
    fm = f_margins_lo()
    # g_c - g_k = (f_c - f_k) - (d_c - d_k) >= fm_k - (dhi_c - dlo_k), or g's own DeepPoly margins
    gm = fm - (dhi[c] - np.delete(dlo, c))
    if not np.all(gm > 0) and np.all(fm > 0):
        if deadline is not None and time.perf_counter() > deadline:
            return "unknown", upper, seen, None, notes + late
        Mg = margin_graph(g, head)
        gm = np.maximum(gm, deeppoly_graph(Mg, box).lo[Mg.outputs[0]].reshape(-1))
    proved = bool(np.all(fm > 0) and np.all(gm > 0))
    if not proved:
        classes = np.unique(np.argmax(f.forward(np.vstack([box.corners(limit=64), box.center[None]])), axis=1))
        if len(classes) > 1:        # no piece holding this boundary is ever proved: bisecting it cannot help
            notes.append(TOP1_BOUNDARY)
        else:
            notes.append(f"top-1: DeepPoly could not show one class (the centre's, {c}) winning strictly in both "
                         "networks on the whole box")
    return ("equivalent" if proved else "unknown"), upper, seen, None, notes


def check_pair(f: Graph, g: Graph, boxes: list[Box], opt: CheckOptions) -> None:
    """Refuse (exit 2), before any work, two models and a region `check` cannot compare: different input or
    output sizes, a box of another dimension, or an epsilon per output of another length."""
    if f.n_inputs != g.n_inputs:
        raise InputFileError(f"the models take different inputs: A has {f.n_inputs} input values, B has {g.n_inputs}")
    if f.n_outputs != g.n_outputs:
        raise InputFileError(f"the models give different outputs: A has {f.n_outputs} output values, "
                             f"B has {g.n_outputs}")
    for box in boxes:
        box.check_dim(f.n_inputs)
    eps_vector(opt, f.n_outputs)


def check_graphs(f: Graph, g: Graph, boxes: list[Box], run_a, run_b, opt: CheckOptions, f_known: dict | None = None,
                 f_margins: np.ndarray | None = None, via: tuple | None = None,
                 deadline: float | None = None) -> CheckResult:
    """Check two graphs on every box of the region; the same verdict rules as `check_networks`.  f_known,
    f_margins and via: bounds of f's tensors, top-1 margins, and a base graph with f - base bounded, all
    proved beforehand on every box (see `_check_box`).  deadline (a time.perf_counter() time; default: this
    call's start + opt.time_limit): a box's falsification or bounds (DeepPoly passes, which cannot be cut) do
    not start after it; such a box is unknown."""
    check_pair(f, g, boxes, opt)
    t0 = time.perf_counter()
    deadline = t0 + opt.time_limit if deadline is None else deadline
    eps = eps_vector(opt, f.n_outputs)
    rng = np.random.default_rng(opt.seed)
    pieces, notes, uppers, seen_all, cex = [], [], [], 0.0, None
    verdict = "equivalent"
    # each box of the region, then the halves of a box left unknown while few inputs vary (input splitting:
    # bounds on a smaller box are tighter); breadth first, so the pieces shrink evenly
    queue = deque((box, 0, np.inf) for box in boxes)     # (a piece, its depth, its parent's proven bound)
    split = 0
    sub_opt = dataclasses.replace(opt, samples=SPLIT_SAMPLES)    # a piece's falsification: its parent's was wider
    bar = None
    while queue:
        box, depth, inherited = queue.popleft()
        if depth == 1 and bar is None and opt.progress:
            from tqdm import tqdm
            bar = tqdm(desc="check: bisected pieces", unit="piece", leave=False)
        if bar is not None:
            bar.update(1)
        if time.perf_counter() > deadline:
            # (a piece of a bounded box keeps that box's bound)
            v, upper, seen, c, more = "unknown", inherited, 0.0, None, [f"time limit of {opt.time_limit:g} s reached "
                                                                        "before every box was checked"]
        else:
            # f_margins are for the whole box's class: a piece may have another (top-1: the piece's own bounds)
            v, upper, seen, c, more = _check_box(f, g, box, run_a, run_b, opt if depth == 0 else sub_opt, eps, rng,
                                                 f_known, f_margins if depth == 0 else None, via, deadline)
        seen_all = max(seen_all, seen)
        # --measure without epsilon: a piece is open while its bound is far above the largest difference seen
        measuring = opt.measure and opt.epsilon is None and v != "not_equivalent"
        open_ = upper > seen_all * (1 + opt.measure_rtol) + opt.measure_atol if measuring else v == "unknown"
        if open_ and time.perf_counter() < deadline and len(pieces) + len(queue) + 2 <= opt.max_boxes \
                and 0 < np.sum(box.hi > box.lo) <= min(opt.split_max_inputs, SPLIT_MAX_INPUTS) \
                and (opt.epsilon is not None or measuring or (opt.norm == "top1" and TOP1_BOUNDARY not in more)):
            k = int(np.argmax(box.hi - box.lo))
            halves = box.bisect(k)
            if box.lo[k] < halves[0].hi[k] < box.hi[k]:
                queue.extend((h, depth + 1, min(upper, inherited)) for h in halves)
                split += 1
                continue
        gap = float32_gap_note(box)
        more = ([gap] if gap else []) + more
        pieces.append(Piece(box.lo, box.hi, "measured" if measuring else v,
                            ("split" if depth else "bounds") if v == "equivalent" or measuring else "none", upper))
        uppers.append(upper)
        notes += more
        if v == "not_equivalent":
            verdict, cex = v, c
            break
        if v != "equivalent":
            verdict = "unknown"
    if bar is not None:
        bar.close()
    if opt.measure and opt.epsilon is None and verdict != "not_equivalent":
        verdict = "measured"
    notes = list(dict.fromkeys(notes))          # one line per kind of note, not one per box
    if cex is None and uppers and seen_all > max(uppers):
        # the proof is about the exact functions of the stored weights; onnxruntime rounds in float32
        notes.append(float32_note(seen_all, float(max(uppers))))
    notes.append("graph check: falsification, then DeepPoly on the difference graph of the two networks (or of their "
                 "ReLU skeletons when only their linear parts differ) or on their product graph, "
                 "the box bisected while a piece is undecided and at most "
                 f"{min(opt.split_max_inputs, SPLIT_MAX_INPUTS)} inputs vary"
                 + (f" ({split} splits)" if split else "") + "; the product MILP works on chains of dense layers only so "
                 "far")
    return CheckResult(verdict=verdict, norm=opt.norm, epsilon=None if opt.epsilon is None else eps.tolist(),
                       max_diff_upper=float(max(uppers)) if verdict != "not_equivalent" else np.inf,
                       max_diff_lower=seen_all, counterexample=cex, backend=opt.backend,
                       seconds=time.perf_counter() - t0, pieces=pieces,
                       stats={"boxes": len(pieces) + split, "splits": split, "milp_queries": 0, "pipeline": "graph",
                              "pieces": piece_counts(pieces, GRAPH_KINDS)}, notes=notes)
