"""LoRA files for other tools (``lora_format``, ``rollgraph export-lora``).

The kohya file must give the same images as diffusers' PEFT file when both load through diffusers'
``load_lora_weights``; every key must be one ComfyUI maps. ComfyUI's naming rules, as read in its
``comfy/lora.py`` (``load_lora``, ``model_lora_keys_unet``, ``model_lora_keys_clip``):

- tensors of one module X: ``X.lora_up.weight`` (B), ``X.lora_down.weight`` (A), optional ``X.alpha``
  (scale = alpha / rank with rank = lora_down.shape[0]; no alpha: scale 1). Any other key is
  "lora key not loaded".
- UNet (SD1.x, SDXL): X = ``lora_unet_<diffusers key without .weight, "." → "_">`` for every weight of
  the diffusers UNet (``unet_to_diffusers``), or ``lora_unet_<original LDM key>``. A PEFT key
  ``unet.<path>.to_q`` is NOT mapped (only ``unet.<path>.processor.to_q``): that is the reported fault.
- CLIP: X = ``lora_te1_text_model_encoder_layers_<i>_<m>`` (CLIP-L; also ``lora_te_`` for SD1.x) and
  ``lora_te2_text_model_encoder_layers_<i>_<m>`` (SDXL's CLIP-G), m ∈ {mlp_fc1, mlp_fc2, self_attn_q_proj,
  self_attn_k_proj, self_attn_v_proj, self_attn_out_proj}.
- SD3 and Flux: X = ``transformer.<diffusers key without .weight>`` (also ``lora_transformer_<… "_">``).
"""

from __future__ import annotations

import diffusers
import pytest
import torch
from rollgraph.graph import ConfigError
from rollgraph.graph.cli import main
from rollgraph.stages.lora_export import DIFFUSERS_FILE, FILES, export_lora
from rollgraph.stages.models import get_family
from rollgraph.stages.predict import ModelStageParams
from safetensors.torch import load_file

from tests.tiny_pipelines import PIPELINES, family_config, pipeline_folder, write_config, write_images

CLIP_MODULES = ("mlp_fc1", "mlp_fc2", "self_attn_q_proj", "self_attn_k_proj", "self_attn_v_proj", "self_attn_out_proj")
RANK, ALPHA = 4, 8.0  # scale 2: an exporter that writes alpha = rank (scale 1) fails the image comparison


def _trained_adapter(tmp_path_factory, family, fmt):
    flow = family in ("sd3", "flux")
    params = ModelStageParams(model_family=family, pretrained_model_name_or_path=str(pipeline_folder(tmp_path_factory, family)),
                              prediction_type="flow_matching" if flow else "epsilon", lora_rank=RANK, lora_alpha=ALPHA,
                              lora_format=fmt)
    adapter = get_family(family).build(params)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in adapter.raw_module.named_parameters():
            if "lora_B" in name:  # B starts at zero; a trained LoRA's is not
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return adapter


def _latents(pipe, lora_dir=None, weight_name=None):
    pipe.unload_lora_weights()
    if lora_dir is not None:
        pipe.load_lora_weights(str(lora_dir), weight_name=weight_name)
    out = pipe("a photo of sks dog", num_inference_steps=2, height=16, width=16, output_type="latent",
               guidance_scale=1.0, generator=torch.Generator().manual_seed(0)).images
    return out.float()


def _module_names(keys):
    return {k.removesuffix(".lora_up.weight").removesuffix(".lora_down.weight").removesuffix(".alpha") for k in keys}


