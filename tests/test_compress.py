"""equiv compress: the low-rank allocation against brute force, the candidate files against their networks in
onnxruntime, and returned models re-checked independently (equiv check and sampled outputs)."""

from __future__ import annotations

import itertools
import json

import numpy as np
import onnx
import pytest

from conftest import MODELS, acas_path, needs_bench, random_problem, ACAS
from equiv.apps.compress import CompressOptions, Target, compress, size_of
from equiv.apps.compress.candidate import Candidate
from equiv.apps.compress.lowrank import (LayerSpectrum, allocate_ranks, spectrum, spectrum_on, truncate, truncate_on,
                                         whitening)
from equiv.apps.compress.makers import affine, lowrank, neurons, rounded
from equiv.apps.compress.quantize import int8_rows
from equiv.artifacts.validate import OnnxRunner
from equiv.cli import main
from equiv.ir.chain_io import network_from_onnx
from equiv.prove.equivalence import CheckOptions, check_models
from equiv.spec.region import Box, load_region

DIGITS = MODELS / "digits_mlp.onnx"
DIGITS_BALL = MODELS / "digits_mlp_ball.vnnlib"


# ---- the allocation ----------------------------------------------------------------------------

def _brute_force(layers, budget):
    """Smallest achievable max error over every rank combination within the budget (ranks >= 1)."""
    best = None
    for rs in itertools.product(*[range(1, L.full_rank + 1) for L in layers]):
        if sum(L.cost(r) for L, r in zip(layers, rs)) <= budget:
            e = max(L.error(r) for L, r in zip(layers, rs))
            best = e if best is None else min(best, e)
    return best


@pytest.mark.parametrize("seed", range(12))
def test_allocation_matches_brute_force(seed):
    r = np.random.default_rng(seed)
    layers = [spectrum(r.normal(size=(int(r.integers(2, 7)), int(r.integers(2, 7))))) for _ in range(int(r.integers(1, 4)))]
    lo = sum(L.cost(1) for L in layers)
    hi = sum(L.m * L.n for L in layers)
    for budget in np.linspace(lo, hi, 7):
        ranks, err = allocate_ranks(layers, budget)
        assert sum(L.cost(k) for L, k in zip(layers, ranks)) <= budget + 1e-9
        assert err == pytest.approx(_brute_force(layers, budget), abs=1e-12)
        assert err == pytest.approx(max(L.error(k) for L, k in zip(layers, ranks)))


def test_allocation_keeps_layers_whole_where_factoring_does_not_pay():
    L = LayerSpectrum(3, 3, np.array([3.0, 2.0, 1.0]))      # rank 2 costs 12 > 9: never factored
    assert L.cost(2) == 9 and L.cost(1) == 6
    ranks, err = allocate_ranks([L], 9)
    assert ranks == [3] and err == 0.0


def test_truncation_error_is_the_next_singular_value():
    W = np.random.default_rng(0).normal(size=(7, 5))
    s = np.linalg.svd(W, compute_uv=False)
    for r in range(1, 5):
        U, V = truncate(W, r)
        assert U.shape == (7, r) and V.shape == (r, 5)
        assert np.linalg.norm(W - U @ V, 2) == pytest.approx(s[r], rel=1e-9)
        assert spectrum(W).error(r) == pytest.approx(s[r] / s[0])


def test_data_aware_truncation_is_best_on_its_inputs():
    r = np.random.default_rng(1)
    H = r.normal(size=(4000, 6)) @ r.normal(size=(6, 6)) + 3.0       # correlated inputs, non-zero mean
    W, b = r.normal(size=(5, 6)), r.normal(size=5)
    w = whitening(H)
    s = spectrum_on(W, w).s
    for k in range(1, 5):
        U, V, b2 = truncate_on(W, b, k, w)
        err = (H @ W.T + b) - (H @ (U @ V).T + b2)
        assert abs(err.mean()) < 1e-9                                  # the bias absorbs the mean
        assert np.mean(np.sum(err ** 2, axis=1)) == pytest.approx(np.sum(s[k:] ** 2), rel=1e-6)
        plain_U, plain_V = truncate(W, k)                              # plain SVD is no better on these inputs
        plain = (H - H.mean(0)) @ (W - plain_U @ plain_V).T
        assert np.mean(np.sum(err ** 2, axis=1)) <= np.mean(np.sum(plain ** 2, axis=1)) * (1 + 1e-9)


