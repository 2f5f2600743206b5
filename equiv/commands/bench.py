"""`equiv bench`: run a named benchmark suite."""

from __future__ import annotations

from pathlib import Path


def cmd_bench(args, out) -> int:
    from ..bench.core import DEFAULT_BENCHMARKS, run_suite
    if args.suite == "solvers":
        from ..bench.solvers import run_solvers_bench
        from ..solvers import check_backend
        backends = args.backends.split(",") if args.backends else None
        for b in backends or []:
            check_backend(b)
        data = run_solvers_bench(Path(args.benchmarks) if args.benchmarks else DEFAULT_BENCHMARKS, Path(args.out),
                                 backends, time_limit=args.time_limit, plot=args.plot)
        out.emit((Path(args.out) / "solvers.md").read_text())
        return 1 if data["disagreements"] else 0
    if args.suite == "admm":
        from ..bench.admm import run_admm_bench
        run_admm_bench(Path(args.benchmarks) if args.benchmarks else DEFAULT_BENCHMARKS, Path(args.out))
        out.emit((Path(args.out) / "admm.md").read_text())
        return 0
    if args.suite == "equivalence":
        from ..bench.equivalence import run_equivalence_bench
        from ..distributed import make_executor
        executor = make_executor(args.workers, args.scheduler) if (args.workers or args.scheduler) else None
        try:
            run_equivalence_bench(Path(args.benchmarks) if args.benchmarks else DEFAULT_BENCHMARKS, Path(args.out),
                                  time_limit=args.case_time_limit, limit=args.limit, executor=executor,
                                  group=args.group)
        finally:
            if executor is not None:
                executor.close()
        out.emit((Path(args.out) / "equivalence.md").read_text())
        return 0
    if args.suite == "tolerance":
        from ..bench.tolerance import run_tolerance_bench
        from ..bench.tolerance import PARTS
        parts = tuple(args.group.split(",")) if args.group else PARTS
        run_tolerance_bench(Path(args.benchmarks) if args.benchmarks else DEFAULT_BENCHMARKS, Path(args.out),
                            limit=args.limit, parts=parts)
        out.emit((Path(args.out) / "tolerance.md").read_text())
        return 0
    if args.suite == "graphs":
        from ..bench.graphs import run_graphs_bench
        run_graphs_bench(Path(args.benchmarks) if args.benchmarks else DEFAULT_BENCHMARKS, Path(args.out), limit=args.limit)
        out.emit((Path(args.out) / "graphs.md").read_text())
        return 0
    if args.suite == "scale":
        from ..bench.scale import run_scale_bench
        run_scale_bench(Path(args.benchmarks) if args.benchmarks else DEFAULT_BENCHMARKS, Path(args.out))
        out.emit((Path(args.out) / "scale.md").read_text())
        return 0
    if args.suite == "slicing":
        from ..bench.slicing import run_slicing_bench
        data = run_slicing_bench(Path(args.benchmarks) if args.benchmarks else DEFAULT_BENCHMARKS, Path(args.out),
                                 time_limit=args.time_limit, milp_budget=args.milp_budget, limit=args.limit)
        out.emit((Path(args.out) / "slicing.md").read_text())
        return 0 if data["all_verified"] else 1
    run_suite(args.suite, benchmarks=args.benchmarks, out=args.out, time_limit=args.time_limit, limit=args.limit,
              milp_budget=args.milp_budget)
    return 0
