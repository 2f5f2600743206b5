"""HiGHS time limits on a backend that has already answered many queries, and MILP decisions that agree
with real points on ACAS Xu.

highspy 1.15 measures an LP's time_limit against the Highs object's cumulative run time but a MIP's
against the current run only; the backend offsets LP limits and runs every MILP on a fresh object.
These tests fail if either clock is handled wrongly: a MIP limit offset by the LPs' run time would let
the 0.2 s query below run to completion (2-3 s), and an LP limit without the offset would stop every
later LP at once.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from conftest import needs_bench
from equiv.bounds import deeppoly_bounds
from equiv.encode.chain import encode_network
from equiv.solvers import Status
from equiv.solvers.highs import HighsBackend


@pytest.fixture(scope="module")
def hard_query(acas_1_1, prop3_box):
    """ACAS Xu 1_1 on prop_3, DeepPoly bounds only (61 binaries): deciding that neuron 6 of layer 6 is
    dead takes HiGHS 2-3 s, far above the 0.2 s limits used here."""
    enc = encode_network(acas_1_1, prop3_box, deeppoly_bounds(acas_1_1, prop3_box), depth=5)
    c, off = enc.objective(acas_1_1.dense[5].W[6], acas_1_1.dense[5].b[6])
    return enc, c, off


def busy_backend(enc, seconds: float) -> HighsBackend:
    """A backend whose Highs object has already run LPs for at least `seconds`."""
    be = HighsBackend(enc.model)
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        r = be.maximize(rng.normal(size=enc.model.n_vars), 0.0, integer=False, time_limit=5.0)
        assert r.status == Status.OPTIMAL   # the LP limit is offset by the time already used
    assert be.h.getRunTime() >= 0.8 * seconds
    return be


@needs_bench
def test_milp_time_limits_hold_after_many_lps(hard_query):
    enc, c, off = hard_query
    be = busy_backend(enc, 0.6)
    t0 = time.perf_counter()
    dec = be.decide(c, off, 0.0, time_limit=0.2, margin=1e-6)
    assert time.perf_counter() - t0 < 1.5
    assert dec.verdict == "unknown" and dec.status == Status.TIME_LIMIT and dec.bound is None
    t0 = time.perf_counter()
    res = be.maximize(c, off, integer=True, time_limit=0.2)
    assert time.perf_counter() - t0 < 1.5
    assert res.status == Status.TIME_LIMIT
    # a short LP limit still holds on the busy object (the offset is the time used, not more)
    res = be.maximize(c, off, integer=False, time_limit=1e-6)
    assert res.status in (Status.TIME_LIMIT, Status.OPTIMAL)
    if res.status == Status.TIME_LIMIT:
        assert res.bound is None


@needs_bench
def test_decisions_agree_with_real_points(acas_1_1, prop4_box):
    """On 1_1 / prop_4 neuron 24 of layer 5 takes z > 0 at real points (and z < 0 at others): asked
    whether it is dead, the MILP must find a point, never answer "below".  A HiGHS option that broke this
    (mip_lifting_for_probing=0 in highspy 1.15.1 reports such MILPs infeasible) must never be set."""
    net, box = acas_1_1, prop4_box
    enc = encode_network(net, box, deeppoly_bounds(net, box), depth=4)
    k, i = 4, 23
    _, pre = net.forward(box.sample(20000, np.random.default_rng(0)), return_pre=True)
    assert (pre[k][:, i] > 0).any() and (pre[k][:, i] < 0).any()
    be = HighsBackend(enc.model)
    for sign in (1.0, -1.0):
        c, off = enc.objective(sign * net.dense[k].W[i], sign * net.dense[k].b[i])
        dec = be.decide(c, off, 0.0, time_limit=30.0, margin=1e-6)
        assert dec.verdict == "above"
        x = enc.input_point(dec.x)
        z = net.forward(np.clip(x, box.lo, box.hi)[None], return_pre=True)[1][k][0, i]
        assert sign * z > -1e-5


@needs_bench
def test_a_set_stop_ends_a_milp_on_any_thread_and_proves_nothing(hard_query):
    """A MILP given a set stop event ends at HiGHS's first checkpoint, on a worker thread or in the main one:
    status 'interrupt', nothing proved (not 'below', no bound), whatever its time limit.  Without the event
    the same query decides."""
    import threading
    from concurrent.futures import ThreadPoolExecutor
    enc, c, off = hard_query
    be = HighsBackend(enc.model)
    stop = threading.Event()
    stop.set()
    with ThreadPoolExecutor(1) as pool:
        dec = pool.submit(be.decide, c, off, 0.0, time_limit=60.0, margin=1e-6, stop=stop).result()
        res = pool.submit(lambda: be.maximize(c, off, integer=True, time_limit=60.0, stop=stop)).result()
    main = be.decide(c, off, 0.0, time_limit=60.0, margin=1e-6, stop=stop)
    for d in (dec, main):
        assert d.verdict == "unknown" and d.bound is None and d.status == Status.ERROR
        assert "nterrupt" in d.message
    assert res.status == Status.ERROR and res.bound is None
    assert be.decide(c, off, 0.0, time_limit=60.0, margin=1e-6).verdict in ("below", "above")


@needs_bench
def test_a_signal_during_a_main_thread_milp_ends_it_then_reaches_its_handler(hard_query):
    """SIGTERM arriving while the main thread is inside a MILP (the query takes HiGHS 2-3 s; the signal comes
    after 0.3 s): the solve ends at its next checkpoint with nothing proved, and only then does the signal's
    handler run, once, in plain Python (a handler raising inside HiGHS's callback would unwind through C++).
    The handlers in place before the solve are back afterwards."""
    import os
    import signal
    import threading
    enc, c, off = hard_query
    be = HighsBackend(enc.model)
    seen = []

    def handler(signum, frame):
        seen.append((signum, be_done[0]))
    be_done = [False]
    previous = signal.signal(signal.SIGTERM, handler)
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM))
    try:
        timer.start()
        dec = be.decide(c, off, 0.0, time_limit=60.0, margin=1e-6)
        be_done[0] = True
        timer.join()
        assert signal.getsignal(signal.SIGTERM) is handler
    finally:
        timer.cancel()
        signal.signal(signal.SIGTERM, previous)
    assert dec.verdict == "unknown" and dec.bound is None and "nterrupt" in dec.message
    # raised again when the solve returned, before `decide` read the solution: not after be_done was set
    assert seen == [(signal.SIGTERM, False)]
