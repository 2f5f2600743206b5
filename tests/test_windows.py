"""Windowed LP/MILP queries and the whole-stage budget on dense chains (issue 12 parts 2 and 4)."""

import numpy as np
import pytest

from conftest import MNIST, needs_bench
from equiv.bounds import deeppoly_bounds
from equiv.ir.network import Dense, Network
from equiv.prove.stability import StabilityOptions, prove_stability
from equiv.prove.windows import window, window_encoding
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


def assert_phases_hold(net, box, res, seed):
    """Every dead/active phase of a stability result holds on 20 000 samples and its own witnesses."""
    _, pre = net.forward(np.vstack([box.sample(20000, np.random.default_rng(seed)), res.witnesses]),
                         return_pre=True)
    for p in res.neurons:
        z = pre[p.layer - 1][:, p.index]
        assert not (p.phase == "dead" and (z > 1e-7).any()) and not (p.phase == "active" and (z < -1e-7).any())


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
        # (a MILP bound is raised by its tolerance margin, ~3e-6 here: `solvers.base.milp_bound`)
        assert windowed == pytest.approx(full, abs=1e-5) and z[i].max() <= full <= z[i].max() + 1e-5

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
    res = simplify(model, box, StabilityOptions(milp_budget=0.3), output_path=out, validation_samples=2000)
    st = res.stability
    assert st.count("unknown") > 0 and st.queries["milp_skipped"] > 0 and out.is_file()
    assert res.validation.max_abs_diff <= 1e-4
    from equiv.ir.chain_io import load_onnx
    net = load_onnx(model)
    _, pre = net.forward(np.vstack([box.sample(5000, np.random.default_rng(2)), st.witnesses]), return_pre=True)
    for p in st.neurons:
        z = pre[p.layer - 1][:, p.index]
        assert not (p.phase == "dead" and (z > 1e-6).any()) and not (p.phase == "active" and (z < -1e-6).any())


def test_start_window_widens_only_when_the_narrow_one_does_not_pay():
    from equiv.prove.window_milp import StartWindow
    from equiv.prove.windows import FIRST_WINDOW
    k = FIRST_WINDOW + 2
    s = StartWindow(k)
    assert s.w == FIRST_WINDOW
    for _ in range(StartWindow.TRIES):          # narrow tries that never prove, each followed by a wider one
        s.record(s.w, False, 0.5)
        s.record(s.w + 1, True, 1.0)
    assert s.w == FIRST_WINDOW + 1
    paying = StartWindow(k)
    for _ in range(3 * StartWindow.TRIES):       # narrow proofs half the time at a fifth of the wider cost
        paying.record(paying.w, True, 0.2)
        paying.record(paying.w, False, 0.2)
        paying.record(paying.w + 1, True, 1.0)
    assert paying.w == FIRST_WINDOW
    full = StartWindow(1)                        # layer 2: the first window is the whole network already
    full.record(1, False, 1.0)
    assert full.w == 1


def test_windowed_decisions_on_two_threads_prove_what_one_thread_proves():
    """Decisions run two at a time record the same phases as one by one (no time pressure), all sound."""
    from conftest import random_problem
    for seed in range(60):
        net, box = random_problem(seed, 4, [10, 10, 10, 10], 2, linear_channels=False)
        opt = dict(windowed="on", split_boxes=0, samples=50, alpha=False, window_lp=False, bab=False)
        one = prove_stability(net, box, StabilityOptions(workers=1, **opt))
        if one.queries["milp"] < 6:
            continue
        two = prove_stability(net, box, StabilityOptions(workers=2, **opt))
        assert one.count("unknown") == 0 and two.count("unknown") == 0
        assert [p.phase for p in one.neurons] == [p.phase for p in two.neurons]
        assert_phases_hold(net, box, two, seed)
        return
    pytest.fail("no random chain needed 6 windowed MILP decisions")


