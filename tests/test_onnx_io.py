"""ONNX import/export: every benchmark network imports exactly, export round-trips, errors are clear."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import MNIST, acas_path, bench_onnx_files, load_cached, needs_bench, tiny_net
from equiv.errors import InputFileError, UnsupportedModelError
from equiv.ir.network import Dense, Network
from equiv.ir.chain_io import batched_shape, load_onnx, network_from_onnx, network_to_onnx

OPSET = 13


def session(model_or_path) -> ort.InferenceSession:
    src = model_or_path.SerializeToString() if isinstance(model_or_path, onnx.ModelProto) else str(model_or_path)
    return ort.InferenceSession(src, providers=["CPUExecutionProvider"])


def ort_run(sess: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
    inp = sess.get_inputs()[0]
    return sess.run(None, {inp.name: x.astype(np.float32)})[0]


def make_model(nodes, inits, in_shape, out_shape, in_name="x", out_name="y") -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "test", [helper.make_tensor_value_info(in_name, TensorProto.FLOAT, list(in_shape))],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, list(out_shape))],
        [numpy_helper.from_array(np.asarray(v, dtype=np.float32 if np.asarray(v).dtype.kind == "f" else np.int64), k)
         for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def assert_matches_ort(net: Network, model, rng, n: int = 5, lo: float = -1.0, hi: float = 1.0):
    """net.forward agrees with onnxruntime on n random inputs (batch 1, the model's own input shape)."""
    sess = session(model)
    shape = [d if isinstance(d, int) and d > 0 else 1 for d in sess.get_inputs()[0].shape]
    for _ in range(n):
        x = rng.uniform(lo, hi, size=shape).astype(np.float32)
        want = ort_run(sess, x).reshape(-1)
        got = net.forward(x.reshape(-1).astype(np.float64))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def f32(a):
    """Weights as float32 values (so the float64 reference and onnxruntime use the same numbers)."""
    return np.asarray(a, dtype=np.float32).astype(np.float64)


# ---- the 48 benchmark networks ---------------------------------------------------------------

@needs_bench
@pytest.mark.parametrize("path", bench_onnx_files(), ids=lambda p: p.name)
def test_benchmark_network_matches_onnxruntime(path, rng):
    net = load_cached(path)
    lo, hi = (0.0, 1.0) if "mnist" in path.name else (-0.5, 0.5)
    assert_matches_ort(net, path, rng, n=3, lo=lo, hi=hi)


@needs_bench
def test_benchmark_collection_is_complete():
    files = bench_onnx_files()
    assert len(files) == 48
    assert sum("ACASXU" in f.name for f in files) == 45


@needs_bench
def test_acasxu_structure():
    net = load_cached(acas_path(1, 1))
    assert net.n_inputs == 5 and net.n_outputs == 5
    assert net.hidden_widths == [50] * 6
    assert net.depth == 7
    assert net.n_relus == 300
    assert tuple(net.input_shape) == (1, 1, 1, 5)
    assert tuple(net.output_shape) == (1, 5)
    assert net.meta["source"].endswith("ACASXU_run2a_1_1_batch_2000.onnx")
    assert all(m.all() for m in net.masks)


@needs_bench
@pytest.mark.parametrize("name, hidden", [("mnist-net_256x2.onnx", 2), ("mnist-net_256x4.onnx", 4),
                                          ("mnist-net_256x6.onnx", 6)])
def test_mnist_structure(name, hidden):
    net = load_cached(MNIST / name)
    assert net.n_inputs == 784 and net.n_outputs == 10
    assert net.hidden_widths == [256] * hidden
    assert net.depth == hidden + 1
    assert tuple(net.input_shape) == (1, 784, 1)


# ---- export ------------------------------------------------------------------------------------

def check_export(net: Network, rng, n: int = 20):
    model = network_to_onnx(net)
    onnx.checker.check_model(model)
    g = model.graph
    assert [i.name for i in g.input] == [net.input_name]
    assert [o.name for o in g.output] == [net.output_name]
    dims = lambda vi: tuple(d.dim_value if d.HasField("dim_value") else d.dim_param
                            for d in vi.type.tensor_type.shape.dim)
    assert dims(g.input[0]) == batched_shape(net.input_shape)      # batch dimension "N" where it was 1
    assert dims(g.output[0]) == batched_shape(net.output_shape)
    sess = session(model)
    for _ in range(n):
        x = rng.uniform(-1, 1, size=[d if isinstance(d, int) else 1 for d in net.input_shape]).astype(np.float32)
        y = ort_run(sess, x)
        assert y.shape == tuple(d if isinstance(d, int) else 1 for d in net.output_shape)
        np.testing.assert_allclose(y.reshape(-1), net.forward(x.reshape(-1).astype(np.float64)),
                                   rtol=1e-5, atol=1e-5)
    return model


def test_export_round_trip_full_relu(rng):
    net = tiny_net([(rng.normal(size=(6, 3)), rng.normal(size=6)), (rng.normal(size=(4, 6)), rng.normal(size=4)),
                    (rng.normal(size=(2, 4)), rng.normal(size=2))])
    model = check_export(net, rng)
    # a model without linear channels is re-imported to the very same weights (up to float32)
    back = network_from_onnx(model)
    assert back.hidden_widths == net.hidden_widths
    for d0, d1 in zip(net.dense, back.dense):
        np.testing.assert_allclose(d1.W, f32(d0.W), rtol=0, atol=0)
        np.testing.assert_allclose(d1.b, f32(d0.b), rtol=0, atol=0)


def test_export_round_trip_partial_masks(rng):
    """Linear channels (mask False) become a ReLU-free Gemm; the next layer is permuted to match."""
    dense = [Dense(rng.normal(size=(6, 3)), rng.normal(size=6)), Dense(rng.normal(size=(5, 6)), rng.normal(size=5)),
             Dense(rng.normal(size=(4, 5)), rng.normal(size=4)), Dense(rng.normal(size=(2, 4)), rng.normal(size=2))]
    masks = [np.array([True, False, True, False, False, True]),   # mixed, interleaved
             np.zeros(5, bool),                                   # a fully linear layer
             np.ones(4, bool)]                                    # a full ReLU layer
    net = Network.from_layers(dense, masks, input_name="obs", output_name="act",
                              input_shape=(1, 3), output_shape=(1, 2))
    model = check_export(net, rng, n=50)
    assert {n.op_type for n in model.graph.node} >= {"Gemm", "Relu", "Concat"}
    assert sum(n.op_type == "Relu" for n in model.graph.node) == 2   # the fully linear layer has none


def test_export_partial_mask_differs_from_full_relu(rng):
    """Sanity check of the test above: the mask changes the function, and the export follows it."""
    dense = [Dense(np.array([[1.0], [-1.0]]), np.zeros(2)), Dense(np.array([[1.0, 1.0]]), np.zeros(1))]
    lin = Network.from_layers(dense, [np.array([True, False])])   # relu(x) + (-x)
    full = Network.from_layers(dense)                             # relu(x) + relu(-x) = |x|
    x = np.array([[-2.0], [3.0]], dtype=np.float32)
    y_lin = ort_run(session(network_to_onnx(lin)), x[:1]).reshape(-1)
    np.testing.assert_allclose(y_lin, [2.0])
    np.testing.assert_allclose(ort_run(session(network_to_onnx(full)), x[:1]).reshape(-1), [2.0])
    np.testing.assert_allclose(ort_run(session(network_to_onnx(lin)), x[1:]).reshape(-1), [0.0])
    np.testing.assert_allclose(ort_run(session(network_to_onnx(full)), x[1:]).reshape(-1), [3.0])


@needs_bench
@pytest.mark.parametrize("path", [acas_path(1, 1), MNIST / "mnist-net_256x2.onnx"], ids=lambda p: p.name)
def test_export_benchmark_round_trip(path, rng):
    net = load_cached(path)
    model = check_export(net, rng, n=5)
    orig = session(path)
    assert model.graph.input[0].name == orig.get_inputs()[0].name
    assert model.graph.output[0].name == orig.get_outputs()[0].name
    # the exported model's own onnxruntime output matches the original model's
    x = rng.uniform(0, 1, size=net.input_shape).astype(np.float32)
    np.testing.assert_allclose(ort_run(session(model), x), ort_run(orig, x), rtol=1e-5, atol=1e-5)


@needs_bench
def test_export_acas_with_linear_channels(rng):
    net = load_cached(acas_path(2, 3))
    masks = [m.copy() for m in net.masks]
    for m in masks:
        m[rng.choice(m.size, size=m.size // 3, replace=False)] = False
    check_export(net.with_layers(net.dense, masks), rng, n=10)


# ---- unsupported models --------------------------------------------------------------------------

@pytest.mark.parametrize("op", ["Sigmoid", "Softmax", "Tanh"])
def test_unsupported_op_is_named(op):
    W = np.ones((3, 4), np.float32)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["z"], name="dense0"),
             helper.make_node(op, ["z"], ["y"], name="the_bad_node")]
    model = make_model(nodes, {"W": W}, [1, 3], [1, 4])
    with pytest.raises(UnsupportedModelError) as err:
        network_from_onnx(model)
    msg = str(err.value)
    assert "the_bad_node" in msg and op in msg


def test_unsupported_op_unnamed_node_uses_output_name():
    nodes = [helper.make_node("MatMul", ["x", "W"], ["z"]), helper.make_node("Sigmoid", ["z"], ["sig_out"])]
    model = make_model(nodes, {"W": np.ones((3, 4))}, [1, 3], [1, 4], out_name="sig_out")
    with pytest.raises(UnsupportedModelError, match=r"sig_out.*Sigmoid"):
        network_from_onnx(model)


def test_skip_connection_is_refused(rng):
    """z2 + z1 mixes tensors from before and after a ReLU: not a chain, must not import silently."""
    nodes = [helper.make_node("Gemm", ["x", "W1", "b1"], ["z1"], transB=1),
             helper.make_node("Relu", ["z1"], ["h1"]),
             helper.make_node("Gemm", ["h1", "W2", "b2"], ["z2"], transB=1),
             helper.make_node("Add", ["z2", "z1"], ["y"], name="residual")]
    inits = {"W1": rng.normal(size=(4, 4)), "b1": rng.normal(size=4), "W2": rng.normal(size=(4, 4)),
             "b2": rng.normal(size=4)}
    model = make_model(nodes, inits, [1, 4], [1, 4])
    with pytest.raises(UnsupportedModelError, match="residual"):
        network_from_onnx(model)


def test_two_inputs_are_refused():
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["y"])], "two",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 2]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])])
    with pytest.raises(UnsupportedModelError, match="exactly one input"):
        network_from_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)]))


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(InputFileError, match="not found"):
        load_onnx(tmp_path / "nope.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00\xffthis is not a protobuf\x12\x34" * 10)
    with pytest.raises(InputFileError):
        load_onnx(bad)