def test_int8_rows_error_is_at_most_half_a_level():
    W = np.random.default_rng(2).normal(size=(6, 9))
    scale = np.abs(W).max(axis=1, keepdims=True) / 127
    assert np.all(np.abs(int8_rows(W) - W) <= scale / 2 + 1e-12)


# ---- candidate files compute their networks -----------------------------------------------------

@pytest.mark.parametrize("seed", range(4))
def test_candidate_files_match_their_networks_in_onnxruntime(seed):
    net, box = random_problem(seed, 4, [9, 8, 7], 3, linear_channels=True)
    pts = box.sample(300, np.random.default_rng(seed))
    base = Candidate("base", "simplify", None, net, [None] * net.depth)
    for cand in (lowrank(base, 0.6, pts), lowrank(base, 0.6, pts, data_aware=False), neurons(base, 0.5, pts),
                 affine(base, pts)):
        model = cand.to_onnx()
        y = OnnxRunner(model)(pts)
        assert np.allclose(y, cand.net.forward(pts), atol=1e-4), cand.name
        assert np.allclose(network_from_onnx(model).forward(pts), cand.net.forward(pts), atol=1e-4)  # equiv reads it
        size = size_of(model)
        if cand.maker == "lowrank" and any(r is not None for r in cand.ranks):
            assert size.params < net.n_params
            factored = sum(r is not None for r in cand.ranks)
            assert sum(n.name.startswith("lowrank_") for n in model.graph.node) == factored
    half = rounded(base, "float16").to_onnx()
    y16 = OnnxRunner(half)(pts)
    assert np.allclose(y16, net.forward(pts), rtol=1e-2, atol=1e-2)
    assert size_of(half).params == net.n_params


# ---- end to end: returned models are re-checked independently ----------------------------------

def _recheck(original, written, box, norm, epsilon):
    res = check_models(str(original), str(written), box, CheckOptions(norm=norm, epsilon=epsilon, time_limit=60,
                                                                      samples=2000))
    assert res.verdict == "equivalent"
    pts = np.vstack([box.sample(3000, np.random.default_rng(99)), box.center[None]])
    ya, yb = OnnxRunner(str(original))(pts), OnnxRunner(str(written))(pts)
    if norm == "linf":
        assert np.abs(ya - yb).max() <= epsilon
    else:
        assert np.all(np.argmax(ya, 1) == np.argmax(yb, 1))


def test_cli_compress_digits_top1(tmp_path, capsys):
    out, rep, plot = tmp_path / "small.onnx", tmp_path / "r.json", tmp_path / "p.png"
    code = main(["compress", str(DIGITS), "--spec", str(DIGITS_BALL), "--preserve", "top1", "-o", str(out),
                 "--report", str(rep), "--plot", str(plot), "--makers", "affine", "--no-simplify",
                 "--time-limit", "60", "--check-time-limit", "15", "--no-progress"])
    assert code == 0
    report = json.loads(rep.read_text())
    best = report["best"]
    assert best["verdict"] == "equivalent"
    assert best["params"] < report["original"]["params"] == 3466
    assert best["params"] == size_of(onnx.load(str(out))).params
    assert all(c["verdict"] in ("equivalent", "not_equivalent", "unknown", "error") for c in report["candidates"])
    assert plot.stat().st_size > 1000
    assert "equiv compress:" in capsys.readouterr().out
    box, _ = load_region(spec=str(DIGITS_BALL))
    _recheck(DIGITS, out, box, "top1", None)
    assert not list(tmp_path.glob(".*"))                  # no work files left behind


