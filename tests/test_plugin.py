"""A plugin package installed through its ``rollgraph.stages`` entry point (a dist-info on sys.path, as pip
writes it) adds a loss term, swaps the rollout stage, takes its own param from ``--set``, and is checkpointed
and resumed bit-exactly; its solver (``rollgraph.solvers``: Heun) is chosen by config, ``--set`` and
``rollgraph sample --sampler`` like a built-in one. Its source, tests/fixture_plugin/rollgraph_tv.py, is the
README's "Writing a stage"."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from rollgraph.graph import registry
from rollgraph.graph.cli import main
from rollgraph.stages.solvers import SOLVERS
from safetensors.torch import load_file

from tests.conftest import read_metrics

SOURCE = Path(__file__).parent / "fixture_plugin" / "rollgraph_tv.py"
README = Path(__file__).resolve().parent.parent / "README.md"
ENTRY_POINTS = "[rollgraph.stages]\ntv = rollgraph_tv:STAGES\n\n[rollgraph.solvers]\nheun = rollgraph_tv:HeunSolver\n"
GRAPH = {
    "include": ["rollout"],
    "nodes": [{"id": "rollout", "type": "tv.adaptive_jitter"},  # swap: keeps the rollout's wiring
              {"id": "tv", "type": "tv.total_variation", "inputs": {"prediction": "predict.prediction"}}],
    "extend": {"total.terms": ["tv.loss"]},
}


@pytest.fixture
def installed_plugin(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    shutil.copy(SOURCE, site / "rollgraph_tv.py")
    info = site / "rollgraph_tv-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: rollgraph-tv\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(registry, "_entry_points_loaded", False)  # scan the entry points again, now with the plugin
    monkeypatch.setattr(SOLVERS, "_loaded", False)
    yield
    for tag in ("tv.total_variation", "tv.adaptive_jitter"):
        registry._REGISTRY.pop(tag, None)
    dict.pop(SOLVERS, "heun", None)
    sys.modules.pop("rollgraph_tv", None)


def test_the_plugin_is_found_through_its_entry_point_only(installed_plugin):
    assert "rollgraph_tv" not in sys.modules
    stages = registry.registered_stages()
    assert stages["tv.total_variation"].__module__ == "rollgraph_tv" and "tv.adaptive_jitter" in stages


def test_plugin_adds_a_term_swaps_the_rollout_and_takes_set(installed_plugin, tiny, tmp_path, capsys):
    cfg = str(tiny(max_train_steps=2, graph=GRAPH))
    assert main(["graph", cfg, "--set", "tv.tv_weight=0.5", "--format", "json"]) == 0
    nodes = {n["id"]: n for n in json.loads(capsys.readouterr().out)["nodes"]}
    assert nodes["rollout"]["type"] == "tv.adaptive_jitter" and nodes["predict"]["inputs"]["noisy"] == "rollout.noisy"
    assert nodes["rollout"]["inputs"] == {"noisy": "noise.noisy", "model": "model.model", "schedule": "schedule.schedule"}
    assert nodes["tv"]["params"] == {"tv_weight": 0.5} and nodes["total"]["inputs"]["terms"] == ["loss.loss", "tv.loss"]
    assert main(["run", cfg, "--set", "tv.tv_weight=0.5"]) == 0
    for m in read_metrics(tmp_path / "run"):
        assert m["loss/tv"] > 0 and m["loss"] == pytest.approx(m["loss/fm"] + 0.5 * m["loss/tv"], rel=1e-6)
    assert main(["validate", cfg, "--set", "tv.tv_wieght=1"]) == 2
    assert "tv.params.tv_wieght: unknown key" in " ".join(capsys.readouterr().err.split())


def test_plugin_state_is_checkpointed_and_resumed_bit_exactly(installed_plugin, tiny, tmp_path):
    full = tiny(output_dir=str(tmp_path / "full"), max_train_steps=4, graph=GRAPH)
    assert main(["run", str(full)]) == 0
    part = tiny(output_dir=str(tmp_path / "part"), max_train_steps=2, checkpointing_steps=2, graph=GRAPH)
    assert main(["run", str(part)]) == 0
    saved = load_file(str(tmp_path / "part/checkpoints/step-2/rollout/jitter.safetensors"))["m"]
    assert saved.item() != 1.0  # the running RMS moved: resuming without it would diverge
    assert main(["run", str(part), "--max_train_steps", "4", "--resume", "latest"]) == 0
    assert [m["loss"] for m in read_metrics(tmp_path / "full")] == [m["loss"] for m in read_metrics(tmp_path / "part")]
    a = load_file(str(tmp_path / "full/checkpoints/step-4/rollout/jitter.safetensors"))["m"]
    b = load_file(str(tmp_path / "part/checkpoints/step-4/rollout/jitter.safetensors"))["m"]
    assert a.item() == b.item()


def test_the_readme_shows_the_plugin_source():
    text = README.read_text()
    assert SOURCE.read_text().strip() in text and 'tv = "rollgraph_tv:STAGES"' in text


def test_solver_and_model_family_registries_load_their_entry_points(tmp_path, monkeypatch):
    from rollgraph.graph import ConfigError
    from rollgraph.stages.models import FAMILIES, get_family
    from rollgraph.stages.models.unet2d import UNet2DAdapter
    from rollgraph.stages.solvers import SOLVERS, get_solver

    info = tmp_path / "more_solvers-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: more-solvers\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[rollgraph.solvers]\nmidpoint = rollgraph.stages.solvers.euler:EulerSolver\n\n"
                                           "[rollgraph.model_families]\nmy_unet = rollgraph.stages.models.unet2d:UNet2DAdapter\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(SOLVERS, "_loaded", False)
    monkeypatch.setattr(FAMILIES, "_loaded", False)
    try:
        assert "midpoint" in SOLVERS and get_solver("midpoint").evals_per_step == 1
        with pytest.raises(KeyError, match="unknown solver 'midpiont' \\(did you mean 'midpoint'\\?\\)"):
            get_solver("midpiont")
        assert get_family("my_unet") is UNet2DAdapter
        with pytest.raises(ConfigError, match="did you mean 'my_unet'"):
            get_family("my_unte")
    finally:
        dict.pop(SOLVERS, "midpoint", None)
        dict.pop(FAMILIES, "my_unet", None)


HEUN_ROLLOUT = dict(scheduled_sampling_max_step_offset=2, scheduled_sampling_probability=1.0,
                    scheduled_sampling_sampler="heun", validation_sampler="heun", max_train_steps=2)


def _record_heun_steps(monkeypatch) -> list[int]:
    """Wrap the plugin's (entry-point loaded) Heun step: the rows of every step it takes, in order."""
    cls = SOLVERS.lookup("heun")
    rows: list[int] = []
    step = cls.step

    def counted(self, x, ctx):
        rows.append(len(x))
        return step(self, x, ctx)

    monkeypatch.setattr(cls, "step", counted)
    return rows


