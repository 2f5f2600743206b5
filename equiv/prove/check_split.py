"""`check --workers/--scheduler`: the region cut into sub-boxes that are checked as independent
tasks on a Dask cluster, the verdicts combined as for a union of boxes.

Sound both ways: the sub-boxes tile the region, so the region is equivalent when every sub-box is, and a
counterexample of a sub-box is a point of the region (confirmed in onnxruntime on the worker, as always).
A task refers to the models by path (the workers share the file system) and carries its sub-box and the
options; it returns a `CheckResult`.  A task that failed (its workers were killed too often) proves
nothing: its sub-box stays open and the verdict is at best "unknown".  The check's time limit is kept by
the driver: pieces still running when it passes are cancelled and stay open.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time

import numpy as np

from ..spec.region import Box
from .check_union import combine

PIECES_PER_WORKER = 4      # more pieces than workers: one slow piece does not hold the others up


def split_region(box: Box, n: int) -> list[Box]:
    """At least n sub-boxes tiling the box: breadth-first halving of each piece along its relatively widest
    input (inputs fixed to one value are never cut); fewer when nothing can be cut."""
    width0 = np.where(box.hi > box.lo, box.hi - box.lo, np.inf)
    pieces = [box]
    while len(pieces) < n:
        nxt = []
        for p in pieces:
            rel = np.where(box.hi > box.lo, (p.hi - p.lo) / width0, -1.0)
            d = int(np.argmax(rel))
            mid = (p.lo[d] + p.hi[d]) / 2
            nxt += list(p.bisect(d)) if rel[d] > 0 and p.lo[d] < mid < p.hi[d] else [p]
        if len(nxt) == len(pieces):
            break
        pieces = nxt
    return pieces


def check_box_task(model_a: str, model_b: str, box: Box, options):
    """One sub-box, on whatever process runs it: load both models and check them there."""
    from .equivalence import check_models
    return check_models(model_a, model_b, box, dataclasses.replace(options, progress=False))


def sub_box_key(model_sha: tuple, box: Box, options) -> str:
    """The journal key of one sub-box check: both models' sha256, the sub-box and every option but progress."""
    opts = {k: v for k, v in dataclasses.asdict(options).items() if k != "progress"}
    text = json.dumps([list(model_sha), box.to_json(), opts], sort_keys=True, default=str)
    return "check:" + hashlib.sha256(text.encode()).hexdigest()


def _proof_to_json(r) -> dict:
    """What a resumed run needs of a sub-box proved equivalent (or measured): its bounds and pieces."""
    d = r.to_json()
    d["pieces"] = [p.to_json() for p in r.pieces]
    return d


def _proof_from_json(d: dict):
    from .equivalence import CheckResult, Piece
    inf = lambda v: float("inf") if v is None else float(v)   # noqa: E731
    pieces = [Piece(np.array(p["lo"]), np.array(p["hi"]), p["verdict"], p["method"], inf(p["max_diff_upper"]))
              for p in d["pieces"]]
    per = d.get("per_output_upper")
    return CheckResult(d["verdict"], d["norm"], d["epsilon"], inf(d["max_diff_upper"]), float(d["max_diff_lower"]),
                       None, d["backend"], 0.0, pieces, d["stats"], d["notes"],
                       None if per is None else [inf(v) for v in per])


def check_split(model_a: str, model_b: str, boxes: list[Box], options, executor, pieces: int | None = None,
                journal=None):
    """Check the region (one box or a union) as sub-box tasks on `executor`; one combined CheckResult.

    journal (`distributed.Journal`): sub-boxes proved equivalent (or measured) by an earlier run with the same
    inputs are taken from it, and new ones are added as they finish; other outcomes prove nothing and are
    recomputed."""
    t0 = time.perf_counter()
    n = pieces or PIECES_PER_WORKER * max(1, executor.workers)
    subs = [s for b in boxes for s in split_region(b, max(1, round(n / len(boxes))))]
    results, failed = [None] * len(subs), []
    keys = [None] * len(subs)
    if journal is not None:
        from ..apps.simplify import sha256_of
        shas = (sha256_of(model_a), sha256_of(model_b))
        for i, sb in enumerate(subs):
            keys[i] = sub_box_key(shas, sb, options)
            hit = journal.get(keys[i])
            if hit is not None:
                results[i] = _proof_from_json(hit)
    todo = [i for i in range(len(subs)) if results[i] is None]
    # a worker runs its sub-boxes one after another, so each gets its share of the run's time limit (with the
    # whole limit each, the first sub-boxes used it all and the rest never ran: a --measure gave no bound)
    rounds = max(1, -(-len(todo) // max(1, executor.workers)))
    task_options = dataclasses.replace(options, time_limit=options.time_limit / rounds)
    futures = [executor.submit(check_box_task, str(model_a), str(model_b), subs[i], task_options) for i in todo]
    index = {id(f): i for i, f in zip(todo, futures)}
    bar = None
    if options.progress:
        from tqdm import tqdm
        bar = tqdm(total=len(subs), initial=len(subs) - len(todo), desc="check pieces", unit="piece", leave=False)
    try:
        for f in executor.as_completed(futures):
            i = index[id(f)]
            try:
                results[i] = f.result()
            except Exception as exc:           # KilledWorker: proves nothing
                failed.append(f"sub-box {i}: {type(exc).__name__}: {exc}")
            if journal is not None and results[i] is not None and results[i].verdict in ("equivalent", "measured"):
                journal.put(keys[i], _proof_to_json(results[i]))
            if bar is not None:
                bar.update(1)
            if results[i] is not None and results[i].verdict == "not_equivalent":
                break                          # a confirmed counterexample decides the region
            if time.perf_counter() - t0 > options.time_limit:
                break
    finally:
        for f in futures:
            f.cancel()
        if bar is not None:
            bar.close()
    bad = [r for r in results if r is not None and r.verdict == "not_equivalent"]
    done = [r for r in results if r is not None]
    res = combine(bad[:1] if bad else done, len(subs), options, time.perf_counter() - t0)
    res.notes = [n for n in res.notes if not n.startswith("the region is a union") and "boxes were checked" not in n]
    where = f"{executor.workers} Dask workers" if executor.kind == "dask" else "this process"
    reused = len(subs) - len(todo)
    res.notes.insert(0, f"checked as {len(subs)} sub-boxes tiling the region on {where}; {len(done)} finished"
                        + (f" ({reused} proofs taken from the journal)" if reused else ""))
    if failed:
        res.notes.append(f"{len(failed)} sub-box task(s) failed and prove nothing: " + "; ".join(failed[:5]))
    res.stats["tasks_failed"] = len(failed)
    return res
