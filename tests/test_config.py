"""The flat config: defaults, sparse presets, every fault reported with its key, CLI flags."""

from __future__ import annotations

import json

import pytest
from rollgraph.graph import ConfigError
from rollgraph.stages.config import (
    TrainConfig,
    build_config,
    config_sections,
    list_presets,
    load_config,
    parse_value,
)


def issues_of(data) -> list[str]:
    with pytest.raises(ConfigError) as info:
        build_config(data)
    return [str(i) for i in info.value.issues]


def test_defaults_are_valid_and_rollout_is_off():
    cfg = build_config({})
    assert cfg.scheduled_sampling_max_step_offset == 0
    assert cfg.scheduled_sampling_probability == 0.0
    assert cfg.scheduled_sampling_sampler == "unipc"
    assert cfg.scheduled_sampling_prob_start == 0.0 and cfg.scheduled_sampling_prob_end == 0.5
    assert not cfg.rollout_enabled and not cfg.reflexflow_enabled


def test_all_faults_reported_together_with_keys_and_did_you_mean():
    found = issues_of({
        "learning_rat": 1e-4,
        "scheduled_sampling_max_step_offset": -1,
        "scheduled_sampling_probability": 1.5,
        "scheduled_sampling_sampler": "heun",
        "scheduled_sampling_prob_start": -0.1,
        "scheduled_sampling_prob_end": 2,
        "scheduled_sampling_ramp_steps": -5,
        "train_batch_size": "many",
    })
    keys = sorted(f.split(":")[0] for f in found)
    assert keys == sorted([
        "learning_rat", "scheduled_sampling_max_step_offset", "scheduled_sampling_probability",
        "scheduled_sampling_sampler", "scheduled_sampling_prob_start", "scheduled_sampling_prob_end",
        "scheduled_sampling_ramp_steps", "train_batch_size",
    ])
    assert any("did you mean 'learning_rate'" in f for f in found)
    assert any("got -1" in f for f in found)


def test_reflexflow_true_needs_flow_matching():
    found = issues_of({"prediction_type": "epsilon", "scheduled_sampling_reflexflow": True})
    assert len(found) == 1 and "needs prediction_type=flow_matching" in found[0]


def test_reflexflow_auto_rules():
    on = {"scheduled_sampling_max_step_offset": 3, "scheduled_sampling_probability": 0.5}
    assert build_config(on).reflexflow_enabled
    assert not build_config({**on, "scheduled_sampling_reflexflow": False}).reflexflow_enabled
    assert not build_config({**on, "prediction_type": "epsilon"}).reflexflow_enabled
    assert not build_config({"scheduled_sampling_probability": 0.5}).reflexflow_enabled  # no offset: no rollout
    ramp = {"scheduled_sampling_max_step_offset": 3, "scheduled_sampling_ramp_steps": 10}
    assert build_config(ramp).rollout_enabled  # ramps to prob_end 0.5


def test_presets_are_sparse_overlays_and_all_valid(tmp_path):
    assert "quickstart" in list_presets()
    for name in list_presets():
        cfg = load_config(name)
        assert isinstance(cfg, TrainConfig)
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"learning_rate": 0.5, "_comment": "ignored"}))
    cfg = load_config(str(path), {"seed": 3})
    assert cfg.learning_rate == 0.5 and cfg.seed == 3 and cfg.train_batch_size == TrainConfig().train_batch_size


def test_bad_files_name_the_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(ConfigError, match="bad.json: not valid JSON"):
        load_config(str(bad))
    with pytest.raises(ConfigError, match="no such config file or preset"):
        load_config(str(tmp_path / "missing.json"))


def test_sections_cover_every_key_once():
    names = [n for _, fields in config_sections() for n in fields]
    assert sorted(names) == sorted(TrainConfig.model_fields)
    assert len(names) == len(set(names))


def test_command_line_values():
    assert parse_value("false") is False
    assert parse_value("10") == 10
    assert parse_value("1e-4") == 1e-4
    assert parse_value("flow_matching") == "flow_matching"
    assert parse_value('{"a": 1}') == {"a": 1}