@needs_bench
def test_unscaled_lp_bounds_match_scipy_on_a_deep_mnist_window():
    """The LP queries run without HiGHS's scaling (80x faster on these windows): their proven bounds are
    upper bounds of scipy's own (scaled) optimum and within 1e-6 of it."""
    from scipy.optimize import linprog
    from equiv.ir.chain_io import load_onnx
    from equiv.spec.region import load_region
    net = load_onnx(MNIST / "mnist-net_256x4.onnx")
    box = load_region(spec=str(MNIST / "prop_0_0.03.vnnlib"))[0]
    b = deeppoly_bounds(net, box)
    k = 2
    enc = window_encoding(net, box, b, k, 2)
    m, be = enc.model, make_backend("highs", enc.model)
    A = m.A.tocsr()
    fin_hi, fin_lo = np.isfinite(m.row_hi), np.isfinite(m.row_lo)
    import scipy.sparse as sp
    A_ub = sp.vstack([A[fin_hi], -A[fin_lo]])
    b_ub = np.concatenate([m.row_hi[fin_hi], -m.row_lo[fin_lo]])
    todo = np.flatnonzero((b.lo[k] < 0) & (b.hi[k] > 0))[:4]
    for i in todo:
        c, off = enc.objective(net.dense[k].W[i], net.dense[k].b[i])
        r = be.maximize(c, off, integer=False, time_limit=60)
        ref = linprog(-c, A_ub=A_ub, b_ub=b_ub, bounds=list(zip(m.col_lo, m.col_hi)), method="highs")
        assert ref.status == 0
        opt = -ref.fun + off
        assert opt - 1e-9 <= r.bound <= opt + 1e-6


def test_partial_milp_is_a_relaxation_between_the_lp_and_the_milp():
    """A decision with only some binaries integral: never "below" where the full MILP is not (it is a
    relaxation of it), the LP-only decision never "below" where the partial one is not, and relaxing
    really changes answers on some random chains (the columns are not silently kept integral)."""
    from conftest import random_problem
    from equiv.prove.window_milp import Influence
    seen_gap, nets = False, 0
    for seed in range(40):
        if nets >= 4 and seen_gap:
            break
        net, box = random_problem(seed, 4, [10, 10, 10], 2, linear_channels=False)
        b = deeppoly_bounds(net, box)
        k = 2
        enc = window_encoding(net, box, b, k, k)
        if enc.model.n_binaries < 4:
            continue
        be = make_backend("highs", enc.model)
        nets += 1
        infl = Influence(net, b, k, k, enc)
        assert infl.n == enc.model.n_binaries
        xs = box.sample(5000, np.random.default_rng(seed))
        _, pre = net.forward(xs, return_pre=True)
        W, bias = net.dense[k].W, net.dense[k].b
        for i in range(W.shape[0]):
            c, off = enc.objective(W[i], bias[i])
            full = be.maximize(c, off, integer=True, time_limit=10).bound
            keep = infl.keep(W[i], 0.5)
            assert np.all(enc.model.integer[keep]) and keep.size == int(np.ceil(0.5 * infl.n))
            for t in (full - 0.05, full + 0.05, (full + pre[k][:, i].max()) / 2 - 0.01):
                d_full = be.decide(c, off, t, time_limit=10, margin=1e-6)
                d_part = be.decide(c, off, t, time_limit=10, margin=1e-6, integer_cols=keep)
                d_lp = be.decide(c, off, t, time_limit=10, margin=1e-6, integer_cols=np.zeros(0, int))
                if d_part.verdict == "below":
                    assert d_full.verdict == "below" and pre[k][:, i].max() <= t
                if d_lp.verdict == "below":
                    assert d_part.verdict == "below"
                seen_gap |= d_full.verdict == "below" and d_lp.verdict == "above"
    assert seen_gap
    with pytest.raises(ValueError):
        be.decide(c, off, 0.0, time_limit=1, margin=1e-6, integer_cols=np.array([0]))   # column 0 is an input


