"""Text-encoder LoRA for SD 1.x / 2.x and SDXL (``train_text_encoder``).

The pipeline's CLIP text encoder(s) are loaded with ``from_pretrained``, frozen, and given a peft LoRA on the
attention projections (q/k/v/out_proj, the default of diffusers' ``train_dreambooth_lora`` scripts; same rank
and alpha as the denoiser's, no dropout, so the rollout and sampling see the same encoder as training). The
captions then travel as token ids (``input_ids``, SDXL also ``input_ids_2``, tokenized as the pipeline's
``encode_prompt`` does: padded to the tokenizer's model_max_length) and are encoded at every call, with
gradient in the training forward:

- SD: prompt_embeds = text_encoder(ids).last_hidden_state;
- SDXL: prompt_embeds = [penultimate hidden state of encoder 1 ‖ of encoder 2], pooled = encoder 2's
  text_embeds; the empty prompt is all zeros where the pipeline says ``force_zeros_for_empty_prompt``.

They are saved in the same LoRA file as the UNet (``text_encoder.*`` / ``text_encoder_2.*``), which diffusers'
``load_lora_weights`` reads into the pipeline's encoders.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from rollgraph.stages.models import lora
from rollgraph.stages.types import Cond

TEXT_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
TOKEN_KEYS = {"text_encoder": "input_ids", "text_encoder_2": "input_ids_2"}


def _component_class(folder: Path, name: str):
    import transformers

    entry = json.loads((folder / "model_index.json").read_text())[name]
    return getattr(transformers, entry[1])


def token_rows(folder: Path, encoders: tuple[str, ...], texts: list[str]) -> Cond:
    """Token ids per text for each encoder, as the pipeline's encode_prompt tokenizes them."""
    out = {}
    for name in encoders:
        tokenizer_name = name.replace("text_encoder", "tokenizer")
        tokenizer = _component_class(folder, tokenizer_name).from_pretrained(str(folder), subfolder=tokenizer_name)
        out[TOKEN_KEYS[name]] = tokenizer(list(texts), padding="max_length", max_length=tokenizer.model_max_length,
                                          truncation=True, return_tensors="pt").input_ids
    return out


class TextEncoderLora:
    def __init__(self, folder: Path, encoders: tuple[str, ...], params, penultimate: bool, zeros_for_empty: bool):
        from peft import LoraConfig, inject_adapter_in_model

        rank = params.lora_rank or lora.DEFAULT_RANK
        self.modules: dict[str, torch.nn.Module] = {}
        for name in encoders:
            module = _component_class(folder, name).from_pretrained(str(folder), subfolder=name)
            module.requires_grad_(False).eval()
            config = LoraConfig(r=rank, lora_alpha=params.lora_alpha or rank, init_lora_weights="gaussian",
                                target_modules=list(TEXT_LORA_TARGETS), use_dora=params.lora_type == "dora")
            # transformers' own add_adapter wants a newer peft than diffusers needs; peft's injection is what it calls
            inject_adapter_in_model(config, module, "default")
            module.peft_config = {"default": config}  # read by get_peft_model_state_dict, as diffusers' adapters keep it
            self.modules[name] = module
        self.penultimate = penultimate
        self.zeros_for_empty = zeros_for_empty
        first = next(iter(self.modules.values()))
        self.eos = first.config.eos_token_id

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for m in self.modules.values() for p in m.parameters() if p.requires_grad]

    def place(self, device, autocast_dtype=None) -> None:
        for module in self.modules.values():
            module.to(device)
            if autocast_dtype is not None:
                module.to(autocast_dtype)  # frozen weights in bf16; the LoRA weights stay float32
                for p in module.parameters():
                    if p.requires_grad:
                        p.data = p.data.float()

    def encode(self, cond: Cond) -> Cond:
        """cond with prompt_embeds (and SDXL's pooled_prompt_embeds) recomputed from its token ids."""
        states, pooled = [], None
        for name, module in self.modules.items():
            ids = cond[TOKEN_KEYS[name]]
            out = module(ids, output_hidden_states=self.penultimate)
            states.append(out.hidden_states[-2] if self.penultimate else out[0])
            if out[0].ndim == 2:  # CLIPTextModelWithProjection: text_embeds
                pooled = out[0]
        embeds = torch.cat(states, dim=-1)
        new = dict(cond, prompt_embeds=embeds)
        if pooled is not None:
            new["pooled_prompt_embeds"] = pooled
        if self.zeros_for_empty:
            # the empty prompt tokenizes to <start>, <end>, padding: zeros, as the pipeline's unconditional branch
            ids = cond[TOKEN_KEYS[next(iter(self.modules))]]
            empty = ids[:, 1] == self.eos
            new["prompt_embeds"] = torch.where(empty[:, None, None], torch.zeros_like(embeds), embeds)
            if pooled is not None:
                new["pooled_prompt_embeds"] = torch.where(empty[:, None], torch.zeros_like(pooled), pooled)
        return new

    def save_parts(self) -> dict[str, torch.nn.Module]:
        return dict(self.modules)

    def load(self, directory: Path) -> None:
        for name, module in self.modules.items():
            lora.load_lora(directory, module, name)
