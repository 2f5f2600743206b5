"""Every kind of model equiv writes runs on a batch of any size (here 7), and each row equals the original's
answer for that row (the original run one input at a time, as its fixed batch of 1 demands)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from conftest import ACAS, MNIST, MODELS, acas_path, needs_bench
from equiv.cli import main
from equiv.spec.region import load_region
from equiv.artifacts.validate import OnnxRunner


def _batched_run(path, x_flat: np.ndarray) -> np.ndarray:
    """Run the model once on the whole batch (its input shape with the first dimension set to the batch)."""
    model = onnx.load(str(path))
    inp = model.graph.input[0]
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param, f"{path}: the batch dimension is fixed ({dims[0].dim_value})"
    rest = [d.dim_value for d in dims[1:]]
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    y = sess.run(None, {inp.name: x_flat.astype(np.float32).reshape([x_flat.shape[0]] + rest)})[0]
    assert y.shape[0] == x_flat.shape[0]
    return y.reshape(x_flat.shape[0], -1)


def _one_by_one(path, x_flat: np.ndarray) -> np.ndarray:
    run = OnnxRunner(str(path))
    return np.vstack([run(x[None]) for x in x_flat])


def _assert_rows_match(original, written, box, tol=1e-4):
    x = box.sample(7, np.random.default_rng(7))
    got = _batched_run(written, x)
    want = _one_by_one(original, x)
    assert got.shape == want.shape == (7, want.shape[1])
    assert np.abs(got - want).max() <= tol


def test_simplified_digits_runs_on_a_batch(tmp_path, capsys):
    spec = MODELS / "digits_mlp_ball.vnnlib"
    out = tmp_path / "s.onnx"
    assert main(["simplify", str(MODELS / "digits_mlp.onnx"), "--spec", str(spec), "-o", str(out),
                 "--no-progress"]) == 0
    capsys.readouterr()
    names = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert "Concat" in names            # a partial-ReLU layer (linear channels) is part of this model
    _assert_rows_match(MODELS / "digits_mlp.onnx", out, load_region(spec=spec)[0])


@needs_bench
@pytest.mark.parametrize("model,spec", [(acas_path(1, 1), ACAS / "prop_3.vnnlib"),
                                        (MNIST / "mnist-net_256x2.onnx", MNIST / "prop_0_0.03.vnnlib")],
                         ids=["acas", "mnist"])
def test_simplified_benchmarks_run_on_a_batch(tmp_path, capsys, model, spec):
    out = tmp_path / "s.onnx"
    assert main(["simplify", str(model), "--spec", str(spec), "-o", str(out), "--no-progress", "--method", "lp",
                 "--validation-samples", "500"]) == 0
    capsys.readouterr()
    _assert_rows_match(model, out, load_region(spec=spec)[0])


@needs_bench
def test_dispatcher_and_slices_run_on_a_batch(tmp_path, capsys):
    fam = tmp_path / "fam"
    assert main(["slice", str(acas_path(1, 1)), "--spec", str(ACAS / "prop_3.vnnlib"), "-o", str(fam),
                 "--max-slices", "3", "--no-progress", "--validation-samples", "500", "--dispatch-samples", "2000"]) == 0
    capsys.readouterr()
    box = load_region(spec=ACAS / "prop_3.vnnlib")[0]
    _assert_rows_match(acas_path(1, 1), fam / "dispatch.onnx", box)
    import json
    from equiv.spec.region import Box
    for s in json.loads((fam / "manifest.json").read_text())["slices"]:     # a slice is exact on its own box
        _assert_rows_match(acas_path(1, 1), fam / s["file"], Box(np.array(s["lo"]), np.array(s["hi"])))
