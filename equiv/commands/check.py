"""`equiv check`: the chain checker (difference bounds, splitting, product MILP) or the graph one."""

from __future__ import annotations

import json
import sys
import time

from .. import __version__
from .common import inputs_of, progress_of, refuse_journal_clash, refuse_top1_of_one_output, regions_of


def _epsilon(text, command: str = "simplify"):
    """--epsilon E[,E...] (check, simplify): positive finite numbers, one or one per output."""
    if text is None:
        return None
    import math
    from ..errors import InputFileError
    try:
        vals = [float(v) for v in text.split(",")]
    except ValueError:
        raise InputFileError(f"--epsilon must be a number or comma-separated numbers, got '{text}'") from None
    if not all(math.isfinite(v) and v > 0 for v in vals):
        hint = ("for the exact simplification, leave --epsilon out" if command == "simplify" else
                "to bound the difference without a threshold, use --measure without --epsilon")
        raise InputFileError(f"--epsilon values must be positive and finite, got '{text}' ({hint})")
    return vals[0] if len(vals) == 1 else vals


def cmd_check(args, out) -> int:
    from ..artifacts.files import OutputGuard, write_json_atomic
    from ..prove.equivalence import CheckOptions, check_models, summary
    from ..apps.simplify import sha256_of
    from ..errors import InputFileError
    from ..solvers import check_backend
    guard = OutputGuard(inputs_of(args, "model_a", "model_b"))
    if args.report:
        guard.claim(args.report, "report")
    if args.journal:
        refuse_journal_clash(args, args.journal)
    if args.norm == "top1" and args.epsilon is not None:
        raise InputFileError("--epsilon is for --norm linf; --norm top1 compares the top-1 classes and takes none")
    check_backend(args.backend, milp=True)
    boxes, source = regions_of(args)
    opt = CheckOptions(norm=args.norm, epsilon=_epsilon(args.epsilon, "check"), measure=args.measure, backend=args.backend,
                       time_limit=args.time_limit, query_time_limit=args.query_time_limit, max_boxes=args.max_boxes,
                       max_pieces=args.max_pieces, split_choice=args.split_choice, bab=args.bab,
                       samples=args.samples, seed=args.seed, progress=progress_of(args))
    from ..apps.graph_simplify import takes_chain_pipeline
    from ..ir import load_graph
    ga, gb = load_graph(args.model_a), load_graph(args.model_b)     # refuses unsupported models at once
    from ..prove.graph_check import check_pair
    check_pair(ga, gb, boxes, opt)                  # (bad input is exit 2 here, not a failed task on a worker)
    if args.norm == "top1":
        refuse_top1_of_one_output(ga.n_outputs, "--norm linf --epsilon E", "--norm top1")
    chains = takes_chain_pipeline(ga, args.model_a) and takes_chain_pipeline(gb, args.model_b)
    if chains and (args.workers or args.scheduler or args.journal):
        res, notes = _carried_first(args, boxes, opt)
        if res is None:
            res = _check_split(args, boxes, opt)
            res.notes += notes
    elif chains:
        res = check_models(args.model_a, args.model_b, boxes if len(boxes) > 1 else boxes[0], opt)
    else:
        if args.workers or args.scheduler or args.journal:
            print("equiv: note: --workers, --scheduler and --journal apply to check on chains of dense layers so "
                  "far; these graphs are checked in this process, without a journal", file=sys.stderr)
        from ..prove.graph_carried import carried_graph_check
        from ..prove.graph_check import check_graphs
        from ..artifacts.validate import OnnxRunner
        run_a, run_b = OnnxRunner(str(args.model_a)), OnnxRunner(str(args.model_b))
        t_start = time.perf_counter()      # (--time-limit covers the record's check and the search after it)
        res, notes = carried_graph_check(args.model_a, args.model_b, ga, gb, boxes, opt, run_a, run_b)
        if res is None:
            res = check_graphs(ga, gb, boxes, run_a, run_b, opt, deadline=t_start + opt.time_limit)
            res.notes += notes
    from ..spec.region import hull
    region = {"source": source, **hull(boxes).to_json()}
    if len(boxes) > 1:
        region["boxes"] = [b.to_json() for b in boxes]
    report = {"equiv_version": __version__, "model_a": args.model_a, "model_b": args.model_b,
              "model_a_sha256": sha256_of(args.model_a), "model_b_sha256": sha256_of(args.model_b),
              "region": region, **res.to_json()}
    if args.report:
        write_json_atomic(report, args.report)
    out.emit(json.dumps(report, indent=1) if args.json else summary(res, "A", "B"))
    return res.exit_code


def _carried_first(args, boxes, opt):
    """With --workers/--scheduler/--journal: a simplified model's record (`prove.carried`) is re-proved in this
    process first: (the result, []) if that decided, else (None, its notes) and the sub-box search runs as asked."""
    from ..prove.carried import find_claims
    from ..prove.equivalence import check_models
    if opt.norm != "linf" or find_claims(args.model_a, args.model_b)[0] is None:
        return None, []
    res = check_models(args.model_a, args.model_b, boxes if len(boxes) > 1 else boxes[0], opt, search=False)
    return (res, []) if res.verdict != "unknown" else (None, res.notes)


def _check_split(args, boxes, opt):
    """check as sub-box tasks (--workers / --scheduler), with their proofs kept in --journal if given."""
    import dataclasses
    from ..apps.simplify import sha256_of
    from ..distributed import make_executor
    from ..prove.check_split import check_split
    from .common import open_journal
    journal = None
    if args.journal:
        desc = {"command": "check", "model_a_sha256": sha256_of(args.model_a), "model_b_sha256": sha256_of(args.model_b),
                "boxes": [b.to_json() for b in boxes],
                "options": {k: v for k, v in dataclasses.asdict(opt).items() if k != "progress"}}
        journal = open_journal(args, args.journal, desc)
    try:
        executor = make_executor(args.workers, args.scheduler)
        try:
            return check_split(args.model_a, args.model_b, boxes, opt, executor, journal=journal)
        finally:
            executor.close()
    finally:
        if journal is not None:
            journal.close()
