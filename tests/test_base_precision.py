"""base_model_precision: int8 / fp8 weight-only frozen base (torchao) on the CPU; bf16 refused without autocast."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from rollgraph.graph.cli import main
from rollgraph.stages.models import get_family
from rollgraph.stages.predict import ModelStageParams

from tests.conftest import read_metrics
from tests.tiny_pipelines import family_config, pipeline_folder, write_config, write_images

STORAGE = {"int8": torch.int8, "fp8": torch.float8_e4m3fn}
# measured on the tiny SD UNet with a randomised rank-4 LoRA: max |out − out_fp32| / max |out_fp32| was 0.0025 (int8)
# and 0.012 (fp8); the bounds leave room for other seeds
TOLERANCE = {"int8": 0.01, "fp8": 0.04}


def _adapter(tmp_path_factory, precision, kind="lora"):
    folder = pipeline_folder(tmp_path_factory, "sd")
    torch.manual_seed(0)  # the same LoRA A for every precision
    adapter = get_family("sd").build(ModelStageParams(model_family="sd", pretrained_model_name_or_path=str(folder),
                                                      prediction_type="epsilon", lora_rank=4, lora_type=kind,
                                                      base_model_precision=precision))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in adapter.raw_module.parameters():
            if p.requires_grad:
                p.add_(0.2 * torch.randn(p.shape, generator=g))
    adapter.place("cpu")
    return adapter


def _inputs():
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 4, 8, 8, generator=g), torch.tensor([50.0, 700.0]), {"prompt_embeds": torch.randn(2, 16, 32, generator=g)}


@pytest.mark.parametrize("precision", ["int8", "fp8"])
@pytest.mark.parametrize("kind", ["lora", "dora"])
def test_frozen_linears_are_stored_quantised_and_the_adapter_still_learns(precision, kind, tmp_path_factory):
    full, quant = _adapter(tmp_path_factory, "auto", kind), _adapter(tmp_path_factory, precision, kind)
    frozen = [(n, m) for n, m in quant.raw_module.named_modules() if isinstance(m, torch.nn.Linear) and not m.weight.requires_grad]
    assert frozen and all(m.weight.qdata.dtype == STORAGE[precision] for _, m in frozen)
    assert all(p.dtype == torch.float32 for p in quant.trainable_parameters())
    weight_bytes = sum(m.weight.qdata.numel() * m.weight.qdata.element_size() + m.weight.scale.numel() * 4 for _, m in frozen)
    full_bytes = sum(m.weight.numel() * 4 for n, m in full.raw_module.named_modules()
                     if isinstance(m, torch.nn.Linear) and not m.weight.requires_grad)
    assert weight_bytes < 0.3 * full_bytes
    x, t, cond = _inputs()
    want, got = full.no_grad_call(x, t, cond), quant.no_grad_call(x, t, cond)
    assert float((got - want).abs().max() / want.abs().max()) < TOLERANCE[precision]
    quant(x, t, cond).pow(2).mean().backward()
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in quant.trainable_parameters())


def test_int8_base_trains_with_rollout_and_reflexflow_and_resumes(tmp_path, tmp_path_factory):
    images = write_images(tmp_path / "images", 2)
    cfg = family_config(tmp_path, "flux", pipeline_folder(tmp_path_factory, "flux"), images, base_model_precision="int8",
                        max_train_steps=2, checkpointing_steps=1)
    path = write_config(tmp_path / "c.json", cfg)
    assert main(["run", path]) == 0
    straight = read_metrics(tmp_path / "run-flux")
    assert all(np.isfinite(m["loss"]) for m in straight) and "loss/adr" in straight[0] and straight[0]["rollout/samples"] > 0
    assert main(["run", path, "--resume", str(tmp_path / "run-flux" / "checkpoints" / "step-1")]) == 0
    resumed = read_metrics(tmp_path / "run-flux")
    assert [m["loss"] for m in resumed] == [m["loss"] for m in straight]


def test_what_cannot_run_is_refused_naming_the_key(tmp_path, tmp_path_factory, capsys, monkeypatch):
    images = write_images(tmp_path / "images", 2)
    cfg = family_config(tmp_path, "sd", pipeline_folder(tmp_path_factory, "sd"), images, base_model_precision="bf16")
    assert main(["run", write_config(tmp_path / "c.json", cfg)]) == 2  # CPU: no bf16 autocast
    assert "base_model_precision: bf16 stores the frozen weights in bf16 and needs bf16 autocast" in " ".join(capsys.readouterr().err.split())
    assert not (tmp_path / "run-sd").exists()
    cfg.update(base_model_precision="int8", lora_rank=0)
    assert main(["validate", write_config(tmp_path / "c.json", cfg)]) == 2
    assert "base_model_precision 'int8' stores the frozen weights under a LoRA" in " ".join(capsys.readouterr().err.split())
    cfg.update(lora_rank=4)
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torchao" else real(name, *a))
    assert main(["run", write_config(tmp_path / "c.json", cfg)]) == 2
    assert "int8 needs the 'torchao' package" in " ".join(capsys.readouterr().err.split())
