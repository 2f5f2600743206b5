"""The product-MILP queries on one piece: per output and sign (linf) or per pair of classes (top1)."""

from __future__ import annotations

import numpy as np

from ...bounds.diff import PairBounds, output_bounds, pair_bounds
from ...encode.product import product_encoding
from ...spec.region import Box
from ...solvers import Status, make_backend


def milp_piece(st, piece: Box, absd_bound: np.ndarray):
    """Decide the piece with the product MILP: equivalent / counterexample / timeout / unknown."""
    opt = st.opt
    pb = pair_bounds(st.pair, piece.lo[None], piece.hi[None], st.known)
    st.stats["boxes"] += 1
    pm = product_encoding(st.pair, piece, pb)
    absd = np.minimum(absd_bound, np.maximum(pb.d_hi[-1][0], -pb.d_lo[-1][0]))
    if opt.norm == "linf":
        return _milp_linf(st, pm, pb, absd)
    return _milp_top1(st, piece, pm, pb, absd)


def _milp_linf(st, pm, pb: PairBounds, absd):
    """Per output j and sign s, decide s (f_j - g_j) >= eps_j (or, measuring, maximise it)."""
    opt = st.opt
    n_out = st.pair.f.n_outputs
    backend = make_backend(opt.backend, pm.model)
    # proven bounds on max s (f_j - g_j) per (output, sign), tightened by the solver's dual bounds
    side = {(j, s): (pb.d_hi[-1][0, j] if s > 0 else -pb.d_lo[-1][0, j]) for j in range(n_out) for s in (1, -1)}
    timeout = inconclusive = False
    for (j, s), known in list(side.items()):
        if opt.epsilon is not None and known <= st.eps[j] and not opt.measure:
            continue
        cf = np.zeros(n_out)
        cf[j] = s
        c, off = pm.output_objective(st.pair, cf, -cf)
        limit = min(opt.query_time_limit, max(st.clock.left, 0.0))
        if limit < 0.1:
            timeout = True
            continue
        st.stats["milp_queries"] += 1
        if opt.measure:
            r = backend.maximize(c, off, integer=True, time_limit=limit)
            if r.x is not None:
                st.try_points(pm.input_point(r.x)[None])
            if r.bound is not None and r.status in (Status.OPTIMAL, Status.TIME_LIMIT):
                # the MIP dual bound carries the solver's tolerances: widen it by the margin
                b = float(r.bound)
                side[j, s] = min(known, b + opt.margin * max(1.0, abs(b)))
            if r.status != Status.OPTIMAL:
                st.note_status(r)
                st.stats["milp_unknown"] += 1
                timeout |= r.status == Status.TIME_LIMIT
                inconclusive |= r.status != Status.TIME_LIMIT
            continue
        dec = backend.decide(c, off, float(st.eps[j]), time_limit=limit, margin=opt.margin)
        if dec.verdict == "below":
            side[j, s] = min(known, float(st.eps[j]))
            continue
        t, i, b = _failed_decision(st, dec, pm, backend, c, off, float(st.eps[j]), limit)
        if st.cex is not None:
            return "counterexample", absd
        if b is not None:
            side[j, s] = min(known, b)
        timeout, inconclusive = timeout or t, inconclusive or i
    upper = np.array([max(side[j, 1], side[j, -1], 0.0) for j in range(n_out)])
    upper = np.minimum(upper, absd)
    if timeout or inconclusive:
        return ("timeout" if timeout else "unknown"), upper
    if opt.epsilon is None:
        return "measured", upper
    return ("equivalent" if np.all(upper <= st.eps) else "unknown"), upper


