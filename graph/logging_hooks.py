"""Hooks that report a run: metrics.jsonl (one JSON object per optimizer step) and the console log."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rollgraph.graph.hooks import Hook

METRICS_FILE = "metrics.jsonl"


class MetricsFile(Hook):
    """Appends each step's metrics to output_dir/metrics.jsonl (rank 0). Keys step, loss, lr, time are
    always present; on resume, lines past the resumed step are dropped first. Lines reach the file at most
    ``FLUSH_SECONDS`` after their step (a write per second, not per step), always whole, at once with a step that
    wrote a checkpoint (so a resumed run finds every line up to its checkpoint, even after ``kill -9``), and all
    of them when the run ends."""

    FLUSH_SECONDS = 1.0

    def __init__(self, output_dir: Path, resume_step: int | None = None):
        self.path = Path(output_dir) / METRICS_FILE
        if resume_step is not None and self.path.exists():
            kept = [line for line in self.path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= resume_step]
            self.path.write_text("".join(line + "\n" for line in kept))
        self._pending: list[dict] = []  # steps not yet in the file; serialised together when written
        self._next_flush = 0.0

    def on_step_end(self, runner, metrics):
        if runner.ctx.is_main:
            self._pending.append(dict(metrics))
            now = time.monotonic()
            if now >= self._next_flush or "checkpoint" in metrics:
                self._flush()
                self._next_flush = now + self.FLUSH_SECONDS

    def _flush(self) -> None:
        # Serialising a second's lines in one go, rather than one line per step, is what makes a line cheap:
        # done between two training steps, the encoder runs cold and costs several times more.
        if self._pending:
            text = "".join([json.dumps(m, allow_nan=True) + "\n" for m in self._pending])
            with self.path.open("ab", buffering=0) as f:  # one write of whole lines
                f.write(text.encode())
            self._pending.clear()

    def on_train_end(self, runner, status):
        self._flush()


def format_seconds(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class ConsoleLog(Hook):
    """A rich log line every logging_steps (step, loss, lr, speed, ETA, rollout figures), a live progress
    bar on a terminal, and the same lines (without colour) in output_dir/train.log."""

    def __init__(self, total_steps: int, every: int, log_file: Path | None = None, console: Console | None = None):
        self.console = console or Console(stderr=False, highlight=False)
        self.total = total_steps
        self.every = every
        self.log_file = log_file
        self.progress = None
        self.task = None
        self.last_line: tuple[float, int] = (time.perf_counter(), 0)  # (time, step) of the last log line: the speed

    def start(self, first_step: int) -> None:
        self.last_line = (time.perf_counter(), first_step)
        if self.console.is_terminal and not os.environ.get("ROLLGRAPH_NO_PROGRESS"):
            self.progress = Progress(TextColumn("[bold blue]train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[loss]}"),
                                     TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=self.console, transient=True)
            self.task = self.progress.add_task("train", total=self.total, completed=first_step, loss="")
            self.progress.start()

    def line(self, text: str, style: str = "") -> None:
        self.console.print(text, style=style or None, soft_wrap=True)
        if self.log_file is not None:
            with self.log_file.open("a") as f:
                f.write(Console(file=None, no_color=True).render_str(text).plain + "\n")
        sys.stdout.flush()

    def on_step_end(self, runner, metrics):
        if not runner.ctx.is_main:
            return
        step = metrics["step"]
        if self.progress is not None:
            self.progress.update(self.task, completed=step, loss=f"loss {metrics.get('loss', float('nan')):.4f}")
        if step % self.every == 0 or step == self.total:
            (t0, s0), t1 = self.last_line, time.perf_counter()
            self.last_line = (t1, step)
            speed = (step - s0) / (t1 - t0) if t1 > t0 else 0.0  # over the steps since the last line
            eta = (self.total - step) / speed if speed > 0 else 0.0
            parts = [f"[bold]step {step}/{self.total}[/]", f"loss [cyan]{metrics.get('loss', float('nan')):.4f}[/]",
                     f"lr {metrics.get('lr', 0):.2e}", f"{speed:.2f} it/s", f"ETA {format_seconds(eta)}"]
            if "rollout/p" in metrics:
                parts.append(f"rollout p={metrics['rollout/p']:.2f} n={metrics.get('rollout/samples', 0):.0f} evals={metrics.get('rollout/model_evals', 0):.0f}")
            for key in ("loss/adr", "loss/fc"):
                if key in metrics:
                    parts.append(f"{key.split('/')[1]} {metrics[key]:.4f}")
            self.line(" | ".join(parts))
        if "sample" in metrics:
            self.line(f"[green]samples[/] → {metrics['sample']}")

    def on_train_end(self, runner, status):
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
