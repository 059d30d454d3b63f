"""``rollgraph sample``: rebuild a run's model from a checkpoint and write PNGs plus samples.safetensors."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from rollgraph.graph.checkpoint import find_checkpoint
from rollgraph.graph.context import resolve_device
from rollgraph.graph.errors import ConfigError, Issue
from rollgraph.stages.config import build_config
from rollgraph.stages.models import LatentAdapter, ModelParams, get_family
from rollgraph.stages.predict import model_params
from rollgraph.stages.sampling import generate, save_grid
from rollgraph.stages.schedule import make_schedule
from safetensors.torch import save_file


def sample_run(run_dir: Path, checkpoint: str, num: int, steps: int, seed: int, out: Path, sampler: str | None = None) -> list[Path]:
    config_path = run_dir / "config.json"
    if not config_path.exists():
        raise ConfigError([Issue(str(run_dir), "not a run folder (no config.json)")])
    cfg = build_config(json.loads(config_path.read_text()))
    ckpt = find_checkpoint(run_dir, checkpoint)
    model_dir = ckpt / "model"
    if not model_dir.is_dir():
        raise ConfigError([Issue(str(ckpt), "checkpoint has no model folder")])
    family = get_family(cfg.model_family)
    device = resolve_device(cfg.device)
    if issubclass(family, LatentAdapter):
        # the base model from its folder, then the checkpoint's LoRA (or full) weights on top
        model = family.build(model_params(cfg))
        model.load_state(model_dir)
    else:
        params = ModelParams(**{**{k: getattr(cfg, k) for k in ModelParams.model_fields}, "pretrained_model_name_or_path": str(model_dir)})
        model = family.build(params)
    optimizer_dir = ckpt / "optimizer"
    if cfg.use_ema and (optimizer_dir / "optimizer.safetensors").exists():
        _load_ema(model, optimizer_dir)
    model.place(device)
    if issubclass(family, LatentAdapter):
        from rollgraph.stages.latent_data import prepare_sampling

        prepare_sampling(model, cfg, device, run_dir / "cache")
    schedule = make_schedule(cfg.prediction_type, cfg.num_train_timesteps, cfg.flow_schedule_shift,
                             cfg.beta_schedule, cfg.beta_start, cfg.beta_end)
    images = generate(model, schedule, num, steps, sampler or cfg.validation_sampler, seed, device, model.sample_shape(),
                      guidance=cfg.validation_guidance)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, img in enumerate(images):
        paths.append(save_grid(img[None], out / f"sample-{i:04d}.png", nrow=1))
    save_file({"samples": images.contiguous()}, str(out / "samples.safetensors"))
    paths += [save_grid(images, out / "grid.png", labels=model.validation_labels(len(images))), out / "samples.safetensors"]
    return paths


def _load_ema(model, optimizer_dir: Path) -> None:
    from safetensors.torch import load_file

    tensors = load_file(str(optimizer_dir / "optimizer.safetensors"))
    trainable = model.trainable_parameters()
    with torch.no_grad():
        for i, param in enumerate(trainable):
            key = f"ema.{i}"
            if key in tensors:
                param.copy_(tensors[key])
