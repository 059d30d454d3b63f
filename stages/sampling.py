"""Sampling: generate images with the shared solvers (validation grids and ``rollgraph sample``).

x_start ~ N(0, I) at the noisiest level of ``schedule.sampling_levels(steps)``, then ``steps`` solver
steps down to the clean level, each sample with its own conditioning. Images come back in [-1, 1].
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from rollgraph.graph.hooks import Hook
from rollgraph.stages.predict import model_fn_for
from rollgraph.stages.rollout import eval_mode
from rollgraph.stages.solvers import solve


class ValidationParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    section: ClassVar[str] = "Validation"

    validation_steps: int = Field(0, ge=0, description="Write a sample grid every N optimizer steps (0: only at the end)")
    validation_num_images: int = Field(20, ge=1, le=1024, description="Images in each validation grid (class-conditional models cycle through the classes)")
    validation_num_inference_steps: int = Field(20, ge=1, le=1000, description="Solver steps for validation samples")
    validation_sampler: Literal["unipc", "euler", "dpm", "rk4"] = Field("unipc", description="Solver for validation samples")


@torch.no_grad()
def generate(model, schedule, n: int, steps: int, sampler: str, seed: int, device, shape, cond=None,
             autocast=None) -> torch.Tensor:
    from contextlib import nullcontext

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=g).to(device)
    path = schedule.sampling_levels(steps).to(device)[None].expand(n, -1).contiguous()
    cond = model.validation_cond(n, device) if cond is None else cond
    fn = model_fn_for(model, schedule, cond, autocast or nullcontext)
    with eval_mode(model.raw_module):
        out = solve(fn, x, path, torch.full((n,), steps, dtype=torch.long, device=device), schedule, sampler)
    return out.x.float().clamp(-1, 1).cpu()


def save_grid(images: torch.Tensor, path: Path, nrow: int = 10, min_cell: int = 64) -> Path:
    """Write images in [-1, 1] (N, C, H, W) as one PNG grid; small images are upscaled (nearest)."""
    from PIL import Image

    n, c, h, w = images.shape
    nrow = min(nrow, n)
    rows = math.ceil(n / nrow)
    scale = max(1, min_cell // max(h, w))
    pad = 2
    grid = torch.ones(c, rows * (h + pad) + pad, nrow * (w + pad) + pad)
    for i, img in enumerate(images):
        r, col = divmod(i, nrow)
        grid[:, pad + r * (h + pad): pad + r * (h + pad) + h, pad + col * (w + pad): pad + col * (w + pad) + w] = img
    arr = ((grid.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    im = Image.fromarray(arr[..., 0] if c == 1 else arr, mode="L" if c == 1 else "RGB")
    im = im.resize((im.width * scale, im.height * scale), Image.Resampling.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    im.save(tmp)
    tmp.replace(path)
    return path


class ValidationSampler(Hook):
    """Every validation_steps optimizer steps (and at the end), write samples/step-N.png (rank 0 only)."""

    def __init__(self, params: ValidationParams, model_node: str = "model", schedule_node: str = "schedule",
                 optimizer_node: str = "optimizer"):
        self.params = params
        self.nodes = (model_node, schedule_node, optimizer_node)
        self.last_path: Path | None = None

    def sample_now(self, runner) -> Path | None:
        ctx = runner.ctx
        if not ctx.is_main or ctx.output_dir is None:
            return None
        model = runner.value(self.nodes[0], "model")
        schedule = runner.value(self.nodes[1], "schedule")
        bundle = runner.values.get((self.nodes[2], "optimizer"))
        p = self.params
        shape = model.sample_shape()
        if bundle is not None:
            bundle.swap_ema()
        try:
            images = generate(model, schedule, p.validation_num_images, p.validation_num_inference_steps,
                              p.validation_sampler, ctx.seed, ctx.device, shape, autocast=ctx.autocast)
        finally:
            if bundle is not None:
                bundle.swap_ema()
        self.last_path = save_grid(images, ctx.output_dir / "samples" / f"step-{ctx.step:06d}.png")
        return self.last_path

    def on_step_end(self, runner, metrics):
        every = self.params.validation_steps
        if every and runner.ctx.step % every == 0 and runner.ctx.step < runner.max_steps:
            path = self.sample_now(runner)
            if path is not None:
                metrics["sample"] = str(path)

    def on_train_end(self, runner, status):
        if status == "finished":
            self.sample_now(runner)