def test_cli_compress_refuses_bad_paths_and_options(tmp_path, capsys):
    assert main(["compress", str(DIGITS), "--spec", str(DIGITS_BALL), "--epsilon", "0.1", "-o", str(DIGITS)]) == 2
    assert "refusing" in capsys.readouterr().err
    assert main(["compress", str(DIGITS), "--spec", str(DIGITS_BALL), "-o", str(tmp_path / "a.onnx")]) == 2
    assert "--epsilon" in capsys.readouterr().err
    assert main(["compress", str(DIGITS), "--spec", str(DIGITS_BALL), "--epsilon", "0.1", "--makers", "magic",
                 "-o", str(tmp_path / "a.onnx")]) == 2
    assert not list(tmp_path.iterdir())


def test_nothing_proved_writes_nothing(tmp_path, capsys):
    """An epsilon no smaller model can meet: exit 3, no model file, the report lists what was tried."""
    out, rep = tmp_path / "small.onnx", tmp_path / "r.json"
    code = main(["compress", str(DIGITS), "--spec", str(DIGITS_BALL), "--epsilon", "1e-9", "-o", str(out),
                 "--report", str(rep), "--makers", "affine", "--time-limit", "20", "--check-time-limit", "5",
                 "--no-simplify", "--no-progress"])
    report = json.loads(rep.read_text())
    assert code == 3 and not out.exists() and report["best"] is None


@needs_bench
def test_compress_acas_prop3_is_proved_and_smaller(tmp_path):
    box, _ = load_region(spec=str(ACAS / "prop_3.vnnlib"))
    # a size goal of 17 % makes the first (and only) neuron-pruning level about 0.91 of the simplified model
    res = compress(acas_path(1, 1), box, Target("linf", 0.05, size=0.17), CompressOptions(
        time_limit=60, check_time_limit=20, simplify_budget=3, makers=("neurons",), bisect_steps=1, refits=0),
        workdir=tmp_path)
    assert res.best is not None and res.best.verdict == "equivalent"
    assert res.best.size.params < res.original.params == 13305
    out = tmp_path / "best.onnx"
    res.best_file.rename(out)
    assert res.validation["ok"]
    _recheck(acas_path(1, 1), out, box, "linf", 0.05)


def test_a_size_goal_the_original_meets_still_searches(tmp_path):
    """--target-params 1.0 (or any size at least the model's): any smaller proved model meets it.  The goal's
    first level was then 0.999, which the bisection skips, and compress gave up at once (exit 3, a hunt)."""
    box, _ = load_region(spec=str(DIGITS_BALL))
    for size in (1.0, 10 ** 6):
        res = compress(DIGITS, box, Target("linf", 0.5, size=size), CompressOptions(
            simplify=False, makers=("neurons",), time_limit=60, check_time_limit=20, bisect_steps=2, refits=0),
            workdir=tmp_path)
        assert res.best is not None and res.best.verdict == "equivalent"
        assert res.best.size.params < res.original.params == 3466
        assert res.records[-1] is res.best                    # the first proved level meets the goal: done
        res.best_file.unlink()


def test_an_affine_fit_no_smaller_than_the_best_is_not_checked(tmp_path):
    """On a box where every neuron is stable the exact simplification is already one Gemm (650 params): the
    affine fit has the same size, and was checked anyway (a wasted check, a hunt)."""
    box, _ = load_region(spec=str(DIGITS_BALL))
    small = Box(box.center - 1e-4, box.center + 1e-4)
    res = compress(DIGITS, small, Target("linf", 0.01), CompressOptions(makers=("affine",), time_limit=60,
                                                                     check_time_limit=20), workdir=tmp_path)
    assert [r.name for r in res.records] == ["simplified"] and res.best.size.params == 650
    assert "affine: skipped, params no smaller than the best proved" in res.notes
    res.best_file.unlink()


