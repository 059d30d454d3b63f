"""``rollgraph sample``: checkpoints by name, the sampler checked before loading, labels saved with the samples."""

from __future__ import annotations

import shutil

import pytest
import torch
from rollgraph.graph.cli import build_parser, main
from safetensors import safe_open


@pytest.fixture
def run(tiny, tmp_path):
    assert main(["run", str(tiny(max_train_steps=2, checkpointing_steps=1))]) == 0
    return tmp_path / "run"


def test_checkpoint_by_name_and_labels_in_the_tensor_file(run, tmp_path, capsys):
    out = tmp_path / "s"
    for name in ("step-1", "1"):
        assert main(["sample", str(run), "--checkpoint", name, "--num", "12", "--steps", "2", "--out", str(out)]) == 0
        with safe_open(str(out / "samples.safetensors"), "pt") as f:
            assert f.metadata()["checkpoint"] == str(run / "checkpoints" / "step-1")
            assert f.get_tensor("samples").shape == (12, 1, 8, 8)
            assert torch.equal(f.get_tensor("class_labels"), torch.arange(12) % 10)  # the grid's classes, in order
    assert main(["sample", str(run), "--checkpoint", "step-7", "--out", str(out)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "--checkpoint: 'step-7' is neither a checkpoint in" in err and "['step-1', 'step-2']" in err
    assert "--resume" not in err


def test_an_unknown_sampler_exits_2_before_the_model_is_loaded(run, tmp_path, capsys):
    shutil.rmtree(run / "checkpoints" / "step-2" / "model")  # loading would fail; the sampler is checked first
    assert main(["sample", str(run), "--sampler", "eulr", "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert "--sampler: unknown sampler 'eulr' (did you mean 'euler'?)" in " ".join(err.split())
    assert not (tmp_path / "s").exists()


def test_every_sample_flag_has_help_text():
    parser = build_parser()
    sample = parser.subparser("sample")
    flags = [a for a in sample._actions if a.dest != "help"]
    assert {a.dest for a in flags} == {"run_dir", "checkpoint", "num", "steps", "seed", "sampler", "out"}
    assert all(a.help and len(a.help) > 10 for a in flags), [a.dest for a in flags if not a.help]


def test_sample_cli_matches_the_validation_grid_of_the_same_settings(tiny, tmp_path):
    """The command runs the run's own sample node: with the run's seed and validation settings it writes the
    very images of the final validation grid (EMA weights included)."""
    import numpy as np
    from PIL import Image

    cfg = tiny(max_train_steps=2, use_ema=True, validation_num_images=4, validation_num_inference_steps=3,
               validation_sampler="euler", seed=7)
    assert main(["run", str(cfg)]) == 0
    run = tmp_path / "run"
    assert main(["sample", str(run), "--num", "4", "--steps", "3", "--sampler", "euler", "--seed", "7",
                 "--out", str(tmp_path / "s")]) == 0
    cli = np.asarray(Image.open(tmp_path / "s" / "grid.png"))
    validation = np.asarray(Image.open(run / "samples" / "step-000002.png"))
    assert cli.shape == validation.shape and np.array_equal(cli, validation)
    assert main(["sample", str(run), "--num", "4", "--steps", "3", "--sampler", "euler", "--seed", "8",
                 "--out", str(tmp_path / "other")]) == 0
    assert not np.array_equal(np.asarray(Image.open(tmp_path / "other" / "grid.png")), validation)