# ---- linear ops folded into dense layers ---------------------------------------------------------

def test_conv_model_matches_onnxruntime(rng):
    """Conv (asymmetric pads, strides) -> Relu -> Flatten -> Gemm, lowered exactly to dense layers."""
    Wc = rng.normal(size=(3, 2, 3, 3))
    bc = rng.normal(size=3)
    # H: (6 + 1 + 1 - 3) // 2 + 1 = 3;  W: (6 + 0 + 1 - 3) // 1 + 1 = 5  ->  3 * 3 * 5 = 45 features
    Wg = rng.normal(size=(4, 45))
    bg = rng.normal(size=4)
    nodes = [helper.make_node("Conv", ["x", "Wc", "bc"], ["c"], pads=[1, 0, 1, 1], strides=[2, 1],
                              kernel_shape=[3, 3]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Flatten", ["r"], ["f"], axis=1),
             helper.make_node("Gemm", ["f", "Wg", "bg"], ["y"], transB=1)]
    model = make_model(nodes, {"Wc": Wc, "bc": bc, "Wg": Wg, "bg": bg}, [1, 2, 6, 6], [1, 4])
    net = network_from_onnx(model)
    assert net.n_inputs == 72 and net.hidden_widths == [45] and net.n_outputs == 4
    assert_matches_ort(net, model, rng, n=10)


def test_linear_op_zoo_matches_onnxruntime(rng):
    """Mul, grouped dilated Conv, BatchNormalization, Transpose, Reshape, MatMul+Add, Neg, Gemm(alpha, beta)."""
    scale = rng.uniform(0.5, 2, size=(1, 4, 1, 1))
    Wc = rng.normal(size=(4, 2, 2, 2))          # group=2: 2 input channels per group
    bn = {"s": rng.uniform(0.5, 2, 4), "B": rng.normal(size=4), "m": rng.normal(size=4), "v": rng.uniform(0.5, 2, 4)}
    # H: (5 + 0 + 1 - 2*(2-1) - 1) // 1 + 1 = 4;  W: (5 + 1 + 0 - 1*(2-1) - 1) // 2 + 1 = 3  -> 4*4*3 = 48
    Wm = rng.normal(size=(48, 7))
    bm = rng.normal(size=7)
    Wg = rng.normal(size=(7, 3))                # transB = 0
    bg = rng.normal(size=3)
    nodes = [helper.make_node("Mul", ["x", "scale"], ["a"]),
             helper.make_node("Conv", ["a", "Wc"], ["c"], group=2, dilations=[2, 1], pads=[0, 1, 1, 0],
                              strides=[1, 2], kernel_shape=[2, 2]),
             helper.make_node("BatchNormalization", ["c", "s", "B", "m", "v"], ["n"], epsilon=1e-3),
             helper.make_node("Relu", ["n"], ["r"]),
             helper.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 3, 1]),
             helper.make_node("Reshape", ["t", "shape"], ["f"]),
             helper.make_node("MatMul", ["f", "Wm"], ["mm"]),
             helper.make_node("Add", ["mm", "bm"], ["z"]),
             helper.make_node("Neg", ["z"], ["nz"]),
             helper.make_node("Relu", ["nz"], ["h"]),
             helper.make_node("Identity", ["h"], ["hi"]),
             helper.make_node("Gemm", ["hi", "Wg", "bg"], ["y"], alpha=0.5, beta=2.0)]
    inits = {"scale": scale, "Wc": Wc, **bn, "shape": np.array([1, -1], np.int64), "Wm": Wm, "bm": bm,
             "Wg": Wg, "bg": bg}
    model = make_model(nodes, inits, [1, 4, 5, 5], [1, 3])
    net = network_from_onnx(model)
    assert net.hidden_widths == [48, 7] and net.depth == 3
    assert_matches_ort(net, model, rng, n=10)


