"""The ONNX import on models built to trip it (found by an adversarial hunt): constant subgraphs folded as
ONNX computes them (float16 casts round, integer division truncates, Flatten's last axis), models refused
with exit 2 and a clear message instead of an internal error (training mode, non-float32 models, non-finite
weights, a declared output shape the model does not compute), and valid patterns that once crashed or were
refused (a graph output inside equiv's own masked-ReLU pattern, tensor names like equiv's fresh ones, a Cast
of the weights of a dense chain, a rank-1 output).  Every bound is checked against onnxruntime."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from equiv.artifacts.validate import OnnxRunner
from equiv.cli import main

N = helper.make_node


def _save(path, nodes, inputs, outputs, inits, opset=17, check=True):
    init = [numpy_helper.from_array(np.asarray(v, dt), n) for n, v, dt in inits]
    m = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, init),
                          opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    if check:
        onnx.checker.check_model(m, full_check=True)
    onnx.save(m, str(path))
    return path


def _vi(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


F32, I64 = np.float32, np.int64


def _bounds(capsys, path, box):
    assert main(["bounds", str(path), "--box", box, "--json", "--no-progress"]) == 0
    return json.loads(capsys.readouterr().out)


def _output_bounds(report) -> tuple[float, float]:
    layer = next(L for L in report["layers"] if L["kind"] == "output")
    return float(np.min(layer["lo"])), float(np.max(layer["hi"]))


@pytest.mark.parametrize("case", ["float16_cast", "integer_division"])
def test_constant_subgraphs_fold_as_onnx_computes_them(case, tmp_path, capsys):
    """y = relu(x * k - s) at one point where onnxruntime gives y = 0 exactly: k folded in float64 instead of as
    ONNX computes it (1.00005 cast to float16 is 1.0; int64 1000001 / 1000 is 1000) made z > 0, and equiv's
    'sound' bounds excluded the real output."""
    if case == "float16_cast":
        nodes = [N("Cast", ["C"], ["c16"], to=TensorProto.FLOAT16), N("Cast", ["c16"], ["k"], to=TensorProto.FLOAT)]
        inits = [("C", [1.00005], F32)]
        x, s = 1000.0, 1000.02
    else:
        nodes = [N("Div", ["a", "b"], ["q"]), N("Cast", ["q"], ["k"], to=TensorProto.FLOAT)]
        inits = [("a", 1000001, I64), ("b", 1000, I64)]
        x, s = 1000.0, 1000000.5
    nodes += [N("Mul", ["X", "k"], ["x1"]), N("Sub", ["x1", "S"], ["z"]), N("Relu", ["z"], ["h"]),
              N("Gemm", ["h", "V"], ["Y"])]
    path = _save(tmp_path / "m.onnx", nodes, [_vi("X", [1, 1])], [_vi("Y", [1, 1])],
                 inits + [("S", [[s]], F32), ("V", [[1.0]], F32)])
    real = float(OnnxRunner(str(path))(np.array([[x]]))[0, 0])
    assert real == 0.0
    lo, hi = _output_bounds(_bounds(capsys, path, f"{x}:{x}"))
    assert lo <= real <= hi and hi < 1e-6


def test_flatten_of_a_constant_on_its_last_axis(tmp_path, capsys):
    """Flatten(C (2, 3), axis=2) is (6, 1) in ONNX (it was folded to (1, 6): the model was refused)."""
    C = np.random.default_rng(0).normal(size=(2, 3))
    path = _save(tmp_path / "m.onnx", [N("Flatten", ["C"], ["cf"], axis=2), N("MatMul", ["X", "cf"], ["z"]),
                                       N("Relu", ["z"], ["Y"])], [_vi("X", [1, 6])], [_vi("Y", [1, 1])], [("C", C, F32)])
    rng = np.random.default_rng(1)
    X = rng.uniform(-1, 1, (500, 6))
    lo, hi = _output_bounds(_bounds(capsys, path, ",".join(["-1:1"] * 6)))
    Y = OnnxRunner(str(path))(X)
    assert lo <= Y.min() and Y.max() <= hi


def _conv_model(path, extra_nodes, extra_inits, opset=13):
    rng = np.random.default_rng(0)
    nodes = [N("Conv", ["X", "W"], ["z"]), *extra_nodes, N("Relu", ["d"], ["h"]), N("Flatten", ["h"], ["f"]),
             N("Gemm", ["f", "V"], ["Y"])]
    return _save(path, nodes, [_vi("X", [1, 1, 3, 3])], [_vi("Y", [1, 2])],
                 [("W", rng.normal(size=(2, 1, 2, 2)), F32), ("V", rng.normal(size=(8, 2)), F32), *extra_inits],
                 opset=opset)


BOX9 = ",".join(["-1:1"] * 9)


def _refused(capsys, path, phrase):
    assert main(["bounds", str(path), "--box", BOX9 if "conv" in path.name else "-1:1,-1:1,-1:1",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert phrase in err and "internal error" not in err, err


def test_training_mode_is_refused(tmp_path, capsys):
    """Dropout with a constant true training_mode and BatchNormalization with training_mode=1 compute training
    behaviour in onnxruntime: refused (exit 2), not read as inference ops (the import check then failed, exit 4)."""
    drop = _conv_model(tmp_path / "conv_drop.onnx", [N("Dropout", ["z", "ratio", "train"], ["d"])],
                       [("ratio", 0.5, F32), ("train", True, np.bool_)])
    _refused(capsys, drop, "training mode")
    bn = [N("BatchNormalization", ["z", "sc", "bb", "mu", "var"], ["d", "rm", "rv"], training_mode=1)]
    stats = [(n, v, F32) for n, v in (("sc", [1, 1]), ("bb", [0, 0]), ("mu", [0, 0]), ("var", [1, 1]))]
    _refused(capsys, _conv_model(tmp_path / "conv_bn.onnx", bn, stats, opset=15), "training mode")


def _dense(path, W=None, dtype=TensorProto.FLOAT, out_shape=(1, 2), check=True):
    rng = np.random.default_rng(0)
    W = rng.normal(size=(3, 4)) if W is None else W
    npdt = {TensorProto.FLOAT: F32, TensorProto.FLOAT16: np.float16, TensorProto.DOUBLE: np.float64}[dtype]
    return _save(path, [N("MatMul", ["X", "W"], ["z"]), N("Relu", ["z"], ["h"]), N("MatMul", ["h", "V"], ["Y"])],
                 [_vi("X", [1, 3], dtype)], [_vi("Y", list(out_shape), dtype)],
                 [("W", W, npdt), ("V", rng.normal(size=(4, 2)), npdt)], check=check)


def test_models_equiv_cannot_read_are_refused_with_the_reason(tmp_path, capsys):
    W = np.random.default_rng(0).normal(size=(3, 4))
    W[1, 2] = np.nan
    _refused(capsys, _dense(tmp_path / "nan.onnx", W), "NaN or infinite")
    _refused(capsys, _dense(tmp_path / "f16.onnx", dtype=TensorProto.FLOAT16), "is float16: equiv reads float32")
    _refused(capsys, _dense(tmp_path / "f64.onnx", dtype=TensorProto.DOUBLE), "is double: equiv reads float32")
    # onnx.checker and onnxruntime accept a declared output shape the model does not compute (a warning)
    _refused(capsys, _dense(tmp_path / "shape.onnx", out_shape=(1, 5), check=False), "declared with shape (1, 5)")
    # a negative variance: the message blamed a float32 overflow (a hunt, stop 47)
    rng = np.random.default_rng(0)
    bn = _save(tmp_path / "bn.onnx", [N("Gemm", ["X", "W", "b"], ["z"]), N("BatchNormalization", ["z", "s", "c", "m", "v"],
                                                                      ["n"]), N("Relu", ["n"], ["h"]),
                                      N("MatMul", ["h", "V"], ["Y"])],
               [_vi("X", [1, 3])], [_vi("Y", [1, 2])],
               [("W", rng.normal(size=(3, 3)), F32), ("b", np.zeros(3), F32), ("s", np.ones(3), F32),
                ("c", np.zeros(3), F32), ("m", np.zeros(3), F32), ("v", [1.0, -1.0, 1.0], F32),
                ("V", rng.normal(size=(3, 2)), F32)])
    _refused(capsys, bn, "variance + epsilon is -0.99999 for channel 1")


def test_valid_patterns_that_once_failed(tmp_path, capsys):
    rng = np.random.default_rng(0)
    # a graph output inside the masked-ReLU pattern equiv writes, Relu(z * m) + z * a: the linear term stays
    both = _save(tmp_path / "both.onnx", [N("MatMul", ["X", "W"], ["z"]), N("Mul", ["z", "M"], ["zm"]),
                                          N("Relu", ["zm"], ["r"]), N("Mul", ["z", "A"], ["za"]),
                                          N("Add", ["r", "za"], ["Y"])],
                 [_vi("X", [1, 3])], [_vi("Y", [1, 4]), _vi("za", [1, 4])],
                 [("W", rng.normal(size=(3, 4)), F32), ("M", [1, 0, 1, 0], F32), ("A", [0, 1, 0, 0], F32)])
    # a tensor named like equiv's fresh names, next to a MaxPool (whose lowering makes fresh nodes)
    named = _save(tmp_path / "named.onnx", [N("Conv", ["X", "W"], ["a"]), N("Relu", ["a"], ["equiv/1"]),
                                            N("MaxPool", ["equiv/1"], ["p"], kernel_shape=[2, 2], strides=[1, 1]),
                                            N("Flatten", ["p"], ["f"]), N("Gemm", ["f", "V"], ["Y"])],
                  [_vi("X", [1, 1, 3, 3])], [_vi("Y", [1, 2])],
                  [("W", rng.normal(size=(2, 1, 2, 2)), F32), ("V", rng.normal(size=(2, 2)), F32)])
    # a dense chain whose weights are a Cast of float16 constants (the chain importer does not fold: the graph
    # pipeline takes it)
    cast = _save(tmp_path / "cast.onnx", [N("Cast", ["W16"], ["W"], to=TensorProto.FLOAT),
                                          N("MatMul", ["X", "W"], ["z"]), N("Relu", ["z"], ["h"]),
                                          N("MatMul", ["h", "V"], ["Y"])], [_vi("X", [1, 3])], [_vi("Y", [1, 2])],
                 [("W16", rng.normal(size=(3, 4)), np.float16), ("V", rng.normal(size=(4, 2)), F32)])
    # a rank-1 input and output (no batch axis): the written model computes the declared shape (3,)
    rank1 = _save(tmp_path / "rank1.onnx", [N("MatMul", ["X", "W"], ["z"]), N("Relu", ["z"], ["h"]),
                                            N("MatMul", ["h", "V"], ["Y"])], [_vi("X", [4])], [_vi("Y", [3])],
                  [("W", rng.normal(size=(4, 5)), F32), ("V", rng.normal(size=(5, 3)), F32)])
    for path, box in ((both, "-1:1,-1:1,-1:1"), (named, BOX9), (cast, "-1:1,-1:1,-1:1"), (rank1, "-1:1,-1:1,-1:1,-1:1")):
        out = tmp_path / f"{path.stem}_s.onnx"
        assert main(["simplify", str(path), "--box", box, "-o", str(out), "--json", "--no-progress"]) == 0, path.name
        r = json.loads(capsys.readouterr().out)
        assert r["validation"]["max_abs_diff"] <= 1e-4
        n = len(box.split(","))
        X = np.random.default_rng(2).uniform(-1, 1, (200, n))
        a, b = OnnxRunner(str(path)), OnnxRunner(str(out))
        assert np.abs(a(X) - b(X)).max() <= 1e-4, path.name
    import onnxruntime as ort
    y = ort.InferenceSession(str(tmp_path / "rank1_s.onnx")).run(None, {"X": np.zeros(4, np.float32)})[0]
    assert y.shape == (3,)


@pytest.mark.parametrize("case", ["constant_in_the_model", "branch_dead_on_the_region",
                                  "dead_branch_between_two_live_ones"])
def test_a_concat_with_a_constant_runs_on_any_batch(case, tmp_path, capsys):
    """A Concat of a computed tensor and a (1, k) constant (in the model, or a ReLU branch proved dead, hence 0)
    does not broadcast over a batch in ONNX: it is written as a Pad holding the constants, so the written model
    runs on 7 inputs at once like the original, and `check` still proves it by its record."""
    rng = np.random.default_rng(0)
    if case == "constant_in_the_model":
        nodes = [N("Gemm", ["X", "W", "b"], ["z"]), N("Relu", ["z"], ["h"]), N("Concat", ["h", "K"], ["c"], axis=1),
                 N("Gemm", ["c", "V"], ["Y"])]
        inits = [("W", rng.normal(size=(3, 4)), F32), ("b", rng.normal(size=4), F32), ("K", [[0.5, -0.5]], F32),
                 ("V", rng.normal(size=(6, 2)), F32)]
        x_shape = [1, 3]
    elif case == "dead_branch_between_two_live_ones":
        nodes = [N("Gemm", ["X", "W1", "b1"], ["z1"]), N("Relu", ["z1"], ["h1"]), N("Gemm", ["X", "W2", "b2"], ["z2"]),
                 N("Relu", ["z2"], ["h2"]), N("Gemm", ["X", "W3", "b3"], ["z3"]), N("Relu", ["z3"], ["h3"]),
                 N("Concat", ["h2", "h1", "h3", "h1"], ["c"], axis=1), N("Gemm", ["c", "V"], ["Y"])]
        inits = [("W1", rng.normal(size=(3, 2)), F32), ("b1", [-100.0, -100.0], F32), ("W2", rng.normal(size=(3, 4)), F32),
                 ("b2", rng.normal(size=4), F32), ("W3", rng.normal(size=(3, 3)), F32), ("b3", rng.normal(size=3), F32),
                 ("V", rng.normal(size=(11, 2)), F32)]
        x_shape = ["N", 3]
    else:
        nodes = [N("Gemm", ["X", "W1", "b1"], ["z1"]), N("Relu", ["z1"], ["h1"]), N("Gemm", ["X", "W2", "b2"], ["z2"]),
                 N("Relu", ["z2"], ["h2"]), N("Concat", ["h2", "h1"], ["c"], axis=1), N("Gemm", ["c", "V"], ["Y"])]
        inits = [("W1", rng.normal(size=(3, 2)), F32), ("b1", [-100.0, -100.0], F32), ("W2", rng.normal(size=(3, 4)), F32),
                 ("b2", rng.normal(size=4), F32), ("V", rng.normal(size=(6, 2)), F32)]
        x_shape = ["N", 3]
    path, out = tmp_path / "m.onnx", tmp_path / "s.onnx"
    _save(path, nodes, [_vi("X", x_shape)], [_vi("Y", [x_shape[0], 2])], inits)
    assert main(["simplify", str(path), "--box", "-1:1,-1:1,-1:1", "-o", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    X = np.random.default_rng(1).uniform(-1, 1, (7, 3))
    a = OnnxRunner(str(path))(X) if case != "constant_in_the_model" else np.vstack(
        [OnnxRunner(str(path))(X[i:i + 1]) for i in range(7)])          # (that original runs one input at a time)
    import onnxruntime as ort
    b = ort.InferenceSession(str(out)).run(None, {"X": X.astype(np.float32)})[0]
    assert b.shape == (7, 2) and np.abs(a - b).max() <= 1e-5
    assert main(["check", str(path), str(out), "--box", "-1:1,-1:1,-1:1", "--epsilon", "1e-4", "--json",
                 "--no-progress"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert {p["method"] for p in r["pieces"]} == {"carried"}


def test_products_by_vectors_read_back_as_written(tmp_path, capsys):
    """x (1, 3, 4) @ w (4,) and L (3,) @ x: the vector products imported as the ops their written form (a MatMul by
    the promoted 2-D constant) reads back as, so `check` proves equiv's own output by its record (it was unknown:
    the record could not match)."""
    rng = np.random.default_rng(0)
    nodes = [N("Reshape", ["X", "s"], ["x3"]), N("MatMul", ["x3", "w"], ["z"]), N("Relu", ["z"], ["h"]),
             N("MatMul", ["L", "x3"], ["q"]), N("Relu", ["q"], ["hq"]), N("Concat", ["h", "hq"], ["c"], axis=1),
             N("Gemm", ["c", "V2"], ["Y"])]
    path, out = tmp_path / "m.onnx", tmp_path / "s.onnx"
    _save(path, nodes, [_vi("X", [1, 12])], [_vi("Y", [1, 2])],
          [("w", rng.normal(size=(4,)), F32), ("L", rng.normal(size=(3,)), F32), ("V2", rng.normal(size=(7, 2)), F32),
           ("s", [1, 3, 4], I64)])
    box = ",".join(["-1:1"] * 12)
    assert main(["simplify", str(path), "--box", box, "-o", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["check", str(path), str(out), "--box", box, "--epsilon", "1e-4", "--json", "--no-progress"]) == 0
    assert {p["method"] for p in json.loads(capsys.readouterr().out)["pieces"]} == {"carried"}


@pytest.mark.parametrize("case", ["two_layers_of_the_input", "batchnorm_on_the_input"])
def test_check_proves_equivs_own_output_by_its_record(case, tmp_path, capsys):
    """Two patterns where the record of equiv's own output could not be matched to the file read back (check then
    searched, and was unknown): two dense layers of one input with the same shape (told apart by the names equiv
    writes), and a BatchNormalization no layer takes in (one x * s + t, written as Mul and Add) before a masked
    ReLU (no position dead, so no row or channel is deleted, which would tell them apart)."""
    rng = np.random.default_rng(0)
    if case == "two_layers_of_the_input":
        # (the product by a constant on the left makes it a graph: the chain pipeline would take a plain Gemm)
        nodes = [N("Gemm", ["X", "W1", "b1"], ["z1"]), N("Relu", ["z1"], ["h1"]), N("Gemm", ["X", "W2"], ["z2"]),
                 N("Concat", ["h1", "z2"], ["c"], axis=1), N("Transpose", ["c"], ["ct"], perm=[1, 0]),
                 N("MatMul", ["L", "ct"], ["m"]), N("Transpose", ["m"], ["Y"], perm=[1, 0])]
        inits = [("W1", 0.1 * rng.normal(size=(6, 5)), F32), ("b1", [5, 0, 0, 0, 0], F32),
                 ("W2", rng.normal(size=(6, 5)), F32), ("L", rng.normal(size=(4, 10)), F32)]
        x_shape, box = [1, 6], ",".join(["-1:1"] * 6)
    else:
        nodes = [N("BatchNormalization", ["X", "sc", "bb", "mu", "var"], ["z"]), N("Relu", ["z"], ["h"]),
                 N("Add", ["h", "X"], ["r"]), N("Flatten", ["r"], ["f"]), N("Gemm", ["f", "V"], ["Y"])]
        inits = [("sc", [2.0, 1.0, 1.5], F32), ("bb", [3.0, 0.5, 0.2], F32), ("mu", [0.1, 0.2, 0.0], F32),
                 ("var", [1.0, 4.0, 0.25], F32), ("V", rng.normal(size=(12, 4)), F32)]
        x_shape, box = [1, 3, 2, 2], ",".join(["-1:1"] * 12)
    path, out = tmp_path / "m.onnx", tmp_path / "s.onnx"
    _save(path, nodes, [_vi("X", x_shape)], [_vi("Y", [1, 4])], inits)
    assert main(["simplify", str(path), "--box", box, "-o", str(out), "--json", "--no-progress"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert 0 < r["relus_after"] < r["relus_before"]          # a masked ReLU: some positions stable, some not
    assert main(["check", str(path), str(out), "--box", box, "--epsilon", "1e-4", "--json", "--no-progress"]) == 0
    assert {p["method"] for p in json.loads(capsys.readouterr().out)["pieces"]} == {"carried"}


GEMM_FORMS = {   # name: (Gemm inputs, attributes, extra initializers) on x (1, 3) with h = relu(x W1^T) (1, 4)
    "constant-left": (["A", "ht"], {}, [("A", np.arange(8).reshape(2, 4) / 7 - 0.5, F32)]),
    "constant-left-transA-transB": (["At", "h"], {"transA": 1, "transB": 1, "alpha": 0.5},
                                    [("At", np.arange(8).reshape(4, 2) / 5 - 0.7, F32)]),
    "constant-left-bias": (["A", "ht", "C"], {"beta": 2.0}, [("A", np.arange(8).reshape(2, 4) / 7 - 0.5, F32),
                                                              ("C", [[0.25], [-1.0]], F32)]),
    "computed-bias": (["h", "B", "hc"], {"transB": 1, "beta": -0.5}, [("B", np.arange(8).reshape(2, 4) / 3 - 1, F32)]),
}


@pytest.mark.parametrize("form", sorted(GEMM_FORMS))
def test_gemm_with_the_constant_on_the_left_or_a_computed_bias(form, tmp_path):
    """Gemm in the forms the README promises beyond tensor @ constant: a constant on the left (with transA,
    transB, alpha, beta and a bias) and a computed bias C; the import's values match onnxruntime's and
    `simplify` writes a model that does (these were refused: "only Gemm(tensor, constant, constant bias)")."""
    from equiv.ir import load_graph
    inputs, attrs, extra = GEMM_FORMS[form]
    W1 = np.array([[1.0, -0.5, 0.25], [0.5, 1.0, -1.0], [-0.3, 0.2, 0.9], [0.7, -0.8, 0.1]])
    Wc = np.arange(6).reshape(2, 3) / 4 - 0.6
    nodes = [N("Gemm", ["x", "W1"], ["z"], transB=1), N("Relu", ["z"], ["h"]), N("Transpose", ["h"], ["ht"]),
             N("Gemm", ["x", "Wc"], ["hc"], transB=1), N("Gemm", inputs, ["g"], **attrs)]
    nodes.append(N("Reshape", ["g", "shape"], ["y"]))          # (2, 1) or (1, 2) -> (1, 2)
    path = _save(tmp_path / "m.onnx", nodes, [_vi("x", [1, 3])], [_vi("y", [1, 2])],
                 [("W1", W1, F32), ("Wc", Wc, F32), ("shape", [1, 2], I64)] + extra)
    g = load_graph(str(path))
    x = np.random.default_rng(0).uniform(-1, 1, size=(50, 3)).astype(np.float32)
    ort = OnnxRunner(str(path))
    np.testing.assert_allclose(g.forward(x.astype(float)).reshape(50, -1), ort(x), rtol=1e-5, atol=1e-5)
    out = tmp_path / "s.onnx"
    assert main(["simplify", str(path), "--box=-1:1,-1:1,-1:1", "-o", str(out), "--no-progress"]) == 0
    np.testing.assert_allclose(OnnxRunner(str(out))(x), ort(x), rtol=1e-5, atol=1e-5)


def _pool_model(path, op, opset, **attrs):
    """x (1, 1, H, W) -> 1x1 conv -> relu -> pool(attrs) -> flatten."""
    h, w = attrs.pop("_in", (1, 2))
    n_out = attrs.pop("_out", 1)
    nodes = [N("Conv", ["x", "W", "B"], ["c"]), N("Relu", ["c"], ["r"]), N(op, ["r"], ["p"], **attrs),
             N("Flatten", ["p"], ["y"])]
    return _save(path, nodes, [_vi("x", [1, 1, h, w])], [_vi("y", [1, n_out])],
                 [("W", [[[[-0.13]]]], F32), ("B", [0.5], F32)], opset=opset)


def test_pool_windows_in_the_padding_and_runtime_shape_disagreements(tmp_path, capsys):
    """Hunt (stop 47), valid models with dilated pools:
    - an AveragePool window wholly in the padding (count_include_pad=0) averages nothing: onnxruntime gives 0;
      equiv divided by a count of 0, and wrote a model giving NaN everywhere that validation passed (exit 0);
    - the same MaxPool window gives the lowest float in onnxruntime: refused (exit 2), was exit 4;
    - SAME_UPPER with dilations: onnxruntime's shape differs from ONNX's definition: refused (exit 2), was exit 4."""
    avg = _pool_model(tmp_path / "avg.onnx", "AveragePool", 19, kernel_shape=[1, 2], dilations=[1, 3],
                      pads=[0, 1, 0, 1])
    assert main(["bounds", str(avg), "--box=-1:1,-1:1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)["layers"][-1]
    assert np.all(np.isfinite(out["lo"])) and out["lo"][0] <= 0.0 <= out["hi"][0]
    rep = tmp_path / "r.json"
    assert main(["simplify", str(avg), "--box=-1:1,-1:1", "-o", str(tmp_path / "s.onnx"), "--report", str(rep),
                 "--no-progress"]) == 0
    val = json.loads(rep.read_text())["validation"]
    assert val["ok"] and val["max_abs_diff"] == 0.0
    x = np.random.default_rng(0).uniform(-1, 1, (50, 2))
    assert np.array_equal(OnnxRunner(str(avg))(x), OnnxRunner(str(tmp_path / "s.onnx"))(x))
    mx = _pool_model(tmp_path / "max.onnx", "MaxPool", 13, kernel_shape=[1, 2], dilations=[1, 3], pads=[0, 1, 0, 1])
    assert main(["bounds", str(mx), "--box=-1:1,-1:1"]) == 2
    assert "lies wholly in its padding" in capsys.readouterr().err
    for op in ("AveragePool", "MaxPool"):
        same = _pool_model(tmp_path / f"same_{op}.onnx", op, 19, kernel_shape=[2, 3], dilations=[2, 1],
                           auto_pad="SAME_UPPER", _in=(5, 5), _out=25)
        assert main(["bounds", str(same), "--box=" + ",".join(["-1:1"] * 25)]) == 2
        assert "runtime disagrees with its definition" in capsys.readouterr().err


def test_validation_is_not_disarmed_by_a_non_finite_exact_function():
    """The original's float64 function gave NaN (the 0-count pool above), so the allowance for its float32
    error was NaN and every comparison passed: NaN outputs against finite ones were 'ok'.  A non-finite
    allowance now allows nothing."""
    from equiv.artifacts.validate import compare_on_points
    a = lambda x: np.zeros((len(x), 1))                          # noqa: E731
    b = lambda x: np.full((len(x), 1), np.nan)                   # noqa: E731
    exact = lambda x: np.full((len(x), 1), np.nan)               # noqa: E731
    val = compare_on_points(a, b, {"p": np.zeros((4, 2))}, 1e-4, exact=exact)
    assert not val.ok and val.max_abs_diff == np.inf and val.float32_noise == 0.0


@pytest.mark.parametrize("case", ["scalar", "rank1_symbolic", "rank3_symbolic"])
def test_chain_outputs_keep_their_computed_shape(case, tmp_path, capsys):
    """Hunt (stop 47): a scalar output (declared []) crashed `simplify` (exit 4); an output declared ['N'] was
    written as (N, 1), and one of shape (1, 2, 1) declared ['N', 'a', 'b'] as (1, 2).  The written model now
    gives the original's shape, with the batch axis free where the declaration has one."""
    rng = np.random.default_rng(0)
    inits = [("W1", rng.normal(size=(3, 4)), F32), ("b1", rng.normal(size=4), F32), ("W2", rng.normal(size=(4, 2)), F32)]
    nodes = [N("MatMul", ["x", "W1"], ["m"]), N("Add", ["m", "b1"], ["z"]), N("Relu", ["z"], ["h"]),
             N("MatMul", ["h", "W2"], ["o"])]
    if case == "scalar":
        nodes += [N("MatMul", ["o", "v"], ["y1"]), N("Reshape", ["y1", "s"], ["y"])]
        inits += [("v", rng.normal(size=2), F32), ("s", np.zeros(0), I64)]
        ind, outd, shape = [1, 3], [], ()
    elif case == "rank1_symbolic":
        nodes += [N("MatMul", ["o", "v"], ["y"])]
        inits += [("v", rng.normal(size=2), F32)]
        ind, outd, shape = ["N", 3], ["N"], (1,)
    else:
        nodes += [N("Reshape", ["o", "s"], ["y"])]
        inits += [("s", [1, 2, 1], I64)]
        ind, outd, shape = ["N", 3], ["N", "a", "b"], (1, 2, 1)
    path = _save(tmp_path / "m.onnx", nodes, [_vi("x", ind)], [_vi("y", outd)], inits, opset=13)
    out = tmp_path / "s.onnx"
    assert main(["simplify", str(path), "--box=-1:1,-1:1,-1:1", "-o", str(out), "--no-progress"]) == 0
    import onnxruntime as ort
    x = np.array([[0.1, -0.3, 0.5]], np.float32)
    a = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    b = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert a.shape == b.shape == shape and np.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("k", [3, 5, 7])
