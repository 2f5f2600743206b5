"""`equiv slice`: make a family of slices, or verify one."""

from __future__ import annotations

import json

from .common import inputs_of, progress_of, region_of, stability_options

GRAPH_MAX_SLICES = 4       # default pieces on a graph (each piece is a full graph pipeline run)
GRAPH_DISPATCH_SAMPLES = 5000   # default dispatcher points on a graph (thousands of inputs per point)


def cmd_slice(args, out) -> int:
    from ..apps import slicing
    from ..artifacts.files import OutputGuard
    from ..errors import InputFileError
    from ..solvers import milp_backend
    if args.verify:
        given = any(v is not None for v in (args.spec, args.box, args.center))
        rep = slicing.verify_family(args.verify, model=args.original or args.model, samples=args.samples,
                                    region=region_of(args)[0] if given else None, certify=args.certify,
                                    certify_time_limit=args.certify_time_limit, backend=milp_backend(args.backend),
                                    tolerance=args.epsilon or args.tolerance)
        out.emit(json.dumps(rep.to_json(), indent=1) if args.json else rep.format())
        return rep.exit_code
    if not (args.model and args.output):
        raise InputFileError("give MODEL.onnx and -o FAMILY to make a family, or --verify FAMILY to check one")
    args.tolerance = args.tolerance or 1e-4
    guard = OutputGuard(inputs_of(args, "model"))
    slicing.claim_output_dir(args.output, guard, args.force)     # refuse before the work
    from ..apps.graph_simplify import takes_chain_pipeline
    from ..ir import load_graph
    graph = load_graph(args.model)            # refuses unsupported models at once, checks every node
    if not takes_chain_pipeline(graph, args.model):
        return _slice_graph(args, out, graph)
    if args.strategy == "gradient":
        raise InputFileError("--strategy gradient works on graphs (convolutions, residual blocks) only; on chains "
                             "of dense layers use unstable or width")
    args.method = args.method or "milp"
    box, source = region_of(args)
    sopt = slicing.SliceOptions(max_slices=args.max_slices or 64, target_relus=args.target_relus,
                                strategy=args.strategy or "unstable",
                                validation_samples=args.validation_samples, dispatch_samples=args.dispatch_samples or 100000,
                                tolerance=args.tolerance, progress=progress_of(args), epsilon=args.epsilon)
    args.samples = 2000 if args.samples is None else args.samples
    executor = None
    if args.workers or args.scheduler:
        from ..distributed import make_executor
        executor = make_executor(args.workers, args.scheduler)
    try:
        fam = slicing.slice_model(args.model, box, stability_options(args, progress=False), sopt, region_source=source,
                                  executor=executor)
    finally:
        if executor is not None:
            executor.close()
    code = 0
    if args.certify:
        code = _certified(fam, slicing.certify_family(fam, backend=milp_backend(args.backend),
                                                      time_limit=args.certify_time_limit, progress=sopt.progress))
    manifest = slicing.write_family(fam, args.output, force=args.force)
    out.emit(json.dumps(manifest["summary"], indent=1) if args.json else slicing.format_summary(manifest, args.output))
    return code


def _slice_graph(args, out, graph) -> int:
    """slice for convolutional and residual graphs: the graph pipeline on every piece (see apps/slicing/graph.py)."""
    from ..apps import slicing
    from ..apps.slicing.graph import GraphSliceOptions, slice_graph
    from ..errors import UnsupportedModelError
    if args.certify and args.epsilon is not None:
        raise UnsupportedModelError("--certify with --epsilon on a graph: the slices --epsilon changes are certified by "
                                    "`check` already (each certificate is in the manifest); without --epsilon, --certify "
                                    "proves every slice by the record of its phases")
    from .simplify import GRAPH_LP_BUDGET
    box, source = region_of(args)
    sopt = slicing.SliceOptions(max_slices=args.max_slices or GRAPH_MAX_SLICES, target_relus=args.target_relus,
                                strategy=args.strategy or "gradient", validation_samples=args.validation_samples,
                                dispatch_samples=args.dispatch_samples or GRAPH_DISPATCH_SAMPLES, tolerance=args.tolerance,
                                progress=progress_of(args), epsilon=args.epsilon)
    gopt = GraphSliceOptions(method=args.method or "deeppoly", samples=2000 if args.samples is None else args.samples,
                             seed=args.seed, time_limit=args.time_limit,
                             budget=GRAPH_LP_BUDGET if args.milp_budget is None else args.milp_budget)
    fam = slice_graph(args.model, graph, box, gopt, sopt, region_source=source)
    code = 0
    if args.certify:
        from ..apps.slicing.graph import certify_graph_family
        from ..solvers import milp_backend
        code = _certified(fam, certify_graph_family(fam, backend=milp_backend(args.backend),
                                                    time_limit=args.certify_time_limit, progress=sopt.progress))
    manifest = slicing.write_family(fam, args.output, force=args.force)
    out.emit(json.dumps(manifest["summary"], indent=1) if args.json else slicing.format_summary(manifest, args.output))
    return code


def _certified(fam, certs: list) -> int:
    """After --certify: a refuted slice is a bug (nothing is written); the exit code is 3 when some slice was
    neither proved nor refuted, else 0; a note says how many were proved."""
    from ..errors import ValidationError
    tol = fam.slice_options.tolerance      # --tolerance, raised to --epsilon when the slices were simplified up to it
    bad = [i for i, c in enumerate(certs) if c["verdict"] == "not_equivalent"]
    if bad:
        raise ValidationError(f"BUG: --certify found slices {bad} differing from the original on their boxes by "
                              f"more than {tol:g}; nothing was written. Please report this.")
    unproved = sum(c["verdict"] != "equivalent" for c in certs)
    fam.notes.append(f"--certify: {len(certs) - unproved} of {len(certs)} slices proved equivalent to the original "
                     f"on their boxes (epsilon {tol:g})" + (f"; {unproved} unknown" if unproved else ""))
    return 3 if unproved else 0
