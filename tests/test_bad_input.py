"""The bad-input catalogue: everyday mistakes get exit 2 and a clear message, change no input and leave no file.

Each case runs the real CLI (`equiv.cli.main`) in a scratch folder holding copies of the shipped model
and spec; the test asserts the exit code, a phrase of the message, that every file there keeps its
sha256, and that no file appeared (hidden temporary files included).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import MODELS, tiny_net
from equiv.cli import main
from equiv.ir.chain_io import network_to_onnx


def _files(root: Path) -> dict:
    """Every file and folder under root (hidden ones too) with the sha256 of the files."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_symlink():
            out[str(p.relative_to(root))] = "link:" + os.readlink(p)
        elif p.is_file():
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
        elif p.is_dir():
            out[str(p.relative_to(root))] = "dir"
        else:
            out[str(p.relative_to(root))] = "special"
    return out


def _unsupported_model(path: Path):
    """A 2-input model with a Sigmoid: a real op equiv refuses."""
    W = numpy_helper.from_array(np.ones((2, 2), np.float32), "W")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Sigmoid", ["h"], ["y"])],
                          "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])], [W])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def _odd_models(folder: Path):
    """Models whose input shape equiv cannot know, or that ONNX's checker refuses (a handler once crashed on
    each: exit 4), or that onnxruntime cannot run."""
    R = np.random.default_rng(0).normal
    def save(name, nodes, x_dims, inits=(), out="y", x_shape=True):
        x = (helper.make_tensor_value_info("x", TensorProto.FLOAT, x_dims) if x_shape else
             helper.make_value_info("x", helper.make_tensor_type_proto(TensorProto.FLOAT, shape=None)))
        g = helper.make_graph(nodes, "g", [x], [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in inits])
        onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(folder / name))
    gemm = [helper.make_node("Gemm", ["x", "W", "b"], ["y"], transB=1)]
    wb = [("W", R(size=(2, 6)).astype(np.float32)), ("b", R(size=2).astype(np.float32))]
    save("noshape.onnx", gemm, None, wb, x_shape=False)
    save("zerobatch.onnx", gemm, [0, 6], wb)
    save("symfeature.onnx", gemm, ["N", "F"], wb)
    save("concat_no_axis.onnx", [helper.make_node("Concat", ["x"], ["y"])], [1, 6])
    save("pool_no_kernel.onnx", [helper.make_node("AveragePool", ["x"], ["p"]), helper.make_node("Flatten", ["p"], ["y"])],
         [1, 1, 2, 3])
    save("transpose_bad_perm.onnx", [helper.make_node("Transpose", ["x"], ["y"], perm=[1, 0, 2])], [1, 6])
    relu = helper.make_node("Relu", ["x"], ["y"], domain="com.example")
    g = helper.make_graph([relu], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6])])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)]),
              str(folder / "domain.onnx"))
    save("bn_bad_size.onnx", [helper.make_node("BatchNormalization", ["x", "s", "B", "m", "v"], ["y"])], [1, 6],
         [(k, np.abs(R(size=4)).astype(np.float32)) for k in "sBmv"])


