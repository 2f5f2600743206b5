"""`equiv simplify --epsilon / --preserve top1`: the tolerance pipeline, its report and its summary."""

from __future__ import annotations

import json

import numpy as np

from .. import __version__
from .common import progress_of, refuse_top1_of_one_output, stability_options


def cmd_simplify_tolerance(args, out, box, source, target) -> int:
    from ..artifacts.files import save_onnx_atomic, write_json_atomic
    from ..artifacts.validate import OnnxRunner
    from ..apps.simplify import sha256_of
    from ..apps.tolerance.pipeline import ToleranceOptions, simplify_within
    from ..errors import InputFileError
    from ..ir.chain_io import load_onnx
    from .check import _epsilon
    if args.certify:
        raise InputFileError("--certify is implied by --epsilon / --preserve (the written model is always checked)")
    if args.workers or args.scheduler or args.journal:
        raise InputFileError("--workers, --scheduler and --journal do not apply to --epsilon / --preserve yet")
    progress = progress_of(args)
    stab_opt = stability_options(args, progress)
    net = load_onnx(args.model)
    box.check_dim(net.n_inputs)
    if args.preserve == "top1":
        refuse_top1_of_one_output(net.n_outputs, "--epsilon E")
    eps = _epsilon(args.epsilon)
    if eps is not None and np.size(eps) not in (1, net.n_outputs):
        raise InputFileError(f"--epsilon has {np.size(eps)} values; the model has {net.n_outputs} outputs")
    opt = ToleranceOptions(epsilon=None if eps is None else np.asarray(eps, float), preserve=args.preserve,
                           pieces=args.tolerance_boxes, certify_time_limit=args.certify_time_limit or 60.0,
                           selection_time_limit=args.selection_time_limit, seed=args.seed, progress=progress,
                           validation_samples=args.validation_samples)
    res = simplify_within(net, OnnxRunner(str(args.model)), box, opt, stab_opt)
    save_onnx_atomic(res.onnx_model, target)
    report = build_report(res, args.model, sha256_of(args.model), {"source": source, **box.to_json()}, str(target),
                          opt)
    if args.report:
        write_json_atomic(report, args.report)
    out.emit(json.dumps(report, indent=1) if args.json else summary(report))
    # 0: the certified model, or the exact simplification when nothing could be replaced;
    # 3: replacements were found but none was certified, so only the exact simplification was written
    return 3 if res.certificate is None and res.selection.accepted else 0


def cmd_simplify_graph_tolerance(args, out, graph, box, source, target, budget) -> int:
    """--epsilon / --preserve top1 on a graph (convolutions, residual blocks): see `apps.tolerance.graph`."""
    from ..artifacts.files import save_onnx_atomic, write_json_atomic
    from ..artifacts.validate import OnnxRunner
    from ..apps.simplify import sha256_of
    from ..apps.tolerance.graph import simplify_graph_within
    from ..apps.tolerance.pipeline import ToleranceOptions, validate_within
    from ..errors import InputFileError
    from ..prove.graph_carried import attach_graph_claims
    from .check import _epsilon
    if args.certify:
        raise InputFileError("--certify is implied by --epsilon / --preserve (the written model is always checked)")
    if args.workers or args.scheduler or args.journal:
        raise InputFileError("--workers, --scheduler and --journal do not apply to --epsilon / --preserve yet")
    box.check_dim(graph.n_inputs)
    if args.preserve == "top1":
        refuse_top1_of_one_output(graph.n_outputs, "--epsilon E")
    eps = _epsilon(args.epsilon)
    if eps is not None and np.size(eps) not in (1, graph.n_outputs):
        raise InputFileError(f"--epsilon has {np.size(eps)} values; the model has {graph.n_outputs} outputs")
    opt = ToleranceOptions(epsilon=None if eps is None else np.asarray(eps, float), preserve=args.preserve,
                           certify_time_limit=args.certify_time_limit or 60.0,
                           selection_time_limit=args.selection_time_limit, seed=args.seed,
                           progress=progress_of(args), validation_samples=args.validation_samples)
    reference = OnnxRunner(str(args.model))
    res = simplify_graph_within(graph, reference, box, opt, method=args.method, time_limit=args.time_limit,
                                budget=budget, backend=args.backend, samples=args.samples)
    eps_full = None if eps is None else np.broadcast_to(np.asarray(eps, float), (graph.n_outputs,))
    validation = validate_within(reference, res.onnx_model, box, opt, eps_full, res.phases.witnesses)
    # the record `check` re-proves (the phases) and reads the file with (the replaced positions); metadata only
    attach_graph_claims(res.onnx_model, sha256_of(args.model), res.phases.method, res.phases.dead,
                        res.phases.active, box, edits=res.kept)
    save_onnx_atomic(res.onnx_model, target)
    report = graph_report(res, args.model, sha256_of(args.model), {"source": source, **box.to_json()}, str(target),
                          opt, validation)
    if args.report:
        write_json_atomic(report, args.report)
    out.emit(json.dumps(report, indent=1) if args.json else summary(report))
    return 3 if res.certificate is None and res.accepted else 0


