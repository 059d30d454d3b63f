"""ReflexFlow loss stages for flow matching: anti-drift rectification (ADR) and frequency compensation (FC).

ReflexFlow, arXiv 2512.04904 (Dec 2025), reissued by the same authors as DEFAR, arXiv 2606.28226
(Jun 2026). No official code is published; the formulas below are ours where the paper leaves a choice.

Notation, per sample i of a batch of B: x̂_i the model input after the rollout (``noisy.x``), x_i the
teacher-forcing input (``noisy.x_clean``), x0_i the clean sample, v_i = eps_i - x0_i the clean-trajectory
target, v̂_i = f_theta(x̂_i) the training prediction (with gradient), r_i = 1 if the sample was rolled
out (k_i > 0) else 0. Every term is per sample, zero where r_i = 0, and averaged over the batch, so each
sample's loss is L_fm,i + beta1·L_adr,i + beta2·L_fc,i.

ADR (directional anti-drift regulariser, weight beta1 = ``scheduled_sampling_reflexflow_beta1``, default 10):
the anti-drift velocity points from x̂ back to the clean data in the noise-ward convention, d_i = x̂_i - x0_i
(the velocity that carries x̂_i straight to x0_i at sigma = 0 is d_i / sigma_i). Only its direction is used:

    L_adr = (1/B) · sum_i r_i · (2 - 2·cos(v̂_i, d_i)),   cos over all elements of the sample.

FC (frequency compensation, loss weight beta2 = ``_beta2``, default 1; weight scale alpha = ``_alpha``,
default 1): the exposure-bias signal is delta_i = f_theta(x̂_i) - f_theta(x_i), both without gradient;
the extra clean prediction f_theta(x_i) runs only for rolled-out samples (one batched no-grad call, model
in eval mode). The residual is re-weighted per frequency by where delta carries energy:

    R_i = FFT2(v̂_i - v_i),  D_i = FFT2(delta_i)   (orthonormal 2-D FFT over the spatial axes, per channel)
    w_i = 1 + alpha · |D_i| / mean(|D_i|)        (mean over the sample's channels × frequencies; w detached)
    L_fc = (1/B) · sum_i r_i · mean(w_i · |R_i|^2)

With alpha = 0 (or delta = 0), mean(|R_i|^2) equals the pixel MSE (Parseval), so L_fc is the rolled-out
samples' flow-matching loss. Normalising by the *per-sample mean* of |D| keeps the weight's mean at
1 + alpha for any tensor size; the reference trainer normalised by the L1 norm of the whole tensor, which
makes the weight 1 + O(alpha / numel), i.e. no effect on real latents. Early (high sigma) rollouts miss
mostly low-frequency content, so w up-weights the low frequencies there — the paper's "frequency
compensation".
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field
from rollgraph.graph import Port, RunError, Stage, register_stage, same_names
from rollgraph.stages.rollout import eval_mode
from rollgraph.stages.schedule import FLOW
from rollgraph.stages.types import Loss, Prediction, index_cond


class ReflexFlowParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    section: ClassVar[str] = "ReflexFlow (flow matching)"

    scheduled_sampling_reflexflow: bool | None = Field(None, description="ReflexFlow losses on rolled-out samples: unset = on for flow matching whenever rollout is active; false = off; true with a non-flow prediction_type is an error")
    scheduled_sampling_reflexflow_alpha: float = Field(1.0, ge=0, le=1000, description="FC weight scale alpha: w = 1 + alpha·|FFT(delta)| / mean|FFT(delta)|")
    scheduled_sampling_reflexflow_beta1: float = Field(10.0, ge=0, le=1000, description="Weight of the ADR directional anti-drift term")
    scheduled_sampling_reflexflow_beta2: float = Field(1.0, ge=0, le=1000, description="Weight of the FC frequency-compensated loss")


def adr_per_sample(pred: torch.Tensor, x_hat: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """2 - 2·cos(pred_i, x̂_i - x0_i) for every sample (flattened)."""
    cos = torch.nn.functional.cosine_similarity(pred.flatten(1).float(), (x_hat - x0).flatten(1).float(), dim=1, eps=1e-12)
    return 2.0 - 2.0 * cos


def fc_per_sample(residual: torch.Tensor, delta: torch.Tensor, alpha: float) -> torch.Tensor:
    """mean(w · |FFT2(residual)|^2) with w = 1 + alpha·|FFT2(delta)| / mean|FFT2(delta)|, per sample."""
    spec_r = torch.fft.fft2(residual.float(), norm="ortho")
    with torch.no_grad():
        mag = torch.fft.fft2(delta.float(), norm="ortho").abs()
        mean = mag.flatten(1).mean(1).clamp_min(1e-12).reshape(-1, *[1] * (mag.dim() - 1))
        weight = 1.0 + alpha * mag / mean
    return (weight * spec_r.abs().pow(2)).flatten(1).mean(1)


def _require_flow(schedule, node_id: str) -> None:
    if schedule.prediction_type != FLOW:
        raise RunError(f"node {node_id!r}: ReflexFlow needs prediction_type=flow_matching, got {schedule.prediction_type!r}")


@register_stage
class ReflexFlowADR(Stage):
    """Adds beta1 · L_adr: 2 - 2·cos(v̂, x̂ - x0) on rolled-out samples, averaged over the batch (loss/adr)."""

    type = "loss.reflexflow_adr"
    Params = ReflexFlowParams
    binds = same_names(ReflexFlowParams)
    inputs = (Port("prediction", "Prediction"), Port("schedule", "Schedule"))
    outputs = (Port("loss", "Loss"),)

    def run(self, ctx, prediction: Prediction, schedule):
        _require_flow(schedule, self.id)
        noisy = prediction.noisy
        rolled = noisy.rolled_mask
        if rolled.any():
            term = (adr_per_sample(prediction.pred[rolled], noisy.x[rolled], noisy.x0[rolled]).sum()) / len(rolled)
        else:
            term = prediction.pred.sum() * 0.0
        return {"loss": Loss.term("adr", term, self.params.scheduled_sampling_reflexflow_beta1)}


@register_stage
class ReflexFlowFC(Stage):
    """Adds beta2 · L_fc: the rolled-out samples' residual re-weighted per frequency by the exposure bias (loss/fc)."""

    type = "loss.reflexflow_fc"
    Params = ReflexFlowParams
    binds = same_names(ReflexFlowParams)
    inputs = (Port("prediction", "Prediction"), Port("model", "Model"), Port("schedule", "Schedule"))
    outputs = (Port("loss", "Loss"),)

    def run(self, ctx, prediction: Prediction, model, schedule):
        _require_flow(schedule, self.id)
        noisy = prediction.noisy
        rolled = noisy.rolled_mask
        n_rolled = int(rolled.sum())
        ctx.log("reflexflow/clean_evals", n_rolled, reduce="sum")
        if n_rolled:
            idx = rolled.nonzero().squeeze(1)
            level = noisy.level[idx]
            with torch.no_grad(), eval_mode(model.raw_module), ctx.autocast():
                clean_pred = model.no_grad_call(noisy.x_clean[idx], schedule.model_timestep(level), index_cond(noisy.cond, idx)).float()
            delta = prediction.pred[idx].detach() - clean_pred
            ctx.log("reflexflow/delta_rms", delta.pow(2).mean().sqrt())
            residual = prediction.pred[idx] - noisy.target[idx]
            term = fc_per_sample(residual, delta, self.params.scheduled_sampling_reflexflow_alpha).sum() / len(rolled)
        else:
            term = prediction.pred.sum() * 0.0
        return {"loss": Loss.term("fc", term, self.params.scheduled_sampling_reflexflow_beta2)}
