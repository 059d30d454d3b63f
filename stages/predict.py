"""Model setup and the prediction stage.

predict: pred = f_theta(x, timestep(level), cond), with gradient, in the schedule's prediction type.
"""

from __future__ import annotations

import torch
from rollgraph.graph import ConfigError, Issue, Port, Stage, register_stage, same_names
from rollgraph.stages.models import ModelParams, get_family
from rollgraph.stages.models.lora import LoraParams
from rollgraph.stages.noise import ScheduleParams
from rollgraph.stages.stage_params import pick
from rollgraph.stages.types import NoisyInput, Prediction, as_float32

ModelStageParams = pick("ModelStageParams", "model.load's params: the model keys, LoRA, and the prediction type "
                        "(checked against the model folder).", (ModelParams, LoraParams, ScheduleParams),
                        (*ModelParams.model_fields, *LoraParams.model_fields, "prediction_type"))


def model_params(cfg) -> ModelStageParams:
    return ModelStageParams(**{k: getattr(cfg, k) for k in ModelStageParams.model_fields})


@register_stage
class LoadModel(Stage):
    """Build or load the denoiser through its family adapter (LoRA or full) and move it to the device (setup)."""

    type = "model.load"
    phase = "setup"
    Params = ModelStageParams
    binds = same_names(ModelStageParams)
    inputs = (Port("data", "DataSource", "used to infer channels, size and classes (and, for text-to-image "
                                         "families, the latent size and validation prompts)", optional=True),)
    outputs = (Port("model", "Model"),)

    def run(self, ctx, data=None):
        if getattr(self.params, "train_text_encoder", False) and ctx.world_size > 1:  # its LoRA is outside the DDP wrapper
            raise ConfigError([Issue("train_text_encoder", "trains in one process only for now (its gradients would not "
                                                           f"be averaged over the {ctx.world_size} processes)")])
        if self.params.base_model_precision != "auto":
            from rollgraph.stages.models.quantize import check_device

            check_device(self.params.base_model_precision, ctx.device, ctx.autocast_dtype)
        adapter = get_family(self.params.model_family).build(self.params, data)
        adapter.place(ctx.device, ctx.autocast_dtype)
        adapter.raw_module.train()
        return {"model": adapter}


@register_stage
class Predict(Stage):
    """Run the model on the (possibly rolled-out) input, with gradient."""

    type = "predict.model"
    inputs = (Port("noisy", "NoisyInput"), Port("model", "Model"), Port("schedule", "Schedule"))
    outputs = (Port("prediction", "Prediction"),)

    def run(self, ctx, noisy: NoisyInput, model, schedule):
        with ctx.autocast():
            pred = model(noisy.x, schedule.model_timestep(noisy.level), noisy.cond)
        return {"prediction": Prediction(pred=as_float32(pred), noisy=noisy)}


def model_fn_for(model, schedule, cond, autocast):
    """A solver model_fn (x_sub, level_sub, idx) -> prediction, evaluating each sample with its own cond."""
    from rollgraph.stages.types import index_cond

    def fn(x, level, idx):
        with torch.no_grad(), autocast():
            return model.no_grad_call(x, schedule.model_timestep(level), index_cond(cond, idx)).float()

    return fn
