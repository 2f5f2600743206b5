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
from .search import CompressOptions, CompressResult, Record, Target, validate_best


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


class GraphSearch:
    """State of one graph compress run: the original, the region, the work folder, the best certified file."""

    def __init__(self, path: str, g: Graph, box: Box, target: Target, opt: CompressOptions, work: Path):
        self.path, self.g, self.box, self.target, self.opt, self.work = path, g, box, target, opt, work
        self.t0 = time.perf_counter()
        self.reference = OnnxRunner(path)
        self.res = CompressResult(graph_size(g, Path(path).stat().st_size), target)
        self.best_graph = None
        self.bar = None

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
        from ...prove.graph_carried import carried_graph_check
        from ...prove.graph_check import check_graphs
        f = self.work / f"cand_{len(self.res.records):03d}.onnx"
        f.write_bytes(model.SerializeToString())
        t = time.perf_counter()
        run_b, written = OnnxRunner(str(f)), load_graph(f)
        notes = [note] if note else []
        try:
            chk = None
            if carried:
                copt = self.check_options(3 * self.opt.check_time_limit)
                chk, more = carried_graph_check(self.path, f, self.g, written, [self.box], copt, self.reference, run_b)
                notes += more
            if chk is None:
                chk = check_graphs(self.g, written, [self.box], self.reference, run_b,
                                   self.check_options(self.opt.check_time_limit), via=via)
            verdict, upper, seen = chk.verdict, chk.max_diff_upper, chk.max_diff_lower
            notes += [n for n in chk.notes if n.startswith(("bounded through", "B does not keep"))]
        except Exception as exc:           # a candidate equiv cannot check is a failed candidate, said so
            verdict, upper, seen = "error", float("inf"), None
            notes.append(f"check failed: {exc}")
        size = graph_size(written, model.ByteSize())          # the file as written and read back
        rec = Record(name, maker, level, parent, size, verdict, float(upper) if np.isfinite(upper) else None,
                     seen, time.perf_counter() - t, "; ".join(notes))
        self.res.records.append(rec)
        if self.bar is not None:
            self.bar.set_postfix_str(f"{name}: {verdict}")
            self.bar.update(1)
        best = self.res.best
        m = self.res.metric(size)
        if verdict == "equivalent" and m < self.res.metric(self.res.original) and \
                (best is None or m < self.res.metric(best.size)):
            keep = self.work.parent / f".{self.work.name}.best.onnx"
            os.replace(f, keep)
            self.res.best, self.res.best_file, self.res.best_model = rec, keep, model.SerializeToString()
            self.best_graph = written
        else:
            f.unlink()
        return written if verdict == "equivalent" else None

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
        (0, 1) (the size goal's level first); a level no smaller than the best proved counts as failed, and
        a level that gives the same file as an earlier one gets its verdict without a second check."""
        from ...ir.onnx_export import graph_to_onnx
        goal = self.goal()
        first = None if goal is None else min(0.999, max(0.01, goal / max(1, base_metric)))
        ok, bad, tried = 1.0, 0.0, {}
        for step in range(self.opt.bisect_steps + (first is not None)):
            if self.remaining() <= 1.0 or self.reached():
                return
            level = first if (step == 0 and first is not None) else (ok + bad) / 2
            if level >= 0.999:
                return
            cand, note = make(level)
            model = graph_to_onnx(cand)
            key = hashlib.sha256(model.SerializeToString()).hexdigest()
            ref = self.res.best.size if self.res.best is not None else self.res.original
            if self.res.metric(graph_size(cand, model.ByteSize())) >= self.res.metric(ref):
                ok = level          # no smaller than what is proved (or the original): go lower unchecked
                continue
            if key not in tried:      # (through `via` when the candidate keeps the base's structure)
                tried[key] = self.certify(f"{parent}+{maker}({level:.3g})", maker, level, parent, model, note,
                                          via=via) is not None
            if tried[key]:
                ok = level
            else:
                bad = level
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
        self.bisect("weights", lambda level: (prune_weights(base, level), f"each layer keeps {level:.3g} of its weights"),
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
        from .graph_makers import round_graph
        top, name = (self.best_graph, self.res.best.name) if self.best_graph is not None else (base, parent)
        self.certify(f"{name}+{kind}", kind, None, name, graph_to_onnx(round_graph(top, kind)),
                     f"weights rounded to {kind} values", via=via)

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
        makers = list(dict.fromkeys(GRAPH_MAKERS.get(m, m) for m in self.opt.makers))   # each once, in order
        skipped = [m for m in makers if m not in ("lowrank", "weights", "channels", "float16", "int8")]
        for maker in makers:
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


def compress_graph(model_path, box: Box, target: Target, options: CompressOptions | None = None,
                   workdir: str | Path | None = None) -> CompressResult:
    """Exact simplification, then low rank, each candidate certified; see the module docstring.  Like
    `compress`, the certified file is left at `result.best_file` for the caller to move into place."""
    opt = options or CompressOptions()
    path = str(model_path)
    g = load_graph(path)
    box.check_dim(g.n_inputs)
    work = Path(tempfile.mkdtemp(prefix=".equiv-compress.", dir=None if workdir is None else str(workdir)))
    try:
        s = GraphSearch(path, g, box, target, opt, work)
        if opt.progress:
            from tqdm import tqdm
            s.bar = tqdm(desc="compress: candidates certified", unit="cand", leave=False)
        try:
            res = s.run()
        finally:
            if s.bar is not None:
                s.bar.close()
        if res.best_file is not None:
            try:
                res.validation = validate_best(path, res.best_model, box, target, opt.seed)
            except BaseException:
                res.best_file.unlink()
                raise
        res.seconds = time.perf_counter() - s.t0
        return res
    finally:
        shutil.rmtree(work, ignore_errors=True)
