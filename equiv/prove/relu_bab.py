"""Decide max_x c.h(x) + d <= t on a box by branch and bound over ReLU phases, with alpha-beta-CROWN bounds.

h is the last hidden layer's output of a dense ReLU chain, given sound bounds [L_k, U_k] of every hidden
pre-activation on the box.  A domain fixes the phase of some unstable neurons (s_j = +1: z_j >= 0, s_j = -1:
z_j <= 0); the domains of one split cover the box, so the maximum is <= t when every leaf's bound is.

A leaf's bound is a back-substitution (CROWN) of the objective to the input box, with two families of free
parameters, each of which gives a valid bound for *any* value in its range:
- alpha in [0, 1]: the lower line h >= alpha z of each unstable ReLU (DeepPoly fixes alpha in {0, 1});
- beta >= 0: a Lagrange multiplier per split, since on the domain -beta s_j z_j <= 0 may be added to the
  objective to be maximised (beta-CROWN, Wang et al. 2021): this is how a split constrains the *input*,
  not only the split neuron's own relaxation.
Both are improved by projected gradient steps (Adam): the bound is linear in each layer's coefficients, so
its gradient is a forward pass of the relaxed network from the maximising input corner (as in
`bounds.alpha`).  Soundness never rests on the optimisation: a proof is a fresh back-substitution at the
best parameters found, widened by a rounding margin on the size of all its terms.

A maximising corner is also a real input point: evaluated on the network it may exceed t, a witness.
MNIST 256x2, the margins f_c - f_k on prop_1 (107 unstable ReLUs): 0.1-1.7 s per margin, against 5-21 s
for the MILP of the same question (HiGHS); mnist 256x4 prop_0: every phase question of `simplify` without
a MILP (0.9 s in all, 31 s with MILPs).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from ..bounds.common import ROUND_ABS, ROUND_REL
from .bab_kernels import wanted

# relative margin on the sum of |terms| of a certified bound (coefficients carried through |W|, every
# intercept, and the input box's magnitude): a generous cover of float64 rounding in the products
ROUND_CHAIN = 1e-11
LEAF_ITERS = 50          # optimisation steps for a domain with every unstable neuron split
QUANTUM = 256           # domains a question gets at least before others at its level of work go first
REPORT_EVERY = 0.5       # seconds between progress reports of decide_many
SPARSE_DENSITY = 0.05    # layer matrices with fewer non-zeros than this share are kept sparse
MAX_PENDING = 20_000      # open domains kept at most (memory: 5 arrays of the hidden width each)


@dataclass
class BabResult:
    """Outcome of a branch-and-bound decision, in the backends' words (`solvers.base.Decision`)."""

    verdict: str                 # "below" (max <= threshold proved), "above" (a real point exceeds it), "unknown"
    bound: float | None          # with "below": the largest certified upper bound over the leaves
    x: np.ndarray | None         # with "above": the input point
    seconds: float
    domains: int                 # domains bounded
    message: str = ""


@dataclass
class _Domains:
    """D open domains: per hidden layer (D, n_k) bounds, split signs, lower slopes and multipliers."""

    L: list
    U: list
    S: list
    alpha: list
    beta: list
    obj: np.ndarray               # (D,) which objective each domain belongs to

    @property
    def size(self) -> int:
        return self.obj.size

    def parts(self) -> tuple:
        return self.L, self.U, self.S, self.alpha, self.beta

    def take(self, idx) -> "_Domains":
        return _Domains(*([a[idx] for a in p] for p in self.parts()), self.obj[idx])

    def copy(self) -> "_Domains":
        return _Domains(*([a.copy() for a in p] for p in self.parts()), self.obj.copy())

    def astype(self, dtype) -> "_Domains":
        return _Domains(*([a.astype(dtype) for a in p] for p in self.parts()), self.obj)

    @staticmethod
    def join(ds: list) -> "_Domains | None":
        ds = [d for d in ds if d is not None and d.size]
        if not ds:
            return None
        return _Domains(*([np.concatenate([d.parts()[p][k] for d in ds]) for k in range(len(ds[0].L))]
                          for p in range(5)), np.concatenate([d.obj for d in ds]))


