"""One vocabulary for a run's state, used by the status chip, the queue and the runs table alike:

queued · starting · running · finished · stopped · failed · cancelled · died · not started

It combines the trainer's run.json (``status``: running / finished / stopped / failed) with what the UI
knows of the process it launched (queued / running / exited / cancelled). A process that exited without
writing a final status is ``failed`` with its exit code. ``died``: run.json still says running but no
process is training it, by the trainer's own rule (``rollgraph.graph.run_folder.is_alive``: its ``pid`` is
gone on this ``host``, or its ``updated`` heartbeat is stale); a run.json without ``pid`` and ``updated``
(written before run.json carried them) is never called died on their account.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from rollgraph.graph.run_folder import is_alive

FINAL = ("finished", "stopped", "failed")


@dataclass(frozen=True)
class RunState:
    name: str  # one word of the vocabulary above; also the chip's CSS class
    detail: str = ""

    @property
    def label(self) -> str:
        return f"{self.name} ({self.detail})" if self.detail else self.name


def _died(status: dict[str, Any], now: float) -> str | None:
    """Why a run.json that says running has no live trainer, or None."""
    if status.get("pid") is None and status.get("updated") is None:
        return None
    if is_alive(status, now):
        return None
    seen = status.get("updated")
    return f"last seen {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(seen))}" if seen else "never seen"


def run_state(status: dict[str, Any], job: Any | None = None, queued_ahead: int | None = None,
              now: float | None = None) -> RunState:
    """The state of a run from its run.json ``status`` dict and the UI's Job for it (None if the UI did
    not launch it)."""
    now = time.time() if now is None else now
    written = status.get("status")
    step = status.get("step")
    if job is not None and job.state == "queued":
        return RunState("queued", f"{queued_ahead} ahead" if queued_ahead is not None else "")
    if job is not None and job.state == "cancelled":
        return RunState("cancelled", "removed from the queue")
    if job is not None and job.state == "running":
        fresh = isinstance(status.get("updated"), (int, float)) and status["updated"] >= (job.started or 0)
        if written in FINAL and fresh:  # written by this process, which is now exiting
            return RunState(written)
        return RunState("running") if written == "running" and fresh else RunState("starting", "loading data and model")
    if written in FINAL:
        return RunState(written, "stop at step" if written == "stopped" and status.get("stop_at_step") == step else "")
    if job is not None and job.state == "exited":
        return RunState("failed", f"process exited with code {job.returncode}")
    if written == "running":
        why = _died(status, now)
        if why:
            return RunState("died", f"at step {step}; {why}")
        return RunState("running")
    return RunState("not started")
