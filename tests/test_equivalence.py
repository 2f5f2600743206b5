"""`equiv check`: exact answers on hand-made pairs, soundness of the difference bounds on random and real
pairs, real counterexamples, the MILP route, the CLI contract (report fields, exit codes) and --certify."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import ACAS, MNIST, MODELS, acas_path, load_cached, tiny_net
from equiv.prove.align import align
from equiv.bench.equivalence import float16_copy, pruned_copy
from equiv.cli import main
from equiv.bounds.diff import pair_bounds
from equiv.prove.equivalence import CheckOptions, check_networks
from equiv.errors import InputFileError
from equiv.ir.network import Dense
from equiv.ir.chain_io import network_to_onnx
from equiv.spec.region import Box, load_region
from equiv.artifacts.validate import OnnxRunner


def run_check(f, g, box, **kw):
    kw.setdefault("samples", 500)
    return check_networks(f, g, box, OnnxRunner(network_to_onnx(f)), OnnxRunner(network_to_onnx(g)),
                          CheckOptions(**kw))


# ---- hand-made pairs with a known maximum difference --------------------------------------------------

# f(x) = relu(x), g(x) = 1.1 relu(x) on [-1, 1]: max |f - g| = 0.1, at x = 1
F1 = tiny_net([([[1.0]], [0.0]), ([[1.0]], [0.0])])
G1 = tiny_net([([[1.0]], [0.0]), ([[1.1]], [0.0])])
BOX1 = Box([-1.0], [1.0])
# f(x) = relu(x1 - x2); g(x) = relu(x1) - relu(x2) (another width) on [0, 1]^2:
# f - g = relu(x1 - x2) - (x1 - x2) = relu(x2 - x1), max 1 at (0, 1)
F2 = tiny_net([([[1.0, -1.0]], [0.0]), ([[1.0]], [0.0])])
G2 = tiny_net([([[1.0, 0.0], [0.0, 1.0]], [0.0, 0.0]), ([[1.0, -1.0]], [0.0])])
BOX2 = Box([0.0, 0.0], [1.0, 1.0])


@pytest.mark.parametrize("f, g, box, true_max", [(F1, G1, BOX1, 0.1), (F2, G2, BOX2, 1.0)])
def test_hand_made_pairs_measure_and_decide(f, g, box, true_max):
    m = run_check(f, g, box, measure=True)
    assert m.verdict == "measured"
    assert true_max - 1e-6 <= m.max_diff_upper <= true_max * 1.06 + 1e-6
    assert m.max_diff_lower == pytest.approx(true_max, rel=1e-5)
    ok = run_check(f, g, box, epsilon=true_max * 1.02)
    assert ok.verdict == "equivalent" and ok.exit_code == 0
    assert true_max - 1e-6 <= ok.max_diff_upper <= true_max * 1.02 + 1e-9
    bad = run_check(f, g, box, epsilon=true_max * 0.9)
    assert bad.verdict == "not_equivalent" and bad.exit_code == 1
    cex = bad.counterexample
    assert box.contains(cex.input.astype(float)[None])[0]
    assert np.abs(cex.output_a - cex.output_b).max() > true_max * 0.9
    # the outputs in the report are the real ones
    assert np.allclose(cex.output_a, f.forward(cex.input.astype(float)), atol=1e-5)
    assert np.allclose(cex.output_b, g.forward(cex.input.astype(float)), atol=1e-5)


@pytest.mark.parametrize("split", [True, False])
def test_milp_route_gives_the_same_answers(split):
    """With input splitting off, the product MILP decides the hand-made pair both ways."""
    kw = {} if split else {"split_max_inputs": 0}
    assert run_check(F2, G2, BOX2, epsilon=1.01, **kw).verdict == "equivalent"
    m = run_check(F2, G2, BOX2, measure=True, **kw)
    assert 1.0 - 1e-6 <= m.max_diff_upper <= 1.06


def test_top1_hand_made():
    # two classes; f: (x, 0.5), g: (x + 0.2, 0.5) on [0, 1]: f picks class 0 iff x > 0.5, g iff x > 0.3
    f = tiny_net([([[1.0]], [0.0]), ([[1.0], [0.0]], [0.0, 0.5])])
    g = tiny_net([([[1.0]], [0.0]), ([[1.0], [0.0]], [0.2, 0.5])])
    r = run_check(f, g, Box([0.0], [1.0]), norm="top1")
    assert r.verdict == "not_equivalent"
    x = float(r.counterexample.input[0])
    assert 0.3 <= x <= 0.5 + 1e-6
    # on [0.6, 1] both pick class 0 with a strict margin
    assert run_check(f, g, Box([0.6], [1.0]), norm="top1").verdict == "equivalent"
    assert run_check(f, g, Box([0.6], [1.0]), norm="top1", split_max_inputs=0).verdict == "equivalent"


def test_identical_networks_have_zero_difference(acas_1_1, prop3_box):
    r = run_check(acas_1_1, acas_1_1, prop3_box, epsilon=1e-6)
    assert r.verdict == "equivalent"
    assert r.max_diff_upper <= 1e-6 and r.max_diff_lower == 0.0
    m = run_check(acas_1_1, acas_1_1, prop3_box, measure=True)
    assert m.verdict == "measured" and m.exit_code == 0 and m.max_diff_upper == 0.0


def test_measure_without_epsilon_has_no_counterexample_above_one():
    """--measure without --epsilon measures: a difference of 3 is a bound to compute, not a counterexample
    (the search scales by ones there, and took every difference above 1 for one: exit 1)."""
    g = tiny_net([([[1.0]], [0.0]), ([[4.0]], [0.0])])             # 4 relu(x): max |f - g| = 3 at x = 1
    m = run_check(F1, g, BOX1, measure=True)
    assert m.verdict == "measured" and m.exit_code == 0 and m.counterexample is None
    assert 3.0 - 1e-6 <= m.max_diff_upper <= 3.0 * 1.06 and m.max_diff_lower == pytest.approx(3.0, rel=1e-5)


def test_mismatched_shapes_are_bad_input():
    g_out = tiny_net([([[1.0]], [0.0]), ([[1.0], [2.0]], [0.0, 0.0])])
    with pytest.raises(InputFileError, match="different outputs"):
        run_check(F1, g_out, BOX1, epsilon=0.1)
    with pytest.raises(InputFileError, match="different inputs"):
        run_check(F1, F2, BOX1, epsilon=0.1)
    with pytest.raises(InputFileError, match="epsilon"):
        CheckOptions(norm="linf")
    with pytest.raises(InputFileError, match="positive"):
        CheckOptions(epsilon=-1.0)


# ---- soundness of the difference bounds ----------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10 ** 6), widths=st.lists(st.integers(1, 6), min_size=1, max_size=3),
       n_in=st.integers(1, 3), perturb=st.sampled_from([0.0, 1e-3, 0.1, 1.0]), prune=st.booleans())
def test_pair_bounds_contain_sampled_differences(seed, widths, n_in, perturb, prune):
    r = np.random.default_rng(seed)
    sizes = [n_in] + widths + [2]
    f = tiny_net([(r.normal(size=(b, a)).tolist(), r.normal(scale=0.5, size=b).tolist()) for a, b in zip(sizes, sizes[1:])])
    dense = [Dense(d.W + perturb * r.normal(size=d.W.shape), d.b + perturb * r.normal(size=d.b.shape)) for d in f.dense]
    if prune and len(widths) and widths[0] > 1:   # drop one neuron of the first layer: another shape
        dense[0] = Dense(dense[0].W[1:], dense[0].b[1:])
        dense[1] = Dense(dense[1].W[:, 1:], dense[1].b)
        masks = [np.ones(d.n_out, bool) for d in dense[:-1]]
    else:
        masks = f.masks
    g = f.with_layers(dense, masks)
    c = r.normal(size=n_in)
    box = Box(c - r.random(n_in), c + r.random(n_in))
    X = np.vstack([box.sample(300, r), box.corners(), box.center[None]])
    pair = align(f, g, X[:50])
    # the embedding computes the same functions
    assert np.allclose(pair.f.forward(X), f.forward(X)) and np.allclose(pair.g.forward(X), g.forward(X))
    pb = pair_bounds(pair, box.lo[None], box.hi[None])
    _, zf = pair.f.forward(X, return_pre=True)
    _, zg = pair.g.forward(X, return_pre=True)
    zf.append(pair.f.forward(X))
    zg.append(pair.g.forward(X))
    for k in range(len(zf)):
        d = zf[k] - zg[k]
        assert np.all(d >= pb.d_lo[k][0] - 1e-9) and np.all(d <= pb.d_hi[k][0] + 1e-9), f"layer {k}"
        assert np.all(zf[k] >= pb.f_lo[k][0] - 1e-9) and np.all(zf[k] <= pb.f_hi[k][0] + 1e-9)
        assert np.all(zg[k] >= pb.g_lo[k][0] - 1e-9) and np.all(zg[k] <= pb.g_hi[k][0] + 1e-9)


def random_pair(seed: int):
    """A random 2-4-3-2 network f, g = f with weights moved by 5%, the box [-1, 1]^2 and the generator."""
    r = np.random.default_rng(seed)
    f = tiny_net([(r.normal(size=(4, 2)).tolist(), r.normal(size=4).tolist()),
                  (r.normal(size=(3, 4)).tolist(), r.normal(size=3).tolist()),
                  (r.normal(size=(2, 3)).tolist(), r.normal(size=2).tolist())])
    g = f.with_layers([Dense(d.W + 0.05 * r.normal(size=d.W.shape), d.b) for d in f.dense], f.masks)
    box = Box([-1.0, -1.0], [1.0, 1.0])
    return f, g, box, r


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10 ** 6), split=st.booleans())
def test_verdicts_agree_with_sampling(seed, split):
    """A proved epsilon is never exceeded at sampled points; a counterexample really exceeds it."""
    f, g, box, r = random_pair(seed)
    X = box.sample(20000, r)
    true_max = np.abs(f.forward(X) - g.forward(X)).max()
    eps = max(float(true_max) * float(r.choice([0.5, 0.9, 1.1, 2.0])), 1e-3)
    res = run_check(f, g, box, epsilon=eps, **({} if split else {"split_max_inputs": 0}))
    assert res.verdict in ("equivalent", "not_equivalent")
    if res.verdict == "equivalent":
        assert true_max <= eps + 1e-9 and res.max_diff_upper >= true_max - 1e-9
    else:
        c = res.counterexample
        assert np.abs(f.forward(c.input.astype(float)) - g.forward(c.input.astype(float))).max() > eps - 1e-5
    assert res.max_diff_upper >= res.max_diff_lower - 1e-6


# ---- real networks -----------------------------------------------------------------------------------------

def test_acas_float16_copy_is_proved(acas_1_1, prop3_box):
    g = float16_copy(acas_1_1)
    r = run_check(acas_1_1, g, prop3_box, epsilon=0.05)
    assert r.verdict == "equivalent"
    X = prop3_box.sample(5000, np.random.default_rng(0))
    seen = np.abs(acas_1_1.forward(X) - g.forward(X)).max()
    assert seen <= r.max_diff_upper <= 0.05
    # the pieces tile the region: their volumes add up
    vol = sum(np.prod(p.hi - p.lo) for p in r.pieces)
    assert vol == pytest.approx(np.prod(prop3_box.hi - prop3_box.lo), rel=1e-9)


def test_acas_changed_weight_gives_a_counterexample(acas_1_1, prop3_box):
    dense = [Dense(d.W.copy(), d.b.copy()) for d in acas_1_1.dense]
    i = np.unravel_index(np.abs(dense[0].W).argmax(), dense[0].W.shape)
    dense[0].W[i] *= -1
    g = acas_1_1.with_layers(dense, acas_1_1.masks)
    r = run_check(acas_1_1, g, prop3_box, epsilon=0.05)
    assert r.verdict == "not_equivalent"
    x = r.counterexample.input
    assert prop3_box.contains(x.astype(float)[None])[0]
    a = OnnxRunner(str(acas_path(1, 1)))(x[None])[0]
    assert np.abs(a - g.forward(x.astype(float))).max() > 0.05


def test_mnist_pruned_copy_linf(bench, mnist_256x2, mnist_box):
    f = mnist_256x2
    g = pruned_copy(f, 0.1)
    r = run_check(f, g, mnist_box, epsilon=0.5)
    assert r.verdict == "equivalent"
    X = mnist_box.sample(2000, np.random.default_rng(1))
    assert np.abs(f.forward(X) - g.forward(X)).max() <= r.max_diff_upper <= 0.5


def test_product_milp_with_a_size_limited_licence_proves_nothing(acas_1_1, prop3_box):
    pytest.importorskip("gurobipy")
    g = float16_copy(acas_1_1)
    r = run_check(acas_1_1, g, prop3_box, epsilon=0.002, backend="gurobi", split_max_inputs=0,
                  query_time_limit=5, max_pieces=1, time_limit=30)
    # the product model of two ACAS nets exceeds the pip licence: no query can prove, so no "equivalent"
    assert r.verdict in ("unknown", "not_equivalent")
    if r.verdict == "unknown":
        assert r.stats["too_large"] >= 1 and any("too large" in n for n in r.notes)


# ---- CLI -------------------------------------------------------------------------------------------------------

def _save(net, path):
    onnx.save(network_to_onnx(net), str(path))
    return str(path)


def test_cli_check_report_and_exit_codes(bench, tmp_path, capsys, acas_1_1):
    a = str(acas_path(1, 1))
    b = _save(float16_copy(acas_1_1), tmp_path / "fp16.onnx")
    spec = str(ACAS / "prop_3.vnnlib")
    rep = tmp_path / "r.json"
    assert main(["check", a, b, "--spec", spec, "--epsilon", "0.05", "--report", str(rep), "--json"]) == 0
    data = json.loads(rep.read_text())
    for key in ("verdict", "norm", "epsilon", "max_diff_upper", "max_diff_lower", "counterexample", "backend", "seconds",
                "pieces"):
        assert key in data
    assert data["verdict"] == "equivalent" and data["counterexample"] is None and data["epsilon"] == [0.05] * 5
    assert json.loads(capsys.readouterr().out)["verdict"] == "equivalent"
    # a vector epsilon, one per output
    assert main(["check", a, b, "--spec", spec, "--epsilon", "0.05,0.05,0.05,0.05,0.05"]) == 0
    assert "EQUIVALENT" in capsys.readouterr().out
    # a time limit too short for prop_1's big box: unknown, exit 3, with the proven interval
    assert main(["check", a, b, "--spec", str(ACAS / "prop_1.vnnlib"), "--epsilon", "0.05", "--time-limit", "0.01",
                 "--json"]) == 3
    out = json.loads(capsys.readouterr().out)
    assert out["verdict"] == "unknown" and out["max_diff_upper"] >= out["max_diff_lower"]
    # counterexample: exit 1, input flattened in the model's order, outputs from onnxruntime
    dense = [Dense(d.W.copy(), d.b.copy()) for d in acas_1_1.dense]
    dense[0].W[np.unravel_index(np.abs(dense[0].W).argmax(), dense[0].W.shape)] *= -1
    c = _save(acas_1_1.with_layers(dense, acas_1_1.masks), tmp_path / "changed.onnx")
    assert main(["check", a, c, "--spec", spec, "--epsilon", "0.05", "--json"]) == 1
    cex = json.loads(capsys.readouterr().out)["counterexample"]
    assert len(cex["input"]) == 5 and len(cex["output_a"]) == 5
    assert np.abs(np.array(cex["output_a"]) - np.array(cex["output_b"])).max() > 0.05


def test_cli_check_bad_input(bench, tmp_path, capsys):
    a = str(acas_path(1, 1))
    m = str(MNIST / "mnist-net_256x2.onnx")
    assert main(["check", a, m, "--spec", str(ACAS / "prop_3.vnnlib"), "--epsilon", "0.05"]) == 2
    assert "different inputs" in capsys.readouterr().err
    assert main(["check", a, a, "--spec", str(ACAS / "prop_3.vnnlib")]) == 2          # no epsilon
    assert main(["check", a, a, "--spec", str(ACAS / "prop_3.vnnlib"), "--epsilon", "x"]) == 2
    assert main(["check", a, a, "--spec", str(ACAS / "prop_3.vnnlib"), "--epsilon", "0.1,0.2"]) == 2
    assert main(["check", a, str(tmp_path / "missing.onnx"), "--spec", str(ACAS / "prop_3.vnnlib"),
                 "--epsilon", "0.1"]) == 2


def test_simplify_certify(tmp_path, capsys):
    out, rep = tmp_path / "small.onnx", tmp_path / "r.json"
    code = main(["simplify", str(MODELS / "digits_mlp.onnx"), "--spec", str(MODELS / "digits_mlp_ball.vnnlib"),
                 "-o", str(out), "--report", str(rep), "--certify"])
    assert code == 0 and out.exists()
    cert = json.loads(rep.read_text())["certificate"]
    assert cert["verdict"] == "equivalent" and cert["epsilon"] == [1e-4] * 10
    assert cert["max_diff_upper"] <= 1e-4
    assert "certificate: equivalent" in capsys.readouterr().out
    # and `equiv check` reads equiv's own output (layers with linear channels) back
    assert main(["check", str(MODELS / "digits_mlp.onnx"), str(out), "--spec", str(MODELS / "digits_mlp_ball.vnnlib"),
                 "--epsilon", "1e-4", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["verdict"] == "equivalent"


def test_simplified_acas_is_certified(bench, tmp_path):
    box = load_region(spec=ACAS / "prop_4.vnnlib")[0]
    from equiv.apps.simplify import simplify
    from equiv.prove.equivalence import certify_simplified
    res = simplify(acas_path(1, 1), box)
    cert = certify_simplified(res, tolerance=1e-4)
    assert cert.verdict == "equivalent" and cert.max_diff_upper <= 1e-4
    assert not cert.stats["aligned"]      # different widths: paired by values at sample points
    assert load_cached(acas_path(1, 1)).n_relus > res.simplified.n_relus


@pytest.mark.parametrize("split", [True, False])
def test_networks_of_different_depths(split):
    """A linear hidden layer merged into the next one (as `equiv simplify` does) is the same function."""
    r = np.random.default_rng(3)
    d = [Dense(r.normal(size=(4, 2)), r.normal(size=4)), Dense(r.normal(size=(3, 4)), r.normal(size=3)),
         Dense(r.normal(size=(2, 3)), r.normal(size=2))]
    f = tiny_net([(x.W.tolist(), x.b.tolist()) for x in d], [np.ones(4, bool), np.zeros(3, bool)])
    g = tiny_net([(d[0].W.tolist(), d[0].b.tolist()), ((d[2].W @ d[1].W).tolist(), (d[2].W @ d[1].b + d[2].b).tolist())])
    kw = {} if split else {"split_max_inputs": 0}
    for a, b in ((f, g), (g, f)):
        res = run_check(a, b, Box([-1.0, -1.0], [1.0, 1.0]), epsilon=1e-6, **kw)
        assert res.verdict == "equivalent" and res.max_diff_upper <= 1e-6 and not res.stats["aligned"]


# ---- a MILP point the real networks do not confirm ------------------------------------------------------

@pytest.mark.parametrize("seed, verdict", [(0, "unknown"), (1, "equivalent")])
def test_unconfirmed_milp_point_is_never_a_counterexample(seed, verdict):
    """epsilon just above the true maximum and a decision margin wider than the gap: the MILP decision
    returns points with |f - g| in [epsilon - margin, epsilon], which onnxruntime does not confirm.  They are
    not reported; a maximisation bounds the piece and the piece is bisected (seed 1: the halves are then
    proved by the difference bounds; seed 0: the piece holding the maximum stays unknown)."""
    f, g, box, r = random_pair(seed)
    m = run_check(f, g, box, measure=True, measure_rtol=1e-9, measure_atol=1e-9, split_max_inputs=0)
    true_max = m.max_diff_lower                         # seen in onnxruntime; the MILP proves it within 1e-5
    assert m.max_diff_upper <= true_max + 1e-5
    eps = m.max_diff_upper + 0.004
    res = run_check(f, g, box, epsilon=eps, margin=0.01, split_max_inputs=0, max_pieces=4)
    assert res.counterexample is None and res.verdict == verdict
    assert res.stats["milp_unconfirmed"] >= 1 and any("not confirmed in onnxruntime" in n for n in res.notes)
    assert true_max <= res.max_diff_upper <= eps + 0.011 * max(1.0, eps)
    unknown = sum(p.verdict == "unknown" for p in res.pieces)
    assert unknown == 0 if verdict == "equivalent" else unknown >= 1


# ---- choosing the split dimension by looking ahead ------------------------------------------------------

def test_lookahead_picks_the_dimension_with_the_best_worse_half():
    """The batched lookahead agrees with bounding the halves of each dimension one at a time."""
    from types import SimpleNamespace
    from equiv.prove.equivalence import search
    from equiv.spec.bisect import Node
    for seed in range(6):
        f, g, box, r = random_pair(seed)
        pair = align(f, g)
        st_ = SimpleNamespace(pair=pair, opt=CheckOptions(epsilon=0.01), eps=np.full(2, 0.01), stats={"boxes": 0})
        los = [box.lo, np.array([-0.5, 0.0])]
        his = [box.hi, np.array([0.5, 1.0])]
        nodes = [Node(lo, hi, search._Data(pair_bounds(pair, lo[None], hi[None]), None, None))
                 for lo, hi in zip(los, his)]
        got, halves = search._lookahead_dims(st_, nodes, box.hi - box.lo)
        assert len(halves) == 2 * len(nodes)
        for n, d in zip(nodes, got):
            worse = []
            for dim in range(2):
                mid = (n.lo[dim] + n.hi[dim]) / 2
                a_hi, b_lo = n.hi.copy(), n.lo.copy()
                a_hi[dim], b_lo[dim] = mid, mid
                pb = pair_bounds(pair, np.array([n.lo, b_lo]), np.array([a_hi, n.hi]),
                                 search._stack_known([n.data.bounds] * 2))
                found = search.analyse(st_, pb)
                worse.append(found[1].max())
                if dim == d:
                    # the halves kept for the chosen dimension are the ones a fresh bound gives (same cut, to the bit)
                    for j, (lo, hi) in enumerate(((n.lo, a_hi), (b_lo, n.hi))):
                        kept = halves[(lo.tobytes(), hi.tobytes())]
                        assert kept.proved == found[0][j] and np.allclose(kept.absd, found[2][j], rtol=1e-9, atol=1e-12)
                        assert np.array_equal(kept.bounds().lo, lo[None])
            assert worse[d] <= min(worse) + 1e-9
        # an input one ulp wide is never cut by the look-ahead or the guess: its halves would be the box itself
        thin = Node(np.array([0.1, -0.5]), np.array([np.nextafter(0.1, 1.0), 0.5]),
                    search._Data(pair_bounds(pair, np.array([[0.1, -0.5]]), np.array([[np.nextafter(0.1, 1.0), 0.5]])),
                                 None, None))
        assert search._lookahead_dims(st_, [thin], box.hi - box.lo)[0] == [1]
        assert search._split_dims(thin.lo[None], thin.hi[None], np.array([[1e6, 0.0]]), box.hi - box.lo)[0] == 1


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10 ** 6))
def test_verdicts_with_lookahead_from_the_start_agree_with_sampling(seed):
    from equiv.prove.equivalence import search
    f, g, box, r = random_pair(seed)
    X = box.sample(20000, r)
    true_max = np.abs(f.forward(X) - g.forward(X)).max()
    eps = max(float(true_max) * float(r.choice([0.9, 1.1, 2.0])), 1e-3)
    old, search.LOOKAHEAD_AFTER = search.LOOKAHEAD_AFTER, 0
    try:
        res = run_check(f, g, box, epsilon=eps)
    finally:
        search.LOOKAHEAD_AFTER = old
    assert res.verdict in ("equivalent", "not_equivalent")
    if res.verdict == "equivalent":
        assert true_max <= eps + 1e-9 and res.max_diff_upper >= true_max - 1e-9
    else:
        assert true_max > eps or res.max_diff_lower > eps


def test_bounding_in_chunks_of_boxes_is_sound_and_counted():
    """`_bound_boxes` cuts a batch into chunks (for the cache).  Which rows are back-substituted depends on the
    batch, so the bounds may differ from one call's, but each box's bound holds on sampled points."""
    from types import SimpleNamespace
    from equiv.prove.equivalence import search
    for seed in range(4):
        f, g, box, r = random_pair(seed)
        pair = align(f, g)
        st_ = SimpleNamespace(pair=pair, opt=CheckOptions(epsilon=0.01), eps=np.full(2, 0.01), stats={"boxes": 0})
        parent = pair_bounds(pair, box.lo[None], box.hi[None])
        c = box.sample(7, r)
        lo, hi = np.maximum(c - 0.1, box.lo), np.minimum(c + 0.1, box.hi)
        old, search.BOX_CHUNK = search.BOX_CHUNK, 3
        try:
            chunked = search._bound_boxes(st_, lo, hi, [parent] * 7)
        finally:
            search.BOX_CHUNK = old
        whole = search._bound_boxes(st_, lo, hi, [parent] * 7)
        assert st_.stats["boxes"] == 14
        for n, (a, b) in enumerate(zip(chunked, whole)):
            X = lo[n] + r.random((2000, 2)) * (hi[n] - lo[n])
            seen = np.abs(f.forward(X) - g.forward(X)).max(axis=0)
            for h in (a, b):
                assert np.all(seen <= h.absd + 1e-12)
                assert h.proved == bool(np.all(h.absd <= 0.01))
                assert np.array_equal(h.bounds().lo, lo[n][None])


def test_bounding_from_the_parents_lines_is_sound_and_counted():
    """With a parent's input-space lines, `_bound_boxes` tries each box shallowly first (the lines evaluated on
    it, one walk back from the output) and sweeps fully only the boxes that leaves open; "shallow" stops after
    the first step and marks the open boxes, "full" skips it.  Every box's bound holds on sampled points."""
    from types import SimpleNamespace
    from equiv.prove.equivalence import search
    for seed in range(4):
        f, g, box, r = random_pair(seed)
        pair = align(f, g)
        parent = pair_bounds(pair, box.lo[None], box.hi[None], forms=True)
        c = box.sample(9, r)
        lo, hi = np.maximum(c - 0.05 * (seed + 1), box.lo), np.minimum(c + 0.05 * (seed + 1), box.hi)
        # epsilon: the median box's bound, so that some boxes close and some do not
        probe = SimpleNamespace(pair=pair, opt=CheckOptions(epsilon=1.0), eps=np.full(2, 1.0))
        eps = float(np.median(search.analyse(probe, pair_bounds(pair, lo, hi))[2].max(axis=1)))
        got = {}
        for how in ("shallow", "auto", "full"):
            st_ = SimpleNamespace(pair=pair, opt=CheckOptions(epsilon=eps), eps=np.full(2, eps), stats={"boxes": 0})
            got[how] = search._bound_boxes(st_, lo, hi, [parent] * 9, how)
            shallow_open = sum(h.shallow for h in got[how])
            if how == "shallow":
                assert st_.stats == {"boxes": 0, "shallow_boxes": 9}
                assert all(h.shallow == (not h.proved) for h in got[how])
            elif how == "full":
                assert st_.stats == {"boxes": 9} and shallow_open == 0
            else:
                closed = sum(h.proved for h in got["shallow"])
                assert st_.stats == {"boxes": 9 - closed, "shallow_boxes": 9} and shallow_open == 0
        for n in range(9):
            X = lo[n] + r.random((2000, 2)) * (hi[n] - lo[n])
            seen = np.abs(f.forward(X) - g.forward(X)).max(axis=0)
            for how, h in got.items():
                assert np.all(seen <= h[n].absd + 1e-12), how
                assert h[n].proved == bool(np.all(h[n].absd <= eps))
                assert np.array_equal(h[n].bounds().lo, lo[n][None])