def test_normalisation_folds_into_first_layer(rng):
    """Sub mean / Div std before the first MatMul add no layer: depth == number of MatMul layers."""
    mean = rng.normal(size=5)
    std = rng.uniform(0.5, 3, size=5)
    Ws = [rng.normal(size=(5, 8)), rng.normal(size=(8, 8)), rng.normal(size=(8, 3))]
    bs = [rng.normal(size=8), rng.normal(size=8), rng.normal(size=3)]
    nodes = [helper.make_node("Sub", ["x", "mean"], ["xc"]), helper.make_node("Div", ["xc", "std"], ["xn"])]
    h = "xn"
    for k in range(3):
        nodes += [helper.make_node("MatMul", [h, f"W{k}"], [f"m{k}"]),
                  helper.make_node("Add", [f"m{k}", f"b{k}"], [f"z{k}" if k < 2 else "y"])]
        if k < 2:
            nodes.append(helper.make_node("Relu", [f"z{k}"], [f"h{k}"]))
            h = f"h{k}"
    inits = {"mean": mean, "std": std, **{f"W{k}": Ws[k] for k in range(3)}, **{f"b{k}": bs[k] for k in range(3)}}
    model = make_model(nodes, inits, [1, 5], [1, 3])
    net = network_from_onnx(model)
    n_matmul = sum(n.op_type in ("MatMul", "Gemm") for n in model.graph.node)
    assert net.depth == n_matmul == 3
    assert net.hidden_widths == [8, 8]
    # the folded first layer is exactly W^T diag(1/std) with bias b - W^T (mean/std)
    W0 = f32(Ws[0]).T / f32(std)
    np.testing.assert_allclose(net.dense[0].W, W0, rtol=1e-12)
    np.testing.assert_allclose(net.dense[0].b, f32(bs[0]) - W0 @ f32(mean), rtol=1e-9, atol=1e-12)
    assert_matches_ort(net, model, rng, n=10, lo=-5, hi=5)


