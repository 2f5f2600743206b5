"""The search: exact simplification first, then makers from cheap to aggressive, each level bisected, every
candidate written to a file and certified against the original with `equiv check`.  Only an
`equivalent` verdict is accepted; unknown counts as a failure."""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...artifacts.validate import OnnxRunner
from ...errors import ValidationError
from ...ir.chain_io import load_onnx
from ...ir.chain_export import network_to_onnx
from ...spec.region import Box
from .candidate import Candidate, Size, size_of
from .makers import LEVEL_MAKERS, affine, exact_simplified, rounded

METRICS = ("params", "nonzero", "macs", "file_bytes")


@dataclass
class Target:
    """What `equivalent` means (linf within epsilon, or the same top-1 class) and how small to go:
    `size` is a fraction of the original's metric (<= 1) or an absolute count; None: as small as proved."""

    norm: str = "linf"
    epsilon: float | None = None
    size: float | None = None
    metric: str = "params"


@dataclass
class CompressOptions:
    time_limit: float = 600.0          # seconds for the whole run (the search gets `search_seconds` of it)
    check_time_limit: float = 60.0     # seconds per candidate check
    simplify_budget: float = 60.0      # MILP seconds for the exact simplification
    simplify: bool = True              # start from the exact simplification (off: the makers start from the original)
    tolerance: bool = True             # then simplification up to the target (apps/tolerance), if it is certified
    makers: tuple = ("neurons", "neurons", "lowrank", "affine", "float16", "int8")
    bisect_steps: int = 5
    refits: int = 2                    # remakes of a level after a counterexample (the check finds them fast)
    cex_weight: int = 20               # weight of each counterexample among the fit points
    samples: int = 2000                # region points for pruning scores
    seed: int = 0
    backend: str = "highs"
    progress: bool = False
    workers: int | None = None         # check a bisection step's candidates side by side on a local Dask cluster
    scheduler: str | None = None       # ... or on this existing one

    @property
    def search_seconds(self) -> float:
        """The search's own share of `time_limit`: the rest (5 %, at most 20 s) is left for loading, the final
        onnxruntime re-check and the report, so that the whole run stays within the limit."""
        return self.time_limit - min(20.0, 0.05 * self.time_limit)


@dataclass
class Record:
    """One certified (or not) candidate, as the report shows it."""

    name: str
    maker: str
    level: float | None
    parent: str | None
    size: Size
    verdict: str
    proven_bound: float | None
    seen_diff: float | None
    seconds: float
    note: str = ""

    def to_json(self) -> dict:
        return {"name": self.name, "maker": self.maker, "level": self.level, "parent": self.parent,
                **self.size.to_json(), "verdict": self.verdict, "proven_bound": self.proven_bound,
                "seen_diff": self.seen_diff, "seconds": round(self.seconds, 3), "note": self.note}


@dataclass
class CompressResult:
    original: Size
    target: Target
    records: list = field(default_factory=list)
    best: Record | None = None
    best_model: bytes | None = None
    best_file: Path | None = None      # the certified file (in the work folder) until the caller moves it
    validation: dict | None = None
    seconds: float = 0.0
    notes: list = field(default_factory=list)

    def metric(self, size: Size) -> int:
        return getattr(size, self.target.metric)


@dataclass
class CheckAnswer:
    """What one candidate's check says (picklable: it comes back from a worker)."""

    verdict: str
    upper: float
    seen: float | None
    counterexample: np.ndarray | None
    error: str | None
    seconds: float
    notes: list = field(default_factory=list)


def check_file(cand_path: str, model_path: str, box: Box, opt) -> CheckAnswer:
    """`equiv check` of one candidate file against the original (runs on a worker in parallel mode); a candidate
    equiv cannot check is a failed candidate, said so."""
    from ...prove.equivalence import check_models
    t = time.perf_counter()
    try:
        res = check_models(model_path, cand_path, box, opt)
    except Exception as exc:
        return CheckAnswer("error", float("inf"), None, None, f"check failed: {exc}", time.perf_counter() - t)
    cex = None if res.counterexample is None else np.asarray(res.counterexample.input, float)
    return CheckAnswer(res.verdict, res.max_diff_upper, res.max_diff_lower, cex, None, time.perf_counter() - t)