def test_a_shallow_look_ahead_that_did_not_pay_turns_full():
    """The look-ahead on shallow bounds picks its best worse half by those bounds, marks the kept halves, and a
    subtree whose cut did not pay (worse half above PAYS x its parent's score) looks ahead on full bounds."""
    from types import SimpleNamespace
    from equiv.prove.equivalence import search
    from equiv.spec.bisect import Node
    f, g, box, r = random_pair(3)
    pair = align(f, g)
    st_ = SimpleNamespace(pair=pair, opt=CheckOptions(epsilon=1e-4), eps=np.full(2, 1e-4), stats={"boxes": 0})
    node = Node(box.lo, box.hi, search._Data(pair_bounds(pair, box.lo[None], box.hi[None], forms=True), None, None))
    (d,), halves = search._lookahead_dims(st_, [node], box.hi - box.lo, shallow=True)
    assert st_.stats["boxes"] == 0 and st_.stats["shallow_boxes"] == 4
    assert len(halves) == 2 and all(h.looked_shallow and h.dim == d for h in halves.values())
    # runs with a tight epsilon and the look-ahead from the first box, where every shallow cut "did not pay"
    # (PAYS = 0): sound whichever way they cut
    old = search.LOOKAHEAD_AFTER, search.PAYS
    search.LOOKAHEAD_AFTER, search.PAYS = 0, 0.0
    try:
        for seed in (0, 2, 5):
            f, g, box, r = random_pair(seed)
            X = box.sample(20000, r)
            true_max = float(np.abs(f.forward(X) - g.forward(X)).max())
            res = run_check(f, g, box, epsilon=1.05 * true_max, max_boxes=3000)
            assert res.verdict == "equivalent" and res.max_diff_upper >= true_max - 1e-9
            assert res.stats["shallow_boxes"] > 0 and res.stats["boxes"] > 1
            assert res.stats.get("full_lookaheads", 0) > 0
    finally:
        search.LOOKAHEAD_AFTER, search.PAYS = old


