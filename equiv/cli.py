"""Command line: `equiv simplify | check | bounds | slice | bench`.  Parses arguments and calls the API, nothing more."""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import sys
import traceback
from pathlib import Path

import numpy as np

from . import __version__
from .errors import EquivError

# Exit codes, shared by every subcommand; each subcommand's --help lists the ones it can return.
CODES = {
    "simplify": [("0", "the simplified model was written (validated in onnxruntime; with --certify, also proved)"),
                 ("1", "the simplified model disagreed with the original in validation or --certify: a bug in "
                       "equiv; nothing is written"),
                 ("3", "--certify: neither proved nor refuted in its time (the model is written; see the report)")],
    "check": [("0", "equivalent: proved on the whole region (--measure without --epsilon: the bound was computed)"),
              ("1", "not equivalent: a counterexample, confirmed in onnxruntime, is in the report"),
              ("3", "unknown: limits reached before a proof or a counterexample; the report gives the proven interval")],
    "bounds": [("0", "the bounds were computed")],
    "slice": [("0", "the family was written (or, with --verify, every check passed)"),
              ("1", "making: a slice or the dispatcher disagreed with the original (a bug: nothing is written); "
                    "--verify: a check failed (tiling, tree, a changed or missing file, outputs that differ)"),
              ("3", "--certify: some slice was neither proved nor refuted in its time (the family is written)")],
    "bench": [("0", "the suite ran (solvers: the backends agreed; slicing: every family verified)"),
              ("1", "solvers: two backends disagreed; slicing: a family failed verification")],
}
COMMON_CODES = [("2", "bad input: unreadable, empty or unsupported model, bad region or option, an output path that "
                      "would overwrite an input, another output or a special file (nothing is written)"),
                ("4", "internal error in equiv (a one-line message; --debug shows the traceback): never a verdict"),
                ("130", "interrupted (Ctrl-C); 143: terminated (SIGTERM); no partial output is left")]


def exit_codes(command: str) -> str:
    """The exit-code section of one subcommand's --help."""
    rows = sorted(CODES[command] + COMMON_CODES, key=lambda r: int(r[0]))
    return "exit codes:\n" + "\n".join(f"  {code:<4}{text}" for code, text in rows)


# ---- argument types: limits must be positive, counts non-negative, and so on ---------------------

def _number(kind: str, low: float, strict: bool, cast=float):
    def parse(text: str):
        try:
            v = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind}, got '{text}'") from None
        if not math.isfinite(v) or (v <= low if strict else v < low):
            raise argparse.ArgumentTypeError(f"expected {kind}, got '{text}'")
        return v
    parse.__name__ = kind
    return parse


positive_seconds = _number("a positive number of seconds", 0.0, strict=True)
non_negative = _number("a number >= 0", 0.0, strict=False)
positive_number = _number("a positive number", 0.0, strict=True)
count = _number("a whole number >= 0", 0, strict=False, cast=int)
positive_count = _number("a whole number >= 1", 1, strict=False, cast=int)

# options whose value may start with a minus sign ("--box -0.5:0.5,..."): argparse would read it as an option
_SIGNED_VALUE_OPTIONS = ("--box", "--clip", "--epsilon", "--radius")
_NEGATIVE = re.compile(r"^-(\d|\.\d|inf)", re.IGNORECASE)


def join_signed_values(argv: list[str]) -> list[str]:
    """Turn `--box -0.5:0.5` into `--box=-0.5:0.5` so that argparse takes the value."""
    out, i = [], 0
    while i < len(argv):
        tok = argv[i]
        if tok in _SIGNED_VALUE_OPTIONS and i + 1 < len(argv) and _NEGATIVE.match(argv[i + 1]):
            out.append(f"{tok}={argv[i + 1]}")
            i += 2
            continue
        out.append(tok)
        i += 1
    return out


