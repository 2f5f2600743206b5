"""Issue 16: work as data, executors (in-process and a real Dask LocalCluster on 127.0.0.1), the journal,
and the CLI flags --workers / --scheduler / --journal.  No mocks: real clusters, real solvers, real kills."""

from __future__ import annotations

import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from equiv.distributed import InProcessExecutor, Journal, JournalMismatchError, Runner
from equiv.distributed.executor import DaskExecutor
from equiv.distributed.work import LayerSpec, NeuronAnswer, NeuronQuery, run_neuron
from equiv.ir.network import Dense, Network
from equiv.prove.stability import StabilityOptions, prove_stability
from equiv.spec.region import Box

from conftest import MNIST, ROOT, needs_bench, sigterm_once_journalled

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
CLI = [sys.executable, "-c", "import sys\nfrom equiv.cli import main\nif __name__ == '__main__':\n sys.exit(main())"]


def _problem(seed=1):
    """A random 20-24-24-24-5 network on a box of 20 varying inputs: the windowed MILP stage runs (8 queries)."""
    rng = np.random.default_rng(seed)
    ws = [20, 24, 24, 24, 5]
    dense = [Dense(rng.normal(size=(ws[i + 1], ws[i])) / np.sqrt(ws[i]), rng.normal(size=ws[i + 1]) * 0.3)
             for i in range(len(ws) - 1)]
    c = rng.uniform(-1, 1, 20)
    return Network.from_layers(dense), Box(c - 0.15, c + 0.15)


def _phases(res):
    return [(p.layer, p.index, p.phase) for p in res.neurons]


@pytest.fixture(scope="module")
def problem():
    net, box = _problem()
    # MILP decisions only (no branch and bound first): the tests exercise the MILP tasks
    serial = prove_stability(net, box, StabilityOptions(samples=200, bab=False))
    assert serial.queries["milp"] > 0
    return net, box, serial


# ---- work as data ---------------------------------------------------------------------------------------

def test_query_and_answer_pickle_and_answer_json_round_trip(problem):
    net, box, serial = problem
    spec = LayerSpec(net, box, serial.bounds, 2)
    q = NeuronQuery(2, 3, ("dead", "active"), 2, False, False, 10.0, 1e-6, "highs")
    spec2, q2 = pickle.loads(pickle.dumps((spec, q)))
    assert spec2.key == spec.key and q2 == q and q2.key(spec2.key) == q.key(spec.key)
    ans = run_neuron(spec2, q2)
    again = NeuronAnswer.from_json(json.loads(json.dumps(ans.to_json())))
    assert again == ans
    # the key covers the content: other bounds, another key
    other = serial.bounds.copy()
    other.hi[1][0] += 1.0
    assert LayerSpec(net, box, other, 2).key != spec.key


def test_journal_runner_in_process_gives_the_same_phases(problem, tmp_path):
    net, box, serial = problem
    opt = StabilityOptions(samples=200, bab=False)
    jn = Journal(tmp_path / "run.jnl", {"case": "problem"})
    runner = Runner(InProcessExecutor(), jn)
    first = prove_stability(net, box, opt, runner=runner)
    jn.close()
    assert _phases(first) == _phases(serial)
    # every MILP task and every windowed LP answer is journalled
    assert runner.tasks > 0 and jn.written == runner.tasks + serial.queries["lp"]
    # a second run reuses every answer and solves nothing
    jn2 = Journal(tmp_path / "run.jnl", {"case": "problem"})
    runner2 = Runner(InProcessExecutor(), jn2)
    second = prove_stability(net, box, opt, runner=runner2)
    jn2.close()
    assert _phases(second) == _phases(serial)
    assert runner2.tasks == 0 and jn2.reused == jn.written


def test_local_cluster_gives_the_same_phases(problem, cluster):
    net, box, serial = problem
    runner = Runner(cluster)
    res = prove_stability(net, box, StabilityOptions(samples=200, bab=False), runner=runner)
    assert _phases(res) == _phases(serial)
    assert runner.tasks > 0 and not runner.failed


def test_tasks_after_the_layers_branch_and_bound_give_the_same_phases(problem, cluster):
    """With branch and bound on (the default) each layer's shared branch and bound runs first, here, and only
    what it leaves goes out as tasks: the same phases as the serial MILP-only run, fewer tasks."""
    net, box, serial = problem
    runner = Runner(cluster)
    res = prove_stability(net, box, StabilityOptions(samples=200), runner=runner)
    assert _phases(res) == _phases(serial)
    assert res.queries["bab"]["tried"] > 0 and runner.tasks < serial.queries["milp"] and not runner.failed