class Search:
    """State of one compress run: the original, the region, the work folder of candidate files."""

    def __init__(self, model_path, box: Box, target: Target, options: CompressOptions, workdir: Path):
        self.path, self.box, self.target, self.opt, self.workdir = str(model_path), box, target, options, workdir
        self.t0 = time.perf_counter()
        self.net = load_onnx(self.path)
        box.check_dim(self.net.n_inputs)
        self.original = size_of(network_to_onnx(self.net))
        self.result = CompressResult(self.original, target)
        rng = np.random.default_rng(options.seed)
        # region points the makers fit to: uniform samples, vertices, and every counterexample a check returns
        self.points = np.vstack([box.sample(options.samples, rng), box.vertices(256, rng), box.center[None]])
        self.files = {}
        self.bar = None
        self.last_counterexample = None
        self.best_candidate = None
        self.counterexamples = []
        self.seen = set()
        self.stab = None                 # the exact simplification's proofs, reused by the tolerance stage
        self.executor = None             # with workers: the candidates of a bisection step are checked side by side

    # ---- budget and goal ------------------------------------------------------------------------
    def remaining(self) -> float:
        return self.opt.search_seconds - (time.perf_counter() - self.t0)

    def goal(self) -> float | None:
        s = self.target.size
        if s is None:
            return None
        return s * self.result.metric(self.original) if s <= 1 else s

    def done(self) -> bool:
        b, g = self.result.best, self.goal()
        return self.remaining() <= 1.0 or (g is not None and b is not None and self.result.metric(b.size) <= g)

    # ---- one candidate --------------------------------------------------------------------------
    def certify(self, cand: Candidate, limit: float | None = None) -> bool:
        """Write the candidate, check the file against the original, record it; True when proved."""
        return self.certify_all([cand], limit)[0]

    def certify_all(self, cands: list, limit: float | None = None) -> list:
        """`certify` for several candidates, their checks run side by side on the executor's workers (each
        check refers to its file by path); records are kept in the candidates' order.  A file already checked
        (a refit that changed nothing) gets no new check and counts as not proved."""
        from ...distributed.runner import map_tasks
        from ...prove.equivalence import CheckOptions
        jobs, out = [], [False] * len(cands)
        for i, cand in enumerate(cands):
            model = cand.to_onnx()
            data = model.SerializeToString()
            key = hashlib.sha256(data).hexdigest()
            if key in self.seen:
                continue
            self.seen.add(key)
            f = self.workdir / f"cand_{len(self.result.records) + len(jobs):03d}.onnx"
            f.write_bytes(data)
            jobs.append((i, cand, model, f))
        self.last_counterexample = None
        if not jobs:
            return out
        limit = max(1.0, min(limit or self.opt.check_time_limit, self.remaining()))
        opt = CheckOptions(norm=self.target.norm, epsilon=self.target.epsilon, backend=self.opt.backend,
                           time_limit=limit, query_time_limit=min(limit, 30.0), seed=self.opt.seed, samples=2000)
        if self.executor is not None and len(jobs) > 1:
            answers = map_tasks(self.executor, check_file, [str(f) for *_, f in jobs], self.path, self.box, opt)
        else:
            answers = [check_file(str(f), self.path, self.box, opt) for *_, f in jobs]
        for (i, cand, model, f), ans in zip(jobs, answers):
            if isinstance(ans, tuple) and ans and ans[0] == "failed":       # the task itself failed (a worker died)
                ans = CheckAnswer("error", float("inf"), None, None, f"check failed: {ans[1]}", 0.0)
            out[i] = self.record(cand, model, f, ans)
        return out

    def record(self, cand: Candidate, model, f: Path, ans: "CheckAnswer") -> bool:
        """Keep one check's answer: the report's record, the counterexample, the best file."""
        size = size_of(model)
        self.last_counterexample = ans.counterexample
        if ans.counterexample is not None:
            self.counterexamples.append(ans.counterexample.reshape(-1))
        note = cand.note if ans.error is None else f"{cand.note}; {ans.error}".strip("; ")
        rec = Record(cand.name, cand.maker, cand.level, cand.parent, size, ans.verdict,
                     float(ans.upper) if np.isfinite(ans.upper) else None, ans.seen, ans.seconds, note)
        self.result.records.append(rec)
        if self.bar is not None:
            self.bar.set_postfix_str(f"{cand.name}: {ans.verdict}")
            self.bar.update(1)
        ok = ans.verdict == "equivalent"
        if ok:
            self.files[cand.name] = f
            best = self.result.best
            smaller = self.result.metric(size) < self.result.metric(self.original)    # never hand back the original
            if smaller and (best is None or self.result.metric(size) < self.result.metric(best.size)):
                self.result.best, self.result.best_file = rec, f
                self.best_candidate = cand
                self.result.best_model = model.SerializeToString()
        else:
            f.unlink()
        return ok

    # ---- the stages -----------------------------------------------------------------------------
    def simplified(self) -> Candidate:
        """Equiv's exact simplification on the region (the cheapest big win); the original if it fails."""
        from ...prove.stability import StabilityOptions
        from ..simplify import simplify_network
        opt = StabilityOptions(milp_budget=min(self.opt.simplify_budget, max(1.0, self.remaining() / 4)),
                               time_limit=5.0, seed=self.opt.seed, backend=self.opt.backend)
        t = time.perf_counter()
        try:
            stab, small, _, _ = simplify_network(self.net, OnnxRunner(self.path), self.box, opt, validation_samples=2000)
            self.stab = stab
        except ValidationError as exc:
            self.result.notes.append(f"exact simplification skipped: {exc}")
            return exact_simplified("original", self.net)
        self.result.notes.append(f"exact simplification: {self.net.n_relus} -> {small.n_relus} ReLUs, "
                                 f"{stab.count('unknown')} neurons unknown, {time.perf_counter() - t:.1f} s")
        from ..simplify import sha256_of
        return exact_simplified("simplified", small, (sha256_of(self.path), *stab.phase_masks(self.net)))

    def within_tolerance(self, base: Candidate) -> Candidate | None:
        """Simplification up to the target itself (neurons replaced under a sound bound, certified there),
        then certified again here like every candidate; None when it gives nothing proved.  Its selection and
        certificates get half of the time left (the re-check here and the makers the rest): with only the
        per-certificate limit, its up to 6 certificates ran 54-58 s of a 30 s --time-limit."""
        from ..tolerance.pipeline import ToleranceOptions, simplify_within
        if self.stab is None or self.remaining() < 10:
            return None
        top1 = self.target.norm == "top1"
        opt = ToleranceOptions(epsilon=None if top1 else self.target.epsilon, preserve="top1" if top1 else None,
                               certify_time_limit=self.opt.check_time_limit, seed=self.opt.seed,
                               selection_time_limit=max(5.0, min(120.0, self.remaining() / 4)),
                               time_limit=self.remaining() / 2, validation_samples=2000)
        t = time.perf_counter()
        try:
            res = simplify_within(self.net, OnnxRunner(self.path), self.box, opt, stab=self.stab)
        except ValidationError as exc:
            self.result.notes.append(f"tolerance simplification skipped: {exc}")
            return None
        self.result.notes.append(f"tolerance simplification: {res.exact.n_relus} -> {res.simplified.n_relus} ReLUs, "
                                 f"{len(res.kept)} neurons replaced, {time.perf_counter() - t:.1f} s")
        if not res.kept:
            return None
        cand = Candidate("tolerance", "tolerance", None, res.simplified, [None] * res.simplified.depth,
                         parent=base.name, note=f"{len(res.kept)} neurons replaced by constants or affine maps")
        return cand if self.certify(cand) else None

    def resimplify(self, cand: Candidate) -> Candidate:
        """Exact simplification of a pruned candidate (its own stable neurons go too); same function."""
        from ...prove.stability import StabilityOptions
        from ...prove.stability import prove_stability
        from ...transform.reduce import reduce_network
        opt = StabilityOptions(method="lp", time_limit=2.0, seed=self.opt.seed, backend=self.opt.backend)
        stab = prove_stability(cand.net, self.box, opt)
        small = reduce_network(cand.net, *stab.phase_masks(cand.net))
        return Candidate(cand.name + "+simplified", "simplify", None, small, [None] * small.depth, cand.weights,
                         cand.name, note=f"hidden widths {small.hidden_widths}")

    def fit_points(self) -> np.ndarray:
        """Region points for the makers: samples, vertices, centre, and every counterexample so far, each
        repeated `cex_weight` times (a least-squares refit then weighs the places where a check failed)."""
        if not self.counterexamples:
            return self.points
        cex = np.repeat(np.vstack(self.counterexamples), self.opt.cex_weight, axis=0)
        return np.vstack([self.points, cex])

    def affine_rounds(self, base: Candidate, rounds: int = 2) -> None:
        """The affine fit, refitted with each counterexample the check finds (a few rounds)."""
        for _ in range(rounds):
            if self.done():
                return
            cand = affine(base, self.fit_points())
            best = self.result.best
            if best is not None and self.result.metric(size_of(cand.to_onnx())) >= self.result.metric(best.size):
                self.result.notes.append(f"affine: skipped, {self.target.metric} no smaller than the best proved")
                return
            if self.certify(cand) or self.last_counterexample is None:
                return

    def bisect(self, base: Candidate, maker: str) -> Candidate:
        """Smallest level of `maker` on `base` that is proved, by bisection on the kept fraction; the base when
        none is.  With a size goal, the level that meets it is tried first."""
        make = LEVEL_MAKERS[maker]
        if self.executor is not None and self.executor.workers > 1:
            return self.search_levels(base, maker, make)
        ok, bad, best = 1.0, 0.0, base
        goal = self.goal()
        first = goal_level(goal, self.result.metric(size_of(base.to_onnx())))
        for step in range(self.opt.bisect_steps + (first is not None)):
            if self.done():
                break
            level = first if (step == 0 and first is not None) else (ok + bad) / 2
            if level >= 0.999:
                break
            proved, larger = False, False
            for attempt in range(1 + self.opt.refits):
                cand = make(base, level, self.fit_points(), **({"reference": self.net} if maker == "neurons" else {}))
                best_size = None if self.result.best is None else self.result.metric(self.result.best.size)
                if best_size is not None and self.result.metric(size_of(cand.to_onnx())) >= best_size:
                    larger = True    # no smaller than what is proved already: only smaller levels can help
                    break
                proved = self.certify(cand)
                if proved or self.last_counterexample is None or self.done():
                    break            # refit with the new counterexample only when the check found one (cheap)
            if proved:
                ok, best = level, cand
                if goal is not None and step == 0:
                    break
            elif larger:
                ok = level           # go lower without a check
            else:
                bad = level
            if ok - bad < 0.02:
                break
        return best

    def search_levels(self, base: Candidate, maker: str, make) -> Candidate:
        """The parallel bisection: each step checks one level per worker, evenly spaced between the highest level
        that failed and the lowest proved, so the interval shrinks (workers + 1) times per step, and there are as
        many steps as give the serial search's resolution.  No refits (a counterexample still joins the fit
        points of the next step's candidates)."""
        kw = {"reference": self.net} if maker == "neurons" else {}
        ok, bad, best = 1.0, 0.0, base
        goal = self.goal()
        k = self.executor.workers
        first = goal_level(goal, self.result.metric(size_of(base.to_onnx())))
        for step in range(parallel_steps(self.opt.bisect_steps, k)):
            if self.done():
                break
            levels = [lv for lv in next_levels(bad, ok, k, first if step == 0 else None) if lv < 0.999]
            if not levels:
                break
            cands = [make(base, lv, self.fit_points(), **kw) for lv in levels]
            best_size = None if self.result.best is None else self.result.metric(self.result.best.size)
            larger = [best_size is not None and self.result.metric(size_of(c.to_onnx())) >= best_size for c in cands]
            todo = [(lv, c) for lv, c, big in zip(levels, cands, larger) if not big]
            proved = self.certify_all([c for _, c in todo])
            for lv, big in zip(levels, larger):
                if big:
                    ok = min(ok, lv)            # no smaller than what is proved: only lower levels can help
            for (lv, c), p in zip(todo, proved):
                if p and lv < ok:
                    ok, best = lv, c
            failed = [lv for (lv, _), p in zip(todo, proved) if not p and lv < ok]
            bad = max([bad] + failed)
            if ok - bad < 0.02 or (goal is not None and best is not base and
                                    self.result.metric(size_of(best.to_onnx())) <= goal):
                break
        return best

    def run(self) -> CompressResult:
        base = self.simplified() if self.opt.simplify else exact_simplified("original", self.net)
        # the exact simplification is worth a longer check: everything else builds on it
        proved = self.certify(base, limit=self.opt.check_time_limit * 3) if base.name == "simplified" else False
        if not proved:
            base = exact_simplified("original", self.net)     # the makers then start from the original itself
        elif self.opt.tolerance and not self.done():
            base = self.within_tolerance(base) or base
        for maker in self.opt.makers:
            if self.done():
                break
            if maker == "neurons" and not sum(int(np.size(m)) for m in base.net.masks):
                self.result.notes.append("neurons: skipped, the model has no hidden neuron left to prune")
                continue
            if maker in LEVEL_MAKERS:
                nxt = self.bisect(base, maker)
                if nxt is not base and maker == "neurons" and not self.done():
                    again = self.resimplify(nxt)
                    if again.net.n_params < nxt.net.n_params and self.certify(again):
                        nxt = again
                base = nxt
            elif maker == "affine":
                self.affine_rounds(base)
            elif maker in ("float16", "int8"):
                # rounding keeps the stored size: tried on the best model found, for the report and the file size
                top = self.best_candidate or base
                if self.remaining() > 1.0 and top.weights == "float32":
                    self.certify(rounded(top, maker))
        self.result.seconds = time.perf_counter() - self.t0
        return self.result


