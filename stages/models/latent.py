"""The shared adapter of the text-to-image families (sd, sdxl, sd3, flux), which train on VAE latents.

A family names its diffusers pipeline, its denoiser (class and sub-folder), the text components it needs
and how to call the denoiser; everything else lives here: checking the model folder before anything heavy
is loaded (not a diffusers folder, a family mismatch, a missing text encoder, LoRA targets that match
nothing, a prediction type the model was not trained with), loading the denoiser with ``from_pretrained``,
LoRA or full fine-tuning, validation conditioning (prompt embeddings cycled over the grid, and the empty
prompt for classifier-free guidance), VAE decoding, and checkpoints (LoRA adapter weights only, or the
full denoiser as a diffusers folder).

Conditioning tensors (``prompt_embeds``, ``pooled_prompt_embeds``, SDXL's ``add_time_ids``) all carry the
batch first, so the rollout evaluates any subset of a batch with each sample's own text.
"""

from __future__ import annotations

import json
from abc import abstractmethod
from pathlib import Path
from typing import ClassVar

import torch
from rollgraph.graph import ConfigError, Issue, RunError
from rollgraph.stages.models import lora
from rollgraph.stages.models.base import FAMILIES, ModelAdapter, local_model_folder
from rollgraph.stages.types import Cond

KEY = "pretrained_model_name_or_path"