def test_a_neuron_task_stops_at_the_budget_it_carries_and_its_cut_answer_is_not_journalled(problem, tmp_path):
    """A query carries what is left of --milp-budget (`Runner._query` puts it in); `run_neuron` starts no
    decision once that is spent: the answer is `cut`, without a verdict, and the journal does not keep it
    (its key names the full per-query limit).  The same query without a budget is answered and kept."""
    from dataclasses import replace
    net, box, serial = problem
    spec = LayerSpec(net, box, serial.bounds, 2)
    q = NeuronQuery(2, 3, ("dead", "active"), 2, False, False, 10.0, 1e-6, "highs")
    cut = run_neuron(spec, replace(q, budget=0.0))
    assert cut.cut and cut.verdicts == {} and cut.windows == {} and cut.status == "done"
    jn = Journal(tmp_path / "run.jnl", {"case": "budget"})
    runner = Runner(InProcessExecutor(), jn)
    sent, _, _ = runner._query(spec, 3, lambda i: q, lambda i: True, lambda: 7.5)
    assert sent.budget == 7.5 and sent.key(spec.key) == q.key(spec.key)
    runner._finish(q.key(spec.key), q, InProcessExecutor().submit(run_neuron, spec, replace(q, budget=0.0)))
    assert jn.written == 0
    full = runner._finish(q.key(spec.key), q, InProcessExecutor().submit(run_neuron, spec, q))
    assert not full.cut and full.verdicts and jn.written == 1
    jn.close()


def test_a_spent_budget_sends_no_task_to_the_cluster(problem, cluster):
    """Once the budget is spent no query is sent (the old loop sent the whole layer and then cancelled it
    query by query, 10-15 s per MNIST layer); every neuron is yielded unanswered."""
    net, box, serial = problem
    spec = LayerSpec(net, box, serial.bounds, 2)
    runner = Runner(cluster)

    def make_query(i):
        return NeuronQuery(2, int(i), ("dead", "active"), 2, False, False, 10.0, 1e-6, "highs")
    out = list(runner.neuron_answers(spec, range(6), make_query, lambda i: True, lambda: 0.0))
    assert out == [(i, None) for i in range(6)] and runner.tasks == 0
    some = list(runner.neuron_answers(spec, range(3), make_query, lambda i: True, lambda: 600.0))
    assert [i for i, a in some] == [0, 1, 2] and all(a is not None and not a.cut for _, a in some)
    assert runner.tasks == 3


def test_a_task_that_kills_its_workers_is_reported_not_retried_forever():
    """os._exit in a task kills the worker process; after ALLOWED_FAILURES deaths the scheduler gives up
    and the runner records a failed task (which proves nothing)."""
    ex = DaskExecutor(workers=1)          # one real worker process (a nanny restarts it)
    try:
        runner = Runner(ex)
        q = NeuronQuery(1, 0, ("dead",), 2, False, False, 1.0, 1e-6, "highs")
        ans = runner._finish("k", q, ex.submit(os._exit, 1))
        assert ans.status == "failed" and "KilledWorker" in ans.message
        assert runner.failed and runner.tasks == 0
        assert ex.submit(abs, -3).result() == 3          # the cluster still works
        # worker processes keep glibc's adaptive trim threshold (Dask's 65536 made every task 2x slower)
        # and single-threaded BLAS
        env = ex.submit(lambda: {k: os.environ.get(k) for k in ("MALLOC_TRIM_THRESHOLD_", "OMP_NUM_THREADS")}).result()
        assert env == {"MALLOC_TRIM_THRESHOLD_": None, "OMP_NUM_THREADS": "1"}
    finally:
        ex.close()


class _LosesItsFirstScatter(DaskExecutor):
    """A real one-worker cluster whose worker process is SIGKILLed right after the first scatter: the nanny
    starts a new worker, and the scattered data (no task can recompute it) is gone, as when a user's only
    worker dies mid-layer."""

    killed = False

    def scatter(self, obj):
        handle = super().scatter(obj)
        if not self.killed:
            self.killed = True
            (pid,) = self.client.run(os.getpid).values()
            os.kill(pid, signal.SIGKILL)
            for _ in range(600):          # until the nanny's new worker has joined
                time.sleep(0.1)
                pids = list(self.client.run(os.getpid).values()) if self.client.nthreads() else []
                if pids and pids[0] != pid:
                    break
        return handle


