"""Sampling: generate images with the shared solvers (validation grids and ``rollgraph sample``).

x_start ~ N(0, I) at the noisiest level of ``schedule.sampling_levels(steps)``, then ``steps`` solver
steps down to the clean level, each sample with its own conditioning, then the adapter's ``decode`` (the
VAE for latent families, identity in pixel space). Images come back in [-1, 1].

Classifier-free guidance (Ho & Salimans 2022, arXiv 2207.12598), for adapters with an unconditional
``null_cond`` (the empty prompt) and a scale g != 1: pred = pred(∅) + g·(pred(c) − pred(∅)), both
halves in one batched model call; the combination is linear, so it holds for every prediction type.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field
from rollgraph.graph import Port, Stage, register_stage, same_names
from rollgraph.stages.optimize import ema_weights
from rollgraph.stages.predict import model_fn_for
from rollgraph.stages.registered_name import SolverName
from rollgraph.stages.rollout import eval_mode
from rollgraph.stages.solvers import solve
from rollgraph.stages.types import SampleSet
from safetensors.torch import save_file


class SamplingKeys(BaseModel):
    """The flat keys of how validation samples are generated (the ``sample.generate`` node binds them)."""

    model_config = ConfigDict(extra="forbid")

    validation_num_images: int = Field(20, ge=1, le=1024, description="Images in each validation grid (class-conditional models cycle through the classes)")
    validation_num_inference_steps: int = Field(20, ge=1, le=1000, description="Solver steps for validation samples")
    validation_sampler: SolverName = Field("unipc", description="Solver for validation samples")
    validation_guidance: float | None = Field(None, ge=0, le=100, description="Classifier-free guidance scale for validation (1 = off); unset = the family's default (sd 7.5, sdxl 5, sd3 5, flux 1)")


class GenerateParams(SamplingKeys):
    seed: int | None = Field(None, ge=0, description="Seed of the starting noise (unset: the run's seed); `rollgraph sample --seed` sets it")


class GridParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    validation_steps: int = Field(0, ge=0, description="Write a sample grid every N optimizer steps (0: only at the end)")


class ExportParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    out: str = Field(..., description="Folder for sample-NNNN.png, grid.png and samples.safetensors (created if needed)")
    metadata: dict[str, str] = Field(default_factory=dict, description="Extra metadata of samples.safetensors (e.g. the checkpoint)")


class ValidationParams(GridParams, SamplingKeys):
    """The config section: the keys of the ``sample.generate`` and ``sample.grid`` nodes, and the prompts."""

    section: ClassVar[str] = "Validation"

    validation_prompt: str | list[str] | None = Field(None, description="Prompt(s) for the validation grid of text-to-image families, cycled over the images; unset = instance_prompt, else the first captions")


def guided_model_fn(model, schedule, cond, null, scale: float, autocast):
    """A solver model_fn evaluating conditional and unconditional halves in one call, mixed by ``scale``."""
    from rollgraph.stages.types import index_cond

    def fn(x, level, idx):
        both = {k: torch.cat([index_cond(cond, idx)[k], index_cond(null, idx)[k]]) for k in cond}
        t = schedule.model_timestep(level)
        with torch.no_grad(), autocast():
            pred = model.no_grad_call(torch.cat([x, x]), torch.cat([t, t]), both).float()
        c, u = pred.chunk(2)
        return u + scale * (c - u)

    return fn


@torch.no_grad()
def generate(model, schedule, n: int, steps: int, sampler: str, seed: int, device, shape, cond=None,
             autocast=None, guidance: float | None = None) -> torch.Tensor:
    from contextlib import nullcontext

    autocast = autocast or nullcontext
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=g).to(device)
    path = schedule.sampling_levels(steps).to(device)[None].expand(n, -1).contiguous()
    cond = model.validation_cond(n, device) if cond is None else cond
    scale = model.default_guidance if guidance is None else guidance
    null = model.null_cond(n, device) if scale != 1.0 else None
    if null is not None:
        fn = guided_model_fn(model, schedule, cond, null, scale, autocast)
    else:
        fn = model_fn_for(model, schedule, cond, autocast)
    with eval_mode(model.raw_module):
        out = solve(fn, x, path, torch.full((n,), steps, dtype=torch.long, device=device), schedule, sampler)
        images = model.decode(out.x)
    return images.float().clamp(-1, 1).cpu()


def _label(im, labels: list[str], nrow: int, cell_w: int, cell_h: int, pad: int, band: int):
    """Add a caption band under every row of cells, each caption cut to its cell's width."""
    from PIL import Image, ImageDraw, ImageFont

    rows = math.ceil(len(labels) / nrow)
    out = Image.new(im.mode, (im.width, im.height + rows * band), "white")
    font = ImageFont.load_default(size=max(9, band - 5))
    draw = ImageDraw.Draw(out)
    for r in range(rows):
        y_src = r * (cell_h + pad)
        out.paste(im.crop((0, y_src, im.width, y_src + cell_h + pad)), (0, y_src + r * band))
        for col in range(nrow):
            i = r * nrow + col
            if i >= len(labels):
                break
            text = labels[i]
            while text and draw.textlength(text, font=font) > cell_w:
                text = text[:-2] + "…" if len(text) > 1 else ""
            draw.text((pad + col * (cell_w + pad), y_src + r * band + cell_h + pad), text, fill="black", font=font)
    last = rows * (cell_h + pad)
    out.paste(im.crop((0, last, im.width, im.height)), (0, last + rows * band))
    return out


