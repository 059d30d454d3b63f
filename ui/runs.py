"""Training runs as their own OS processes, one at a time, through a queue.

A run is ``python -m rollgraph.graph.cli run OUTPUT_DIR/config.json [--resume CHECKPOINT] [--stop-at-step N]`` in a new
session (so neither closing the page nor stopping the UI with Ctrl-C stops it), with FORCE_COLOR=1 and
ROLLGRAPH_NO_PROGRESS=1, its stdout and stderr going to ``OUTPUT_DIR/console.log``. A background thread
starts the next queued run when the previous process exits. Commands go to the trainer as files
``OUTPUT_DIR/control/{stop,save,sample}`` (the trainer checkpoints before it stops); the UI never kills
a run. Every folder is confined to the runs folder.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rollgraph.ui.paths import PathError, confine

LOG_NAME = "console.log"
CONTROL_COMMANDS = ("stop", "save", "sample")
QUEUED, RUNNING, EXITED, CANCELLED = "queued", "running", "exited", "cancelled"


@dataclass
class Job:
    id: int
    output_dir: Path
    config_path: Path
    resume: Path | None
    stop_at_step: int | None = None
    request: dict[str, Any] | None = None  # the config as submitted, to recognise a duplicate
    state: str = QUEUED
    returncode: int | None = None
    proc: subprocess.Popen | None = None
    submitted: float = 0.0
    started: float | None = None
    ended: float | None = None

    def describe(self) -> dict[str, Any]:
        return {"id": self.id, "output_dir": str(self.output_dir), "state": self.state, "returncode": self.returncode,
                "resume": str(self.resume) if self.resume else None, "pid": self.proc.pid if self.proc else None,
                "stop_at_step": self.stop_at_step}


def resolve_output_dir(value: str | None, runs_dir: Path) -> Path:
    """Where a config's output_dir goes when run from the UI: a relative path is taken inside the runs
    folder, a leading ``runs/`` dropped (so a CLI preset's ``runs/quickstart`` lands in
    RUNS/quickstart); an absolute path must already be inside the runs folder."""
    raw = Path(value or "runs/quickstart").expanduser()
    if not raw.is_absolute() and raw.parts and raw.parts[0] == "runs" and len(raw.parts) > 1:
        raw = Path(*raw.parts[1:])
    out = confine(raw, runs_dir)
    if out == Path(runs_dir).resolve():
        raise PathError("output_dir must be a folder inside the runs folder, not the runs folder itself")
    return out


def holds_run(folder: Path) -> bool:
    return any((folder / name).exists() for name in ("run.json", "metrics.jsonl", "checkpoints"))


class RunManager:
    def __init__(self, runs_dir: str | Path, python: str = sys.executable, poll_seconds: float = 0.5):
        self.runs_dir = Path(runs_dir).expanduser().resolve()
        self.python = python
        self.poll_seconds = poll_seconds
        self.jobs: list[Job] = []
        self._ids = itertools.count(1)
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="rollgraph-run-queue", daemon=True)
        self._thread.start()

    # --- submitting -------------------------------------------------------------------------------
    def _busy(self, folder: Path) -> bool:
        return any(j.output_dir == folder and j.state in (QUEUED, RUNNING) for j in self.jobs)

    def free_folder(self, wanted: Path) -> Path:
        """``wanted``, or ``wanted-2``, ``-3``, ... when it holds a run already or one is queued there."""
        candidate, n = wanted, 1
        while holds_run(candidate) or self._busy(candidate):
            n += 1
            candidate = wanted.with_name(f"{wanted.name}-{n}")
        return candidate

    def _refuse_duplicate(self, config: dict[str, Any]) -> None:
        """A fresh run with the very config of one queued or running (a double click, most often) would
        train the same thing again: same data, same seed, same result."""
        twin = next((j for j in self.jobs if j.state in (QUEUED, RUNNING) and j.resume is None and j.request == config), None)
        if twin is not None:
            raise PathError(f"the same config is already {twin.state} in {twin.output_dir.name}; "
                            "change something (the seed, say) to train it twice")

    def submit(self, config: dict[str, Any], resume: str | Path | None = None, stop_at_step: int | None = None) -> Job:
        """Queue a run of ``config`` (already validated). A fresh run whose folder is taken goes to a new
        numbered folder; a resume runs in the folder of its checkpoint. ``stop_at_step`` becomes the
        run's ``--stop-at-step`` (the config, and so the LR schedule, is left as it is)."""
        with self._lock:
            if resume is not None:
                checkpoint = confine(resume, self.runs_dir)
                if not (checkpoint / "trainer.json").is_file() or checkpoint.parent.name != "checkpoints":
                    raise PathError(f"{checkpoint} is not a checkpoint folder (RUN/checkpoints/step-N with trainer.json)")
                folder = checkpoint.parent.parent
                if self._busy(folder):
                    raise PathError(f"a run in {folder} is already queued or running")
            else:
                checkpoint = None
                self._refuse_duplicate(config)
                folder = self.free_folder(resolve_output_dir(config.get("output_dir"), self.runs_dir))
            folder.mkdir(parents=True, exist_ok=True)
            data = {k: v for k, v in config.items() if not str(k).startswith("_")}
            data["output_dir"] = str(folder)
            config_path = folder / "config.json"
            config_path.write_text(json.dumps(data, indent=1))
            job = Job(next(self._ids), folder, config_path, checkpoint, stop_at_step, dict(config), submitted=time.time())
            self.jobs.append(job)
        self._wake.set()
        return job

    # --- the queue thread -------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._closed:
            self.tick()
            self._wake.wait(self.poll_seconds)
            self._wake.clear()

    def tick(self) -> None:
        with self._lock:
            for job in self.jobs:
                if job.state == RUNNING and job.proc is not None and job.proc.poll() is not None:
                    job.returncode, job.state, job.ended = job.proc.returncode, EXITED, time.time()
            if self._closed or any(j.state == RUNNING for j in self.jobs):
                return
            nxt = next((j for j in self.jobs if j.state == QUEUED), None)
            if nxt is not None:
                self._launch(nxt)

    def _launch(self, job: Job) -> None:
        control = job.output_dir / "control"
        for cmd in CONTROL_COMMANDS:  # a stale command must not hit the new process
            (control / cmd).unlink(missing_ok=True)
        control.mkdir(parents=True, exist_ok=True)
        argv = [self.python, "-m", "rollgraph.graph.cli", "run", str(job.config_path)]
        if job.resume is not None:
            argv += ["--resume", str(job.resume)]
        if job.stop_at_step is not None:
            argv += ["--stop-at-step", str(job.stop_at_step)]
        env = {**os.environ, "FORCE_COLOR": "1", "ROLLGRAPH_NO_PROGRESS": "1", "PYTHONUNBUFFERED": "1", "COLUMNS": "160"}
        env.pop("NO_COLOR", None)
        log_path = job.output_dir / LOG_NAME
        with log_path.open("ab" if job.resume else "wb") as log:
            if job.resume is not None:
                log.write(f"\n── resuming from {job.resume} ──\n".encode())
            try:
                job.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            env=env, start_new_session=True)
            except OSError as err:
                log.write(f"could not start the run: {err}\n".encode())
                job.state, job.returncode, job.ended = EXITED, -1, time.time()
                return
        job.state, job.started = RUNNING, time.time()

    # --- commands ---------------------------------------------------------------------------------
    def job_for(self, folder: str | Path) -> Job | None:
        path = confine(folder, self.runs_dir)
        with self._lock:
            return next((j for j in reversed(self.jobs) if j.output_dir == path), None)

    def active(self) -> Job | None:
        with self._lock:
            return next((j for j in self.jobs if j.state == RUNNING), None)

    def command(self, folder: str | Path, cmd: str) -> str:
        """Send stop / save / sample to the run in ``folder``; stopping a queued run cancels it."""
        if cmd not in CONTROL_COMMANDS:
            raise ValueError(f"unknown command {cmd!r}")
        path = confine(folder, self.runs_dir)
        with self._lock:
            job = self.job_for(path)
            if job is not None and job.state == QUEUED:
                if cmd != "stop":
                    return f"{path.name} is still queued; it has nothing to {cmd} yet"
                job.state, job.ended = CANCELLED, time.time()
                return f"removed {path.name} from the queue"
            alive = job is not None and job.state == RUNNING
            if not alive and _status(path) != "running":
                return f"{path.name} is not running"
            (path / "control").mkdir(parents=True, exist_ok=True)
            (path / "control" / cmd).write_text(str(time.time()))
        what = {"stop": "stop requested: the run saves a checkpoint after this step, then ends",
                "save": "checkpoint requested after this step", "sample": "sample grid requested after this step"}[cmd]
        return f"{path.name}: {what}"

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return [j.describe() for j in self.jobs if j.state in (QUEUED, RUNNING)] + \
                   [j.describe() for j in reversed(self.jobs) if j.state in (EXITED, CANCELLED)][:5]

    def close(self, stop_runs: bool = False, timeout: float = 60.0) -> None:
        """Stop the queue thread (queued runs stay unstarted). With ``stop_runs`` the running process gets
        a stop command and is waited for (terminated if it does not end within ``timeout``)."""
        self._closed = True
        self._wake.set()
        self._thread.join(timeout=5)
        job = self.active()
        if stop_runs and job is not None and job.proc is not None:
            (job.output_dir / "control").mkdir(parents=True, exist_ok=True)
            (job.output_dir / "control" / "stop").write_text(str(time.time()))
            try:
                job.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                job.proc.terminate()
                job.proc.wait(timeout=30)
            job.returncode, job.state = job.proc.returncode, EXITED


def _status(folder: Path) -> str | None:
    try:
        return json.loads((folder / "run.json").read_text()).get("status")
    except (OSError, json.JSONDecodeError):
        return None