def test_a_layer_whose_scattered_data_died_with_its_worker_is_sent_again(problem):
    """Found by a hunt: the only worker SIGKILLed mid-layer took the layer's scattered data with it; the tasks
    needing it were cancelled and `dask.wait` raised FuturesCancelledError out of the run (exit 4).  The
    cancelled queries are now sent again with the data scattered again, and every answer comes back."""
    net, box, serial = problem
    spec = LayerSpec(net, box, serial.bounds, 2)
    ex = _LosesItsFirstScatter(workers=1)
    try:
        runner = Runner(ex)

        def make_query(i):
            return NeuronQuery(2, int(i), ("dead", "active"), 2, False, False, 10.0, 1e-6, "highs")
        out = list(runner.neuron_answers(spec, range(4), make_query, lambda i: True, lambda: 600.0))
        assert ex.killed
        assert [i for i, _ in out] == [0, 1, 2, 3] and all(a is not None and a.status == "done" for _, a in out)
        assert not runner.failed and runner.tasks == 4
    finally:
        ex.close()


def _hard_milp_task(acas_dir: str, out: str):
    """On a worker: ACAS Xu 1_1 on prop_3 with DeepPoly bounds, "is neuron 6 of layer 6 dead?" (HiGHS needs
    2-3 s); a file "started" just before the MILP, and its verdict and message in "answer" after it."""
    from pathlib import Path
    from equiv.bounds import deeppoly_bounds
    from equiv.encode.chain import encode_network
    from equiv.ir.chain_io import load_onnx
    from equiv.solvers.highs import HighsBackend
    from equiv.spec.region import load_region
    net = load_onnx(Path(acas_dir) / "ACASXU_run2a_1_1_batch_2000.onnx")
    box = load_region(spec=Path(acas_dir) / "prop_3.vnnlib")[0]
    enc = encode_network(net, box, deeppoly_bounds(net, box), depth=5)
    c, off = enc.objective(net.dense[5].W[6], net.dense[5].b[6])
    be = HighsBackend(enc.model)
    Path(out, "started").touch()
    dec = be.decide(c, off, 0.0, time_limit=60.0, margin=1e-6)
    Path(out, "answer").write_text(f"{dec.verdict}|{dec.message}")


@needs_bench
def test_closing_a_cluster_ends_the_milps_its_workers_run(tmp_path):
    """Closing the executor (as a SIGTERMed run does) while a worker's task is inside a HiGHS MILP sets that
    worker's stop event (`distributed.worker_stop`, set by the worker's close): the MILP ends at its next
    checkpoint with nothing proved, and the task finishes, instead of running on until the nanny kills the
    worker process after 4 s.  (Without the event this query decides in 2-3 s.)"""
    from conftest import ACAS
    ex = DaskExecutor(workers=1)
    try:
        fut = ex.submit(_hard_milp_task, str(ACAS), str(tmp_path))
        for _ in range(1200):
            if (tmp_path / "started").exists() or fut.done():
                break
            time.sleep(0.05)
        assert (tmp_path / "started").exists(), fut.result()
    finally:
        ex.close()
    verdict, message = (tmp_path / "answer").read_text().split("|", 1)
    assert verdict == "unknown" and "nterrupt" in message


# ---- the journal -------------------------------------------------------------------------------------------

def test_journal_refuses_other_inputs(tmp_path):
    j = Journal(tmp_path / "a.jnl", {"model_sha256": "x"})
    j.put("k1", {"v": 1})
    j.close()
    with pytest.raises(JournalMismatchError, match="other inputs"):
        Journal(tmp_path / "a.jnl", {"model_sha256": "y"})
    (tmp_path / "b.jnl").write_text("hello\n")
    with pytest.raises(JournalMismatchError, match="not an equiv journal"):
        Journal(tmp_path / "b.jnl", {"model_sha256": "x"})


