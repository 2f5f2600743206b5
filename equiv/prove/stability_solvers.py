"""The solver stages of `prove_stability`: per layer, LP tightening of every undecided neuron, then MILP
decisions that stop at the first feasible point (whose real signs rule neurons unstable)."""

from __future__ import annotations

import time
from contextlib import closing

import numpy as np

from ..bounds import Bounds, deeppoly_bounds
from ..distributed.cores import answers_on_threads, map_on_cores
from ..encode.chain import encode_network
from ..solvers import Status, make_backend, milp_backend


def settle(bounds, tr, k: int, i: int, side: str, method: str = "milp") -> None:
    """Record a proof (a MILP decision that was infeasible, or a branch and bound) that neuron i of layer k
    is dead / active."""
    if side == "dead":
        bounds.hi[k][i] = 0.0
    else:
        bounds.lo[k][i] = 0.0
    tr.method[k][i] = method


def candidates(tr, bounds: Bounds, k: int) -> np.ndarray:
    """ReLUs of layer k that no bound decided and no real point showed unstable."""
    return tr.masks[k] & (bounds.lo[k] < 0) & (bounds.hi[k] > 0) & ~tr.unstable(k)


def solver_stages(net, box, bounds, tr, opt, stage_seconds, stage_counts, queries, notes) -> Bounds:
    """Layer by layer: LP tightening of every undecided neuron, then MILP decisions (if asked)."""
    dense = net.dense
    stage_seconds.setdefault("lp", 0.0)
    stage_seconds.setdefault("milp", 0.0)
    lp_stable = 0
    layers = range(len(tr.masks))
    bar = _QueryBar(opt, tr, bounds) if opt.progress else None
    # method milp only needs bounds up to the deepest layer with an undecided candidate
    last = max([k for k in range(len(tr.masks)) if candidates(tr, bounds, k).any()], default=-1)
    deadline = None if opt.milp_budget is None else time.perf_counter() + opt.milp_budget
    for k in layers:
        m = tr.masks[k]
        W, b = dense[k].W, dense[k].b
        todo = np.flatnonzero(m & (bounds.lo[k] < 0) & (bounds.hi[k] > 0))
        if k == 0 or todo.size == 0 or (opt.method == "milp" and k > last):
            # layer 1 is affine in x: interval/DeepPoly bounds are already exact
            lp_stable += int(np.sum(m & ((bounds.hi[k] <= 0) | (bounds.lo[k] >= 0))))
            continue
        t0 = time.perf_counter()
        if deadline is not None and t0 >= deadline - 0.05:     # the budget is spent: the layer stays as it is
            queries["lp_skipped"] = queries.get("lp_skipped", 0) + 2 * int(todo.size)
            lp_stable += int(np.sum(m & ((bounds.hi[k] <= 0) | (bounds.lo[k] >= 0))))
            continue
        enc = encode_network(net, box, bounds, depth=k, integer=True)
        # admm: the operator splitting on the chain itself (`DagAdmm` on `chain_relaxation`), not the generic
        # backend on the encoding; also for a large layer when the backend was not chosen (`lp_admm_rows`)
        admm = opt.backend == "admm" or (opt.backend == "highs" and opt.lp_admm_rows is not None
                                         and enc.model.n_rows >= opt.lp_admm_rows)
        if admm and opt.backend != "admm":
            queries["lp_admm_layers"] = queries.get("lp_admm_layers", 0) + 1
        backend = None if admm else make_backend(opt.backend, enc.model)
        certified = admm or getattr(backend, "certified_at_limit", False)   # admm: a bound at a limit is a proof too
        # --- LP: tighten both sides of every undecided neuron (rigorous dual bounds)
        if bar is not None:
            bar.add(todo.size, f"LP {k + 1}")
        answers = (_admm_layer(net, box, bounds, k, todo, opt, bar, deadline) if backend is None
                   else _lp_layer(W, b, todo, enc, backend, opt, bar, deadline))
        queries["lp_skipped"] = queries.get("lp_skipped", 0) + 2 * (int(todo.size) - len(answers))
        for i, up, lo_, secs in answers:
            queries["lp"] += 2
            tr.seconds[k][i] += secs
            big = sum(r.status == Status.TOO_LARGE for r in (up, lo_))
            if big:
                queries["too_large"] = queries.get("too_large", 0) + big
                queries["too_large_message"] = (f"LP bounds for hidden layer {k + 1}: "
                                                + (up if up.status == Status.TOO_LARGE else lo_).message)
            if up.bound is not None and (up.status == Status.OPTIMAL or certified):
                bounds.hi[k][i] = min(bounds.hi[k][i], up.bound)
            if lo_.bound is not None and (lo_.status == Status.OPTIMAL or certified):
                bounds.lo[k][i] = max(bounds.lo[k][i], -lo_.bound)
        tr.record_bounds(k, bounds, "lp")
        lp_stable += int(np.sum(m & ((bounds.hi[k] <= 0) | (bounds.lo[k] >= 0))))
        stage_seconds["lp"] += time.perf_counter() - t0

        if opt.method == "milp":
            t0 = time.perf_counter()
            milp_be = (backend if backend is not None and milp_backend(opt.backend) == opt.backend
                       else make_backend(milp_backend(opt.backend), enc.model))
            _milp_layer(net, k, enc, milp_be, bounds, tr, opt, queries, deadline, bar)
            stage_seconds["milp"] += time.perf_counter() - t0
        # later layers benefit at once from the tightened bounds of this one
        bounds = deeppoly_bounds(net, box, known=bounds)
        if bar is not None:
            bar.bounds = bounds
        for j in range(k + 1, len(tr.masks)):
            tr.record_bounds(j, bounds, "deeppoly")
    if bar is not None:
        bar.close()
    if queries.get("too_large"):
        notes.append(f"{queries['too_large']} solver queries were too large for the {opt.backend} licence and proved "
                     f"nothing (their neurons stay 'unknown' unless another method decided them): "
                     f"{queries.pop('too_large_message')}")
    if opt.method == "milp" and milp_backend(opt.backend) != opt.backend:
        notes.append(f"the {opt.backend} backend solves LP relaxations only: the MILP decisions used highs")
    if queries.get("lp_admm_layers"):
        notes.append(f"{queries['lp_admm_layers']} LP layers with at least {opt.lp_admm_rows} rows ran on admm "
                     "(DagAdmm, certified bounds; --backend highs keeps them on HiGHS)")
    if queries.get("lp_skipped"):
        notes.append(f"solver budget of {opt.milp_budget:g} s spent: {queries['lp_skipped']} LP bounds not computed; "
                     "their neurons keep their earlier bounds")
    else:
        queries.pop("lp_skipped", None)
    if queries.get("milp_skipped"):
        notes.append(f"MILP budget of {opt.milp_budget:g} s spent: {queries['milp_skipped']} decisions not "
                     "attempted; their neurons stay 'unknown' and are kept")
    stage_counts["lp"] = lp_stable if opt.method == "lp" else stage_counts.get("lp", lp_stable)
    stage_counts[opt.method] = tr.stable_count(bounds)
    return bounds


