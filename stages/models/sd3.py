"""Stable Diffusion 3 / 3.5 (``sd3``): ``SD3Transformer2DModel``, flow matching on VAE latents.

The transformer sees timestep σ·1000 and predicts the velocity ε − x0 (our flow convention). Text: the
pipeline's ``encode_prompt`` — both CLIP encoders' penultimate states side by side, zero-padded to T5's
width, then T5's states along the sequence (zeros when the folder has no T5); pooled = both CLIP
projections (Esser et al. 2024, arXiv 2403.03206). The folder's VAE has a shift factor, applied as
z = (latent − shift)·scale.
"""

from __future__ import annotations

from rollgraph.stages.models.base import register_family
from rollgraph.stages.models.latent import LatentAdapter


@register_family
class SD3Adapter(LatentAdapter):
    family = "sd3"
    pipeline_classes = ("StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline")
    denoiser_class = "SD3Transformer2DModel"
    component = "transformer"
    text_components = ("tokenizer", "text_encoder", "tokenizer_2", "text_encoder_2")
    optional_components = ("tokenizer_3", "text_encoder_3")
    # diffusers' train_dreambooth_lora_sd3 default
    lora_targets = ("attn.add_k_proj", "attn.add_q_proj", "attn.add_v_proj", "attn.to_add_out",
                    "attn.to_k", "attn.to_out.0", "attn.to_q", "attn.to_v")
    flow = True
    default_guidance = 5.0
    default_max_length = 256

    @classmethod
    def latent_multiple(cls, config):
        return int(config.get("patch_size", 2))

    @classmethod
    def encode_prompts(cls, pipe, prompts, device, max_length):
        embeds, _, pooled, _ = pipe.encode_prompt(prompts, None, None, device=device, do_classifier_free_guidance=False,
                                                  max_sequence_length=max_length or cls.default_max_length)
        return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}

    def forward(self, module, x, timestep, cond):
        return module(hidden_states=x, timestep=timestep, encoder_hidden_states=cond["prompt_embeds"],
                      pooled_projections=cond["pooled_prompt_embeds"], return_dict=False)[0]
