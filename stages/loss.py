"""The flow-matching / diffusion regression loss.

L = mean_i w_i · mean_pixels (pred_i - target_i)^2, with target the clean-trajectory target of the prediction
type (see stages/noise.py) and w_i = cond["loss_weight"][i] when the batch carries per-sample weights
(Dreambooth prior preservation: prior_loss_weight for class images), else 1. Loss stages chain: each takes the running ``Loss`` (optional) and adds its term,
so ReflexFlow's terms are separate nodes after this one.
"""

from __future__ import annotations

from rollgraph.graph import Port, Stage, register_stage
from rollgraph.stages.types import Loss, Prediction


def per_sample_mse(pred, target):
    return (pred.float() - target.float()).pow(2).flatten(1).mean(1)


@register_stage
class MSELoss(Stage):
    """mean squared error between the prediction and the clean-trajectory target (logged as loss/fm)."""

    type = "loss.mse"
    inputs = (Port("prediction", "Prediction"), Port("previous", "Loss", "running loss to add to", optional=True))
    outputs = (Port("loss", "Loss"),)

    def run(self, ctx, prediction: Prediction, previous: Loss | None = None):
        per_sample = per_sample_mse(prediction.pred, prediction.noisy.target)
        weight = prediction.noisy.cond.get("loss_weight")
        value = (per_sample * weight.to(per_sample)).mean() if weight is not None else per_sample.mean()
        loss = previous.plus("fm", value) if previous is not None else Loss(value, {"fm": value.detach()})
        return {"loss": loss}
