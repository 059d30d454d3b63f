"""LoRA files for the tools people generate images with: ``lora_format`` and ``rollgraph export-lora``.

The checkpoint always holds diffusers' file (``pytorch_lora_weights.safetensors``, PEFT/diffusers keys, the
LoraConfig per component in the safetensors metadata). From it this module writes, beside it:

- ``kohya`` (sd, sdxl) → ``lora_kohya.safetensors``: kohya sd-scripts' names, read by A1111, Forge, ComfyUI and
  diffusers: ``lora_unet_<diffusers module path, "." → "_">`` and ``lora_te1_`` / ``lora_te2_`` for the two
  CLIP text encoders, each with ``.lora_down.weight`` (= PEFT's A), ``.lora_up.weight`` (= B) and a scalar
  ``.alpha``. The renaming is diffusers' own (``convert_all_state_dict_to_peft`` then
  ``convert_state_dict_to_kohya``, as in diffusers' ``convert_diffusers_sdxl_lora_to_webui`` script).
- ``comfyui`` → ``lora_comfyui.safetensors``: for sd / sdxl the kohya names above (ComfyUI's
  ``model_lora_keys_unet`` maps ``lora_unet_<diffusers name>`` through ``unet_to_diffusers`` and
  ``model_lora_keys_clip`` maps ``lora_te1_`` / ``lora_te2_``); for sd3 / flux ``transformer.<diffusers
  module path>`` (the names ``model_lora_keys_unet`` maps for ``SD3`` and ``Flux`` models) with the same
  ``lora_down`` / ``lora_up`` / ``alpha`` tensors.

The alpha. Both PEFT and these tools apply ΔW = scale · up · down; PEFT's scale is lora_alpha / r
(lora_alpha / √r with rsLoRA), the tools' is alpha / rank with rank = down.shape[0]. So each module's alpha
tensor is scale · r, read from the LoraConfig in the file's metadata. diffusers' ``convert_state_dict_to_kohya``
writes alpha = r (scale 1), which would change a LoRA trained with lora_alpha ≠ r; it is overwritten here.
Without an alpha, ComfyUI applies scale 1, which is why a diffusers file with lora_alpha ≠ r loads too weak or
too strong there even where its names map.

Only plain LoRA (A/B matrices) converts: a file holding other adapter tensors (DoRA magnitudes, LoHa, LoKr) is
refused with the key named, since these names and the alpha rule above say nothing about them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from rollgraph.graph import ConfigError, Issue

DIFFUSERS_FILE = "pytorch_lora_weights.safetensors"
FORMATS = ("diffusers", "kohya", "comfyui")
FILES = {"kohya": "lora_kohya.safetensors", "comfyui": "lora_comfyui.safetensors"}
FAMILY_FORMATS = {"sd": FORMATS, "sdxl": FORMATS, "sd3": ("diffusers", "comfyui"), "flux": ("diffusers", "comfyui")}
COMPONENTS = ("unet", "transformer", "text_encoder", "text_encoder_2")


def format_issue(family: str, fmt: str, key: str = "lora_format") -> Issue | None:
    """Why ``fmt`` cannot be written for ``family`` (None when it can)."""
    allowed = FAMILY_FORMATS.get(family)
    if allowed is None:
        return Issue(key, f"LoRA files are written for the text-to-image families {sorted(FAMILY_FORMATS)}, not {family!r}")
    if fmt not in allowed:
        why = (" (kohya's names for SD3/Flux follow the original checkpoints, whose attention projections are fused; "
               "ComfyUI and Forge load the comfyui file)" if fmt == "kohya" else "")
        return Issue(key, f"{fmt!r} is not written for model_family {family!r}; choose one of {list(allowed)}{why}")
    return None


def read_lora(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The diffusers LoRA file's tensors and its per-component LoraConfig ({component: {r, lora_alpha, ...}})."""
    from diffusers.utils.state_dict_utils import _load_sft_state_dict_metadata
    from safetensors.torch import load_file

    state = load_file(str(path))
    packed = _load_sft_state_dict_metadata(str(path)) or {}
    configs: dict[str, dict] = {}
    for key, value in packed.items():
        component, _, field = key.partition(".")
        configs.setdefault(component, {})[field] = value
    return state, configs


