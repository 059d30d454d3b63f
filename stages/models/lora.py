"""LoRA adapters through peft: configuration, target checks, and checkpoints in diffusers' LoRA format.

``add_lora`` freezes the denoiser and injects a peft LoRA adapter named ``default`` (diffusers'
``add_adapter``); only the adapter's A/B matrices train. ``init_lora_weights="gaussian"`` starts B at zero,
so the adapted model equals the base model at step 0. A checkpoint holds only the adapter weights, written
by the family pipeline's ``save_lora_weights`` (``pytorch_lora_weights.safetensors`` with the LoraConfig in
the safetensors metadata), which ``pipeline.load_lora_weights(folder)`` reads; ``load_lora`` restores them
into the live adapter for resume.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from rollgraph.graph import ConfigError, Issue, RunError

LORA_FILE = "pytorch_lora_weights.safetensors"


class LoraParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    section: ClassVar[str] = "LoRA"

    lora_rank: int | None = Field(None, ge=0, le=4096, description="LoRA rank r; 0 = full fine-tuning of the denoiser; unset = 16 for sd/sdxl/sd3/flux, full fine-tuning for unet2d")
    lora_alpha: float | None = Field(None, gt=0, le=65536, description="LoRA alpha (the update is scaled by alpha / r); unset = the rank (scale 1)")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA branch while training (off in rollout and sampling, which run in eval mode)")
    lora_target_modules: list[str] | None = Field(None, description="Module names (or dotted name suffixes) of the denoiser to adapt; unset = the family's default (attention projections)")
    lora_type: Literal["lora", "dora", "loha", "lokr"] = Field("lora", description="Adapter through peft: lora (low-rank BA, Hu et al. 2021), dora (LoRA with a learned magnitude per output, Liu et al. 2024), loha (Hadamard product of two low-rank pairs), lokr (Kronecker product). Every type checkpoints and resumes; lora and dora load with diffusers' load_lora_weights; only lora exports to kohya/comfyui; loha/lokr files load in no image tool yet")
    train_text_encoder: bool = Field(False, description="sd / sdxl: also train a LoRA (lora_rank, lora_alpha; no dropout) on the CLIP text encoder(s) q/k/v/out projections; the captions are encoded by the adapted encoders every step instead of the cache; saved in the same LoRA file (text_encoder.*, text_encoder_2.*) and in every lora_format")
    lora_format: Literal["diffusers", "kohya", "comfyui"] = Field("diffusers", description="LoRA file written beside diffusers' pytorch_lora_weights.safetensors in each checkpoint: kohya (lora_kohya.safetensors; sd/sdxl: A1111, Forge, ComfyUI) or comfyui (lora_comfyui.safetensors; sd/sdxl: kohya names, sd3/flux: transformer.* with alpha); also `rollgraph export-lora`")


DEFAULT_RANK = 16


def lora_rank(params, family_supports_lora: bool) -> int:
    """The effective rank: an explicit value, else 16 for the text-to-image families and 0 (full) otherwise."""
    rank = getattr(params, "lora_rank", None)
    if rank is None:
        return DEFAULT_RANK if family_supports_lora else 0
    return rank


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)


def check_targets(module: torch.nn.Module, targets: list[str], component: str, each: bool = True) -> None:
    """Targets must name Linear / Conv2d layers of the module. With ``each`` (targets the user wrote) every
    one must match something: peft only complains when *all* miss, so a typo in one of several would
    silently train less than asked. A family's default list only needs one match (small configs may lack
    some layers, e.g. SD3's last block has no ``to_add_out``)."""
    layers = [n for n, m in module.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    missing = [t for t in targets if not any(_matches(n, t) for n in layers)]
    if missing and (each or len(missing) == len(targets)):
        examples = sorted({".".join(n.split(".")[-2:]) for n in layers})[:12]
        raise ConfigError([Issue("lora_target_modules",
                                 f"{missing} match no Linear/Conv2d layer of the {component} "
                                 f"(layer names end in e.g. {examples}); use names or dotted suffixes such as 'attn.to_q'")])


def lora_config(params, default_targets: list[str]):
    """The peft config of ``lora_type``; every type starts with ΔW = 0 (LoRA/DoRA: B = 0; LoHa: w2_b = 0;
    LoKr: w2 = 0), so step 0 is the base model."""
    from peft import LoHaConfig, LoKrConfig, LoraConfig

    rank = params.lora_rank or DEFAULT_RANK
    targets = list(params.lora_target_modules or default_targets)
    kind = getattr(params, "lora_type", "lora")
    if kind == "loha":
        return LoHaConfig(r=rank, alpha=params.lora_alpha or rank, target_modules=targets, init_weights=True)
    if kind == "lokr":
        return LoKrConfig(r=rank, alpha=params.lora_alpha or rank, target_modules=targets, init_weights=True)
    return LoraConfig(r=rank, lora_alpha=params.lora_alpha or rank, lora_dropout=params.lora_dropout,
                      init_lora_weights="gaussian", target_modules=targets, use_dora=kind == "dora")


def uses_lora_matrices(params) -> bool:
    """LoRA and DoRA store A/B matrices (diffusers' LoRA format); LoHa and LoKr store other tensors."""
    return getattr(params, "lora_type", "lora") in ("lora", "dora")


def add_lora(module, params, default_targets: list[str], component: str) -> None:
    config = lora_config(params, default_targets)
    check_targets(module, list(config.target_modules), component, each=bool(params.lora_target_modules))
    module.requires_grad_(False)
    module.add_adapter(config)


def has_lora(module) -> bool:
    return bool(getattr(module, "peft_config", None))


def lora_state_dict(module, diffusers_keys: bool) -> dict[str, torch.Tensor]:
    """The adapter's weights: peft keys (SD3/Flux, as diffusers' training scripts save them), or the
    diffusers LoRA spelling (``lora.down`` / ``lora.up``) for UNet families."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    state = get_peft_model_state_dict(module)
    if diffusers_keys:
        state = convert_state_dict_to_diffusers(state)
    return {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state.items()}


def save_lora(directory: Path, module, pipeline_cls, component: str, diffusers_keys: bool,
              text_encoders: dict | None = None) -> None:
    """Write ``pytorch_lora_weights.safetensors`` through the pipeline's own ``save_lora_weights``, with the
    text encoders' adapters (``{name: module}``, e.g. text_encoder, text_encoder_2) when they train too."""
    parts = {component: module, **(text_encoders or {})}
    kwargs = {}
    for name, part in parts.items():
        kwargs[f"{name}_lora_layers"] = lora_state_dict(part, diffusers_keys or name != component)
        kwargs[f"{name}_lora_adapter_metadata"] = part.peft_config["default"].to_dict()
    pipeline_cls.save_lora_weights(str(directory), safe_serialization=True, weight_name=LORA_FILE, **kwargs)


def load_lora(directory: Path, module, component: str) -> None:
    """Restore adapter weights saved by ``save_lora`` into the module's live ``default`` adapter (``component``
    is the file's prefix: unet, transformer, text_encoder, text_encoder_2)."""
    from diffusers.utils import convert_state_dict_to_peft, convert_unet_state_dict_to_peft
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    path = Path(directory) / LORA_FILE
    if not path.exists():
        raise ConfigError([Issue("--resume", f"{directory} has no {LORA_FILE} (was the checkpoint written without LoRA?)")])
    prefix = component + "."
    state = {k[len(prefix):]: v for k, v in load_file(str(path)).items() if k.startswith(prefix)}
    if component.startswith("text_encoder"):
        state = convert_state_dict_to_peft(state) if state else state
    else:
        state = convert_unet_state_dict_to_peft(state)
    expected = {k for k, p in module.named_parameters() if p.requires_grad}  # the adapter's (LoHa/LoKr: hada_*/lokr_*)
    hint = "were lora_rank / lora_target_modules changed?"
    try:
        result = set_peft_model_state_dict(module, state, adapter_name="default")
    except RuntimeError as err:  # shape mismatches
        raise RunError(f"{path}: LoRA weights do not fit this model ({str(err).splitlines()[-1].strip()}); {hint}") from None
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    if unexpected or len(state) != len(expected):
        raise RunError(f"{path}: LoRA weights do not fit this model ({len(state)} tensors for {len(expected)} "
                       f"adapter parameters; unexpected: {unexpected[:5]}); {hint}")
