"""The search of a check: falsify, bound the whole region, bisect the open boxes best first, then decide the
pieces left with the product MILP (bisecting a piece whose queries time out)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .. import falsify
from ..align import align
from ...bounds.diff import PairBounds, Sweep, output_bounds, pair_bounds
from ...ir.pair_graph import pair_graph
from ...ir.network import Network
from ...spec.bisect import Bisection, Node, Open
from ...spec.region import Box
from .ledger import Ledger, _Clock, float32_gap_note
from .queries import milp_piece
from .result import CheckOptions, CheckResult, eps_vector


def check_networks(f: Network, g: Network, box: Box, run_a, run_b, options: CheckOptions,
                   f_bounds=None, f_margins: dict | None = None, carried=None, search: bool = True) -> CheckResult:
    """Check f (run in onnxruntime by run_a) against g (run_b) on the box; see the module docstring.

    f_bounds: optional sound bounds of f's pre-activations on the whole box (a `bounds.common.Bounds`, e.g.
    LP/MILP-tightened by `simplify`); every sub-box starts from them.  f_margins: {(c, k): proven lower bound
    of f_c - f_k on the whole box} (top1), used on every sub-box.  carried: (claims, g_is_reduction) when one
    network says it is equiv's reduction of the other (`carried.find_claims`): tried before any search.
    search=False: stop after that (unknown unless the record or a point decided; the caller searches elsewhere)."""
    opt = options
    clock = _Clock(opt.time_limit)
    box.check_dim(f.n_inputs)
    rng = np.random.default_rng(opt.seed)
    pair = align(f, g, np.vstack([box.center[None], box.sample(500, rng)]))
    n_out = f.n_outputs
    eps = eps_vector(opt, n_out)
    stats = {"aligned": pair.same_shape, "match_cost": [round(c, 4) for c in pair.match_cost],
             "boxes": 0, "shallow_boxes": 0, "milp_queries": 0, "milp_unknown": 0, "seconds": {}}
    notes = []
    st = Ledger(pair, box, opt, eps, run_a, run_b, clock, stats)
    if f_margins:
        st.f_margin = np.array([f_margins.get(p, -np.inf) for p in st.pairs], float)
    if f_bounds is None and opt.tighten:
        st.tighten = lambda cap: _tightened(pair, f, box, opt, clock, cap)
    if f_bounds is not None:
        st.known = known_f(pair, f, f_bounds, box)
        stats["f_bounds"] = st.known is not None
        if st.known is None:
            notes.append("the given bounds of A were not used: A's layers were deepened to pair them with B's")
    gap = float32_gap_note(box)
    if gap:
        notes.append(gap)
    if identical(f, g):
        # same layers and weights: the same function, and onnxruntime runs the same operations on both
        st.try_points(box.center[None])
        st.close(box.lo, box.hi, "equivalent", "identical", np.zeros(n_out))
        notes.append("the two networks have the same layers and weights: they compute the same function")
        return st.result(clock.elapsed, notes)

    if carried is not None and opt.norm != "linf":
        notes.append("one network carries its reduction's phases, but they bound |A - B|, not the top-1 class: "
                     "searched from scratch")
    elif carried is not None:
        if _carried(st, f, g, box, carried, rng, notes, f_bounds):
            return st.result(clock.elapsed, notes)
    if not search:
        return st.result(clock.elapsed, notes)

    if not pair.same_shape:
        notes.append("the networks have different layer widths or depths: neurons were paired by their values at sample points "
                     f"(mean relative distance per layer {stats['match_cost']})")

    # 1. falsification
    t0 = time.perf_counter()
    cand = falsify.search(f, g, box, opt.norm, eps, rng, samples=opt.samples)
    st.try_points(cand.points)
    stats["seconds"]["falsify"] = time.perf_counter() - t0
    if st.cex is None and opt.norm == "top1" and opt.tighten and st.varying > opt.split_max_inputs:
        # too many inputs to split: each network's own margins first (MILPs of one network, not the product)
        from .margins import robust_class
        if robust_class(st, f, MARGINS_SHARE * st.clock.left, notes):
            return st.result(clock.elapsed, notes)
    if st.cex is None:
        # 2-4. bounds, splitting, MILP
        t0 = time.perf_counter()
        prove(st)
        stats["seconds"]["prove"] = time.perf_counter() - t0
    return st.result(clock.elapsed, notes)


def _carried(st, f: Network, g: Network, box: Box, carried, rng, notes, f_bounds=None) -> bool:
    """Check a reduction's recorded phases (`carried`), with f's given bounds when f is the original; True when
    that decided the whole box."""
    from ..carried import check_claims
    opt = st.opt
    claims, g_is_reduction = carried
    original, reduced = (f, g) if g_is_reduction else (g, f)
    cc = check_claims(original, reduced, box, claims, backend=opt.backend, time_limit=0.5 * opt.time_limit,
                      seed=opt.seed, progress=opt.progress, known=f_bounds if g_is_reduction else None,
                      target=None if opt.epsilon is None else st.eps - opt.margin)
    st.stats["carried"] = cc.to_json()
    which = "B" if g_is_reduction else "A"
    proved = cc.ok and opt.epsilon is not None and bool(np.all(cc.per_output + opt.margin <= st.eps))
    if cc.ok and (proved or (opt.measure and opt.epsilon is None)):
        # the proof needs no points, but every verdict is still confronted with onnxruntime
        st.try_points(np.vstack([box.center[None], box.sample(opt.samples, rng), box.corners(limit=256),
                                 cc.witnesses if cc.witnesses is not None else np.empty((0, box.dim))]))
        if st.cex is None:
            verdict = "equivalent" if proved else "measured"
            st.close(box.lo, box.hi, verdict, "carried", cc.per_output)
            notes.append(f"{which} is equiv's simplification of {'A' if g_is_reduction else 'B'} (sha256 recorded in "
                         f"its metadata): {cc.reason}; the bound covers every change of its weights from the "
                         "reduction's (float32 rounding, or edits)")
            return True
    why = (cc.reason if not cc.ok else "a point differs by more than epsilon" if st.cex is not None
           else f"the rounding bound {float(np.max(cc.per_output)):.3g} exceeds epsilon")
    notes.append(f"{which} carries its reduction's phases, but {why}: searched from scratch")
    return False


MARGINS_SHARE = 0.6               # of a wide top-1 check's time: the margins of each network (`margins`)
TIGHTEN_BUDGETS = (10.0, 60.0)     # seconds of A's LP/MILP bounds: a short try first, then a longer one


def _tightened(pair, f: Network, box: Box, opt: CheckOptions, clock, cap: float) -> PairBounds | None:
    """A's pre-activation bounds on the box by the stability pipeline (interval, DeepPoly, LP, MILP; its
    solver stages limited to `cap` seconds and a fifth of the check's time left), as known bounds of the pair."""
    from ..stability import StabilityOptions, prove_stability
    from ...solvers import milp_backend
    budget = max(1.0, min(cap, 0.2 * clock.left))
    sopt = StabilityOptions(method="milp", backend=milp_backend(opt.backend), time_limit=min(5.0, budget),
                            seed=opt.seed, milp_budget=budget)
    return known_f(pair, f, prove_stability(f, box, sopt).bounds, box)