def test_a_plugin_solver_rolls_out_and_samples_validation_and_sample(installed_plugin, tiny, tmp_path, monkeypatch, capsys):
    rows = _record_heun_steps(monkeypatch)
    cfg = tiny(**HEUN_ROLLOUT, validation_num_images=4, validation_num_inference_steps=3)
    assert main(["run", str(cfg)]) == 0
    metrics = read_metrics(tmp_path / "run")
    rollout_evals = sum(m["rollout/model_evals"] for m in metrics)
    # the last 3 steps are the validation grid's (4 images); every rollout step costs Heun's 2 evaluations
    assert rows[-3:] == [4, 4, 4] and rollout_evals > 0 and 2 * sum(rows[:-3]) == rollout_evals
    assert (tmp_path / "run" / "samples" / "step-000002.png").exists()
    rows.clear()
    out = tmp_path / "samples"
    assert main(["sample", str(tmp_path / "run"), "--num", "3", "--steps", "2", "--sampler", "heun", "--out", str(out)]) == 0
    assert rows == [3, 3] and (out / "grid.png").exists()


def test_a_plugin_solver_is_set_on_a_node_and_listed_where_people_choose(installed_plugin, tiny, capsys):
    from rollgraph.stages.commands import _key_help
    from rollgraph.stages.config import TrainConfig
    from rollgraph.stages.rollout import ScheduledSamplingRollout
    from rollgraph.ui.forms import FieldSpec
    from rollgraph.ui.node_params import param_rows

    cfg = str(tiny(scheduled_sampling_max_step_offset=2, scheduled_sampling_probability=1.0))
    assert main(["graph", cfg, "--set", "rollout.scheduled_sampling_sampler=heun", "--format", "json"]) == 0
    nodes = {n["id"]: n for n in json.loads(capsys.readouterr().out)["nodes"]}
    assert nodes["rollout"]["params"]["scheduled_sampling_sampler"] == "heun"
    assert "heun" in FieldSpec.from_schema("validation_sampler", "Validation").choices
    row = next(r for r in param_rows(ScheduledSamplingRollout, {}) if r.name == "scheduled_sampling_sampler")
    assert row.type.split(" | ")[-1] == "heun" and {"euler", "unipc", "dpm", "rk4"} <= set(row.type.split(" | "))
    listed = _key_help("validation_sampler", TrainConfig.model_fields["validation_sampler"])
    assert f"[one of: {', '.join(SOLVERS)}]" in listed and "heun" in SOLVERS


@pytest.mark.parametrize("command", ["validate", "run"])
@pytest.mark.parametrize("how", ["key", "set"])
def test_a_misspelt_solver_exits_2_with_did_you_mean(installed_plugin, tiny, tmp_path, capsys, command, how):
    if how == "key":
        cfg, args, culprit = tiny(validation_sampler="huen"), [], "validation_sampler"
    else:
        cfg = tiny(scheduled_sampling_max_step_offset=2, scheduled_sampling_probability=1.0)
        args, culprit = ["--set", "rollout.scheduled_sampling_sampler=huen"], "rollout.params.scheduled_sampling_sampler"
    assert main([command, str(cfg), *args]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"{culprit}: unknown solver 'huen' (did you mean 'heun'?)" in err, err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
