"""Reading a run folder while it trains: status (run.json), metrics.jsonl, the console log, samples,
checkpoints; and the list of past runs under the runs folder. Only reads, never writes."""

from __future__ import annotations

import json
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from rollgraph.graph.checkpoint import list_checkpoints
from rollgraph.graph.logging_hooks import METRICS_FILE, format_seconds
from rollgraph.ui.runs import LOG_NAME

MAX_PLOT_POINTS = 1500


@dataclass
class _Cached:
    size: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)


_metrics_cache: dict[Path, _Cached] = {}
_cache_lock = threading.Lock()


def read_metrics(folder: Path) -> list[dict[str, Any]]:
    """metrics.jsonl's rows, read incrementally (only new whole lines are parsed on each call; a file
    that shrank, as on resume, is read again from the start)."""
    path = Path(folder) / METRICS_FILE
    try:
        size = path.stat().st_size
    except OSError:
        return []
    with _cache_lock:
        cached = _metrics_cache.setdefault(path, _Cached())
        if size < cached.size:
            cached.size, cached.rows = 0, []
        if size > cached.size:
            with path.open("rb") as f:
                f.seek(cached.size)
                chunk = f.read(size - cached.size)
            end = chunk.rfind(b"\n") + 1  # a half-written last line waits for the next call
            for line in chunk[:end].decode("utf-8", errors="replace").splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(row, dict) and "step" in row:
                    cached.rows.append(row)
            cached.size += end
        return list(cached.rows)


def read_status(folder: Path) -> dict[str, Any]:
    try:
        data = json.loads((Path(folder) / "run.json").read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, json.JSONDecodeError):
        return {}


def read_config(folder: Path) -> dict[str, Any]:
    try:
        data = json.loads((Path(folder) / "config.json").read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, json.JSONDecodeError):
        return {}


def log_tail(folder: Path, max_bytes: int = 96_000) -> bytes:
    """The end of the run's console log (colours kept); for a run started outside the UI, which has no
    console log, the trainer's plain train.log."""
    path = Path(folder) / LOG_NAME
    if not path.exists():
        path = Path(folder) / "train.log"
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except OSError:
        return b""
    if size > max_bytes:
        data = data[data.find(b"\n") + 1:]  # drop the partial first line
    return data


def progress(rows: list[dict[str, Any]], max_steps: int | None, window: int = 30) -> dict[str, Any]:
    """Step, speed (it/s over the last ``window`` steps of metrics ``time``), ETA and elapsed time."""
    if not rows:
        return {"step": 0, "max": max_steps, "speed": None, "eta": None, "elapsed": None}
    last = rows[-1]
    recent = [r for r in rows[-window:] if isinstance(r.get("time"), (int, float))]
    speed = None
    if len(recent) >= 2 and recent[-1]["time"] > recent[0]["time"]:
        speed = (recent[-1]["step"] - recent[0]["step"]) / (recent[-1]["time"] - recent[0]["time"])
    eta = (max_steps - last["step"]) / speed if speed and max_steps else None
    return {"step": last["step"], "max": max_steps, "speed": speed, "eta": eta, "elapsed": last.get("time")}


def progress_text(p: dict[str, Any]) -> str:
    parts = [f"step {p['step']}/{p['max'] if p['max'] else '?'}"]
    if p["speed"]:
        parts.append(f"{p['speed']:.2f} it/s")
    if p["eta"] is not None:
        parts.append(f"ETA {format_seconds(p['eta'])}")
    if p["elapsed"] is not None:
        parts.append(f"elapsed {format_seconds(p['elapsed'])}")
    return " · ".join(parts)


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def curves(rows: list[dict[str, Any]], keys: list[str], smooth: str | None = None) -> pd.DataFrame:
    """A long table (step, value, series) of the metric ``keys`` for a line plot, thinned to at most
    MAX_PLOT_POINTS per series; ``smooth`` adds an exponential moving average of that key."""
    stride = max(1, math.ceil(len(rows) / MAX_PLOT_POINTS))
    records = []
    for key in keys:
        pts = [(r["step"], r[key]) for r in rows if _finite(r.get(key))]
        records += [(s, float(v), key) for i, (s, v) in enumerate(pts) if i % stride == 0 or i == len(pts) - 1]
        if key == smooth and pts:  # bias-corrected EMA (as TensorBoard's smoothing): no lag toward 0 at the start
            avg, beta = 0.0, 0.9
            for i, (s, v) in enumerate(pts):
                avg = beta * avg + (1 - beta) * v
                if i % stride == 0 or i == len(pts) - 1:
                    records.append((s, float(avg / (1 - beta ** (i + 1))), f"{key} (smoothed)"))
    return pd.DataFrame.from_records(records, columns=["step", "value", "series"])


def metric_keys(rows: list[dict[str, Any]], prefix: str) -> list[str]:
    keys: dict[str, None] = {}
    for r in rows[-200:]:
        for k in r:
            if k.startswith(prefix):
                keys[k] = None
    return sorted(keys)


def samples(folder: Path) -> list[Path]:
    root = Path(folder) / "samples"
    return sorted(p for p in root.glob("*.png") if p.is_file()) if root.is_dir() else []


def checkpoints(folder: Path) -> list[tuple[int, Path]]:
    return list_checkpoints(Path(folder))


def find_runs(runs_dir: Path, depth: int = 3) -> list[Path]:
    """Folders holding a run (run.json or console.log) under ``runs_dir``, newest first; hidden folders
    (the trash) are skipped."""
    root = Path(runs_dir)
    found: list[Path] = []
    level = [root] if root.is_dir() else []
    for _ in range(depth):
        nxt = []
        for folder in level:
            for sub in sorted(folder.iterdir()):
                if sub.is_dir() and not sub.is_symlink() and sub.name not in ("checkpoints", "samples", "control") \
                        and not sub.name.startswith("."):  # .trash holds runs moved aside
                    if (sub / "run.json").is_file() or (sub / LOG_NAME).is_file():
                        found.append(sub)
                    nxt.append(sub)
        level = nxt

    def mtime(p: Path) -> float:
        try:
            return max((p / n).stat().st_mtime for n in ("run.json", LOG_NAME, "config.json") if (p / n).exists())
        except ValueError:
            return 0.0

    return sorted(found, key=mtime, reverse=True)


def run_summary(folder: Path, runs_dir: Path) -> dict[str, Any]:
    status = read_status(folder)
    rows = read_metrics(folder)
    losses = [r["loss"] for r in rows if _finite(r.get("loss"))]
    updated = status.get("updated")
    return {
        "run": str(Path(folder).relative_to(runs_dir)),
        "status": status.get("status", "not started"),
        "step": f"{status.get('step', rows[-1]['step'] if rows else 0)}/{status.get('max_train_steps', '?')}",
        "final loss": round(losses[-1], 5) if losses else None,
        "checkpoints": len(checkpoints(folder)),
        "samples": len(samples(folder)),
        "updated": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(updated)) if updated else "",
    }