def test_influence_keeps_the_binaries_that_reach_the_objective():
    """Binaries of neurons the objective row cannot see (zero weight all the way) are relaxed first."""
    from equiv.prove.window_milp import Influence
    W1 = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])      # three unstable neurons on [-1, 1]^2
    net = Network.from_layers([Dense(W1, np.zeros(3)), Dense(np.eye(3), np.zeros(3)),
                               Dense(np.ones((1, 3)), np.zeros(1))])
    box = Box(-np.ones(2), np.ones(2))
    b = deeppoly_bounds(net, box)
    enc = window_encoding(net, box, b, 1, 1)
    d1 = enc.model.groups["d1"]
    infl = Influence(net, b, 1, 1, enc)
    assert infl.n == 3
    # rows over the three layer-1 neurons; neuron 2 (x1 + x2 on [-2, 2]) has gap 1, the others 0.5
    assert list(infl.keep(np.array([1.0, 0.0, 0.0]), 0.3)) == [d1[0]]       # only neuron 0 reaches it
    assert list(infl.keep(np.array([0.0, 0.0, 3.0]), 0.3)) == [d1[2]]
    assert list(infl.keep(np.array([1.0, 0.0, 3.0]), 0.3)) == [d1[2]]       # 3 x gap 1 beats 1 x gap 0.5
    assert list(infl.keep(np.array([1.0, 0.0, 3.0]), 0.5)) == [d1[0], d1[2]]
    assert list(infl.keep(np.array([-4.0, 0.0, 1.0]), 0.3)) == [d1[0]]      # |weights|: 4 x 0.5 beats 1 x 1


def test_partial_first_tries_change_no_phase():
    """With partial tries on every window (threshold lowered) the stage proves exactly the phases the full
    MILPs prove, soundly, and the partial tries are counted."""
    import equiv.prove.window_milp as sw
    from conftest import random_problem
    for seed in range(60):
        net, box = random_problem(seed, 4, [10, 10, 10, 10], 2, linear_channels=False)
        opt = StabilityOptions(windowed="on", split_boxes=0, samples=50, alpha=False, window_lp=False, workers=1,
                               bab=False)
        full = prove_stability(net, box, opt)
        if full.queries["milp"] < 6:
            continue
        old = sw.PARTIAL_MIN
        sw.PARTIAL_MIN = 1
        try:
            part = prove_stability(net, box, opt)
        finally:
            sw.PARTIAL_MIN = old
        assert full.queries["partial_milp"]["tried"] == 0 and part.queries["partial_milp"]["tried"] > 0
        assert [p.phase for p in full.neurons] == [p.phase for p in part.neurons]
        assert_phases_hold(net, box, part, seed)
        return
    pytest.fail("no random chain needed 6 windowed MILP decisions")


def bottleneck_chain(seed):
    """3 inputs -> 8 ReLUs -> 4 ReLUs of which 3 are dead on the box -> 30 ReLUs, each a threshold on the one
    live neuron (near the top of its sampled range, both weight signs) -> 2 outputs."""
    rng = np.random.default_rng(seed)
    box = Box(-np.ones(3), np.ones(3))
    d1 = Dense(rng.normal(size=(8, 3)), rng.normal(scale=0.3, size=8))
    W2 = rng.normal(size=(4, 8))
    d2 = Dense(W2, np.array([0.2, -100.0, -100.0, -100.0]))
    y = np.maximum(Network.from_layers([d1, d2, Dense(np.eye(4), np.zeros(4))]).forward(box.sample(5000, rng))[:, 0],
                   0)
    t = rng.uniform(0.9, 1.4, size=30) * y.max()   # around the top of its range, where samples rarely go
    w = rng.choice([-1.0, 1.0], size=30) * rng.uniform(0.5, 2.0, size=30)
    W3 = np.zeros((30, 4))
    W3[:, 0], W3[:, 1:] = w, rng.normal(size=(30, 3))     # the dead neurons' weights must not matter
    net = Network.from_layers([d1, d2, Dense(W3, -w * t), Dense(rng.normal(size=(2, 30)), np.zeros(2))])
    return net, box


