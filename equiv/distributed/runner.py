"""The run-wide context of distributed work: the executor, the journal, and what went wrong.

`Runner.neuron_answers` is the one loop that sends a layer's neuron queries out and hands their answers
back *in query order* (so the caller records them exactly as a serial loop would), reusing journalled
answers and journalling new ones as soon as they finish (in completion order: a kill loses only the
queries still running).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

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
        if self.journal is not None and ans.status == "done":
            self.journal.put(key, ans.to_json())
        return ans

    def neuron_answers(self, spec: LayerSpec, todo, make_query, still_open, in_budget=lambda: True, bar=None):
        """Yield (i, answer or None) for every neuron i of `todo`, in order.

        make_query(i) -> NeuronQuery or None (nothing to ask); still_open(i): is the neuron still worth an
        answer (checked right before it is recorded; in-process also before it runs); in_budget(): False
        once the solver budget is spent (the rest get None).
        """
        if isinstance(self.executor, InProcessExecutor):
            yield from self._serial(spec, todo, make_query, still_open, in_budget, bar)
            return
        handle = self.executor.scatter(spec)
        pending, order = {}, []
        for i in todo:
            q = make_query(i)
            if q is None:
                order.append((i, None, None, None))
                continue
            key, hit = self._lookup(spec.key, q)
            fut = None if hit is not None else self.executor.submit(run_neuron, handle, q)
            order.append((i, q, key, hit))
            if fut is not None:
                pending[fut.key] = (fut, key, q)
        done = {}
        it = self.executor.as_completed([f for f, _, _ in pending.values()])
        for i, q, key, hit in order:
            if q is None:
                yield i, None
                continue
            if not in_budget():              # budget spent: what still runs is cancelled, proves nothing
                for f, fkey, _ in pending.values():
                    if fkey not in done:
                        f.cancel()
                yield i, None
                continue
            if hit is None:
                while key not in done:       # journal answers as they finish, whatever their order
                    f = next(it)
                    _, fkey, fq = pending[f.key]
                    done[fkey] = self._finish(fkey, fq, f)
                    if bar is not None:
                        bar.update(1)
                hit = done[key]
            elif bar is not None:
                bar.update(1)
            yield i, (hit if still_open(i) and in_budget() else None)

    def _serial(self, spec, todo, make_query, still_open, in_budget, bar):
        for i in todo:
            if not in_budget():
                yield i, None
                continue
            q = make_query(i) if still_open(i) else None
            if q is None:
                yield i, None
                continue
            key, hit = self._lookup(spec.key, q)
            if hit is None:
                hit = self._finish(key, q, self.executor.submit(run_neuron, spec, q))
            if bar is not None:
                bar.update(1)
            yield i, hit


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
