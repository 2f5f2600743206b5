"""Graphs on a real Dask cluster (127.0.0.1): the MILP decisions and the branch and bound of `simplify` on
convolutional graphs run as tasks on the workers, decide what this process decides, and a failed task
proves nothing.  Also the slots those stages submit through (`distributed.slots`).
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from equiv.bounds.engine import deeppoly_graph
from equiv.distributed.slots import SerialSlots, ThreadSlots, in_flight, slots_for
from equiv.prove.bab_split import BabSplit
from equiv.prove.graph_bab import bab_stage
from equiv.prove.graph_milp import milp_stage

from conftest import CIFAR, ROOT, needs_bench
from test_graph_milp import two_convs

CLI = [sys.executable, "-c", "import sys\nfrom equiv.cli import main\nif __name__ == '__main__':\n sys.exit(main())"]


def _unseen(g):
    """No sampled signs: every open position gets a question."""
    return ({r: np.zeros(g.shape(g.args(r)[0]), bool) for r in g.relus},
            {r: np.zeros(g.shape(g.args(r)[0]), bool) for r in g.relus})


def _same_phases_and_sound(g, box, b_here, b_there):
    x = box.sample(3000, np.random.default_rng(0))
    vals = g.evaluate(x)
    for r in g.relus:
        z = g.args(r)[0]
        assert np.array_equal(b_here.hi[z] <= 0, b_there.hi[z] <= 0)
        assert np.array_equal(b_here.lo[z] >= 0, b_there.lo[z] >= 0)
        assert (vals[z] <= np.maximum(b_there.hi[z], 0) + 1e-9).all()
        assert (vals[z] >= np.minimum(b_there.lo[z], 0) - 1e-9).all()


@pytest.mark.parametrize("slots", [SerialSlots(), ThreadSlots(2), ThreadSlots(3)], ids=["serial", "2", "3"])
def test_in_flight_answers_every_item_once_and_stops_at_the_deadline(slots):
    got, asked = [], []

    def submit(item, seconds):
        asked.append((item, seconds))
        return slots.submit(lambda i: i * i, item)

    answer = lambda f: got.append(f.result())      # noqa: E731
    n = in_flight(list(range(10)), submit, answer, lambda i: i % 3 == 0, lambda: None, 2.0, slots)
    assert n == 10 and sorted(got) == [i * i for i in range(10) if i % 3] and all(s == 2.0 for _, s in asked)
    got.clear()
    clock = iter([5.0, 1.0, 0.01])       # seconds left at each submission: the third is out of time
    n = in_flight(list(range(10)), submit, answer, lambda i: False, lambda: next(clock), 2.0, slots)
    assert n == 2 and sorted(got) == [0, 1] and asked[-2:] == [(0, 2.0), (1, 1.0)]
    slots.close()


def test_slots_for_a_cluster_are_its_workers(cluster):
    s = slots_for(cluster, threads=5)
    assert s.size == 2 and s.submit(pow, 3, 2).result() == 9
    assert isinstance(slots_for(None, 1), SerialSlots) and slots_for(None, 3).size == 3


@pytest.mark.parametrize("seed", [5, 7])
def test_milp_decisions_on_the_cluster_decide_what_this_process_decides(cluster, seed):
    g, box = two_convs(seed)       # (seeds where the MILPs prove what DeepPoly cannot)
    b = deeppoly_graph(g, box)
    b1, s1 = milp_stage(g, box, b, *_unseen(g), time_limit=30, threads=1)
    found = []
    b2, s2 = milp_stage(g, box, b, *_unseen(g), time_limit=30, executor=cluster, points=found)
    assert s1["milp_proved"] == s2["milp_proved"] > 0 and s2["milp"] >= s1["milp"] and "milp_failed" not in s2
    _same_phases_and_sound(g, box, b1, b2)
    x = np.vstack(found)            # the workers' points come back as real inputs of the region
    assert box.contains(x).all()


@pytest.mark.parametrize("seed", [1, 7])
def test_branch_and_bound_split_over_workers_or_threads_decides_what_one_search_decides(cluster, seed):
    g, box = two_convs(seed)
    b = deeppoly_graph(g, box)
    b1, s1 = bab_stage(g, box, b, *_unseen(g), threads=1)            # one search here
    for split in ({"executor": cluster}, {"threads": 2}):
        b2, s2 = bab_stage(g, box, b, *_unseen(g), **split)            # shares on workers, on threads here
        assert s1["bab_proved"] == s2["bab_proved"] > 0 and s1["bab"] == s2["bab"] and "bab_failed" not in s2
        _same_phases_and_sound(g, box, b1, b2)


def test_a_failed_task_proves_nothing(cluster):
    """Tasks whose shared data cannot be used fail on the worker: their questions come back unknown, the
    failures are counted and named."""
    from equiv.prove.graph_milp import _layer
    g, box = two_convs(5)
    b = deeppoly_graph(g, box)
    stats = {}
    from equiv.ir.graph_chain import lower_to_chain
    split = BabSplit(cluster, None, lower_to_chain(g).layers, None)     # (masks None: the tasks fail)
    res = split.search(1, [], [], box.lo, box.hi, [], [], np.eye(3), np.zeros(3), np.array([0, 1, 2]),
                       time_limit=5.0, stall=2.0, margin=1e-6, stats=stats)
    assert [a.verdict for a in res] == ["unknown"] * 3 and stats["bab_failed"] == 2
    assert "TypeError" in stats["bab_failures"][0]
    r = g.relus[0]
    z = g.args(r)[0]
    todo = np.flatnonzero((b.lo[z] < 0).reshape(-1) & (b.hi[z] > 0).reshape(-1))[:4]
    stats = {"milp": 0, "milp_proved": 0, "milp_witnessed": 0, "milp_unknown": 0, "milp_skipped": 0}
    pos, neg = _unseen(g)
    from tqdm import tqdm
    from equiv.prove.graph_journal import PhaseJournal
    with tqdm(disable=True) as bar:
        b2 = _layer(g, box, b, r, todo, 5.0, None, "highs", None, pos, neg, None, PhaseJournal(), stats, bar,
                    slots_for(cluster), cluster.scatter(None), None)
    assert stats["milp_failed"] == stats["milp_unknown"] == todo.size > 0 and stats["milp_proved"] == 0
    assert np.array_equal(b2.hi[z], b.hi[z]) and np.array_equal(b2.lo[z], b.lo[z])


@needs_bench
def test_simplify_a_cnn_with_two_worker_processes(tmp_path):
    """`simplify --workers 2` on cifar10_small: a LocalCluster of two processes runs the branch and bound and
    the MILPs; the model is written and validated, and the report names the cluster."""
    out = tmp_path / "small.onnx"
    r = subprocess.run(CLI + ["simplify", str(CIFAR / "cifar10_small.onnx"), "--spec",
                              str(CIFAR / "networkcifar10_small_index1189_eps0.012_target1_orig0.vnnlib"), "-o", str(out), "--workers", "2", "--milp-budget", "10", "--json",
                              "--no-progress"], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["distributed"] == {"executor": "dask", "workers": 2, "tasks_failed": 0}
    q = rep["queries"]
    assert q["bab"] + q["milp"] > 0 and q["bab_proved"] + q["milp_proved"] > 0
    assert rep["validation"]["max_abs_diff"] <= 1e-4 and out.exists()


def test_a_dask_worker_searches_one_share_at_a_time(cluster):
    """Inside a worker (one thread of a cluster that uses every core) branch and bound does not split again;
    here it splits over the cores."""
    from equiv.distributed.cores import cores_here
    assert cluster.submit(cores_here).result() == 1
    assert cores_here() >= 1


@needs_bench
def test_slopes_split_over_threads_give_the_same_bounds():
    """The slopes stage's rows in 1, 2 or 3 shares on threads: each row's ascent is its own, so the bounds
    agree (to rounding) and the same phases are proved."""
    from conftest import load_box, load_graph_cached
    from equiv.prove.graph_alpha import alpha_stage
    g = load_graph_cached(CIFAR / "cifar10_small.onnx")
    box = load_box(CIFAR / "networkcifar10_small_index1189_eps0.012_target1_orig0.vnnlib")
    b = deeppoly_graph(g, box)
    out = {n: alpha_stage(g, box, b, *_unseen(g), iters=4, threads=n) for n in (1, 2, 3)}
    assert out[1][1]["alpha_rows"] > 32
    for n in (2, 3):
        assert out[n][1]["alpha_proved"] == out[1][1]["alpha_proved"]
        for z in out[1][0].lo:
            assert np.allclose(out[n][0].lo[z], out[1][0].lo[z], rtol=0, atol=1e-9)
            assert np.allclose(out[n][0].hi[z], out[1][0].hi[z], rtol=0, atol=1e-9)


def test_leaving_the_shares_early_tells_the_others_to_stop():
    """A share that fails (here at once; in a run, also a SIGTERM or Ctrl-C in the main thread) sets the
    stop event the other shares watch, so that leaving does not wait for their whole search."""
    from equiv.distributed.cores import map_on_cores
    saw = []

    def share(i, stop):
        if i == 0:
            raise RuntimeError("share 0 fails")
        saw.append(stop.wait(120))       # True as soon as the event is set
        return i
    with pytest.raises(RuntimeError, match="share 0"):
        map_on_cores(share, [0, 1])
    assert saw == [True]
    assert map_on_cores(lambda i, stop: (i, stop.is_set()), [1, 2, 3]) == [(1, False), (2, False), (3, False)]


def test_a_set_stop_event_ends_a_search_like_its_time_limit():
    import threading
    from equiv.ir.graph_chain import lower_to_chain
    from equiv.prove.relu_bab import decide_many
    g, box = two_convs(5)
    b = deeppoly_graph(g, box)
    chain = lower_to_chain(g)
    hl, hh = chain.hidden_bounds(g, box, b.lo, b.hi, 1)
    A, c = chain.rows[1]
    C = (A.toarray() if hasattr(A, "toarray") else A)[:6]
    stop = threading.Event()
    stop.set()
    res = decide_many(chain.layers[:1], chain.masks[:1], box.lo, box.hi, hl, hh, C, c[:6], np.full(6, -1e-3),
                      time_limit=120.0, stop=stop)
    assert all(r.verdict == "unknown" and r.message == "time limit" for r in res)


def test_leaving_answers_early_cancels_the_rest_and_stops_the_running():
    """answers_on_threads: a caller leaving its loop (here after the first answer) cancels the tasks not
    started and sets the running ones' stop; a full loop answers every item once."""
    import threading
    from contextlib import closing
    from equiv.distributed.cores import answers_on_threads
    started, stopped = [], []
    lock = threading.Lock()

    def task(i, stop):
        with lock:
            started.append(i)
        if i == 0:
            return i
        stopped.append(stop.wait(30))      # the others wait for the stop (or 30 s)
        return i

    with closing(answers_on_threads(task, list(range(10)), threads=3)) as answers:
        for i, got in answers:
            assert i == got == 0
            break
    assert sorted(started)[:1] == [0] and len(started) <= 4        # 3 threads: at most one more than 3 started
    assert stopped and all(stopped)
    with closing(answers_on_threads(lambda i, stop: i * i, list(range(10)), threads=3, ordered=True)) as answers:
        assert list(answers) == [(i, i * i) for i in range(10)]
