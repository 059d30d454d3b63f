"""Tiny real diffusers pipelines for the family tests, saved with ``save_pretrained`` (no network).

Every family gets the real classes with tiny configs: a UNet2DConditionModel / SD3Transformer2DModel /
FluxTransformer2DModel, a 2-level AutoencoderKL (latents are 1/2 of the image size), CLIP text encoders
and, where the family has one, a T5 encoder. The tokenizers are built from a small vocabulary written here:
a character-level CLIP BPE vocabulary (with the ``</w>`` end-of-word forms) and a T5 unigram vocabulary.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import numpy as np
import torch

CLIP_LEN = 16  # tokenizer model_max_length and the text encoders' max_position_embeddings
CHARS = string.ascii_lowercase + string.digits + ".,!?'-"


def clip_tokenizer():
    from transformers import CLIPTokenizer

    tokens = ["<|startoftext|>", "<|endoftext|>"] + list(CHARS) + [c + "</w>" for c in CHARS]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[], model_max_length=CLIP_LEN)


def t5_tokenizer():
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(c, -3.0) for c in CHARS] + [("▁" + c, -2.5) for c in CHARS]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


def clip_encoder(with_projection: bool, vocab_size: int, seed: int, hidden: int = 32):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    cfg = CLIPTextConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=CLIP_LEN, projection_dim=32,
                         bos_token_id=0, eos_token_id=1, pad_token_id=1)
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(cfg).eval()


def t5_encoder(vocab_size: int, d_model: int, seed: int):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=vocab_size, d_model=d_model, d_kv=8, d_ff=37, num_layers=1, num_heads=4,
                   relative_attention_num_buckets=8, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    return T5EncoderModel(cfg).eval()


def vae(latent_channels: int = 4, shift: float | None = None, scale: float = 0.5, seed: int = 0):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    kwargs = {"shift_factor": shift, "use_quant_conv": False, "use_post_quant_conv": False} if shift is not None else {}
    return AutoencoderKL(block_out_channels=[8, 16], in_channels=3, out_channels=3, latent_channels=latent_channels,
                         down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                         norm_num_groups=4, sample_size=16, scaling_factor=scale, **kwargs)


def _sd_unet(xl: bool, seed: int):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    extra = dict(addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=6 * 8 + 32,
                 cross_attention_dim=64, use_linear_projection=True) if xl else dict(cross_attention_dim=32)
    return UNet2DConditionModel(block_out_channels=(16, 32), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=4,
                                norm_num_groups=4, **extra)


def build_sd(folder: Path, prediction_type: str = "epsilon") -> Path:
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    tok = clip_tokenizer()
    sched = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type=prediction_type,
                          steps_offset=1, clip_sample=False)
    pipe = StableDiffusionPipeline(vae=vae(), text_encoder=clip_encoder(False, len(tok), 1), tokenizer=tok,
                                   unet=_sd_unet(False, 2), scheduler=sched, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(folder)
    return folder


def build_sdxl(folder: Path) -> Path:
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    tok = clip_tokenizer()
    sched = EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    pipe = StableDiffusionXLPipeline(vae=vae(), text_encoder=clip_encoder(False, len(tok), 1), tokenizer=tok,
                                     text_encoder_2=clip_encoder(True, len(tok), 3), tokenizer_2=tok,
                                     unet=_sd_unet(True, 2), scheduler=sched)
    pipe.save_pretrained(folder)
    return folder


def build_sd3(folder: Path) -> Path:
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    tok, t5tok = clip_tokenizer(), t5_tokenizer()
    torch.manual_seed(4)
    transformer = SD3Transformer2DModel(sample_size=8, patch_size=1, in_channels=4, out_channels=4, num_layers=2,
                                        attention_head_dim=8, num_attention_heads=4, caption_projection_dim=32,
                                        joint_attention_dim=64, pooled_projection_dim=64)
    pipe = StableDiffusion3Pipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                                    vae=vae(shift=0.0609, scale=1.5), text_encoder=clip_encoder(True, len(tok), 1),
                                    tokenizer=tok, text_encoder_2=clip_encoder(True, len(tok), 3), tokenizer_2=tok,
                                    text_encoder_3=t5_encoder(len(t5tok), 64, 5), tokenizer_3=t5tok)
    pipe.save_pretrained(folder)
    return folder


def build_flux(folder: Path, guidance_embeds: bool = True) -> Path:
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    tok, t5tok = clip_tokenizer(), t5_tokenizer()
    torch.manual_seed(4)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                         pooled_projection_dim=32, guidance_embeds=guidance_embeds, axes_dims_rope=[4, 4, 8])
    pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae(shift=0.1159, scale=0.36),
                        text_encoder=clip_encoder(False, len(tok), 1), tokenizer=tok,
                        text_encoder_2=t5_encoder(len(t5tok), 32, 5), tokenizer_2=t5tok, transformer=transformer)
    pipe.save_pretrained(folder)
    return folder


BUILDERS = {"sd": build_sd, "sdxl": build_sdxl, "sd3": build_sd3, "flux": build_flux}
PIPELINES = {"sd": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline",
             "sd3": "StableDiffusion3Pipeline", "flux": "FluxPipeline"}


def write_images(folder: Path, n: int = 4, size: int = 20, captions: bool = False, seed: int = 0) -> Path:
    """n small RGB images (not square, so cropping is exercised), optionally with a .txt caption each."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        arr = (rng.random((size, size + 4, 3)) * 255).astype(np.uint8)
        Image.fromarray(arr).save(folder / f"img{i}.png")
        if captions:
            (folder / f"img{i}.txt").write_text(f"a photo number {i}")
    return folder


FLOW = {"sd": False, "sdxl": False, "sd3": True, "flux": True}


def family_config(tmp: Path, family: str, model: Path, images: Path, **overrides) -> dict:
    """A small, fast training config for a tiny pipeline: LoRA rank 4, rollout on every sample."""
    cfg = {
        "model_family": family, "pretrained_model_name_or_path": str(model),
        "prediction_type": "flow_matching" if FLOW[family] else "epsilon",
        "dataset": "folder", "instance_data_dir": str(images), "instance_prompt": "a photo of sks dog",
        "resolution": 16, "train_batch_size": 2, "max_train_steps": 2, "learning_rate": 1e-3,
        "lora_rank": 4, "lora_alpha": 8,
        "scheduled_sampling_max_step_offset": 2, "scheduled_sampling_probability": 1.0,
        "validation_prompt": ["a photo of sks dog", "a dog"], "validation_num_images": 2,
        "validation_num_inference_steps": 2, "logging_steps": 1, "device": "cpu",
        "output_dir": str(tmp / f"run-{family}"), "cache_dir": str(tmp / "cache"),
    }
    if FLOW[family]:
        cfg.update(flow_schedule_shift=3.0, tokenizer_max_length=16)
    cfg.update(overrides)
    return cfg


def write_config(path: Path, cfg: dict) -> str:
    path.write_text(json.dumps(cfg))
    return str(path)


_BUILT: dict[str, Path] = {}


def pipeline_folder(tmp_path_factory, family: str) -> Path:
    """The tiny pipeline of a family, built once per test session (tests that change one copy it first)."""
    if family not in _BUILT or not _BUILT[family].exists():
        _BUILT[family] = BUILDERS[family](tmp_path_factory.mktemp(f"pipe-{family}") / family)
    return _BUILT[family]
