"""`equiv compress`: certified compression; the search is `equiv.apps.compress`."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .common import inputs_of, progress_of, refuse_top1_of_one_output, region_of


def cmd_compress(args, out) -> int:
    from ..apps.compress import CompressOptions, Target, compress
    from ..apps.compress.report import build_report, pareto_figure, summary
    from ..apps.simplify import sha256_of
    from ..artifacts.files import OutputGuard, save_figure_atomic, write_json_atomic, _check_replaceable
    from ..errors import InputFileError
    from ..solvers import check_backend
    guard = OutputGuard(inputs_of(args, "model"))
    target_path = guard.claim(args.output or str(Path(args.model).with_suffix("")) + ".compressed.onnx",
                              "compressed model")
    if args.report:
        guard.claim(args.report, "report")
    if args.plot:
        guard.claim(args.plot, "plot")
    if args.preserve == "linf" and args.epsilon is None:
        raise InputFileError("--preserve linf needs --epsilon (the largest allowed output difference)")
    if args.preserve == "top1" and args.epsilon is not None:
        raise InputFileError("--epsilon is for --preserve linf; --preserve top1 keeps the top-1 class and takes none")
    check_backend(args.backend, milp=True)
    from ..apps.graph_simplify import takes_chain_pipeline
    from ..ir import load_graph
    graph = load_graph(args.model)
    if args.preserve == "top1":
        refuse_top1_of_one_output(graph.n_outputs)
    chain = takes_chain_pipeline(graph, args.model)
    box, source = region_of(args)
    makers = tuple(m.strip() for m in args.makers.split(",") if m.strip())
    unknown = [m for m in makers if m not in MAKERS]
    if unknown:
        raise InputFileError(f"--makers: unknown maker(s) {', '.join(unknown)}; choose from {', '.join(MAKERS)}")
    target = Target(norm=args.preserve, epsilon=args.epsilon if args.preserve == "linf" else None,
                    size=args.target_params, metric=args.metric)
    opt = CompressOptions(time_limit=args.time_limit, check_time_limit=args.check_time_limit,
                          simplify_budget=args.simplify_budget, simplify=not args.no_simplify, makers=makers, bisect_steps=args.bisect_steps,
                          seed=args.seed, backend=args.backend, progress=progress_of(args),
                          workers=args.workers, scheduler=args.scheduler)
    res, written = None, None
    try:
        if chain:
            res = compress(args.model, box, target, opt, workdir=Path(target_path).resolve().parent)
        else:      # convolutions / residual blocks: the exact graph simplification, certified by its record
            from ..apps.compress.graph import compress_graph
            res = compress_graph(args.model, box, target, opt, workdir=Path(target_path).resolve().parent)
        if res.best_file is not None:
            _check_replaceable(Path(target_path))
            os.replace(res.best_file, target_path)      # the very file that was certified
            written = str(target_path)
    finally:
        if res is not None and res.best_file is not None and Path(res.best_file).exists():
            Path(res.best_file).unlink()
    report = build_report(res, args.model, sha256_of(args.model), {"source": source, **box.to_json()}, written)
    if written:
        report["output_sha256"] = sha256_of(written)
    if args.report:
        write_json_atomic(report, args.report)
    if args.plot:
        save_figure_atomic(pareto_figure(res, f"{Path(args.model).name} on {Path(source.split(':', 1)[-1]).name}"), args.plot)
    out.emit(json.dumps(report, indent=1) if args.json else summary(res, written))
    return 0 if written else 3


MAKERS = ("affine", "neurons", "lowrank", "lowrank-svd", "weights", "float16", "int8")