def _comfyui_unet_names(unet):
    return {"lora_unet_" + k.removesuffix(".weight").replace(".", "_") for k in unet.state_dict() if k.endswith(".weight")}


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_kohya_file_loads_through_diffusers_and_gives_the_peft_files_images(family, tmp_path, tmp_path_factory):
    adapter = _trained_adapter(tmp_path_factory, family, "kohya")
    adapter.save_state(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([DIFFUSERS_FILE, FILES["kohya"]])
    pipe = getattr(diffusers, PIPELINES[family]).from_pretrained(str(pipeline_folder(tmp_path_factory, family)))
    base = _latents(pipe)
    peft = _latents(pipe, tmp_path, DIFFUSERS_FILE)
    kohya = _latents(pipe, tmp_path, FILES["kohya"])
    assert (peft - base).abs().max() > 0.05  # the LoRA changes the images
    torch.testing.assert_close(kohya, peft, rtol=0, atol=1e-5)

    tensors = load_file(str(tmp_path / FILES["kohya"]))
    names = _module_names(tensors)
    assert all(f"{n}.lora_up.weight" in tensors and f"{n}.lora_down.weight" in tensors and f"{n}.alpha" in tensors
               for n in names) and len(tensors) == 3 * len(names)
    pipe.unload_lora_weights()
    assert names <= _comfyui_unet_names(pipe.unet)  # every key is one ComfyUI maps
    assert len(names) == sum(1 for n, _ in adapter.raw_module.named_modules() if n.endswith((".to_q", ".to_k", ".to_v", ".to_out.0")))
    assert {float(tensors[f"{n}.alpha"]) for n in names} == {ALPHA}


def test_comfyui_file_for_flux_uses_transformer_names_with_alpha(tmp_path, tmp_path_factory):
    adapter = _trained_adapter(tmp_path_factory, "flux", "comfyui")
    adapter.save_state(tmp_path)
    tensors = load_file(str(tmp_path / FILES["comfyui"]))
    peft = load_file(str(tmp_path / DIFFUSERS_FILE))
    names = _module_names(tensors)
    transformer_weights = {"transformer." + k.removesuffix(".weight") for k in adapter.raw_module.state_dict()
                           if k.endswith(".weight") and "lora_" not in k}
    transformer_weights = {k.replace(".base_layer", "") for k in transformer_weights}
    assert names and names <= transformer_weights
    assert len(tensors) == 3 * len(names) and len(peft) == 2 * len(names)
    for n in names:
        assert torch.equal(tensors[f"{n}.lora_down.weight"], peft[f"{n}.lora_A.weight"])
        assert torch.equal(tensors[f"{n}.lora_up.weight"], peft[f"{n}.lora_B.weight"])
        # ComfyUI's scale alpha / rank equals PEFT's lora_alpha / r
        assert float(tensors[f"{n}.alpha"]) / tensors[f"{n}.lora_down.weight"].shape[0] == ALPHA / RANK


def test_training_writes_the_chosen_format_and_export_lora_writes_it_later(tmp_path, tmp_path_factory, capsys):
    images = write_images(tmp_path / "images", 2)
    cfg = family_config(tmp_path, "sd", pipeline_folder(tmp_path_factory, "sd"), images, lora_format="kohya",
                        max_train_steps=1, scheduled_sampling_max_step_offset=0)
    assert main(["run", write_config(tmp_path / "c.json", cfg)]) == 0
    ckpt = tmp_path / "run-sd" / "checkpoints" / "step-1"
    assert sorted(p.name for p in (ckpt / "model").iterdir()) == sorted([DIFFUSERS_FILE, FILES["kohya"]])
    out = tmp_path / "exported.safetensors"
    assert main(["export-lora", str(ckpt), "--format", "comfyui", "--out", str(out)]) == 0
    kohya, comfy = load_file(str(ckpt / "model" / FILES["kohya"])), load_file(str(out))
    assert kohya.keys() == comfy.keys() and all(torch.equal(kohya[k], comfy[k]) for k in kohya)


def test_bad_formats_exit_2_naming_the_key(tmp_path, tmp_path_factory, capsys):
    images = write_images(tmp_path / "images", 2)
    cfg = family_config(tmp_path, "flux", pipeline_folder(tmp_path_factory, "flux"), images, lora_format="kohya")
    assert main(["validate", write_config(tmp_path / "c.json", cfg)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "lora_format: 'kohya' is not written for model_family 'flux'" in err
    cfg.update(lora_format="a1111")
    assert main(["run", write_config(tmp_path / "c.json", cfg)]) == 2
    assert "lora_format" in capsys.readouterr().err
    cfg.update(lora_format="comfyui", lora_rank=0)
    assert main(["validate", write_config(tmp_path / "c.json", cfg)]) == 2
    assert "needs a LoRA" in " ".join(capsys.readouterr().err.split())
    assert main(["export-lora", str(tmp_path), "--format", "kohya"]) == 2
    assert f"holds no {DIFFUSERS_FILE}" in " ".join(capsys.readouterr().err.split())
    with pytest.raises(ConfigError, match="--format"):
        export_lora(tmp_path, "a1111")
