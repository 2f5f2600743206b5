"""Command line: `equiv simplify | bounds | bench`.  Parses arguments and calls the API, nothing more."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import __version__
from .errors import EquivError

EXIT_CODES = """exit codes:
  0  success
  1  a simplified model disagreed with the original in validation (a bug: nothing is written)
  2  bad input: unreadable or unsupported model, bad region, unknown backend, output would overwrite input
  130 interrupted"""


def _add_region(p: argparse.ArgumentParser):
    g = p.add_argument_group("input region (exactly one)")
    g.add_argument("--spec", metavar="FILE.vnnlib", help="VNN-LIB file; its input constraints give the box "
                   "(output constraints are ignored; a disjunction of input boxes uses their hull)")
    g.add_argument("--box", metavar="LO:HI,...", help="one lo:hi interval per input, e.g. '0.6:0.68,-0.5:0.5'")
    g.add_argument("--center", metavar="FILE.npy", help="centre of an L-infinity ball (with --radius)")
    g.add_argument("--radius", type=float, help="radius of the L-infinity ball around --center")
    g.add_argument("--clip", metavar="LO:HI", help="clip the ball to [LO, HI] in every input, e.g. 0:1")


def _add_solver(p: argparse.ArgumentParser, default_method="milp"):
    p.add_argument("--method", choices=["interval", "deeppoly", "lp", "milp"], default=default_method,
                   help=f"strongest proof method to use (default: {default_method}); each includes the cheaper ones")
    p.add_argument("--backend", default="highs", help="LP/MILP solver backend (default: highs)")
    p.add_argument("--time-limit", type=float, default=10.0, metavar="S",
                   help="seconds per solver query; a query that runs out leaves its neuron 'unknown' (default: 10)")
    p.add_argument("--milp-budget", type=float, default=None, metavar="S",
                   help="total seconds for all MILP decisions; once spent, the remaining neurons stay 'unknown' "
                        "(default: no budget, only the per-query limit)")
    p.add_argument("--split-boxes", type=int, default=10000, metavar="N",
                   help="input splitting budget in boxes, used with --method milp when at most 12 inputs vary "
                        "(0 turns it off; default 10000)")
    p.add_argument("--samples", type=int, default=2000, help="random points used to witness unstable neurons")
    p.add_argument("--seed", type=int, default=0, help="random seed for sampling (default: 0)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="equiv",
        description="Make ReLU networks provably smaller: prove which neurons are stable on an input region "
                    "(sound bounds, LP and MILP proofs) and write a smaller ONNX model equal to the original there.",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"equiv {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("simplify", help="prove stable neurons and write a smaller, equivalent ONNX model",
                       description="Prove each hidden ReLU dead, active or unstable on the region (cheapest proof "
                                   "first), remove dead neurons and the ReLU of active ones, write the smaller model, "
                                   "and check it against the original in onnxruntime on >= 10 000 points.",
                       epilog="example:\n  equiv simplify models/digits_mlp.onnx --spec models/digits_mlp_ball.vnnlib "
                              "-o small.onnx --report report.json\n\n" + EXIT_CODES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("model", help="input ONNX model (never overwritten)")
    _add_region(s)
    s.add_argument("-o", "--output", help="where to write the simplified model (default: MODEL.simplified.onnx)")
    s.add_argument("--report", metavar="FILE.json", help="write the JSON report here")
    s.add_argument("--json", action="store_true", help="print the JSON report on stdout instead of the summary")
    _add_solver(s)
    s.add_argument("--validation-samples", type=int, default=10000, help="random points for validation (default 10000)")
    s.add_argument("--tolerance", type=float, default=1e-4,
                   help="largest accepted output difference in validation (default 1e-4; above it is a bug, exit 1)")
    s.add_argument("--no-progress", action="store_true", help="no progress bars")

    b = sub.add_parser("bounds", help="sound lower/upper bounds of every neuron on a region",
                       description="Per-layer pre-activation bounds by interval arithmetic, DeepPoly back-substitution, "
                                   "LP tightening (triangle relaxation) or MILP phase proofs.",
                       epilog="example:\n  equiv bounds model.onnx --spec prop.vnnlib --method deeppoly --json\n\n" + EXIT_CODES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    b.add_argument("model")
    _add_region(b)
    _add_solver(b, default_method="deeppoly")
    b.add_argument("--json", action="store_true", help="print all bounds as JSON")

    n = sub.add_parser("bench", help="run a benchmark suite and write results/*.md and *.json",
                       description="Run `equiv simplify` over a named suite of real networks and record stable counts, "
                                   "sizes and times, with the machine they ran on.",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    n.add_argument("--suite", default="core", help="suite name: core (all ACAS Xu on prop_3/prop_4 + MNIST), "
                   "quick (ACAS Xu 1_1 prop_3 and MNIST 256x2 prop_0), solvers (the same LP/MILP queries on "
                   "every backend)")
    n.add_argument("--benchmarks", default=None, help="folder with acasxu/ and mnist_fc/ (default: ../shared/benchmarks)")
    n.add_argument("--out", default="results", help="folder for the results (default: results)")
    n.add_argument("--time-limit", type=float, default=10.0, help="seconds per solver query")
    n.add_argument("--milp-budget", type=float, default=60.0, help="total MILP seconds per case (default 60)")
    n.add_argument("--limit", type=int, default=None, help="run only the first N cases (for a smoke run)")
    n.add_argument("--backends", default=None, help="solvers suite: comma-separated backends (default: all installed)")
    n.add_argument("--plot", default=None, metavar="FILE.png", help="solvers suite: box plot of solve times")
    return p


def _region(args):
    from .region import load_region
    clip = None
    if args.clip:
        from .region import box_from_string
        c = box_from_string(args.clip)
        clip = (float(c.lo[0]), float(c.hi[0]))
    return load_region(spec=args.spec, box=args.box, center=args.center, radius=args.radius, clip=clip)


def _options(args, progress: bool):
    from .solvers import check_backend
    from .stability import StabilityOptions
    check_backend(args.backend)
    return StabilityOptions(method=args.method, backend=args.backend, time_limit=args.time_limit,
                            samples=args.samples, seed=args.seed, progress=progress, milp_budget=args.milp_budget,
                            split_boxes=args.split_boxes)


def cmd_simplify(args) -> int:
    from .report import build_report, summary, write_json_atomic
    from .simplify import simplify
    box, source = _region(args)
    out = args.output or str(Path(args.model).with_suffix("")) + ".simplified.onnx"
    progress = not args.no_progress and sys.stderr.isatty()
    res = simplify(args.model, box, _options(args, progress), output_path=out, region_source=source,
                   validation_samples=args.validation_samples, tolerance=args.tolerance)
    report = build_report(res)
    if args.report:
        write_json_atomic(report, args.report)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(summary(res))
    return 0


def cmd_bounds(args) -> int:
    from .onnx_io import load_onnx
    from .stability import prove_stability
    net = load_onnx(args.model)
    box, source = _region(args)
    box.check_dim(net.n_inputs)
    res = prove_stability(net, box, _options(args, progress=False))
    b = res.bounds
    if args.json:
        print(json.dumps({"model": args.model, "region": {"source": source, **box.to_json()}, "method": args.method,
                          "counts": b.counts(net.masks), "layers": b.to_json()}, indent=1))
        return 0
    print(f"{args.model}: {args.method} bounds on {source}")
    for k, (lo, hi) in enumerate(zip(b.lo, b.hi), start=1):
        kind = "output" if k == len(b.lo) else f"layer {k}"
        extra = ""
        if k < len(b.lo):
            m = net.masks[k - 1]
            extra = f"  dead {int(((hi <= 0) & m).sum())}, active {int(((lo >= 0) & (hi > 0) & m).sum())}, " \
                    f"unstable {int(((lo < 0) & (hi > 0) & m).sum())}"
        print(f"  {kind:>8}: {lo.size} neurons, lo in [{lo.min():.4g}, {lo.max():.4g}], "
              f"hi in [{hi.min():.4g}, {hi.max():.4g}]{extra}")
    c = b.counts(net.masks)
    print(f"  stable {c['stable']} of {net.n_relus} ReLUs (dead {c['dead']}, active {c['active']})")
    return 0


def cmd_bench(args) -> int:
    from .bench import DEFAULT_BENCHMARKS, run_suite
    if args.suite == "solvers":
        from .bench_solvers import run_solvers_bench
        from .solvers import check_backend
        backends = args.backends.split(",") if args.backends else None
        for b in backends or []:
            check_backend(b)
        data = run_solvers_bench(Path(args.benchmarks) if args.benchmarks else DEFAULT_BENCHMARKS, Path(args.out),
                                 backends, time_limit=args.time_limit, plot=args.plot)
        print((Path(args.out) / "solvers.md").read_text())
        return 1 if data["disagreements"] else 0
    run_suite(args.suite, benchmarks=args.benchmarks, out=args.out, time_limit=args.time_limit, limit=args.limit,
              milp_budget=args.milp_budget)
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return {"simplify": cmd_simplify, "bounds": cmd_bounds, "bench": cmd_bench}[args.command](args)
    except EquivError as exc:
        print(f"equiv: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("equiv: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
