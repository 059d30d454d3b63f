"""Per-step losses of the shipped digits presets and of the tiny-pipeline families, for the bit-identity test.

``python -m tests.golden_losses`` records them into tests/data/preset_losses.json (floats as ``float.hex``,
so they round-trip exactly); tests/test_preset_losses.py runs the same cases and compares bit for bit.
Each case is the real ``rollgraph run`` code path with small overrides (4 steps, one validation image,
CPU, one thread) so it runs in seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from rollgraph.graph.cli import main

from tests.conftest import read_metrics
from tests.tiny_pipelines import BUILDERS, family_config, write_config, write_images

GOLDEN = Path(__file__).parent / "data" / "preset_losses.json"
PRESETS = ("quickstart", "rollout_quickstart", "reflexflow_quickstart")
FAMILIES = ("sd", "sdxl", "sd3", "flux")
PRESET_OVERRIDES = ["--max_train_steps", "4", "--validation_steps", "0", "--validation_num_images", "1",
                    "--validation_num_inference_steps", "1", "--checkpointing_steps", "0", "--device", "cpu"]


def loss_keys(metrics: list[dict]) -> list[dict[str, str]]:
    """Each step's loss and loss/<term> values, as float.hex strings."""
    return [{k: float(v).hex() for k, v in sorted(m.items()) if k == "loss" or k.startswith("loss/")} for m in metrics]


def _single_thread(fn):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the reduction order of CPU kernels may depend on the thread count
    try:
        return fn()
    finally:
        torch.set_num_threads(threads)


def preset_losses(preset: str, tmp: Path) -> list[dict[str, str]]:
    out = tmp / preset

    def go():
        assert main(["run", preset, "--output_dir", str(out), *PRESET_OVERRIDES]) == 0
        return loss_keys(read_metrics(out))

    return _single_thread(go)


def family_losses(family: str, tmp: Path, model: Path, images: Path, **overrides) -> list[dict[str, str]]:
    cfg = family_config(tmp, family, model, images, validation_num_images=1, validation_num_inference_steps=1, **overrides)

    def go():
        assert main(["run", write_config(tmp / f"{family}.json", cfg)]) == 0
        return loss_keys(read_metrics(tmp / f"run-{family}"))

    return _single_thread(go)


def record() -> dict:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        images = write_images(tmp / "images", 4)
        data = {f"preset:{p}": preset_losses(p, tmp) for p in PRESETS}
        for family in FAMILIES:
            model = BUILDERS[family](tmp / f"pipe-{family}" / family)
            data[f"family:{family}"] = family_losses(family, tmp, model, images)
        classes = write_images(tmp / "class", 3, captions=True, seed=1)
        (tmp / "prior").mkdir()
        data["family:sd+prior_preservation"] = family_losses("sd", tmp / "prior", tmp / "pipe-sd" / "sd", images,
                                                            **prior_preservation(classes))
    return data


def prior_preservation(classes: Path) -> dict:
    """The prior-preservation case's overrides: class images in their own branch, λ = 0.5, Min-SNR-γ on both terms."""
    return dict(with_prior_preservation=True, class_data_dir=str(classes), prior_loss_weight=0.5, snr_gamma=5.0)


if __name__ == "__main__":
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    GOLDEN.write_text(json.dumps(record(), indent=1) + "\n")
    print(f"wrote {GOLDEN}")