class _Queue:
    """The open domains of each question, a stack of chunks per question (the newest on top: depth first
    within a question), so that a batch is gathered without copying the rest."""

    def __init__(self, m: int):
        self.stacks = {}
        self.count = np.zeros(m, int)

    @property
    def size(self) -> int:
        return int(self.count.sum())

    def push(self, dom: _Domains):
        qs = np.unique(dom.obj)
        for j in qs:
            part = dom if qs.size == 1 else dom.take(np.flatnonzero(dom.obj == j))     # (one question: no copy)
            self.stacks.setdefault(int(j), []).append(part)
            self.count[j] += part.size

    def drop(self, j: int):
        self.stacks.pop(int(j), None)
        self.count[j] = 0

    def pop(self, n: int, level: np.ndarray) -> _Domains:
        """Up to n domains: the questions of the lowest level first (then by index), each from its top."""
        parts, got = [], 0
        for j in sorted(self.stacks, key=lambda q: (level[q], q)):
            stack = self.stacks[j]
            while stack and got < n:
                c = stack[-1]
                k = min(c.size, n - got)
                parts.append(c.take(slice(c.size - k, None)))
                if k == c.size:
                    stack.pop()
                else:
                    stack[-1] = c.take(slice(0, c.size - k))
                got += k
                self.count[j] -= k
            if not stack:
                del self.stacks[j]
            if got >= n:
                break
        return _Domains.join(parts)


def _matrix(W):
    """W in float64, as a sparse matrix when that multiplies faster (a graph's convolutions in chain form,
    0.8-6 % non-zero on ResNet-2B: 2.5x less time in the products), else dense (the MNIST chains)."""
    if sp.issparse(W) or np.count_nonzero(W) < SPARSE_DENSITY * W.size:
        return sp.csr_array(W, dtype=np.float64)
    return np.asarray(W, np.float64)


def _times(x: np.ndarray, M) -> np.ndarray:
    """x @ M in C order (scipy returns a sparse product transposed; the fused kernels want rows contiguous)."""
    return x @ M if isinstance(M, np.ndarray) else np.ascontiguousarray(x @ M)


class _Chain:
    """The dense chain, the objectives as rows to *minimise* (-C, -d), and the input box."""

    def __init__(self, layers: list, masks: list, lo: np.ndarray, hi: np.ndarray, C: np.ndarray, d: np.ndarray):
        self.W = [_matrix(W) for W, _ in layers]
        self.b = [np.asarray(b, np.float64) for _, b in layers]
        self.absW = [abs(W) for W in self.W]
        self.relu = [np.asarray(m, bool) for m in masks]
        self.lo, self.hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
        self.size_x = np.maximum(np.abs(self.lo), np.abs(self.hi))
        self.C, self.d = -np.atleast_2d(np.asarray(C, np.float64)), -np.atleast_1d(np.asarray(d, np.float64))
        self._single = None

    def single(self) -> "_Chain":
        """The same chain in float32, for the slope and multiplier search only (half the cost of its
        matrix products); every bound that proves anything is a float64 pass at the parameters it found."""
        if self._single is None:
            c = object.__new__(_Chain)
            for name in ("W", "b", "absW"):
                setattr(c, name, [a.astype(np.float32) for a in getattr(self, name)])
            for name in ("lo", "hi", "size_x", "C", "d"):
                setattr(c, name, getattr(self, name).astype(np.float32))
            c.relu, c._single = self.relu, c
            self._single = c
        return self._single

    def value(self, x: np.ndarray, obj: np.ndarray) -> np.ndarray:
        """c_obj[n].h(x[n]) + d_obj[n] (the objectives to maximise) at the points x (n, inputs)."""
        h = x
        for W, b, m in zip(self.W, self.b, self.relu):
            z = h @ W.T + b
            h = np.where(m, np.maximum(z, 0.0), z)
        return -((h * self.C[obj]).sum(axis=1) + self.d[obj])


