"""The flow-matching / diffusion regression loss.

L = mean_i w_i · mean_pixels (pred_i - target_i)^2, with target the clean-trajectory target of the prediction
type (see stages/noise.py) and w_i = cond["loss_weight"][i] when the batch carries per-sample weights
(Dreambooth prior preservation: prior_loss_weight for class images), else 1.

Losses fan in: every loss stage outputs its own (weighted) term, and ``loss.sum`` adds the list it is wired
to, L = sum_j L_j in the listed order; adding a term (``graph.extend: {"total.terms": [...]}``) never
disconnects another.
"""

from __future__ import annotations

from rollgraph.graph import Port, RunError, Stage, register_stage
from rollgraph.stages.types import Loss, Prediction


def per_sample_mse(pred, target):
    return (pred.float() - target.float()).pow(2).flatten(1).mean(1)


@register_stage
class MSELoss(Stage):
    """mean squared error between the prediction and the clean-trajectory target (logged as loss/fm)."""

    type = "loss.mse"
    inputs = (Port("prediction", "Prediction"),)
    outputs = (Port("loss", "Loss"),)

    def run(self, ctx, prediction: Prediction):
        per_sample = per_sample_mse(prediction.pred, prediction.noisy.target)
        weight = prediction.noisy.cond.get("loss_weight")
        value = (per_sample * weight.to(per_sample)).mean() if weight is not None else per_sample.mean()
        return {"loss": Loss.term("fm", value)}


@register_stage
class SumLoss(Stage):
    """L = L_1 + L_2 + ... over the wired terms, in order; the terms keep their names (loss/<name>)."""

    type = "loss.sum"
    inputs = (Port("terms", "Loss", "the loss terms to add", many=True),)
    outputs = (Port("loss", "Loss"),)

    def run(self, ctx, terms: list[Loss]):
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
