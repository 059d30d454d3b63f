"""The adapter contract shared by every model family.

An adapter owns the trainable denoiser (``module``) and knows how to call it:
``adapter(x, timestep, cond) -> prediction`` where ``cond`` is per-sample conditioning (class labels,
text embeddings, ...) with the batch first, so any subset of a batch can be evaluated with its own
conditioning. Weights are saved in the family's diffusers format (``save_pretrained``), so a checkpoint's
model folder loads straight into diffusers.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from rollgraph.graph import ConfigError, Issue
from rollgraph.graph.registry import Registry
from rollgraph.stages.types import Cond, Model


class ModelParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    section: ClassVar[str] = "Model"

    model_family: str = Field("unet2d", description="Model family adapter: unet2d (diffusers UNet2DModel in pixel space), sd (Stable Diffusion 1.x/2.x), sdxl, sd3, flux (text-to-image, on VAE latents)")
    pretrained_model_name_or_path: str | None = Field(None, description="A LOCAL diffusers folder to start from (no downloads; for sd/sdxl/sd3/flux the pipeline folder with model_index.json); empty: build from model_architecture")
    model_architecture: dict[str, Any] | None = Field(None, description="diffusers config dict used to build the model from scratch (for unet2d: UNet2DModel kwargs)")
    gradient_checkpointing: bool = Field(False, description="Trade compute for memory (diffusers' enable_gradient_checkpointing)")
    base_model_precision: Literal["auto", "bf16", "int8", "fp8"] = Field("auto", description="Storage of the frozen denoiser weights under a LoRA: auto (bf16 under bf16 autocast on CUDA, else float32), bf16 (needs bf16 autocast), int8 / fp8 (torchao weight-only quantisation of every frozen Linear; refused where the device cannot run it)")
    flux_guidance_value: float = Field(1.0, ge=0, le=100, description="flux only: the guidance-embedding value fed to guidance-distilled Flux models (FLUX.1-dev) in training and sampling")


class ModelAdapter(Model, ABC):
    family: ClassVar[str] = ""
    default_guidance: ClassVar[float] = 1.0  # classifier-free guidance scale for validation when none is configured

    def __init__(self, module: torch.nn.Module):
        self.module = module  # may be wrapped (DDP) by the trainer
        self.raw_module = module

    def __call__(self, x: torch.Tensor, timestep: torch.Tensor, cond: Cond) -> torch.Tensor:
        return self.forward(self.module, x, timestep, cond)

    def no_grad_call(self, x: torch.Tensor, timestep: torch.Tensor, cond: Cond) -> torch.Tensor:
        """For rollout and sampling: the unwrapped module, so no gradient sync is triggered."""
        return self.forward(self.raw_module, x, timestep, cond)

    @abstractmethod
    def forward(self, module, x, timestep, cond) -> torch.Tensor:
        """Call the (possibly wrapped) module; return the raw prediction."""

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.raw_module.parameters() if p.requires_grad]

    def validation_cond(self, n: int, device) -> Cond:
        """Conditioning for a validation grid of n samples."""
        return {}

    def null_cond(self, n: int, device) -> Cond | None:
        """Unconditional conditioning for classifier-free guidance in validation (None: no guidance)."""
        return None

    def validation_labels(self, n: int) -> list[str] | None:
        """A caption per validation sample for the grid (None: unlabelled)."""
        return None

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Samples in the model's space -> images in [-1, 1] (identity in pixel space)."""
        return x

    def place(self, device, autocast_dtype: torch.dtype | None = None) -> None:
        """Move the denoiser to the device (LoRA families also store frozen weights in autocast_dtype)."""
        self.raw_module.to(device)

    @abstractmethod
    def sample_shape(self) -> tuple[int, ...]:
        """(channels, height, width) of one generated sample in the model's space."""


    def save_state(self, directory: Path) -> None:
        """The checkpoint's model folder is a plain diffusers folder (from_pretrained works on it)."""
        self.raw_module.save_pretrained(directory, safe_serialization=True)

    def load_state(self, directory: Path) -> None:
        from safetensors.torch import load_file

        device = str(next(self.raw_module.parameters()).device)
        state: dict[str, torch.Tensor] = {}
        for weights in sorted(directory.glob("*.safetensors")):  # large models are saved in shards
            state.update(load_file(str(weights), device=device))
        self.raw_module.load_state_dict(state, strict=True)


FAMILIES: Registry = Registry("model family", "rollgraph.model_families")  # third parties: that entry-point group


def register_family(cls: type[ModelAdapter]) -> type[ModelAdapter]:
    FAMILIES[cls.family] = cls
    return cls


def get_family(name: str) -> type[ModelAdapter]:
    try:
        return FAMILIES.lookup(name)
    except KeyError as err:
        raise ConfigError([Issue("model_family", err.args[0])]) from None


def local_model_folder(path: str) -> Path:
    """A pretrained path must be a local folder: nothing is downloaded."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        hub_like = path.count("/") == 1 and not path.startswith((".", "/", "~")) and not folder.exists()
        what = "looks like a Hugging Face Hub id" if hub_like else "is not a local folder"
        raise ConfigError([Issue("pretrained_model_name_or_path",
                                 f"{path!r} {what}; no download possible: rollgraph never downloads models — fetch it "
                                 "yourself (e.g. `hf download` or save_pretrained) and point here at the local folder")])
    return folder