def save_grid(images: torch.Tensor, path: Path, nrow: int = 10, min_cell: int = 64, labels: list[str] | None = None) -> Path:
    """Write images in [-1, 1] (N, C, H, W) as one PNG grid; small images are upscaled (nearest); with
    ``labels``, each image's caption is printed under it."""
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
    if labels:
        im = _label(im, labels, nrow, w * scale, h * scale, pad * scale, band=max(14, w * scale // 24))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    im.save(tmp)
    tmp.replace(path)
    return path


@register_stage
class GenerateSamples(Stage):
    """Generate ``validation_num_images`` samples: x ~ N(0, I) at the noisiest level, ``validation_num_inference_steps``
    steps of ``validation_sampler`` down to clean data, the family's decode (see the module docstring), with the
    EMA weights when the optimizer keeps them. Rank 0 only (the other ranks output None)."""

    type = "sample.generate"
    phase = "every"
    Params = GenerateParams
    binds = same_names(SamplingKeys)
    inputs = (Port("model", "Model"), Port("schedule", "Schedule"),
              Port("optimizer", "Optimizer", "its EMA weights are sampled when it keeps them", optional=True))
    outputs = (Port("samples", "Samples"),)

    def run(self, ctx, model, schedule, optimizer):
        if not ctx.is_main:
            return {"samples": None}
        p = self.params
        seed = ctx.seed if p.seed is None else p.seed
        with ema_weights(optimizer):
            images = generate(model, schedule, p.validation_num_images, p.validation_num_inference_steps,
                              p.validation_sampler, seed, ctx.device, model.sample_shape(), autocast=ctx.autocast,
                              guidance=p.validation_guidance)
        class_labels = model.validation_cond(len(images), torch.device("cpu")).get("class_labels")
        return {"samples": SampleSet(images, model.validation_labels(len(images)), class_labels,
                                     {"sampler": p.validation_sampler, "steps": str(p.validation_num_inference_steps),
                                      "seed": str(seed)})}


@register_stage
class SampleGrid(Stage):
    """Write the samples as one labelled PNG grid, ``output_dir/samples/step-N.png``: every ``validation_steps``
    optimizer steps, when the run finishes, and on request (``control/sample``, the UI's "Sample now")."""

    type = "sample.grid"
    phase = "every"
    interval = "validation_steps"
    at_end = ("finished",)
    on_request = "sample"
    sink = True
    Params = GridParams
    binds = same_names(GridParams)
    inputs = (Port("samples", "Samples"),)
    outputs = (Port("report", "Report"),)

    def run(self, ctx, samples):
        if samples is None or ctx.output_dir is None:
            return {"report": {}}
        path = save_grid(samples.images, ctx.output_dir / "samples" / f"step-{ctx.step:06d}.png", labels=samples.labels)
        return {"report": {"sample": str(path)}}


@register_stage
class ExportSamples(Stage):
    """Write each sample as ``out/sample-NNNN.png``, all of them as ``out/grid.png``, and ``out/samples.safetensors``
    (``samples`` (N, C, H, W) in [-1, 1], ``class_labels`` (N,) for a class-conditional model; metadata: the
    captions as ``prompts``, a JSON list, when the model has them, sampler, steps, seed and ``metadata``). What
    ``rollgraph sample`` runs; in a training graph, it exports the samples of the finished run."""

    type = "sample.export"
    phase = "every"
    at_end = ("finished",)
    sink = True
    Params = ExportParams
    inputs = (Port("samples", "Samples"),)
    outputs = (Port("report", "Report"),)

    def run(self, ctx, samples):
        if samples is None:
            return {"report": {}}
        out = Path(self.params.out)
        out.mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(samples.images):
            save_grid(img[None], out / f"sample-{i:04d}.png", nrow=1)
        tensors = {"samples": samples.images.contiguous()}
        if samples.class_labels is not None:
            tensors["class_labels"] = samples.class_labels.contiguous()
        metadata = {**samples.meta, **self.params.metadata}
        if samples.labels is not None:
            metadata["prompts"] = json.dumps(samples.labels)
        save_file(tensors, str(out / "samples.safetensors"), metadata=metadata)
        grid = save_grid(samples.images, out / "grid.png", labels=samples.labels)
        return {"report": {"sample": str(grid)}}