def _milp_top1(st, piece: Box, pm, pb: PairBounds, absd):
    """For each class c that f can output, prove that wherever f's argmax is c, g's is too."""
    opt = st.opt
    n_out = st.pair.f.n_outputs
    mf_lo, mf_hi = output_bounds(st.pair, pb, st.C, "f")
    mg_lo, mg_hi = output_bounds(st.pair, pb, st.C, "g")
    mf_hi = mf_hi.reshape(n_out, n_out - 1)
    timeout = inconclusive = False
    for c in range(n_out):
        if np.any(mf_hi[c] < 0):
            continue            # some class always beats c in f: f never outputs c on the piece
        # f's argmax is c: f_c >= f_k for every k (a superset of the ties-to-lowest-index rule)
        rows = []
        for k in range(n_out):
            if k != c:
                e = np.zeros(n_out)
                e[c], e[k] = 1.0, -1.0
                cc, off = pm.output_objective(st.pair, e, np.zeros(n_out))
                rows.append((cc, -off - opt.margin, np.inf))
        backend = make_backend(opt.backend, pm.with_rows(rows))
        for k in range(n_out):
            if k == c:
                continue
            r = st.pairs.index((c, k))
            if mg_lo[0, r] > 0:
                continue        # g_c > g_k on the whole piece already
            e = np.zeros(n_out)
            e[k], e[c] = 1.0, -1.0
            cc, off = pm.output_objective(st.pair, np.zeros(n_out), e)
            limit = min(opt.query_time_limit, max(st.clock.left, 0.0))
            if limit < 0.1:
                timeout = True
                continue
            st.stats["milp_queries"] += 1
            dec = backend.decide(cc, off, 0.0, time_limit=limit, margin=opt.margin)   # g_k - g_c >= 0 ?
            if dec.verdict == "below":
                continue
            # unconfirmed point: one maximisation of g_k - g_c may still prove it < 0 (strictly)
            t, i, _ = _failed_decision(st, dec, pm, backend, cc, off, 0.0, limit, strict=True)
            if st.cex is not None:
                return "counterexample", absd
            timeout, inconclusive = timeout or t, inconclusive or i
    if not (timeout or inconclusive):
        return "equivalent", absd
    return ("timeout" if timeout else "unknown"), absd


def _failed_decision(st, dec, pm, backend, c, off, threshold: float, limit: float,
                     strict: bool = False) -> tuple[bool, bool, float | None]:
    """A decision that proved nothing: (timed out, inconclusive, proven bound or None).  Its point is tried
    as a counterexample; only onnxruntime confirms one."""
    st.stats["milp_unknown"] += 1
    if dec.verdict == "above" and dec.x is not None:
        st.try_points(pm.input_point(dec.x)[None])
        if st.cex is not None:
            return False, False, None
        return _maximise(st, pm, backend, c, off, threshold, limit, strict)
    st.note_status(dec)
    return dec.status == Status.TIME_LIMIT, dec.status != Status.TIME_LIMIT, None


def _maximise(st, pm, backend, c, off, threshold: float, limit: float, strict: bool):
    """After a point the real networks do not confirm (within the decision's margin of the threshold, or an
    artefact of the solver's tolerances): one maximisation.  Its optimum may be a real counterexample, or
    its bound may prove the query (max <= threshold; < with `strict`).  Otherwise the piece counts as
    timed out, so that it is bisected (smaller boxes, tighter big-M constants) while the budget allows."""
    st.stats["milp_queries"] += 1
    r = backend.maximize(c, off, integer=True, time_limit=limit)
    if r.x is not None:
        st.try_points(pm.input_point(r.x)[None])
    if st.cex is not None:
        return False, False, None
    bound = None
    if r.bound is not None and r.status in (Status.OPTIMAL, Status.TIME_LIMIT):
        b = float(r.bound)
        bound = b + st.opt.margin * max(1.0, abs(b))     # the MIP dual bound carries the solver's tolerances
        if bound < threshold or (bound <= threshold and not strict):
            return False, False, bound
    st.note_status(r)
    st.stats["milp_unconfirmed"] = st.stats.get("milp_unconfirmed", 0) + 1
    return True, False, bound
