"""The output guard and the atomic writers: what may be written where, and that nothing is left behind."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest

from conftest import needs_bench, needs_cifar, tiny_net
from equiv.artifacts.files import (OutputGuard, claim_family_dir, replace_dir_atomic, save_onnx_atomic,
                             write_bytes_atomic, write_json_atomic)
from equiv.errors import InputFileError
from equiv.ir.chain_io import load_onnx, network_to_onnx


def _listing(folder):
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture
def model_file(tmp_path, rng):
    net = tiny_net([(rng.normal(size=(3, 2)), rng.normal(size=3)), (rng.normal(size=(2, 3)), rng.normal(size=2))])
    path = tmp_path / "in.onnx"
    save_onnx_atomic(network_to_onnx(net), path)
    return path, net


def test_guard_refuses_every_alias_of_an_input(tmp_path, model_file):
    src, _ = model_file
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.onnx").symlink_to(src)
    os.link(src, tmp_path / "hard.onnx")
    guard = OutputGuard([src])
    for alias, phrase in ((src, "input file"), (tmp_path / "sub" / ".." / "in.onnx", "input file"),
                          (tmp_path / "hard.onnx", "input file"), (tmp_path / "link.onnx", "symbolic link")):
        with pytest.raises(InputFileError, match=phrase):
            guard.claim(alias, "report")


def test_guard_refuses_a_second_claim_special_files_and_folders(tmp_path):
    guard = OutputGuard([])
    guard.claim(tmp_path / "a.onnx", "simplified model")
    with pytest.raises(InputFileError, match="simplified model"):
        guard.claim(tmp_path / "a.onnx", "report")
    with pytest.raises(InputFileError, match="not a regular file"):
        guard.claim("/dev/null", "report")                   # claim only checks: /dev/null is never touched
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(InputFileError, match="not a regular file"):
        guard.claim(tmp_path / "fifo", "report")
    with pytest.raises(InputFileError, match="folder"):
        guard.claim(tmp_path, "report")
    with pytest.raises(InputFileError, match="does not exist"):
        guard.claim(tmp_path / "missing" / "r.json", "report")
    guard.claim(tmp_path / "b.json", "report")               # a new name in an existing folder is fine


def test_atomic_write_never_replaces_a_special_file_and_cleans_up(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(InputFileError, match="not a regular file"):
        write_bytes_atomic(tmp_path / "fifo", b"data")
    assert stat.S_ISFIFO(os.lstat(tmp_path / "fifo").st_mode)
    assert _listing(tmp_path) == ["fifo"]                     # the temporary file is gone
    (tmp_path / "d").mkdir()
    with pytest.raises(InputFileError):
        write_json_atomic({"a": 1}, tmp_path / "d")
    assert _listing(tmp_path) == ["d", "fifo"] and _listing(tmp_path / "d") == []


def test_atomic_write_replaces_a_regular_file_with_the_usual_mode(tmp_path, model_file, rng):
    src, net = model_file
    out = tmp_path / "out.onnx"
    out.write_bytes(b"old")
    save_onnx_atomic(network_to_onnx(net), out)
    assert _listing(tmp_path) == ["in.onnx", "out.onnx"]
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o666 & ~mask
    x = rng.uniform(-1, 1, size=(10, 2))
    np.testing.assert_allclose(load_onnx(out).forward(x), net.forward(x), rtol=1e-6, atol=1e-6)


def test_family_folder_rules_and_swap(tmp_path):
    guard = OutputGuard([tmp_path / "model.onnx"])
    made = lambda d: (d / "manifest.json").exists()          # noqa: E731
    known = lambda d: {"manifest.json", "a.onnx"}             # noqa: E731
    claim_family_dir(tmp_path / "new", guard, False, made, known)      # a new folder
    (tmp_path / "empty").mkdir()
    claim_family_dir(tmp_path / "empty", guard, False, made, known)    # an empty one
    fam = tmp_path / "fam"
    fam.mkdir()
    (fam / "manifest.json").write_text("{}")
    (fam / "a.onnx").write_text("old")
    with pytest.raises(InputFileError, match="--force"):
        claim_family_dir(fam, guard, False, made, known)
    claim_family_dir(fam, guard, True, made, known)
    (fam / "mine.txt").write_text("user's")
    with pytest.raises(InputFileError, match="did not make"):
        claim_family_dir(fam, guard, True, made, known)
    (fam / "mine.txt").unlink()

    def failing(folder):
        (folder / "a.onnx").write_text("half")
        raise RuntimeError("disk full")
    with pytest.raises(RuntimeError):
        replace_dir_atomic(fam, failing)
    assert (fam / "a.onnx").read_text() == "old"                 # the old family is untouched
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]   # no staging folder left
    replace_dir_atomic(fam, lambda folder: (folder / "manifest.json").write_text('{"new": 1}'))
    assert _listing(fam) == ["manifest.json"] and "new" in (fam / "manifest.json").read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_family_folder_may_not_hold_an_input(tmp_path):
    fam = tmp_path / "fam"
    fam.mkdir()
    (fam / "model.onnx").write_text("x")
    with pytest.raises(InputFileError, match="input file"):
        claim_family_dir(fam, OutputGuard([fam / "model.onnx"]), True, lambda d: True, lambda d: {"model.onnx"})


@needs_bench
def test_validation_allows_float32_rounding_relative_to_the_outputs(tmp_path):
    """Validation passes a point when |a - b| <= tolerance + 2^-16 x |output|: ACAS Xu 1_1 simplified on inputs of
    1000 (outputs ~113) differs from the original by float32 rounding alone, above the absolute 1e-4 that once
    made it a "BUG" (exit 1); the same model with an output bias moved by 0.01 still fails."""
    import json
    from conftest import acas_path
    from equiv.artifacts.validate import ROUNDING_RELATIVE, OnnxRunner, compare_on_points
    from equiv.cli import main
    src = acas_path(1, 1)
    box = "1000:1000,1000:1000,0:0,0:0,0:0"
    out, report = tmp_path / "s.onnx", tmp_path / "r.json"
    assert main(["simplify", str(src), f"--box={box}", "-o", str(out), "--report", str(report), "--no-progress"]) == 0
    val = json.loads(report.read_text())["validation"]
    assert val["ok"] and val["rounding_relative"] == ROUNDING_RELATIVE
    net = load_onnx(src)
    net.dense[-1].b[:] += 0.01                       # a real difference, at every point
    moved = tmp_path / "moved.onnx"
    import onnx
    onnx.save(network_to_onnx(net), str(moved))
    x = {"point": np.array([[1000.0, 1000.0, 0.0, 0.0, 0.0]])}
    a, b = OnnxRunner(str(src)), OnnxRunner(str(moved))
    assert abs(float(np.abs(a(x["point"])).max()) * ROUNDING_RELATIVE) < 0.01 - 1e-4
    assert not compare_on_points(a, b, x, 1e-4).ok
    assert compare_on_points(a, OnnxRunner(str(out)), x, 1e-4).ok


def test_validation_allows_the_originals_own_float32_error(tmp_path):
    """Inputs near 1e6: intermediate values ~1e7 make the original's own float32 error (measured against its
    float64 function) ~14 on outputs of ~1e3, far above 2^-16 x |output|; two correct float32 models differed
    by 28 there ("BUG", exit 1).  Three times that error is allowed as rounding, and a real difference of
    100 x that error is still caught."""
    import json
    from conftest import MODELS
    from equiv.artifacts.validate import NOISE_FACTOR, OnnxRunner, compare_on_points
    from equiv.cli import main
    from equiv.spec.region import Box
    src = MODELS / "digits_mlp.onnx"
    out, report = tmp_path / "s.onnx", tmp_path / "r.json"
    assert main(["simplify", str(src), "--box", ",".join(["1e6:1000001"] * 64), "-o", str(out), "--report",
                 str(report), "--no-progress"]) == 0
    val = json.loads(report.read_text())["validation"]
    assert val["ok"] and val["float32_noise"] > 1.0 and val["max_abs_diff"] <= NOISE_FACTOR * val["float32_noise"]
    net = load_onnx(src)
    net.dense[-1].b[:] += 100 * val["float32_noise"]
    moved = tmp_path / "moved.onnx"
    import onnx
    onnx.save(network_to_onnx(net), str(moved))
    box = Box(np.full(64, 1e6), np.full(64, 1e6 + 1))
    pts = {"random": box.sample(500, np.random.default_rng(0))}
    rep = compare_on_points(OnnxRunner(str(src)), OnnxRunner(str(moved)), pts, 1e-4, box,
                            exact=load_onnx(src).forward)
    assert not rep.ok and rep.float32_noise > 1.0


def _onnx_mlp(layers):
    """A float32 ONNX model y = W_k(... relu(W_1 x + b_1) ...) + b_k from [(W, b)] (W: out x in)."""
    from onnx import TensorProto, helper, numpy_helper
    nodes, inits, cur = [], [], "x"
    for i, (W, b) in enumerate(layers):
        W, b = np.asarray(W, np.float32), np.asarray(b, np.float32)
        inits += [numpy_helper.from_array(W.T.copy(), f"W{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes += [helper.make_node("MatMul", [cur, f"W{i}"], [f"m{i}"]), helper.make_node("Add", [f"m{i}", f"b{i}"], [f"z{i}"])]
        cur = f"z{i}"
        if i < len(layers) - 1:
            nodes.append(helper.make_node("Relu", [cur], [f"h{i}"]))
            cur = f"h{i}"
    nodes.append(helper.make_node("Identity", [cur], ["y"]))
    n_in, n_out = np.asarray(layers[0][0]).shape[1], np.asarray(layers[-1][0]).shape[0]
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, n_in])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n_out])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_validation_rechecks_float32_failures_in_float64():
    """y = relu(1e7 x + 0.5) - relu(1e7 x) is 0.5 in the reals on x in [1, 2], but float32 rounds 1e7 x + 0.5
    to a multiple of 1 or 2: against the constant 0.5 it differs by up to 1, a false "BUG".  Rerun in float64
    (ONNX's reference evaluator) the points agree, and validation passes and says why; a constant 0.75, a
    real difference, still fails after the recheck."""
    from equiv.artifacts.validate import OnnxRunner, compare_on_points
    from equiv.spec.region import Box
    box = Box(np.array([1.0]), np.array([2.0]))
    pts = {"random": box.sample(400, np.random.default_rng(0)), "vertices": box.vertices(8, np.random.default_rng(0))}
    rounded = OnnxRunner(_onnx_mlp([([[1e7], [1e7]], [0.5, 0.0]), ([[1.0, -1.0]], [0.0])]))
    for const, ok in ((0.5, True), (0.75, False)):
        other = OnnxRunner(_onnx_mlp([([[0.0]], [0.0]), ([[0.0]], [const])]))
        rep = compare_on_points(rounded, other, pts, 1e-4, box)
        assert rep.excess > 0.4                        # float32 alone fails in both cases
        r = rep.float64_recheck
        assert r["of"] > 100 and r["points"] == 128 and rep.ok is ok
        assert (r["max_abs_diff"] < 1e-6) if ok else abs(r["max_abs_diff"] - 0.25) < 1e-9
        assert ("float32 rounding" in rep.line()) is ok and rep.to_json()["ok"] is ok
    same = compare_on_points(rounded, rounded, pts, 1e-4, box)
    assert same.ok and same.float64_recheck == {}


# a 1-3-1-1 net (a hunt) whose two active channels fold into a layer with bias -6.7e8: stored in float32 the
# folded weights move the written file's function by 1.9e-4 at x = 447.17, where float32 evaluation moves the
# original's by 1.2e-3; the reduction itself is exact in float64 (1.9e-12)
FOLD_NET = [([[2132.441162109375], [1337.7821044921875], [635.1146240234375]],
             [-719.6537475585938, -174314.015625, 25263.810546875]),
            ([[-8.157310485839844, 1816.8807373046875, -320.2622375488281]], [-663362560.0]),
            ([[1.6155165212694556e-05]], [-2.4716412099223817e-06])]
FOLD_BOX = "130.29161071777344:447.1712951660156"


def test_folded_weights_stored_in_float32_are_rounding_not_a_bug(tmp_path, capsys):
    """simplify of FOLD_NET exits 0 (it was exit 1, "BUG"), and says the float64 difference is the float32
    storage of an exact reduction; the same difference from a reduction that is wrong in float64 still fails."""
    import onnx
    from equiv.artifacts.validate import OnnxRunner, compare_on_points
    from equiv.cli import main
    from equiv.spec.region import box_from_string
    onnx.save(_onnx_mlp(FOLD_NET), tmp_path / "fold.onnx")
    code = main(["simplify", str(tmp_path / "fold.onnx"), "--box", FOLD_BOX, "--method", "deeppoly", "--no-progress",
                 "-o", str(tmp_path / "s.onnx"), "--report", str(tmp_path / "r.json")])
    assert code == 0, capsys.readouterr().err
    val = json.loads((tmp_path / "r.json").read_text())["validation"]
    r = val["float64_recheck"]
    assert val["ok"] and r["weight_rounding"] > 1e-4 >= r["excess"]
    assert "the reduction is exact in float64" in capsys.readouterr().out
    # the same files, but told the written model was meant to compute the original plus 1e-3: no excuse
    box = box_from_string(FOLD_BOX)
    a, b = OnnxRunner(str(tmp_path / "fold.onnx")), OnnxRunner(str(tmp_path / "s.onnx"))
    pts = {"vertices": box.vertices(2, np.random.default_rng(0))}
    assert not compare_on_points(a, b, pts, 1e-4, box).ok          # (without the intended function: a "BUG")
    assert compare_on_points(a, b, pts, 1e-4, box, intended=a.float64).ok
    wrong = compare_on_points(a, b, pts, 1e-4, box, intended=lambda x: a.float64(x) + 1e-3)
    assert not wrong.ok and "weight_rounding" not in wrong.float64_recheck


@needs_cifar
def test_float64_runs_of_the_real_cnns_match_onnxruntime():
    """`as_float64` + ONNX's reference evaluator run every shared CIFAR net (Conv, Pad, AveragePool, Transpose,
    Gemm, residual Adds) in float64, within float32 rounding of onnxruntime's float32 outputs."""
    from conftest import CIFAR
    from equiv.artifacts.validate import OnnxRunner
    rng = np.random.default_rng(0)
    for path in sorted(CIFAR.glob("*.onnx")):
        run = OnnxRunner(str(path))
        x = rng.random((3, sum(run.sizes)))
        y32, y64 = run(x), run.float64(x)
        assert y64.dtype == np.float64 and y64.shape == y32.shape
        assert np.abs(y64 - y32).max() <= 1e-4 * max(1.0, np.abs(y64).max()), path.name