def graph_report(res, model: str, sha: str, region: dict, output: str, opt, validation: dict) -> dict:
    cert = res.certificate
    return {
        "equiv_version": __version__, "model": model, "model_sha256": sha, "output": output, "region": region,
        "pipeline": "graph",
        "mode": {"norm": opt.norm, "epsilon": None if opt.epsilon is None else np.atleast_1d(opt.epsilon).tolist(),
                 "preserve": opt.preserve,
                 "selection_target": "epsilon x %g" % opt.safety if opt.epsilon is not None else "top-1 margins > 0"},
        "relus_before": res.original.n_relus, "relus_exact": res.exact.n_relus, "relus_after": res.simplified.n_relus,
        "params_before": res.original.n_params, "params_exact": res.exact.n_params,
        "params_after": res.simplified.n_params, "mask_entries_after": res.simplified.n_mask_entries,
        "phases": res.phases.counts(),
        "replacements": {"candidates": res.candidates, "accepted": res.accepted, "kept": len(res.kept),
                         "by_kind": {"affine": len(res.kept)}, "bound_calls": res.bound_calls,
                         "edits": [e.to_json() for e in res.kept]},
        "certificate": (cert.to_json() | {"pieces": len(cert.pieces)}) if cert is not None else
        {"verdict": "exact", "note": "no replacement kept: the model is the exact simplification, proved by its "
                                     "ReLU phase proofs"},
        "attempts": res.attempts, "validation": validation,
        "seconds": {k: round(v, 3) for k, v in res.seconds.items()}, "notes": res.notes,
    }


def build_report(res, model: str, sha: str, region: dict, output: str, opt) -> dict:
    from ..ir.chain_export import stored_params
    st = res.stability
    kinds = {k: sum(e.kind == k for e in res.kept) for k in ("constant", "merge", "affine")}
    cert = res.certificate
    return {
        "equiv_version": __version__, "model": model, "model_sha256": sha, "output": output, "region": region,
        "mode": {"norm": opt.norm, "epsilon": None if opt.epsilon is None else np.atleast_1d(opt.epsilon).tolist(),
                 "preserve": opt.preserve, "selection_boxes": opt.pieces,
                 "selection_target": "epsilon x %g" % opt.safety if opt.epsilon is not None else "top-1 margins > 0"},
        "relus_before": res.original.n_relus, "relus_exact": res.exact.n_relus, "relus_after": res.simplified.n_relus,
        "params_before": res.original.n_params, "params_exact": res.exact.n_params,
        "params_after": stored_params(res.onnx_model), "hidden_widths_after": res.simplified.hidden_widths,
        "phases": {ph: st.count(ph) for ph in ("dead", "active", "unstable", "unknown")},
        "replacements": {"candidates": res.selection.tried, "accepted": len(res.selection.accepted),
                         "kept": len(res.kept), "by_kind": kinds, "bound_calls": res.selection.bound_calls,
                         "accepted_by_bounds": res.selection.proved, "accepted_by_samples": res.selection.sampled,
                         "rejected_by_samples": res.selection.rejected_by_samples,
                         "edits": [e.to_json() for e in res.kept]},
        "certificate": (cert.to_json() | {"pieces": len(cert.pieces)}) if cert is not None else
        {"verdict": "exact", "note": "no replacement kept: the model is the exact simplification, proved by its "
                                     "neuron phase proofs"},
        "attempts": [a.__dict__ for a in res.attempts],
        "validation": res.validation,
        "seconds": {k: round(v, 3) for k, v in res.seconds.items()},
        "notes": st.notes + res.notes,
    }


def summary(r: dict) -> str:
    c = r["certificate"]
    eps = r["mode"]["epsilon"]
    graph = r.get("pipeline") == "graph"
    what = f"|A - B| <= {eps[0] if len(eps) == 1 else eps}" if eps is not None else "same top-1 class"
    cert = (f"{c['verdict']} ({what}; proven max |diff| <= {c.get('max_diff_upper')}, {c.get('seconds', 0):.2f} s)"
            if c["verdict"] != "exact" else "exact simplification (phase proofs), no replacement kept")
    k = r["replacements"]
    if graph:
        params_note = "; each ReLU layer with replacements stores a slope and an offset per position"
        replaced = (f"  replaced {k['kept']} ReLU positions by lines, of {k['candidates']} candidates; "
                    f"{k['bound_calls']} sound bounds")
    else:
        params_note = ""
        replaced = (f"  replaced {k['kept']} neurons (constant {k['by_kind']['constant']}, merged "
                    f"{k['by_kind']['merge']}, affine {k['by_kind']['affine']}) of {k['candidates']} candidates; "
                    f"{k['bound_calls']} sound bounds")
    return "\n".join([
        f"equiv simplify ({what}{', graph' if graph else ''}): {r['model']}",
        f"  ReLUs   {r['relus_before']:>8} -> {r['relus_after']} (exact simplification: {r['relus_exact']})",
        f"  params  {r['params_before']:>8} -> {r['params_after']} (exact simplification: {r['params_exact']}"
        f"{params_note})",
        replaced,
        f"  certificate: {cert}",
        f"  validation: {r['validation']['samples']} points, max |diff| {r['validation']['max_abs_diff']:.3g}",
        *[f"  note: {n}" for n in r["notes"]],
        f"  time {sum(r['seconds'].values()):.2f} s -> {r['output']}"])
