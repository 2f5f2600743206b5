"""reduce_network: exact on hand-made nets, equal to the original wherever the proved phases hold."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import given, settings

from conftest import small_problems, tiny_net
from equiv.ir.chain_io import network_to_onnx
from equiv.transform.reduce import reduce_network
from equiv.spec.region import Box
from equiv.prove.stability import StabilityOptions, prove_stability
from equiv.artifacts.validate import OnnxRunner


def _masks(net, dead=None, active=None):
    d = [np.zeros(w, bool) for w in net.hidden_widths]
    a = [np.zeros(w, bool) for w in net.hidden_widths]
    for k, i in dead or []:
        d[k - 1][i] = True
    for k, i in active or []:
        a[k - 1][i] = True
    return d, a


def _assert_onnx_matches(net, x):
    run = OnnxRunner(network_to_onnx(net))
    np.testing.assert_allclose(run(x), net.forward(x), atol=1e-4, rtol=1e-5)


def test_dead_neuron_is_deleted():
    # neuron 1 of layer 1 has z = -x - 1 < 0 on [0, 1]: dead
    net = tiny_net([([[1.0], [-1.0]], [0.0, -1.0]), ([[2.0, 5.0]], [0.5])])
    small = reduce_network(net, *_masks(net, dead=[(1, 1)]))
    assert small.hidden_widths == [1] and small.n_relus == 1
    np.testing.assert_allclose(small.dense[0].W, [[1.0]])
    np.testing.assert_allclose(small.dense[1].W, [[2.0]])
    x = np.linspace(0, 1, 11)[:, None]
    np.testing.assert_allclose(small.forward(x), net.forward(x))


def test_fully_active_layer_is_merged():
    # z = x + 1 > 0 on [0, 1]: the only hidden layer is linear, the net collapses to one affine map
    net = tiny_net([([[1.0], [2.0]], [1.0, 1.0]), ([[3.0, -1.0]], [0.25])])
    small = reduce_network(net, *_masks(net, active=[(1, 0), (1, 1)]))
    assert small.depth == 1 and small.n_relus == 0
    np.testing.assert_allclose(small.dense[0].W, [[3.0 - 2.0]])
    np.testing.assert_allclose(small.dense[0].b, [3.0 - 1.0 + 0.25])
    _assert_onnx_matches(small, np.linspace(0, 1, 5)[:, None])


def test_partially_active_layer_keeps_linear_channels():
    net = tiny_net([([[1.0], [-1.0]], [1.0, 0.0]), ([[1.0, 1.0]], [0.0])])
    small = reduce_network(net, *_masks(net, active=[(1, 0)]))
    assert small.n_relus == 1 and small.hidden_widths == [2]
    assert list(small.masks[0]) == [False, True]
    x = np.linspace(-0.5, 1, 7)[:, None]  # neuron 0 active here (x + 1 >= 0.5)
    np.testing.assert_allclose(small.forward(x), net.forward(x))
    _assert_onnx_matches(small, x)


def test_all_dead_layer_gives_constant_network():
    net = tiny_net([([[1.0], [1.0]], [-5.0, -6.0]), ([[1.0, 1.0]], [0.5]), ([[2.0]], [1.0])])
    small = reduce_network(net, *_masks(net, dead=[(1, 0), (1, 1)]))
    assert small.depth == 1 and small.n_relus == 0
    x = np.linspace(0, 1, 4)[:, None]
    np.testing.assert_allclose(small.forward(x), np.full((4, 1), 2.0))  # relu(0.5) * 2 + 1


def test_many_linear_channels_become_a_pass_through():
    # 4 active neurons over a 2-input layer: 2 identity channels are smaller than 4 linear channels
    r = np.random.default_rng(0)
    W1 = np.abs(r.normal(size=(5, 2)))
    net = tiny_net([(W1.tolist(), [1.0] * 4 + [-0.5]), (r.normal(size=(3, 5)).tolist(), [0.0] * 3)])
    small = reduce_network(net, *_masks(net, active=[(1, i) for i in range(4)]))
    assert small.hidden_widths == [3] and small.n_relus == 1
    x = Box(np.zeros(2), np.ones(2)).sample(200, r)
    np.testing.assert_allclose(small.forward(x), net.forward(x), atol=1e-12)
    assert small.n_params < net.n_params
    _assert_onnx_matches(small, x)


def test_bad_masks_are_rejected():
    net = tiny_net([([[1.0]], [0.0]), ([[1.0]], [0.0])])
    with pytest.raises(ValueError):
        reduce_network(net, [np.array([True])], [np.array([True])])


@settings(max_examples=30, deadline=None)
@given(small_problems(max_layers=3, max_width=6, linear_channels=True))
def test_reduced_random_nets_equal_original_on_region(problem):
    """Phases proved by the full pipeline make an exactly equal network, in numpy and onnxruntime."""
    net, box = problem
    res = prove_stability(net, box, StabilityOptions(method="milp", samples=200, time_limit=5))
    small = reduce_network(net, *res.phase_masks(net))
    x = np.vstack([box.sample(500, np.random.default_rng(1)), box.corners()])
    np.testing.assert_allclose(small.forward(x), net.forward(x), atol=1e-9, rtol=1e-9)
    # at most the unproved ReLUs remain (fewer when a whole layer is dead and the tail becomes constant)
    assert small.n_relus <= net.n_relus - res.count("dead") - res.count("active")
    model = network_to_onnx(small)
    onnx.checker.check_model(model)
    np.testing.assert_allclose(OnnxRunner(model)(x), net.forward(x), atol=1e-4, rtol=1e-4)
