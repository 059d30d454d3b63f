"""Dreambooth prior preservation: the class images as a second data source with their own loss term.

Ruiz et al. 2023, "DreamBooth" (arXiv 2208.12242), eq. 2, as diffusers' ``train_dreambooth.py`` computes it:

    L = E[w_t‖x̂_θ(α_t x + σ_t ε, c) − x‖²] + λ · E[w_t'‖x̂_θ(α_t' x_pr + σ_t' ε', c_pr) − x_pr‖²]
      = L_instance + λ · L_prior,      λ = ``prior_loss_weight``

each expectation the mean over its own batch: every step draws ``train_batch_size`` instance samples and as
many class samples (x_pr from ``class_data_dir``, captions c_pr from their ``.txt`` files or ``class_prompt``),
with independent noise levels and noise. The ``prior_preservation`` graph fragment
(stages/recipes/prior_preservation.json) wires it:

    setup:  class_data ─► class_batch ─► class_noise ─► class_predict ─► prior_loss ─► total.terms

so the class branch is teacher-forced (rollout, input perturbation and ReflexFlow act on the instance branch
only), and ``prior_loss`` applies loss.mse's knobs (Min-SNR-γ ``snr_gamma``) to its term, logged unweighted as
loss/prior. The class data source's epoch position is checkpointed like the instance one (resume is exact).
"""

from __future__ import annotations

from pathlib import Path

from rollgraph.graph import Port, RunError, Stage, register_stage, same_names
from rollgraph.graph.context import derive_seed
from rollgraph.stages.dreambooth import DreamboothParams, class_items
from rollgraph.stages.load import BatchStageParams, DataParams, NextBatch, folder_summary
from rollgraph.stages.loss import LossParams, MSELoss
from rollgraph.stages.models import ModelParams
from rollgraph.stages.models.lora import LoraParams
from rollgraph.stages.stage_params import pick

ClassImagesParams = pick(
    "ClassImagesParams", "load.class_images's params: the class folder and prompt, and how images are encoded.",
    (DreamboothParams, DataParams, ModelParams, LoraParams),
    ("class_data_dir", "class_prompt", "resolution", "random_flip", "aspect_buckets", "train_batch_size", "cache_dir",
     "vae_batch_size", "tokenizer_max_length", "model_family", "pretrained_model_name_or_path",
     "train_text_encoder"))  # the adapted text encoders read the class captions' token ids too

PriorLossParams = pick("PriorLossParams", "loss.prior_mse's params: λ and loss.mse's Min-SNR-γ.",
                       (DreamboothParams, LossParams), ("prior_loss_weight", "snr_gamma"))


@register_stage
class LoadClassImages(Stage):
    """Encode the class images of prior preservation once (setup): VAE latents and caption embeddings, cached."""

    type = "load.class_images"
    phase = "setup"
    Params = ClassImagesParams
    binds = same_names(ClassImagesParams)
    outputs = (Port("data", "ClassImages", "the class images, in memory"),)

    def run(self, ctx, **_):
        from rollgraph.stages.latent_data import load_latent_dataset
        from rollgraph.stages.models import LatentAdapter, get_family

        p = self.params
        family = get_family(p.model_family)
        if not issubclass(family, LatentAdapter):
            raise RunError(f"node {self.id!r}: prior preservation needs a text-to-image model_family (sd, sdxl, sd3, flux), "
                           f"not {p.model_family!r}")
        if not p.class_data_dir:
            raise RunError(f"node {self.id!r}: prior preservation needs class_data_dir")
        data = load_latent_dataset(ctx, p, family, items=class_items(p), seed=derive_seed(ctx.seed, self.id) % (2**31))
        data.summary = folder_summary(Path(p.class_data_dir), captions_used=True)
        return {"data": data}


@register_stage
class NextClassBatch(NextBatch):
    """Take the next batch of class images (train_batch_size of them), in their own resumable epoch order."""

    type = "load.class_batch"
    Params = BatchStageParams
    binds = same_names(BatchStageParams)
    inputs = (Port("data", "ClassImages"),)


@register_stage
class PriorLoss(MSELoss):
    """λ · L_prior: loss.mse on the class batch (Min-SNR-γ if snr_gamma), weighted prior_loss_weight (loss/prior)."""

    type = "loss.prior_mse"
    Params = PriorLossParams
    binds = same_names(PriorLossParams)
    term = "prior"

    def weight(self) -> float:
        return self.params.prior_loss_weight