def known_f(pair, f: Network, bounds, box: Box, lo: np.ndarray | None = None,
            hi: np.ndarray | None = None) -> PairBounds | None:
    """Bounds of f's pre-activations on the box as known bounds of the pair's f on each of the boxes
    [lo, hi] inside it (default: the box itself); f keeps its neurons in slots 0..width-1, spare slots are
    padding; g and the difference unknown.  None when align deepened f."""
    if len(pair.f.dense) != len(f.dense):
        return None
    lo = box.lo[None].astype(float) if lo is None else lo
    hi = box.hi[None].astype(float) if hi is None else hi
    n = len(lo)
    fl, fh, free_lo, free_hi = [], [], [], []
    for k, d in enumerate(pair.f.dense):
        w, m = d.n_out, bounds.lo[k].size
        a, b = np.full((n, w), -np.inf), np.full((n, w), np.inf)
        a[:, :m], b[:, :m] = bounds.lo[k], bounds.hi[k]
        fl.append(a), fh.append(b)
        free_lo.append(np.full((n, w), -np.inf)), free_hi.append(np.full((n, w), np.inf))
    return PairBounds(fl, fh, free_lo, free_hi, [a.copy() for a in free_lo], [a.copy() for a in free_hi], None, lo, hi)


def identical(f: Network, g: Network) -> bool:
    """Same depth, same ReLU masks, bitwise-equal weights and biases."""
    if len(f.dense) != len(g.dense) or len(f.masks) != len(g.masks):
        return False
    same = lambda a, b: a.shape == b.shape and bool(np.array_equal(a, b))  # noqa: E731
    return all(same(a.W, b.W) and same(a.b, b.b) for a, b in zip(f.dense, g.dense)) and \
        all(same(np.asarray(a), np.asarray(b)) for a, b in zip(f.masks, g.masks))