def test_a_constant_that_broadcasts_like_a_batch_is_not_taken_for_one(k, tmp_path, capsys):
    """A fixed-batch-1 model adding a (k, 4) constant to its (1, 4) hidden layer: the validator's batched copy
    was probed with a batch of 3, which broadcast against k = 3, and the 4096-point runs then failed (exit 4,
    a hunt, stop 47).  The probe now checks two sizes row by row against the model run alone."""
    rng = np.random.default_rng(0)
    inits = [("W1", rng.normal(size=(3, 4)), F32), ("b1", rng.normal(size=4), F32), ("K", rng.normal(size=(k, 4)), F32),
             ("W2", rng.normal(size=(4, 2)), F32)]
    nodes = [N("Gemm", ["x", "W1", "b1"], ["z"]), N("Relu", ["z"], ["h"]), N("Add", ["h", "K"], ["hk"]),
             N("Relu", ["hk"], ["h2"]), N("Gemm", ["h2", "W2"], ["y"])]
    path = _save(tmp_path / "m.onnx", nodes, [_vi("x", [1, 3])], [_vi("y", [k, 2])], inits, opset=13)
    run = OnnxRunner(str(path))
    x = rng.uniform(-1, 1, (9, 3))
    import onnxruntime as ort
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    want = np.vstack([sess.run(None, {"x": xi[None].astype(np.float32)})[0].reshape(1, -1) for xi in x])
    assert np.allclose(run(x), want, atol=1e-5)
    assert main(["simplify", str(path), "--box=-1:1,-1:1,-1:1", "-o", str(tmp_path / "s.onnx"), "--no-progress"]) == 0
