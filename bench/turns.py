"""Several trainings in one process, taking turns step by step, so that a shared machine's changes of speed hit
them all alike.

On the benchmark VM the same code runs 30 % faster or slower from one minute to the next; runs that take turns
run by run (even interleaved) still see that drift between them, and the ratios of their step times move by
±10 %. Here each participant runs in its own thread, and a baton lets exactly one of them work at a time: a
trainer hands it on at every step end (``TurnClock``), so step i of every configuration runs within one short
stretch of time, and each step's CPU time is measured from when the trainer got the baton to its step end. Only
one thread ever works, so process CPU time is that thread's work (torch runs single-threaded here).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from rollgraph.graph.hooks import Hook


class Baton:
    """Whose turn it is, among participants that leave when they are done."""

    def __init__(self, names: list[str]):
        self.order = list(names)
        self.current = self.order[0] if self.order else None
        self._cond = threading.Condition()

    def wait(self, name: str) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self.current == name)

    def pass_on(self, name: str) -> None:
        with self._cond:
            self.current = self.order[(self.order.index(name) + 1) % len(self.order)]
            self._cond.notify_all()

    def next_turn(self, name: str) -> None:
        """Hand the baton on and wait until it comes back."""
        self.pass_on(name)
        self.wait(name)

    def leave(self, name: str) -> None:
        with self._cond:
            i = self.order.index(name)
            self.order.remove(name)
            if self.current == name:
                self.current = self.order[i % len(self.order)] if self.order else None
            self._cond.notify_all()


class TurnClock(Hook):
    """A trainer's turns: after its setup and after every optimizer step but the last it hands the baton on and
    waits for it. Records each step's process CPU seconds (from getting the baton to the step end) and metrics."""

    def __init__(self, baton: Baton, name: str, last_step: int):
        self.baton, self.name, self.last_step = baton, name, last_step
        self.seconds: list[float] = []
        self.metrics: list[dict[str, Any]] = []
        self._start = 0.0

    def _next_turn(self) -> None:
        self.baton.next_turn(self.name)
        self._start = time.process_time()

    def on_setup_end(self, runner):
        self._next_turn()

    def on_step_end(self, runner, metrics):
        self.seconds.append(time.process_time() - self._start)
        self.metrics.append(dict(metrics))
        if metrics["step"] < self.last_step:  # after the last step the trainer ends its run first, then leaves
            self._next_turn()


def take_turns(participants: dict[str, Callable[[Baton, str], None]]) -> None:
    """Run ``participants`` (name -> fn(baton, name)), each in a thread, one at a time: a participant starts
    on its first turn and leaves the rotation when its function returns or fails; the first failure is raised
    here once every participant has stopped."""
    baton = Baton(list(participants))
    errors: list[BaseException] = []

    def run(name: str, fn: Callable[[Baton, str], None]) -> None:
        try:
            baton.wait(name)
            fn(baton, name)
        except BaseException as err:  # noqa: BLE001 — re-raised in the caller's thread
            errors.append(err)
        finally:
            baton.leave(name)

    threads = [threading.Thread(target=run, args=(name, fn), name=f"turns-{name}") for name, fn in participants.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