def test_constant_node_and_reversed_sub(rng):
    """A Constant node feeding `c - x` (the tensor second) is folded with the right sign."""
    c = rng.normal(size=(1, 3)).astype(np.float32)
    nodes = [helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(c)),
             helper.make_node("Sub", ["c", "x"], ["d"]),
             helper.make_node("Gemm", ["d", "W", "b"], ["z"], transB=1),
             helper.make_node("Relu", ["z"], ["y"])]
    model = make_model(nodes, {"W": rng.normal(size=(2, 3)), "b": rng.normal(size=2)}, [1, 3], [1, 2])
    net = network_from_onnx(model)
    assert net.hidden_widths == [2] and net.depth == 2
    assert_matches_ort(net, model, rng, n=10)


# ---- saving ------------------------------------------------------------------------------------

def test_own_partial_relu_export_imports_back(rng):
    """equiv re-reads its own output: Concat(Relu(Gemm(h)), Gemm(h)) is a layer with linear channels."""
    dense = [Dense(rng.normal(size=(6, 3)), rng.normal(size=6)), Dense(rng.normal(size=(5, 6)), rng.normal(size=5)),
             Dense(rng.normal(size=(2, 5)), rng.normal(size=2))]
    masks = [np.array([True, False, True, False, False, True]), np.array([False, True, True, True, False])]
    net = Network.from_layers(dense, masks, input_name="obs", output_name="act", input_shape=(1, 3),
                              output_shape=(1, 2))
    back = network_from_onnx(network_to_onnx(net))
    x = rng.normal(size=(200, 3))
    np.testing.assert_allclose(back.forward(x), net.forward(x), rtol=1e-5, atol=1e-5)
    assert back.n_relus == net.n_relus and back.hidden_widths == net.hidden_widths
    assert [int((~m).sum()) for m in back.masks] == [3, 2]


def test_other_concat_shapes_are_refused(rng):
    """A Concat of two ReLU branches, or one whose ReLU output was already used, is not a partial layer."""
    inits = {"W1": rng.normal(size=(4, 3)), "b1": rng.normal(size=4), "W2": rng.normal(size=(4, 3)),
             "b2": rng.normal(size=4), "W3": rng.normal(size=(2, 8)), "b3": rng.normal(size=2)}
    two_relus = [helper.make_node("Gemm", ["x", "W1", "b1"], ["z1"], transB=1),
                 helper.make_node("Relu", ["z1"], ["h1"]),
                 helper.make_node("Gemm", ["x", "W2", "b2"], ["z2"], transB=1),
                 helper.make_node("Relu", ["z2"], ["h2"]),
                 helper.make_node("Concat", ["h1", "h2"], ["h"], axis=1, name="join"),
                 helper.make_node("Gemm", ["h", "W3", "b3"], ["y"], transB=1)]
    with pytest.raises(UnsupportedModelError):
        network_from_onnx(make_model(two_relus, inits, [1, 3], [1, 2]))
    used = [helper.make_node("Gemm", ["x", "W1", "b1"], ["z1"], transB=1),
            helper.make_node("Relu", ["z1"], ["h1"]),
            helper.make_node("Neg", ["h1"], ["n1"]),
            helper.make_node("Gemm", ["x", "W2", "b2"], ["z2"], transB=1),
            helper.make_node("Concat", ["h1", "z2"], ["h"], axis=1, name="join"),
            helper.make_node("Gemm", ["h", "W3", "b3"], ["y"], transB=1)]
    with pytest.raises(UnsupportedModelError, match="join"):
        network_from_onnx(make_model(used, inits, [1, 3], [1, 2]))


