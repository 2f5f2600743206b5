"""Build the small demo model shipped with equiv: a ReLU MLP on sklearn's digits.

Why: equiv needs a real (trained, not random) ReLU network to demonstrate and
test simplification on, small enough to ship in the repository and to build in
a few seconds without any download.

What this script does (run as ``python models/make_digits_mlp.py``):

1. loads scikit-learn's bundled 8x8 digits data set, scales pixels to [0, 1]
   and makes a fixed, stratified train/test split;
2. trains a deterministic ``MLPClassifier`` with two hidden ReLU layers of 32;
3. exports it by hand with ``onnx.helper`` (Gemm + Relu, Gemm, no softmax) to
   ``digits_mlp.onnx``: input ``input`` float32 [1, 64], output ``output``
   (logits) float32 [1, 10], opset 17;
4. checks the ONNX model with ``onnx.checker`` and onnxruntime against sklearn
   (argmax agreement on the whole test set) and against a numpy forward pass;
5. writes an L-infinity ball of radius 0.02 around the first test image as
   ``digits_mlp_ball.vnnlib`` (input bounds only) and the image itself as
   ``digits_mlp_center.npy``.

All outputs are written next to this script. Running it twice gives identical
files.
"""

import pathlib

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

OUT_DIR = pathlib.Path(__file__).resolve().parent
ONNX_PATH = OUT_DIR / "digits_mlp.onnx"
VNNLIB_PATH = OUT_DIR / "digits_mlp_ball.vnnlib"
CENTER_PATH = OUT_DIR / "digits_mlp_center.npy"

SEED = 0
TEST_SIZE = 0.25
HIDDEN = (32, 32)
MAX_ITER = 300
EPSILON = 0.02
OPSET = 17
IR_VERSION = 8
N_INPUTS = 64
N_OUTPUTS = 10


def load_data():
    """Return (x_train, x_test, y_train, y_test), pixels as float32 in [0, 1]."""
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target
    return train_test_split(
        x, y, test_size=TEST_SIZE, random_state=SEED, stratify=y
    )


def train(x_train, y_train):
    """Train the deterministic ReLU MLP classifier."""
    clf = MLPClassifier(
        hidden_layer_sizes=HIDDEN,
        activation="relu",
        random_state=SEED,
        max_iter=MAX_ITER,
    )
    clf.fit(x_train, y_train)  # converges (tol) after 297 adam epochs
    return clf


def float32_layers(clf):
    """Return [(W, b), ...] as float32, W of shape (n_in, n_out)."""
    return [
        (w.astype(np.float32), b.astype(np.float32))
        for w, b in zip(clf.coefs_, clf.intercepts_)
    ]


def to_onnx(layers):
    """Build the ONNX model: Gemm(transB=0) + Relu per hidden layer, final Gemm."""
    nodes, initializers = [], []
    current = "input"
    for i, (w, b) in enumerate(layers):
        w_name, b_name = f"W{i}", f"B{i}"
        initializers.append(numpy_helper.from_array(w, w_name))
        initializers.append(numpy_helper.from_array(b, b_name))
        last = i == len(layers) - 1
        gemm_out = "output" if last else f"gemm{i}"
        nodes.append(
            helper.make_node(
                "Gemm", [current, w_name, b_name], [gemm_out],
                name=f"Gemm{i}", transB=0,
            )
        )
        if last:
            break
        relu_out = f"relu{i}"
        nodes.append(helper.make_node("Relu", [gemm_out], [relu_out], name=f"Relu{i}"))
        current = relu_out
    graph = helper.make_graph(
        nodes,
        "digits_mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, N_INPUTS])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, N_OUTPUTS])],
        initializer=initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="equiv/models/make_digits_mlp.py",
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def numpy_forward(layers, x):
    """Reference forward pass in float32 numpy: logits for a batch x."""
    h = x.astype(np.float32)
    for i, (w, b) in enumerate(layers):
        h = h @ w + b
        if i < len(layers) - 1:
            h = np.maximum(h, 0.0)
    return h


def onnx_logits(model, x):
    """Run the ONNX model with onnxruntime one sample at a time (batch is 1)."""
    sess = ort.InferenceSession(
        model.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    return np.concatenate(
        [sess.run(["output"], {"input": row[None, :]})[0] for row in x]
    )


def check(model, clf, layers, x_test, y_test):
    """Check ONNX against sklearn and numpy; return the test accuracy."""
    logits = onnx_logits(model, x_test)
    sk_pred = clf.predict_proba(x_test).argmax(axis=1)
    agreement = np.mean(logits.argmax(axis=1) == sk_pred)
    assert agreement == 1.0, f"argmax agreement with sklearn only {agreement:.4f}"
    max_diff = np.abs(logits - numpy_forward(layers, x_test)).max()
    assert max_diff <= 1e-5, f"ONNX vs numpy logits differ by {max_diff:g}"
    accuracy = float(np.mean(logits.argmax(axis=1) == y_test))
    print(f"argmax agreement with sklearn: {agreement:.0%}")
    print(f"max |onnx - numpy| logits: {max_diff:.3g}")
    return accuracy


def vnnlib_ball(center, label, epsilon):
    """VNN-LIB text: L-inf ball of radius epsilon around center, clipped to [0, 1]."""
    center = center.astype(np.float64)
    lower = np.clip(center - epsilon, 0.0, 1.0)
    upper = np.clip(center + epsilon, 0.0, 1.0)
    lines = [
        f"; digits MLP, L-inf ball of radius {epsilon} around test image 0 "
        f"(label {label})"
    ]
    lines += [f"(declare-const X_{i} Real)" for i in range(len(center))]
    lines += [f"(declare-const Y_{j} Real)" for j in range(N_OUTPUTS)]
    for i, (lo, hi) in enumerate(zip(lower, upper)):
        lines.append(f"(assert (<= X_{i} {float(hi)!r}))")
        lines.append(f"(assert (>= X_{i} {float(lo)!r}))")
    return "\n".join(lines) + "\n"


def main():
    x_train, x_test, y_train, y_test = load_data()
    clf = train(x_train, y_train)
    layers = float32_layers(clf)
    model = to_onnx(layers)
    accuracy = check(model, clf, layers, x_test, y_test)
    print(f"test accuracy: {accuracy:.4f} ({len(y_test)} test images)")

    onnx.save(model, ONNX_PATH)
    center = x_test[0].astype(np.float32)
    np.save(CENTER_PATH, center)
    VNNLIB_PATH.write_text(vnnlib_ball(center, int(y_test[0]), EPSILON))
    for path in (ONNX_PATH, VNNLIB_PATH, CENTER_PATH):
        print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
