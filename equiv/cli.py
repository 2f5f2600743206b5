"""Command line: `equiv simplify | check | bounds | slice | compress | bench`.  Parses arguments and calls the API, nothing more."""

from __future__ import annotations

import argparse
import math
import os
import re
import signal
import sys
import threading
import traceback
from pathlib import Path


from . import __version__
from .errors import EquivError

# Exit codes, shared by every subcommand; each subcommand's --help lists the ones it can return.
CODES = {
    "simplify": [("0", "the simplified model was written (validated in onnxruntime; with --certify, also proved)"),
                 ("1", "the simplified model disagreed with the original in validation or --certify: a bug in "
                       "equiv; nothing is written"),
                 ("3", "--certify: neither proved nor refuted in its time (the model is written; see the report); "
                       "--epsilon/--preserve: no set of replacements was certified, the exact simplification "
                       "was written")],
    "check": [("0", "equivalent: proved on the whole region (--measure without --epsilon: the bound was computed)"),
              ("1", "not equivalent: a counterexample, confirmed in onnxruntime, is in the report"),
              ("3", "unknown: limits reached before a proof or a counterexample; the report gives the proven interval")],
    "bounds": [("0", "the bounds were computed")],
    "slice": [("0", "the family was written (or, with --verify, every check passed)"),
              ("1", "making: a slice or the dispatcher disagreed with the original (a bug: nothing is written); "
                    "--verify: a check failed (tiling, tree, a changed or missing file, outputs that differ)"),
              ("3", "--certify: some slice was neither proved nor refuted in its time (the family is written; with "
                    "--verify: every other check passed)")],
    "compress": [("0", "a smaller model proved equivalent to the original (the file that was checked) was written"),
                 ("1", "the certified model failed the sampled re-check in onnxruntime: a bug in equiv; nothing is "
                       "written"),
                 ("3", "no candidate smaller than the original was proved in the time given; nothing is written "
                       "(the report lists every candidate)")],
    "bench": [("0", "the suite ran (solvers: the backends agreed; slicing: every family verified)"),
              ("1", "solvers: two backends disagreed; slicing: a family failed verification")],
}
COMMON_CODES = [("2", "bad input: unreadable, empty or unsupported model, bad region or option, an output path that "
                      "would overwrite an input, another output or a special file (nothing is written); or the "
                      "environment: an unreachable or lost Dask scheduler, a journal that cannot be written"),
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


def blocks_mode(text: str):
    """--blocks: auto, none, residual, or a whole number >= 1 of ReLU layers per block."""
    if text in ("auto", "none", "residual"):
        return text
    try:
        return positive_count(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected auto, none, residual or a whole number >= 1, got '{text}'") from None


blocks_mode.__name__ = "auto, none, residual or K"

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
    shown = default_method or "milp on chains of dense layers, deeppoly on graphs"
    p.add_argument("--method", choices=["interval", "deeppoly", "lp", "milp"], default=default_method,
                   help=f"strongest proof method to use (default: {shown}); each includes the cheaper ones")
    p.add_argument("--backend", default=None,
                   help="LP/MILP solver backend: highs, gurobi, cbc, or admm (LP stage only: batched ADMM with "
                        "certified bounds, DeepSplit's splitting on dense chains; MILP decisions and --certify then "
                        "use highs). Default: highs, except that full-depth LPs of a dense chain with at least 1500 "
                        "rows (e.g. --method lp on mnist 256x6) use admm, where it is faster")
    p.add_argument("--time-limit", type=positive_seconds, default=10.0, metavar="S",
                   help="seconds per solver query; a query that runs out leaves its neuron 'unknown' (default: 10)")
    p.add_argument("--milp-budget", type=positive_seconds, default=None, metavar="S",
                   help="total seconds for all MILP decisions; once spent, the remaining neurons stay 'unknown' "
                        "(default: no budget, only the per-query limit)")
    p.add_argument("--no-bab", dest="bab", action="store_false",
                   help="with --method milp, decide each neuron's phase by MILPs only (windowed on chains without "
                        "input splitting, cones of influence on graphs), without first trying branch and bound on "
                        "ReLU phases (alpha-beta-CROWN bounds, numpy), which by default settles most of them before "
                        "any MILP")
    p.add_argument("--split-boxes", type=count, default=10000, metavar="N",
                   help="input splitting budget in boxes, used with --method milp when at most 12 inputs vary "
                        "(0 turns it off; default 10000)")
    p.add_argument("--samples", type=count, default=samples_default, help=samples_help)
    p.add_argument("--seed", type=count, default=0, help="random seed for sampling (default: 0)")
    p.add_argument("--blocks", type=blocks_mode, default="auto", metavar="auto|none|residual|K",
                   help="block summaries in DeepPoly (BBPoly): K ReLU layers per block, the residual blocks, or none; "
                        "auto (default) uses them only where they were measured to pay (deep chains, many residual "
                        "blocks), so none on shallow nets; graph pipeline and `bounds` (the chain pipeline's own "
                        "bounds do not take it yet)")


def _add_distributed(p, journal: bool = True) -> None:
    """--workers / --scheduler (and --journal): where the solver queries run, and where their answers are kept."""
    g = p.add_argument_group("distributed work (--workers/--scheduler need the extra equiv[dask])")
    g.add_argument("--workers", type=positive_count, default=None, metavar="N",
                   help="run the independent work (simplify: the MILP decisions of a layer; on a graph also its "
                        "branch and bound, split by position; check: sub-boxes "
                        "tiling the region, 4 per worker; slice: the two halves of every split; compress: one "
                        "candidate per worker in each bisection step; bench --suite "
                        "equivalence: the pairs) on a local Dask cluster of N worker processes on 127.0.0.1; the "
                        "proofs, and so the written models and verdicts, are the same as without it (compress "
                        "excepted: it then tries other levels, so it may return another model, proved all the "
                        "same; and a graph under a budget: its split search may end elsewhere)")
    g.add_argument("--scheduler", metavar="ADDRESS", default=None,
                   help="run them on the existing Dask cluster whose scheduler is at ADDRESS (e.g. tcp://10.0.0.5:8786)")
    if journal:
        g.add_argument("--journal", metavar="FILE", default=None,
                       help="append every finished answer (simplify on a chain: each solver query; simplify on a graph: "
                            "each phase proved and each solver point, for any budget or method; check on chains: "
                            "each sub-box proved) to FILE (fsync'd, checksummed lines); run the same command "
                            "again after a kill (on a graph, also with a larger --milp-budget) and the answers in "
                            "FILE are reused; a journal of other inputs (model, region, and on chains options) is "
                            "refused")


def _resolve_backend(args) -> None:
    """--backend not given: highs, with admm for the large LP layers of a chain (`StabilityOptions.lp_admm_rows`)."""
    if getattr(args, "backend", "") is None:
        args.backend, args.backend_default = "highs", True


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
    s.add_argument("--tolerance", type=positive_number, default=1e-4,
                   help="largest accepted output difference in validation (default 1e-4; above it is a bug, exit 1)")
    s.add_argument("--no-progress", action="store_true", help="no progress bars")
    s.add_argument("--certify", action="store_true",
                   help="prove the simplified model equivalent to the original with `equiv check` (epsilon = "
                        "--tolerance) before writing it; the verdict goes in the report")
    s.add_argument("--certify-time-limit", type=positive_seconds, default=None, metavar="S",
                   help="seconds for --certify (default 300), and for each certificate of --epsilon / --preserve "
                        "(default 60)")
    t = s.add_argument_group("simplification up to a tolerance (chains of dense layers)",
                             "Beyond the exact simplification, replace more ReLU neurons by constants, by affine maps "
                             "or by a multiple of another neuron, as long as a sound bound keeps the change within "
                             "the tolerance; the written file is then checked against the original (`equiv check`) "
                             "and the report holds the verdict. An unproved set is halved until one is proved.")
    t.add_argument("--epsilon", metavar="E[,E...]",
                   help="largest allowed |original_j - simplified_j| on the region, one value or one per output")
    t.add_argument("--preserve", choices=["top1"],
                   help="top1: the simplified model has the original's top-1 class everywhere on the region "
                        "(needs a region where that class is the same everywhere, proved)")
    t.add_argument("--tolerance-boxes", type=positive_count, default=32, metavar="N",
                   help="boxes of the region the proved stage's bounds are computed on (more: tighter bounds, "
                        "slower; default 32; one box when more than 12 inputs vary)")
    t.add_argument("--selection-time-limit", type=positive_seconds, default=300.0, metavar="S",
                   help="seconds for choosing the replacements (default 300)")
    _add_distributed(s)

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
    q.add_argument("--backend", default="highs", help="MILP solver backend: highs (default), gurobi, cbc")
    q.add_argument("--time-limit", type=positive_seconds, default=300.0, metavar="S",
                   help="seconds for the whole check (default 300); when spent the verdict is 'unknown'")
    q.add_argument("--query-time-limit", type=positive_seconds, default=60.0, metavar="S",
                   help="seconds per MILP query; a piece whose query runs out is bisected and retried (default 60)")
    q.add_argument("--max-boxes", type=count, default=200000, metavar="N",
                   help="input splitting budget in boxes, used when at most 12 inputs vary (default 200000)")
    q.add_argument("--split-choice", choices=["auto", "guess", "lookahead"], default="auto",
                   help="how input splitting picks the input to bisect: 'guess' from the worst bound's input "
                        "coefficients (cheap), 'lookahead' by bounding both halves of every varying input after "
                        "the first 400 boxes (6x the bounds per split, far fewer splits where both networks' "
                        "relaxations are loose), 'auto' (default): lookahead for two networks of one shape "
                        "(a float16 or pruned copy), guess otherwise")
    q.add_argument("--max-pieces", type=positive_count, default=16, metavar="N",
                   help="most pieces sent to the MILP (after splitting or bisecting on timeouts; default 16)")
    q.add_argument("--no-bab", dest="bab", action="store_false",
                   help="top-1 on a region too wide to split: decide each class margin by MILP only, without "
                        "first trying branch and bound on ReLU phases (alpha-beta-CROWN bounds, numpy; by "
                        "default it gets half of each query's time limit and decides most margins alone)")
    q.add_argument("--samples", type=count, default=10000, help="random points for falsification (default 10000)")
    q.add_argument("--seed", type=count, default=0, help="random seed (default 0)")
    q.add_argument("--report", metavar="FILE.json", help="write the JSON report here")
    q.add_argument("--json", action="store_true", help="print the JSON report on stdout instead of the summary")
    q.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_distributed(q)

    b = sub.add_parser("bounds", help="sound lower/upper bounds of every neuron on a region",
                       description="Per-layer pre-activation bounds by interval arithmetic, DeepPoly back-substitution, "
                                   "LP tightening (triangle relaxation) or MILP phase proofs.  --method milp decides "
                                   "phases (exactly, within its time limits), but its intervals are "
                                   "those of the stages it ran (input splitting, branch and bound): on some neurons "
                                   "they can be wider than --method lp's; use lp for the tightest intervals.",
                       epilog="example:\n  equiv bounds model.onnx --spec prop.vnnlib --method deeppoly --json\n\n" + exit_codes("bounds"),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    b.add_argument("model")
    _add_region(b)
    _add_solver(b, default_method="deeppoly")
    b.add_argument("--json", action="store_true", help="print all bounds as JSON")
    b.add_argument("--no-progress", action="store_true", help="no progress bars (--method lp|milp)")

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
    c.add_argument("--max-slices", "--max-pieces", type=positive_count, default=None, metavar="N",
                   help="most pieces to make (default 64 on chains of dense layers, 4 on graphs)")
    c.add_argument("--target-relus", type=count, default=0, metavar="K",
                   help="stop splitting a piece once it has at most K ReLUs (default 0: split until --max-slices)")
    c.add_argument("--strategy", choices=["unstable", "width", "gradient"], default=None,
                   help="unstable (default on chains): bisect the piece with the most ReLUs along the dimension whose "
                        "halves have the fewest unstable ReLUs by DeepPoly; gradient (default on graphs): along the "
                        "input with the largest width x output gradient at the piece's centre; width: along its "
                        "widest dimension")
    _add_solver(c, default_method=None, samples_default=None,
                samples_help="random points: making, to witness unstable neurons on each piece (default 2000); "
                             "--verify, on the whole region for the dispatcher (default 100000, 5000 on graphs)")
    c.add_argument("--validation-samples", type=positive_count, default=10000, metavar="N",
                   help="random points per slice for its validation (default 10000)")
    c.add_argument("--dispatch-samples", type=positive_count, default=None, metavar="N",
                   help="random points of the region for the dispatcher's validation (default 100000; 5000 on graphs)")
    c.add_argument("--tolerance", type=positive_number, default=None,
                   help="largest accepted output difference (default 1e-4; with --verify: the family's own, from "
                        "its manifest, unless this or --epsilon is given)")
    c.add_argument("--epsilon", type=positive_number, default=None, metavar="E",
                   help="simplify each slice further, up to a proved |original - slice| <= E on its box (chains of "
                        "dense layers; see simplify --epsilon); every slice is certified by `check`, and the family "
                        "is validated and verified with this tolerance")
    c.add_argument("--json", action="store_true", help="print the summary (or the --verify report) as JSON")
    c.add_argument("--no-progress", action="store_true", help="no progress bar")
    c.add_argument("--force", action="store_true",
                   help="replace a folder that already holds a family made by equiv (and nothing else): the new family "
                        "replaces the old one whole, so slice files it does not have are gone")
    c.add_argument("--certify", action="store_true",
                   help="prove every slice equal to the original on its box with `equiv check` (epsilon = "
                        "--tolerance): before writing (verdicts go in the manifest), or with --verify, from the files")
    c.add_argument("--certify-time-limit", type=positive_seconds, default=60.0, metavar="S",
                   help="seconds per slice for --certify (default 60)")
    _add_distributed(c, journal=False)
    c.add_argument("--verify", metavar="FAMILY", help="re-check a written family instead of making one")
    c.add_argument("--model", dest="original", metavar="ORIGINAL.onnx",
                   help="with --verify: the original model (default: the path recorded in the manifest)")

    _add_compress(sub)

    n = sub.add_parser("bench", help="run a benchmark suite and write results/*.md and *.json",
                       description="Run `equiv simplify` over a named suite of real networks and record stable counts, "
                                   "sizes and times, with the machine they ran on.",
                       epilog=exit_codes("bench"), formatter_class=argparse.RawDescriptionHelpFormatter)
    n.add_argument("--suite", default="core", help="suite name: core (all ACAS Xu on prop_3/prop_4 + MNIST), "
                   "quick (ACAS Xu 1_1 prop_3 and MNIST 256x2 prop_0), solvers (the same LP/MILP queries on "
                   "every backend), admm (ADMM's certified LP bounds, batched, against HiGHS one by one), tolerance (simplify --epsilon / --preserve top1 against the exact mode on ACAS Xu and MNIST), slicing (ACAS Xu families of <= 64 slices, made and verified), equivalence (`equiv check` "
                   "on float16 ACAS Xu copies, pruned MNIST and the core suite's simplified models), graphs (the CIFAR conv and "
                   "residual nets: DeepPoly on the DAG against CROWN's counts, and simplify), scale (DeepPoly with "
                   "and without block summaries on mnist 256x6, ResNet-2B and deep random chains; the deep MNIST "
                   "chains' solver stages; ResNet-2B's whole simplify on each shared spec)")
    n.add_argument("--case-time-limit", type=positive_seconds, default=None, metavar="S",
                   help="equivalence suite: seconds per pair (default 300)")
    n.add_argument("--benchmarks", default=None, help="folder with acasxu/ and mnist_fc/ (default: ../shared/benchmarks)")
    n.add_argument("--out", default="results", help="folder for the results (default: results)")
    n.add_argument("--time-limit", type=positive_seconds, default=None, metavar="S",
                   help="core, quick, slicing, solvers: seconds per solver query (default 10)")
    n.add_argument("--milp-budget", type=positive_seconds, default=None, metavar="S",
                   help="core, quick, slicing: total MILP seconds per case (default 60)")
    n.add_argument("--limit", type=positive_count, default=None, metavar="N",
                   help="core, quick, slicing, equivalence, tolerance, graphs: run only the first N cases (a smoke "
                        "run). A suite refuses an option it does not use")
    n.add_argument("--group", default=None, metavar="NAME", help="equivalence suite: run only the pairs of this group "
                   "(e.g. 'ACAS Xu float16, prop_1'); tolerance suite: the parts to run, comma-separated, of "
                   "sweep, acas, mnist, graphs (default: all; the others are kept from the last run)")
    _add_distributed(n, journal=False)
    n.add_argument("--backends", default=None, help="solvers suite: comma-separated backends (default: all installed)")
    n.add_argument("--plot", default=None, metavar="FILE.png", help="solvers suite: box plot of solve times")
    for sp in sub.choices.values():
        sp.add_argument("--debug", action="store_true", help="on an internal error, print the traceback")
    return p


def _add_compress(sub) -> None:
    z = sub.add_parser(
        "compress", help="compress a model and return only what is proved equivalent on the region",
        description="Propose smaller models and prove each equivalent to the original on the region with `equiv check` "
                    "(only 'equivalent' counts; unknown never does); write the smallest proved one. Candidates, "
                    "cheapest first: equiv's exact simplification (stable neurons removed), neuron pruning (lowest "
                    "mean|activation| x outgoing weight; later layers refitted by least squares on region points "
                    "and counterexamples) then exact simplification again, ALDS-style low rank (per-layer ranks minimising the largest relative error for a budget, "
                    "each layer as two Gemms, whole where factoring does not pay; 'lowrank' weights the SVD by the "
                    "layer's inputs on the region, 'lowrank-svd' is plain ALDS), an affine fit (no hidden layer: a ReLU "
                    "net is often nearly affine on a small region), weight pruning, and float16/int8 "
                    "rounding of the best model. Each level is bisected; every candidate is written and that file is "
                    "checked, so the returned file is the one that was proved. Conv and residual graphs take the makers "
                    "listed under --makers.",
        epilog="examples:\n  equiv compress model.onnx --spec prop.vnnlib --epsilon 0.05 -o small.onnx --report r.json "
               "--plot pareto.png\n  equiv compress model.onnx --spec prop.vnnlib --preserve top1 --target-params 0.3 "
               "-o small.onnx\n\nsizes: params = stored weights and biases of the written model (a factored layer "
               "counts r(m+n)); nonzero counts non-zeros (weight pruning lowers only that); the original is counted "
               "the same way after equiv's import.\n\n" + exit_codes("compress"),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    z.add_argument("model", help="input ONNX model (never overwritten)")
    _add_region(z)
    z.add_argument("-o", "--output", help="where to write the compressed model (default: MODEL.compressed.onnx)")
    z.add_argument("--preserve", choices=["linf", "top1"], default="linf",
                   help="what must be proved: every output within --epsilon of the original (linf, default) or the "
                        "same top-1 class (top1)")
    z.add_argument("--epsilon", type=positive_number, default=None, metavar="E",
                   help="linf: largest allowed |original - compressed| on every output")
    z.add_argument("--target-params", type=positive_number, default=None, metavar="F",
                   help="stop once a proved model has at most F times the original's size (F <= 1) or F units "
                        "(F > 1) of --metric; default: as small as the search can prove")
    z.add_argument("--metric", choices=["params", "nonzero", "macs", "file_bytes"], default="params",
                   help="what 'smaller' means (default params: stored weights and biases)")
    z.add_argument("--makers", default="neurons,neurons,lowrank,affine,float16,int8", metavar="LIST",
                   help="candidate makers after the exact simplification, in order (each builds on the best proved "
                        "so far): affine, neurons, lowrank, lowrank-svd, weights, float16, int8 "
                        "(default neurons,neurons,lowrank,affine,float16,int8; a maker may repeat). On conv/residual "
                        "graphs each asked maker runs once, in the order lowrank, neurons (whole channels), weights, "
                        "float16, int8; affine and lowrank-svd are for dense chains")
    z.add_argument("--time-limit", type=positive_seconds, default=600.0, metavar="S",
                   help="seconds for the whole run (default 600); the search stops 5 %% (at most 20 s) early to "
                        "leave time for the final re-check and the report")
    z.add_argument("--check-time-limit", type=positive_seconds, default=60.0, metavar="S",
                   help="seconds per candidate check; a check that runs out is 'unknown', a failure (default 60)")
    z.add_argument("--simplify-budget", type=positive_seconds, default=60.0, metavar="S",
                   help="MILP seconds for the exact simplification (default 60)")
    z.add_argument("--no-simplify", action="store_true",
                   help="do not start from equiv's exact simplification: the makers work on the original (e.g. "
                        "when the check cannot prove the simplified model in time, while a same-shape candidate such "
                        "as a weight-pruned copy is checked fast)")
    z.add_argument("--bisect-steps", type=positive_count, default=5, metavar="N",
                   help="bisection steps per maker on the fraction of weights kept (default 5)")
    z.add_argument("--backend", default="highs", help="MILP backend for the checks (default highs)")
    z.add_argument("--seed", type=count, default=0, help="random seed (default 0)")
    z.add_argument("--report", metavar="FILE.json", help="write the JSON report (every candidate) here")
    z.add_argument("--plot", metavar="FILE.png", help="write the Pareto plot (size against proven bound) here")
    z.add_argument("--json", action="store_true", help="print the JSON report on stdout instead of the summary")
    z.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_distributed(z, journal=False)


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
    # Python prints and drops an exception raised inside a finaliser (__del__), and the run would go on to write
    # its output: there, have the signal sent again 10 ms later (from a timer thread: sent from here, it would
    # be handled at once, inside this handler, recursively), by when the finaliser has returned
    while frame is not None:
        if frame.f_code.co_name == "__del__":
            again = threading.Timer(0.01, os.kill, (os.getpid(), signum))
            again.daemon = True
            again.start()
            return
        frame = frame.f_back
    raise _Terminated()


def _lost_cluster(exc: BaseException) -> bool:
    """An OSError (a closed or timed-out connection) raised inside dask.distributed: the scheduler or the network
    went away, which is the environment's failure, not a bug of equiv."""
    if not isinstance(exc, OSError):
        return False
    sep = os.sep
    return any(f"{sep}distributed{sep}" in f.filename for f in traceback.extract_tb(exc.__traceback__))


def main(argv=None) -> int:
    argv = join_signed_values(list(sys.argv[1:] if argv is None else argv))
    args = build_parser().parse_args(argv)          # bad arguments: argparse prints usage, exit 2
    _resolve_backend(args)
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:                               # not the main thread: leave signals alone
        previous = None
    try:
        if getattr(args, "scheduler", None) is not None and not args.scheduler.strip():   # (ran in-process, silently)
            raise EquivError("--scheduler needs an address, e.g. tcp://HOST:8786")
        with ResultStream() as out:
            from .commands import COMMANDS
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
        if _lost_cluster(exc):
            print(f"equiv: error: lost the Dask cluster mid-run ({type(exc).__name__}: {str(exc)[:200]}); no model was "
                  "written (with --journal FILE a rerun keeps the answers already found)", file=sys.stderr)
            return 2
        where = traceback.extract_tb(exc.__traceback__)[-1]
        print(f"equiv: internal error: {type(exc).__name__}: {exc} (at {Path(where.filename).name}:{where.lineno}; "
              "run with --debug for the traceback, and please report it)", file=sys.stderr)
        return 4
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