def test_relu_output_reused_after_its_partial_layer_is_refused(rng):
    """After Concat widens the layer, the bare Relu output no longer names its variables: using it is refused."""
    inits = {"W1": rng.normal(size=(4, 3)), "b1": rng.normal(size=4), "W2": rng.normal(size=(2, 3)),
             "b2": rng.normal(size=2), "W3": rng.normal(size=(2, 6)), "b3": rng.normal(size=2),
             "W4": rng.normal(size=(2, 4)), "b4": rng.normal(size=2)}
    nodes = [helper.make_node("Gemm", ["x", "W1", "b1"], ["z1"], transB=1),
             helper.make_node("Relu", ["z1"], ["h1"]),
             helper.make_node("Gemm", ["x", "W2", "b2"], ["l1"], transB=1),
             helper.make_node("Concat", ["h1", "l1"], ["h"], axis=1),
             helper.make_node("Gemm", ["h", "W3", "b3"], ["y1"], transB=1),
             helper.make_node("Gemm", ["h1", "W4", "b4"], ["y2"], transB=1, name="reuse"),
             helper.make_node("Add", ["y1", "y2"], ["y"])]
    with pytest.raises(UnsupportedModelError, match="reuse"):
        network_from_onnx(make_model(nodes, inits, [1, 3], [1, 2]))


# ---- import soundness: exact flat order, broadcasting, every MatMul/Gemm form, the op-by-op check -----------

def assert_forward_matches_ort(net: Network, model, points, rtol=1e-5, atol=1e-5):
    """net.forward agrees with onnxruntime on every given point (flat, the model's input shape in onnxruntime)."""
    sess = session(model)
    shape = [d if isinstance(d, int) and d > 0 else 1 for d in sess.get_inputs()[0].shape]
    for x in points:
        x = np.asarray(x, np.float32)
        want = ort_run(sess, x.reshape(shape)).reshape(-1)
        np.testing.assert_allclose(net.forward(x.reshape(-1).astype(np.float64)), want, rtol=rtol, atol=atol)


def column_concat_model(rng):
    """The issue's graph: two (6, 1) columns concatenated along axis 1 interleave in ONNX's flat order."""
    inits = {"W1": rng.normal(size=(6, 16)), "b1": rng.normal(size=6), "W2": rng.normal(size=(6, 16)),
             "b2": rng.normal(size=6), "col": np.array([6, 1], np.int64), "row": np.array([1, 6], np.int64),
             "M": rng.normal(size=(2, 1)), "W3": rng.normal(size=(3, 6)), "b3": rng.normal(size=3)}
    nodes = [helper.make_node("Gemm", ["x", "W1", "b1"], ["z1"], transB=1),
             helper.make_node("Reshape", ["z1", "col"], ["z1c"]),
             helper.make_node("Relu", ["z1c"], ["h1"]),
             helper.make_node("Gemm", ["x", "W2", "b2"], ["z2"], transB=1),
             helper.make_node("Reshape", ["z2", "col"], ["z2c"]),
             helper.make_node("Concat", ["h1", "z2c"], ["cat"], axis=1, name="join"),   # (6, 2)
             helper.make_node("MatMul", ["cat", "M"], ["mm"]),                           # (6, 1)
             helper.make_node("Reshape", ["mm", "row"], ["flat"]),                       # (1, 6)
             helper.make_node("Gemm", ["flat", "W3", "b3"], ["y"], transB=1)]
    return make_model(nodes, inits, [1, 16], [1, 3])


def test_concat_of_columns_follows_onnx_flat_order(rng):
    model = column_concat_model(rng)
    net = network_from_onnx(model)
    assert net.hidden_widths == [12] and [int(m.sum()) for m in net.masks] == [6]
    pts = [np.ones(16), -np.ones(16), np.zeros(16)] + list(rng.uniform(-1, 1, size=(50, 16))) \
        + list(0.99 * np.ones(16) + 0.01 * rng.uniform(-1, 1, size=(10, 16)))
    assert_forward_matches_ort(net, model, pts)


def test_concat_of_columns_without_the_check_is_still_exact(rng):
    """The fix is in the importer itself, not only caught by the check."""
    model = column_concat_model(rng)
    assert_forward_matches_ort(network_from_onnx(model, check=False), model, [np.ones(16)])


