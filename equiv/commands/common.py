"""What the subcommands share: the region and options read from the arguments, the files a run reads."""

from __future__ import annotations

import sys


def clip_of(args):
    if args.clip is None:
        return None
    from ..errors import RegionError
    if not args.clip.strip():
        raise RegionError("--clip is empty: give one interval LO:HI, e.g. --clip 0:1")
    from ..spec.region import box_from_string
    try:
        c = box_from_string(args.clip)
    except RegionError as exc:
        raise RegionError(f"--clip must be one interval LO:HI with LO <= HI, got '{args.clip}' ({exc})") from None
    if c.dim != 1:
        raise RegionError(f"--clip takes one interval LO:HI, got '{args.clip}'")
    return float(c.lo[0]), float(c.hi[0])


def regions_of(args):
    """Every box of the region (a VNN-LIB disjunction gives several) and its description."""
    from ..spec.region import load_regions
    return load_regions(spec=args.spec, box=args.box, center=args.center, radius=args.radius, clip=clip_of(args))


def region_of(args):
    """One box for the commands that work on one: the region itself, or the hull of its boxes (a superset:
    sound for simplifying and bounding), said in the description."""
    from ..spec.region import load_region
    return load_region(spec=args.spec, box=args.box, center=args.center, radius=args.radius, clip=clip_of(args))


def inputs_of(args, *names) -> list:
    """The files a run reads: never to be written."""
    return [getattr(args, n, None) for n in (*names, "spec", "center")]


ADMM_AUTO_ROWS = 1500      # without --backend: chain LP layers this large go to DagAdmm (README, backends)


def stability_options(args, progress: bool):
    from ..solvers import check_backend
    from ..prove.stability import StabilityOptions
    check_backend(args.backend)
    return StabilityOptions(method=args.method, backend=args.backend, time_limit=args.time_limit,
                            samples=args.samples, seed=args.seed, progress=progress, milp_budget=args.milp_budget,
                            split_boxes=args.split_boxes, bab=getattr(args, "bab", True),
                            lp_admm_rows=ADMM_AUTO_ROWS if getattr(args, "backend_default", False) else None)


def refuse_top1_of_one_output(n_outputs: int, instead: str = "--preserve linf --epsilon E",
                              flag: str = "--preserve top1") -> None:
    """Keeping the top-1 class says nothing about a model with one output (its only class): refused (exit 2);
    `instead` names the option of this command that bounds the output."""
    from ..errors import InputFileError
    if n_outputs < 2:
        raise InputFileError(f"{flag} needs a model with two or more outputs (classes); this one has "
                             f"{n_outputs}, so every model would keep its top-1 class: use {instead}")


def progress_of(args) -> bool:
    return not args.no_progress and sys.stderr.isatty()


def require_chain(path, what: str) -> None:
    """Refuse, before any heavy work, a model that only the graph pipeline holds, for a command that
    works on chains of dense layers so far (densifying its convolutions would take minutes and GiBs)."""
    from ..errors import UnsupportedModelError
    from ..apps.graph_simplify import takes_chain_pipeline
    from ..ir import load_graph
    if not takes_chain_pipeline(load_graph(path), path):
        raise UnsupportedModelError(f"{what} works on chains of dense layers so far; {path} has convolutions, "
                                    "branches or several inputs/outputs (simplify, check and bounds "
                                    "--method interval|deeppoly accept it)")


def runner_of(args, description: dict):
    """The `distributed.Runner` the flags ask for, or None (in this process, no journal: the default path)."""
    workers, scheduler, journal = getattr(args, "workers", None), getattr(args, "scheduler", None), \
        getattr(args, "journal", None)
    if not (workers or scheduler or journal):
        return None
    from ..distributed import Runner, make_executor
    jn = open_journal(args, journal, description) if journal else None   # refuse a bad journal before starting a cluster
    try:
        return Runner(make_executor(workers, scheduler), jn, progress_of(args))
    except BaseException:
        if jn is not None:
            jn.close()
        raise


def refuse_journal_clash(args, path) -> None:
    """Exit 2 when the journal `path` is a file the run reads or writes (checked up front, even on a path that
    may not open the journal)."""
    from pathlib import Path
    from ..errors import InputFileError
    others = [getattr(args, n, None) for n in ("model", "model_a", "model_b", "spec", "center", "output", "report")]
    if any(o and Path(o).resolve() == Path(path).resolve() for o in others):
        raise InputFileError(f"--journal {path} is also an input or output of this run; choose another file")


def open_journal(args, path, description):
    """The journal at `path`, refused (exit 2) when it is a file the run reads or writes, or cannot be opened."""
    from ..distributed import Journal
    from ..errors import InputFileError
    refuse_journal_clash(args, path)
    try:
        return Journal(path, description)
    except (OSError, UnicodeDecodeError) as exc:
        raise InputFileError(f"cannot use --journal {path}: {exc}") from None


def distributed_report(runner) -> dict:
    ex = runner.executor
    out = {"executor": ex.kind, "workers": ex.workers, "tasks_run": runner.tasks, "tasks_failed": len(runner.failed)}
    if runner.failed:
        out["failures"] = runner.failed[:20]
    if runner.journal is not None:
        out["journal"] = runner.journal.stats()
    return out