def test_lowrank_after_a_constant_model_has_nothing_to_factor(tmp_path):
    """When the tolerance stage already made the model a constant (x @ 0 + b), the low-rank maker found no
    weights to factor and crashed (exit 4, a hunt, stop 47); it now leaves the layer alone."""
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(175604)
    widths, nodes, inits, prev = [2, 9, 3, 9, 4], [], [], "X"
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        inits += [numpy_helper.from_array((rng.standard_normal((b, a)) / np.sqrt(a)).astype(np.float32), f"W{i}"),
                  numpy_helper.from_array((rng.standard_normal(b) * 0.3).astype(np.float32), f"b{i}")]
        out = f"g{i}" if i < len(widths) - 2 else "Y"
        nodes.append(helper.make_node("Gemm", [prev, f"W{i}", f"b{i}"], [out], transB=1))
        if i < len(widths) - 2:
            nodes.append(helper.make_node("Relu", [out], [f"r{i}"]))
            prev = f"r{i}"
    g = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 2])],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 4])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    path, out = tmp_path / "m.onnx", tmp_path / "c.onnx"
    onnx.save(m, str(path))
    assert main(["compress", str(path), "--box", "0.0958:1.0329,0.0037:0.4221", "--epsilon", "0.2", "--makers",
                 "lowrank,weights", "-o", str(out), "--no-progress", "--time-limit", "90",
                 "--check-time-limit", "15"]) == 0
    box = Box(np.array([0.0958, 0.0037]), np.array([1.0329, 0.4221]))
    x = np.vstack([box.sample(5000, rng), box.corners()])
    assert np.abs(OnnxRunner(str(path))(x) - OnnxRunner(str(out))(x)).max() <= 0.2


def test_a_candidate_no_smaller_than_the_original_is_never_returned(tmp_path):
    """float16 rounding of the original keeps its size: proved or not, it is not a compression."""
    box, _ = load_region(spec=str(DIGITS_BALL))
    res = compress(DIGITS, box, Target("top1"), CompressOptions(simplify=False, makers=("float16",), time_limit=60,
                                                                 check_time_limit=20), workdir=tmp_path)
    assert [r.maker for r in res.records] == ["float16"]
    assert res.records[0].size.params == res.original.params
    assert res.best is None and res.best_file is None
    assert not list(tmp_path.iterdir())


def test_cli_compress_a_conv_graph(tmp_path, capsys, rng):
    """A conv net: the exact graph simplification (a dead channel and a dead row deleted) certified by its
    record, for linf and (on a small box, where one class wins) top-1; at linf 1e-4 no lossy candidate is proved,
    so --no-simplify leaves nothing proved."""
    from test_graph_simplify import conv_dense_model
    from equiv.artifacts.validate import OnnxRunner
    from equiv.ir import load_graph
    from equiv.spec.region import Box
    path = tmp_path / "m.onnx"
    onnx.save(conv_dense_model(rng), str(path))
    for lo, hi, extra in ((-0.3, 0.3, ["--epsilon", "1e-4"]), (0.1, 0.1001, ["--preserve", "top1"])):
        box_text = ",".join([f"{lo}:{hi}"] * 72)
        box = Box(np.full(72, lo), np.full(72, hi))
        out, rep = tmp_path / "small.onnx", tmp_path / "r.json"
        for f in (out, rep):
            f.unlink(missing_ok=True)
        code = main(["compress", str(path), "--box", box_text, *extra, "-o", str(out), "--report", str(rep),
                     "--no-progress"])
        report = json.loads(rep.read_text())
        assert code == 0 and report["best"]["verdict"] == "equivalent", report
        assert report["best"]["params"] == load_graph(out).n_params < report["original"]["params"]
        assert any("affine" in n and "dense chains only" in n for n in report["notes"])
        assert report["validation"]["ok"]
        lowrank = [r for r in report["candidates"] if r["maker"] == "lowrank"]
        assert len({r["params"] for r in lowrank}) == len(lowrank)     # each allocation checked once
        if "--epsilon" in extra:
            assert lowrank and all(r["verdict"] != "equivalent" for r in lowrank)
            assert report["best"]["maker"] == "simplify"
        capsys.readouterr()
        # independently: equiv check of the delivered file, and onnxruntime on 10 000 points
        linf = "--epsilon" in extra
        assert main(["check", str(path), str(out), "--box", box_text, "--no-progress",
                     *(["--epsilon", "1e-4"] if linf else ["--norm", "top1"])]) == 0
        capsys.readouterr()
        x = np.vstack([box.sample(10000, np.random.default_rng(4)), box.random_vertices(256, np.random.default_rng(4))])
        ya, yb = OnnxRunner(str(path))(x), OnnxRunner(str(out))(x)
        assert np.abs(ya - yb).max() <= 1e-4 if linf else np.array_equal(ya.argmax(axis=1), yb.argmax(axis=1))
    out = tmp_path / "none.onnx"
    assert main(["compress", str(path), "--box", ",".join(["-0.3:0.3"] * 72), "--epsilon", "1e-4", "-o", str(out),
                 "--no-simplify", "--no-progress"]) == 3
    assert not out.exists()


