"""Load stages: a dataset held in memory (setup) and the batch it yields every step.

Datasets: ``digits`` — scikit-learn's bundled 8×8 handwritten digits (1,797 real images, 10 classes, no
download), upsampled to ``resolution``, class-conditional; ``folder`` — an image folder
(png / jpg / jpeg / webp, optional ``.txt`` caption beside each image; a one-level sub-folder layout gives
class labels). Pixels are scaled to [-1, 1].

For the text-to-image families (sd, sdxl, sd3, flux) the same stage builds a ``LatentDataset`` instead:
VAE latents and text embeddings, through the cache (stages/latent_data.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from rollgraph.graph import Port, RunError, Stage, register_stage, same_names
from rollgraph.stages.dreambooth import DreamboothParams
from rollgraph.stages.models import ModelParams
from rollgraph.stages.models.lora import LoraParams
from rollgraph.stages.noise import ScheduleParams
from rollgraph.stages.sampling import ValidationParams
from rollgraph.stages.stage_params import pick
from rollgraph.stages.types import Batch, DataSource

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


class DataParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    section: ClassVar[str] = "Data"

    dataset: Literal["digits", "folder"] = Field("digits", description="digits: scikit-learn's bundled 8×8 digits (no download); folder: images in instance_data_dir")
    instance_data_dir: str | None = Field(None, description="Image folder (png/jpg/webp, optional .txt caption per image; sub-folders become class labels). Required for dataset=folder.")
    resolution: int = Field(16, ge=8, le=4096, description="Training resolution (square), pixels")
    num_channels: Literal[1, 3] = Field(1, description="1 = grayscale, 3 = RGB (digits are grayscale); the text-to-image families always use RGB")
    random_flip: bool = Field(False, description="Flip images horizontally at random (not for digits!)")
    aspect_buckets: bool = Field(False, description="sd/sdxl/sd3/flux: train each image at the bucket size (h·w ≤ resolution², sides multiples of the VAE × denoiser step, ratio ≤ 2) nearest its aspect ratio instead of a square center crop; each batch from one bucket")
    train_batch_size: int = Field(32, ge=1, le=65536, description="Samples per micro-step (per process)")
    max_train_samples: int | None = Field(None, ge=1, description="Use only the first N samples (e.g. a Dreambooth-sized subset)")
    class_filter: list[int] | None = Field(None, description="Keep only these class labels (digits: 0–9)")


DatasetStageParams = pick(
    "DatasetStageParams", "load.dataset's params: the data keys plus what encoding latents and prompts needs (family, "
    "folder, LoRA targets and prediction type for the early folder checks, the validation prompts to encode).",
    (DataParams, DreamboothParams, ModelParams, LoraParams, ScheduleParams, ValidationParams),
    (*DataParams.model_fields, "instance_prompt", "cache_dir", "vae_batch_size", "tokenizer_max_length", "model_family",
     "pretrained_model_name_or_path", "prediction_type", "lora_rank", "lora_target_modules", "train_text_encoder",
     "validation_prompt"))

BatchStageParams = pick("BatchStageParams", "load.batch's params: batch size, flips and caption dropout.",
                        (DataParams, DreamboothParams), ("train_batch_size", "random_flip", "caption_dropout_probability"))


class InMemoryDataset(DataSource):
    """Images as one tensor (N, C, H, W) in [-1, 1], optional class labels and captions; a
    deterministic, resumable epoch order derived from the seed (data position is checkpointed)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor | None, captions: list[str] | None,
                 num_classes: int, seed: int, rank: int = 0, world_size: int = 1):
        self.images = images
        self.labels = labels
        self.captions = captions
        self.num_classes = num_classes
        self.seed = seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.cursor = 0  # position within the epoch's global order, counted in samples over all ranks
        self._order = self._epoch_order(0)

    summary = ""  # what was loaded, for the run's start-up header (set by the loading stage)

    def __len__(self) -> int:
        return len(self.images)

    def describe(self) -> str:
        return self.summary

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.images), generator=g)

    def next_indices(self, batch_size: int) -> torch.Tensor:
        """The next global batch (batch_size × world_size samples); this rank keeps its own slice."""
        need = batch_size * self.world_size
        picked = []
        while need > 0:
            take = min(need, len(self._order) - self.cursor)
            picked.append(self._order[self.cursor:self.cursor + take])
            self.cursor += take
            need -= take
            if self.cursor >= len(self._order):
                self.epoch += 1
                self.cursor = 0
                self._order = self._epoch_order(self.epoch)
        idx = torch.cat(picked) if len(picked) > 1 else picked[0]
        return idx[self.rank * batch_size:(self.rank + 1) * batch_size] if self.world_size > 1 else idx

    def batch(self, idx: torch.Tensor, flip: torch.Tensor | None, ctx, node_id: str, params) -> tuple[torch.Tensor, dict]:
        """(x0, cond) for the samples idx; flip (bool per sample) mirrors images horizontally."""
        x0 = self.images[idx]
        if flip is not None:
            x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
        cond = {}
        if self.labels is not None:
            cond["class_labels"] = ctx.move(self.labels[idx])
        return x0, cond

    def save_state(self, directory: Path) -> None:
        (directory / "position.json").write_text(json.dumps({"epoch": self.epoch, "cursor": self.cursor}))

    def load_state(self, directory: Path) -> None:
        pos = json.loads((directory / "position.json").read_text())
        self.epoch, self.cursor = int(pos["epoch"]), int(pos["cursor"])
        self._order = self._epoch_order(self.epoch)