def parallel_steps(bisect_steps: int, k: int) -> int:
    """Steps of a (k+1)-ary search that narrow the level as far as `bisect_steps` halvings do."""
    return max(1, math.ceil(bisect_steps * math.log(2) / math.log(k + 1) - 1e-9))


def next_levels(bad: float, ok: float, k: int, first: float | None = None) -> list:
    """k levels evenly spaced strictly between bad and ok (with a size goal's level `first` among them)."""
    levels = [bad + (ok - bad) * (i + 1) / (k + 1) for i in range(k)]
    if first is not None and bad < first < ok:
        levels[min(range(k), key=lambda i: abs(levels[i] - first))] = first
    return sorted(levels)


def goal_level(goal: float | None, base_metric: int) -> float | None:
    """The kept fraction of the base's size (`base_metric`) that would meet the size goal; None when there is
    no goal or the base meets it already (then any smaller proved model does: the plain bisection runs)."""
    if goal is None or goal >= base_metric:
        return None
    return min(0.999, max(0.01, goal / max(1, base_metric)))


def compress(model_path, box: Box, target: Target, options: CompressOptions | None = None,
             workdir: str | Path | None = None) -> CompressResult:
    """Search for the smallest model proved equivalent to `model_path` on `box` (see the module doc).

    Candidate files go to a fresh folder inside `workdir` (default: the system's temporary folder); the
    folder is removed afterwards, except the certified best file, which the caller moves into place (its
    path is `result.best_file`) -- so the file that was checked is the file that is delivered.
    """
    options = options or CompressOptions()
    work = Path(tempfile.mkdtemp(prefix=".equiv-compress.", dir=None if workdir is None else str(workdir)))
    try:
        res = run_search(Search(model_path, box, target, options, work), options)
        if res.best_file is not None:
            keep = work.parent / f".{work.name}.best.onnx"
            os.replace(res.best_file, keep)
            res.best_file = keep
            try:
                res.validation = validate_best(model_path, res.best_model, box, target, options.seed)
            except BaseException:
                keep.unlink()              # a failed re-check leaves nothing behind
                raise
        return res
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_search(s, options: CompressOptions) -> CompressResult:
    """s.run() (a chain or a graph search) with its progress bar and, for --workers / --scheduler, its executor."""
    if options.progress:
        from tqdm import tqdm
        s.bar = tqdm(desc="compress: candidates certified", unit="cand", leave=False)
    if options.workers or options.scheduler:
        from ...distributed import make_executor
        s.executor = make_executor(options.workers, options.scheduler)
    try:
        return s.run()
    finally:
        if s.bar is not None:
            s.bar.close()
        if s.executor is not None:
            s.executor.close()