class LatentAdapter(ModelAdapter):
    pipeline_classes: ClassVar[tuple[str, ...]] = ()  # the first one is used; all identify the family
    denoiser_class: ClassVar[str] = ""
    component: ClassVar[str] = ""  # the denoiser's sub-folder and LoRA prefix: unet | transformer
    text_components: ClassVar[tuple[str, ...]] = ()
    optional_components: ClassVar[tuple[str, ...]] = ()  # loaded when the folder has them (SD3's T5)
    lora_targets: ClassVar[tuple[str, ...]] = ()
    lora_diffusers_keys: ClassVar[bool] = False  # UNet LoRAs are saved in diffusers' lora.down/up spelling
    flow: ClassVar[bool] = False
    default_max_length: ClassVar[int | None] = None

    def __init__(self, module, folder: Path, params):
        super().__init__(module)
        self.folder = folder
        self.params = params
        self.vae_config = json.loads((folder / "vae" / "config.json").read_text())
        self.vsf = 2 ** (len(self.vae_config["block_out_channels"]) - 1)  # pixels per latent cell
        self.latent_hw: tuple[int, int] | None = None
        self.prompts: list[str] = []
        self.prompt_rows: Cond = {}
        self.null_row: Cond = {}
        self._vae = None

    # -- the model folder ------------------------------------------------------------------------
    @classmethod
    def pipeline_cls(cls):
        import diffusers

        return getattr(diffusers, cls.pipeline_classes[0])

    @classmethod
    def read_model_index(cls, folder: Path) -> dict:
        path = folder / "model_index.json"
        if not path.exists():
            raise ConfigError([Issue(KEY, f"{folder} is not a diffusers pipeline folder (no model_index.json); model_family "
                                          f"{cls.family!r} needs the whole pipeline ({cls.pipeline_classes[0]}.save_pretrained)")])
        try:
            return json.loads(path.read_text())
        except (json.JSONDecodeError, OSError) as err:
            raise ConfigError([Issue(KEY, f"{path} is not valid JSON: {err}")]) from None

    @classmethod
    def check_folder(cls, params) -> Path:
        folder = local_model_folder(params.pretrained_model_name_or_path)
        index = cls.read_model_index(folder)
        name = index.get("_class_name")
        owner = next((f.family for f in FAMILIES.values() if issubclass(f, LatentAdapter) and name in f.pipeline_classes), None)
        if owner is not None and owner != cls.family:
            raise ConfigError([Issue("model_family", f"{folder} holds a {name}, which is model_family {owner!r}, not {cls.family!r}")])
        entry = index.get(cls.component) or [None, None]
        if entry[1] != cls.denoiser_class:
            raise ConfigError([Issue("model_family", f"{folder}/model_index.json has {cls.component} = {entry[1]} ({name}); model_family "
                                                     f"{cls.family!r} needs a {cls.denoiser_class}")])
        missing = []
        for comp in (cls.component, "vae", *cls.text_components, *cls.optional_components):
            entry = index.get(comp) or [None, None]
            if entry[0] is None and comp not in cls.optional_components:
                missing.append(f"{comp} (null or absent in model_index.json)")
            elif entry[0] is not None and not (folder / comp).is_dir():
                missing.append(f"{comp} (model_index.json lists it, but there is no {comp}/ folder)")
        if missing:
            raise ConfigError([Issue(KEY, f"{folder} lacks what model_family {cls.family!r} needs: {'; '.join(missing)}")])
        return folder

    @classmethod
    def denoiser_config(cls, folder: Path) -> dict:
        return json.loads((folder / cls.component / "config.json").read_text())

    @classmethod
    def empty_denoiser(cls, folder: Path):
        """The denoiser built from its config on the meta device: its structure, no weights."""
        import diffusers
        from accelerate import init_empty_weights

        dcls = getattr(diffusers, cls.denoiser_class)
        with init_empty_weights():
            return dcls.from_config(dcls.load_config(str(folder), subfolder=cls.component))

    @classmethod
    def latent_multiple(cls, config: dict) -> int:
        """The latent side must be a multiple of this (the denoiser's downsampling or patching)."""
        return 1

    @classmethod
    def vae_scale_factor(cls, folder: Path) -> int:
        return 2 ** (len(json.loads((folder / "vae" / "config.json").read_text())["block_out_channels"]) - 1)

    @classmethod
    def preflight(cls, params, resolution: int | None = None) -> Path:
        """Every check that needs no weights, so a bad folder or option fails before encoding or training."""
        folder = cls.check_folder(params)
        ptype = getattr(params, "prediction_type", None)
        if ptype is not None and not cls.flow:
            sched = folder / "scheduler" / "scheduler_config.json"
            trained = json.loads(sched.read_text()).get("prediction_type", "epsilon") if sched.exists() else ptype
            if trained in ("epsilon", "v_prediction", "sample") and trained != ptype:
                raise ConfigError([Issue("prediction_type", f"the model in {folder} was trained with prediction_type {trained!r} "
                                                            f"(scheduler/scheduler_config.json); set prediction_type {trained!r}")])
        if resolution is not None:
            step = cls.vae_scale_factor(folder) * cls.latent_multiple(cls.denoiser_config(folder))
            if resolution % step:
                raise ConfigError([Issue("resolution", f"{resolution} is not a multiple of {step}, which model_family "
                                                       f"{cls.family!r} with this VAE and {cls.component} needs")])
        if lora.lora_rank(params, True):
            lora.check_targets(cls.empty_denoiser(folder), list(params.lora_target_modules or cls.lora_targets),
                               cls.component, each=bool(params.lora_target_modules))
        return folder

    @classmethod
    def build(cls, params, data=None) -> LatentAdapter:
        import diffusers

        folder = cls.preflight(params)
        try:
            module = getattr(diffusers, cls.denoiser_class).from_pretrained(str(folder), subfolder=cls.component)
        except (OSError, ValueError, TypeError) as err:
            raise ConfigError([Issue(KEY, f"cannot load the {cls.denoiser_class} from {folder / cls.component}: {err}")]) from err
        if lora.lora_rank(params, True):
            lora.add_lora(module, params, list(cls.lora_targets), cls.component)
        else:
            module.requires_grad_(True)
        if params.gradient_checkpointing:
            module.enable_gradient_checkpointing()
        adapter = cls(module, folder, params)
        if data is not None:
            if getattr(data, "validation_prompts", None) is None:
                raise ConfigError([Issue("model_family", f"model_family {cls.family!r} trains on VAE latents and text embeddings: "
                                                         "its data must come from load.dataset with dataset=folder")])
            adapter.set_validation(data.validation_prompts, data.validation_rows, data.null_row, data.sample_hw)
        return adapter

    # -- conditioning hooks (the data stage calls these through the class) ------------------------
    @classmethod
    @abstractmethod
    def encode_prompts(cls, pipe, prompts: list[str], device, max_length: int | None) -> Cond:
        """Per-prompt conditioning tensors (batch first) from the pipeline's own text encoders."""

    @classmethod
    def image_cond(cls, original_hw: tuple[int, int], crop_top_left: tuple[int, int], target_hw: tuple[int, int]) -> Cond:
        """Per-image conditioning besides the text (SDXL's micro-conditioning); one row, no batch dim."""
        return {}

    # -- validation --------------------------------------------------------------------------------
    def set_validation(self, prompts: list[str], rows: Cond, null_row: Cond, latent_hw: tuple[int, int]) -> None:
        self.prompts, self.prompt_rows, self.null_row = list(prompts), rows, null_row
        self.latent_hw = (int(latent_hw[0]), int(latent_hw[1]))

    def _rows(self, table: Cond, idx: torch.Tensor, device) -> Cond:
        if not table or self.latent_hw is None:
            raise RunError(f"model_family {self.family!r}: no validation prompts were encoded (the model was built "
                           "without the text-to-image data stage); set validation_prompt and use load.dataset")
        cond = {k: v[idx].to(device) for k, v in table.items()}
        hw = tuple(h * self.vsf for h in self.latent_hw)
        for k, v in self.image_cond(hw, (0, 0), hw).items():
            cond[k] = v[None].expand(len(idx), *v.shape).to(device)
        return cond

    def validation_cond(self, n, device):
        return self._rows(self.prompt_rows, torch.arange(n) % max(1, len(self.prompts)), device)

    def null_cond(self, n, device):
        return self._rows(self.null_row, torch.zeros(n, dtype=torch.long), device)

    def validation_labels(self, n):
        return [self.prompts[i % len(self.prompts)] for i in range(n)] if self.prompts else None

    def sample_shape(self):
        if self.latent_hw is None:
            raise RunError(f"model_family {self.family!r}: the sample size is unknown (no data stage set it)")
        return (int(self.vae_config["latent_channels"]), *self.latent_hw)

    @torch.no_grad()
    def decode(self, x: torch.Tensor) -> torch.Tensor:
        from diffusers import AutoencoderKL

        if self._vae is None:
            self._vae = AutoencoderKL.from_pretrained(str(self.folder), subfolder="vae").eval().requires_grad_(False)
        vae = self._vae.to(x.device)
        shift, scale = float(vae.config.shift_factor or 0.0), float(vae.config.scaling_factor)
        images = [vae.decode(chunk.float() / scale + shift).sample for chunk in x.split(4)]
        return torch.cat(images).clamp(-1, 1)

    # -- device, dtype and checkpoints -------------------------------------------------------------
    def place(self, device, autocast_dtype=None):
        from rollgraph.stages.models.quantize import SCHEMES, quantize_frozen_linears

        module = self.raw_module.to(device)
        precision = getattr(self.params, "base_model_precision", "auto")
        if (autocast_dtype is not None or precision == "bf16") and lora.has_lora(module):
            module.to(torch.bfloat16 if precision == "bf16" else autocast_dtype)  # frozen base weights; LoRA stays float32
            for p in module.parameters():
                if p.requires_grad:
                    p.data = p.data.float()
        if precision in SCHEMES and lora.has_lora(module):
            quantize_frozen_linears(module, precision)

    def text_encoder_parts(self) -> dict:
        """Text encoders whose LoRA trains too ({file prefix: module}); none unless train_text_encoder."""
        return {}

    def save_state(self, directory: Path) -> None:
        if lora.has_lora(self.raw_module):
            from rollgraph.stages.lora_export import write_format

            lora.save_lora(directory, self.raw_module, self.pipeline_cls(), self.component,
                           self.lora_diffusers_keys and lora.uses_lora_matrices(self.params), self.text_encoder_parts())
            write_format(directory, self.params.lora_format)
        else:
            super().save_state(directory)

    def load_state(self, directory: Path) -> None:
        if lora.has_lora(self.raw_module):
            lora.load_lora(directory, self.raw_module, self.component)
        else:
            super().load_state(directory)
