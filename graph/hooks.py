"""Hooks observe the runner: around every stage and at the end of every optimizer step."""

from __future__ import annotations

from typing import Any


class Hook:
    def on_setup_end(self, runner) -> None: ...
    def before_stage(self, runner, node_id: str) -> None: ...
    def after_stage(self, runner, node_id: str, outputs: dict[str, Any], seconds: float) -> None: ...
    def on_step_end(self, runner, metrics: dict[str, float]) -> None: ...
    def on_train_end(self, runner, status: str) -> None: ...


EVENTS = ("on_setup_end", "before_stage", "after_stage", "on_step_end", "on_train_end")


class Hooks(Hook):
    """Fans each event out to the hooks that override it, in order (the lists are built once: the
    runner calls before/after_stage for every stage of every step)."""

    def __init__(self, hooks):
        self.hooks = list(hooks)
        self._handlers = {}
        for event in EVENTS:
            base = getattr(Hook, event)
            handlers = [getattr(h, event) for h in self.hooks if getattr(type(h), event, base) is not base]
            self._handlers[event] = handlers
            setattr(self, event, _fan_out(handlers))

    def overrides(self, event: str) -> bool:
        """Whether some hook handles ``event``."""
        return bool(self._handlers[event])


def _fan_out(handlers):
    def call(*args, **kwargs):
        for handler in handlers:
            handler(*args, **kwargs)

    return call