@pytest.mark.parametrize("axis", [0, 1, 2, -1, -2, -3])
def test_plain_concat_any_axis_and_rank(rng, axis):
    """Concat of tensors of one anchor and a constant, 3-D, any (negative) axis: rows in ONNX's order."""
    shape = [2, 3, 2]
    const_shape = list(shape)
    const_shape[axis] = 1
    inits = {"s": np.array(shape, np.int64), "P": rng.normal(size=shape), "K": rng.normal(size=const_shape),
             "W": rng.normal(size=(4, 24 + 12 // shape[axis])), "b": rng.normal(size=4)}
    nodes = [helper.make_node("Reshape", ["x", "s"], ["t"]),
             helper.make_node("Relu", ["t"], ["r"]),
             helper.make_node("Mul", ["r", "P"], ["rp"]),
             helper.make_node("Concat", ["rp", "K", "r"], ["cat"], axis=axis),
             helper.make_node("Flatten", ["cat"], ["f"], axis=0),
             helper.make_node("Gemm", ["f", "W", "b"], ["y"], transB=1)]
    model = make_model(nodes, inits, [1, 12], [1, 4])
    net = network_from_onnx(model)
    assert_forward_matches_ort(net, model, rng.normal(size=(20, 12)))


def test_partial_relu_concat_with_relu_second_and_negative_axis(rng):
    inits = {"W1": rng.normal(size=(3, 4)), "W2": rng.normal(size=(3, 5)), "W3": rng.normal(size=(2, 8))}
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["z1"]),
             helper.make_node("Relu", ["z1"], ["h1"]),
             helper.make_node("MatMul", ["x", "W2"], ["z2"]),
             helper.make_node("Concat", ["z2", "h1"], ["cat"], axis=-1),
             helper.make_node("Neg", ["cat"], ["n"]),
             helper.make_node("Relu", ["n"], ["h2"]),
             helper.make_node("MatMul", ["h2", "W3"], ["y"])]
    inits["W3"] = rng.normal(size=(9, 2))
    model = make_model(nodes, inits, [1, 3], [1, 2])
    net = network_from_onnx(model)
    assert [int((~m).sum()) for m in net.masks] == [5, 0]
    assert_forward_matches_ort(net, model, rng.normal(size=(30, 3)))


def test_add_of_row_and_its_column_broadcasts(rng):
    """(1, 4) + (4, 1) is a (4, 4) tensor, not an elementwise sum of the two affine maps."""
    inits = {"W1": rng.normal(size=(4, 3)), "b1": rng.normal(size=4), "col": np.array([4, 1], np.int64),
             "flat": np.array([1, 16], np.int64), "W2": rng.normal(size=(2, 16)), "b2": rng.normal(size=2)}
    nodes = [helper.make_node("Gemm", ["x", "W1", "b1"], ["z"], transB=1),
             helper.make_node("Relu", ["z"], ["h"]),
             helper.make_node("Reshape", ["h", "col"], ["hc"]),
             helper.make_node("Add", ["h", "hc"], ["s"]),
             helper.make_node("Reshape", ["s", "flat"], ["f"]),
             helper.make_node("Gemm", ["f", "W2", "b2"], ["y"], transB=1)]
    model = make_model(nodes, inits, [1, 3], [1, 2])
    net = network_from_onnx(model)
    assert net.hidden_widths == [4]
    assert_forward_matches_ort(net, model, rng.normal(size=(30, 3)))


def test_sub_and_mul_div_by_broadcast_constants(rng):
    inits = {"s": np.array([2, 1, 3], np.int64), "K": rng.normal(size=(1, 4, 1)), "D": rng.uniform(0.5, 2, (4, 3)),
             "flat": np.array([1, 24], np.int64), "W": rng.normal(size=(2, 24)), "b": rng.normal(size=2)}
    nodes = [helper.make_node("Reshape", ["x", "s"], ["t"]),
             helper.make_node("Sub", ["K", "t"], ["a"]),          # (2, 4, 3)
             helper.make_node("Mul", ["a", "K"], ["m"]),
             helper.make_node("Div", ["m", "D"], ["d"]),
             helper.make_node("Sub", ["d", "t"], ["e"]),          # tensor - tensor, broadcast
             helper.make_node("Reshape", ["e", "flat"], ["f"]),
             helper.make_node("Gemm", ["f", "W", "b"], ["y"], transB=1)]
    model = make_model(nodes, inits, [1, 6], [1, 2])
    net = network_from_onnx(model)
    assert_forward_matches_ort(net, model, rng.normal(size=(20, 6)))


@pytest.mark.parametrize("case", ["nd_const", "vec_const", "const_left", "const_left_vec", "batch_tensor"])
def test_matmul_forms(rng, case):
    shapes = {"nd_const": ((2, 1, 2, 3), (3, 3, 4), (2, 3, 2, 4)), "vec_const": ((2, 3), (3,), (2,)),
              "const_left": ((2, 3), (4, 2), (4, 3)), "const_left_vec": ((2, 3), (2,), (3,)),
              "batch_tensor": ((3, 2, 2), (2, 5), (3, 2, 5))}
    t_shape, c_shape, out_shape = shapes[case]
    n_in, n_out = int(np.prod(t_shape)), int(np.prod(out_shape))
    inits = {"s": np.array(t_shape, np.int64), "C": rng.normal(size=c_shape), "flat": np.array([1, n_out], np.int64),
             "W": rng.normal(size=(3, n_out)), "b": rng.normal(size=3)}
    mm = ["C", "t"] if case.startswith("const_left") else ["t", "C"]
    nodes = [helper.make_node("Reshape", ["x", "s"], ["t"]),
             helper.make_node("MatMul", mm, ["m"]),
             helper.make_node("Reshape", ["m", "flat"], ["f"]),
             helper.make_node("Gemm", ["f", "W", "b"], ["y"], transB=1)]
    model = make_model(nodes, inits, [1, n_in], [1, 3])
    net = network_from_onnx(model)
    assert_forward_matches_ort(net, model, rng.normal(size=(10, n_in)))


@pytest.mark.parametrize("transA, transB, c_shape, tensor_second",
                         [(0, 0, (), False), (1, 0, (5,), False), (0, 1, (1, 5), False), (1, 1, (3, 5), False),
                          (0, 0, (3, 1), True), (1, 1, (5,), True), (0, 1, None, True)])
def test_gemm_forms(rng, transA, transB, c_shape, tensor_second):
    """Gemm with transA/transB, alpha, beta, any bias shape, a 3-row operand, the tensor as A or as B."""
    M, K, N = 3, 4, 5
    a_shape = (K, M) if transA else (M, K)
    b_shape = (N, K) if transB else (K, N)
    t_shape, c_mat = (b_shape, a_shape) if tensor_second else (a_shape, b_shape)
    n_in = int(np.prod(t_shape))
    inits = {"s": np.array(t_shape, np.int64), "G": rng.normal(size=c_mat), "flat": np.array([1, M * N], np.int64),
             "W": rng.normal(size=(2, M * N)), "b": rng.normal(size=2)}
    ins = ["G", "t"] if tensor_second else ["t", "G"]
    if c_shape is not None:
        inits["C"] = rng.normal(size=c_shape)
        ins.append("C")
    nodes = [helper.make_node("Reshape", ["x", "s"], ["t"]),
             helper.make_node("Gemm", ins, ["g"], transA=transA, transB=transB, alpha=0.7, beta=-1.3),
             helper.make_node("Relu", ["g"], ["r"]),
             helper.make_node("Reshape", ["r", "flat"], ["f"]),
             helper.make_node("Gemm", ["f", "W", "b"], ["y"], transB=1)]
    model = make_model(nodes, inits, [1, n_in], [1, 2])
    net = network_from_onnx(model)
    assert net.hidden_widths == [M * N]
    assert_forward_matches_ort(net, model, rng.normal(size=(20, n_in)))


def test_product_of_two_tensors_is_refused_by_name(rng):
    nodes = [helper.make_node("Gemm", ["x", "W", "b"], ["z"], transB=1),
             helper.make_node("MatMul", ["z", "x"], ["y"], name="square")]
    model = make_model(nodes, {"W": rng.normal(size=(3, 3)), "b": rng.normal(size=3)}, [3, 3], [3, 3])
    with pytest.raises(UnsupportedModelError, match="square.*not linear"):
        network_from_onnx(model)


def test_unsupported_op_is_found_before_heavy_work(rng):
    """A large Conv before an unsupported op: refused at once, before any Conv is lowered to a matrix."""
    nodes = [helper.make_node("Conv", ["x", "Wc"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("AveragePool", ["r"], ["p"], kernel_shape=[2, 2], name="pool"),
             helper.make_node("Flatten", ["p"], ["y"])]
    model = make_model(nodes, {"Wc": rng.normal(size=(16, 3, 3, 3))}, [1, 3, 64, 64], [1, 16 * 32 * 32])
    from equiv.ir import chain_io as onnx_io
    with pytest.raises(UnsupportedModelError, match="pool.*AveragePool"):
        onnx_io._validate(model)          # the structural pass alone refuses it: no Conv was lowered
    with pytest.raises(UnsupportedModelError, match="pool.*AveragePool"):
        network_from_onnx(model)


def test_empty_and_nodeless_models_are_input_file_errors(tmp_path):
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(InputFileError, match="empty or corrupt"):
        load_onnx(empty)
    nodeless = tmp_path / "nodeless.onnx"
    onnx.save(helper.make_model(helper.make_graph([], "g", [], [])), str(nodeless))
    with pytest.raises(InputFileError, match="empty or corrupt"):
        load_onnx(nodeless)
    with pytest.raises(InputFileError, match="empty or corrupt"):
        network_from_onnx(onnx.ModelProto())
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x0a\xff\xff\xff\xff\x0f")        # a truncated protobuf field
    with pytest.raises(InputFileError, match="empty or corrupt"):
        load_onnx(bad)


def test_import_check_fires_on_a_corrupted_expression(rng):
    """The op-by-op check is real: a wrong expression for one tensor is reported, naming node and tensor."""
    from equiv.errors import ImportMismatchError
    from equiv.ir.chain_check import check_import
    from equiv.ir.chain_io import trace_import

    model = column_concat_model(rng)
    net, trace = trace_import(model)
    check_import(model, net, trace)                       # the true import passes
    t = next(t for t in trace.tensors if t.tensor == "mm")
    t.expr.A = t.expr.A.copy()
    t.expr.A[[0, 1]] = t.expr.A[[1, 0]]                   # swap two rows, as a flat-order bug would
    with pytest.raises(ImportMismatchError, match=r"node 'mm' \(MatMul\).*tensor 'mm'.*bug in equiv") as err:
        check_import(model, net, trace)
    assert err.value.exit_code == 4


def test_import_check_fires_on_a_wrong_layer(rng):
    """A network whose layer differs from the model (the old interleaving bug) fails the layer check."""
    from equiv.errors import ImportMismatchError
    from equiv.ir.chain_check import check_import
    from equiv.ir.chain_io import trace_import

    model = column_concat_model(rng)
    net, trace = trace_import(model)
    trace.anchors[trace.layers[1]].gather = np.arange(12)   # read the Concat output as if stacked
    with pytest.raises(ImportMismatchError, match="join"):
        check_import(model, net, trace)


def test_transpose_then_matmul_by_vector_follows_onnx_semantics():
    """(x reshaped to 2x2)^T @ v: equiv follows ONNX. (onnxruntime's extended optimizations fuse this into a
    FusedMatMul(transA=1) with a 1-D B that computes another value, so the reference runs unoptimised.)"""
    v = np.array([0.5, -2.0], np.float32)
    nodes = [helper.make_node("Reshape", ["x", "s"], ["r"]),
             helper.make_node("Transpose", ["r"], ["t"], perm=[1, 0]),
             helper.make_node("MatMul", ["t", "v"], ["y"])]
    model = make_model(nodes, {"s": np.array([2, 2], np.int64), "v": v}, [4], [2])
    net = network_from_onnx(model)
    x = np.array([1.0, 2.0, 3.0, 4.0])
    np.testing.assert_allclose(net.forward(x), x.reshape(2, 2).T @ v.astype(np.float64), rtol=1e-12)


def _named_mlp(in_name: str, out_name: str, second_output: bool, seed: int = 0) -> onnx.ModelProto:
    """A 3-4-2 ReLU MLP with the given input/output names (a second output sends it down the graph pipeline)."""
    r = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(r.normal(size=s).astype(np.float32), n)
             for n, s in [("A1", (4, 3)), ("B1", (4,)), ("A2", (2, 4)), ("B2", (2,))]]
    nodes = [helper.make_node("Gemm", [in_name, "A1", "B1"], ["z"], transB=1), helper.make_node("Relu", ["z"], ["h"]),
             helper.make_node("Gemm", ["h", "A2", "B2"], [out_name], transB=1)]
    outs = [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, ["N", 2])]
    if second_output:
        nodes.append(helper.make_node("Neg", ["h"], ["other"]))
        outs.append(helper.make_tensor_value_info("other", TensorProto.FLOAT, ["N", 4]))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(in_name, TensorProto.FLOAT, ["N", 3])], outs, inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m