@pytest.fixture
def scratch(tmp_path):
    """A folder with M.onnx, P.vnnlib, S.onnx (an earlier output), a family-less non-empty folder, a fifo,
    links to the model, and malformed inputs; the test runs from there."""
    shutil.copy(MODELS / "digits_mlp.onnx", tmp_path / "M.onnx")
    shutil.copy(MODELS / "digits_mlp_ball.vnnlib", tmp_path / "P.vnnlib")
    shutil.copy(MODELS / "digits_mlp.onnx", tmp_path / "S.onnx")
    (tmp_path / "dir").mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine\n")
    os.mkfifo(tmp_path / "fifo")
    os.symlink(tmp_path / "M.onnx", tmp_path / "link.onnx")
    shutil.copy(MODELS / "digits_mlp_center.npy", tmp_path / "c.npy")
    os.link(tmp_path / "M.onnx", tmp_path / "hard.onnx")
    (tmp_path / "empty.onnx").write_bytes(b"")
    (tmp_path / "junk.onnx").write_bytes(b"\x08\x07not a protobuf at all\xff\xfe" * 7)
    _unsupported_model(tmp_path / "sigmoid.onnx")
    _odd_models(tmp_path)
    onnx.save(network_to_onnx(tiny_net([([[1.0, -1.0], [0.5, 2.0]], [0.0, 0.1]), ([[1.0, 1.0]], [0.0])])),
              str(tmp_path / "tiny2.onnx"))
    onnx.save(network_to_onnx(tiny_net([([[1.0, -1.0], [0.5, 2.0]], [0.0, 0.1]), ([[3e38, 3e38]], [0.0])])),
              str(tmp_path / "huge.onnx"))        # finite float32 weights whose products overflow
    text = (tmp_path / "P.vnnlib").read_text()
    (tmp_path / "unbalanced.vnnlib").write_text(text + "\n(assert (<= X_0 1.0)\n")
    (tmp_path / "coupled.vnnlib").write_text(text + "\n(assert (<= (+ X_0 X_1) 1.0))\n")
    (tmp_path / "unknown_cmd.vnnlib").write_text(text + "\n(frobnicate X_0)\n")
    c = np.load(tmp_path / "c.npy")
    np.save(tmp_path / "c_str.npy", c.astype(str))                # centres that are no real numbers (exit 4 before)
    np.save(tmp_path / "c_complex.npy", c.astype(complex))       # (the imaginary part was dropped with a warning)
    np.savez(tmp_path / "c.npz", c=c)
    (tmp_path / "res").mkdir()
    (tmp_path / "res" / "quick.json").write_text("{}\n")       # a full run's results
    cwd = os.getcwd()
    os.chdir(tmp_path)
    yield tmp_path
    os.chdir(cwd)


SIMPLIFY = ["simplify", "M.onnx", "--spec", "P.vnnlib"]
CHECK = ["check", "M.onnx", "S.onnx", "--spec", "P.vnnlib", "--epsilon", "0.1"]
BOX16 = ",".join(["0:1"] * 16)
BOX6 = ",".join(["0:1"] * 6)

