"""`equiv simplify`: the chain pipeline for dense chains, the graph pipeline for everything else."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .. import __version__
from .common import distributed_report, inputs_of, progress_of, region_of, runner_of, stability_options


def cmd_simplify(args, out) -> int:
    from ..artifacts.files import OutputGuard, save_onnx_atomic, write_json_atomic
    from ..artifacts.report import build_report, summary
    from ..apps.simplify import simplify
    guard = OutputGuard(inputs_of(args, "model"))
    target = guard.claim(args.output or str(Path(args.model).with_suffix("")) + ".simplified.onnx",
                         "simplified model")
    if args.report:
        guard.claim(args.report, "report")
    if args.journal:          # (the default output too: a journal there would be written over by the model)
        guard.claim(args.journal, "journal")
    box, source = region_of(args)
    from ..apps.graph_simplify import takes_chain_pipeline
    from ..ir import load_graph
    graph = load_graph(args.model)            # refuses unsupported models at once, checks every node
    tolerance = args.epsilon is not None or args.preserve is not None
    if args.epsilon is not None and args.preserve is not None:
        from ..errors import InputFileError
        raise InputFileError("give --epsilon or --preserve top1, not both")
    if not takes_chain_pipeline(graph, args.model):
        if tolerance:
            from .simplify_tolerance import cmd_simplify_graph_tolerance
            return cmd_simplify_graph_tolerance(args, out, graph, box, source, target,
                                                GRAPH_LP_BUDGET if args.milp_budget is None else args.milp_budget)
        return _simplify_graph(args, out, graph, box, source, target)
    if tolerance:
        from .simplify_tolerance import cmd_simplify_tolerance
        return cmd_simplify_tolerance(args, out, box, source, target)
    progress = progress_of(args)
    options = stability_options(args, progress)
    runner = runner_of(args, journal_inputs(args.model, box, options, args))
    try:
        res = simplify(args.model, box, options, region_source=source, validation_samples=args.validation_samples,
                       tolerance=args.tolerance, runner=runner)
    finally:
        if runner is not None:
            runner.close()
    report = build_report(res)
    if runner is not None:
        report["distributed"] = distributed_report(runner)
    code = 0
    if args.certify:
        from ..prove.equivalence import certify_simplified
        from ..solvers import milp_backend
        cert = certify_simplified(res, tolerance=args.tolerance, backend=milp_backend(args.backend),
                                  time_limit=args.certify_time_limit or 300.0, progress=progress)
        report["certificate"] = {k: v for k, v in cert.to_json().items() if k != "pieces"}
        if cert.verdict == "not_equivalent":
            print(f"equiv: error: BUG: the simplified model differs from the original by more than {args.tolerance:g} "
                  f"at input {cert.counterexample.input.tolist()}; nothing was written. Please report this.",
                  file=sys.stderr)
            code = 1
        else:
            code = 0 if cert.verdict == "equivalent" else 3
    if code != 1:
        save_onnx_atomic(res.onnx_model, target)
        res.output_path = report["output"] = str(target)
    if args.report:
        write_json_atomic(report, args.report)
    if args.json:
        out.emit(json.dumps(report, indent=1))
    else:
        out.emit(summary(res))
        if args.certify:
            c = report["certificate"]
            out.emit(f"  certificate: {c['verdict']} (max |diff| proven <= {c['max_diff_upper']}, "
                     f"epsilon {args.tolerance:g}, {c['seconds']:.2f} s)")
    return code


def journal_inputs(model, box, options, args) -> dict:
    """What a journal's answers depend on: the model's bytes, the region and every option of the proof."""
    from ..apps.simplify import sha256_of
    return {"command": "simplify", "model_sha256": sha256_of(model), "region": box.to_json(),
            "method": options.method, "backend": options.backend, "time_limit": options.time_limit,
            "samples": options.samples, "seed": options.seed, "margin": options.margin,
            "milp_budget": options.milp_budget, "split_boxes": options.split_boxes, "windowed": options.windowed,
            "alpha": options.alpha, "window_lp": options.window_lp, "bab": options.bab,
            "lp_admm_rows": options.lp_admm_rows}


def _provers(report: dict) -> str:
    """The method, and with lp / milp how many positions each solver stage proved."""
    q = report.get("queries", {})
    parts = [f"{name} {q[key]}" for name, key in (("journal", "journal_proofs_reused"), ("slopes", "alpha_proved"),
                                                    ("branch and bound", "bab_proved"),
                                                    ("LP", "lp_proved"), ("MILP", "milp_proved")) if key in q]
    return report["method"] + (": " + ", ".join(parts) if parts else "")


GRAPH_LP_BUDGET = 60.0     # seconds of LP queries on a graph when --milp-budget is not given


def _simplify_graph(args, out, graph, box, source, target) -> int:
    """simplify for convolutional, residual and multi-input graphs (the DAG pipeline)."""
    from ..artifacts.files import save_onnx_atomic, write_json_atomic
    from ..apps.graph_simplify import simplify_graph
    from ..apps.simplify import sha256_of
    from ..artifacts.validate import OnnxRunner
    box.check_dim(graph.n_inputs)
    if (args.workers or args.scheduler) and args.method != "milp":
        print(f"equiv: note: on a graph, --workers and --scheduler run the MILP method's branch and bound and MILP "
              f"decisions; --method {args.method} runs in this process", file=sys.stderr)
    journal = executor = None
    if args.journal:      # the facts a graph run proves hold for any budget: keyed by model and region only
        from ..prove.graph_journal import PhaseJournal, journal_inputs
        from .common import open_journal
        journal = PhaseJournal(open_journal(args, args.journal, journal_inputs(sha256_of(args.model), box)))
    try:
        if (args.workers or args.scheduler) and args.method == "milp":
            from ..distributed import make_executor
            executor = make_executor(args.workers, args.scheduler)
        res = simplify_graph(graph, OnnxRunner(str(args.model)), box, method=args.method, samples=args.samples,
                             seed=args.seed, validation_samples=args.validation_samples, tolerance=args.tolerance,
                             progress=progress_of(args), time_limit=args.time_limit,
                             budget=GRAPH_LP_BUDGET if args.milp_budget is None else args.milp_budget,
                             blocks=args.blocks, backend=args.backend, bab=args.bab, journal=journal,
                             executor=executor)
    finally:
        try:
            if executor is not None:
                executor.close()
        finally:
            if journal is not None:
                journal.journal.close()
    from ..prove.graph_carried import attach_graph_claims
    # the record `check` re-proves instead of searching (metadata only: the computation is unchanged)
    attach_graph_claims(res.onnx_model, sha256_of(args.model), res.phases.method, res.phases.dead, res.phases.active,
                        box)
    report = {"equiv_version": __version__, "model": args.model, "model_sha256": sha256_of(args.model),
              "output": str(target), "region": {"source": source, **box.to_json()}, "pipeline": "graph",
              **res.report()}
    if journal is not None:
        report["journal"] = journal.journal.stats()
    if executor is not None:
        q = res.phases.stats
        report["distributed"] = {"executor": executor.kind, "workers": executor.workers,
                                 "tasks_failed": q.get("bab_failed", 0) + q.get("milp_failed", 0)}
    code = 0
    if args.certify:
        cert = _certify_graph(args, graph, res.onnx_model, box)
        report["certificate"] = {k: v for k, v in cert.to_json().items() if k != "pieces"}
        code = 0 if cert.verdict == "equivalent" else 3
    save_onnx_atomic(res.onnx_model, target)
    if args.report:
        write_json_atomic(report, args.report)
    if args.json:
        out.emit(json.dumps(report, indent=1))
        return 0
    c = report["phases"]
    out.emit("\n".join([
        f"equiv simplify: {args.model} (graph: {len(graph.order)} nodes, {report['relu_layers']} ReLU layers)",
        f"  ReLUs   {report['relus_before']:>8} -> {report['relus_after']}",
        f"  params  {report['params_before']:>8} -> {report['params_after']} (weights and biases; plus "
        f"{report['mask_entries_after']} mask entries)",
        f"  file    {report['file_bytes_before'] or 0:>8} -> {report['file_bytes_after']} bytes",
        f"  MACs    {report['macs_before']:>8} -> {report['macs_after']}",
        f"  positions dead {c['dead']}, active {c['active']}, unstable {c['unstable']}, unknown {c['unknown']} "
        f"(proved by {_provers(report)})",
        res.validation.line(),
        *(["  folded: " + ", ".join(f"{k} {v}" for k, v in report["folded"].items())] if report["folded"] else []),
        *[f"  note: {n}" for n in report["notes"]],
        f"  time {report['seconds']['total']:.2f} s -> {target}",
        *([f"  certificate: {report['certificate']['verdict']} (max |diff| proven <= "
           f"{report['certificate']['max_diff_upper']}, epsilon {args.tolerance:g}, "
           f"{report['certificate']['seconds']:.2f} s)"] if args.certify else [])]))
    return code


def _certify_graph(args, graph, model, box):
    """`simplify --certify` on a graph: `check` of the written model against the original at epsilon = the
    tolerance, by its record (`graph_carried.certify_graph_model`)."""
    from ..prove.graph_carried import certify_graph_model
    return certify_graph_model(args.model, graph, model, box, args.tolerance, backend=args.backend,
                               time_limit=args.certify_time_limit or 300.0, seed=args.seed)
