"""ReflexFlow loss stages for flow matching: anti-drift rectification (ADR) and frequency compensation (FC).

ReflexFlow, arXiv 2512.04904 (Dec 2025), reissued by the same authors as DEFAR, arXiv 2606.28226
(Jun 2026). No official code is published; the formulas below are ours where the paper leaves a choice.

Notation, per sample i of a batch of B: x̂_i the model input after the rollout (``noisy.x``), x_i the
teacher-forcing input (``noisy.x_clean``), x0_i the clean sample, v_i = eps_i - x0_i the clean-trajectory
target, v̂_i = f_theta(x̂_i) the training prediction (with gradient), r_i = 1 if the sample was rolled
out (k_i > 0) else 0. Both terms are per sample and averaged over the batch; the loss is L_fc + beta1·L_adr.

ADR (directional anti-drift regulariser, weight beta1 = ``scheduled_sampling_reflexflow_beta1``, default 10):
the anti-drift velocity points from x̂ back to the clean data in the noise-ward convention, d_i = x̂_i - x0_i
(the velocity that carries x̂_i straight to x0_i at sigma = 0 is d_i / sigma_i). Only its direction is used:

    L_adr = (1/B) · sum_i r_i · (2 - 2·cos(v̂_i, d_i)),   cos over all elements of the sample.

FC (frequency compensation, alpha = ``_alpha``, default 1; beta2 = ``_beta2``, default 1): the flow-matching loss
itself, re-weighted per frequency where the model is exposure-biased. The exposure-bias signal is
delta_i = f_theta(x̂_i) - f_theta(x_i), both without gradient; the extra clean prediction f_theta(x_i) runs only
for rolled-out samples (one batched no-grad call, model in eval mode). With w_i the per-sample loss weight
(when a data source weighs its samples; else 1) and t_i the training target (``noisy.target``):

    R_i = F(v̂_i - t_i),  D_i = F(delta_i)     (orthonormal FFT over the sample's spatial axes, per channel)
    W_i = 1 + alpha · |D_i| / mean(|D_i|)     (mean over the sample's channels × frequencies; W detached)
    L_fc = (1/B) · sum_i w_i · [ (1 - r_i) · mean((v̂_i - t_i)^2) + r_i · beta2 · mean(W_i · |R_i|^2) ]

F is the 2-D FFT over (H, W) for (B, C, H, W) tensors, over the trailing spatial axes for (B, C, ...) in
general, and the 1-D FFT over the features for a flat (B, D) sample: never across the batch. By Parseval,
mean(|R_i|^2) = mean((v̂_i - t_i)^2), so with alpha = 0 and beta2 = 1, L_fc is the plain flow-matching loss: this
stage *replaces* ``loss.mse`` in a ReflexFlow graph (one FC-reweighted flow-matching term plus ADR, as DEFAR's
Algorithm 1 is transcribed; an earlier version added FC on top of the MSE, counting rolled samples twice).
beta2 weighs the rolled samples' part. Normalising by the *per-sample mean* of |D| keeps the weight's mean at
1 + alpha for any tensor size; the reference trainer normalised by the L1 norm of the whole tensor, which makes
the weight 1 + O(alpha / numel), i.e. no effect on real latents. Early (high sigma) rollouts miss mostly
low-frequency content, so W up-weights the low frequencies there — the paper's "frequency compensation".

The loss is L_fc + beta1 · L_adr (ADR stays a separate term, logged loss/adr; FC logs loss/fc). With ``snr_gamma``
each sample's bracket in L_fc is also multiplied by loss.mse's Min-SNR-γ weight (stages/loss.py), as the plain
loss it replaces would be.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field
from rollgraph.graph import Port, RunError, Stage, register_stage, same_names
from rollgraph.stages.loss import LossParams, min_snr_weight, per_sample_mse
from rollgraph.stages.rollout import eval_mode
from rollgraph.stages.schedule import FLOW
from rollgraph.stages.stage_params import pick
from rollgraph.stages.types import Loss, Prediction, index_cond


class ReflexFlowParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    section: ClassVar[str] = "ReflexFlow (flow matching)"

    scheduled_sampling_reflexflow: bool | None = Field(None, description="ReflexFlow losses on rolled-out samples: unset = on for flow matching whenever rollout is active; false = off; true with a non-flow prediction_type is an error")
    scheduled_sampling_reflexflow_alpha: float = Field(1.0, ge=0, le=1000, description="FC weight scale alpha: W = 1 + alpha·|FFT(delta)| / mean|FFT(delta)| on rolled samples' flow-matching residual")
    scheduled_sampling_reflexflow_beta1: float = Field(10.0, ge=0, le=1000, description="Weight of the ADR directional anti-drift term")
    scheduled_sampling_reflexflow_beta2: float = Field(1.0, ge=0, le=1000, description="Weight of the rolled samples' FC-reweighted flow-matching loss (the FC term replaces the plain MSE; 1 with alpha 0 is plain flow matching)")


# whether ReflexFlow runs at all (scheduled_sampling_reflexflow) is the recipe's choice (stages/default_graph.py)
ADRParams = pick("ADRParams", "loss.reflexflow_adr's params: beta1.", (ReflexFlowParams,), ("scheduled_sampling_reflexflow_beta1",))


def adr_per_sample(pred: torch.Tensor, x_hat: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """2 - 2·cos(pred_i, x̂_i - x0_i) for every sample (flattened)."""
    cos = torch.nn.functional.cosine_similarity(pred.flatten(1).float(), (x_hat - x0).flatten(1).float(), dim=1, eps=1e-12)
    return 2.0 - 2.0 * cos


def spatial_dims(x: torch.Tensor) -> tuple[int, ...]:
    """The axes the FFT runs over: (H, W) of (B, C, H, W); the trailing two of (B, C, ...); the features of (B, D)."""
    if x.dim() < 2:
        raise ValueError(f"frequency compensation needs a batch of samples, got shape {tuple(x.shape)}")
    return (1,) if x.dim() == 2 else (-1,) if x.dim() == 3 else (-2, -1)


def fc_per_sample(residual: torch.Tensor, delta: torch.Tensor, alpha: float) -> torch.Tensor:
    """mean(W · |F(residual)|^2) with W = 1 + alpha·|F(delta)| / mean|F(delta)|, per sample (F: ``spatial_dims``)."""
    dims = spatial_dims(residual)
    spec_r = torch.fft.fftn(residual.float(), dim=dims, norm="ortho")
    with torch.no_grad():
        mag = torch.fft.fftn(delta.float(), dim=dims, norm="ortho").abs()
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
    Params = ADRParams
    binds = same_names(ADRParams)
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


# FC replaces loss.mse, so it also takes loss.mse's snr_gamma (Min-SNR-γ, stages/loss.py) on every sample
FCParams = pick("FCParams", "loss.reflexflow_fc's params: alpha, beta2 and snr_gamma.", (ReflexFlowParams, LossParams),
                ("scheduled_sampling_reflexflow_alpha", "scheduled_sampling_reflexflow_beta2", "snr_gamma"))


@register_stage
class ReflexFlowFC(Stage):
    """The flow-matching loss, FC-reweighted on rolled-out samples (replaces loss.mse; logged loss/fc)."""

    type = "loss.reflexflow_fc"
    Params = FCParams
    binds = same_names(FCParams)
    inputs = (Port("prediction", "Prediction"), Port("model", "Model"), Port("schedule", "Schedule"))
    outputs = (Port("loss", "Loss"),)

    def run(self, ctx, prediction: Prediction, model, schedule):
        _require_flow(schedule, self.id)
        p = self.params
        noisy = prediction.noisy
        per_sample = per_sample_mse(prediction.pred, noisy.target)
        rolled = noisy.rolled_mask
        n_rolled = int(rolled.sum())
        ctx.log("reflexflow/clean_evals", n_rolled, reduce="sum")
        if n_rolled:
            idx = rolled.nonzero().squeeze(1)
            with torch.no_grad(), eval_mode(model.raw_module), ctx.autocast():
                clean_pred = model.no_grad_call(noisy.x_clean[idx], schedule.model_timestep(noisy.level[idx]),
                                                index_cond(noisy.cond, idx)).float()
            delta = prediction.pred[idx].detach() - clean_pred
            ctx.log("reflexflow/delta_rms", delta.pow(2).mean().sqrt())
            fc = fc_per_sample(prediction.pred[idx] - noisy.target[idx], delta, p.scheduled_sampling_reflexflow_alpha)
            per_sample = per_sample.index_copy(0, idx, p.scheduled_sampling_reflexflow_beta2 * fc)
        if getattr(p, "snr_gamma", None) is not None:
            per_sample = per_sample * min_snr_weight(schedule, noisy.level, p.snr_gamma).to(per_sample)
        weight = noisy.cond.get("loss_weight")
        value = (per_sample * weight.to(per_sample)).mean() if weight is not None else per_sample.mean()
        return {"loss": Loss.term("fc", value)}