@pytest.mark.parametrize("in_name, out_name, graph", [
    ("x", "logits", False), ("h0", "y", False), ("in_shape", "y", False), ("W1", "y", False), ("x", "b2", False),
    ("x", "h1r", False), ("out_shape", "in_shape", False), ("x", "t_h", True), ("equiv_c1", "y", True),
    ("x", "equiv_t1", True), ("t_z", "t_h", True)])
def test_written_models_avoid_the_models_own_names(tmp_path, in_name, out_name, graph):
    """The writers' internal names (h0, logits, in_shape, W<k>, b<k>, h<k>r; t_<tensor>, equiv_c<k>) never
    take the model's own input or output name: such a model was written as invalid ONNX (exit 4).  On a
    wide box and on one narrow enough to merge layers, the written model keeps the names and matches the
    original in onnxruntime."""
    from equiv.cli import main
    src = tmp_path / "m.onnx"
    onnx.save(_named_mlp(in_name, out_name, graph), str(src))
    x = np.random.default_rng(1).uniform(-0.01, 0.01, size=(64, 3)).astype(np.float32)
    for k, box in enumerate(("-1:1,-1:1,-1:1", "-0.01:0.01,-0.01:0.01,-0.01:0.01")):
        out = tmp_path / f"s{k}.onnx"
        assert main(["simplify", str(src), f"--box={box}", "-o", str(out), "--no-progress"]) == 0
        written = onnx.load(str(out))
        onnx.checker.check_model(written)
        assert [i.name for i in written.graph.input] == [in_name]
        assert written.graph.output[0].name == out_name
        a, b = session(str(src)), session(str(out))
        ya = a.run(None, {in_name: x})[0]
        yb = b.run([out_name], {in_name: x})[0]
        np.testing.assert_allclose(yb, ya, rtol=1e-5, atol=1e-5)
