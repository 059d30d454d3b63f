"""FLUX.1 (``flux``): ``FluxTransformer2DModel``, flow matching on packed VAE latents.

The latent (B, C, H, W) is packed into 2×2 patches, (B, H/2·W/2, 4C), with position ids (row, column) per
patch and zero ids for the text tokens, by the pipeline's own ``_pack_latents`` /
``_prepare_latent_image_ids`` / ``_unpack_latents`` (private diffusers helpers, used so the layout is
exactly the one the pipeline samples with). The transformer multiplies its timestep by 1000 internally, so
it gets σ = our timestep / 1000; guidance-distilled models (``guidance_embeds``, FLUX.1-dev) also get the
guidance value ``flux_guidance_value``. Text: the pipeline's ``encode_prompt`` — T5's states as the
sequence, CLIP's pooled output as ``pooled_projections``. Velocity convention ε − x0, as ours.
"""

from __future__ import annotations

import torch
from rollgraph.stages.models.base import register_family
from rollgraph.stages.models.latent import LatentAdapter


@register_family
class FluxAdapter(LatentAdapter):
    family = "flux"
    pipeline_classes = ("FluxPipeline", "FluxImg2ImgPipeline")
    denoiser_class = "FluxTransformer2DModel"
    component = "transformer"
    text_components = ("tokenizer", "text_encoder", "tokenizer_2", "text_encoder_2")
    # diffusers' train_dreambooth_lora_flux default
    lora_targets = ("attn.to_k", "attn.to_q", "attn.to_v", "attn.to_out.0", "attn.add_k_proj", "attn.add_q_proj",
                    "attn.add_v_proj", "attn.to_add_out", "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj",
                    "ff_context.net.2")
    flow = True
    default_guidance = 1.0  # FLUX.1-dev is guidance-distilled: no classifier-free guidance by default
    default_max_length = 512

    @classmethod
    def latent_multiple(cls, config):
        return 2

    @classmethod
    def encode_prompts(cls, pipe, prompts, device, max_length):
        embeds, pooled, _ = pipe.encode_prompt(prompts, device=device, max_sequence_length=max_length or cls.default_max_length)
        return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}

    def forward(self, module, x, timestep, cond):
        from diffusers import FluxPipeline

        b, c, h, w = x.shape
        packed = FluxPipeline._pack_latents(x, b, c, h, w)
        img_ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, x.device, x.dtype)
        embeds = cond["prompt_embeds"]
        txt_ids = torch.zeros(embeds.shape[1], 3, device=x.device, dtype=x.dtype)
        guidance = None
        if self.raw_module.config.guidance_embeds:
            guidance = torch.full((b,), float(self.params.flux_guidance_value), device=x.device, dtype=torch.float32)
        out = module(hidden_states=packed, encoder_hidden_states=embeds, pooled_projections=cond["pooled_prompt_embeds"],
                     timestep=timestep / 1000.0, img_ids=img_ids, txt_ids=txt_ids, guidance=guidance, return_dict=False)[0]
        return FluxPipeline._unpack_latents(out, h * self.vsf, w * self.vsf, self.vsf)
