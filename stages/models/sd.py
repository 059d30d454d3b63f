"""Stable Diffusion 1.x / 2.x (``sd``) and SDXL (``sdxl``): ``UNet2DConditionModel`` on VAE latents.

DDPM prediction types (``epsilon`` for SD 1.x, 2.x-base and SDXL; ``v_prediction`` for SD 2.x-768); the
folder's scheduler config says which, and a mismatch is an error. Text: the pipeline's ``encode_prompt``
(SD: CLIP's last hidden state; SDXL: both CLIP encoders' penultimate hidden states concatenated, plus the
second encoder's pooled projection; the empty prompt is zeros where the pipeline says
``force_zeros_for_empty_prompt``, as in its own unconditional branch). SDXL's micro-conditioning
``add_time_ids`` = (original height, width, crop top, left, target height, width) per image (Podell et
al. 2023, arXiv 2307.01952, §2.2).
"""

from __future__ import annotations

import torch
from rollgraph.stages.models.base import register_family
from rollgraph.stages.models.latent import LatentAdapter

UNET_LORA_TARGETS = ("to_k", "to_q", "to_v", "to_out.0")  # diffusers' train_dreambooth_lora_sdxl default


@register_family
class SDAdapter(LatentAdapter):
    family = "sd"
    pipeline_classes = ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline")
    denoiser_class = "UNet2DConditionModel"
    component = "unet"
    text_components = ("tokenizer", "text_encoder")
    lora_targets = UNET_LORA_TARGETS
    lora_diffusers_keys = True
    default_guidance = 7.5

    @classmethod
    def latent_multiple(cls, config):
        return 2 ** (len(config["block_out_channels"]) - 1)

    @classmethod
    def encode_prompts(cls, pipe, prompts, device, max_length):
        embeds, _ = pipe.encode_prompt(prompts, device, 1, False)
        return {"prompt_embeds": embeds}

    def forward(self, module, x, timestep, cond):
        return module(x, timestep, encoder_hidden_states=cond["prompt_embeds"], return_dict=False)[0]


@register_family
class SDXLAdapter(SDAdapter):
    family = "sdxl"
    pipeline_classes = ("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline")
    text_components = ("tokenizer", "text_encoder", "tokenizer_2", "text_encoder_2")
    default_guidance = 5.0

    @classmethod
    def encode_prompts(cls, pipe, prompts, device, max_length):
        embeds, _, pooled, _ = pipe.encode_prompt(prompts, device=device, do_classifier_free_guidance=False)
        if getattr(pipe.config, "force_zeros_for_empty_prompt", False):
            # as the pipeline's own unconditional branch: the empty prompt is all zeros (SDXL base)
            empty = torch.tensor([p == "" for p in prompts], device=embeds.device)
            embeds = torch.where(empty[:, None, None], torch.zeros_like(embeds), embeds)
            pooled = torch.where(empty[:, None], torch.zeros_like(pooled), pooled)
        return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}

    @classmethod
    def image_cond(cls, original_hw, crop_top_left, target_hw):
        return {"add_time_ids": torch.tensor([*original_hw, *crop_top_left, *target_hw], dtype=torch.float32)}

    def forward(self, module, x, timestep, cond):
        added = {"text_embeds": cond["pooled_prompt_embeds"], "time_ids": cond["add_time_ids"]}
        return module(x, timestep, encoder_hidden_states=cond["prompt_embeds"], added_cond_kwargs=added, return_dict=False)[0]
