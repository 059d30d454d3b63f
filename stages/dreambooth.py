"""Dreambooth-style data for the text-to-image families: which images, with which captions and loss weights.

Instance images come from ``instance_data_dir``; each takes the caption in the ``.txt`` file beside it, or
``instance_prompt``. With ``with_prior_preservation``, the class images in ``class_data_dir`` (their own
``.txt`` captions or ``class_prompt``) are a second data source with its own batches and loss term, the
``prior_preservation`` graph fragment (stages/prior_preservation.py): L = L_instance + prior_loss_weight ·
L_prior (Ruiz et al. 2023, arXiv 2208.12242, eq. 2). With probability ``caption_dropout_probability`` a
sample's caption is replaced by the empty prompt, which teaches the unconditional prediction that
classifier-free guidance needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field
from rollgraph.graph import ConfigError, Issue, RunError


class DreamboothParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    section: ClassVar[str] = "Text-to-image data (Dreambooth, caches)"

    instance_prompt: str | None = Field(None, description="Caption for every instance image without its own .txt caption (e.g. 'a photo of sks dog')")
    caption_dropout_probability: float = Field(0.0, ge=0, le=1, description="Chance that a sample trains with the empty prompt instead of its caption (for classifier-free guidance)")
    with_prior_preservation: bool = Field(False, description="Dreambooth prior preservation: the class images in class_data_dir get their own batches (train_batch_size), noise, prediction and loss term, weighted prior_loss_weight (the prior_preservation graph fragment)")
    class_data_dir: str | None = Field(None, description="Folder of class (regularisation) images; needs with_prior_preservation")
    class_prompt: str | None = Field(None, description="Caption for class images without their own .txt caption (e.g. 'a photo of a dog')")
    prior_loss_weight: float = Field(1.0, ge=0, le=1000, description="Weight λ of the class images' loss term: L = L_instance + λ·L_prior")
    cache_dir: str | None = Field(None, description="Folder for cached VAE latents and text embeddings (safetensors + manifest.json), reused across runs; unset = output_dir/cache")
    vae_batch_size: int = Field(4, ge=1, le=1024, description="Images per VAE encoder call while filling the latent cache")
    tokenizer_max_length: int | None = Field(None, ge=1, le=4096, description="T5 sequence length for sd3 / flux prompts; unset = the family default (sd3 256, flux 512)")


@dataclass
class Item:
    path: Path
    caption: str


def _captioned(root: Path, fallback: str | None, key: str) -> list[Item]:
    from rollgraph.stages.load import list_images

    if not root.is_dir():
        raise RunError(f"{key} {root} does not exist or is not a folder")
    paths = list_images(root)
    if not paths:
        raise RunError(f"{key} {root} contains no images (png, jpg, jpeg, webp)")
    items, uncaptioned = [], []
    for path in paths:
        txt = path.with_suffix(".txt")
        caption = txt.read_text().strip() if txt.exists() else fallback
        if caption is None:
            uncaptioned.append(path.name)
        else:
            items.append(Item(path, caption))
    if uncaptioned:
        prompt_key = "instance_prompt" if key == "instance_data_dir" else "class_prompt"
        raise ConfigError([Issue(prompt_key, f"{len(uncaptioned)} image(s) in {root} have no .txt caption "
                                             f"(e.g. {uncaptioned[:3]}) and {prompt_key} is not set")])
    return items


def collect_items(params) -> list[Item]:
    """The instance images (capped by max_train_samples)."""
    items = _captioned(Path(params.instance_data_dir), params.instance_prompt, "instance_data_dir")
    if params.max_train_samples is not None:
        items = items[: params.max_train_samples]
    return items


def class_items(params) -> list[Item]:
    """The class images of prior preservation."""
    return _captioned(Path(params.class_data_dir), params.class_prompt, "class_data_dir")


def validation_prompts(params, captions: list[str]) -> list[str]:
    """validation_prompt (one string or a list), else the instance prompt, else up to 4 distinct captions."""
    given = params.validation_prompt
    if given:
        return [given] if isinstance(given, str) else list(given)
    if params.instance_prompt:
        return [params.instance_prompt]
    return list(dict.fromkeys(captions))[:4]