def test_without_kept_lines_every_box_gets_the_full_sweep():
    """Above LINES_MAX numbers per box (a big network over many inputs) no lines are kept: no shallow bounds,
    the same sound verdicts; ACAS Xu keeps them, MNIST 256x2 (784 inputs) does not."""
    from equiv.prove.equivalence import search
    f, g, box, r = random_pair(0)
    X = box.sample(20000, r)
    true_max = float(np.abs(f.forward(X) - g.forward(X)).max())
    old = search.LINES_MAX
    search.LINES_MAX = 0
    try:
        res = run_check(f, g, box, epsilon=1.05 * true_max, max_boxes=3000)
    finally:
        search.LINES_MAX = old
    assert res.verdict == "equivalent" and res.max_diff_upper >= true_max - 1e-9
    assert res.stats["shallow_boxes"] == 0 and res.stats["boxes"] > 1
    assert search._keep_lines(align(f, g))


def test_bench_group_rerun_keeps_the_other_groups(tmp_path):
    """`equiv bench --suite equivalence --group G` replaces G's rows in the results and keeps the others, in
    suite order, each with its own time limit."""
    from equiv.bench import equivalence as eb
    order = [c["group"] for c in eb.cases()]
    first, last = order[0], order[-1]
    row = lambda group, net, limit: {"group": group, "kind": "float16", "network": net, "prop": "p", "norm": "linf",  # noqa: E731
                                     "epsilon": 0.05, "verdict": "equivalent", "seconds": 1.0, "time_limit": limit,
                                     "max_diff_upper": float("inf"), "max_diff_lower": 0.0, "boxes": 1,
                                     "milp_queries": 0, "pieces": 1, "methods": ["bounds"], "notes": []}
    eb._write([row(first, "a", 300.0), row(last, "b", 60.0)], 2, tmp_path, 300.0)
    kept = eb._other_groups(tmp_path, last)
    assert [r["network"] for r in kept] == ["a"] and kept[0]["max_diff_upper"] == float("inf")
    merged = eb._in_suite_order([row(last, "c", 30.0)] + kept)
    assert [r["network"] for r in merged] == ["a", "c"]
    eb._write(merged, 2, tmp_path, 300.0)
    text = (tmp_path / "equivalence.md").read_text()
    assert f"| {last} | 0.05 | 1 | 1 | 0 | 0 | 1.00 | 1.00 | 30 |" in text
    assert f"| {first} | 0.05 | 1 | 1 | 0 | 0 | 1.00 | 1.00 | 300 |" in text