def test_journal_of_an_older_format_is_refused_and_long_differences_are_shown_where_they_differ(tmp_path):
    """Hunts: a format-1 journal (written before the LP/MILP margins of stop 47) would have replayed answers the
    new code no longer proves; two long regions were shown by their identical starts."""
    import hashlib
    from equiv.distributed.journal import FORMAT
    header = json.dumps({"equiv_journal": 1, "inputs": "x", "describe": {}}, sort_keys=True, separators=(",", ":"))
    (tmp_path / "old.jnl").write_text(f"{header}\t{hashlib.sha256(header.encode()).hexdigest()[:16]}\n")
    with pytest.raises(JournalMismatchError, match=f"another version of equiv \\(journal format 1; this one reads "
                                                   f"{FORMAT}\\)"):
        Journal(tmp_path / "old.jnl", {"m": 1})
    lo = [0.5] * 30
    Journal(tmp_path / "r.jnl", {"region": {"lo": lo}}).close()
    with pytest.raises(JournalMismatchError) as exc:
        Journal(tmp_path / "r.jnl", {"region": {"lo": lo[:20] + [0.25] + lo[21:]}})
    shown = str(exc.value).split("differs in: region ")[1]
    assert "0.25" in shown and shown.count("...") >= 2


def test_journal_ignores_a_torn_last_line_and_appends_cleanly(tmp_path):
    p = tmp_path / "a.jnl"
    j = Journal(p, {"m": 1})
    j.put("k1", {"v": 1})
    j.put("k2", {"v": 2})
    j.close()
    data = p.read_bytes()
    p.write_bytes(data[:-7])                  # the kill tore the last line
    j = Journal(p, {"m": 1})
    assert j.dropped_torn and j.get("k1") == {"v": 1} and j.get("k2") is None
    j.put("k3", {"v": 3})
    j.close()
    j = Journal(p, {"m": 1})
    assert not j.dropped_torn and j.get("k3") == {"v": 3} and j.get("k2") is None
    j.close()
    # a full last line with a bad checksum is torn too; a bad line in the middle is corruption
    lines = p.read_bytes().split(b"\n")
    lines[-2] = lines[-2][:-1] + b"0" if not lines[-2].endswith(b"0") else lines[-2][:-1] + b"1"
    p.write_bytes(b"\n".join(lines))
    j = Journal(p, {"m": 1})
    assert j.dropped_torn and j.get("k3") is None
    j.close()
    lines = p.read_bytes().split(b"\n")
    lines[1] = lines[1].replace(b'"v":1', b'"v":7')
    p.write_bytes(b"\n".join(lines) + b'{"key":"k9","answer":{}}\tdeadbeefdeadbeef\n')
    with pytest.raises(JournalMismatchError, match="corrupt"):
        Journal(p, {"m": 1})


def test_journal_is_locked_named_on_mismatch_and_refuses_special_files(tmp_path):
    """Found by a hunt: two runs sharing a journal interleaved their lines (the next run refused it as corrupt,
    all answers lost); a FIFO journal blocked forever; a header torn by a kill made the file unusable; a
    mismatch did not say what differs."""
    import os
    p = tmp_path / "a.jnl"
    j = Journal(p, {"m": 1, "time_limit": 2})
    with pytest.raises(JournalMismatchError, match="in use by another equiv run"):
        Journal(p, {"m": 1, "time_limit": 2})
    j.put("k1", {"v": 1})
    j.close()
    j = Journal(p, {"m": 1, "time_limit": 2})             # the lock ends with the run
    assert j.get("k1") == {"v": 1}
    j.close()
    with pytest.raises(JournalMismatchError, match=r"differs in: time_limit 2 \(journal\) vs 5"):
        Journal(p, {"m": 1, "time_limit": 5})
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(JournalMismatchError, match="not a regular file"):
        Journal(tmp_path / "fifo", {"m": 1})
    # only a torn header (a kill during the first write): started afresh
    header = p.read_bytes().split(b"\n")[0]
    p.write_bytes(header[:25])
    j = Journal(p, {"m": 1, "time_limit": 2})
    assert j.dropped_torn and j.get("k1") is None
    j.close()
    j = Journal(p, {"m": 1, "time_limit": 2})
    assert j.answers == {} and not j.dropped_torn
    j.close()
    # a file of other content without a newline is not taken for a torn header: refused, left as it was
    (tmp_path / "notes").write_bytes(b"my notes")
    with pytest.raises(JournalMismatchError, match="not an equiv journal"):
        Journal(tmp_path / "notes", {"m": 1})
    assert (tmp_path / "notes").read_bytes() == b"my notes"


# ---- the CLI -----------------------------------------------------------------------------------------------

