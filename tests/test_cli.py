"""The command line: exit codes, generated flags, graph printing, presets, bad input."""

from __future__ import annotations

import json

import pytest
from rollgraph.graph.cli import main

from tests.conftest import read_metrics


def test_validate_ok_and_graph_formats(tiny, capsys):
    cfg = tiny()
    assert main(["validate", str(cfg)]) == 0
    assert main(["graph", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "noise.forward" in out and "rollout" not in out
    assert main(["graph", str(cfg), "--scheduled_sampling_max_step_offset", "4", "--scheduled_sampling_probability=1", "--format", "mermaid"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("flowchart LR") and "rollout.scheduled_sampling" in out and "loss.reflexflow_fc" in out
    assert main(["graph", str(cfg), "--format", "json"]) == 0
    spec = json.loads(capsys.readouterr().out)
    phases = [(n["id"], n["phase"]) for n in spec["nodes"]]
    assert phases[-6:-4] == [("optimize", "step"), ("update", "update")]
    assert set(phases[-4:]) == {("samples", "every"), ("grid", "every"), ("probe", "every"), ("checkpoint", "every")}
    assert phases.index(("samples", "every")) < phases.index(("grid", "every"))


def test_several_faults_exit_2_and_create_nothing(tiny, tmp_path, capsys):
    cfg = tiny(output_dir=str(tmp_path / "never"))
    args = [str(cfg), "--scheduled_sampling_max_step_offset=-1", "--scheduled_sampling_probability", "2",
            "--set", "learning_rat=1", "--train_batch_size", "x"]
    for cmd in ("validate", "run"):
        assert main([cmd, *args]) == 2
        err = capsys.readouterr().err
        for key in ("scheduled_sampling_max_step_offset", "scheduled_sampling_probability", "learning_rat", "train_batch_size"):
            assert key in err
        assert "4 problems" in err
    assert not (tmp_path / "never").exists()


def test_flags_in_the_seed_spelling_reach_the_config(tiny, tmp_path):
    cfg = tiny(max_train_steps=2)
    out = tmp_path / "flags"
    assert main(["run", str(cfg), "--output_dir", str(out), "--prediction_type", "epsilon",
                 "--scheduled_sampling_reflexflow=false", "--scheduled_sampling_max_step_offset", "2",
                 "--scheduled_sampling_probability=1", "--scheduled_sampling_sampler", "euler"]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["prediction_type"] == "epsilon" and saved["scheduled_sampling_reflexflow"] is False
    assert all("rollout/p" in m for m in read_metrics(out))


def test_bad_graph_section_exits_2(tiny, capsys):
    cfg = tiny(graph={"nodes": [{"id": "rollout", "type": "rollout.nope", "inputs": {"noisy": "noise.noisy"}}]})
    assert main(["validate", str(cfg)]) == 2
    assert "unknown stage type 'rollout.nope'" in capsys.readouterr().err


def test_missing_or_empty_data_folder_and_corrupt_image(tiny, tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["run", str(tiny(dataset="folder", instance_data_dir=str(tmp_path / "nowhere"), output_dir=str(out)))]) == 2
    assert "nowhere" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["run", str(tiny(dataset="folder", instance_data_dir=str(empty), output_dir=str(out)))]) == 2
    assert "contains no images" in capsys.readouterr().err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.png").write_bytes(b"\x89PNG not really")
    assert main(["run", str(tiny(dataset="folder", instance_data_dir=str(bad), output_dir=str(out)))]) == 2
    assert "broken.png" in capsys.readouterr().err
    assert not out.exists()


def test_presets_and_stages_listing(capsys):
    assert main(["presets"]) == 0
    assert "quickstart" in capsys.readouterr().out
    assert main(["stages"]) == 0
    out = capsys.readouterr().out
    assert "rollout.scheduled_sampling" in out and "rollout.input_perturbation" in out


def test_run_help_lists_every_key(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = capsys.readouterr().out
    for key in ("--scheduled_sampling_max_step_offset", "--scheduled_sampling_grid_steps", "--learning_rate", "--prediction_type"):
        assert key in out


def test_module_entry_point_runs_commands_registered_by_other_packages(tmp_path):
    """``python -m rollgraph.graph.cli`` (how the UI starts runs) sees the commands registered through entry points."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "rollgraph.graph.cli", "validate", "quickstart"], capture_output=True,
                         text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "valid" in out.stdout