def _scale(config: dict, component: str, path: Path) -> float:
    if not config or "r" not in config:
        raise ConfigError([Issue(str(path), f"has no LoraConfig for {component!r} in its metadata, so the LoRA scale "
                                            "(lora_alpha / r) is unknown; was it written by rollgraph or diffusers' save_lora_weights?")])
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise ConfigError([Issue(str(path), f"{component}: per-module rank_pattern / alpha_pattern are not converted")])
    r, alpha = int(config["r"]), float(config.get("lora_alpha") or config["r"])
    return alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r


def _peft_state(state: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """Every tensor to PEFT spelling (``<component>.<module>.lora_A.weight``); anything but A/B is refused."""
    from diffusers.utils import convert_all_state_dict_to_peft

    matrices = (".lora_A.weight", ".lora_B.weight", ".lora.down.weight", ".lora.up.weight",
                ".lora_linear_layer.down.weight", ".lora_linear_layer.up.weight")
    other = [k for k in state if not k.endswith(matrices)]
    if not other:  # one component at a time: diffusers' converters infer the spelling from the whole dict
        peft = {}
        for component in sorted({k.split(".")[0] for k in state}):
            part = {k: v for k, v in state.items() if k.split(".")[0] == component}
            peft.update(convert_all_state_dict_to_peft(part))
        other = [k for k in peft if not k.endswith((".lora_A.weight", ".lora_B.weight"))]
    if other:
        raise ConfigError([Issue(str(path), f"holds tensors other than LoRA A/B matrices (e.g. {other[0]!r}: DoRA, LoHa "
                                            "or LoKr); only plain LoRA converts to the kohya / comfyui names")])
    unknown = sorted({k.split(".")[0] for k in peft} - set(COMPONENTS))
    if unknown:
        raise ConfigError([Issue(str(path), f"has LoRA tensors for {unknown}, which rollgraph does not convert")])
    return peft


def _clip_name(key: str) -> str:
    """transformers 5 names CLIP's layers ``encoder.layers.N`` (4.x: ``text_model.encoder.layers.N``); kohya
    names, and so A1111 and ComfyUI, use the 4.x path: ``lora_te1_text_model_encoder_layers_N_…``."""
    component, _, rest = key.partition(".")
    if component.startswith("text_encoder") and rest.startswith("encoder."):
        return f"{component}.text_model.{rest}"
    return key


def _alpha(scale: float, down: torch.Tensor) -> torch.Tensor:
    return torch.tensor(scale * down.shape[0], dtype=torch.float32)


def to_kohya(state: dict[str, torch.Tensor], configs: dict, path: Path) -> dict[str, torch.Tensor]:
    """kohya names (UNet and CLIP text encoders) with each module's alpha = scale · r."""
    from diffusers.utils import convert_state_dict_to_kohya

    peft = _peft_state(state, path)
    if any(k.startswith("transformer.") for k in peft):
        raise ConfigError([Issue(str(path), "holds a transformer LoRA (SD3/Flux): the kohya names are for UNet models")])
    scales = {c: _scale(configs.get(c, {}), c, path) for c in {k.split(".")[0] for k in peft}}
    out = convert_state_dict_to_kohya({_clip_name(k): v for k, v in peft.items()})
    prefixes = {"lora_unet": "unet", "lora_te1": "text_encoder", "lora_te2": "text_encoder_2"}
    for key in [k for k in out if k.endswith(".alpha")]:
        name = key.removesuffix(".alpha")
        component = next(c for p, c in prefixes.items() if name.startswith(p + "_"))
        out[key] = _alpha(scales[component], out[name + ".lora_down.weight"])
    return {k: v.contiguous() for k, v in out.items()}


def to_comfyui(state: dict[str, torch.Tensor], configs: dict, path: Path) -> dict[str, torch.Tensor]:
    """kohya names for UNet models; ``transformer.<module>.lora_down/lora_up/alpha`` for SD3 / Flux."""
    peft = _peft_state(state, path)
    if not any(k.startswith("transformer.") for k in peft):
        return to_kohya(state, configs, path)
    if any(not k.startswith("transformer.") for k in peft):
        raise ConfigError([Issue(str(path), "mixes a transformer LoRA with other components; not converted")])
    scale = _scale(configs.get("transformer", {}), "transformer", path)
    out: dict[str, torch.Tensor] = {}
    for key, value in peft.items():
        if key.endswith(".lora_A.weight"):
            module = key.removesuffix(".lora_A.weight")
            out[f"{module}.lora_down.weight"] = value.contiguous()
            out[f"{module}.lora_up.weight"] = peft[f"{module}.lora_B.weight"].contiguous()
            out[f"{module}.alpha"] = _alpha(scale, value)
    return out


CONVERTERS = {"kohya": to_kohya, "comfyui": to_comfyui}


def write_format(directory: Path, fmt: str, out: Path | None = None) -> Path | None:
    """Convert ``directory``'s diffusers LoRA file to ``fmt`` and write it (atomically) beside it or to ``out``."""
    from safetensors.torch import save_file

    if fmt == "diffusers":
        return None
    source = Path(directory) / DIFFUSERS_FILE
    state, configs = read_lora(source)
    tensors = CONVERTERS[fmt](state, configs, source)
    target = Path(out) if out is not None else Path(directory) / FILES[fmt]
    tmp = target.with_name(target.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt", "rollgraph_lora_format": fmt, "lora_config": json.dumps(configs)})
    tmp.replace(target)
    return target


def find_lora_folder(checkpoint: Path) -> tuple[Path, str | None]:
    """The folder holding the diffusers LoRA file of a checkpoint (step-N/ or its model/ sub-folder), and the
    run's model_family from trainer.json when there is one."""
    checkpoint = Path(checkpoint)
    if (checkpoint / DIFFUSERS_FILE).exists():
        folder, step_dir = checkpoint, checkpoint.parent
    else:
        found = sorted(checkpoint.glob(f"*/{DIFFUSERS_FILE}"))
        if not found:
            raise ConfigError([Issue("CHECKPOINT", f"{checkpoint} holds no {DIFFUSERS_FILE} (a step-N folder of a LoRA run, "
                                                   "or its model/ folder); a full fine-tune has no LoRA to export")])
        folder, step_dir = found[0].parent, checkpoint
    family = None
    trainer = step_dir / "trainer.json"
    if trainer.exists():
        family = json.loads(trainer.read_text()).get("config", {}).get("model_family")
    return folder, family


def export_lora(checkpoint: Path, fmt: str, out: Path | None = None) -> Path:
    """``rollgraph export-lora``: write ``fmt`` from a checkpoint's diffusers LoRA file."""
    if fmt not in FORMATS:
        raise ConfigError([Issue("--format", f"{fmt!r} is not one of {list(FORMATS)}")])
    folder, family = find_lora_folder(checkpoint)
    if family is not None and (issue := format_issue(family, fmt, "--format")):
        raise ConfigError([issue])
    if fmt == "diffusers":
        return folder / DIFFUSERS_FILE
    return write_format(folder, fmt, out)


def configure(p) -> None:
    """The ``rollgraph export-lora CHECKPOINT --format FORMAT [--out FILE]`` arguments (stages/commands.py)."""
    p.add_argument("checkpoint", help="a step-N checkpoint folder (or its model/ folder)")
    p.add_argument("--format", required=True, help=" | ".join(FORMATS))
    p.add_argument("--out", default=None, help="file to write (default: lora_<format>.safetensors beside the diffusers file)")


def run_command(args, console) -> int:
    console.print(f"wrote {export_lora(Path(args.checkpoint), args.format, Path(args.out) if args.out else None)}")
    return 0