def analyse(st, pb: PairBounds):
    """Per box: proved?, a score to order open boxes (higher: worse), the proven |diff| bound per
    output, the attack points, and per box the input coefficients guiding the split."""
    eye = np.eye(st.pair.f.n_outputs)
    dl, du, Al, Au = output_bounds(st.pair, pb, eye, "d", return_coef=True)
    absd = np.maximum(du, -dl)                       # (N, out)
    N = dl.shape[0]
    if st.opt.norm == "linf":
        ratio = absd / st.eps
        score = ratio.max(axis=1)
        proved = score <= 1.0 if st.opt.epsilon is not None else np.zeros(N, bool)
        j = ratio.argmax(axis=1)
        rows = np.arange(N)
        coef = np.where((du[rows, j] >= -dl[rows, j])[:, None], Au[rows, j], -Al[rows, j])
    else:
        mf_lo, _, Afl, _ = output_bounds(st.pair, pb, st.C, "f", return_coef=True)
        if st.f_margin is not None:
            mf_lo = np.maximum(mf_lo, st.f_margin[None])
        mg_lo, _ = output_bounds(st.pair, pb, st.C, "g")
        _, md_hi = output_bounds(st.pair, pb, st.C, "d")
        # g_c - g_k = (f_c - f_k) - (d_c - d_k): the difference bounds often beat g's own
        mg_lo = np.maximum(mg_lo, mf_lo - md_hi)
        n_out = st.pair.f.n_outputs
        win_f = mf_lo.reshape(N, n_out, n_out - 1).min(axis=2)   # per class c: min_k lower(f_c - f_k)
        win_g = mg_lo.reshape(N, n_out, n_out - 1).min(axis=2)
        both = np.minimum(win_f, win_g)
        # a strict winner in both, or a difference that is exactly zero (f = g on the box)
        proved = (both > 0).any(axis=1) | (absd.max(axis=1) == 0)
        score = -both.max(axis=1)
        c = both.argmax(axis=1)
        # split along the inputs that move f's weakest margin for the best class the most
        rows = np.arange(N)
        r = c * (n_out - 1) + mf_lo.reshape(N, n_out, n_out - 1)[rows, c].argmin(axis=1)
        coef = -Afl[rows, r]
    # attack points: per box, the corner maximising the worst linear bound, and the centre
    attack = np.where(coef > 0, pb.hi, np.where(coef < 0, pb.lo, (pb.lo + pb.hi) / 2))
    return proved, score, absd, coef, attack


