"""The run-wide context of distributed work: the executor, the journal, and what went wrong.

`Runner.neuron_answers` is the one loop that sends a layer's neuron queries out and hands their answers
back *in query order* (so the caller records them exactly as a serial loop would), reusing journalled
answers and journalling new ones as soon as they finish (in completion order: a kill loses only the
queries still running).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

from .executor import InProcessExecutor
from .work import LayerSpec, NeuronAnswer, run_neuron


@dataclass
class Runner:
    executor: object = field(default_factory=InProcessExecutor)
    journal: object = None
    progress: bool = False
    failed: list = field(default_factory=list)      # messages of tasks that proved nothing (killed workers...)
    tasks: int = 0                                  # queries computed here (not taken from the journal)
    task_seconds: list = field(default_factory=list)   # solver seconds per computed task (for scaling estimates)

    def close(self):
        try:
            self.executor.close()
        finally:
            if self.journal is not None:
                self.journal.close()

    def _lookup(self, spec_key, q):
        key = q.key(spec_key)
        hit = self.journal.get(key) if self.journal is not None else None
        return key, (NeuronAnswer.from_json(hit) if hit is not None else None)

    def _finish(self, key, q, fut) -> NeuronAnswer:
        try:
            ans = fut.result()
        except Exception as exc:           # KilledWorker and the like: the task proves nothing
            msg = f"neuron {q.i} of hidden layer {q.k + 1}: {type(exc).__name__}: {exc}"
            self.failed.append(msg)
            return NeuronAnswer.failed(q, msg)
        self.tasks += 1
        self.task_seconds.append(ans.seconds)
        if self.journal is not None and ans.status == "done" and not ans.cut:
            self.journal.put(key, ans.to_json())       # (a cut answer is not the keyed query's: not journalled)
        return ans

    def neuron_answers(self, spec: LayerSpec, todo, make_query, still_open, left=lambda: None, bar=None):
        """Yield (i, answer or None) for every neuron i of `todo`, in order.

        make_query(i) -> NeuronQuery or None (nothing to ask); still_open(i): is the neuron still worth an
        answer (checked right before its query is sent and again before its answer is yielded); left():
        seconds of the solver budget left (None: no end).  A query is sent only while more than 0.05 s are
        left, with `budget` = what is left (its task stops there: `run_neuron`), and on a cluster only when
        a worker is free (at most `executor.workers` tasks at once), so a task never waits in a queue past
        the budget and an answer's witness spares the queries after it.  The neurons not asked get None.
        """
        if isinstance(self.executor, InProcessExecutor):
            yield from self._serial(spec, todo, make_query, still_open, left, bar)
            return
        from .slots import ExecutorSlots
        slots = ExecutorSlots(self.executor)
        todo = [int(i) for i in todo]
        handle, sent, running, got, resent = None, 0, {}, {}, set()     # got: i -> answer (None: not asked)
        for i in todo:
            while i not in got:
                while sent < len(todo) and len(running) < slots.size:     # fill the free workers, in order
                    j = todo[sent]
                    sent += 1
                    q, key, hit = self._query(spec, j, make_query, still_open, left)
                    if q is None or hit is not None:
                        got[j] = hit
                        continue
                    handle = handle or self.executor.scatter(spec)
                    fut = self.executor.submit(run_neuron, handle, q)
                    running[fut.key] = (fut, key, q, j)
                if i in got:
                    break
                done, _ = slots.wait_first({f for f, _, _, _ in running.values()})
                for f in done:         # journal answers as they finish, whatever their order
                    _, key, q, j = running.pop(f.key)
                    if _cancelled(f) and j not in resent:
                        # the layer's scattered data died with its worker: scatter it again, send the query again
                        resent.add(j)
                        handle = self.executor.scatter(spec)
                        fut = self.executor.submit(run_neuron, handle, q)
                        running[fut.key] = (fut, key, q, j)
                        continue
                    got[j] = self._finish(key, q, f)
            ans = got.pop(i)
            if ans is not None and bar is not None:
                bar.update(1)
            yield i, (ans if ans is not None and still_open(i) else None)

    def _query(self, spec, i, make_query, still_open, left):
        """(query, journal key, journalled answer or None) for neuron i, or (None, None, None) when it is
        not asked (closed, nothing to ask, or the budget spent).  The query carries the budget left."""
        t = left()
        q = make_query(i) if still_open(i) and (t is None or t > 0.05) else None
        if q is None:
            return None, None, None
        q = replace(q, budget=t)
        key, hit = self._lookup(spec.key, q)
        return q, key, hit

    def _serial(self, spec, todo, make_query, still_open, left, bar):
        for i in todo:
            q, key, hit = self._query(spec, i, make_query, still_open, left)
            if q is None:
                yield i, None
                continue
            if hit is None:
                hit = self._finish(key, q, self.executor.submit(run_neuron, spec, q))
            if bar is not None:
                bar.update(1)
            yield i, hit


def _cancelled(fut) -> bool:
    """A Dask future cancelled by the cluster (not answered, nor failed in its task)."""
    return getattr(fut, "status", None) == "cancelled"


def map_tasks(executor, fn, items, *shared, bar=None) -> list:
    """[fn(item, *shared) for item in items] through the executor, in order; a task that failed (e.g. its
    workers were killed too often) gives ("failed", message) instead of a result.  Used for whole cases
    (an equivalence pair, a slice): each is independent and refers to its files by path."""
    handles = [s if isinstance(s, (str, int, float, os.PathLike)) else executor.scatter(s) for s in shared]
    futures = [executor.submit(fn, item, *handles) for item in items]
    index = {id(f): n for n, f in enumerate(futures)}
    out = [None] * len(futures)
    for f in executor.as_completed(futures):
        try:
            out[index[id(f)]] = f.result()
        except Exception as exc:
            out[index[id(f)]] = ("failed", f"{type(exc).__name__}: {exc}")
        if bar is not None:
            bar.update(1)
    return out
