"""validate refuses what run refuses (exit 2 from both), and defaults come from the model folder named."""

from __future__ import annotations

import pytest
from rollgraph.graph.cli import main
from rollgraph.stages.config import load_config

from tests.tiny_pipelines import pipeline_folder, write_config, write_images


@pytest.mark.parametrize("case", ["missing", "empty", "corrupt"])
def test_validate_and_run_refuse_a_bad_data_folder_alike(case, tiny, tmp_path, capsys):
    folder = tmp_path / "data"
    if case != "missing":
        folder.mkdir()
    if case == "corrupt":
        write_images(folder, 2)
        (folder / "broken.png").write_bytes(b"\x89PNG not really")
    expected = {"missing": "does not exist", "empty": "contains no images", "corrupt": "broken.png"}[case]
    cfg = tiny(dataset="folder", instance_data_dir=str(folder))
    for command in ("validate", "run"):
        assert main([command, str(cfg)]) == 2, command
        err = " ".join(capsys.readouterr().err.split())
        assert "instance_data_dir" in err and expected in err, (command, err)
    assert not (tmp_path / "run").exists()


def test_validate_refuses_a_preset_whose_model_folder_is_missing(tmp_path, capsys):
    overrides = ["--output_dir", str(tmp_path / "o"), "--instance_data_dir", str(write_images(tmp_path / "img", 2))]
    for command in ("validate", "run"):
        assert main([command, "sdxl_lora", "--pretrained_model_name_or_path", str(tmp_path / "no-model"), *overrides]) == 2
        err = " ".join(capsys.readouterr().err.split())
        assert "pretrained_model_name_or_path" in err and "no-model" in err and "is not a local folder" in err
    assert not (tmp_path / "o").exists()


def _sd3_config(tmp_path, tmp_path_factory, **keys) -> dict:
    """An SD3 run that names only its files: no model_family, prediction_type or dataset."""
    return {"pretrained_model_name_or_path": str(pipeline_folder(tmp_path_factory, "sd3")),
            "instance_data_dir": str(write_images(tmp_path / "images", 2)), "instance_prompt": "a photo of sks dog",
            "resolution": 16, "lora_rank": 4, "tokenizer_max_length": 16, "device": "cpu",
            "output_dir": str(tmp_path / "run"), **keys}


def test_family_prediction_type_and_dataset_come_from_the_folders(tmp_path, tmp_path_factory, capsys):
    path = write_config(tmp_path / "c.json", _sd3_config(tmp_path, tmp_path_factory))
    cfg = load_config(path)
    assert (cfg.model_family, cfg.prediction_type, cfg.dataset) == ("sd3", "flow_matching", "folder")
    assert main(["validate", path]) == 0
    assert "valid" in capsys.readouterr().out


@pytest.mark.parametrize("key, value, message", [
    ("model_family", "sdxl", "holds a StableDiffusion3Pipeline, which is model_family 'sd3', not 'sdxl'"),
    ("prediction_type", "epsilon", "was trained with prediction_type 'flow_matching' (scheduler/scheduler_config.json), not 'epsilon'"),
    ("dataset", "digits", "dataset is 'digits' but instance_data_dir is set"),
])
def test_an_explicit_value_that_contradicts_the_folder_names_both_sides(key, value, message, tmp_path, tmp_path_factory, capsys):
    path = write_config(tmp_path / "c.json", _sd3_config(tmp_path, tmp_path_factory, **{key: value}))
    for command in ("validate", "run"):
        assert main([command, path]) == 2
        err = " ".join(capsys.readouterr().err.split())
        assert f"{key}:" in err and message in err, err


def test_explicit_values_that_agree_with_the_folder_are_kept(tmp_path, tmp_path_factory):
    keys = {"model_family": "sd3", "prediction_type": "flow_matching", "dataset": "folder"}
    cfg = load_config(write_config(tmp_path / "c.json", _sd3_config(tmp_path, tmp_path_factory, **keys)))
    assert (cfg.model_family, cfg.prediction_type, cfg.dataset) == ("sd3", "flow_matching", "folder")
