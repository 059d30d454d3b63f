"""Experiment trackers (``report_to``): every metric of metrics.jsonl and every validation grid, sent to
TensorBoard or Weights & Biases through accelerate's tracker classes (``accelerate.tracking``).

TensorBoard event files go to ``output_dir/tensorboard/``; wandb writes under ``output_dir/wandb/`` to the
project ``rollgraph``, the run named after the output folder; wandb's own settings decide whether it uploads
(``wandb login``) or stays local (``WANDB_MODE=offline``); a tracker that fails to start stops the run with
a message naming ``report_to``. Only rank 0 reports. The config (flattened to scalars) is stored as the run's
hyperparameters.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rollgraph.graph.errors import ConfigError, Issue, RunError
from rollgraph.graph.hooks import Hook

TRACKERS = ("none", "tensorboard", "wandb")
PACKAGES = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",)}


def tracker_issue(report_to: str) -> Issue | None:
    """A missing package for the chosen tracker (checked at validation, before anything runs)."""
    needed = PACKAGES.get(report_to, ())
    if needed and not any(importlib.util.find_spec(name) for name in needed):
        return Issue("report_to", f"{report_to!r} needs the {needed[0]!r} package, which is not installed "
                                  f"(pip install {needed[0]}, or pip install 'rollgraph[test]')")
    return None


def _scalar_config(config: dict[str, Any]) -> dict[str, Any]:
    """Hyperparameters must be bool / str / int / float: lists and dicts become JSON text, None 'null'."""
    out = {}
    for key, value in config.items():
        if value is None or isinstance(value, (list, dict)):
            value = json.dumps(value)
        out[key] = value
    return out


FILE_KEYS = ("step", "sample", "checkpoint")  # the step is the tracker's own; paths are not metrics


class TrackerHook(Hook):
    """Sends each step's metrics (as metrics.jsonl has them) and each new validation grid to the tracker."""

    def __init__(self, report_to: str, output_dir: Path, config: dict[str, Any], last_grid: Callable[[], Path | None]):
        from accelerate.tracking import TensorBoardTracker, WandBTracker

        issue = tracker_issue(report_to)
        if issue is not None:
            raise ConfigError([issue])
        self.report_to = report_to
        self.last_grid = last_grid
        self.logged_grid: Path | None = None
        self.config = config
        self.output_dir = Path(output_dir)
        if report_to == "tensorboard":
            self.tracker = TensorBoardTracker("tensorboard", self.output_dir)
        else:
            self.tracker = WandBTracker("rollgraph", name=self.output_dir.name, dir=str(self.output_dir))
        self.started = False

    def on_setup_end(self, runner):
        """Start after setup, so a run that fails there (a bad image, a bad model folder) writes nothing."""
        from accelerate import PartialState

        PartialState()  # accelerate's trackers log through its logger, which needs the (single- or multi-process) state
        self.output_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.tracker.start()
            self.tracker.store_init_configuration(_scalar_config(self.config))
        except Exception as err:  # a tracker's own failure (login, files) must name the key that asked for it
            raise RunError(f"report_to={self.report_to}: the tracker did not start: {err}") from err
        self.started = True

    def _log_grid(self, path: Path, step: int) -> None:
        import numpy as np
        from PIL import Image

        image = np.asarray(Image.open(path).convert("RGB"))
        if self.report_to == "tensorboard":
            self.tracker.log_images({"validation": image[None]}, step=step, dataformats="NHWC")
        else:
            self.tracker.log_images({"validation": [image]}, step=step)
        self.logged_grid = path

    def on_step_end(self, runner, metrics):
        step = int(metrics["step"])
        values = {k: v for k, v in metrics.items() if k not in FILE_KEYS and isinstance(v, (int, float, str))}
        self.tracker.log(values, step=step)
        if "sample" in metrics:
            self._log_grid(Path(metrics["sample"]), step)

    def on_train_end(self, runner, status):
        if not self.started:
            return
        grid = self.last_grid()
        if grid is not None and grid != self.logged_grid and Path(grid).exists():
            self._log_grid(Path(grid), runner.ctx.step)
        self.tracker.finish()
        if self.report_to == "wandb":  # finish() can return before wandb's service has written the run to disk
            import wandb

            wandb.teardown()