# ---- parallel certification -------------------------------------------------------------------------------

def test_next_levels_split_the_interval_evenly():
    from equiv.apps.compress.search import next_levels
    assert next_levels(0.0, 1.0, 1) == [0.5]
    assert next_levels(0.0, 1.0, 3) == pytest.approx([0.25, 0.5, 0.75])
    assert next_levels(0.5, 1.0, 2) == pytest.approx([2 / 3, 5 / 6])
    assert next_levels(0.0, 1.0, 2, first=0.3) == pytest.approx([0.3, 2 / 3])      # a size goal's level replaces one
    assert next_levels(0.0, 0.2, 2, first=0.3) == pytest.approx([0.2 / 3, 0.4 / 3])  # outside the interval: ignored


def test_parallel_steps_reach_the_serial_resolution():
    from equiv.apps.compress.search import parallel_steps
    for steps in range(1, 9):
        for k in range(1, 5):
            n = parallel_steps(steps, k)
            assert (k + 1) ** n >= 2 ** steps > (k + 1) ** (n - 1) or n == 1
    assert parallel_steps(5, 1) == 5 and parallel_steps(5, 2) == 4


@pytest.mark.parametrize("graph", [False, True])
def test_cli_compress_with_workers_checks_a_step_side_by_side(tmp_path, capsys, rng, graph):
    """--workers 2 (a real Dask cluster on 127.0.0.1): each bisection step certifies two levels at once, the
    result is proved, and the delivered file passes an independent check and onnxruntime re-check."""
    if graph:
        from test_graph_simplify import conv_dense_model
        path = tmp_path / "m.onnx"
        onnx.save(conv_dense_model(rng), str(path))
        region = ["--box", ",".join(["-0.3:0.3"] * 72)]
        target = ["--epsilon", "0.2", "--metric", "nonzero", "--makers", "weights,float16"]
        box = Box(np.full(72, -0.3), np.full(72, 0.3))
    else:
        path = DIGITS
        region = ["--spec", str(DIGITS_BALL)]
        target = ["--preserve", "top1", "--makers", "lowrank", "--no-simplify"]
        box, _ = load_region(spec=str(DIGITS_BALL))
    out, rep = tmp_path / "small.onnx", tmp_path / "r.json"
    code = main(["compress", str(path), *region, *target, "-o", str(out), "--report", str(rep), "--workers", "2",
                 "--bisect-steps", "2", "--time-limit", "120", "--check-time-limit", "20", "--no-progress"])
    report = json.loads(rep.read_text())
    capsys.readouterr()
    assert code == 0, report
    maker = "weights" if graph else "lowrank"
    levels = [c["level"] for c in report["candidates"] if c["maker"] == maker]
    assert len(levels) >= 2 and pytest.approx(sorted(levels[:2])) == [1 / 3, 2 / 3]     # step 1: two levels at once
    assert report["validation"]["ok"]
    if graph:
        assert main(["check", str(path), str(out), *region, "--epsilon", "0.2", "--no-progress"]) == 0
        capsys.readouterr()
        x = np.vstack([box.sample(10000, np.random.default_rng(5)), box.random_vertices(256, np.random.default_rng(5))])
        assert np.abs(OnnxRunner(str(path))(x) - OnnxRunner(str(out))(x)).max() <= 0.2
    else:
        _recheck(DIGITS, out, box, "top1", None)
    assert not list(tmp_path.glob(".*"))