def _simplify(args, **kw):
    return subprocess.run(CLI + ["simplify", *map(str, args), "--no-progress", "--json"], env=ENV,
                          capture_output=True, text=True, cwd=ROOT, **kw)


def test_workers_without_dask_names_the_extra(tmp_path):
    """With dask not importable (a meta path entry refusing it, in a child process) --workers exits 2."""
    code = ("import sys\nclass Block:\n def find_spec(self, name, path=None, target=None):\n"
            "  if name.split('.')[0] in ('dask', 'distributed'): raise ImportError(name)\n"
            "sys.meta_path.insert(0, Block())\nfrom equiv.cli import main\nsys.exit(main(sys.argv[1:]))")
    r = subprocess.run([sys.executable, "-c", code, "simplify", "models/digits_mlp.onnx", "--spec",
                        "models/digits_mlp_ball.vnnlib", "-o", str(tmp_path / "s.onnx"), "--workers", "2",
                        "--no-progress"], env=ENV, capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2, r.stderr
    assert "equiv[dask]" in r.stderr
    assert not (tmp_path / "s.onnx").exists()


def test_cli_refuses_a_journal_of_other_inputs(tmp_path):
    jn = tmp_path / "run.jnl"
    a = ["models/digits_mlp.onnx", "--spec", "models/digits_mlp_ball.vnnlib", "--journal", jn]
    r = _simplify(a + ["-o", tmp_path / "a.onnx"])
    assert r.returncode == 0, r.stderr
    for other in (["--seed", "3"], ["--no-bab"], ["--backend", "highs"]):     # every option a proof depends on
        r = _simplify(a + ["-o", tmp_path / "b.onnx"] + other)
        assert r.returncode == 2 and "other inputs" in r.stderr, other
        assert not (tmp_path / "b.onnx").exists()
    r = _simplify(["models/digits_mlp.onnx", "--spec", "models/digits_mlp_ball.vnnlib", "-o", tmp_path / "c.onnx",
                   "--journal", "models/digits_mlp.onnx"])
    assert r.returncode == 2 and "refusing to write the journal to models/digits_mlp.onnx: that is the input" in r.stderr


@needs_bench
def test_mnist_256x2_serial_and_two_workers_write_the_same_bytes(tmp_path):
    spec = ["--spec", MNIST / "prop_0_0.03.vnnlib"]
    r1 = _simplify([MNIST / "mnist-net_256x2.onnx", *spec, "-o", tmp_path / "serial.onnx"])
    r2 = _simplify([MNIST / "mnist-net_256x2.onnx", *spec, "-o", tmp_path / "w2.onnx", "--workers", "2"])
    assert r1.returncode == 0 and r2.returncode == 0, r1.stderr + r2.stderr
    j1, j2 = json.loads(r1.stdout), json.loads(r2.stdout)
    assert j1["relus_after"] == j2["relus_after"]
    assert j2["distributed"]["executor"] == "dask" and j2["distributed"]["tasks_failed"] == 0
    assert (tmp_path / "serial.onnx").read_bytes() == (tmp_path / "w2.onnx").read_bytes()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@needs_bench
def test_scheduler_and_two_worker_processes_on_loopback(tmp_path):
    """`dask scheduler` + 2 x `dask worker` started as processes on 127.0.0.1; simplify --scheduler."""
    port = _free_port()
    addr = f"tcp://127.0.0.1:{port}"
    dask_cli = [sys.executable, "-m", "dask"]
    procs = [subprocess.Popen(dask_cli + ["scheduler", "--host", "127.0.0.1", "--port", str(port),
                                          "--dashboard-address", ":0"], env=ENV, cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        for _ in range(2):
            procs.append(subprocess.Popen(dask_cli + ["worker", addr, "--nthreads", "1", "--nworkers", "1",
                                                      "--host", "127.0.0.1", "--no-dashboard"], env=ENV, cwd=ROOT,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        from distributed import Client
        with Client(addr, timeout="60s") as c:
            c.wait_for_workers(2, timeout=120)
        spec = ["--spec", MNIST / "prop_0_0.03.vnnlib"]
        r1 = _simplify([MNIST / "mnist-net_256x2.onnx", *spec, "-o", tmp_path / "serial.onnx"])
        r2 = _simplify([MNIST / "mnist-net_256x2.onnx", *spec, "-o", tmp_path / "remote.onnx", "--scheduler", addr])
        assert r1.returncode == 0 and r2.returncode == 0, r1.stderr + r2.stderr
        assert json.loads(r2.stdout)["distributed"]["workers"] == 2
        assert (tmp_path / "serial.onnx").read_bytes() == (tmp_path / "remote.onnx").read_bytes()
        # these workers have a nanny, which sets the malloc threshold that slows equiv down: the user is told
        assert "MALLOC_TRIM_THRESHOLD_" in r2.stderr and "--no-nanny" in r2.stderr
    finally:
        for p in reversed(procs):
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


def test_slow_worker_environment_is_named():
    from equiv.distributed.executor import slow_worker_environment
    assert slow_worker_environment({"tcp://a": None, "tcp://b": None}) is None
    msg = slow_worker_environment({"tcp://a": "65536", "tcp://b": None})
    assert msg.startswith("1 of 2 workers") and "65536" in msg and "--no-nanny" in msg


# ---- check and slice ---------------------------------------------------------------------------------------

def test_split_region_tiles_the_box():
    from equiv.prove.check_split import split_region
    box = Box(np.array([0.0, 1.0, -1.0]), np.array([1.0, 1.0, 3.0]))      # the middle input is fixed
    subs = split_region(box, 8)
    assert len(subs) >= 8
    vol = lambda b: float(np.prod(np.where(b.hi > b.lo, b.hi - b.lo, 1.0)))   # noqa: E731
    assert abs(sum(vol(s) for s in subs) - vol(box)) < 1e-12
    assert all((s.lo >= box.lo).all() and (s.hi <= box.hi).all() and s.lo[1] == s.hi[1] == 1.0 for s in subs)
    assert len(split_region(Box(np.ones(2), np.ones(2)), 4)) == 1        # a point: nothing to cut


@pytest.fixture(scope="module")
def float16_pair(tmp_path_factory):
    from conftest import ACAS, acas_path
    if not ACAS.is_dir():
        pytest.skip("benchmarks absent")
    import onnx
    from equiv.bench.equivalence import float16_copy
    from equiv.ir.chain_export import network_to_onnx
    from equiv.ir.chain_io import load_onnx
    out = tmp_path_factory.mktemp("f16") / "acas_1_1_f16.onnx"
    onnx.save(network_to_onnx(float16_copy(load_onnx(acas_path(1, 1)))), out)
    return str(acas_path(1, 1)), str(out)


@needs_bench
def test_check_on_a_cluster_gives_the_serial_verdict(float16_pair, cluster):
    from conftest import ACAS
    from equiv.prove.check_split import check_split
    from equiv.prove.equivalence import CheckOptions, check_models
    from equiv.spec.region import load_region
    box = load_region(spec=ACAS / "prop_3.vnnlib")[0]
    opt = CheckOptions(epsilon=0.05)
    serial = check_models(*float16_pair, box, opt)
    dist = check_split(*float16_pair, [box], opt, cluster)
    assert serial.verdict == dist.verdict == "equivalent"
    assert dist.stats["tasks_failed"] == 0 and dist.stats["input_boxes"] >= 8
    # the piece counts describe exactly the pieces reported
    assert sum(dist.stats["pieces"].values()) == len(dist.pieces) == dist.stats["pieces"]["equivalent"]


@needs_bench
def test_check_survives_a_killed_worker(float16_pair):
    """Two worker processes; one is SIGKILLed while it runs a sub-box: the scheduler re-runs its tasks
    on the other and the verdict is the serial one."""
    import threading
    from conftest import ACAS
    from equiv.prove.check_split import check_split
    from equiv.prove.equivalence import CheckOptions, check_models
    from equiv.spec.region import load_region
    box = load_region(spec=ACAS / "prop_1.vnnlib")[0]
    opt = CheckOptions(epsilon=0.05)
    serial = check_models(*float16_pair, box, opt)
    ex = DaskExecutor(workers=2)
    try:
        pids = ex.client.run(os.getpid)
        killed = []

        def killer():
            for _ in range(600):
                busy = [w for w, keys in ex.client.processing().items() if keys]
                if busy:
                    os.kill(pids[busy[0]], signal.SIGKILL)
                    killed.append(busy[0])
                    return
                time.sleep(0.1)

        t = threading.Thread(target=killer)
        t.start()
        dist = check_split(*float16_pair, [box], opt, ex)
        t.join()
        assert killed
        assert dist.verdict == serial.verdict
    finally:
        ex.close()


@needs_bench
def test_slice_family_on_a_cluster_is_the_serial_family(cluster):
    from conftest import ACAS, acas_path
    from equiv.apps.slicing.tree import SliceOptions, build_tree
    from equiv.ir.chain_export import network_to_onnx
    from equiv.ir.chain_io import load_onnx
    from equiv.spec.region import load_region
    net = load_onnx(acas_path(1, 1))
    box = load_region(spec=ACAS / "prop_3.vnnlib")[0]
    opt, sopt = StabilityOptions(samples=200), SliceOptions(max_slices=4)
    a, b = build_tree(net, box, opt, sopt), build_tree(net, box, opt, sopt, executor=cluster)
    la, lb = a.leaves(), b.leaves()
    assert len(la) == len(lb) > 1
    for p, q in zip(la, lb):
        assert np.array_equal(p.box.lo, q.box.lo) and np.array_equal(p.box.hi, q.box.hi)
        assert network_to_onnx(p.network).SerializeToString() == network_to_onnx(q.network).SerializeToString()
    # the only worker killed after the network was scattered: its boxes are proved here (exit 2 "failed on the
    # cluster, nothing written" before), and the family is still the serial one
    ex = _LosesItsFirstScatter(workers=1)
    try:
        c = build_tree(net, box, opt, sopt, executor=ex)
    finally:
        ex.close()
    assert ex.killed
    for p, q in zip(la, c.leaves()):
        assert network_to_onnx(p.network).SerializeToString() == network_to_onnx(q.network).SerializeToString()


@needs_bench
def test_sigterm_leaves_no_output_and_a_usable_journal(tmp_path):
    """simplify --journal on mnist 256x4, SIGTERM once a few answers are journalled: exit 143, no model
    written, and every journalled answer is intact for the next run."""
    jn, dst = tmp_path / "run.jnl", tmp_path / "small.onnx"
    # (--no-bab: with branch and bound first the whole run takes about a second, too short to be killed)
    args = ["simplify", MNIST / "mnist-net_256x4.onnx", "--spec", MNIST / "prop_0_0.03.vnnlib", "--time-limit", "1",
            "-o", dst, "--journal", jn, "--no-progress", "--no-bab"]
    code, err = sigterm_once_journalled(CLI + args, jn, 4, env=ENV)
    assert code == 143, err
    assert not dst.exists()
    desc = json.loads(jn.read_text().splitlines()[0].rsplit("\t", 1)[0])["describe"]
    j = Journal(jn, desc)
    assert len(j.answers) >= 3
    j.close()


@needs_bench
def test_check_journal_reuses_the_proved_sub_boxes(float16_pair, tmp_path):
    from conftest import ACAS
    jn = tmp_path / "check.jnl"
    args = CLI + ["check", *float16_pair, "--spec", str(ACAS / "prop_3.vnnlib"), "--epsilon", "0.05", "--json",
                  "--no-progress", "--journal", str(jn)]
    r1 = subprocess.run(args, env=ENV, cwd=ROOT, capture_output=True, text=True)
    r2 = subprocess.run(args, env=ENV, cwd=ROOT, capture_output=True, text=True)
    assert r1.returncode == r2.returncode == 0, r1.stderr + r2.stderr
    a, b = json.loads(r1.stdout), json.loads(r2.stdout)
    assert a["verdict"] == b["verdict"] == "equivalent"
    assert a["max_diff_upper"] == b["max_diff_upper"]
    assert "4 proofs taken from the journal" in b["notes"][0]
    r3 = subprocess.run(args[:-1] + [str(jn), "--epsilon", "0.04"], env=ENV, cwd=ROOT, capture_output=True, text=True)
    assert r3.returncode == 2 and "other inputs" in r3.stderr


class _NotAScheduler:
    """A real TCP server on 127.0.0.1 that is not a Dask scheduler: it answers an HTTP 400 (the dashboard's port
    given by mistake) or keeps every connection open without a word."""

    def __init__(self, mode: str):
        import threading
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.mode, self.conns = mode, []
        self.address = f"tcp://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                c, _ = self.sock.accept()
                c.recv(65536)
            except OSError:
                return
            if self.mode == "http":
                c.sendall(b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\n")
                c.close()
            else:
                self.conns.append(c)

    def close(self):
        for c in self.conns:
            c.close()
        self.sock.close()


@pytest.mark.parametrize("mode", ["http", "silent"])
def test_a_port_that_is_no_scheduler_is_a_clear_error(tmp_path, capsys, monkeypatch, mode):
    """exit 2 with the address, never a hang (a silent port) or an internal error (HTTP read as a frame of
    exabytes: MemoryError)."""
    import equiv.distributed.executor as executor
    from equiv.cli import main
    from equiv.ir.chain_export import network_to_onnx
    import onnx
    monkeypatch.setattr(executor, "CONNECT_SECONDS", 3)      # (the handshake deadline, shortened for the test)
    net, box = _problem()
    onnx.save(network_to_onnx(net), tmp_path / "n.onnx")
    server = _NotAScheduler(mode)
    try:
        code = main(["simplify", str(tmp_path / "n.onnx"), "--box", ",".join(f"{a}:{b}" for a, b in zip(box.lo, box.hi)),
                     "-o", str(tmp_path / "o.onnx"), "--no-progress", "--scheduler", server.address])
        err = capsys.readouterr().err
        assert code == 2, err
        assert f"--scheduler {server.address}: no Dask scheduler answered there" in err and "8787" in err
        assert not (tmp_path / "o.onnx").exists()
    finally:
        server.close()


@needs_bench
def test_a_scheduler_lost_mid_run_is_an_environment_error(tmp_path):
    """The --scheduler dies (SIGKILL) while simplify's MILP tasks run: exit 2 naming the lost cluster, no model
    written (it was exit 4, "internal error ... please report it")."""
    port = _free_port()
    addr = f"tcp://127.0.0.1:{port}"
    dask_cli = [sys.executable, "-m", "dask"]
    sched = subprocess.Popen(dask_cli + ["scheduler", "--host", "127.0.0.1", "--port", str(port),
                                         "--dashboard-address", ":0"], env=ENV, cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs = [sched]
    try:
        procs.append(subprocess.Popen(dask_cli + ["worker", addr, "--nthreads", "1", "--no-nanny", "--host", "127.0.0.1",
                                                  "--no-dashboard"], env=ENV, cwd=ROOT,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        from distributed import Client
        with Client(addr, timeout="60s") as c:
            c.wait_for_workers(1, timeout=120)
        journal, out = tmp_path / "j.jnl", tmp_path / "o.onnx"
        run = subprocess.Popen(CLI + ["simplify", str(MNIST / "mnist-net_256x4.onnx"), "--spec",
                                      str(MNIST / "prop_0_0.03.vnnlib"), "-o", str(out), "--no-bab", "--time-limit", "2",
                                      "--no-progress", "--scheduler", addr, "--journal", str(journal)],
                               env=ENV, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(run)
        end = time.monotonic() + 300
        while time.monotonic() < end and run.poll() is None and \
                not (journal.exists() and journal.read_bytes().count(b"\n") >= 3):
            time.sleep(0.2)
        assert run.poll() is None, "the run ended before the scheduler could be killed"
        sched.kill()
        _, err = run.communicate(timeout=300)
        assert run.returncode == 2, err
        assert "lost the Dask cluster mid-run" in err and "internal error" not in err
        assert not out.exists()
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.kill()
            p.wait()


def test_a_journal_that_cannot_be_written_is_an_environment_error(tmp_path):
    """The journal's file hits a size limit mid-run (RLIMIT_FSIZE: EFBIG, as ENOSPC on a full disk): exit 2 naming
    the journal (was exit 4, an internal error); its complete lines are kept."""
    import resource
    from equiv.ir.chain_export import network_to_onnx
    import onnx
    net, box = _problem()
    onnx.save(network_to_onnx(net), tmp_path / "n.onnx")
    journal = tmp_path / "j.jnl"

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (2500, 2500))      # the header fits, a few answers do not

    r = subprocess.run(CLI + ["simplify", str(tmp_path / "n.onnx"), "--box",
                              ",".join(f"{a}:{b}" for a, b in zip(box.lo, box.hi)), "-o", str(tmp_path / "o.onnx"),
                              "--no-bab", "--no-progress", "--journal", str(journal)],
                       env=ENV, cwd=ROOT, capture_output=True, text=True, preexec_fn=limit)
    assert r.returncode == 2, r.stderr
    assert f"cannot write --journal {journal}" in r.stderr and "internal error" not in r.stderr
    assert not (tmp_path / "o.onnx").exists()
    header = json.loads(journal.read_text().splitlines()[0].rsplit("\t", 1)[0])
    Journal(journal, header["describe"]).close()            # a rerun opens it: the complete lines are intact