def prove(st):
    opt, box = st.opt, st.box
    pb = st.root = pair_bounds(st.pair, box.lo[None], box.hi[None], st.known, forms=_keep_lines(st.pair))
    st.stats["boxes"] += 1
    proved, score, absd, coef, attack = analyse(st, pb)
    st.try_points(attack)
    if st.cex is not None:
        return
    splits = 0 < st.varying <= opt.split_max_inputs
    if not proved[0] and st.tighten is not None and (not st.pair.same_shape or not splits):
        # a network and a reduction of it: A's own phases, proved by LP/MILP once, often close the gap at once;
        # two copies of one shape on a region too wide to split (an image ball): the product MILP is far
        # smaller with A's neurons fixed by their proved phases
        # (a short budget first: most pairs need only A's easy neurons; a longer one when that is not enough)
        t0 = time.perf_counter()
        for cap in TIGHTEN_BUDGETS:
            known = st.tighten(cap)
            if known is None:
                break
            st.known = known
            pb = st.root = pair_bounds(st.pair, box.lo[None], box.hi[None], st.known, forms=_keep_lines(st.pair))
            st.stats["boxes"] += 1
            proved, score, absd, coef, attack = analyse(st, pb)
            if proved[0] or st.clock.left < 1.0:
                break
        st.stats["seconds"]["tighten"] = time.perf_counter() - t0
    if proved[0] and not st.wants_tighter(absd[0]):
        st.close(box.lo, box.hi, "equivalent", "bounds", absd[0])
        return
    if splits:
        open_ = _split_loop(st, pb, score, absd, coef)
    else:
        open_ = [(box.lo, box.hi, absd[0], coef[0])]
    milp_pieces(st, open_)


def _split_loop(st, pb: PairBounds, score, absd, coef) -> list:
    """Best-first bisection; returns the boxes still open when the budget ran out (with their info)."""
    opt = st.opt
    width0 = np.where(st.box.hi > st.box.lo, st.box.hi - st.box.lo, np.inf)
    bar = _bar(opt.progress, opt.max_boxes, "splitting", "box")

    # two networks of one shape (a float16 or pruned copy): the looseness is in both relaxations, where the
    # guess misleads; a network and its reduction (aligned with padding): the guess does well, and
    # looking ahead spends its box budget 6x faster (measured on ACAS Xu prop_1 and prop_3 slices)
    ahead = opt.split_choice == "lookahead" or (opt.split_choice == "auto" and st.pair.same_shape)

    # the halves a look-ahead bounded for the dimension it chose, by (lo, hi): decided without a second bound
    seen = {}

    def choose_dims(nodes):
        # the cheap guess first (most pairs finish within a few hundred boxes), then look ahead
        if ahead and st.stats["boxes"] >= LOOKAHEAD_AFTER:
            # a box a look-ahead made is cut along the same dimension again without looking (half the cost)
            dims = [n.data.dim if n.data.dim is not None and n.data.repeat > 0 and _cuttable(n.lo, n.hi)[n.data.dim]
                    else None for n in nodes]
            for full in (False, True):
                ask = [i for i, d in enumerate(dims) if d is None and nodes[i].data.full_look == full]
                if ask:
                    if full:
                        st.stats["full_lookaheads"] = st.stats.get("full_lookaheads", 0) + len(ask)
                    chosen, halves = _lookahead_dims(st, [nodes[i] for i in ask], width0, shallow=not full)
                    seen.update(halves)
                    for i, d in zip(ask, chosen):
                        dims[i] = d
            return dims
        return _split_dims(np.array([n.lo for n in nodes]), np.array([n.hi for n in nodes]),
                           np.array([n.data.coef for n in nodes]), width0)

    def decide(nodes):
        keys = [(n.lo.tobytes(), n.hi.tobytes()) for n in nodes]
        rows = [seen.pop(k, None) for k in keys]
        # a box met twice is bounded the second time; a half the look-ahead bounded only shallowly (and
        # left open) gets the full sweep
        for how in ("auto", "full"):
            fresh = [i for i, r in enumerate(rows) if (r is None if how == "auto" else r is not None and r.shallow)]
            if fresh:
                # the halves inherit their parent's bounds (sound: they lie inside it)
                got = _bound_boxes(st, np.array([nodes[i].lo for i in fresh]), np.array([nodes[i].hi for i in fresh]),
                                   [nodes[i].data.bounds for i in fresh], how)
                for i, r in zip(fresh, got):
                    if rows[i] is not None:
                        r.dim, r.looked_shallow = rows[i].dim, rows[i].looked_shallow
                    rows[i] = r
        st.try_points(np.vstack([np.array([r.attack for r in rows]), np.array([(n.lo + n.hi) / 2 for n in nodes])]))
        out = []
        for n, r in zip(nodes, rows):
            out.append(None)
            if r.proved and not st.wants_tighter(r.absd):
                st.close(n.lo, n.hi, "equivalent", "bounds", r.absd)
            elif st.opt.measure and st.opt.epsilon is None and not st.wants_tighter(r.absd):
                st.close(n.lo, n.hi, "measured", "bounds", r.absd)
            else:
                # a look-ahead's half keeps its dimension for REPEAT_LOOKAHEAD_DIM more cuts
                dim, repeat = (r.dim, REPEAT_LOOKAHEAD_DIM) if r.dim is not None else (n.data.dim, n.data.repeat - 1)
                # a cut chosen on shallow bounds that did not pay: this subtree looks ahead on full bounds
                full = n.data.full_look or (r.dim is not None and r.looked_shallow and
                                            float(r.score) > PAYS * n.data.score)
                out[-1] = Open(_Data(r.bounds(), r.absd, r.coef, dim, repeat, float(r.score), full),
                               key=-float(r.score))
        return out

    root = Node(st.box.lo, st.box.hi, _Data(pb, absd[0], coef[0], score=float(score[0])), decided=True)
    run = Bisection(decide, choose_dims=choose_dims, order="best", batch=opt.batch,
                    max_boxes=opt.max_boxes - st.stats["boxes"], deadline=st.clock.t0 + st.clock.limit,
                    stop=lambda: st.cex is not None, progress=bar.update if bar else None)
    try:
        run = run.run([root], keys=[-float(score[0])])
    finally:
        if bar is not None:
            bar.close()
    return [(n.lo, n.hi, n.data.absd, n.data.coef) for n in run.pending]


