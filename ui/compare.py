"""Comparing finished (or running) runs side by side: one metric of several runs overlaid, and a table of
what each run was (the config keys that differ between them) and what it gave (duration, speed, final
loss, the exposure-bias probe's last reading). Only reads run folders."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
from rollgraph.graph.logging_hooks import format_seconds
from rollgraph.ui.states import run_state
from rollgraph.ui.watch import MAX_PLOT_POINTS, read_config, read_metrics, read_status

PROBE_KEYS = ("exposure_bias/variance_error", "exposure_bias/swd")
FINAL_WINDOW = 10  # the final loss is the mean of the last steps: one step's loss is mostly batch noise
FIXED_COLUMNS = ["run", "status", "steps", "duration", "it/s", "final loss", "probe variance error", "probe swd"]
IGNORED_KEYS = {"output_dir"}  # differs between every two runs by construction
NOT_METRICS = {"step", "time", "sample"}
_NUMERIC = {"steps", "it/s", "final loss", "probe variance error", "probe swd"}


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _last(rows: list[dict[str, Any]], key: str) -> float | None:
    return next((float(r[key]) for r in reversed(rows) if _number(r.get(key))), None)


def run_facts(folder: Path, name: str) -> dict[str, Any]:
    """One table row's measured part: status, steps, duration (the run's time, setup and resumes included), it/s,
    final loss (mean of the last FINAL_WINDOW logged losses) and the probe's last reading."""
    rows = read_metrics(folder)
    status = read_status(folder)
    losses = [float(r["loss"]) for r in rows if _number(r.get("loss"))]
    steps = rows[-1]["step"] if rows else 0
    seconds = _last(rows, "time")
    timed = [r for r in rows if _number(r.get("time"))]
    # speed between the first and last logged step: setup (data, model) is in the duration, not here
    span = timed[-1]["time"] - timed[0]["time"] if len(timed) >= 2 else 0.0
    speed = (timed[-1]["step"] - timed[0]["step"]) / span if span > 0 else None
    final = sum(losses[-FINAL_WINDOW:]) / len(losses[-FINAL_WINDOW:]) if losses else None
    return {
        "run": name,
        "status": run_state(status).label,
        "steps": steps,
        "duration": format_seconds(seconds) if seconds else "",
        "it/s": round(speed, 3) if speed else None,
        "final loss": round(final, 6) if final is not None else None,
        "probe variance error": _round(_last(rows, PROBE_KEYS[0])),
        "probe swd": _round(_last(rows, PROBE_KEYS[1])),
    }


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 5)


def _shown(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def differing_keys(configs: dict[str, dict[str, Any]]) -> list[str]:
    """Config keys whose value is not the same in every run (a key missing from a run counts as a value)."""
    keys = sorted({k for cfg in configs.values() for k in cfg if k not in IGNORED_KEYS and not k.startswith("_")})
    return [k for k in keys if len({_shown(cfg[k]) if k in cfg else "\0missing" for cfg in configs.values()}) > 1]


def compare_table(folders: dict[str, Path], filter_text: str = "", sort_by: str = "run", descending: bool = False) -> pd.DataFrame:
    """A row per run: FIXED_COLUMNS, then one column per config key that differs. ``filter_text`` keeps
    the rows where any cell contains it (case-insensitive); ``sort_by`` names a column (empty cells last)."""
    configs = {name: read_config(folder) for name, folder in folders.items()}
    diff = differing_keys(configs)
    records = []
    for name, folder in folders.items():
        row = run_facts(folder, name)
        row.update({k: _shown(configs[name][k]) if k in configs[name] else "" for k in diff})
        records.append(row)
    table = pd.DataFrame.from_records(records, columns=FIXED_COLUMNS + diff)
    needle = (filter_text or "").strip().lower()
    if needle:
        keep = table.apply(lambda r: any(needle in str(cell).lower() for cell in r), axis=1)
        table = table[keep]
    if sort_by in table.columns:
        table = table.sort_values(sort_by, ascending=not descending, na_position="last", kind="stable",
                                  key=lambda col: pd.to_numeric(col, errors="coerce") if col.name in _NUMERIC else col.astype(str))
    return table.reset_index(drop=True)



def metric_choices(folders: dict[str, Path]) -> list[str]:
    """Every numeric metric logged by any of the runs, loss first."""
    keys: set[str] = set()
    for folder in folders.values():
        for row in read_metrics(folder):
            keys.update(k for k, v in row.items() if k not in NOT_METRICS and _number(v))
    return sorted(keys, key=lambda k: (k != "loss", k))


def overlay(folders: dict[str, Path], metric: str) -> pd.DataFrame:
    """(step, value, run) of ``metric`` for every run, each thinned to at most MAX_PLOT_POINTS points."""
    records = []
    for name, folder in folders.items():
        points = [(r["step"], float(r[metric])) for r in read_metrics(folder) if _number(r.get(metric))]
        stride = max(1, math.ceil(len(points) / MAX_PLOT_POINTS))
        records += [(s, v, name) for i, (s, v) in enumerate(points) if i % stride == 0 or i == len(points) - 1]
    return pd.DataFrame.from_records(records, columns=["step", "value", "run"])
