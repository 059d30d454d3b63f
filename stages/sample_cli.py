"""``rollgraph sample``: rebuild a run's model from a checkpoint and write PNGs plus samples.safetensors.

Everything that can be wrong with the command line (not a run folder, no such checkpoint, an unknown sampler)
is reported before the model is loaded, as exit 2. ``samples.safetensors`` holds ``samples`` (N, C, H, W) in
[-1, 1], ``class_labels`` (N,) when the model is class-conditional, and in its metadata the ``prompts`` (a JSON
list, text-to-image families), ``checkpoint``, ``sampler``, ``steps`` and ``seed``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from rollgraph.graph.checkpoint import find_checkpoint
from rollgraph.graph.context import resolve_device
from rollgraph.graph.errors import ConfigError, Issue
from rollgraph.graph.registry import did_you_mean
from rollgraph.stages.config import build_config
from rollgraph.stages.models import LatentAdapter, ModelParams, get_family
from rollgraph.stages.predict import model_params
from rollgraph.stages.sampling import generate, save_grid
from rollgraph.stages.schedule import make_schedule
from rollgraph.stages.solvers import SOLVERS
from safetensors.torch import save_file


def add_sample_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a run folder (the output_dir of `rollgraph run`, holding config.json and checkpoints/)")
    p.add_argument("--checkpoint", default="latest", metavar="latest|step-N|PATH",
                   help="which checkpoint: latest, a name in RUN_DIR/checkpoints (step-400, or just 400), or a "
                        "checkpoint folder's path (default: latest)")
    p.add_argument("--num", type=int, default=20, metavar="N", help="how many images (default: 20)")
    p.add_argument("--steps", type=int, default=20, metavar="S", help="sampler steps per image (default: 20)")
    p.add_argument("--seed", type=int, default=0, help="seed of the starting noise (default: 0)")
    p.add_argument("--sampler", default=None, metavar="NAME",
                   help=f"solver: {' | '.join(SOLVERS)} (default: the run's validation_sampler)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="folder for sample-NNNN.png, grid.png and samples.safetensors (created if needed)")


def check_sampler(name: str | None) -> None:
    if name is not None and name not in SOLVERS:
        raise ConfigError([Issue("--sampler", f"unknown sampler {name!r}{did_you_mean(name, SOLVERS)}; known: {', '.join(SOLVERS)}")])


def sample_run(run_dir: Path, checkpoint: str, num: int, steps: int, seed: int, out: Path, sampler: str | None = None) -> list[Path]:
    config_path = run_dir / "config.json"
    if not config_path.exists():
        raise ConfigError([Issue(str(run_dir), "not a run folder (no config.json)")])
    check_sampler(sampler)
    for flag, value in (("--num", num), ("--steps", steps)):
        if value < 1:
            raise ConfigError([Issue(flag, f"must be at least 1 (got {value})")])
    cfg = build_config(json.loads(config_path.read_text()))
    ckpt = find_checkpoint(run_dir, checkpoint, "--checkpoint")
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
    solver = sampler or cfg.validation_sampler
    images = generate(model, schedule, num, steps, solver, seed, device, model.sample_shape(), guidance=cfg.validation_guidance)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, img in enumerate(images):
        paths.append(save_grid(img[None], out / f"sample-{i:04d}.png", nrow=1))
    tensors = {"samples": images.contiguous()}
    labels = model.validation_cond(num, torch.device("cpu")).get("class_labels")
    if labels is not None:
        tensors["class_labels"] = labels.cpu().contiguous()
    prompts = model.validation_labels(num)
    metadata = {"checkpoint": str(ckpt), "sampler": solver, "steps": str(steps), "seed": str(seed)}
    if prompts is not None:
        metadata["prompts"] = json.dumps(prompts)
    save_file(tensors, str(out / "samples.safetensors"), metadata=metadata)
    paths += [save_grid(images, out / "grid.png", labels=prompts), out / "samples.safetensors"]
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
