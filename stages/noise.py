"""The noise schedule (setup) and the forward-noising stage (step).

Forward noising, per sample i: draw a level t_i (uniform or logit-normal in the grid coordinate u,
then mapped by the schedule, with the flow shift sigma' = s·u / (1 + (s - 1)·u)), noise eps_i ~ N(0, I), and
x_i = a(t_i)·x0_i + s(t_i)·eps_i. The target is the clean-trajectory target of the prediction type
(flow: eps - x0; epsilon: eps; v_prediction: a·eps - s·x0; sample: x0).

Offset noise (``noise_offset`` = c, N. Guttenberg, Crosslabs 2023, "Diffusion with offset noise"):
eps_i = n_i + c·m_i with n_i ~ N(0, I) per pixel and m_i ~ N(0, I) of shape (channels, 1, 1), one value per
sample and channel broadcast over the pixels. Noise with a non-zero channel mean lets the model move an
image's mean brightness, which plain per-pixel noise almost never asks of it. The target uses this eps.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from rollgraph.graph import Port, Stage, register_stage, same_names
from rollgraph.stages.schedule import make_schedule
from rollgraph.stages.types import Batch, NoisyInput


class ScheduleParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    section: ClassVar[str] = "Noise schedule"

    prediction_type: Literal["flow_matching", "epsilon", "v_prediction", "sample"] = Field(
        "flow_matching", description="flow_matching selects the flow branch (x = (1-σ)x0 + σε, target ε - x0); the others are DDPM parameterisations")
    num_train_timesteps: int = Field(1000, ge=2, le=100000, description="Length of the training schedule (model timestep scale)")
    flow_schedule_shift: float = Field(1.0, gt=0, le=100, description="Flow timestep shift s: σ' = sσ/(1+(s-1)σ) (SD3 uses 3.0)")
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = Field("scaled_linear", description="DDPM beta schedule")
    beta_start: float = Field(0.00085, gt=0, lt=1, description="DDPM first beta")
    beta_end: float = Field(0.012, gt=0, lt=1, description="DDPM last beta")


class NoiseParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    section: ClassVar[str] = "Noise schedule"

    timestep_sampling: Literal["uniform", "logit_normal"] = Field("logit_normal", description="How training levels are drawn (in the grid coordinate u, before the shift)")
    logit_mean: float = Field(0.0, ge=-10, le=10, description="Mean of the logit-normal level distribution")
    logit_std: float = Field(1.0, gt=0, le=10, description="Std of the logit-normal level distribution")
    noise_offset: float = Field(0.0, ge=0, le=1, description="Offset noise (Crosslabs 2023): ε ← ε + noise_offset·m with one m ~ N(0,1) per sample and channel, so the model learns to change mean brightness; the paper's value 0.1; 0 = off")


@register_stage
class BuildSchedule(Stage):
    """Build the noise schedule for the configured prediction type (setup)."""

    type = "noise.schedule"
    phase = "setup"
    Params = ScheduleParams
    binds = same_names(ScheduleParams)
    outputs = (Port("schedule", "Schedule"),)

    def run(self, ctx, **_):
        p: ScheduleParams = self.params
        return {"schedule": make_schedule(p.prediction_type, p.num_train_timesteps, p.flow_schedule_shift,
                                          p.beta_schedule, p.beta_start, p.beta_end)}


@register_stage
class ForwardNoise(Stage):
    """x_t = a(t)·x0 + s(t)·eps with a freshly drawn level t and noise eps per sample (teacher forcing)."""

    type = "noise.forward"
    Params = NoiseParams
    binds = same_names(NoiseParams)
    inputs = (Port("batch", "Batch"), Port("schedule", "Schedule"))
    outputs = (Port("noisy", "NoisyInput"),)

    def run(self, ctx, batch: Batch, schedule):
        p: NoiseParams = self.params
        # drawn for the whole global batch, this rank keeps its slice: layout-independent (RunContext.batch_generator)
        g, n_global = ctx.batch_generator(self.id), len(batch) * ctx.world_size
        level = schedule.sample_training_levels(n_global, g, p.timestep_sampling, p.logit_mean, p.logit_std)
        noise = torch.randn((n_global, *batch.x0.shape[1:]), generator=g)
        if p.noise_offset > 0:  # drawn after ε, so noise_offset = 0 leaves every earlier draw as it was
            noise = noise + p.noise_offset * torch.randn((n_global, noise.shape[1], *[1] * (noise.dim() - 2)), generator=g)
        if ctx.world_size > 1:
            mine = ctx.local_slice(len(batch))
            level, noise = level[mine], noise[mine]
        level, noise = ctx.move(level), ctx.move(noise, batch.x0.dtype)
        x = schedule.add_noise(batch.x0, noise, level)
        return {"noisy": NoisyInput(x=x, x_clean=x, level=level, x0=batch.x0, noise=noise,
                                    target=schedule.target(batch.x0, noise, level), cond=batch.cond)}
