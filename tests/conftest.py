"""Shared fixtures: a tiny, fast config (digits at 8×8, a very small UNet2DModel)."""

from __future__ import annotations

import json
import os

import pytest
import torch

os.environ.setdefault("ROLLGRAPH_NO_PROGRESS", "1")

TINY_UNET = {
    "block_out_channels": [16, 32],
    "layers_per_block": 1,
    "down_block_types": ["DownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "UpBlock2D"],
    "norm_num_groups": 8,
}


@pytest.fixture(autouse=True)
def _torch_threads_restored():
    """Whatever a test sets torch's thread count to, the next test starts from the default again: a leaked
    setting once hid a test whose in-process and child-process runs only agreed at one thread."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def tiny_config(tmp_path, **overrides) -> dict:
    cfg = {
        "output_dir": str(tmp_path / "run"),
        "dataset": "digits",
        "resolution": 8,
        "train_batch_size": 8,
        "max_train_steps": 4,
        "learning_rate": 1e-3,
        "model_architecture": TINY_UNET,
        "validation_num_images": 4,
        "validation_num_inference_steps": 3,
        "logging_steps": 1,
        "device": "cpu",
    }
    cfg.update(overrides)
    return cfg


@pytest.fixture
def tiny(tmp_path):
    """Factory: tiny(**overrides) -> path of a written config.json."""
    counter = {"n": 0}

    def make(**overrides):
        counter["n"] += 1
        path = tmp_path / f"config{counter['n']}.json"
        path.write_text(json.dumps(tiny_config(tmp_path, **overrides)))
        return path

    return make


def read_metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