def _add_region(p: argparse.ArgumentParser):
    g = p.add_argument_group("input region (exactly one)")
    g.add_argument("--spec", metavar="FILE.vnnlib", help="VNN-LIB file; its input constraints give the box "
                   "(output constraints are ignored; a disjunction of input boxes is a union of boxes: "
                   "check decides each box, simplify/slice/bounds work on their hull, and the report says so)")
    g.add_argument("--box", metavar="LO:HI,...", help="one lo:hi interval per input, e.g. '0.6:0.68,-0.5:0.5'")
    g.add_argument("--center", metavar="FILE.npy", help="centre of an L-infinity ball (with --radius)")
    g.add_argument("--radius", type=non_negative, help="radius of the L-infinity ball around --center")
    g.add_argument("--clip", metavar="LO:HI", help="clip the ball to [LO, HI] in every input, e.g. 0:1 (only with "
                   "--center; refused with --spec or --box)")


def _add_solver(p: argparse.ArgumentParser, default_method="milp", samples_default=2000,
                samples_help="random points used to witness unstable neurons"):
    p.add_argument("--method", choices=["interval", "deeppoly", "lp", "milp"], default=default_method,
                   help=f"strongest proof method to use (default: {default_method}); each includes the cheaper ones")
    p.add_argument("--backend", default="highs", help="LP/MILP solver backend (default: highs)")
    p.add_argument("--time-limit", type=positive_seconds, default=10.0, metavar="S",
                   help="seconds per solver query; a query that runs out leaves its neuron 'unknown' (default: 10)")
    p.add_argument("--milp-budget", type=positive_seconds, default=None, metavar="S",
                   help="total seconds for all MILP decisions; once spent, the remaining neurons stay 'unknown' "
                        "(default: no budget, only the per-query limit)")
    p.add_argument("--split-boxes", type=count, default=10000, metavar="N",
                   help="input splitting budget in boxes, used with --method milp when at most 12 inputs vary "
                        "(0 turns it off; default 10000)")
    p.add_argument("--samples", type=count, default=samples_default, help=samples_help)
    p.add_argument("--seed", type=int, default=0, help="random seed for sampling (default: 0)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="equiv",
        description="Make ReLU networks provably smaller: prove which neurons are stable on an input region "
                    "(sound bounds, LP and MILP proofs) and write a smaller ONNX model equal to the original there.",
        epilog="each subcommand's --help lists its exit codes; the README has them all",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"equiv {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("simplify", help="prove stable neurons and write a smaller, equivalent ONNX model",
                       description="Prove each hidden ReLU dead, active or unstable on the region (cheapest proof "
                                   "first), remove dead neurons and the ReLU of active ones, write the smaller model, "
                                   "and check it against the original in onnxruntime on >= 10 000 points.",
                       epilog="example:\n  equiv simplify models/digits_mlp.onnx --spec models/digits_mlp_ball.vnnlib "
                              "-o small.onnx --report report.json\n\n" + exit_codes("simplify"),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("model", help="input ONNX model (never overwritten)")
    _add_region(s)
    s.add_argument("-o", "--output", help="where to write the simplified model (default: MODEL.simplified.onnx)")
    s.add_argument("--report", metavar="FILE.json", help="write the JSON report here")
    s.add_argument("--json", action="store_true", help="print the JSON report on stdout instead of the summary")
    _add_solver(s)
    s.add_argument("--validation-samples", type=positive_count, default=10000, metavar="N",
                   help="random points of the region for validation, besides random vertices, the centre, solver "
                        "witnesses and gradient-ascent points (default 10000)")
    s.add_argument("--tolerance", type=non_negative, default=1e-4,
                   help="largest accepted output difference in validation (default 1e-4; above it is a bug, exit 1)")
    s.add_argument("--no-progress", action="store_true", help="no progress bars")
    s.add_argument("--certify", action="store_true",
                   help="prove the simplified model equivalent to the original with `equiv check` (epsilon = "
                        "--tolerance) before writing it; the verdict goes in the report")
    s.add_argument("--certify-time-limit", type=positive_seconds, default=300.0, metavar="S",
                   help="seconds for --certify (default 300)")

    q = sub.add_parser("check", help="prove two models equivalent on a region, or find a counterexample",
                       description="Prove that two ONNX models with the same inputs and outputs agree on the region: "
                                   "every output within --epsilon (--norm linf) or the same top-1 class (--norm top1, "
                                   "argmax ties go to the lowest index; a proof shows a strict winner), or return an "
                                   "input where they differ, confirmed in onnxruntime. Order: falsification (sampling, "
                                   "gradient ascent), bounds on the difference of paired neurons, input splitting, then "
                                   "one product MILP per output and sign (only dual bounds and infeasibility prove).",
                       epilog="examples:\n  equiv check net.onnx net_fp16.onnx --spec prop.vnnlib --epsilon 0.05\n"
                              "  equiv check net.onnx pruned.onnx --center x.npy --radius 0.03 --clip 0:1 --norm top1\n"
                              "  equiv check net.onnx small.onnx --spec prop.vnnlib --measure --json\n\n" + exit_codes("check"),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    q.add_argument("model_a", help="reference ONNX model (e.g. the original)")
    q.add_argument("model_b", help="candidate ONNX model (e.g. compressed); same input and output sizes")
    _add_region(q)
    q.add_argument("--epsilon", metavar="E[,E...]",
                   help="linf: largest allowed |A_j - B_j|, one value or one per output (required for linf "
                        "unless --measure)")
    q.add_argument("--norm", choices=["linf", "top1"], default="linf", help="what 'equivalent' means (default linf)")
    q.add_argument("--measure", action="store_true",
                   help="compute the tightest proven bound on max |A - B| (to within 5%% of the largest difference seen, or until the limits) instead of stopping once "
                        "epsilon is proved; without --epsilon the verdict is 'measured'")
    q.add_argument("--backend", default="highs", help="MILP solver backend (default: highs)")
    q.add_argument("--time-limit", type=positive_seconds, default=300.0, metavar="S",
                   help="seconds for the whole check (default 300); when spent the verdict is 'unknown'")
    q.add_argument("--query-time-limit", type=positive_seconds, default=60.0, metavar="S",
                   help="seconds per MILP query; a piece whose query runs out is bisected and retried (default 60)")
    q.add_argument("--max-boxes", type=count, default=200000, metavar="N",
                   help="input splitting budget in boxes, used when at most 12 inputs vary (default 200000)")
    q.add_argument("--max-pieces", type=positive_count, default=16, metavar="N",
                   help="most pieces sent to the MILP (after splitting or bisecting on timeouts; default 16)")
    q.add_argument("--samples", type=count, default=10000, help="random points for falsification (default 10000)")
    q.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    q.add_argument("--report", metavar="FILE.json", help="write the JSON report here")
    q.add_argument("--json", action="store_true", help="print the JSON report on stdout instead of the summary")
    q.add_argument("--no-progress", action="store_true", help="no progress bars")

    b = sub.add_parser("bounds", help="sound lower/upper bounds of every neuron on a region",
                       description="Per-layer pre-activation bounds by interval arithmetic, DeepPoly back-substitution, "
                                   "LP tightening (triangle relaxation) or MILP phase proofs.",
                       epilog="example:\n  equiv bounds model.onnx --spec prop.vnnlib --method deeppoly --json\n\n" + exit_codes("bounds"),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    b.add_argument("model")
    _add_region(b)
    _add_solver(b, default_method="deeppoly")
    b.add_argument("--json", action="store_true", help="print all bounds as JSON")

    c = sub.add_parser("slice", help="split the region; write a family of small networks and a dispatcher",
                       description="Bisect the region into pieces, simplify the model on each piece (proofs on that "
                                   "piece only), and write FAMILY/slice_XXX.onnx (one small network per piece), "
                                   "FAMILY/dispatch.onnx (one model routing each input to its piece: equal to the "
                                   "original on the whole region), FAMILY/manifest.json and FAMILY/slices.png. Every "
                                   "slice and the dispatcher are run against the original in onnxruntime before "
                                   "anything is written. `--verify FAMILY` re-checks a written family from its files.",
                       epilog="examples:\n  equiv slice ACASXU_run2a_1_1_batch_2000.onnx --spec prop_1.vnnlib -o family/\n"
                              "  equiv slice --verify family/ --model ACASXU_run2a_1_1_batch_2000.onnx\n\n"
                              + exit_codes("slice"), formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("model", nargs="?", help="input ONNX model (never overwritten)")
    _add_region(c)
    c.add_argument("-o", "--output", metavar="FAMILY", help="folder to write the family into")
    c.add_argument("--max-slices", type=positive_count, default=64, metavar="N", help="most pieces to make (default 64)")
    c.add_argument("--target-relus", type=count, default=0, metavar="K",
                   help="stop splitting a piece once it has at most K ReLUs (default 0: split until --max-slices)")
    c.add_argument("--strategy", choices=["unstable", "width"], default="unstable",
                   help="unstable (default): bisect the piece with the most ReLUs along the dimension whose halves "
                        "have the fewest unstable ReLUs by DeepPoly; width: along its widest dimension")
    _add_solver(c, samples_default=None,
                samples_help="random points: making, to witness unstable neurons on each piece (default 2000); "
                             "--verify, on the whole region for the dispatcher (default 100000)")
    c.add_argument("--validation-samples", type=positive_count, default=10000, metavar="N",
                   help="random points per slice for its validation (default 10000)")
    c.add_argument("--dispatch-samples", type=positive_count, default=100000, metavar="N",
                   help="random points of the region for the dispatcher's validation (default 100000)")
    c.add_argument("--tolerance", type=non_negative, default=1e-4, help="largest accepted output difference (default 1e-4)")
    c.add_argument("--json", action="store_true", help="print the summary (or the --verify report) as JSON")
    c.add_argument("--no-progress", action="store_true", help="no progress bar")
    c.add_argument("--force", action="store_true",
                   help="write into a folder that already holds a family (its files are overwritten, none deleted)")
    c.add_argument("--certify", action="store_true",
                   help="prove every slice equal to the original on its box with `equiv check` (epsilon = "
                        "--tolerance): before writing (verdicts go in the manifest), or with --verify, from the files")
    c.add_argument("--certify-time-limit", type=positive_seconds, default=60.0, metavar="S",
                   help="seconds per slice for --certify (default 60)")
    c.add_argument("--verify", metavar="FAMILY", help="re-check a written family instead of making one")
    c.add_argument("--model", dest="original", metavar="ORIGINAL.onnx",
                   help="with --verify: the original model (default: the path recorded in the manifest)")

    n = sub.add_parser("bench", help="run a benchmark suite and write results/*.md and *.json",
                       description="Run `equiv simplify` over a named suite of real networks and record stable counts, "
                                   "sizes and times, with the machine they ran on.",
                       epilog=exit_codes("bench"), formatter_class=argparse.RawDescriptionHelpFormatter)
    n.add_argument("--suite", default="core", help="suite name: core (all ACAS Xu on prop_3/prop_4 + MNIST), "
                   "quick (ACAS Xu 1_1 prop_3 and MNIST 256x2 prop_0), solvers (the same LP/MILP queries on "
                   "every backend), slicing (ACAS Xu families of <= 64 slices, made and verified), equivalence (`equiv check` "
                   "on float16 ACAS Xu copies, pruned MNIST and the core suite's simplified models), graphs (the CIFAR conv and "
                   "residual nets: DeepPoly on the DAG against CROWN's counts, and simplify)")
    n.add_argument("--case-time-limit", type=positive_seconds, default=300.0, metavar="S",
                   help="equivalence suite: seconds per pair (default 300)")
    n.add_argument("--benchmarks", default=None, help="folder with acasxu/ and mnist_fc/ (default: ../shared/benchmarks)")
    n.add_argument("--out", default="results", help="folder for the results (default: results)")
    n.add_argument("--time-limit", type=positive_seconds, default=10.0, help="seconds per solver query")
    n.add_argument("--milp-budget", type=positive_seconds, default=60.0, help="total MILP seconds per case (default 60)")
    n.add_argument("--limit", type=positive_count, default=None, help="run only the first N cases (for a smoke run)")
    n.add_argument("--backends", default=None, help="solvers suite: comma-separated backends (default: all installed)")
    n.add_argument("--plot", default=None, metavar="FILE.png", help="solvers suite: box plot of solve times")
    for sp in sub.choices.values():
        sp.add_argument("--debug", action="store_true", help="on an internal error, print the traceback")
    return p


def _clip(args):
    if not args.clip:
        return None
    from .errors import RegionError
    from .region import box_from_string
    try:
        c = box_from_string(args.clip)
    except RegionError as exc:
        raise RegionError(f"--clip must be one interval LO:HI with LO <= HI, got '{args.clip}' ({exc})") from None
    if c.dim != 1:
        raise RegionError(f"--clip takes one interval LO:HI, got '{args.clip}'")
    return float(c.lo[0]), float(c.hi[0])


def _regions(args):
    """Every box of the region (a VNN-LIB disjunction gives several) and its description."""
    from .region import load_regions
    return load_regions(spec=args.spec, box=args.box, center=args.center, radius=args.radius, clip=_clip(args))


def _region(args):
    """One box for the commands that work on one: the region itself, or the hull of its boxes (a superset:
    sound for simplifying and bounding), said in the description."""
    from .region import load_region
    return load_region(spec=args.spec, box=args.box, center=args.center, radius=args.radius, clip=_clip(args))


def _inputs(args, *names) -> list:
    """The files a run reads: never to be written."""
    return [getattr(args, n, None) for n in (*names, "spec", "center")]


def _options(args, progress: bool):
    from .solvers import check_backend
    from .stability import StabilityOptions
    check_backend(args.backend)
    return StabilityOptions(method=args.method, backend=args.backend, time_limit=args.time_limit,
                            samples=args.samples, seed=args.seed, progress=progress, milp_budget=args.milp_budget,
                            split_boxes=args.split_boxes)


def _progress(args) -> bool:
    return not args.no_progress and sys.stderr.isatty()


def cmd_simplify(args, out) -> int:
    from .artifacts import OutputGuard, save_onnx_atomic, write_json_atomic
    from .report import build_report, summary
    from .simplify import simplify
    guard = OutputGuard(_inputs(args, "model"))
    target = guard.claim(args.output or str(Path(args.model).with_suffix("")) + ".simplified.onnx",
                         "simplified model")
    if args.report:
        guard.claim(args.report, "report")
    box, source = _region(args)
    from .graph_simplify import takes_chain_pipeline
    from .ir import load_graph
    graph = load_graph(args.model)            # refuses unsupported models at once, checks every node
    if not takes_chain_pipeline(graph, args.model):
        return _simplify_graph(args, out, graph, box, source, target)
    progress = _progress(args)
    res = simplify(args.model, box, _options(args, progress), region_source=source,
                   validation_samples=args.validation_samples, tolerance=args.tolerance)
    report = build_report(res)
    code = 0
    if args.certify:
        from .equivalence import certify_simplified
        cert = certify_simplified(res, tolerance=args.tolerance, backend=args.backend,
                                  time_limit=args.certify_time_limit, progress=progress)
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


def _simplify_graph(args, out, graph, box, source, target) -> int:
    """simplify for convolutional, residual and multi-input graphs (the DAG pipeline)."""
    from .artifacts import save_onnx_atomic, write_json_atomic
    from .errors import UnsupportedModelError
    from .graph_simplify import simplify_graph
    from .simplify import sha256_of
    from .validate import OnnxRunner
    if args.certify:
        raise UnsupportedModelError("--certify runs `equiv check`, which works on chains of dense layers so far; "
                                    "this model has convolutions, branches or several inputs/outputs")
    box.check_dim(graph.n_inputs)
    res = simplify_graph(graph, OnnxRunner(str(args.model)), box, method=args.method, samples=args.samples,
                         seed=args.seed, validation_samples=args.validation_samples, tolerance=args.tolerance)
    save_onnx_atomic(res.onnx_model, target)
    report = {"equiv_version": __version__, "model": args.model, "model_sha256": sha256_of(args.model),
              "output": str(target), "region": {"source": source, **box.to_json()}, "pipeline": "graph",
              **res.report()}
    if args.report:
        write_json_atomic(report, args.report)
    if args.json:
        out.emit(json.dumps(report, indent=1))
        return 0
    c = report["phases"]
    out.emit("\n".join([
        f"equiv simplify: {args.model} (graph: {len(graph.order)} nodes, {report['relu_layers']} ReLU layers)",
        f"  ReLUs   {report['relus_before']:>8} -> {report['relus_after']}",
        f"  params  {report['params_before']:>8} -> {report['params_after']} (the masks of partly stable layers)",
        f"  MACs    {report['macs_before']:>8} -> {report['macs_after']}",
        f"  positions dead {c['dead']}, active {c['active']}, unstable {c['unstable']}, unknown {c['unknown']} "
        f"(proved by {report['method']})",
        f"  validation: {res.validation.samples} points, max |diff| {res.validation.max_abs_diff:.3g}",
        *[f"  note: {n}" for n in report["notes"]],
        f"  time {report['seconds']['total']:.2f} s -> {target}"]))
    return 0


def _epsilon(text):
    if text is None:
        return None
    from .errors import InputFileError
    try:
        vals = [float(v) for v in text.split(",")]
    except ValueError:
        raise InputFileError(f"--epsilon must be a number or comma-separated numbers, got '{text}'") from None
    return vals[0] if len(vals) == 1 else vals


def cmd_check(args, out) -> int:
    from .artifacts import OutputGuard, write_json_atomic
    from .equivalence import CheckOptions, check_models, summary
    from .simplify import sha256_of
    from .solvers import check_backend
    guard = OutputGuard(_inputs(args, "model_a", "model_b"))
    if args.report:
        guard.claim(args.report, "report")
    check_backend(args.backend)
    boxes, source = _regions(args)
    opt = CheckOptions(norm=args.norm, epsilon=_epsilon(args.epsilon), measure=args.measure, backend=args.backend,
                       time_limit=args.time_limit, query_time_limit=args.query_time_limit, max_boxes=args.max_boxes,
                       max_pieces=args.max_pieces, samples=args.samples, seed=args.seed, progress=_progress(args))
    from .graph_simplify import takes_chain_pipeline
    from .ir import load_graph
    ga, gb = load_graph(args.model_a), load_graph(args.model_b)     # refuses unsupported models at once
    if takes_chain_pipeline(ga, args.model_a) and takes_chain_pipeline(gb, args.model_b):
        res = check_models(args.model_a, args.model_b, boxes if len(boxes) > 1 else boxes[0], opt)
    else:
        from .graph_check import check_graphs
        from .validate import OnnxRunner
        res = check_graphs(ga, gb, boxes, OnnxRunner(str(args.model_a)), OnnxRunner(str(args.model_b)), opt)
    from .region import hull
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


def cmd_bounds(args, out) -> int:
    if args.method in ("lp", "milp"):
        return _bounds_chain(args, out)
    from .bounds.engine import deeppoly_graph, interval_graph
    from .ir import load_graph
    g = load_graph(args.model)
    box, source = _region(args)
    box.check_dim(g.n_inputs)
    b = interval_graph(g, box) if args.method == "interval" else deeppoly_graph(g, box)
    counts = b.counts(g)
    layers = [{"layer": k, "kind": "relu input", "tensor": g.args(row["relu"])[0], **row,
               "lo": b.lo[g.args(row["relu"])[0]].reshape(-1).tolist(),
               "hi": b.hi[g.args(row["relu"])[0]].reshape(-1).tolist()}
              for k, row in enumerate(b.per_layer(g), start=1)]
    layers += [{"layer": len(layers) + k, "kind": "output", "tensor": o, "shape": list(g.shape(o)),
                "lo": b.lo[o].reshape(-1).tolist(), "hi": b.hi[o].reshape(-1).tolist()}
               for k, o in enumerate(g.outputs, start=1)]
    if args.json:
        out.emit(json.dumps({"model": args.model, "region": {"source": source, **box.to_json()}, "method": args.method,
                             "relus": g.n_relus, "counts": counts, "layers": layers,
                             "seconds": {k: round(v, 4) for k, v in b.seconds.items()}}, indent=1))
        return 0
    lines = [f"{args.model}: {args.method} bounds on {source}"]
    for row in layers:
        lo, hi = np.array(row["lo"]), np.array(row["hi"])
        what = f"relu {row['layer']}" if row["kind"] == "relu input" else "output"
        extra = (f"  dead {row['dead']}, active {row['active']}, unstable {row['unstable']}"
                 if row["kind"] == "relu input" else "")
        lines.append(f"  {what:>8}: {lo.size} positions {tuple(row['shape'])}, lo in [{lo.min():.4g}, {lo.max():.4g}], "
                     f"hi in [{hi.min():.4g}, {hi.max():.4g}]{extra}")
    lines.append(f"  stable {counts['stable']} of {g.n_relus} ReLUs (dead {counts['dead']}, active {counts['active']})")
    out.emit("\n".join(lines))
    return 0


def _bounds_chain(args, out) -> int:
    """LP/MILP bounds: the solver encodings still work on chains of dense layers."""
    from .onnx_io import load_onnx
    from .stability import prove_stability
    net = load_onnx(args.model)
    box, source = _region(args)
    box.check_dim(net.n_inputs)
    res = prove_stability(net, box, _options(args, progress=False))
    b = res.bounds
    if args.json:
        out.emit(json.dumps({"model": args.model, "region": {"source": source, **box.to_json()}, "method": args.method,
                             "relus": net.n_relus, "counts": b.counts(net.masks), "layers": b.to_json()}, indent=1))
        return 0
    lines = [f"{args.model}: {args.method} bounds on {source}"]
    for k, (lo, hi) in enumerate(zip(b.lo, b.hi), start=1):
        kind = "output" if k == len(b.lo) else f"layer {k}"
        extra = ""
        if k < len(b.lo):
            m = net.masks[k - 1]
            extra = f"  dead {int(((hi <= 0) & m).sum())}, active {int(((lo >= 0) & (hi > 0) & m).sum())}, " \
                    f"unstable {int(((lo < 0) & (hi > 0) & m).sum())}"
        lines.append(f"  {kind:>8}: {lo.size} neurons, lo in [{lo.min():.4g}, {lo.max():.4g}], "
                     f"hi in [{hi.min():.4g}, {hi.max():.4g}]{extra}")
    c = b.counts(net.masks)
    lines.append(f"  stable {c['stable']} of {net.n_relus} ReLUs (dead {c['dead']}, active {c['active']})")
    out.emit("\n".join(lines))
    return 0


def cmd_slice(args, out) -> int:
    from . import slicing
    from .artifacts import OutputGuard
    from .errors import InputFileError
    if args.verify:
        given = any(v is not None for v in (args.spec, args.box, args.center))
        rep = slicing.verify_family(args.verify, model=args.original or args.model, samples=args.samples or 100000,
                                    region=_region(args)[0] if given else None, certify=args.certify,
                                    certify_time_limit=args.certify_time_limit, backend=args.backend)
        out.emit(json.dumps(rep.to_json(), indent=1) if args.json else rep.format())
        return 0 if rep.ok else 1
    if not (args.model and args.output):
        raise InputFileError("give MODEL.onnx and -o FAMILY to make a family, or --verify FAMILY to check one")
    guard = OutputGuard(_inputs(args, "model"))
    slicing.claim_output_dir(args.output, guard, args.force)     # refuse before the work
    box, source = _region(args)
    sopt = slicing.SliceOptions(max_slices=args.max_slices, target_relus=args.target_relus, strategy=args.strategy,
                                validation_samples=args.validation_samples, dispatch_samples=args.dispatch_samples,
                                tolerance=args.tolerance, progress=_progress(args))
    args.samples = 2000 if args.samples is None else args.samples
    fam = slicing.slice_model(args.model, box, _options(args, progress=False), sopt, region_source=source)
    code = 0
    if args.certify:
        certs = slicing.certify_family(fam, backend=args.backend, time_limit=args.certify_time_limit,
                                       progress=sopt.progress)
        bad = [i for i, c in enumerate(certs) if c["verdict"] == "not_equivalent"]
        if bad:
            from .errors import ValidationError
            raise ValidationError(f"BUG: --certify found slices {bad} differing from the original on their boxes by "
                                  f"more than {args.tolerance:g}; nothing was written. Please report this.")
        unproved = sum(c["verdict"] != "equivalent" for c in certs)
        fam.notes.append(f"--certify: {len(certs) - unproved} of {len(certs)} slices proved equivalent to the original "
                         f"on their boxes (epsilon {args.tolerance:g})" + (f"; {unproved} unknown" if unproved else ""))
        code = 3 if unproved else 0
    manifest = slicing.write_family(fam, args.output)
    out.emit(json.dumps(manifest["summary"], indent=1) if args.json else slicing.format_summary(manifest, args.output))
    return code


def cmd_bench(args, out) -> int:
    from .bench import DEFAULT_BENCHMARKS, run_suite
    if args.suite == "solvers":
        from .bench_solvers import run_solvers_bench
        from .solvers import check_backend
        backends = args.backends.split(",") if args.backends else None
        for b in backends or []:
            check_backend(b)
        data = run_solvers_bench(Path(args.benchmarks) if args.benchmarks else DEFAULT_BENCHMARKS, Path(args.out),
                                 backends, time_limit=args.time_limit, plot=args.plot)
        out.emit((Path(args.out) / "solvers.md").read_text())
        return 1 if data["disagreements"] else 0
    if args.suite == "equivalence":
        from .bench_equivalence import run_equivalence_bench
        run_equivalence_bench(Path(args.benchmarks) if args.benchmarks else DEFAULT_BENCHMARKS, Path(args.out),
                              time_limit=args.case_time_limit, limit=args.limit)
        out.emit((Path(args.out) / "equivalence.md").read_text())
        return 0
    if args.suite == "graphs":
        from .bench_graphs import run_graphs_bench
        run_graphs_bench(Path(args.benchmarks) if args.benchmarks else DEFAULT_BENCHMARKS, Path(args.out), limit=args.limit)
        out.emit((Path(args.out) / "graphs.md").read_text())
        return 0
    if args.suite == "slicing":
        from .bench_slicing import run_slicing_bench
        data = run_slicing_bench(Path(args.benchmarks) if args.benchmarks else DEFAULT_BENCHMARKS, Path(args.out),
                                 time_limit=args.time_limit, milp_budget=args.milp_budget, limit=args.limit)
        out.emit((Path(args.out) / "slicing.md").read_text())
        return 0 if data["all_verified"] else 1
    run_suite(args.suite, benchmarks=args.benchmarks, out=args.out, time_limit=args.time_limit, limit=args.limit,
              milp_budget=args.milp_budget)
    return 0


COMMANDS = {"simplify": cmd_simplify, "bounds": cmd_bounds, "check": cmd_check, "slice": cmd_slice, "bench": cmd_bench}


class ResultStream:
    """Where a command's result goes: the real standard output, and nothing else does.

    While a command runs, file descriptor 1 is pointed at standard error, so whatever a library or a
    solver prints there (HiGHS's banner, licence notices) cannot corrupt `--json` output; the result is
    written to a copy of the original descriptor.  A closed pipe (`equiv check ... | head -3`) ends the
    output quietly: the command still finishes and returns its own exit code.
    """

    def __init__(self):
        self.saved_fd, self.stream, self.broken = None, sys.stdout, False

    def __enter__(self):
        try:
            fd = sys.stdout.fileno()
        except (AttributeError, OSError, ValueError):   # replaced by a test harness: write to it as is
            fd = None
        if fd == 1:
            sys.stdout.flush()
            self.saved_fd = os.dup(1)
            os.dup2(2, 1)
            self.stream = os.fdopen(os.dup(self.saved_fd), "w")
        return self

    def emit(self, text: str) -> None:
        if self.broken:
            return
        try:
            self.stream.write(text + "\n")
            self.stream.flush()
        except BrokenPipeError:
            self.broken = True

    def __exit__(self, *exc):
        if self.saved_fd is None:
            return False
        try:
            self.stream.close()
        except BrokenPipeError:
            pass
        try:
            sys.stdout.flush()
        except (BrokenPipeError, ValueError):
            pass
        os.dup2(self.saved_fd, 1)
        os.close(self.saved_fd)
        return False


class _Terminated(BaseException):
    """SIGTERM, raised in the main thread so that atomic writes clean up on the way out."""


def _on_sigterm(signum, frame):
    raise _Terminated()


def main(argv=None) -> int:
    argv = join_signed_values(list(sys.argv[1:] if argv is None else argv))
    args = build_parser().parse_args(argv)          # bad arguments: argparse prints usage, exit 2
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:                               # not the main thread: leave signals alone
        previous = None
    try:
        with ResultStream() as out:
            return COMMANDS[args.command](args, out)
    except EquivError as exc:
        print(f"equiv: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("equiv: interrupted", file=sys.stderr)
        return 130
    except _Terminated:
        print("equiv: terminated", file=sys.stderr)
        return 143
    except Exception as exc:     # a bug in equiv: never mistaken for a verdict
        if args.debug:
            traceback.print_exc()
        where = traceback.extract_tb(exc.__traceback__)[-1]
        print(f"equiv: internal error: {type(exc).__name__}: {exc} (at {Path(where.filename).name}:{where.lineno}; "
              "run with --debug for the traceback, and please report it)", file=sys.stderr)
        return 4
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