class _QueryBar:
    """Progress per solver query (an LP pair or a MILP decision): queries done of those known so far (a
    layer's are added when it starts), with the stable count and the MILP budget spent."""

    def __init__(self, opt, tr, bounds):
        from tqdm import tqdm
        self.opt, self.tr, self.bounds, self.t0 = opt, tr, bounds, time.perf_counter()
        self.bar = tqdm(total=0, desc="queries", unit="query", leave=False)

    def add(self, n: int, stage: str):
        self.bar.total += n
        self.bar.set_description(f"queries ({stage})")
        self.bar.refresh()

    def tick(self, n: int = 1):
        spent = time.perf_counter() - self.t0
        budget = "" if self.opt.milp_budget is None else f"/{self.opt.milp_budget:g}"
        self.bar.set_postfix_str(f"stable {self.tr.stable_count(self.bounds)}, {spent:.0f}{budget} s", refresh=False)
        self.bar.update(n)

    def close(self):
        self.bar.close()


def _lp_layer(W, b, todo, enc, backend, opt, bar=None, deadline=None) -> list:
    """Max and min of W[i] h + b[i] over the LP relaxation for every i in todo: (i, up, down, seconds); with a
    deadline (the solver budget's end), each query's limit ends there and the neurons after it are left out.

    With `opt.workers` > 1 (and a backend that allows threads) the neurons are dealt round robin to
    that many threads, each with its own backend: LP queries reuse one solver object, which must not be
    shared between threads.
    """
    def run(be, part, stop=None):
        out = []
        for i in part:
            if stop is not None and stop.is_set():
                break
            limit = opt.time_limit
            if deadline is not None:
                limit = min(limit, (deadline - time.perf_counter()) / 2)
                if limit <= 0.025:
                    break
            c, off = enc.objective(W[i], b[i])
            q0 = time.perf_counter()
            up = be.maximize(c, off, integer=False, time_limit=limit)
            down = be.maximize(-c, -off, integer=False, time_limit=limit)
            out.append((i, up, down, time.perf_counter() - q0))
            if bar is not None:
                bar.tick()      # (tqdm's update is thread-safe)
        return out

    n = min(opt.workers, len(todo)) if getattr(backend, "threads_ok", False) else 1
    if n <= 1:
        return run(backend, todo)
    parts = [todo[j::n] for j in range(n)]
    bes = [backend] + [make_backend(opt.backend, enc.model) for _ in parts[1:]]
    done = map_on_cores(lambda j, stop: run(bes[j], parts[j], stop), list(range(n)), one_blas_thread=False)
    return [r for part in done for r in part]