def test_bottleneck_bisection_proves_what_the_per_neuron_milps_prove():
    """A layer left with one live neuron: the bisection on it decides the next layer with fewer MILPs than one
    per neuron, the same phases as the per-neuron decisions, sampled sound.  Seeds 0 and 2: one proof settles
    every threshold; 5 and 7: samples miss the top of the range, so the bisection's real points show
    neurons unstable on the way."""
    for seed in (0, 2, 5, 7):
        net, box = bottleneck_chain(seed)
        opt = dict(windowed="on", split_boxes=0, samples=20, alpha=False, window_lp=False, workers=1, bab=False)
        on = prove_stability(net, box, StabilityOptions(**opt))
        off = prove_stability(net, box, StabilityOptions(**opt, bottleneck=False))
        assert on.queries["bottleneck"]["layers"] == [2] and "bottleneck" not in off.queries
        assert [p.phase for p in on.neurons] == [p.phase for p in off.neurons]
        assert not any(p.phase == "unknown" for p in on.neurons)
        layer3 = [p for p in on.neurons if p.layer == 3]
        assert sum(p.method == "bottleneck" for p in layer3) > 0
        assert sum(p.phase in ("dead", "active") for p in layer3) > 0 and sum(p.phase == "unstable" for p in layer3) > 0
        assert on.queries["bottleneck"]["milp"] < sum(p.method == "milp" for p in off.neurons if p.layer == 3)
        if seed in (5, 7):
            assert sum(p.method == "witness" for p in layer3) > 0 and on.queries["bottleneck"]["milp"] > 1
        else:
            assert on.queries["bottleneck"]["milp"] == 1
        assert_phases_hold(net, box, on, seed)


def test_bottleneck_interval_step_is_sound_and_exact_with_one_live_neuron():
    """Layer 3's interval bounds from layer 2's, when only neuron 0 of layer 2 is live: the exact range of
    each layer-3 neuron over the live neuron's range (a grid of it), padded by no more than 1e-9."""
    from equiv.bounds import Bounds
    from equiv.prove.window_bottleneck import interval_step
    net, box = bottleneck_chain(0)
    b = deeppoly_bounds(net, box)
    b = Bounds([a.copy() for a in b.lo], [a.copy() for a in b.hi])
    lo0, hi0 = 0.1, 0.7
    b.lo[1][0], b.hi[1][0] = lo0, hi0
    interval_step(net, b, 1)
    y = np.linspace(lo0, hi0, 1001)
    z = net.dense[2].W[:, :1] * y[None] + net.dense[2].b[:, None]
    assert np.all(b.lo[2] <= z.min(axis=1)) and np.all(b.hi[2] >= z.max(axis=1))
    assert np.allclose(b.lo[2], z.min(axis=1), atol=1e-9) and np.allclose(b.hi[2], z.max(axis=1), atol=1e-9)


@needs_bench
def test_bottleneck_on_mnist_256x4_is_sound_and_settles_the_last_layer(tmp_path):
    """mnist 256x4 on prop_0_0.03: layer 3 is left with one live neuron, the bisection on it decides layer 4
    with a few decisions; no neuron unknown, every phase holds on 20 000 samples and the witnesses, and the
    written model agrees with the original in onnxruntime."""
    from equiv.apps.simplify import simplify
    from equiv.ir.chain_io import load_onnx
    from equiv.spec.region import load_region
    model = MNIST / "mnist-net_256x4.onnx"
    box = load_region(spec=str(MNIST / "prop_0_0.03.vnnlib"))[0]
    # (a generous limit per query: under a loaded CI machine a 10 s MILP could run out, leaving a neuron unknown)
    res = simplify(model, box, StabilityOptions(time_limit=120.0), output_path=tmp_path / "s.onnx",
                   validation_samples=2000)
    st = res.stability
    bq = st.queries["bottleneck"]
    assert bq["layers"] == [3] and 1 <= bq["milp"] + bq["bab"] <= 3
    assert sum(p.method == "bottleneck" for p in st.neurons if p.layer == 4) > 0
    assert st.count("unknown") == 0 and res.validation.max_abs_diff <= 1e-4
    assert_phases_hold(load_onnx(model), box, st, 3)