LOOKAHEAD_AFTER = 400     # boxes bounded before splits are chosen by looking ahead
REPEAT_LOOKAHEAD_DIM = 1


def _lookahead_dims(st, nodes, width0: np.ndarray, shallow: bool = False) -> tuple[list, dict]:
    """Per box, the input dimension whose bisection gives the best worse half: both halves of every varying
    dimension bounded at once (the parent's bounds known), scored as the open boxes are.  It costs 2 x
    (varying inputs) bounded boxes per split, against a guess from the worst bound's input coefficients,
    which misleads where the looseness comes from relaxations rather than from the inputs (ACAS Xu
    1_4 on prop_1 against its float16 copy: unknown after 61 000 boxes by the guess, proved in 1 045).
    Also returns the two halves of each chosen split, analysed, by (lo, hi) bytes: they need no second bound.
    Only inputs whose midpoint lies strictly inside the box are cut, and among the best worse halves the
    relatively widest input wins: where no cut helps, ties otherwise send the search down one input to
    1-ulp widths (seen on ACAS Xu 4_1 on prop_1: depth 70 along one input)."""
    lo, hi = np.array([n.lo for n in nodes]), np.array([n.hi for n in nodes])
    dims = np.flatnonzero((hi > lo).any(axis=0))
    B, D = len(nodes), dims.size
    if D == 0:
        # every box is a point (bisected down to it, e.g. at a class boundary): nothing to look at; cut input 0
        # as `_split_dims` does, so each stays open (unknown) until the limits end the search
        return [0] * B, {}
    LO = np.repeat(lo, 2 * D, axis=0)
    HI = np.repeat(hi, 2 * D, axis=0)
    mid = (lo + hi) / 2              # the midpoint `bisect.halves` cuts at, to the bit
    for j, d in enumerate(dims):
        rows = np.arange(B) * 2 * D + 2 * j
        HI[rows, d] = mid[:, d]
        LO[rows + 1, d] = mid[:, d]
    got = _bound_boxes(st, LO, HI, [n.data.bounds for n in nodes for _ in range(2 * D)],
                       "shallow" if shallow else "auto")
    worse = np.array([r.score for r in got]).reshape(B, D, 2).max(axis=2)
    cut = np.array([_cuttable(n.lo, n.hi)[dims] for n in nodes])
    worse = np.where(cut, worse, np.inf)
    low = worse.min(axis=1, keepdims=True)
    tied = (worse <= low + 1e-9 * np.abs(low)) & cut
    rel = (hi - lo)[:, dims] / width0[dims]
    # the widest of the tied inputs (every input, when none can be cut: the box is a point to float precision)
    best = np.where(tied, rel, -np.inf).argmax(axis=1)
    best = np.where(cut.any(axis=1), best, rel.argmax(axis=1))
    halves = {}
    for b, k in enumerate(best):
        for r in (b * 2 * D + 2 * k, b * 2 * D + 2 * k + 1):
            got[r].dim = int(dims[k])
            got[r].looked_shallow = shallow
            halves[(LO[r].tobytes(), HI[r].tobytes())] = got[r]
    return [int(dims[k]) for k in best], halves


