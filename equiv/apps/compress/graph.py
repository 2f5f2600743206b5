"""`compress` on graphs (convolutions, residual blocks): first the exact graph simplification (dead channels
deleted, stable positions masked, folds), certified against the original by its record
(`prove.graph_carried`: phases re-proved, reduction rebuilt, rounding bounded), else by the graph checker;
then ALDS low rank on its dense and conv layers (`graph_lowrank`), the level bisected, every candidate
certified by the graph checker (`prove.graph_check`).  Neuron pruning, affine and rounding makers work on
chains of dense layers only."""

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

    def remaining(self) -> float:
        return self.opt.time_limit - (time.perf_counter() - self.t0)

    def check_options(self, limit: float):
        from ...prove.equivalence import CheckOptions
        return CheckOptions(norm=self.target.norm, epsilon=self.target.epsilon, backend=self.opt.backend,
                            time_limit=max(1.0, min(limit, self.remaining())), seed=self.opt.seed, samples=2000)

    def certify(self, name: str, maker: str, level, parent, model: onnx.ModelProto, note: str,
                carried: bool = False) -> bool:
        """Write the model, check the file against the original (by its record first when `carried`), record
        it; a proved and smaller model becomes the best.  True when proved."""
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
                                   self.check_options(self.opt.check_time_limit))
            verdict, upper, seen = chk.verdict, chk.max_diff_upper, chk.max_diff_lower
        except Exception as exc:           # a candidate equiv cannot check is a failed candidate, said so
            verdict, upper, seen = "error", float("inf"), None
            notes.append(f"check failed: {exc}")
        size = graph_size(written, model.ByteSize())          # the file as written and read back
        rec = Record(name, maker, level, parent, size, verdict, float(upper) if np.isfinite(upper) else None,
                     seen, time.perf_counter() - t, "; ".join(notes))
        self.res.records.append(rec)
        best = self.res.best
        m = self.res.metric(size)
        if verdict == "equivalent" and m < self.res.metric(self.res.original) and \
                (best is None or m < self.res.metric(best.size)):
            keep = self.work.parent / f".{self.work.name}.best.onnx"
            os.replace(f, keep)
            self.res.best, self.res.best_file, self.res.best_model = rec, keep, model.SerializeToString()
        else:
            f.unlink()
        return verdict == "equivalent"

    def simplified(self) -> tuple[Graph, str] | None:
        """The exact simplification, certified by its record; (its graph, its name) when proved, else None."""
        from ..graph_simplify import simplify_graph
        from ..simplify import sha256_of
        from ...prove.graph_carried import attach_graph_claims
        opt = self.opt
        t = time.perf_counter()
        try:
            sim = simplify_graph(self.g, self.reference, self.box, method="milp",
                                 budget=min(opt.simplify_budget, max(1.0, self.remaining() / 4)), seed=opt.seed,
                                 validation_samples=2000, progress=opt.progress, backend=opt.backend)
        except ValidationError as exc:
            self.res.notes.append(f"exact simplification skipped: {exc}")
            return None
        c = sim.phases.counts()
        self.res.notes.append(f"exact simplification: {self.g.n_relus} -> {sim.simplified.n_relus} ReLUs, "
                              f"{c['unknown']} positions unknown, {time.perf_counter() - t:.1f} s")
        model = attach_graph_claims(sim.onnx_model, sha256_of(self.path), sim.phases.method, sim.phases.dead,
                                    sim.phases.active, self.box)
        if not self.certify("simplified", "simplify", None, None, model, "", carried=True):
            return None
        if self.res.best is None or self.res.best.name != "simplified":
            self.res.notes.append("the proved simplification is not smaller by the chosen metric")
        return sim.simplified, "simplified"

    def lowrank(self, base: Graph, parent: str) -> None:
        """ALDS low rank of the base's layers: the kept fraction bisected (the size goal's level first), each
        level certified; stops when a level is no smaller than the best proved."""
        from ...ir.onnx_export import graph_to_onnx
        from .graph_lowrank import factorable, graph_lowrank, moments
        names = factorable(base)
        if not names:
            self.res.notes.append("low rank: no dense or convolution layer to factor")
            return
        rng = np.random.default_rng(self.opt.seed)
        points = np.vstack([self.box.sample(self.opt.samples, rng), self.box.vertices(256, rng), self.box.center[None]])
        mom = moments(base, names, points)
        base_weights = sum(int(base.op(n).W.size) for n in names)
        goal = self.goal()
        first = None if goal is None else min(0.999, max(0.01, goal / max(1, self.res.metric(graph_size(base, 0)))))
        ok, bad, tried = 1.0, 0.0, {}
        for step in range(self.opt.bisect_steps + (first is not None)):
            if self.remaining() <= 1.0 or self.reached(goal):
                return
            level = first if (step == 0 and first is not None) else (ok + bad) / 2
            if level >= 0.999:
                return
            cand, note = graph_lowrank(base, level, points, mom)
            model = graph_to_onnx(cand)
            key = hashlib.sha256(model.SerializeToString()).hexdigest()
            best = self.res.best
            if best is not None and self.res.metric(graph_size(cand, model.ByteSize())) >= self.res.metric(best.size):
                bad = level         # no smaller than what is proved: only smaller levels can help
                continue
            if key not in tried:    # the same allocation as an earlier level: the same verdict
                tried[key] = self.certify(f"{parent}+lowrank({level:.3g})", "lowrank", level, parent, model,
                                          f"{note}; {base_weights} factorable weights")
            if tried[key]:
                ok = level
            else:
                bad = level
            if ok - bad < 0.02:
                return

    def reached(self, goal) -> bool:
        return goal is not None and self.res.best is not None and self.res.metric(self.res.best.size) <= goal

    def run(self) -> CompressResult:
        base, parent = self.g, "original"
        if self.opt.simplify:
            got = self.simplified()
            if got is not None:
                base, parent = got
        if "lowrank" in self.opt.makers and not self.reached(self.goal()):
            self.lowrank(base, parent)
        dropped = sorted(set(self.opt.makers) - {"lowrank"})
        if dropped:
            self.res.notes.append(f"on graphs only low rank is tried after the exact simplification "
                                  f"({', '.join(dropped)} work on chains of dense layers)")
        return self.res

    def goal(self):
        s = self.target.size
        return None if s is None else (s * self.res.metric(self.res.original) if s <= 1 else s)


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
        res = s.run()
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
