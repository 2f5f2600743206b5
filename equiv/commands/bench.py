"""`equiv bench`: run a named benchmark suite."""

from __future__ import annotations

from pathlib import Path


# the options each suite reads (the others it would ignore: given, they are refused)
SUITE_OPTIONS = {
    "core": {"time_limit", "milp_budget", "limit"},
    "quick": {"time_limit", "milp_budget", "limit"},
    "solvers": {"time_limit", "backends", "plot"},
    "admm": set(),
    "tolerance": {"limit", "group"},
    "slicing": {"time_limit", "milp_budget", "limit"},
    "equivalence": {"case_time_limit", "limit", "group", "workers", "scheduler"},
    "graphs": {"limit"},
    "scale": set(),
}
DEFAULTS = {"time_limit": 10.0, "milp_budget": 60.0, "case_time_limit": 300.0}


def _check_options(args) -> None:
    """Refuse an unknown suite, and an option the suite would ignore (a `--limit 1` smoke run of the scale suite
    ran the whole suite); then fill in the defaults of the options it reads."""
    from ..errors import InputFileError
    if args.suite not in SUITE_OPTIONS:
        raise InputFileError(f"unknown suite '{args.suite}'; available: {', '.join(SUITE_OPTIONS)}")
    ignored = [o for o in ("time_limit", "milp_budget", "case_time_limit", "limit", "group", "workers", "scheduler",
                           "backends", "plot") if getattr(args, o) is not None and o not in SUITE_OPTIONS[args.suite]]
    if ignored:
        reads = sorted(SUITE_OPTIONS[args.suite])
        raise InputFileError(f"the {args.suite} suite does not use {', '.join('--' + o.replace('_', '-') for o in ignored)}"
                             f" (it reads {', '.join('--' + o.replace('_', '-') for o in reads) or 'none of the options'})")
    for o, v in DEFAULTS.items():
        if getattr(args, o) is None:
            setattr(args, o, v)


def _check_args(args, root: Path) -> None:
    """Refuse, before any case runs, an output that would replace an input or another output, and unknown
    groups (exit 2): a suite takes minutes, and used to fail only at its end, or to overwrite silently."""
    from ..errors import InputFileError
    _check_options(args)
    if not str(args.out).strip():
        raise InputFileError("--out is empty: give the folder for the results (default: results)")
    folder = Path(args.out)
    if folder.exists() and not folder.is_dir():
        raise InputFileError(f"--out {folder} is a file; give a folder for the results")
    mine = [folder / f"{args.suite}.md", folder / f"{args.suite}.json"]
    for f in mine:
        if f.is_symlink() or (f.exists() and not f.is_file()):
            raise InputFileError(f"{f} is a symbolic link or not a regular file; nothing was written")
    if args.limit and mine[1].exists():
        raise InputFileError(f"--limit {args.limit} is a smoke run, and {mine[1]} holds a run's results it would "
                             "replace: give another --out")
    if args.plot:
        plot = Path(args.plot)
        if plot.suffix.lower() != ".png":
            raise InputFileError(f"--plot {plot}: the plot is a PNG file; give a path ending in .png")
        if plot.is_dir() or plot.resolve() in {m.resolve() for m in mine} or \
                plot.resolve().is_relative_to(root.resolve()):
            raise InputFileError(f"--plot {plot} is a folder, a result of this run or inside the benchmark folder "
                                 f"{root}: choose another file")
    if args.group and args.suite == "equivalence":
        from ..bench.equivalence import cases
        groups = list(dict.fromkeys(c["group"] for c in cases()))
        if args.group not in groups:
            raise InputFileError(f"--group '{args.group}' is no group of the equivalence suite; its groups: "
                                 + "; ".join(groups))
    if args.group and args.suite == "tolerance":
        from ..bench.tolerance import PARTS
        bad = [g for g in args.group.split(",") if g not in PARTS]
        if bad:
            raise InputFileError(f"--group {','.join(bad)}: the tolerance suite's parts are {', '.join(PARTS)}")


def cmd_bench(args, out) -> int:
    from ..bench.core import DEFAULT_BENCHMARKS, run_suite
    _check_args(args, Path(args.benchmarks) if args.benchmarks else DEFAULT_BENCHMARKS)
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
    out.emit((Path(args.out) / f"{args.suite}.md").read_text())
    return 0
