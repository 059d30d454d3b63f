"""The flow-matching / diffusion regression loss, with optional Min-SNR-γ weighting.

L = mean_i w_i · m_i · mean_pixels (pred_i - target_i)^2, with target the clean-trajectory target of the
prediction type (see stages/noise.py), w_i = cond["loss_weight"][i] when a data source gives its samples
weights, else 1, and m_i the Min-SNR-γ weight
below when ``snr_gamma`` is set, else 1. With ReflexFlow, its FC loss replaces this stage and applies the same Min-SNR-γ weight
(stages/reflexflow.py); the ADR term is not weighted.

Min-SNR-γ (Hang et al. 2023, arXiv 2303.09556): with x = a·x0 + s·ε and SNR = a²/s², the x0-space loss
‖x̂0 − x0‖² is weighted by min(SNR, γ). Written on the quantity each model predicts (the paper's eq. for ε
and v, and the same rule for the others):

    epsilon       ‖ε̂ − ε‖²  = SNR·‖x̂0 − x0‖²          → m = min(SNR, γ) / SNR
    v_prediction  ‖v̂ − v‖²  = (SNR + 1)·‖x̂0 − x0‖²    → m = min(SNR, γ) / (SNR + 1)
    sample        ‖x̂0 − x0‖²                          → m = min(SNR, γ)
    flow_matching ‖v̂ − v‖²  = ‖x̂0 − x0‖² / σ²  (x̂0 = x − σ·v̂)   → m = min(SNR, γ)·σ²,  SNR = (1−σ)²/σ²

Flow matching is not in the paper; the rule above is the paper's x0-space weight carried through the
velocity parameterisation exactly as the paper carries it through ε and v, so it behaves like the v form:
m = (1−σ)² where SNR ≤ γ (it falls to 0 at pure noise, as the v form does), γ·σ² where SNR > γ.

Losses fan in: every loss stage outputs its own (weighted) term, and ``loss.sum`` adds the list it is wired
to, L = sum_j L_j in the listed order; adding a term (``graph.extend: {"total.terms": [...]}``) never
disconnects another.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field
from rollgraph.graph import Port, RunError, Stage, register_stage, same_names
from rollgraph.stages.types import Loss, Prediction, as_float32


class LossParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    section: ClassVar[str] = "Loss"

    snr_gamma: float | None = Field(None, gt=0, le=1000, description="Min-SNR-γ weighting of the regression loss (Hang et al. 2023, arXiv 2303.09556; the paper uses 5): m = min(SNR,γ)/SNR (epsilon), /(SNR+1) (v_prediction), min(SNR,γ) (sample), min(SNR,γ)·σ² (flow_matching); unset = off")


def per_sample_mse(pred, target):
    return (as_float32(pred) - as_float32(target)).pow(2).flatten(1).mean(1)


def min_snr_weight(schedule, level: torch.Tensor, gamma: float) -> torch.Tensor:
    """m_i of the module docstring, per sample, for the schedule's prediction type."""
    a, s = (c.double() for c in schedule.alpha_sigma(level))
    snr = (a / s.clamp_min(1e-12)).pow(2)
    clipped = snr.clamp(max=gamma)
    kind = schedule.prediction_type
    if kind == "epsilon":
        weight = clipped / snr
    elif kind == "v_prediction":
        weight = clipped / (snr + 1.0)
    elif kind == "sample":
        weight = clipped
    else:  # flow matching: s = σ
        weight = clipped * s.pow(2)
    return weight.float()


@register_stage
class MSELoss(Stage):
    """mean squared error between the prediction and the clean-trajectory target (logged as loss/fm), optionally Min-SNR-γ weighted."""

    type = "loss.mse"
    Params = LossParams
    binds = same_names(LossParams)
    inputs = (Port("prediction", "Prediction"), Port("schedule", "Schedule", "needed by snr_gamma", optional=True))
    outputs = (Port("loss", "Loss"),)

    term: ClassVar[str] = "fm"  # the name it is logged under (loss/<term>)

    def weight(self) -> float:
        """The factor the term enters the sum with (1 here; prior preservation's term weighs prior_loss_weight)."""
        return 1.0

    def run(self, ctx, prediction: Prediction, schedule=None):
        per_sample = per_sample_mse(prediction.pred, prediction.noisy.target)
        gamma = getattr(self.params, "snr_gamma", None)  # a stage built without params is plain MSE
        if gamma is not None:
            if schedule is None:
                raise RunError(f"node {self.id!r}: snr_gamma needs the schedule input wired (schedule <- schedule.schedule)")
            per_sample = per_sample * min_snr_weight(schedule, prediction.noisy.level, gamma).to(per_sample)
        weight = prediction.noisy.cond.get("loss_weight")
        value = (per_sample * weight.to(per_sample)).mean() if weight is not None else per_sample.mean()
        return {"loss": Loss.term(self.term, value, self.weight())}


@register_stage
class SumLoss(Stage):
    """L = L_1 + L_2 + ... over the wired terms, in order; the terms keep their names (loss/<name>)."""

    type = "loss.sum"
    inputs = (Port("terms", "Loss", "the loss terms to add", many=True),)
    outputs = (Port("loss", "Loss"),)

    def run(self, ctx, terms: list[Loss]):
        if len(terms) == 1:  # the usual graph: nothing to add or to check
            return {"loss": terms[0]}
        total = terms[0].total
        for part in terms[1:]:
            total = total + part.total
        named: dict = {}
        for part in terms:
            clash = set(named) & set(part.terms)
            if clash:
                raise RunError(f"node {self.id!r}: two of its terms are both named {sorted(clash)}; give each loss stage its own name")
            named.update(part.terms)
        return {"loss": Loss(total, named)}
