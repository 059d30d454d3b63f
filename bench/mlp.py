"""A tiny residual-MLP denoiser, registered as the model family ``bench_mlp`` (benchmarks only).

Why an MLP: the quality benchmark trains ~25 models on 2 CPU cores within minutes, which the smallest
diffusers ``UNet2DModel`` cannot do (it costs ~10-50× more per step at 8×8 on a CPU). The trainer, the
stages, the rollout and the solvers are the real ones; only the denoiser is small. Importing this module
registers the family, so a benchmark config may say ``"model_family": "bench_mlp"``.

Architecture: x (flattened) -> Linear -> + time embedding (diffusers' sinusoidal ``get_timestep_embedding``
of the model timestep, then an MLP) + class embedding -> ``depth`` pre-norm residual MLP blocks -> LayerNorm
-> Linear -> x's shape. Weights are saved as safetensors + config.json; ``pretrained_model_name_or_path`` may
point at such a folder (a checkpoint's ``model`` folder) to fine-tune it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from rollgraph.graph import ConfigError, Issue
from rollgraph.stages.models.base import ModelAdapter, register_family
from safetensors.torch import load_file, save_file
from torch import nn

WEIGHTS = "model.safetensors"


class MLPDenoiser(nn.Module):
    def __init__(self, sample_size: int = 8, channels: int = 1, num_classes: int = 0, hidden: int = 256,
                 depth: int = 3, time_dim: int = 64):
        super().__init__()
        self.config = {"sample_size": sample_size, "channels": channels, "num_classes": num_classes,
                       "hidden": hidden, "depth": depth, "time_dim": time_dim}
        dim = channels * sample_size * sample_size
        self.inp = nn.Linear(dim, hidden)
        self.time = nn.Sequential(nn.Linear(time_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.label = nn.Embedding(num_classes, hidden) if num_classes else None
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, 2 * hidden), nn.SiLU(), nn.Linear(2 * hidden, hidden))
            for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        from diffusers.models.embeddings import get_timestep_embedding

        t = timestep.reshape(-1).expand(x.shape[0]).float()
        emb = get_timestep_embedding(t, self.config["time_dim"], flip_sin_to_cos=True, downscale_freq_shift=0)
        h = self.inp(x.flatten(1)) + self.time(emb.to(x.dtype))
        if self.label is not None and class_labels is not None:
            h = h + self.label(class_labels)
        for block in self.blocks:
            h = h + block(h)
        return self.out(h).reshape(x.shape)


@register_family
class BenchMLPAdapter(ModelAdapter):
    """``model_architecture`` keys: hidden, depth, time_dim (size, channels, classes come from the data)."""

    family = "bench_mlp"

    @classmethod
    def build(cls, params, data=None) -> BenchMLPAdapter:
        if params.pretrained_model_name_or_path:
            folder = Path(params.pretrained_model_name_or_path)
            if not (folder / "config.json").exists() or not (folder / WEIGHTS).exists():
                raise ConfigError([Issue("pretrained_model_name_or_path", f"{folder} is not a bench_mlp folder")])
            module = MLPDenoiser(**json.loads((folder / "config.json").read_text()))
            module.load_state_dict(load_file(str(folder / WEIGHTS)), strict=True)
            return cls(module)
        arch = dict(params.model_architecture or {})
        if data is not None:
            labelled = getattr(data, "labels", None) is not None
            arch = {"sample_size": data.images.shape[-1], "channels": data.images.shape[1],
                    "num_classes": data.num_classes if labelled else 0, **arch}
        try:
            return cls(MLPDenoiser(**arch))
        except TypeError as err:
            raise ConfigError([Issue("model_architecture", f"bench_mlp rejects this config: {err}")]) from err

    def forward(self, module, x, timestep, cond):
        return module(x, timestep, cond.get("class_labels"))

    def sample_shape(self):
        c = self.raw_module.config
        return (c["channels"], c["sample_size"], c["sample_size"])

    def validation_cond(self, n, device):
        k = self.raw_module.config["num_classes"]
        return {"class_labels": (torch.arange(n) % k).to(device)} if k else {}

    def save_state(self, directory: Path) -> None:
        state = {k: v.detach().contiguous().cpu() for k, v in self.raw_module.state_dict().items()}
        save_file(state, str(directory / WEIGHTS))
        (directory / "config.json").write_text(json.dumps(self.raw_module.config, indent=1))
