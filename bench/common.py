"""Shared benchmark plumbing: result tables (markdown + JSON), machine info, quiet training runs, clocks."""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from rollgraph.graph.hooks import Hook

RESULTS_DIR = Path(__file__).resolve().parent / "results"
MODES = ("tiny", "quick", "full")

os.environ.setdefault("ROLLGRAPH_NO_PROGRESS", "1")


@dataclass
class Table:
    """One result table: ``rows`` are lists aligned with ``columns``; numbers are formatted on output."""

    title: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *values: Any) -> None:
        if len(values) != len(self.columns):
            raise ValueError(f"{self.title}: {len(values)} values for {len(self.columns)} columns")
        self.rows.append(list(values))

    def to_markdown(self) -> str:
        lines = [f"### {self.title}", "", "| " + " | ".join(self.columns) + " |",
                 "|" + "|".join("---" for _ in self.columns) + "|"]
        lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in self.rows]
        if self.notes:
            lines += [""] + [f"- {n}" for n in self.notes]
        return "\n".join(lines) + "\n"

    def to_json(self) -> dict[str, Any]:
        return {"title": self.title, "columns": self.columns, "rows": self.rows, "notes": self.notes}


def fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        mag = abs(value)
        if mag == 0:
            return "0"
        if mag >= 100:
            return f"{value:.0f}"
        if mag >= 10:
            return f"{value:.1f}"
        if mag >= 0.01:
            return f"{value:.3f}"
        return f"{value:.2e}"
    return str(value)


def pm(values: Sequence[float]) -> str:
    """'mean ± std' over seeds, both with the mean's decimals (std with n - 1; one value has no spread)."""
    vals = [float(v) for v in values]
    mean = statistics.fmean(vals)
    if len(vals) < 2:
        return fmt(mean)
    mag = abs(mean)
    decimals = 0 if mag >= 100 else 1 if mag >= 10 else 2 if mag >= 1 else 3
    return f"{mean:.{decimals}f} ± {statistics.stdev(vals):.{decimals}f}"


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = float("nan")
    return {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "cpu": cpu,
            "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "load_avg_1min": round(load, 2), "python": platform.python_version()}


def machine_line(info: dict[str, Any]) -> str:
    gpu = f", GPU {info['cuda']}" if info.get("cuda") else ""
    return (f"{info['date']} — {info['cpu']}, {info['cores']} cores available, torch {info['torch']} "
            f"({info['torch_threads']} thread(s)){gpu}; 1-min load average at the start: {info['load_avg_1min']}")


def write_results(name: str, tables: list[Table], out_dir: Path | None = None, meta: dict[str, Any] | None = None) -> Path:
    """Write ``<name>.md`` and ``<name>.json`` under out_dir (default bench/results); return the .md path."""
    out_dir = Path(out_dir or RESULTS_DIR)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {**machine_info(), **(meta or {})}
    run = ", ".join(part for part in (f"{meta['mode']} mode" if "mode" in meta else "",
                                      f"{meta['seconds']} s" if "seconds" in meta else "") if part)
    md = f"## {name}\n\n{machine_line(meta)}" + (f"; {run}" if run else "") + "\n\n" + "\n".join(t.to_markdown() for t in tables)
    (out_dir / f"{name}.md").write_text(md)
    (out_dir / f"{name}.json").write_text(json.dumps({"name": name, "meta": meta, "tables": [t.to_json() for t in tables]},
                                                     indent=1, default=str))
    return out_dir / f"{name}.md"


class StepClock(Hook):
    """Records the wall time at every optimizer step end (the interval covers the whole step, hooks included)."""

    def __init__(self):
        self.times: list[float] = []
        self.metrics: list[dict[str, Any]] = []

    def on_step_end(self, runner, metrics):
        self.times.append(time.perf_counter())
        self.metrics.append(dict(metrics))

    def step_seconds(self, skip: int = 2) -> list[float]:
        """Per-step durations after the first ``skip`` steps (warm-up)."""
        t = self.times[skip:]
        return [b - a for a, b in zip(t, t[1:], strict=False)]


def train(config: dict[str, Any], hooks: Sequence[Hook] = ()):
    """Run the real Trainer on a config dict, silently, in a temporary output folder (deleted afterwards).

    Returns the finished Trainer (``trainer.runner.value("model", "model")`` is the trained model).
    """
    from rich.console import Console
    from rollgraph.graph.train import Trainer
    from rollgraph.stages.config import build_config

    import bench.mlp  # noqa: F401  (registers the bench_mlp family)

    out = Path(tempfile.mkdtemp(prefix="rollgraph-bench-"))
    cfg = build_config({"output_dir": str(out), "device": "cpu", "logging_steps": 10**6, "validation_num_images": 1,
                        "validation_num_inference_steps": 1, **config})
    trainer = Trainer(cfg, console=Console(file=io.StringIO()), extra_hooks=tuple(hooks))
    try:
        trainer.run()
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return trainer


def run_tasks(task, tasks: list[tuple], jobs: int, collect) -> None:
    """``collect(task(*t))`` for every t, in order; with jobs > 1 in that many spawned processes (one model each)."""
    if jobs > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            for out in pool.map(task, *zip(*tasks, strict=True)):
                collect(out)
    else:
        for t in tasks:
            collect(task(*t))


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def set_threads(n: int | None) -> None:
    if n:
        torch.set_num_threads(n)


def print_tables(name: str, tables: list[Table]) -> None:
    print(f"\n## {name}\n")
    for t in tables:
        print(t.to_markdown())


def bench_parser(doc: str) -> argparse.ArgumentParser:
    """The command line every benchmark module shares: --mode and --threads."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--mode", choices=MODES, default="full")
    parser.add_argument("--threads", type=int, default=1)
    return parser


def report(name: str, tables: list[Table], mode: str) -> None:
    """Print a benchmark's tables and write them to bench/results."""
    print_tables(name, tables)
    print(f"written: {write_results(name, tables, meta={'mode': mode})}")