# (id, argv, phrase of the message on stderr)
CATALOGUE = [
    ("report-overwrites-model", SIMPLIFY + ["-o", "out.onnx", "--report", "M.onnx"], "input file"),
    ("check-report-overwrites-model", CHECK + ["--report", "M.onnx"], "input file"),
    ("check-report-overwrites-spec", CHECK + ["--report", "P.vnnlib"], "input file"),
    ("output-overwrites-spec", SIMPLIFY + ["-o", "P.vnnlib"], "input file"),
    ("output-is-model", SIMPLIFY + ["-o", "M.onnx"], "input file"),
    ("output-via-dotdot", SIMPLIFY + ["-o", "dir/../M.onnx"], "input file"),
    ("output-hard-link-of-model", SIMPLIFY + ["-o", "hard.onnx"], "input file"),
    ("output-symlink-to-model", SIMPLIFY + ["-o", "link.onnx"], "symbolic link"),
    ("report-equals-output", SIMPLIFY + ["-o", "S.onnx", "--report", "S.onnx"], "simplified model"),
    ("report-is-fifo", SIMPLIFY + ["-o", "out.onnx", "--report", "fifo"], "not a regular file"),
    ("report-is-dev-null", SIMPLIFY + ["-o", "out.onnx", "--report", "/dev/null"], "not a regular file"),
    ("output-is-folder", SIMPLIFY + ["-o", "dir"], "folder"),
    ("output-in-missing-folder", SIMPLIFY + ["-o", "nowhere/out.onnx"], "does not exist"),
    ("slice-into-foreign-folder", ["slice", "M.onnx", "--spec", "P.vnnlib", "-o", "notes", "--max-slices", "2"],
     "not empty"),
    ("slice-into-foreign-folder-force", ["slice", "M.onnx", "--spec", "P.vnnlib", "-o", "notes", "--force"],
     "not empty"),
    ("slice-into-file", ["slice", "M.onnx", "--spec", "P.vnnlib", "-o", "S.onnx"], "not a folder"),
    ("time-limit-zero", SIMPLIFY + ["-o", "out.onnx", "--time-limit", "0"], "positive"),
    ("time-limit-negative", SIMPLIFY + ["-o", "out.onnx", "--time-limit", "-5"], "positive"),
    ("milp-budget-negative", SIMPLIFY + ["-o", "out.onnx", "--milp-budget", "-5"], "positive"),
    ("check-time-limit-negative", CHECK + ["--time-limit", "-1"], "positive"),
    ("tolerance-negative", SIMPLIFY + ["-o", "out.onnx", "--tolerance", "-1"], "positive"),
    ("tolerance-zero", SIMPLIFY + ["-o", "out.onnx", "--tolerance", "0"], "positive"),
    ("seed-negative", SIMPLIFY + ["-o", "out.onnx", "--seed", "-1"], ">= 0"),
    ("check-seed-negative", CHECK + ["--seed", "-1"], ">= 0"),
    ("box-beyond-float32", ["simplify", "M.onnx", "--box", ",".join(["1e39:1e39"] + ["0:1"] * 63), "-o", "out.onnx"],
     "float32"),
    ("box-overflows-the-model", ["simplify", "M.onnx", "--box", ",".join(["-1e38:1e38"] * 64), "-o", "out.onnx"],
     "not finite in float32"),
    ("check-model-overflows-float32", ["check", "huge.onnx", "tiny2.onnx", "--box", "-2:2,-2:2", "--epsilon", "0.1"],
     "overflow float32"),
    ("check-top1-with-epsilon", ["check", "M.onnx", "S.onnx", "--spec", "P.vnnlib", "--norm", "top1", "--epsilon",
                                 "0.5"], "takes none"),
    ("compress-top1-with-epsilon", ["compress", "M.onnx", "--spec", "P.vnnlib", "--preserve", "top1", "--epsilon",
                                    "0.5", "-o", "out.onnx"], "takes none"),
    ("model-is-a-folder", ["simplify", "dir", "--spec", "P.vnnlib", "-o", "out.onnx"], "is a folder"),
    ("center-not-npy", ["simplify", "M.onnx", "--center", "P.vnnlib", "--radius", "0.1", "-o", "out.onnx"],
     "not a .npy"),
    ("simplify-epsilon-negative", SIMPLIFY + ["-o", "out.onnx", "--epsilon=-1"], "positive and finite"),
    ("simplify-epsilon-nan", SIMPLIFY + ["-o", "out.onnx", "--epsilon", "nan"], "positive and finite"),
    ("simplify-epsilon-zero", SIMPLIFY + ["-o", "out.onnx", "--epsilon", "0"], "leave --epsilon out"),
    ("check-epsilon-zero", CHECK[:-1] + ["0"], "use --measure without --epsilon"),
    ("scheduler-not-an-address", SIMPLIFY + ["-o", "out.onnx", "--scheduler", "nowhere"], "no Dask scheduler"),
    ("center-of-strings", ["simplify", "M.onnx", "--center", "c_str.npy", "--radius", "0.1", "-o", "out.onnx"],
     "real numbers"),
    ("center-complex", ["simplify", "M.onnx", "--center", "c_complex.npy", "--radius", "0.1", "-o", "out.onnx"],
     "dtype complex128"),
    ("center-npz", ["simplify", "M.onnx", "--center", "c.npz", "--radius", "0.1", "-o", "out.onnx"], ".npz archive"),
    ("clip-empty", ["simplify", "M.onnx", "--center", "c.npy", "--radius", "0.1", "--clip", "", "-o", "out.onnx"],
     "--clip is empty"),
    ("workers-and-scheduler", SIMPLIFY + ["-o", "out.onnx", "--workers", "1", "--scheduler", "tcp://127.0.0.1:9"],
     "give one of them"),
    ("workers-beyond-the-cores", SIMPLIFY + ["-o", "out.onnx", "--workers", "100000"], "each worker is a process"),
    # bench: refused before any case runs (a hunt: --plot overwrote a benchmark network, --limit replaced results)
    ("bench-out-empty", ["bench", "--suite", "quick", "--out", ""], "--out is empty"),
    ("bench-out-is-a-file", ["bench", "--suite", "quick", "--out", "M.onnx"], "is a file"),
    ("bench-plot-not-png", ["bench", "--suite", "solvers", "--plot", "S.onnx"], "ending in .png"),
    ("bench-unknown-group", ["bench", "--suite", "equivalence", "--group", "nope"], "no group"),
    ("bench-limit-over-results", ["bench", "--suite", "quick", "--limit", "1", "--out", "res"], "smoke run"),
    ("bench-unknown-suite", ["bench", "--suite", "nope"], "unknown suite 'nope'; available: core, quick, solvers"),
    ("bench-ignored-limit", ["bench", "--suite", "scale", "--limit", "1"], "the scale suite does not use --limit"),
    ("bench-ignored-plot", ["bench", "--suite", "quick", "--plot", "p.png", "--time-limit", "5"],
     "the quick suite does not use --plot (it reads --limit, --milp-budget, --time-limit)"),
    ("bench-ignored-workers", ["bench", "--suite", "graphs", "--workers", "2", "--group", "x"],
     "does not use --group, --workers"),
    ("bounds-unknown-backend", ["bounds", "M.onnx", "--spec", "P.vnnlib", "--backend", "foo"], "unknown solver backend"),
    ("clip-misses-the-ball", ["simplify", "M.onnx", "--center", "c.npy", "--radius", "0.1", "--clip", "2:3",
                              "-o", "out.onnx"], "empty region"),
    ("check-journal-is-model-b", CHECK + ["--journal", "S.onnx"], "--journal"),
    ("report-dash", SIMPLIFY + ["-o", "out.onnx", "--report", "-"],
     "the report path '-' is not read as stdout: give a file name (--json prints the report on stdout)"),
    ("scheduler-empty", SIMPLIFY + ["-o", "out.onnx", "--scheduler="], "--scheduler needs an address"),
    ("simplify-journal-is-the-default-output", SIMPLIFY + ["--journal", "M.simplified.onnx"],
     "refusing to write the journal to M.simplified.onnx: that is the simplified model"),
    ("simplify-journal-is-the-model", SIMPLIFY + ["-o", "out.onnx", "--journal", "M.onnx"],
     "refusing to write the journal to M.onnx: that is the input file"),
    ("check-journal-is-report", CHECK + ["--journal", "r.json", "--report", "r.json"], "--journal"),
    ("check-different-sizes-on-workers", ["check", "M.onnx", "tiny2.onnx", "--spec", "P.vnnlib", "--epsilon", "0.1",
                                          "--workers", "1"], "different inputs"),
    ("check-epsilons-of-another-length", CHECK[:-1] + ["0.1,0.1"], "epsilon has 2 values"),
    ("validation-samples-zero", SIMPLIFY + ["-o", "out.onnx", "--validation-samples", "0"], ">= 1"),
    ("max-slices-zero", ["slice", "M.onnx", "--spec", "P.vnnlib", "-o", "fam", "--max-slices", "0"], ">= 1"),
    ("samples-not-a-number", SIMPLIFY + ["-o", "out.onnx", "--samples", "many"], "whole number"),
    ("clip-with-spec", SIMPLIFY + ["-o", "out.onnx", "--clip", "0:1"], "--clip"),
    ("empty-model", ["simplify", "empty.onnx", "--spec", "P.vnnlib", "-o", "out.onnx"], "empty"),
    ("corrupt-model", ["simplify", "junk.onnx", "--spec", "P.vnnlib", "-o", "out.onnx"], "junk.onnx"),
    ("missing-model", ["simplify", "nope.onnx", "--spec", "P.vnnlib", "-o", "out.onnx"], "not found"),
    ("unsupported-op", ["simplify", "sigmoid.onnx", "--box", "0:1,0:1", "-o", "out.onnx"], "Sigmoid"),
    ("input-without-shape", ["simplify", "noshape.onnx", "--box", BOX6, "-o", "out.onnx"], "declares no shape"),
    ("input-batch-of-zero", ["simplify", "zerobatch.onnx", "--box", BOX6, "-o", "out.onnx"], "has size 0"),
    ("input-symbolic-feature", ["simplify", "symfeature.onnx", "--box", BOX6, "-o", "out.onnx"], "'F', not a fixed"),
    ("invalid-onnx-concat", ["simplify", "concat_no_axis.onnx", "--box", BOX6, "-o", "out.onnx"], "not valid ONNX"),
    ("invalid-onnx-pool", ["simplify", "pool_no_kernel.onnx", "--box", BOX6, "-o", "out.onnx"], "not valid ONNX"),
    ("invalid-onnx-perm", ["simplify", "transpose_bad_perm.onnx", "--box", BOX6, "-o", "out.onnx"], "not valid ONNX"),
    ("compress-top1-one-output", ["compress", "tiny2.onnx", "--box", "-1:1,-1:1", "--preserve", "top1", "-o",
                                  "out.onnx"], "top-1 class: use --preserve linf --epsilon E"),
    ("check-top1-one-output", ["check", "tiny2.onnx", "tiny2.onnx", "--box", "-1:1,-1:1", "--norm", "top1"],
     "--norm top1 needs a model with two or more outputs (classes); this one has 1, so every model would keep its "
     "top-1 class: use --norm linf --epsilon E"),
    # (simplify has no --preserve linf: it named an option simplify refuses, a hunt)
    ("simplify-top1-one-output", ["simplify", "tiny2.onnx", "--box", "-1:1,-1:1", "--preserve", "top1", "-o",
                                  "out.onnx"], "top-1 class: use --epsilon E"),
    ("op-of-another-domain", ["simplify", "domain.onnx", "--box", BOX6, "-o", "out.onnx"], "of domain 'com.example'"),
    ("ort-cannot-run", ["simplify", "bn_bad_size.onnx", "--box", BOX6, "-o", "out.onnx"], "onnxruntime cannot run"),
    ("vnnlib-unbalanced", ["simplify", "M.onnx", "--spec", "unbalanced.vnnlib", "-o", "out.onnx"], "unbalanced.vnnlib:"),
    ("vnnlib-coupled", ["simplify", "M.onnx", "--spec", "coupled.vnnlib", "-o", "out.onnx"], "coupled.vnnlib:"),
    ("vnnlib-unknown-command", ["simplify", "M.onnx", "--spec", "unknown_cmd.vnnlib", "-o", "out.onnx"],
     "unknown_cmd.vnnlib:"),
    ("missing-spec", ["simplify", "M.onnx", "--spec", "nope.vnnlib", "-o", "out.onnx"], "not found"),
    ("two-regions", SIMPLIFY + ["--box", BOX16, "-o", "out.onnx"], "exactly one region"),
    ("box-wrong-dimension", ["simplify", "M.onnx", "--box", "0:1,0:1", "-o", "out.onnx"], "dimensions"),
    ("box-malformed", ["simplify", "M.onnx", "--box", "0:1,zero:1", "-o", "out.onnx"], "lo:hi"),
    ("box-empty-interval", ["simplify", "M.onnx", "--box", ",".join(["1:0"] * 64), "-o", "out.onnx"], "above upper"),
    ("unknown-backend", SIMPLIFY + ["-o", "out.onnx", "--backend", "cplex"], "unknown solver backend"),
    ("check-without-epsilon", ["check", "M.onnx", "S.onnx", "--spec", "P.vnnlib"], "--epsilon"),
    ("check-bad-epsilon", ["check", "M.onnx", "S.onnx", "--spec", "P.vnnlib", "--epsilon", "x"], "--epsilon"),
    ("check-different-sizes", ["check", "M.onnx", "tiny2.onnx", "--spec", "P.vnnlib", "--epsilon", "0.1"],
     "different inputs"),
    ("verify-missing-family", ["slice", "--verify", "nofamily"], "not found"),
    ("bounds-unknown-method", ["bounds", "M.onnx", "--spec", "P.vnnlib", "--method", "magic"], "invalid choice"),
]


def run_cli(argv, capsys) -> tuple[int, str]:
    """Exit code and stderr of one CLI run (argparse's own errors arrive as SystemExit)."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("argv,phrase", [c[1:] for c in CATALOGUE], ids=[c[0] for c in CATALOGUE])
def test_bad_input_catalogue(scratch, capsys, argv, phrase):
    before = _files(scratch)
    devnull = os.stat("/dev/null")
    code, err = run_cli(argv + ["--no-progress"] if argv[0] in ("simplify", "check", "slice") else argv, capsys)
    assert code == 2, err
    assert phrase in err, err
    assert "Traceback" not in err
    assert _files(scratch) == before                     # no input changed, nothing appeared
    now = os.stat("/dev/null")
    assert (now.st_mode, now.st_rdev) == (devnull.st_mode, devnull.st_rdev)


def test_catalogue_is_large_enough():
    assert len(CATALOGUE) >= 25
