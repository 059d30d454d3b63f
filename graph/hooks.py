"""Hooks observe the runner: around every stage and at the end of every optimizer step."""

from __future__ import annotations

import time
from typing import Any


class Hook:
    def on_setup_end(self, runner) -> None: ...
    def before_stage(self, runner, node_id: str) -> None: ...
    def after_stage(self, runner, node_id: str, outputs: dict[str, Any], seconds: float) -> None: ...
    def on_step_end(self, runner, metrics: dict[str, float]) -> None: ...
    def on_train_end(self, runner, status: str) -> None: ...


class StageTimer(Hook):
    """Adds ``time/<node id>`` (seconds spent in each step stage, summed over micro-steps) to the metrics."""

    def after_stage(self, runner, node_id, outputs, seconds):
        if runner.in_step:
            runner.ctx.log(f"time/{node_id}", seconds, reduce="sum")


class Hooks(Hook):
    """Fans each call out to a list of hooks, in order."""

    def __init__(self, hooks):
        self.hooks = list(hooks)

    def __getattribute__(self, name):
        if name.startswith(("on_", "before_", "after_")):
            hooks = object.__getattribute__(self, "hooks")

            def fan_out(*args, **kwargs):
                for hook in hooks:
                    getattr(hook, name)(*args, **kwargs)

            return fan_out
        return object.__getattribute__(self, name)


def now() -> float:
    return time.perf_counter()
