"""train_text_encoder (sd, sdxl): the text encoders' LoRA trains, encodes as diffusers' pipeline does, is saved in
the diffusers file and in the kohya file, and both give the same images through diffusers' load_lora_weights."""

from __future__ import annotations

import diffusers
import pytest
import torch
from rollgraph.graph.cli import main
from rollgraph.stages.lora_export import DIFFUSERS_FILE, FILES
from rollgraph.stages.models import get_family
from rollgraph.stages.predict import ModelStageParams
from safetensors.torch import load_file

from tests.tiny_pipelines import PIPELINES, family_config, pipeline_folder, write_config, write_images

CLIP_MODULES = ("mlp_fc1", "mlp_fc2", "self_attn_q_proj", "self_attn_k_proj", "self_attn_v_proj", "self_attn_out_proj")
ENCODERS = {"sd": ("text_encoder",), "sdxl": ("text_encoder", "text_encoder_2")}
PROMPTS = ["a photo of sks dog", ""]


def _comfyui_clip_names(encoder_index: int, layers: int) -> set[str]:
    """ComfyUI's model_lora_keys_clip: lora_te1_ (CLIP-L; SD1.x also lora_te_), lora_te2_ (SDXL's CLIP-G)."""
    return {f"lora_te{encoder_index}_text_model_encoder_layers_{b}_{m}" for b in range(layers) for m in CLIP_MODULES}


def _latents(pipe, folder=None, weight_name=None):
    pipe.unload_lora_weights()
    if folder is not None:
        pipe.load_lora_weights(str(folder), weight_name=weight_name)
    return pipe(PROMPTS[0], num_inference_steps=2, height=16, width=16, output_type="latent", guidance_scale=1.0,
                generator=torch.Generator().manual_seed(0)).images.float()


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_text_encoder_lora_trains_saves_exports_and_encodes_as_diffusers(family, tmp_path, tmp_path_factory):
    model = pipeline_folder(tmp_path_factory, family)
    images = write_images(tmp_path / "images", 2, captions=True)
    cfg = family_config(tmp_path, family, model, images, train_text_encoder=True, lora_format="kohya", learning_rate=5e-2,
                        caption_dropout_probability=0.5, max_train_steps=3)
    assert main(["run", write_config(tmp_path / "c.json", cfg)]) == 0
    ckpt = tmp_path / f"run-{family}" / "checkpoints" / "step-3" / "model"
    # rollgraph sample encodes the validation prompts through the checkpoint's text encoders
    assert main(["sample", str(tmp_path / f"run-{family}"), "--num", "2", "--steps", "2", "--out", str(tmp_path / "s")]) == 0
    assert (tmp_path / "s" / "grid.png").exists()

    saved = load_file(str(ckpt / DIFFUSERS_FILE))
    for name in ENCODERS[family]:
        ups = [v for k, v in saved.items() if k.startswith(name + ".") and ".up." in k]
        assert ups and any(float(v.abs().max()) > 0 for v in ups)  # trained away from B = 0

    kohya = load_file(str(ckpt / FILES["kohya"]))
    for i in range(1, len(ENCODERS[family]) + 1):
        te_names = {k.split(".")[0] for k in kohya if k.startswith(f"lora_te{i}_")}
        assert te_names and te_names <= _comfyui_clip_names(i, 2)
        assert len(te_names) == 2 * 4  # 2 layers × q, k, v, out

    pipe = getattr(diffusers, PIPELINES[family]).from_pretrained(str(model))
    base, peft_images = _latents(pipe), _latents(pipe, ckpt, DIFFUSERS_FILE)
    kohya_images = _latents(pipe, ckpt, FILES["kohya"])
    assert (peft_images - base).abs().max() > 1e-3
    torch.testing.assert_close(kohya_images, peft_images, rtol=0, atol=1e-5)
    # the text encoders' part of each file reached the pipeline's encoders
    encodings = {}
    for weights in (None, DIFFUSERS_FILE, FILES["kohya"]):
        pipe.unload_lora_weights()
        if weights is not None:
            pipe.load_lora_weights(str(ckpt), weight_name=weights)
        with torch.no_grad():
            encodings[weights] = get_family(family).encode_prompts(pipe, PROMPTS[:1], "cpu", None)["prompt_embeds"]
    assert (encodings[DIFFUSERS_FILE] - encodings[None]).abs().max() > 1e-3
    torch.testing.assert_close(encodings[FILES["kohya"]], encodings[DIFFUSERS_FILE], rtol=0, atol=1e-6)

    # our adapter, resumed from the checkpoint, encodes exactly as the pipeline with the LoRA file loaded
    pipe.unload_lora_weights()
    pipe.load_lora_weights(str(ckpt), weight_name=DIFFUSERS_FILE)
    ours = get_family(family).build(ModelStageParams(model_family=family, pretrained_model_name_or_path=str(model),
                                                     prediction_type="epsilon", lora_rank=4, lora_alpha=8, train_text_encoder=True))
    ours.load_state(ckpt)
    with torch.no_grad():
        got = ours.text_cond(get_family(family).token_rows(model, PROMPTS))
        want = get_family(family).encode_prompts(pipe, PROMPTS, "cpu", None)
    for key, value in want.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=1e-5)
    fresh = get_family(family).build(ModelStageParams(model_family=family, pretrained_model_name_or_path=str(model),
                                                      prediction_type="epsilon", lora_rank=4, train_text_encoder=True))
    with torch.no_grad():
        untrained = fresh.text_cond(get_family(family).token_rows(model, PROMPTS))["prompt_embeds"]
    assert not torch.allclose(untrained[0], got["prompt_embeds"][0], atol=1e-4)  # the trained LoRA changes the text


def test_text_encoder_keys_are_refused_where_they_cannot_apply(tmp_path, tmp_path_factory, capsys):
    images = write_images(tmp_path / "images", 2)
    cfg = family_config(tmp_path, "flux", pipeline_folder(tmp_path_factory, "flux"), images, train_text_encoder=True)
    assert main(["validate", write_config(tmp_path / "c.json", cfg)]) == 2
    assert "train_text_encoder is for model_family sd / sdxl" in " ".join(capsys.readouterr().err.split())
    cfg = family_config(tmp_path, "sd", pipeline_folder(tmp_path_factory, "sd"), images, train_text_encoder=True, lora_type="loha")
    assert main(["run", write_config(tmp_path / "c.json", cfg)]) == 2
    assert "train_text_encoder trains a LoRA / DoRA" in " ".join(capsys.readouterr().err.split())