def test_branch_and_bound_decisions_prove_what_the_milps_prove():
    """Windowed decisions by branch and bound first (the default) record the same phases as MILPs alone on
    random deep chains and on bottleneck chains, with most decisions settled without a MILP; sampled sound."""
    from conftest import random_problem
    nets = [random_problem(seed, 4, [10, 10, 10, 10], 2, linear_channels=seed % 2 == 1) for seed in range(8)]
    nets += [bottleneck_chain(seed) for seed in (0, 5)]
    tried = 0
    for seed, (net, box) in enumerate(nets):
        opt = dict(windowed="on", split_boxes=0, samples=50, alpha=False, window_lp=False, workers=1)
        on = prove_stability(net, box, StabilityOptions(**opt))
        off = prove_stability(net, box, StabilityOptions(**opt, bab=False))
        assert [p.phase for p in on.neurons] == [p.phase for p in off.neurons]
        assert not any(p.phase == "unknown" for p in on.neurons)
        bq = on.queries.get("bab", {"tried": 0, "proved": 0, "witness": 0})
        assert on.queries["milp"] <= off.queries["milp"]
        assert sum(p.method == "bab" for p in on.neurons) == bq["proved"]
        tried += bq["tried"]
        assert_phases_hold(net, box, on, seed)
    assert tried > 10


def test_progress_bar_reaches_its_total_and_changes_nothing(monkeypatch):
    """With progress on, the windowed stage's bar counts every open neuron as done by the end (those the
    layer's branch and bound, LPs or bottleneck settled too), and the phases are those of a quiet run."""
    import tqdm as tqdm_module
    from conftest import random_problem
    opt = dict(windowed="on", split_boxes=0, samples=50, alpha=False)
    for seed in range(20):
        net, box = random_problem(seed, 4, [10, 10, 10, 10], 2, linear_channels=False)
        quiet = prove_stability(net, box, StabilityOptions(**opt))
        if quiet.queries.get("bab", {}).get("tried", 0) >= 4:
            break
    else:
        pytest.fail("no random chain left questions to the windowed stage")
    closed = []

    class Recorded(tqdm_module.tqdm):
        def close(self):
            if self.desc == "queries":
                closed.append((self.n, self.total))
            super().close()

    monkeypatch.setattr(tqdm_module, "tqdm", Recorded)
    loud = prove_stability(net, box, StabilityOptions(progress=True, **opt))
    assert [p.phase for p in loud.neurons] == [p.phase for p in quiet.neurons]
    # (tqdm may close a bar twice: explicitly, and again when it is collected)
    assert len(set(closed)) == 1 and closed[0][1] > 0 and closed[0][0] == closed[0][1]


def test_bottleneck_with_branch_and_bound_rounds_agrees():
    """With branch and bound on (two rounds: round 1's bottleneck asks only a short branch and bound, round 2
    retries with MILPs what it left), the bottleneck chains get the phases of the per-neuron MILPs, all
    decided, sampled sound."""
    for seed in (0, 5):
        net, box = bottleneck_chain(seed)
        opt = dict(windowed="on", split_boxes=0, samples=20, alpha=False, window_lp=False, workers=1)
        on = prove_stability(net, box, StabilityOptions(**opt, bab=True))
        off = prove_stability(net, box, StabilityOptions(**opt, bab=False, bottleneck=False))
        assert on.queries["bottleneck"]["layers"][0] == 2
        assert [p.phase for p in on.neurons] == [p.phase for p in off.neurons]
        assert not any(p.phase == "unknown" for p in on.neurons)
        assert_phases_hold(net, box, on, seed)