def test_a_failed_validation_names_the_point_that_fails(tmp_path):
    """A failure is reported at the point of largest excess over the rounding allowance, not at the point of
    largest |diff|: there a large output may be within its allowance (here 10 at an output of 1e6, allowed
    2^-16 x 1e6 = 15), and the message named a point that passes (found by a hunt, stop 46)."""
    import onnx
    from equiv.artifacts.validate import OnnxRunner, compare_on_points
    hidden = ([[1.0], [1.0]], [0.0, -1e5])
    a = tiny_net([hidden, ([[1.0, 0.0]], [0.0])])
    b = tiny_net([hidden, ([[1.0, 10.0 / 9e5]], [0.01])])     # +0.01 everywhere, +10.01 at x = 1e6
    pa, pb = tmp_path / "a.onnx", tmp_path / "b.onnx"
    onnx.save(network_to_onnx(a), str(pa))
    onnx.save(network_to_onnx(b), str(pb))
    val = compare_on_points(OnnxRunner(str(pa)), OnnxRunner(str(pb)), {"p": np.array([[1e6], [0.0]])}, 1e-4)
    assert not val.ok
    assert val.worst_input == [1e6] and abs(val.max_abs_diff - 10.01) < 1e-2
    assert val.failing_input == [0.0] and abs(val.failing_diff - 0.01) < 1e-6
    assert "by 0.01 " in val.failure() and "at input [0.0]" in val.failure()
    ok = compare_on_points(OnnxRunner(str(pa)), OnnxRunner(str(pa)), {"p": np.array([[1e6], [0.0]])}, 1e-4)
    assert ok.ok and ok.failing_input == []
