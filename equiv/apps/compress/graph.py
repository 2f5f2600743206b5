"""`compress` on graphs (convolutions, residual blocks): first the exact graph simplification (dead channels
deleted, stable positions masked, folds), certified against the original by its record
(`prove.graph_carried`: phases re-proved, reduction rebuilt, rounding bounded), else by the graph checker;
then the makers in order, each level bisected: ALDS low rank of dense and conv layers (`graph_lowrank`),
whole channels (`neurons` on chains), unstructured weights, float16 / int8 rounding (`graph_makers`).
Every candidate is certified against the original by the graph checker (`prove.graph_check`); one that
keeps the simplification's structure is bounded through it (|A - S| by S's proof, S - B on their difference
graph), which is tight.  The affine maker works on dense chains only."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

from ...artifacts.validate import OnnxRunner
from ...errors import ValidationError
from ...ir import load_graph
from ...ir.graph import Graph
from ...spec.region import Box
from .candidate import Size
from .search import (CheckAnswer, CompressOptions, CompressResult, Record, Target, goal_level, next_levels,
                     parallel_steps, run_search, validate_best)


def graph_size(g: Graph, file_bytes: int) -> Size:
    """Stored weights and biases of the graph's ops, their non-zeros, MACs, and the file's size."""
    nonzero = 0
    for n in g.order:
        op = g.op(n)
        for name in ("W", "bias"):
            a = getattr(op, name, None)
            if isinstance(a, np.ndarray):
                nonzero += int(np.count_nonzero(a))
    return Size(g.n_params, nonzero, g.n_macs, file_bytes)


def graph_answer(g: Graph, reference, cand_path, box: Box, copt, via, chk=None, notes=(), t0=None) -> CheckAnswer:
    """The graph checker's answer for one candidate file against the original `g` (or the answer `chk` the
    caller already has, e.g. from the record)."""
    from ...prove.graph_check import check_graphs
    t = time.perf_counter() if t0 is None else t0
    notes = list(notes)
    try:
        if chk is None:
            chk = check_graphs(g, load_graph(cand_path), [box], reference, OnnxRunner(str(cand_path)), copt, via=via)
        notes += [n for n in chk.notes if n.startswith(("bounded through", "B does not keep"))]
    except Exception as exc:           # a candidate equiv cannot check is a failed candidate, said so
        return CheckAnswer("error", float("inf"), None, None, f"check failed: {exc}", time.perf_counter() - t, notes)
    return CheckAnswer(chk.verdict, chk.max_diff_upper, chk.max_diff_lower, None, None, time.perf_counter() - t, notes)


def check_graph_file(cand_path: str, model_path: str, box: Box, copt, via) -> CheckAnswer:
    """`graph_answer` on a worker: loads the original itself."""
    return graph_answer(load_graph(model_path), OnnxRunner(model_path), cand_path, box, copt, via)


class GraphSearch:
    """State of one graph compress run: the original, the region, the work folder, the best certified file."""

    def __init__(self, path: str, g: Graph, box: Box, target: Target, opt: CompressOptions, work: Path):
        self.path, self.g, self.box, self.target, self.opt, self.work = path, g, box, target, opt, work
        self.t0 = time.perf_counter()
        self.reference = OnnxRunner(path)
        self.res = CompressResult(graph_size(g, Path(path).stat().st_size), target)
        self.best_graph = None
        self.bar = None
        self.executor = None       # with workers: a bisection step's candidates are checked side by side

    def remaining(self) -> float:
        return self.opt.search_seconds - (time.perf_counter() - self.t0)

    def check_options(self, limit: float):
        from ...prove.equivalence import CheckOptions
        return CheckOptions(norm=self.target.norm, epsilon=self.target.epsilon, backend=self.opt.backend,
                            time_limit=max(1.0, min(limit, self.remaining())), seed=self.opt.seed, samples=2000)

    def certify(self, name: str, maker: str, level, parent, model: onnx.ModelProto, note: str,
                carried: bool = False, via: tuple | None = None) -> Graph | None:
        """Write the model, check the file against the original (by its record first when `carried`; through
        `via` = (base, lo, hi) when given, see `check_graphs`), record it; a proved and smaller model becomes
        the best.  Returns the written file's graph when proved, else None."""
        return self.certify_all([(name, maker, level, parent, model, note)], carried, via)[0]

    def certify_all(self, items: list, carried: bool = False, via: tuple | None = None) -> list:
        """`certify` for several (name, maker, level, parent, model, note), their checks side by side on the
        executor's workers when there is one; records in the items' order."""
        from ...distributed.runner import map_tasks
        from ...prove.graph_carried import carried_graph_check
        files = []
        for k, item in enumerate(items):
            f = self.work / f"cand_{len(self.res.records) + k:03d}.onnx"
            f.write_bytes(item[4].SerializeToString())
            files.append(f)
        copt = self.check_options(self.opt.check_time_limit)
        if carried:                        # the simplification: its record first, one file
            t = time.perf_counter()
            try:
                written, run_b = load_graph(files[0]), OnnxRunner(str(files[0]))
                chk, more = carried_graph_check(self.path, files[0], self.g, written, [self.box],
                                                self.check_options(3 * self.opt.check_time_limit), self.reference,
                                                run_b)
            except Exception as exc:
                chk, more = None, [f"record check failed ({exc}): checked from scratch"]
            answers = [graph_answer(self.g, self.reference, files[0], self.box, copt, None, chk, more, t)]
        elif self.executor is not None and len(files) > 1:
            answers = map_tasks(self.executor, check_graph_file, [str(f) for f in files], self.path, self.box, copt,
                                via)
        else:
            answers = [graph_answer(self.g, self.reference, f, self.box, copt, via) for f in files]
        out = []
        for (name, maker, level, parent, model, note), f, ans in zip(items, files, answers):
            if isinstance(ans, tuple) and ans and ans[0] == "failed":       # the task itself failed (a worker died)
                ans = CheckAnswer("error", float("inf"), None, None, f"check failed: {ans[1]}", 0.0)
            out.append(self.record(name, maker, level, parent, model, note, f, ans))
        return out

    def record(self, name, maker, level, parent, model, note, f: Path, ans: CheckAnswer) -> Graph | None:
        """Keep one check's answer: the report's record and the best file; the written graph when proved."""
        written = load_graph(f, check=False)   # for its size and as the next maker's base (the check read it already)
        notes = [note] if note else []
        notes += ans.notes + ([ans.error] if ans.error else [])
        size = graph_size(written, model.ByteSize())          # the file as written and read back
        rec = Record(name, maker, level, parent, size, ans.verdict,
                     float(ans.upper) if np.isfinite(ans.upper) else None, ans.seen, ans.seconds, "; ".join(notes))
        self.res.records.append(rec)
        if self.bar is not None:
            self.bar.set_postfix_str(f"{name}: {ans.verdict}")
            self.bar.update(1)
        best = self.res.best
        m = self.res.metric(size)
        if ans.verdict == "equivalent" and m < self.res.metric(self.res.original) and \
                (best is None or m < self.res.metric(best.size)):
            keep = self.work.parent / f".{self.work.name}.best.onnx"
            os.replace(f, keep)
            self.res.best, self.res.best_file, self.res.best_model = rec, keep, model.SerializeToString()
            self.best_graph = written
        else:
            f.unlink()
        return written if ans.verdict == "equivalent" else None

    def simplified(self) -> tuple[Graph, str, tuple | None] | None:
        """The exact simplification, certified by its record: (the written graph, its name, `via` for candidates
        made from it: the graph with |original - it| <= its proven bound) when proved, else None."""
        from ..graph_simplify import simplify_graph
        from ..simplify import sha256_of
        from ...prove.graph_carried import attach_graph_claims
        opt = self.opt
        t = time.perf_counter()
        try:
            sim = simplify_graph(self.g, self.reference, self.box, method="milp",
                                 budget=min(opt.simplify_budget, max(1.0, self.remaining() / 4)), seed=opt.seed,
                                 validation_samples=2000, progress=False, backend=opt.backend)
        except ValidationError as exc:
            self.res.notes.append(f"exact simplification skipped: {exc}")
            return None
        c = sim.phases.counts()
        self.res.notes.append(f"exact simplification: {self.g.n_relus} -> {sim.simplified.n_relus} ReLUs, "
                              f"{c['unknown']} positions unknown, {time.perf_counter() - t:.1f} s")
        model = attach_graph_claims(sim.onnx_model, sha256_of(self.path), sim.phases.method, sim.phases.dead,
                                    sim.phases.active, self.box)
        written = self.certify("simplified", "simplify", None, None, model, "", carried=True)
        if written is None:
            return None
        if self.res.best is None or self.res.best.name != "simplified":
            self.res.notes.append("the proved simplification is not smaller by the chosen metric")
        b = self.res.records[-1].proven_bound
        via = None if b is None else (written, np.full(self.g.n_outputs, -b), np.full(self.g.n_outputs, b))
        return written, "simplified", via

    def points(self) -> np.ndarray:
        """Region points the makers fit to: uniform samples, vertices and the centre."""
        rng = np.random.default_rng(self.opt.seed)
        return np.vstack([self.box.sample(self.opt.samples, rng), self.box.vertices(256, rng), self.box.center[None]])

    def bisect(self, maker: str, make, parent: str, via: tuple | None, base_metric: int) -> None:
        """The smallest level of `make(level) -> (graph, note)` that is proved, by bisection on the level in
        (0, 1) (the size goal's level first).  With workers, each step checks one level per worker, evenly
        spaced between the highest failed and the lowest proved.  A level no smaller than the best proved
        goes lower unchecked, and a level that gives the same file as an earlier one gets its verdict
        without a second check."""
        from ...ir.onnx_export import graph_to_onnx
        goal = self.goal()
        first = goal_level(goal, base_metric)
        k = self.executor.workers if self.executor is not None else 1
        ok, bad, tried = 1.0, 0.0, {}
        steps = self.opt.bisect_steps + (first is not None) if k == 1 else parallel_steps(self.opt.bisect_steps, k)
        for step in range(steps):
            if self.remaining() <= 1.0 or self.reached():
                return
            levels = [lv for lv in next_levels(bad, ok, k, first if step == 0 else None) if lv < 0.999]
            if not levels:
                return
            items, keys, key_of = [], [], {}
            ref = self.res.best.size if self.res.best is not None else self.res.original
            for lv in levels:
                cand, note = make(lv)
                model = graph_to_onnx(cand)
                key = hashlib.sha256(model.SerializeToString()).hexdigest()
                if self.res.metric(graph_size(cand, model.ByteSize())) >= self.res.metric(ref):
                    key_of[lv] = "larger"       # no smaller than what is proved (or the original): go lower
                    continue
                key_of[lv] = key                # a file checked before (this step or earlier): its verdict
                if key not in tried and key not in keys:
                    items.append((f"{parent}+{maker}({lv:.3g})", maker, lv, parent, model, note))
                    keys.append(key)
            # candidates that keep the base's structure are bounded through it (`via`)
            for key, written in zip(keys, self.certify_all(items, via=via)):
                tried[key] = written is not None
            good = [lv for lv in levels if key_of[lv] == "larger" or tried.get(key_of[lv], False)]
            ok = min([ok] + good)
            bad = max([bad] + [lv for lv in levels if lv not in good and lv < ok])
            if ok - bad < 0.02:
                return

    def lowrank(self, base: Graph, parent: str, via) -> None:
        """ALDS low rank of the base's dense and conv layers (`graph_lowrank`), the kept fraction of their weights
        bisected."""
        from .graph_lowrank import factorable, graph_lowrank, moments
        names = factorable(base)
        if not names:
            self.res.notes.append("low rank: no dense or convolution layer to factor")
            return
        points = self.points()
        mom = moments(base, names, points)
        weights = sum(int(base.op(n).W.size) for n in names)

        def make(level):
            cand, note = graph_lowrank(base, level, points, mom)
            return cand, f"{note}; {weights} factorable weights"

        self.bisect("lowrank", make, parent, via, self.res.metric(graph_size(base, 0)))

    def weights(self, base: Graph, parent: str, via) -> None:
        """Unstructured magnitude pruning: each layer keeps its largest `level` fraction of weights."""
        from .graph_makers import prune_weights
        self.bisect("weights", lambda level: (prune_weights(base, level),
                                               f"each layer keeps {level:.3g} of its weights"),
                    parent, via, self.res.metric(graph_size(base, 0)))

    def channels(self, base: Graph, parent: str, via) -> None:
        """Whole channels (conv) and neurons (dense) pruned by mean |activation| on the region; the level is the
        fraction of ReLU channels kept."""
        from .graph_makers import channel_scores, prune_channels
        scores = channel_scores(base, self.points())
        self.bisect("channels", lambda level: (prune_channels(base, 1.0 - level, scores),
                                                f"keeps {level:.3g} of the ReLU channels"),
                    parent, via, self.res.metric(graph_size(base, 0)))

    def rounded(self, kind: str, base: Graph, parent: str, via) -> None:
        """The best model so far (else the base) with its weights rounded: for the report and the file size."""
        from ...ir.onnx_export import graph_to_onnx
        from .graph_makers import Unrepresentable, round_graph
        top, name = (self.best_graph, self.res.best.name) if self.best_graph is not None else (base, parent)
        try:
            rounded = round_graph(top, kind)
        except Unrepresentable as exc:
            self.res.notes.append(f"{kind}: not tried, {exc}")
            return
        self.certify(f"{name}+{kind}", kind, None, name, graph_to_onnx(rounded), f"weights rounded to {kind} values",
                     via=via)

    def reached(self) -> bool:
        goal = self.goal()
        return goal is not None and self.res.best is not None and self.res.metric(self.res.best.size) <= goal

    def goal(self):
        s = self.target.size
        return None if s is None else (s * self.res.metric(self.res.original) if s <= 1 else s)

    def run(self) -> CompressResult:
        base, parent, via = self.g, "original", None
        if self.opt.simplify:
            got = self.simplified()
            if got is not None:
                base, parent, via = got
        asked = {GRAPH_MAKERS.get(m, m) for m in self.opt.makers}
        skipped = sorted(asked - set(GRAPH_ORDER))
        for maker in [m for m in GRAPH_ORDER if m in asked]:      # each once, in GRAPH_ORDER
            if self.remaining() <= 1.0 or (self.reached() and maker not in ("float16", "int8")):
                break
            if self.best_graph is not None:          # each maker builds on the best model proved so far
                base, parent = self.best_graph, self.res.best.name
            if maker == "lowrank":
                self.lowrank(base, parent, via)
            elif maker == "weights":
                self.weights(base, parent, via)
            elif maker == "channels":
                self.channels(base, parent, via)
            elif maker in ("float16", "int8"):
                self.rounded(maker, base, parent, via)
        if skipped:
            self.res.notes.append(f"not on graphs: {', '.join(skipped)} (dense chains only)")
        return self.res


