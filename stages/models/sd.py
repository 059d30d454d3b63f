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

import json

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
    text_encoders = ("text_encoder",)  # the ones train_text_encoder adapts
    penultimate_text_state = False
    lora_targets = UNET_LORA_TARGETS
    lora_diffusers_keys = True
    default_guidance = 7.5
    text = None  # a TextEncoderLora when train_text_encoder

    # -- text-encoder LoRA (train_text_encoder; stages/models/text_lora.py) -------------------------
    @classmethod
    def build(cls, params, data=None):
        adapter = super().build(params, data)
        if getattr(params, "train_text_encoder", False):
            from rollgraph.stages.models.text_lora import TextEncoderLora

            zeros = json.loads((adapter.folder / "model_index.json").read_text()).get("force_zeros_for_empty_prompt", False)
            adapter.text = TextEncoderLora(adapter.folder, cls.text_encoders, params, cls.penultimate_text_state,
                                           bool(zeros) and cls.family == "sdxl")
        return adapter

    @classmethod
    def token_rows(cls, folder, texts):
        from rollgraph.stages.models.text_lora import token_rows

        return token_rows(folder, cls.text_encoders, texts)

    def text_cond(self, cond):
        return self.text.encode(cond) if self.text is not None and "input_ids" in cond else cond

    def trainable_parameters(self):
        return super().trainable_parameters() + (self.text.parameters() if self.text is not None else [])

    def place(self, device, autocast_dtype=None):
        super().place(device, autocast_dtype)
        if self.text is not None:
            self.text.place(device, autocast_dtype)

    def text_encoder_parts(self):
        return self.text.save_parts() if self.text is not None else {}

    def load_state(self, directory):
        super().load_state(directory)
        if self.text is not None:
            self.text.load(directory)

    @classmethod
    def latent_multiple(cls, config):
        return 2 ** (len(config["block_out_channels"]) - 1)

    @classmethod
    def encode_prompts(cls, pipe, prompts, device, max_length):
        embeds, _ = pipe.encode_prompt(prompts, device, 1, False)
        return {"prompt_embeds": embeds}

    def forward(self, module, x, timestep, cond):
        cond = self.text_cond(cond)
        return module(x, timestep, encoder_hidden_states=cond["prompt_embeds"], return_dict=False)[0]


@register_family
class SDXLAdapter(SDAdapter):
    family = "sdxl"
    pipeline_classes = ("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline")
    text_components = ("tokenizer", "text_encoder", "tokenizer_2", "text_encoder_2")
    text_encoders = ("text_encoder", "text_encoder_2")
    penultimate_text_state = True
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
        cond = self.text_cond(cond)
        added = {"text_embeds": cond["pooled_prompt_embeds"], "time_ids": cond["add_time_ids"]}
        return module(x, timestep, encoder_hidden_states=cond["prompt_embeds"], added_cond_kwargs=added, return_dict=False)[0]