def load_digits_images(resolution: int, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0  # (N,1,8,8) in [0,1]
    if resolution != 8:
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False)
    x = x.clamp(0, 1) * 2 - 1
    if channels == 3:
        x = x.repeat(1, 3, 1, 1)
    return x, torch.tensor(digits.target, dtype=torch.long)


def crop_box(w: int, h: int) -> tuple[int, int, int]:
    """(left, top, side) of the centered square crop of a w×h image."""
    side = min(w, h)
    return (w - side) // 2, (h - side) // 2, side


def load_image(path: Path, resolution: int, channels: int, bucket: tuple[int, int] | None = None) -> torch.Tensor:
    """Center-crop to a square, resize (bicubic) to resolution, scale to [-1, 1]: (C, H, W). With a bucket
    (h, w): resize to cover it, then center-crop to it (stages/buckets.py)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            im = im.convert("L" if channels == 1 else "RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise RunError(f"cannot read image {path}: {err}") from err
    if bucket is None:
        left, top, side = crop_box(*im.size)
        im = im.crop((left, top, left + side, top + side))
        im = im.resize((resolution, resolution), Image.Resampling.BICUBIC)
    else:
        from rollgraph.stages.buckets import cover_crop

        (rh, rw), (top, left) = cover_crop(im.size[1], im.size[0], bucket)
        im = im.resize((rw, rh), Image.Resampling.BICUBIC).crop((left, top, left + bucket[1], top + bucket[0]))
    arr = np.asarray(im, dtype=np.float32) / 127.5 - 1.0
    t = torch.from_numpy(arr.copy())
    return t[None] if channels == 1 else t.permute(2, 0, 1)


def list_images(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def folder_summary(root: Path, captions_used: bool) -> str:
    """What an image folder holds: images, .txt captions (used or ignored), and the files skipped."""
    images = list_images(root)
    stems = {p.with_suffix("") for p in images}
    captioned = sum(p.with_suffix(".txt").exists() for p in images)
    skipped = sorted(str(p.relative_to(root)) for p in root.rglob("*")
                     if p.is_file() and p.suffix.lower() not in IMAGE_SUFFIXES and not (p.suffix == ".txt" and p.with_suffix("") in stems))
    text = f"{len(images)} images in {root}, {captioned} with a .txt caption"
    if captioned:
        text += " (used)" if captions_used else " (ignored: this model is not text-conditioned)"
    if skipped:
        text += f"; skipped {len(skipped)} file(s) that are not images or captions of one: {', '.join(skipped[:5])}"
        text += " …" if len(skipped) > 5 else ""
    return text


def load_folder(root: Path, resolution: int, channels: int):
    if not root.is_dir():
        raise RunError(f"instance_data_dir {root} does not exist or is not a folder")
    paths = list_images(root)
    if not paths:
        raise RunError(f"instance_data_dir {root} contains no images ({', '.join(IMAGE_SUFFIXES)})")
    images = torch.stack([load_image(p, resolution, channels) for p in paths])
    class_names = sorted({p.parent.name for p in paths if p.parent != root})
    labels = None
    if class_names and all(p.parent != root for p in paths):
        lookup = {name: i for i, name in enumerate(class_names)}
        labels = torch.tensor([lookup[p.parent.name] for p in paths], dtype=torch.long)
    captions = [p.with_suffix(".txt").read_text().strip() if p.with_suffix(".txt").exists() else "" for p in paths]
    return images, labels, captions, len(class_names) if labels is not None else 0


@register_stage
class LoadDataset(Stage):
    """Load the training images once into memory (setup)."""

    type = "load.dataset"
    phase = "setup"
    Params = DatasetStageParams
    binds = same_names(DatasetStageParams)
    outputs = (Port("data", "DataSource", "the in-memory dataset"),)

    def run(self, ctx, **_):
        from rollgraph.stages.models import LatentAdapter, get_family

        p: DatasetStageParams = self.params
        family = get_family(p.model_family)
        if issubclass(family, LatentAdapter):
            from rollgraph.stages.latent_data import load_latent_dataset

            if not p.instance_data_dir:
                raise RunError(f"model_family {p.model_family!r} needs instance_data_dir (dataset=folder)")
            data = load_latent_dataset(ctx, p, family)
            data.summary = folder_summary(Path(p.instance_data_dir), captions_used=True)
            return {"data": data}
        if p.dataset == "digits":
            images, labels = load_digits_images(p.resolution, p.num_channels)
            captions, num_classes = None, 10
            summary = f"{len(images)} images (scikit-learn digits)"
        else:
            if not p.instance_data_dir:
                raise RunError("dataset=folder needs instance_data_dir")
            images, labels, captions, num_classes = load_folder(Path(p.instance_data_dir), p.resolution, p.num_channels)
            summary = folder_summary(Path(p.instance_data_dir), captions_used=False)
        loaded = len(images)
        if p.class_filter is not None and labels is not None:
            keep = torch.isin(labels, torch.tensor(p.class_filter))
            images, labels = images[keep], labels[keep]
            captions = [c for c, k in zip(captions, keep.tolist(), strict=True) if k] if captions else None
        if p.max_train_samples is not None:
            images = images[: p.max_train_samples]
            labels = labels[: p.max_train_samples] if labels is not None else None
            captions = captions[: p.max_train_samples] if captions else None
        if len(images) == 0:
            raise RunError("the dataset is empty after class_filter / max_train_samples")
        data = InMemoryDataset(images, labels, captions, num_classes, ctx.seed, ctx.rank, ctx.world_size)
        data.summary = summary + (f"; {num_classes} classes" if num_classes else "") + \
            (f"; {len(images)} kept by class_filter / max_train_samples" if len(images) != loaded else "")
        return {"data": data}


@register_stage
class NextBatch(Stage):
    """Take the next batch in the epoch order; flip horizontally with probability 1/2 if random_flip."""

    type = "load.batch"
    Params = BatchStageParams
    binds = same_names(BatchStageParams)
    inputs = (Port("data", "DataSource"),)
    outputs = (Port("batch", "Batch"),)

    def run(self, ctx, data: InMemoryDataset):
        idx = data.next_indices(self.params.train_batch_size)
        flip = None
        if self.params.random_flip:
            flip = torch.rand(len(idx) * ctx.world_size, generator=ctx.batch_generator(self.id))[ctx.local_slice(len(idx))] < 0.5
        x0, cond = data.batch(idx, flip, ctx, self.id, self.params)
        return {"batch": Batch(x0=ctx.move(x0), cond=cond, index=idx)}