def validate_best(model_path, model_bytes: bytes, box: Box, target: Target, seed: int, n: int = 10000) -> dict:
    """Sampled re-check in onnxruntime of the certified model: outputs within epsilon (linf) or the same
    argmax (top1) on random points, vertices and the centre; a failure would be a bug in equiv."""
    import onnx
    from ...artifacts.validate import validation_points
    a, b = OnnxRunner(str(model_path)), OnnxRunner(onnx.ModelProto.FromString(model_bytes))
    pts = np.vstack(list(validation_points(box, n, np.random.default_rng(seed + 7)).values()))
    ya, yb = a(pts), b(pts)
    diff = float(np.abs(ya - yb).max())
    if target.norm == "linf":
        ok = diff <= target.epsilon * (1 + 1e-6)
        out = {"points": len(pts), "max_abs_diff": diff, "epsilon": target.epsilon, "ok": ok}
    else:
        srt = np.sort(ya, axis=1)
        # ties in the original are not a top-1 statement (one output: no tie, one class)
        clear = srt[:, -1] - srt[:, -2] > 1e-6 if ya.shape[1] > 1 else np.ones(len(ya), bool)
        agree = np.argmax(ya, axis=1) == np.argmax(yb, axis=1)
        ok = bool(np.all(agree | ~clear))
        out = {"points": len(pts), "max_abs_diff": diff, "argmax_agree": int(agree.sum()), "ok": ok}
    if not ok:
        raise ValidationError(f"BUG: the certified model fails the sampled re-check in onnxruntime ({out}); "
                              "nothing was written. Please report this.")
    return out
