"""Deleting and renaming run folders from the UI, without ever losing one.

"Delete" moves the folder into ``RUNS/.trash/NAME-YYYYmmdd-HHMMSS`` (hidden from the run lists; empty it
by hand); "rename" moves it to a new name inside the runs folder and points its config.json's
``output_dir`` there. Both refuse a run that is queued, running, or whose run.json says it is running,
and a target that exists. Everything stays confined to the runs folder.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from rollgraph.ui.paths import PathError, confine, safe_name
from rollgraph.ui.runs import RunManager
from rollgraph.ui.watch import read_status

TRASH = ".trash"


def _movable(manager: RunManager, name: str) -> Path:
    folder = confine(name, manager.runs_dir)
    if folder == manager.runs_dir or not folder.is_dir():
        raise PathError(f"no run folder {name!r} in {manager.runs_dir}")
    if TRASH in folder.relative_to(manager.runs_dir).parts:
        raise PathError(f"{name!r} is in the trash already")
    job = manager.job_for(folder)
    if (job is not None and job.state in ("queued", "running")) or read_status(folder).get("status") == "running":
        raise PathError(f"{name} is queued or running: stop it first")
    return folder


def trash_run(manager: RunManager, name: str) -> Path:
    """Move run ``name`` aside into the trash; returns where it went."""
    folder = _movable(manager, name)
    bin_dir = manager.runs_dir / TRASH
    bin_dir.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = bin_dir / f"{folder.name}-{stamp}"
    n = 1
    while target.exists():
        n += 1
        target = bin_dir / f"{folder.name}-{stamp}-{n}"
    folder.rename(target)
    return target


def rename_run(manager: RunManager, name: str, new_name: str) -> Path:
    """Rename run ``name`` to ``new_name`` (a safe name, in the same parent folder); returns the new folder."""
    folder = _movable(manager, name)
    target = confine(folder.parent / safe_name(new_name), manager.runs_dir)
    if target.exists():
        raise PathError(f"{target.name!r} exists already in {target.parent}")
    folder.rename(target)
    config = target / "config.json"
    try:
        data = json.loads(config.read_text())
    except (OSError, json.JSONDecodeError):
        return target
    if isinstance(data, dict):
        data["output_dir"] = str(target)
        tmp = config.with_name(".config.json.tmp")
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(config)
    return target
