"""simplify --journal on graphs (equiv.prove.graph_journal): the phases a run proves and the points its
solvers find are kept; a resumed run starts from all of them (any budget), every kept phase holds at sampled
points, a fact this graph cannot hold is refused, and a SIGTERM'd CLI run resumes from its journal."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import CIFAR, ROOT, needs_cifar, sigterm_once_journalled
from equiv.apps.graph_simplify import graph_phases
from equiv.distributed import Journal
from equiv.distributed.journal import JournalMismatchError
from equiv.ir import Graph
from equiv.prove.graph_journal import PROVED, PhaseJournal, journal_inputs
from equiv.spec.region import Box
from test_graph_milp import two_convs as conv_net

CLI = [sys.executable, "-m", "equiv.cli"]


def _facts(journal: Journal, g: Graph) -> tuple[dict, dict]:
    """The journalled phases as boolean masks per ReLU (dead, active)."""
    dead = {r: np.zeros(g.shape(g.args(r)[0]), bool).reshape(-1) for r in g.relus}
    active = {r: d.copy() for r, d in dead.items()}
    for key, f in journal.answers.items():
        if key.startswith(PROVED):
            dead[f["relu"]][f["dead"]] = True
            active[f["relu"]][f["active"]] = True
    return dead, active


def _hold(g: Graph, box: Box, dead: dict, active: dict, n: int = 3000) -> None:
    """Sampled soundness: every journalled phase keeps its sign at random points and vertices of the box."""
    rng = np.random.default_rng(1)
    x = np.vstack([box.sample(n, rng), box.vertices(256, rng)])
    vals = g.evaluate(x)
    for r in g.relus:
        z = vals[g.args(r)[0]].reshape(len(x), -1)
        assert (z[:, dead[r]] <= 1e-9).all() and (z[:, active[r]] >= -1e-9).all(), r


def test_a_resumed_run_starts_from_every_journalled_phase(tmp_path):
    g, box = conv_net()
    desc = journal_inputs("0" * 64, box)
    first = Journal(tmp_path / "run.jnl", desc)
    ph1 = graph_phases(g, box, "milp", budget=60, journal=PhaseJournal(first))
    first.close()
    solved = ph1.stats["alpha_proved"] + ph1.stats.get("bab_proved", 0) + ph1.stats["milp_proved"]
    assert solved > 0 and ph1.stats["journal_proofs_reused"] == 0

    again = Journal(tmp_path / "run.jnl", desc)
    dead, active = _facts(again, g)
    assert sum(d.sum() + a.sum() for d, a in zip(dead.values(), active.values())) == solved
    _hold(g, box, dead, active)
    # no solver time at all: the phases come from the journal alone, and are every one the first run proved
    ph2 = graph_phases(g, box, "milp", budget=0, journal=PhaseJournal(again))
    again.close()
    bare = graph_phases(g, box, "milp", budget=0)
    assert ph2.stats["journal_proofs_reused"] == solved
    assert ph2.stats["journal_points_reused"] == sum(k.startswith("point:") for k in again.answers)
    for r in g.relus:
        assert (ph2.dead[r] >= ph1.dead[r]).all() and (ph2.active[r] >= ph1.active[r]).all()
    stable = lambda ph: ph.counts()["dead"] + ph.counts()["active"]      # noqa: E731
    assert stable(ph2) >= stable(ph1) > stable(bare)


def test_replay_refuses_a_fact_this_graph_cannot_hold(tmp_path):
    g, box = conv_net()
    for n, fact in enumerate([{"relu": "nope", "dead": [0], "active": []},
                              {"relu": "r1", "dead": [72], "active": []},
                              {"relu": "r1", "dead": [], "active": [-1]}]):
        j = Journal(tmp_path / f"bad{n}.jnl", journal_inputs("0" * 64, box))
        j.put(PROVED + "x", fact)
        with pytest.raises(JournalMismatchError, match="move the journal away"):
            PhaseJournal(j).replay(g, box, graph_phases(g, box, "deeppoly").bounds)
        j.close()
    j = Journal(tmp_path / "point.jnl", journal_inputs("0" * 64, box))
    PhaseJournal(j).points(np.zeros((1, 35)))
    with pytest.raises(JournalMismatchError, match="a point has 35 inputs"):
        PhaseJournal(j).replay(g, box, graph_phases(g, box, "deeppoly").bounds)
    j.close()


def test_a_journal_records_nothing_twice(tmp_path):
    g, box = conv_net()
    j = Journal(tmp_path / "run.jnl", journal_inputs("0" * 64, box))
    pj = PhaseJournal(j)
    dead = np.flatnonzero(graph_phases(g, box, "milp", budget=60).dead["r2"].reshape(-1))[:2]   # true facts
    assert dead.size == 2
    for _ in range(2):
        pj.proved("r2", dead[::-1], [], "milp")
        pj.points(np.full((2, 36), 0.25))
    pj.proved("r1", [], [], "milp")                     # nothing proved: nothing written
    assert j.written == 2
    b, x = pj.replay(g, box, graph_phases(g, box, "deeppoly").bounds)
    assert b.hi["c2"].reshape(-1)[dead].max() <= 0
    assert x.shape == (1, 36) and (x == 0.25).all()
    j.close()


def test_replay_refuses_a_fact_that_a_point_or_the_bounds_refute(tmp_path):
    """A journalled phase is taken as a proof; a line edited with a valid checksum is not signed, but one that
    a real point (here the journalled point itself) or this run's own bounds refute is refused."""
    g, box = conv_net()
    bounds = graph_phases(g, box, "deeppoly").bounds
    x = box.sample(200, np.random.default_rng(1))
    c2 = g.evaluate(x)["c2"].reshape(len(x), -1)
    pos = int(np.flatnonzero(c2.max(axis=0) > 0)[0])
    proved_dead = int(np.flatnonzero(bounds.hi["c2"].reshape(-1) < 0)[0])
    for n, (dead, active, why) in enumerate([([pos], [], "refuted by a real point"),
                                             ([], [proved_dead], "contradicts its proven bounds")]):
        j = Journal(tmp_path / f"forged{n}.jnl", journal_inputs("0" * 64, box))
        pj = PhaseJournal(j)
        pj.proved("r2", dead, active, "milp")
        pj.points(x[np.argmax(c2[:, pos])][None])
        with pytest.raises(JournalMismatchError, match=why):
            pj.replay(g, box, bounds)
        j.close()


