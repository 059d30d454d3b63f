"""lora_type (lora | dora | loha | lokr) through peft: start at the base model, checkpoint and resume, load into
diffusers where diffusers can (lora, dora), and refusals for what cannot be exported."""

from __future__ import annotations

import diffusers
import numpy as np
import pytest
import torch
from rollgraph.graph.cli import main
from rollgraph.stages.models import get_family
from rollgraph.stages.predict import ModelStageParams

from tests.conftest import read_metrics
from tests.tiny_pipelines import PIPELINES, family_config, pipeline_folder, write_config, write_images

ADAPTER_NAMES = {"lora": "lora_", "dora": "lora_", "loha": "hada_", "lokr": "lokr_"}


def _adapter(tmp_path_factory, kind, family="sd", **overrides):
    params = dict(model_family=family, pretrained_model_name_or_path=str(pipeline_folder(tmp_path_factory, family)),
                  prediction_type="epsilon", lora_rank=4, lora_alpha=8, lora_type=kind)
    return get_family(family).build(ModelStageParams(**{**params, **overrides}))


def _randomise(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad:
                p.add_(0.2 * torch.randn(p.shape, generator=g))


def _inputs():
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 4, 8, 8, generator=g), torch.tensor([50.0, 700.0]), {"prompt_embeds": torch.randn(2, 16, 32, generator=g)}


@pytest.mark.parametrize("kind", ["dora", "loha", "lokr"])
def test_each_type_trains_only_its_adapter_and_starts_as_the_base_model(kind, tmp_path_factory):
    model = _adapter(tmp_path_factory, kind)
    trainable = [n for n, p in model.raw_module.named_parameters() if p.requires_grad]
    assert trainable and all(ADAPTER_NAMES[kind] in n for n in trainable)
    base = _adapter(tmp_path_factory, kind, lora_rank=0, lora_type="lora")
    x, t, cond = _inputs()
    torch.testing.assert_close(model.no_grad_call(x, t, cond), base.no_grad_call(x, t, cond), rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", ["dora", "loha", "lokr"])
def test_each_type_checkpoints_and_resumes_exactly(kind, tmp_path, tmp_path_factory):
    a = _adapter(tmp_path_factory, kind)
    _randomise(a.raw_module)
    a.save_state(tmp_path)
    b = _adapter(tmp_path_factory, kind)
    b.load_state(tmp_path)
    x, t, cond = _inputs()
    assert torch.equal(a.no_grad_call(x, t, cond), b.no_grad_call(x, t, cond))
    assert not torch.equal(a.no_grad_call(x, t, cond), _adapter(tmp_path_factory, kind).no_grad_call(x, t, cond))


@pytest.mark.parametrize("kind", ["lora", "dora"])
def test_lora_and_dora_files_load_into_diffusers_with_the_trained_output(kind, tmp_path, tmp_path_factory):
    a = _adapter(tmp_path_factory, kind)
    _randomise(a.raw_module)
    a.save_state(tmp_path)
    pipe = getattr(diffusers, PIPELINES["sd"]).from_pretrained(str(pipeline_folder(tmp_path_factory, "sd")))
    pipe.load_lora_weights(str(tmp_path))
    x, t, cond = _inputs()
    with torch.no_grad():
        theirs = pipe.unet(x, t, encoder_hidden_states=cond["prompt_embeds"]).sample
    torch.testing.assert_close(theirs, a.no_grad_call(x, t, cond), rtol=0, atol=1e-5)


def test_lokr_trains_with_rollout_and_reflexflow_on_flux(tmp_path, tmp_path_factory):
    images = write_images(tmp_path / "images", 2)
    cfg = family_config(tmp_path, "flux", pipeline_folder(tmp_path_factory, "flux"), images, lora_type="lokr")
    assert main(["run", write_config(tmp_path / "c.json", cfg)]) == 0
    metrics = read_metrics(tmp_path / "run-flux")
    assert all(np.isfinite(m["loss"]) for m in metrics) and "loss/adr" in metrics[0] and metrics[0]["rollout/samples"] > 0


def test_what_cannot_be_exported_is_refused_naming_the_key(tmp_path, tmp_path_factory, capsys):
    images = write_images(tmp_path / "images", 2)
    cfg = family_config(tmp_path, "sdxl", pipeline_folder(tmp_path_factory, "sdxl"), images, lora_type="dora", lora_format="kohya")
    assert main(["validate", write_config(tmp_path / "c.json", cfg)]) == 2
    assert "converts plain LoRA only, not lora_type 'dora'" in " ".join(capsys.readouterr().err.split())
    cfg.update(lora_format="diffusers", lora_type="loha", lora_dropout=0.1)
    assert main(["validate", write_config(tmp_path / "c.json", cfg)]) == 2
    assert "lora_dropout applies to lora_type lora / dora" in " ".join(capsys.readouterr().err.split())
    cfg.update(lora_dropout=0.0, lora_type="boft")
    assert main(["validate", write_config(tmp_path / "c.json", cfg)]) == 2
    assert "lora_type" in capsys.readouterr().err
    a = _adapter(tmp_path_factory, "loha")
    a.save_state(tmp_path / "ckpt")
    assert main(["export-lora", str(tmp_path / "ckpt"), "--format", "kohya"]) == 2
    assert "only plain LoRA converts" in " ".join(capsys.readouterr().err.split())