def _lines(chain: _Chain, k: int, dom: _Domains):
    """Layer k's relaxation on each domain: masks of exactly-linear (active or no ReLU) and unstable
    positions, and the upper line h <= su z + tu of the unstable ones."""
    l, u = dom.L[k], dom.U[k]
    lin = (l >= 0) | ~chain.relu[k]
    unst = ~lin & (u > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        su = np.where(unst, u / (u - l), 0.0)
    return lin, unst, su, np.where(unst, -su * l, 0.0)


def _lower(chain: _Chain, dom: _Domains, grad: bool = False, certify: bool = False, fused=None):
    """Lower bound (D,) of the minimised row on each domain; with grad also the gradients in alpha and
    beta and the minimising input corners; with certify, widened by the rounding margin.  Also returns per
    layer (coefficient on h, unstable mask, upper intercept) for branching.  fused: the search's loops
    (`bab_kernels.loops`) for the layer steps, never with certify."""
    K = len(chain.W)
    a = chain.C[dom.obj]
    const = chain.d[dom.obj].copy()
    q = np.abs(a)                                   # a bound on |a| for any slopes
    mag = np.abs(const)
    kept = [None] * K
    for k in range(K - 1, -1, -1):
        if fused is not None:
            az, unst, su, tu = np.empty_like(a), np.empty(a.shape, bool), np.empty_like(a), np.empty_like(a)
            fused[0](a, dom.L[k], dom.U[k], chain.relu[k], dom.alpha[k], dom.beta[k], dom.S[k], az, unst, su, tu,
                     const)
        else:
            lin, unst, su, tu = _lines(chain, k, dom)
            ap, an = np.maximum(a, 0), np.minimum(a, 0)
            # a h >= a+ (alpha z) + a- (su z + tu) on unstable positions, a z on linear ones, 0 on dead ones
            az = np.where(lin, a, np.where(unst, ap * dom.alpha[k] + an * su, 0.0))
            const += (an * tu).sum(axis=1)
            # the split rows: -beta s z >= ... is added to the minimised row (s z >= 0 on the domain)
            az -= dom.beta[k] * dom.S[k]
        kept[k] = (a, unst, su, tu)
        const += az @ chain.b[k]
        if certify:
            qz = q + dom.beta[k]                      # slopes are in [0, 1]
            mag += (q * tu).sum(axis=1) + qz @ np.abs(chain.b[k])
            q = _times(qz, chain.absW[k])
        a = _times(az, chain.W[k])
    low = const + (np.maximum(a, 0) * chain.lo + np.minimum(a, 0) * chain.hi).sum(axis=1)
    if certify:
        mag += q @ chain.size_x
        low = low - ROUND_CHAIN * mag - ROUND_ABS - ROUND_REL * np.abs(low)
    if not grad:
        return low, kept, None
    # the gradient: a forward pass from the minimising corner through the lines each sign chose
    x = np.where(a > 0, chain.lo, chain.hi)
    v, ga, gb = x, [], []
    for k in range(K):
        ah, unst, su, tu = kept[k]
        vz = _times(v, chain.W[k].T) + chain.b[k]
        if fused is not None:
            v, gak, gbk = np.empty_like(vz), np.empty_like(vz), np.empty_like(vz)
            fused[1](vz, ah, dom.L[k], chain.relu[k], unst, su, tu, dom.alpha[k], dom.S[k], v, gak, gbk)
            ga.append(gak)
            gb.append(gbk)
            continue
        lin = (dom.L[k] >= 0) | ~chain.relu[k]
        ga.append(np.where(unst, np.maximum(ah, 0) * vz, 0.0))
        gb.append(-dom.S[k] * vz)
        v = np.where(lin, vz, np.where(unst, np.where(ah > 0, dom.alpha[k] * vz, su * vz + tu), 0.0))
    return low, kept, (ga, gb, x)


def _optimise(chain: _Chain, dom: _Domains, iters: int, lr_alpha: float = 0.1, lr_beta: float = 0.05):
    """Adam ascent on (alpha, beta) of each domain, in place, keeping each domain's best parameters;
    returns the minimising corners of the last step (candidate witnesses).  The search runs in float32
    (`_Chain.single`): any alpha in [0, 1] and beta >= 0 is valid, so how they were found never matters
    to a proof, which is the float64 `_lower(certify=True)` at these parameters."""
    K = len(chain.W)
    final, box = dom, (chain.lo, chain.hi)
    chain, dom = chain.single(), dom.astype(np.float32)
    fused = wanted(dom.size, [W.shape[0] for W in chain.W])
    best = np.full(dom.size, -np.inf)
    keep_a = [a.copy() for a in dom.alpha]
    keep_b = [b.copy() for b in dom.beta]
    m = [np.zeros_like(p) for p in dom.alpha + dom.beta]
    v = [np.zeros_like(p) for p in dom.alpha + dom.beta]
    x = np.empty((0, chain.lo.size))
    for it in range(1, iters + 1):
        low, _, (ga, gb, x) = _lower(chain, dom, grad=True, fused=fused)
        better = low > best
        best = np.where(better, low, best)
        for k in range(K):
            keep_a[k][better], keep_b[k][better] = dom.alpha[k][better], dom.beta[k][better]
        for i, (P, G, lr, top) in enumerate([(dom.alpha[k], ga[k], lr_alpha, 1.0) for k in range(K)] +
                                            [(dom.beta[k], gb[k], lr_beta, np.inf) for k in range(K)]):
            if fused is not None:
                fused[2](P, G, m[i], v[i], lr, top, 1 - 0.9 ** it, 1 - 0.999 ** it)
                continue
            m[i] = 0.9 * m[i] + 0.1 * G
            v[i] = 0.999 * v[i] + 0.001 * G * G
            step = lr * (m[i] / (1 - 0.9 ** it)) / (np.sqrt(v[i] / (1 - 0.999 ** it)) + 1e-8)
            np.clip(P + step, 0.0, top, out=P)
    final.alpha[:] = [a.astype(np.float64) for a in keep_a]
    final.beta[:] = [b.astype(np.float64) for b in keep_b]
    # each corner coordinate is the float32 copy of lo or hi, which may lie just outside the box: map it back
    return np.where(x == chain.lo, *box) if x.size else x.astype(np.float64)


def _scores(dom: _Domains, kept: list, rows: np.ndarray) -> list:
    """Per layer, the branching score of each unsplit unstable neuron of the domains in `rows` (-1 elsewhere):
    how much its upper line costs the bound (its intercept times the coefficient that used it, BaBSR-like)."""
    return [np.where(unst & (dom.S[k] == 0), -np.minimum(a, 0) * tu + 1e-12 * unst, -1.0)[rows]
            for k, (a, unst, su, tu) in enumerate(kept)]


def _branch(dom: _Domains, scores: list, rows: np.ndarray) -> _Domains:
    """Both children of each domain in `rows` (each has a neuron left to split), split on its best-scored
    neuron."""
    allsc = np.concatenate(scores, axis=1)
    j = allsc.argmax(axis=1)
    starts = np.cumsum([0] + [s.shape[1] for s in scores])
    layer = np.searchsorted(starts, j, side="right") - 1
    kids = []
    for side in (1.0, -1.0):
        c = dom.take(rows).copy()
        r = np.arange(rows.size)
        for k in range(len(c.L)):
            sel = layer == k
            i = j[sel] - starts[k]
            c.S[k][r[sel], i] = side
            if side > 0:
                c.L[k][r[sel], i] = 0.0
            else:
                c.U[k][r[sel], i] = 0.0
        kids.append(c)
    return _Domains.join(kids)


def _leaf_lp(chain: _Chain, dom: _Domains, i: int, need: float) -> np.ndarray | None:
    """Domain i has every ReLU's phase fixed (by its bounds or a split), so the objective is linear in the
    input there: solve that LP (scipy's HiGHS) and return its maximiser, or None if it failed (an empty
    domain).  Its multipliers of the split rows are written into the domain's beta: with them the bound is
    the LP optimum (the Lagrangian of a box-constrained LP is tight), still certified by `_lower`; for an
    empty domain, multipliers that lift the bound to `need` if they can."""
    from scipy.optimize import linprog
    A, a0 = np.eye(chain.lo.size), np.zeros(chain.lo.size)        # h = A x + a0 on the domain
    rows, rhs, where = [], [], []
    for k in range(len(chain.W)):
        Z, z = chain.W[k] @ A, chain.W[k] @ a0 + chain.b[k]
        u, s = dom.U[k][i], dom.S[k][i]
        for j in np.flatnonzero(s != 0):
            rows.append(-s[j] * Z[j])            # s z_j >= 0
            rhs.append(s[j] * z[j])
            where.append((k, j))
        off = chain.relu[k] & (u <= 0)
        Z[off], z[off] = 0.0, 0.0
        A, a0 = Z, z
    box = list(zip(chain.lo, chain.hi))
    res = linprog(chain.C[dom.obj[i]] @ A, A_ub=np.array(rows) if rows else None, b_ub=np.array(rhs) if rows else None,
                  bounds=box, method="highs")
    if res.status == 0:
        _set_beta(dom, i, where, -res.ineqlin.marginals if rows else [], 1.0)
        return np.clip(res.x, chain.lo, chain.hi)
    if res.status != 2 or not rows:
        return None
    # empty: max tau s.t. s z_j(x) >= tau for every split row has tau* < 0, and its multipliers mu (sum 1)
    # give sum mu_j s_j z_j(x) <= tau* on the whole box, so beta = lam mu lifts the bound by -lam tau*
    R = np.array(rows)
    res = linprog(np.r_[np.zeros(R.shape[1]), -1.0], A_ub=np.c_[R, np.ones(len(rows))], b_ub=np.array(rhs),
                  bounds=box + [(None, 1.0)], method="highs")
    if res.status != 0 or -res.fun >= 0:
        return None
    for lam in 10.0 ** np.arange(0, 9):
        _set_beta(dom, i, where, -res.ineqlin.marginals, lam)
        if _lower(chain, dom.take([i]), certify=True)[0][0] >= need:
            break
    return None


def _drop_moot(queue: "_Queue", groups: np.ndarray, j: int, verdict: np.ndarray, finish):
    """Row j is proved: drop the other rows of its group."""
    for o in np.flatnonzero(groups == groups[j]):
        if o != j and verdict[o] == "open":
            finish(o, "unknown", "moot: another row of its group was proved")
            queue.drop(o)


def _set_beta(dom: _Domains, i: int, where: list, mu, scale: float):
    for (k, j), m in zip(where, mu):
        dom.beta[k][i, j] = scale * max(float(m), 0.0)


def decide_max(layers: list, masks: list, lo: np.ndarray, hi: np.ndarray, hidden_lo: list, hidden_hi: list,
               c: np.ndarray, d: float, threshold: float, time_limit: float, margin: float = 1e-6,
               batch: int = 128, iters: int = 5, stop=None) -> BabResult:
    """Is max over the box [lo, hi] of c.h(x) + d <= threshold (to within `margin`, as the backends' decide)?

    layers: the hidden (W, b) of a dense chain, masks its ReLU positions, h the last hidden output;
    hidden_lo/hi: sound bounds of every hidden pre-activation on the box."""
    return decide_many(layers, masks, lo, hi, hidden_lo, hidden_hi, np.atleast_2d(c), np.atleast_1d(d),
                       np.atleast_1d(threshold), time_limit, margin, batch, iters, stop=stop)[0]


def decide_many(layers: list, masks: list, lo: np.ndarray, hi: np.ndarray, hidden_lo: list, hidden_hi: list,
                C: np.ndarray, d: np.ndarray, thresholds: np.ndarray, time_limit: float, margin: float = 1e-6,
                batch: int = 128, iters: int = 5, groups: np.ndarray | None = None,
                stall: float | None = None, report=None, stall_on_points: bool = False,
                quantum: int = QUANTUM, max_pending: int = MAX_PENDING, stop=None) -> list:
    """`decide_max` for the rows of C (m, n), d (m,), thresholds (m,) at once: their domains share the
    batches, so the many questions a root bound settles cost one batched bound instead of one call each
    (all of a layer's phase decisions, say).  Returns one BabResult per row; when time runs out, the rows
    still open are unknown.  Among rows of equal work, the earlier ones go first.  groups (m,): rows of one
    group are alternatives (the two sides of a neuron): once one is proved below, the others are dropped
    ("unknown", moot).  stall (seconds): give up then if no row is decided yet (with stall_on_points, if none
    is proved yet: real points found do not count as progress) (a hopeless batch of questions
    should not hold the time the caller could spend elsewhere).  quantum: domains each question gets per
    turn at its level of work, at least (see the queue below).  max_pending: open domains kept at most (the
    question holding the most is given up beyond).  stop: an event (threading.Event) that ends the search,
    as the time limit does, once set (the caller is exiting).  report(proved, points): called at most
    every REPORT_EVERY seconds with the rows proved and refuted so far (a progress bar)."""
    t0 = time.perf_counter()
    m = len(thresholds)
    chain = _Chain(layers, masks, lo, hi, C, d)
    need = -np.asarray(thresholds, np.float64) + margin   # minimised row: -(c h + d) >= -t + margin: "below"
    thresholds = np.asarray(thresholds, np.float64)
    if not all(np.isfinite(np.asarray(a)).all() for a in list(hidden_lo) + list(hidden_hi)):
        return [BabResult("unknown", None, None, 0.0, 0, "infinite hidden bounds") for _ in range(m)]
    L = [np.repeat(np.asarray(a, np.float64)[None], m, axis=0) for a in hidden_lo]
    U = [np.repeat(np.asarray(a, np.float64)[None], m, axis=0) for a in hidden_hi]
    zero = lambda: [np.zeros_like(a) for a in L]  # noqa: E731
    # DeepPoly's slope choice to start: 1 where the ReLU's upper end dominates
    open_ = _Domains(L, U, zero(), [(u > -l).astype(float) for l, u in zip(L, U)], zero(), np.arange(m))
    verdict = np.array(["open"] * m, dtype=object)
    worst, done = np.full(m, -np.inf), np.zeros(m, int)
    xs, why = [None] * m, [""] * m

    def finish(j, v, msg=""):
        verdict[j], why[j] = v, msg

    queue = _Queue(m)
    queue.push(open_)
    sizes = []              # domains each proved question needed
    reported = t0
    while queue.size:
        spent = time.perf_counter() - t0
        stalled = (stall is not None and spent > stall and done.any() and not sizes
                   and (stall_on_points or not (verdict == "above").any()))
        if spent > time_limit or stalled or (stop is not None and stop.is_set()):
            for j in list(queue.stacks):
                finish(j, "unknown", f"nothing decided in the first {stall:g} s" if stalled else "time limit")
            break
        while queue.size > max_pending:
            # too many open domains: give up the question that holds the most of them
            j = int(queue.count.argmax())
            finish(j, "unknown", "too many domains")
            queue.drop(j)
        if not queue.size:
            break
        # the questions by levels of work done so far (a multilevel feedback queue: level l holds the
        # questions with q (2^l - 1) to q (2^(l+1) - 1) domains bounded), one after the other within a level:
        # a hard question must not starve the others, and the easy ones still finish one by one.  q: twice
        # what 3 in 4 of the proofs so far needed (at least quantum), the size of a question worth finishing.
        # (256 questions of mnist 256x6's layer 5: one after the other spent 20 s on the first one's 26 000
        # domains; a fixed q = 32 let hardly any finish, as most need 200-2 000 domains)
        q = max(quantum, 2 * np.percentile(sizes, 75)) if len(sizes) >= 4 else quantum
        cur = queue.pop(batch, np.floor(np.log2(1.0 + done / q)))
        corners = _optimise(chain, cur, iters)
        np.add.at(done, cur.obj, 1)
        val = chain.value(corners, cur.obj)
        for r in np.flatnonzero(val > thresholds[cur.obj]):
            j = cur.obj[r]
            if verdict[j] == "open":
                finish(j, "above")
                xs[j] = corners[r]
        low, kept, _ = _lower(chain, cur, certify=True)
        ok = low >= need[cur.obj]
        np.maximum.at(worst, cur.obj[ok], -low[ok])
        left = np.flatnonzero(~ok & (verdict[cur.obj] == "open"))
        scores = _scores(cur, kept, left)
        leaf = np.concatenate(scores, axis=1).max(axis=1) <= 0
        for i in left[leaf]:
            # every unstable neuron split: the network is linear on this domain, so an LP over the input
            # gives its exact maximum, the point (a witness when above) and the multipliers that certify it
            j = cur.obj[i]
            if verdict[j] != "open":
                continue
            one = cur.take([int(i)])
            x = _leaf_lp(chain, one, 0, need[j])
            if x is not None and chain.value(x[None], one.obj)[0] > thresholds[j]:
                finish(j, "above")
                xs[j] = x
                continue
            low1, _, _ = _lower(chain, one, certify=True)
            if low1[0] < need[j]:
                _optimise(chain, one, LEAF_ITERS)
                low1, _, _ = _lower(chain, one, certify=True)
            if low1[0] < need[j]:
                finish(j, "unknown", "a domain with every unstable neuron split is still open")
            worst[j] = max(worst[j], float(-low1[0]))
        split = left[~leaf]
        kids = _branch(cur, [s[~leaf] for s in scores], split) if split.size else None
        if kids is not None:
            queue.push(kids)
        for j in np.unique(cur.obj):
            if verdict[j] != "open":
                queue.drop(j)
            elif j not in queue.stacks:     # no domain of it left: proved
                sizes.append(done[j])
                if groups is not None:
                    _drop_moot(queue, groups, j, verdict, finish)
        if report is not None and time.perf_counter() - reported > REPORT_EVERY:
            reported = time.perf_counter()
            report(len(sizes), int((verdict == "above").sum()))
    seconds = time.perf_counter() - t0
    out = []
    for j in range(m):
        v = "below" if verdict[j] == "open" else verdict[j]
        out.append(BabResult(v, float(worst[j]) if v == "below" else None, xs[j], seconds, int(done[j]), why[j]))
    return out