@needs_cifar
def test_sigterm_then_resume_on_a_cifar_net(tmp_path):
    """simplify --journal on cifar10_small, SIGTERM once a few facts are journalled: exit 143, no model; the
    same command again takes every fact (each holds at sampled points) and writes a validated model; another
    region's run refuses the journal."""
    net, spec = CIFAR / "cifar10_small.onnx", CIFAR / "networkcifar10_small_index1189_eps0.024_target1_orig0.vnnlib"
    jn, dst, rep = tmp_path / "run.jnl", tmp_path / "small.onnx", tmp_path / "r.json"
    args = CLI + ["simplify", str(net), "--spec", str(spec), "-o", str(dst), "--journal", str(jn), "--no-progress",
                  "--milp-budget", "30", "--report", str(rep)]
    code, err = sigterm_once_journalled(args, jn, 4)
    assert code == 143, err
    assert not dst.exists() and not rep.exists()

    from conftest import load_box, load_graph_cached
    g, box = load_graph_cached(net), load_box(spec)
    desc = json.loads(jn.read_text().splitlines()[0].rsplit("\t", 1)[0])["describe"]
    j = Journal(jn, desc)
    dead, active = _facts(j, g)
    kept = sum(d.sum() + a.sum() for d, a in zip(dead.values(), active.values()))
    points = sum(k.startswith("point:") for k in j.answers)
    j.close()
    assert kept + points >= 3
    _hold(g, box, dead, active)

    r = subprocess.run(args[:-3] + ["5", "--report", str(rep)], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    report = json.loads(rep.read_text())
    assert report["queries"]["journal_proofs_reused"] == kept
    assert report["queries"]["journal_points_reused"] == points
    assert report["journal"]["answers_reused"] > 0
    assert report["validation"]["max_abs_diff"] <= 1e-4 and dst.exists()
    for layer in report["per_layer"]:       # every journalled phase is in the written model
        assert layer["dead"] >= dead[layer["relu"]].sum() and layer["active"] >= active[layer["relu"]].sum()

    other = CIFAR / "networkcifar10_small_index1189_eps0.012_target1_orig0.vnnlib"
    r = subprocess.run(CLI + ["simplify", str(net), "--spec", str(other), "-o", str(tmp_path / "o.onnx"),
                              "--journal", str(jn), "--no-progress"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and "other inputs" in r.stderr and not (tmp_path / "o.onnx").exists()