# the chain makers' names on graphs: whole neurons are whole channels (and dense neurons)
GRAPH_MAKERS = {"neurons": "channels"}
# on graphs the makers run in this order, whatever order they were asked in: low rank first (on ResNet-2B
# img386 top-1, channels first then low rank ended at 6 815 params, low rank then channels at 1 380)
GRAPH_ORDER = ("lowrank", "channels", "weights", "float16", "int8")


def compress_graph(model_path, box: Box, target: Target, options: CompressOptions | None = None,
                   workdir: str | Path | None = None) -> CompressResult:
    """Exact simplification, then the makers, each candidate certified; see the module docstring.  Like
    `compress`, the certified file is left at `result.best_file` for the caller to move into place."""
    opt = options or CompressOptions()
    path = str(model_path)
    g = load_graph(path)
    box.check_dim(g.n_inputs)
    work = Path(tempfile.mkdtemp(prefix=".equiv-compress.", dir=None if workdir is None else str(workdir)))
    keep = work.parent / f".{work.name}.best.onnx"      # where `GraphSearch.keep` puts the best file so far
    try:
        s = GraphSearch(path, g, box, target, opt, work)
        res = run_search(s, opt)
        if res.best_file is not None:
            res.validation = validate_best(path, res.best_model, box, target, opt.seed)
        res.seconds = time.perf_counter() - s.t0
        return res
    except BaseException:           # a failed re-check, Ctrl-C or SIGTERM: no partial output is left
        keep.unlink(missing_ok=True)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
