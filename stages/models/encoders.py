"""A family's encoders: its diffusers pipeline loaded *without* the denoiser (VAE, tokenizers, text encoders).

The pipeline is loaded through the real ``from_pretrained`` code path with a meta-device stand-in for the
denoiser (built from its config, no weights), so prompts are encoded by the pipeline's own
``encode_prompt`` exactly as diffusers does at inference, and nothing else in the folder (safety checker,
image encoder) is loaded. Latents are stored scaled: z = (mean − shift_factor)·scaling_factor, with the
posterior std scaled alike, so a training sample is z + std·ε.
"""

from __future__ import annotations

import torch
from rollgraph.graph import ConfigError, Issue


class PipelineEncoders:
    def __init__(self, family, folder, device, dtype: torch.dtype = torch.float32):
        index = family.read_model_index(folder)
        needed = {"vae", "scheduler", family.component, *family.text_components, *family.optional_components}
        skipped = {name: None for name, entry in index.items()  # components only: other keys are pipeline options
                   if isinstance(entry, list) and not name.startswith("_") and name not in needed}
        try:
            self.pipe = family.pipeline_cls().from_pretrained(str(folder), **{family.component: family.empty_denoiser(folder)},
                                                               **skipped)
        except (OSError, ValueError, TypeError, KeyError) as err:
            raise ConfigError([Issue("pretrained_model_name_or_path", f"cannot load the {family.family} text encoders / VAE "
                                                                      f"from {folder}: {err}")]) from err
        self.family = family
        self.device = torch.device(device)
        for name in (*family.text_components, *family.optional_components):
            module = getattr(self.pipe, name, None)
            if isinstance(module, torch.nn.Module):
                module.to(self.device, dtype).eval().requires_grad_(False)
        self.vae = self.pipe.vae.to(self.device).eval().requires_grad_(False)  # loaded in float32
        self.shift = float(self.vae.config.shift_factor or 0.0)
        self.scale = float(self.vae.config.scaling_factor)

    @torch.no_grad()
    def prompts(self, prompts: list[str], max_length: int | None) -> dict[str, torch.Tensor]:
        """One row per prompt: the family's conditioning tensors (prompt_embeds, pooled_prompt_embeds, ...)."""
        out = self.family.encode_prompts(self.pipe, list(prompts), self.device, max_length)
        return {k: v.detach().to("cpu") for k, v in out.items()}

    @torch.no_grad()
    def pixels(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images in [-1, 1] (B, 3, H, W) -> scaled posterior (mean, std), float32 on the CPU."""
        dist = self.vae.encode(images.to(self.device, torch.float32)).latent_dist
        mean = (dist.mean - self.shift) * self.scale
        std = dist.std * self.scale
        return mean.float().cpu(), std.float().cpu()

    def close(self) -> None:
        del self.pipe, self.vae
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
