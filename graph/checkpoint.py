"""Checkpoints: ``output_dir/checkpoints/step-N/`` holding only safetensors and JSON, written atomically.

Every checkpointable object (a stage or setup value with ``save_state(dir)`` / ``load_state(dir)``) gets its
own sub-folder named by its node id; ``trainer.json`` records the step, the elapsed time, the seed and
the resolved config, and ``"requested": true`` for a checkpoint a person asked for ("Save now", the
``control/save`` command): rotation by ``checkpoints_total_limit`` counts and removes only the scheduled
ones, so a requested save is never deleted by it. RNG state needs no saving: every stage's generator is derived from
(seed, stage id, step, micro-step, rank), and the global torch RNG is re-seeded the same way each step.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

from rollgraph.graph.errors import ConfigError, Issue

STEP_DIR = re.compile(r"^step-(\d+)$")
PARTIAL_DIR = re.compile(r"^\.(step-\d+)\.(tmp|old)-\d+$")


def checkpoints_dir(output_dir: Path) -> Path:
    return Path(output_dir) / "checkpoints"


def list_checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    root = checkpoints_dir(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name)) and (p / "trainer.json").exists()]
    return sorted(found)


def recover_interrupted_writes(output_dir: Path) -> None:
    """Undo what a process killed inside ``save_checkpoint`` left: a half-written ``.step-N.tmp-*`` is removed;
    a ``.step-N.old-*`` (the previous step-N, renamed just before the new one took its place) is restored when
    step-N is missing, removed otherwise. Call only while no trainer writes this folder."""
    root = checkpoints_dir(output_dir)
    if not root.is_dir():
        return
    for path in sorted(root.iterdir()):
        m = PARTIAL_DIR.match(path.name)
        if m is None:
            continue
        final = root / m.group(1)
        try:  # another rank of the same run may be doing the same
            if m.group(2) == "old" and not final.exists() and (path / "trainer.json").exists():
                path.rename(final)
            else:
                shutil.rmtree(path)
        except OSError:
            pass


def is_requested(checkpoint: Path) -> bool:
    """Whether ``checkpoint`` (a step-N folder) was saved on a person's request."""
    try:
        return json.loads((Path(checkpoint) / "trainer.json").read_text()).get("requested") is True
    except (OSError, ValueError, AttributeError):
        return False


def find_checkpoint(output_dir: Path, which: str, flag: str = "--resume") -> Path:
    """``latest``, a checkpoint's name inside output_dir/checkpoints (``step-N`` or ``N``), or a checkpoint
    folder's path; otherwise a ConfigError on ``flag`` listing the checkpoints there, with a did-you-mean."""
    from rollgraph.graph.registry import did_you_mean

    recover_interrupted_writes(output_dir)
    found = list_checkpoints(output_dir)
    if which == "latest":
        if not found:
            raise ConfigError([Issue(flag, f"no checkpoint in {checkpoints_dir(output_dir)}")])
        return found[-1][1]
    inside = checkpoints_dir(output_dir) / (f"step-{which}" if which.isdigit() else which)
    for candidate in (inside, Path(which)):
        if (candidate / "trainer.json").exists():
            return candidate
    names = [p.name for _, p in found]
    raise ConfigError([Issue(flag, f"{which!r} is neither a checkpoint in {checkpoints_dir(output_dir)}"
                                   f"{did_you_mean(which, names)} nor a checkpoint folder (no trainer.json); "
                                   f"there: {names or 'none'}")])


def save_checkpoint(output_dir: Path, step: int, objects: dict[str, Any], trainer_state: dict[str, Any],
                    total_limit: int | None = None) -> Path:
    root = checkpoints_dir(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    recover_interrupted_writes(output_dir)
    final = root / f"step-{step}"
    tmp = root / f".step-{step}.tmp-{int(time.time() * 1e6)}"
    tmp.mkdir()
    try:
        for name, obj in objects.items():
            sub = tmp / name
            sub.mkdir()
            obj.save_state(sub)
        (tmp / "trainer.json").write_text(json.dumps({"step": step, **trainer_state}, indent=1, default=str))
        if final.exists():
            old = root / f".step-{step}.old-{int(time.time() * 1e6)}"
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old)
        else:
            tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if total_limit is not None:
        scheduled = [path for _, path in list_checkpoints(output_dir) if not is_requested(path)]
        for path in scheduled[:-total_limit]:
            shutil.rmtree(path)
    return final


def load_checkpoint(path: Path, objects: dict[str, Any]) -> dict[str, Any]:
    """Restore every object from its sub-folder; return trainer.json."""
    state = json.loads((path / "trainer.json").read_text())
    missing = [name for name in objects if not (path / name).is_dir()]
    if missing:
        raise ConfigError([Issue("--resume", f"checkpoint {path} lacks state for {missing} (was it written by a different graph?)")])
    for name, obj in objects.items():
        obj.load_state(path / name)
    return state
