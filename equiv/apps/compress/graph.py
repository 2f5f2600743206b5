"""`compress` on graphs (convolutions, residual blocks): the exact graph simplification (dead channels deleted,
stable positions masked, folds) is the candidate, certified against the original by its record
(`prove.graph_carried`: phases re-proved, reduction rebuilt, rounding bounded), else by the graph checker.
The dense-chain makers (neuron pruning, low rank, affine, rounding) do not apply to graphs yet, and the
result says so."""

from __future__ import annotations

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


def compress_graph(model_path, box: Box, target: Target, options: CompressOptions | None = None,
                   workdir: str | Path | None = None) -> CompressResult:
    """The graph simplification as the one candidate, certified; see the module docstring.  Like `compress`,
    the certified file is left at `result.best_file` for the caller to move into place."""
    from ..graph_simplify import simplify_graph
    from ..simplify import sha256_of
    from ...prove.equivalence import CheckOptions
    from ...prove.graph_carried import attach_graph_claims, carried_graph_check
    from ...prove.graph_check import check_graphs
    opt = options or CompressOptions()
    t0 = time.perf_counter()
    path = str(model_path)
    g = load_graph(path)
    box.check_dim(g.n_inputs)
    res = CompressResult(graph_size(g, Path(path).stat().st_size), target)
    res.notes.append("a convolutional / residual graph: the candidate is equiv's exact simplification; neuron pruning, "
                     "low rank, affine and rounding makers work on chains of dense layers so far")
    if not opt.simplify:
        res.notes.append("--no-simplify leaves no candidate for a graph")
        res.seconds = time.perf_counter() - t0
        return res
    work = Path(tempfile.mkdtemp(prefix=".equiv-compress.", dir=None if workdir is None else str(workdir)))
    try:
        reference = OnnxRunner(path)
        t = time.perf_counter()
        try:
            sim = simplify_graph(g, reference, box, method="milp", budget=opt.simplify_budget, seed=opt.seed,
                                 validation_samples=2000, progress=opt.progress, backend=opt.backend)
        except ValidationError as exc:
            res.notes.append(f"exact simplification skipped: {exc}")
            res.seconds = time.perf_counter() - t0
            return res
        c = sim.phases.counts()
        res.notes.append(f"exact simplification: {g.n_relus} -> {sim.simplified.n_relus} ReLUs, {c['unknown']} "
                         f"positions unknown, {time.perf_counter() - t:.1f} s")
        model = attach_graph_claims(sim.onnx_model, sha256_of(path), sim.phases.method, sim.phases.dead,
                                    sim.phases.active, box)
        f = work / "cand_000.onnx"
        f.write_bytes(model.SerializeToString())
        t = time.perf_counter()
        copt = CheckOptions(norm=target.norm, epsilon=target.epsilon, backend=opt.backend,
                            time_limit=max(1.0, min(3 * opt.check_time_limit, opt.time_limit - (t - t0))),
                            seed=opt.seed, samples=2000)
        run_b, written = OnnxRunner(str(f)), load_graph(f)
        chk, notes = carried_graph_check(path, f, g, written, [box], copt, reference, run_b)
        if chk is None:
            chk = check_graphs(g, written, [box], reference, run_b, copt)
        upper = chk.max_diff_upper
        size = graph_size(written, model.ByteSize())          # the file as written and read back
        rec = Record("simplified", "simplify", None, None, size, chk.verdict,
                     float(upper) if np.isfinite(upper) else None, chk.max_diff_lower, time.perf_counter() - t,
                     "; ".join(notes))
        res.records.append(rec)
        if chk.verdict == "equivalent" and res.metric(size) < res.metric(res.original):
            keep = work.parent / f".{work.name}.best.onnx"
            os.replace(f, keep)
            res.best, res.best_file, res.best_model = rec, keep, model.SerializeToString()
            try:
                res.validation = validate_best(path, res.best_model, box, target, opt.seed)
            except BaseException:
                keep.unlink()
                raise
        elif chk.verdict == "equivalent":
            res.notes.append("the proved simplification is not smaller by the chosen metric")
        res.seconds = time.perf_counter() - t0
        return res
    finally:
        shutil.rmtree(work, ignore_errors=True)