def _admm_layer(net, box, bounds, k, todo, opt, bar=None, deadline=None) -> list:
    """`_lp_layer`'s answers from one batch of `DagAdmm` on layers 1..k: every bound it reports is certified,
    whether or not it closed its gap before the layer's time (the per-query limit times the queries, and at
    most what is left of the budget)."""
    from ..solvers.chain_admm import chain_relaxation, neuron_bounds
    limit = opt.time_limit * 2 * len(todo)
    if deadline is not None:
        limit = min(limit, deadline - time.perf_counter())
        if limit <= 0.05:
            return []
    ups, downs = neuron_bounds(chain_relaxation(net, box, bounds, k), net.dense[k].W[todo],
                               net.dense[k].b[todo], limit, None if bar is None else bar.tick)
    return [(i, up, down, 2 * up.seconds) for i, up, down in zip(todo, ups, downs)]


def _milp_layer(net, k, enc, backend, bounds, tr, opt, queries, deadline=None, bar=None):
    """MILP decisions for layer k's neurons that no bound decided and no point showed unstable.

    All candidates are first asked "dead?" (those no point showed z > 0), then "active?".  The queries
    of one pass share the encoding and are independent, so with `opt.workers` > 1 and a backend whose
    decisions may run concurrently they are solved by a pool of threads (HiGHS releases the GIL while
    solving); results are recorded in this thread as they arrive, and a query whose neuron a witness
    has meanwhile shown unstable is skipped when its turn comes.
    """
    W, b = net.dense[k].W, net.dense[k].b

    def open_side(i, side) -> bool:
        if tr.unstable(k)[i] or bounds.hi[k][i] <= 0 or bounds.lo[k][i] >= 0:
            return False
        # a real point with z > 0 rules out dead, one with z < 0 rules out active
        return not (tr.seen_pos[k][i] if side == "dead" else tr.seen_neg[k][i])

    def ask(i, side, stop=None):
        if not open_side(i, side) or (stop is not None and stop.is_set()):
            return None
        limit = opt.time_limit
        if deadline is not None:
            limit = min(limit, deadline - time.perf_counter())
            if limit <= 0.05:
                return "skipped"
        sign = 1.0 if side == "dead" else -1.0
        c, off = enc.objective(sign * W[i], sign * b[i])
        q0 = time.perf_counter()
        dec = backend.decide(c, off, 0.0, time_limit=limit, margin=opt.margin, stop=stop)
        return dec, time.perf_counter() - q0

    def record(i, side, answer):
        if bar is not None:
            bar.tick()
        if answer is None:
            return
        if answer == "skipped":
            queries["milp_skipped"] = queries.get("milp_skipped", 0) + 1
            return
        dec, secs = answer
        tr.seconds[k][i] += secs
        queries["milp"] += 1
        if dec.verdict == "below":
            settle(bounds, tr, k, i, side)
        elif dec.verdict == "above":
            tr.absorb(enc.input_point(dec.x)[None], "witness")
        else:
            queries["milp_unknown"] += 1
            if dec.status == Status.TOO_LARGE:
                queries["too_large"] = queries.get("too_large", 0) + 1
                queries["too_large_message"] = f"MILP decisions for hidden layer {k + 1}: {dec.message}"

    parallel = opt.workers > 1 and getattr(backend, "threads_ok", False)
    for side in ("dead", "active"):
        jobs = [i for i in np.flatnonzero(candidates(tr, bounds, k)) if open_side(i, side)]
        if bar is not None:
            bar.add(len(jobs), f"MILP {k + 1} {side}?")
        if parallel and len(jobs) > 1:
            with closing(answers_on_threads(lambda i, stop: ask(i, side, stop), jobs, opt.workers)) as answers:
                for i, answer in answers:
                    record(i, side, answer)
        else:
            for i in jobs:
                record(i, side, ask(i, side))
