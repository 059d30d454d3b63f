"""A run's folder and its ``run.json``: never mix two runs in one folder, and tell a live run from a dead one.

``run.json`` is the run's heartbeat: status (running | finished | stopped | failed), the last logged step,
``updated`` (Unix time of the last write), and the ``pid`` and ``host`` of the process writing it. The trainer
rewrites it at start, at every logged step (one small atomic write every ``logging_steps``) and at the end.
A reader decides whether a ``running`` run is alive: on the same host, by asking whether that pid still
exists; from another host, by whether the heartbeat is older than ``STALE_AFTER_S`` and ten logging intervals.

A new run into a folder that already holds one (a run.json, metrics.jsonl or checkpoints) is refused unless
it resumes it (``--resume``) or replaces it (``--overwrite``), which moves the old run aside to a sibling
folder: nothing already saved is deleted.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from rollgraph.graph.checkpoint import list_checkpoints
from rollgraph.graph.errors import ConfigError, Issue
from rollgraph.graph.hooks import Hook

RUN_FILE = "run.json"
RUN_MARKERS = (RUN_FILE, "metrics.jsonl", "checkpoints")
STALE_AFTER_S = 600.0  # a heartbeat older than this (and than ten logging intervals) means the writer is gone


def holds_run(folder: Path) -> bool:
    """True when ``folder`` holds (part of) a run: what a new run there would mix with."""
    return any((Path(folder) / name).exists() for name in RUN_MARKERS)


def read_run(folder: Path) -> dict[str, Any]:
    """run.json as a dict ({} when absent or unreadable: a run killed before its first write)."""
    try:
        data = json.loads((Path(folder) / RUN_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def write_status(output_dir: Path, **fields: Any) -> None:
    """Merge ``fields`` into run.json atomically (temp file + rename), stamped with time, pid and host."""
    path = Path(output_dir) / RUN_FILE
    state = read_run(output_dir)
    now = time.time()
    if "status" in fields:  # a start or an end: the previous write may be from another process, hours ago
        state.pop("heartbeat_interval", None)
    elif state.get("updated") is not None and fields.get("step") != state.get("step"):
        state["heartbeat_interval"] = round(now - state["updated"], 3)
    state.update(fields, updated=now, pid=os.getpid(), host=socket.gethostname())
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(state, indent=1))
    tmp.replace(path)


class Heartbeat(Hook):
    """Rank 0 rewrites run.json's step (and time, pid, host) at every logged step: a few hundred bytes each
    ``logging_steps``, so a reader sees how far a run got and whether its process still lives."""

    def __init__(self, output_dir: Path, every: int):
        self.output_dir = Path(output_dir)
        self.every = max(1, every)

    def on_step_end(self, runner, metrics):
        if runner.ctx.is_main and metrics["step"] % self.every == 0:
            write_status(self.output_dir, step=metrics["step"])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def is_alive(state: dict[str, Any], now: float | None = None) -> bool:
    """Whether a run.json that says ``running`` still has a live writer (see the module docstring)."""
    if state.get("status") != "running":
        return False
    now = time.time() if now is None else now
    updated = state.get("updated")
    interval = state.get("heartbeat_interval") or 0.0
    if updated is not None and now - updated > max(STALE_AFTER_S, 10 * interval):
        return False
    pid = state.get("pid")
    if pid is not None and state.get("host") == socket.gethostname():
        return _pid_alive(int(pid))
    return updated is not None


def _when(timestamp: float | None, now: float) -> str:
    if timestamp is None:
        return "never"
    ago = max(0, int(now - timestamp))
    span = f"{ago} s" if ago < 120 else f"{ago // 60} min" if ago < 7200 else f"{ago // 3600} h"
    return f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(timestamp))}, {span} ago"


def run_state(folder: Path, now: float | None = None) -> tuple[str, int]:
    """(status, step) of the run in ``folder``: status is running | died | finished | stopped | failed | none.

    ``died`` is a run.json that says running whose writer is gone (killed, crashed, machine lost). The step is
    the larger of run.json's and the newest checkpoint's (a run killed before any heartbeat still has those)."""
    folder = Path(folder)
    if not holds_run(folder):
        return "none", 0
    state = read_run(folder)
    checkpoints = list_checkpoints(folder)
    step = max(int(state.get("step") or 0), checkpoints[-1][0] if checkpoints else 0)
    status = state.get("status") or "died"
    if status == "running" and not is_alive(state, now):
        status = "died"
    return status, step


def describe_status(folder: Path, now: float | None = None) -> str:
    """One line for a person: "running at step 120 (pid 4242 on host, last seen …)", "died at step 120
    (last seen …)", "finished at step 600", "stopped at step 200", "failed at step 3: <error>", "no run"."""
    now = time.time() if now is None else now
    state = read_run(folder)
    status, step = run_state(folder, now)
    seen = _when(state.get("updated"), now)
    if status == "none":
        return "no run"
    if status == "running":
        return f"running at step {step} (pid {state.get('pid')} on {state.get('host')}, last seen {seen})"
    if status == "died":
        return f"died at step {step} (last seen {seen})"
    if status == "failed" and state.get("error"):
        return f"failed at step {step}: {state['error']}"
    return f"{status} at step {step}"


def aside_folder(folder: Path) -> Path:
    """A free sibling name for an old run moved aside: ``NAME.replaced-YYYYmmdd-HHMMSS[-k]``."""
    folder = Path(folder)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    candidate = folder.with_name(f"{folder.name}.replaced-{stamp}")
    k = 1
    while candidate.exists():
        k += 1
        candidate = folder.with_name(f"{folder.name}.replaced-{stamp}-{k}")
    return candidate


def prepare_output_dir(folder: Path, resume: str | None = None, overwrite: bool = False) -> Path | None:
    """Check a new run's output folder before anything is written; return where an old run was moved, if any.

    - the folder holds a live run: refused (two trainers must never write one folder), even with --resume;
    - it holds a finished / stopped / failed / dead run and neither --resume nor --overwrite is given: refused;
    - --overwrite: the old run is renamed to a sibling folder (never deleted) and the run starts fresh.
    Errors are ConfigError on ``output_dir`` (exit 2)."""
    folder = Path(folder)
    if not holds_run(folder):
        return None
    status, step = run_state(folder)
    if status == "running":
        raise ConfigError([Issue("output_dir", f"{folder} is being trained right now ({describe_status(folder)}): "
                                               "stop that run first (control/stop or Ctrl-C)")])
    if resume:
        if overwrite:
            raise ConfigError([Issue("--overwrite", "--overwrite starts over and --resume continues: give one of them")])
        return None
    if not overwrite:
        raise ConfigError([Issue("output_dir", f"{folder} holds a run at step {step} ({status}): add --resume latest "
                                               "to continue, or --overwrite to start over")])
    target = aside_folder(folder)
    folder.rename(target)
    return target
