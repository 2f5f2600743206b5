"""Windowed LP/MILP queries and the whole-stage budget on dense chains (issue 12 parts 2 and 4)."""

import numpy as np
import pytest

from conftest import MNIST, needs_bench
from equiv.bounds import deeppoly_bounds
from equiv.ir.network import Dense, Network
from equiv.prove.stability import StabilityOptions, prove_stability
from equiv.prove.stability_window import window, window_encoding
from equiv.solvers import make_backend
from equiv.spec.region import Box


def tiny_chain():
    """2 inputs, hidden layers of 3, 3, 3 and one output; weights chosen by hand."""
    W1 = np.array([[1.0, -1.0], [0.5, 1.0], [-1.0, 0.3]])
    W2 = np.array([[1.0, 1.0, -0.5], [-1.0, 0.5, 1.0], [0.3, -0.7, 0.8]])
    W3 = np.array([[0.6, -1.0, 0.4], [1.0, 1.0, -1.0], [-0.2, 0.9, 0.5]])
    W4 = np.array([[1.0, -1.0, 0.5]])
    dense = [Dense(W1, np.array([0.1, -0.2, 0.05])), Dense(W2, np.array([0.0, 0.1, -0.1])),
             Dense(W3, np.array([-0.05, 0.0, 0.1])), Dense(W4, np.zeros(1))]
    return Network.from_layers(dense), Box(np.array([-1.0, -1.0]), np.array([1.0, 1.0]))


def milp_max(enc, W_row, b):
    c, off = enc.objective(W_row, b)
    return make_backend("highs", enc.model).maximize(c, off, integer=True, time_limit=10).bound


def test_window_exact_with_true_box_and_sound_when_wider():
    net, box = tiny_chain()
    b = deeppoly_bounds(net, box)
    k = 2                                              # the third hidden layer: windows of 1 and 2 layers
    xs = box.sample(20000, np.random.default_rng(0))
    _, pre = net.forward(xs, return_pre=True)
    W, bias = net.dense[k].W, net.dense[k].b
    for i in range(3):
        full = milp_max(window_encoding(net, box, b, k, k), W[i], bias[i])
        wide = milp_max(window_encoding(net, box, b, k, 1), W[i], bias[i])
        assert pre[k][:, i].max() <= full + 1e-6 and full <= wide + 1e-6      # sound, and wider when looser
    # a window whose input box is the true reachable box of its input: same answer as the full encoding
    # when that layer's reachable set is the box (one input neuron, all others fixed)
    one = Network.from_layers([Dense(np.array([[1.0], [2.0], [-1.0]]), np.array([0.0, -0.5, 0.2])),
                               Dense(np.eye(3), np.zeros(3)), Dense(np.ones((1, 3)), np.zeros(1))])
    ob = Box(np.array([-1.0]), np.array([1.0]))
    bb = deeppoly_bounds(one, ob)
    sub, sub_box, _ = window(one, ob, bb, 2, 1)          # objective layer 2 (the output), 1 hidden layer
    x = np.linspace(-1, 1, 2001)[None]
    h = np.maximum(one.dense[0].W @ x + one.dense[0].b[:, None], 0)
    assert np.allclose(sub_box.lo, h.min(axis=1)) and np.allclose(sub_box.hi, h.max(axis=1), atol=1e-9)
    z = np.maximum(h, 0)                                  # layer 2 is the identity, so z = ReLU(h) = h
    for i in range(3):
        e = np.eye(3)[i]
        windowed, full = (milp_max(window_encoding(one, ob, bb, 2, w), e, 0.0) for w in (1, 2))
        assert windowed == pytest.approx(full, abs=1e-6) and full == pytest.approx(z[i].max(), abs=1e-6)

def test_windowed_stages_on_tiny_chain_are_sound():
    net, box = tiny_chain()
    res = prove_stability(net, box, StabilityOptions(windowed="on", split_boxes=0))
    _, pre = net.forward(box.sample(20000, np.random.default_rng(1)), return_pre=True)
    for p in res.neurons:
        z = pre[p.layer - 1][:, p.index]
        assert not (p.phase == "dead" and (z > 1e-7).any()) and not (p.phase == "active" and (z < -1e-7).any())


@needs_bench
def test_windowed_mnist_sampled_soundness_and_budget(tmp_path):
    from equiv.apps.simplify import simplify
    from equiv.spec.region import load_region
    model = MNIST / "mnist-net_256x4.onnx"
    box = load_region(spec=str(MNIST / "prop_0_0.03.vnnlib"))[0]
    # a tiny budget: unknowns remain, and the model is still written and validated
    out = tmp_path / "small.onnx"
    res = simplify(model, box, StabilityOptions(milp_budget=3.0), output_path=out, validation_samples=2000)
    st = res.stability
    assert st.count("unknown") > 0 and st.queries["milp_skipped"] > 0 and out.is_file()
    assert res.validation.max_abs_diff <= 1e-4
    from equiv.ir.chain_io import load_onnx
    net = load_onnx(model)
    _, pre = net.forward(np.vstack([box.sample(5000, np.random.default_rng(2)), st.witnesses]), return_pre=True)
    for p in st.neurons:
        z = pre[p.layer - 1][:, p.index]
        assert not (p.phase == "dead" and (z > 1e-6).any()) and not (p.phase == "active" and (z < -1e-6).any())