def test_acas_float16_on_prop_1_by_look_ahead_survives_onnxruntime_samples(acas_1_1):
    """The look-ahead path on a real pair (from the first box, kept halves, repeated dimension, chunks): ACAS Xu
    1_1 against its float16 copy on prop_1's big box is proved, and 10 000 onnxruntime points agree."""
    from equiv.prove.equivalence import search
    box, _ = load_region(spec=str(ACAS / "prop_1.vnnlib"))
    g = float16_copy(acas_1_1)
    old = search.LOOKAHEAD_AFTER, search.BOX_CHUNK
    search.LOOKAHEAD_AFTER, search.BOX_CHUNK = 0, 64
    try:
        r = run_check(acas_1_1, g, box, epsilon=0.05, time_limit=120)
    finally:
        search.LOOKAHEAD_AFTER, search.BOX_CHUNK = old
    assert r.verdict == "equivalent" and r.stats["boxes"] > 100
    assert r.max_diff_upper <= 0.05
    X = box.sample(10000, np.random.default_rng(1)).astype(np.float32)
    a = OnnxRunner(str(acas_path(1, 1)))(X)
    b = OnnxRunner(network_to_onnx(g))(X)
    seen = float(np.abs(a.astype(np.float64) - b).max())
    assert seen <= r.max_diff_upper
