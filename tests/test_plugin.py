"""A plugin package installed through its ``rollgraph.stages`` entry point (a dist-info on sys.path, as pip
writes it) adds a loss term, swaps the rollout stage, takes its own param from ``--set``, and is checkpointed
and resumed bit-exactly. Its source, tests/fixture_plugin/rollgraph_tv.py, is the README's "Writing a stage"."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from rollgraph.graph import registry
from rollgraph.graph.cli import main
from safetensors.torch import load_file

from tests.conftest import read_metrics

SOURCE = Path(__file__).parent / "fixture_plugin" / "rollgraph_tv.py"
README = Path(__file__).resolve().parent.parent / "README.md"
ENTRY_POINTS = "[rollgraph.stages]\ntv = rollgraph_tv:STAGES\n"
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
    yield
    for tag in ("tv.total_variation", "tv.adaptive_jitter"):
        registry._REGISTRY.pop(tag, None)
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