BOX_CHUNK = 128      # boxes per bounds call: larger batches run out of cache (1 280 ACAS boxes: 1.75x slower)


def _bound_boxes(st, lo: np.ndarray, hi: np.ndarray, known: list, how: str = "auto") -> list:
    """Bounds and `analyse` of the boxes [lo[n], hi[n]], each inside the box whose bounds are known[n].

    how="auto": first shallowly (the parent's input-space lines evaluated on each box, then one walk back
    from the output: about a tenth of the cost), and a full sweep (every layer back-substituted) for the
    boxes that leaves open; "shallow": the first step only (open boxes come back marked `shallow`);
    "full": the full sweep only.  A parent without lines (`PairBounds.forms`) gets the full sweep."""
    out = [None] * lo.shape[0]
    for s in range(0, lo.shape[0], BOX_CHUNK):
        idx = np.arange(s, min(s + BOX_CHUNK, lo.shape[0]))
        K = _stack_known([known[i] for i in idx])
        if K.forms is not None and how != "full":
            # first the parent's lines on each sub-box and one walk back from the output (cheap); only the
            # boxes that leaves open get a full sweep
            pb = pair_bounds(st.pair, lo[idx], hi[idx], K, depth=0)
            st.stats["shallow_boxes"] = st.stats.get("shallow_boxes", 0) + idx.size
            found = analyse(st, pb)
            keep = found[0] | (how == "shallow")
            for j in np.flatnonzero(keep):
                out[idx[j]] = _Half(pb, j, *(a[j] for a in found), shallow=not found[0][j])
            rest = np.flatnonzero(~keep)
            if rest.size == 0:
                continue
            K = pb.take(rest)       # (the parent's lines are already in these bounds)
            idx = idx[rest]
        pb = pair_bounds(st.pair, lo[idx], hi[idx], K, forms=_keep_lines(st.pair))
        st.stats["boxes"] += idx.size
        found = analyse(st, pb)
        for j, i in enumerate(idx):
            out[i] = _Half(pb, j, *(a[j] for a in found))
    return out


def _keep_lines(pair) -> bool:
    """Whether open boxes keep their input-space lines: at most LINES_MAX numbers per box (ACAS Xu: 12 200;
    MNIST 256x2 with a few of its 784 inputs varying would hold 3.3 million, 26 MB per box)."""
    G = pair_graph(pair)
    if "_line_numbers" not in G.__dict__:       # (the graph is never changed after it is built)
        G.__dict__["_line_numbers"] = 4 * G.n_inputs * sum(G.op(z).size for z in Sweep(G).targets)
    return G.__dict__["_line_numbers"] <= LINES_MAX


LINES_MAX = 50_000
PAYS = 0.8


@dataclass
class _Data:
    """An open box's payload: its bounds (`PairBounds` of one box), analysis, and how to cut it next."""

    bounds: PairBounds
    absd: np.ndarray
    coef: np.ndarray
    dim: int | None = None      # the input a look-ahead chose, cut again while repeat > 0
    repeat: int = 0
    score: float = np.inf
    full_look: bool = False     # look ahead on full bounds (shallow ones misled here)


class _Half:
    """One bounded box of a batch: its analysis (`analyse`) and, on demand, its own bounds (for its halves)."""

    def __init__(self, pb: PairBounds, row: int, proved, score, absd, coef, attack, dim: int | None = None,
                 shallow: bool = False):
        self.pb, self.row, self.dim, self.shallow = pb, row, dim, shallow
        self.looked_shallow = False
        self.proved, self.score, self.absd, self.coef, self.attack = proved, score, absd, coef, attack

    def bounds(self) -> PairBounds:
        return self.pb.take([self.row])


