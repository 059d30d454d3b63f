"""The ``unet2d`` family: diffusers ``UNet2DModel`` in pixel space, unconditional or class-conditional."""

from __future__ import annotations

import json

import torch
from rollgraph.graph import ConfigError, Issue
from rollgraph.stages.models.base import ModelAdapter, local_model_folder, register_family


def default_architecture(resolution: int, channels: int, num_classes: int) -> dict:
    return {
        "sample_size": resolution,
        "in_channels": channels,
        "out_channels": channels,
        "block_out_channels": [32, 64],
        "layers_per_block": 1,
        "down_block_types": ["DownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "UpBlock2D"],
        "norm_num_groups": 8,
        "num_class_embeds": num_classes or None,
    }


def _not_a_text_to_image_pipeline(folder) -> None:
    from rollgraph.stages.models.base import FAMILIES
    from rollgraph.stages.models.latent import LatentAdapter

    index = folder / "model_index.json"
    name = json.loads(index.read_text()).get("_class_name") if index.exists() else None
    owner = next((f.family for f in FAMILIES.values() if issubclass(f, LatentAdapter) and name in f.pipeline_classes), None)
    if owner is not None:
        raise ConfigError([Issue("model_family", f"{folder} holds a {name}, which is model_family {owner!r}, not 'unet2d'")])


@register_family
class UNet2DAdapter(ModelAdapter):
    family = "unet2d"

    @classmethod
    def build(cls, params, data=None) -> UNet2DAdapter:
        from diffusers import UNet2DModel

        if params.pretrained_model_name_or_path:
            folder = local_model_folder(params.pretrained_model_name_or_path)
            _not_a_text_to_image_pipeline(folder)
            if (folder / "model_index.json").exists() or (folder / "unet").is_dir():
                folder = folder / "unet"
            if not (folder / "config.json").exists():
                raise ConfigError([Issue("pretrained_model_name_or_path", f"{folder} has no config.json: not a diffusers model folder")])
            try:
                module = UNet2DModel.from_pretrained(str(folder))
            except (OSError, ValueError, TypeError) as err:
                raise ConfigError([Issue("pretrained_model_name_or_path", f"cannot load a UNet2DModel from {folder}: {err}")]) from err
        else:
            arch = dict(params.model_architecture or {})
            if data is not None:
                base = default_architecture(data.images.shape[-1], data.images.shape[1], data.num_classes if data.labels is not None else 0)
                arch = {**base, **arch}
            try:
                module = UNet2DModel(**arch)
            except (TypeError, ValueError) as err:
                raise ConfigError([Issue("model_architecture", f"UNet2DModel rejects this config: {err}")]) from err
        if params.gradient_checkpointing:
            module.enable_gradient_checkpointing()
        return cls(module)

    def forward(self, module, x, timestep, cond):
        labels = cond.get("class_labels")
        if self.raw_module.config.num_class_embeds is None:
            labels = None
        return module(x, timestep, class_labels=labels).sample

    def sample_shape(self):
        cfg = self.raw_module.config
        size = cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[0]
        return (cfg.in_channels, size, size)

    def validation_cond(self, n, device):
        k = self.raw_module.config.num_class_embeds
        if not k:
            return {}
        return {"class_labels": (torch.arange(n) % k).to(device)}
