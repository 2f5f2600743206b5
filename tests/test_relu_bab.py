"""Branch and bound over ReLU phases with alpha-beta-CROWN bounds (`prove/relu_bab.py`): never proves a
maximum below its exact value (brute force over phase patterns), its witnesses are real, it decides what
the MILP decides on a real MNIST margin, and its rounding margin grows with the size of the terms."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import exact_max, random_problem, small_problems
from equiv.bounds.deeppoly import deeppoly_bounds
from equiv.prove.relu_bab import _Domains, _Queue, decide_many, decide_max


def _query(net, box, w: np.ndarray, b: float):
    """The layers, masks and hidden bounds of `decide_max` for max w . z_out + b (z_out: the output
    pre-activation), written as c . h + d on the last hidden output h."""
    bounds = deeppoly_bounds(net, box)
    last = net.dense[-1]
    layers = [(d.W, d.b) for d in net.dense[:-1]]
    return dict(layers=layers, masks=list(net.masks), lo=box.lo, hi=box.hi, hidden_lo=bounds.lo[:-1],
                hidden_hi=bounds.hi[:-1], c=w @ last.W, d=float(w @ last.b + b))


@settings(max_examples=60, deadline=None)
@given(problem=small_problems(max_layers=3, max_width=6), seed=st.integers(0, 10 ** 6),
       gap=st.sampled_from([1e-3, 0.05, 0.5]))
def test_never_below_the_exact_maximum(problem, seed, gap):
    """Against the exact maximum (an LP per phase pattern): a threshold under it is never proved, and a
    point returned above it really is above; a threshold over it is never refuted by a point."""
    net, box = problem
    w = np.random.default_rng(seed).normal(size=net.n_outputs)
    q = _query(net, box, w, 0.0)
    best = exact_max(net, box, len(net.dense) - 1, w, 0.0)
    under = decide_max(**q, threshold=best - gap, time_limit=20.0)
    assert under.verdict != "below"
    if under.verdict == "above":
        assert box.contains(under.x[None])[0]
        assert w @ net.forward(under.x) > best - gap
    over = decide_max(**q, threshold=best + gap, time_limit=20.0)
    assert over.verdict != "above"
    if over.verdict == "below":
        assert best <= over.bound <= best + gap


@settings(max_examples=40, deadline=None)
@given(problem=small_problems(max_layers=2, max_width=5, linear_channels=False), seed=st.integers(0, 10 ** 6))
def test_decides_small_nets_with_splits(problem, seed):
    """Complete in practice on small nets: 10 % above the exact maximum is proved (splitting where the first
    bound is loose), 10 % below it a point is found."""
    net, box = problem
    w = np.random.default_rng(seed).normal(size=net.n_outputs)
    q = _query(net, box, w, 0.0)
    best = exact_max(net, box, len(net.dense) - 1, w, 0.0)
    gap = 0.1 * max(abs(best), 1e-2)
    assert decide_max(**q, threshold=best + gap, time_limit=20.0).verdict == "below"
    assert decide_max(**q, threshold=best - gap, time_limit=20.0).verdict == "above"


def test_splits_when_the_first_bound_is_loose():
    """Random 2-layer nets where the root bound does not decide: the proof needs more than one domain."""
    split = 0
    for seed in range(12):
        net, box = random_problem(seed, 3, [5, 4], 1, linear_channels=False)
        q = _query(net, box, np.ones(1), 0.0)
        best = exact_max(net, box, 2, np.ones(1), 0.0)
        r = decide_max(**q, threshold=best + 1e-3 * max(1.0, abs(best)), time_limit=20.0)
        assert r.verdict == "below"
        split += r.domains > 1
    assert split >= 3


def test_rounding_margin_grows_with_the_terms():
    """max (h1 - h2) with h1 = h2 = 1e8 x on [0, 1] is exactly 0, a difference of terms of size 1e8: the
    certified bound stays above 0 by the margin on those terms, so 0 is not proved at margin 0, and a
    threshold beyond the margin is."""
    from equiv.ir.network import Dense, Network
    from equiv.spec.region import Box
    net = Network.from_layers([Dense(np.array([[1e8], [1e8]]), np.zeros(2)),
                               Dense(np.array([[1.0, -1.0]]), np.zeros(1))], [np.ones(2, bool)])
    box = Box(np.zeros(1), np.ones(1))
    q = _query(net, box, np.ones(1), 0.0)
    assert decide_max(**q, threshold=0.0, time_limit=5.0, margin=0.0).verdict == "unknown"
    r = decide_max(**q, threshold=1e-2, time_limit=5.0, margin=0.0)
    assert r.verdict == "below" and 0.0 < r.bound <= 1e-2


def test_unknown_on_time_and_infinite_bounds():
    net, box = random_problem(3, 3, [5, 4], 1, linear_channels=False)
    q = _query(net, box, np.ones(1), 0.0)
    best = exact_max(net, box, 2, np.ones(1), 0.0)
    assert decide_max(**q, threshold=best + 1e-3, time_limit=0.0).verdict == "unknown"
    q["hidden_hi"] = [np.full_like(a, np.inf) for a in q["hidden_hi"]]
    r = decide_max(**q, threshold=best + 1.0, time_limit=5.0)
    assert r.verdict == "unknown" and "infinite" in r.message


def _needs_splits():
    """A random net and a threshold just above its exact maximum that the root bound does not prove."""
    for seed in range(40):
        net, box = random_problem(seed, 3, [5, 4], 1, linear_channels=False)
        q = _query(net, box, np.ones(1), 0.0)
        best = exact_max(net, box, 2, np.ones(1), 0.0)
        t = best + 1e-3 * max(1.0, abs(best))
        if decide_max(**q, threshold=t, time_limit=20.0).domains > 3:
            return q, best, t
    raise AssertionError("no random net needed a split")


@pytest.mark.parametrize("quantum", [256, 16, 1])
def test_many_questions_answer_as_one_at_a_time(quantum):
    """decide_many on rows that need splits, are false, or are proved at the root gives each row the verdict
    decide_max gives it alone, whatever the domains a question gets per turn; with groups, a row proved drops
    the other rows of its group as moot."""
    q, best, t = _needs_splits()
    many = dict(layers=q["layers"], masks=q["masks"], lo=q["lo"], hi=q["hi"], hidden_lo=q["hidden_lo"],
                hidden_hi=q["hidden_hi"], C=np.repeat(q["c"][None], 3, axis=0), d=np.full(3, q["d"]),
                time_limit=20.0)
    ths = np.array([t, best - 0.1 * max(1.0, abs(best)), best + 1e3])
    alone = [decide_max(**q, threshold=x, time_limit=20.0).verdict for x in ths]
    assert alone == ["below", "above", "below"]
    assert [r.verdict for r in decide_many(**many, thresholds=ths, quantum=quantum)] == alone
    # rows 0 and 2 alternatives: row 2 is proved by the first batch's root bound, so row 0 is dropped
    r = decide_many(**many, thresholds=ths, groups=np.array([7, 5, 7]), quantum=quantum)
    assert [x.verdict for x in r] == ["unknown", "above", "below"] and "moot" in r[0].message


def test_too_many_domains_gives_up_the_question_and_ends_cleanly():
    """A question that needs splits, with room for one open domain: it is given up ("too many domains"),
    and the search ends with the queue empty (it once asked an empty queue for a batch)."""
    q, best, t = _needs_splits()
    r = decide_many(q["layers"], q["masks"], q["lo"], q["hi"], q["hidden_lo"], q["hidden_hi"], q["c"][None],
                    np.array([q["d"]]), np.array([t]), time_limit=20.0, max_pending=1)[0]
    assert r.verdict == "unknown" and "too many domains" in r.message


def test_stall_gives_up_when_nothing_is_decided():
    q, best, t = _needs_splits()
    r = decide_many(q["layers"], q["masks"], q["lo"], q["hi"], q["hidden_lo"], q["hidden_hi"], q["c"][None],
                    np.array([q["d"]]), np.array([t]), time_limit=20.0, stall=0.0)[0]
    assert r.verdict == "unknown" and "nothing decided" in r.message and r.domains >= 1


def test_progress_reports_follow_the_answers(monkeypatch):
    """report(proved, points) sees the counts grow to the rows proved and refuted."""
    import equiv.prove.relu_bab as rb
    monkeypatch.setattr(rb, "REPORT_EVERY", 0.0)
    q, best, t = _needs_splits()
    seen = []
    ths = np.array([t, best - 0.1 * max(1.0, abs(best)), best + 1e3])
    r = decide_many(q["layers"], q["masks"], q["lo"], q["hi"], q["hidden_lo"], q["hidden_hi"],
                    np.repeat(q["c"][None], 3, axis=0), np.full(3, q["d"]), ths, time_limit=20.0,
                    report=lambda p, x: seen.append((p, x)))
    assert [x.verdict for x in r] == ["below", "above", "below"]
    assert seen and seen == sorted(seen) and seen[-1] == (2, 1)


def test_queue_serves_the_least_worked_questions_first():
    """The open domains: lowest level first, then by question, newest chunk first within a question, a
    chunk split when the batch is full; the counts follow."""
    def doms(obj):
        obj = np.asarray(obj)
        z = [np.zeros((obj.size, 2))]
        return _Domains(z, z, z, z, [np.arange(obj.size, dtype=float)[:, None].repeat(2, axis=1)], obj)
    queue = _Queue(3)
    queue.push(doms([0, 1, 2, 0]))
    queue.push(doms([2, 2, 2]))
    assert queue.size == 7 and list(queue.count) == [2, 1, 4]
    got = queue.pop(4, np.array([1, 0, 0]))        # question 0 has done the most work: last
    assert list(got.obj) == [1, 2, 2, 2]
    assert list(got.beta[0][:, 0]) == [1.0, 0.0, 1.0, 2.0]     # question 2's newest chunk, whole
    assert list(queue.count) == [2, 0, 1] and 1 not in queue.stacks
    got = queue.pop(2, np.array([0, 0, 0]))
    assert list(got.obj) == [0, 0]
    queue.drop(2)
    assert queue.size == 0 and not queue.stacks


@pytest.mark.parametrize("k", [0, 2, 7])
def test_mnist_margin_agrees_with_the_milp(mnist_256x2, mnist_box, k):
    """MNIST 256x2 on prop_0: the margin f_c - f_k against the MILP (HiGHS) of the same question, at a
    threshold below and above its sampled minimum; proofs hold at 10 000 points in onnxruntime."""
    from equiv.artifacts.validate import OnnxRunner
    from equiv.bounds.common import Bounds
    from equiv.encode.chain import encode_network
    from equiv.ir.chain_io import network_to_onnx
    from equiv.prove.equivalence.margins import margin_network
    from equiv.solvers import make_backend
    net, box = mnist_256x2, mnist_box
    c = int(net.forward(box.center[None])[0].argmax())
    fm = margin_network(net, c)
    b = deeppoly_bounds(net, box)
    hidden = Bounds(b.lo[:-1], b.hi[:-1])
    X = np.vstack([box.sample(10000, np.random.default_rng(k)), box.center[None]]).astype(np.float32)
    y = OnnxRunner(network_to_onnx(net))(X).astype(float)
    m = y[:, c] - np.delete(y, c, axis=1)[:, k]
    row = fm.dense[2]
    layers = [(d.W, d.b) for d in fm.dense[:2]]
    enc = encode_network(fm, box, hidden, depth=2, integer=True)
    milp = make_backend("highs", enc.model)
    for t in (0.5 * m.min(), m.min() + 1e-3):
        r = decide_max(layers, fm.masks[:2], box.lo, box.hi, hidden.lo, hidden.hi, -row.W[k], -row.b[k], -t,
                       time_limit=60.0)
        cc, off = enc.objective(-row.W[k], -row.b[k])
        dec = milp.decide(cc, off, -t, time_limit=120.0, margin=1e-6)
        assert r.verdict == dec.verdict
        if r.verdict == "below":
            assert m.min() >= t
        else:
            assert r.verdict == "above" and box.contains(r.x[None])[0]
            z = OnnxRunner(network_to_onnx(net))(r.x[None].astype(np.float32))[0].astype(float)
            assert z[c] - np.delete(z, c)[k] < t + 1e-4


@settings(max_examples=30, deadline=None)
@given(problem=small_problems(max_layers=2, max_width=5, linear_channels=False), seed=st.integers(0, 10 ** 6))
def test_sparse_layers_decide_as_dense_ones(problem, seed):
    """Layers given as scipy sparse matrices (a graph's convolutions in chain form) take the sparse products,
    leaf LPs included: 10 % above the exact maximum is proved, 10 % below it a real point is found, as with
    dense layers."""
    import scipy.sparse as sp
    net, box = problem
    w = np.random.default_rng(seed).normal(size=net.n_outputs)
    q = _query(net, box, w, 0.0)
    q["layers"] = [(sp.csr_array(W), b) for W, b in q["layers"]]
    best = exact_max(net, box, len(net.dense) - 1, w, 0.0)
    gap = 0.1 * max(abs(best), 1e-2)
    assert decide_max(**q, threshold=best + gap, time_limit=20.0).verdict == "below"
    r = decide_max(**q, threshold=best - gap, time_limit=20.0)
    assert r.verdict == "above" and box.contains(r.x[None])[0] and w @ net.forward(r.x) > best - gap