def milp_pieces(st, open_: list):
    """Product MILP on each open piece; a piece whose queries run out of time is bisected and retried."""
    opt = st.opt
    if st.cex is not None:
        return
    if len(open_) > opt.max_pieces:
        # too many to send to the MILP: they stay unknown with their bound
        for lo, hi, ab, _ in open_:
            st.close(lo, hi, st.open_verdict(), "bounds", ab)
        st.stats["unknown_reason"] = (f"{len(open_)} pieces left open after input splitting "
                                        f"(budget {opt.max_boxes} boxes, {opt.time_limit:g} s)")
        return
    width0 = np.where(st.box.hi > st.box.lo, st.box.hi - st.box.lo, np.inf)
    bar = _bar(opt.progress and open_, len(open_), "MILP pieces", "piece")
    bisections = 0

    def decide(nodes):
        nonlocal bisections
        (node,) = nodes
        lo, hi, (ab, cf) = node.lo, node.hi, node.data
        if st.clock.left <= 0.5:
            st.close(lo, hi, st.open_verdict(), "bounds", ab)
            st.stats["unknown_reason"] = f"time limit of {opt.time_limit:g} s reached"
            return [None]
        verdict, ab2 = milp_piece(st, Box(lo, hi), ab)
        if bar is not None:
            bar.update(1)
        if verdict == "timeout" and bisections + run.queued + 2 <= opt.max_pieces and st.clock.left > 1:
            bisections += 1
            if bar is not None:
                bar.total += 2
                bar.refresh()
            return [Open((ab2, cf), dim=int(_split_dims(lo[None], hi[None], cf[None], width0)[0]))]
        if verdict in ("equivalent", "measured"):
            st.close(lo, hi, verdict, "milp", ab2)
        elif verdict != "counterexample":
            st.close(lo, hi, st.open_verdict(), "milp", ab2)
            st.stats.setdefault("unknown_reason", "MILP queries did not finish or were inconclusive")
        return [None]

    run = Bisection(decide, order="fifo", stop=lambda: st.cex is not None)
    try:
        run.run([Node(lo, hi, (ab, cf)) for lo, hi, ab, cf in open_])
    finally:
        if bar is not None:
            bar.close()


def _bar(show, total: int, desc: str, unit: str):
    """A progress bar, or None."""
    if not show:
        return None
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit=unit, leave=False)


def _stack_known(pbs: list[PairBounds]) -> PairBounds:
    cat = lambda name: [np.vstack([getattr(p, name)[k] for p in pbs]) for k in range(len(getattr(pbs[0], name)))]  # noqa: E731
    forms = None
    if all(p.forms is not None for p in pbs):
        forms = {z: tuple(np.concatenate([p.forms[z][j] for p in pbs]) for j in range(4))
                 for z in pbs[0].forms if all(z in p.forms for p in pbs)}
    return PairBounds(cat("f_lo"), cat("f_hi"), cat("g_lo"), cat("g_hi"), cat("d_lo"), cat("d_hi"), None,
                      np.vstack([p.lo for p in pbs]), np.vstack([p.hi for p in pbs]), forms)


def _split_dims(lo, hi, coef, width0):
    """Per box, the input dimension to bisect: the largest |coefficient| x width of the worst linear
    bound (the part of its spread over the box due to that input); else the widest relative dimension.
    Inputs whose midpoint is not strictly inside the box (zero or 1-ulp width) are cut only if nothing else can be."""
    width = hi - lo
    score = np.abs(coef) * width
    widest = width / width0
    score = np.where(score.sum(axis=1, keepdims=True) > 0, score, widest)
    score[~_cuttable(lo, hi)] = -1.0
    return np.argmax(score, axis=1)


def _cuttable(lo, hi) -> np.ndarray:
    """Where the float midpoint lies strictly inside [lo, hi]: a cut there makes two smaller boxes."""
    mid = (lo + hi) / 2
    return (lo < mid) & (mid < hi)
