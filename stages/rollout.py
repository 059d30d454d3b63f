"""Scheduled sampling ("rollout"): train on inputs the current model generated itself.

Per sample i, with the noise stage's target level t_i, clean x0_i and noise eps_i:

1. rolled_i ~ Bernoulli(p(step)) and k_i ~ Uniform{0, ..., max_step_offset}; k_i := 0 unless rolled.
2. The source level is k_i steps of the rollout grid noisier: u_src = min(u(t_i) + k_i / N, 1) with
   N = scheduled_sampling_grid_steps and u the schedule's grid coordinate (flow: the unshifted sigma;
   DDPM: (t + 1) / T); x_src = a(src)·x0_i + s(src)·eps_i (the same eps). Near the noisiest level
   k_i is capped at ceil((1 - u(t_i))·N), the steps that fit (a clamped source would only be subdivided).
3. k_i solver steps (``scheduled_sampling_sampler``) with the current weights, without gradient, from
   the source level down to t_i, in equal steps of u; the result replaces sample i's model input.

The target stays the clean-trajectory target. p(step) is ``scheduled_sampling_probability``, or with
``scheduled_sampling_ramp_steps`` R > 0 the linear ramp prob_start + (prob_end - prob_start)·min(step/R, 1).
max_step_offset = 0 or p = 0 leaves every input untouched (bit-identical teacher forcing).

Batched: at rollout step j only the samples with k_i > j go through the model, in one call, so the
rollout costs sum_i k_i × (evaluations per solver step) sample-forwards. While it runs, the denoiser is put
in eval mode (dropout, including LoRA dropout, is off, as at inference) and restored afterwards; LoRA
adapters stay active, so the rollout shows the errors of the model being trained.

Scheduled sampling: Bengio et al. 2015 (arXiv 1506.03099); for diffusion, e.g. Ning et al. 2023
(arXiv 2308.15321) and Li et al. 2024; this stage follows ``seed/scheduled_sampling.md``.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from rollgraph.graph import Port, Stage, register_stage, same_names
from rollgraph.stages.predict import model_fn_for
from rollgraph.stages.solvers import solve
from rollgraph.stages.types import NoisyInput


class RolloutProbabilityParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    section: ClassVar[str] = "Scheduled sampling (rollout)"

    scheduled_sampling_probability: float = Field(0.0, ge=0, le=1, description="Chance that a batch item is rolled out (when no ramp is set)")
    scheduled_sampling_ramp_steps: int = Field(0, ge=0, description="If > 0, p ramps linearly from prob_start to prob_end over this many global steps (a warm-up)")
    scheduled_sampling_prob_start: float = Field(0.0, ge=0, le=1, description="Ramp start probability (0.0 is honoured)")
    scheduled_sampling_prob_end: float = Field(0.5, ge=0, le=1, description="Ramp end probability")


class RolloutParams(RolloutProbabilityParams):
    scheduled_sampling_max_step_offset: int = Field(0, ge=0, le=1000, description="Max rollout length k (uniform in 0..max); 0 disables rollout. Costs up to this many extra forward passes per step")
    scheduled_sampling_sampler: Literal["unipc", "euler", "dpm", "rk4"] = Field("unipc", description="Solver for the rollout steps (rk4 costs 4 evaluations per step)")
    scheduled_sampling_grid_steps: int = Field(20, ge=1, le=100000, description="The grid a rollout step is measured on: N steps over the whole schedule (N = num_train_timesteps: one training step, as SimpleTuner; 20–50: one inference step)")


def rollout_probability(p: RolloutProbabilityParams, step: int) -> float:
    if p.scheduled_sampling_ramp_steps > 0:
        frac = min(step / p.scheduled_sampling_ramp_steps, 1.0)
        return p.scheduled_sampling_prob_start + (p.scheduled_sampling_prob_end - p.scheduled_sampling_prob_start) * frac
    return p.scheduled_sampling_probability


def steps_available(schedule, level: torch.Tensor, grid_steps: int) -> torch.Tensor:
    """How many grid steps fit above each level: ceil((1 - u)·N). Near the noisiest level the source is
    clamped, so more steps would only subdivide (or, at u = 1, repeat) the same interval."""
    u = schedule.grid_coordinate(level.double().cpu())
    return torch.ceil((1.0 - u) * grid_steps - 1e-6).clamp_min(0).long()


@contextmanager
def eval_mode(module: torch.nn.Module):
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


@register_stage
class ScheduledSamplingRollout(Stage):
    """Replace rolled-out samples' inputs with k solver steps of the current model from a noisier level."""

    type = "rollout.scheduled_sampling"
    Params = RolloutParams
    binds = same_names(RolloutParams)
    inputs = (Port("noisy", "NoisyInput"), Port("model", "Model"), Port("schedule", "Schedule"))
    outputs = (Port("noisy", "NoisyInput"),)

    def run(self, ctx, noisy: NoisyInput, model, schedule):
        p: RolloutParams = self.params
        n = len(noisy.x)
        prob = rollout_probability(p, ctx.step)
        g, mine, n_global = ctx.batch_generator(self.id), ctx.local_slice(n), n * ctx.world_size
        rolled = torch.rand(n_global, generator=g)[mine] < prob
        k = torch.randint(0, p.scheduled_sampling_max_step_offset + 1, (n_global,), generator=g)[mine] * rolled
        k = torch.minimum(k, steps_available(schedule, noisy.level, p.scheduled_sampling_grid_steps))
        ctx.log("rollout/p", prob)
        active = int((k > 0).sum())
        ctx.log("rollout/samples", active, reduce="sum")
        if active == 0:
            ctx.log("rollout/model_evals", 0, reduce="sum")
            return {"noisy": noisy.with_input(noisy.x, torch.zeros_like(rolled).to(noisy.x.device), k.to(noisy.x.device))}
        k = k.to(noisy.x.device)
        path = schedule.rollout_path(noisy.level, k, p.scheduled_sampling_grid_steps)
        x_src = schedule.add_noise(noisy.x0, noisy.noise, path[:, 0])
        fn = model_fn_for(model, schedule, noisy.cond, ctx.autocast)
        with eval_mode(model.raw_module):
            result = solve(fn, x_src, path, k, schedule, p.scheduled_sampling_sampler)
        x = torch.where((k > 0).reshape(-1, *[1] * (noisy.x.dim() - 1)), result.x.to(noisy.x.dtype), noisy.x)
        ctx.log("rollout/model_evals", result.model_evals, reduce="sum")
        return {"noisy": noisy.with_input(x, k > 0, k)}


class InputPerturbationParams(RolloutProbabilityParams):
    input_perturbation_gamma: float = Field(0.1, ge=0, le=10, description="Perturbation strength gamma")


class InputPerturbationKeys(BaseModel):
    model_config = ConfigDict(extra="forbid")
    section: ClassVar[str] = "Input perturbation (DDPM-IP)"

    ip_noise_gamma: float = Field(0.0, ge=0, le=10, description="DDPM-IP input perturbation (kohya's name; Ning et al. 2023, arXiv 2301.11706): > 0 trains every sample on a·x0 + s·(eps + gamma·xi) against the clean target. Replaces the model input like a rollout, so it cannot be combined with scheduled sampling")


@register_stage
class InputPerturbationRollout(Stage):
    """Input perturbation (Ning et al. 2023, arXiv 2301.11706), a model-free stand-in for a rollout.

    With probability p(step) a sample's input becomes x = a(t)·x0 + s(t)·(eps + gamma·xi), xi ~ N(0, I),
    simulating a prediction error; the target stays the clean one (built from eps). No model evaluations.
    """

    type = "rollout.input_perturbation"
    Params = InputPerturbationParams
    binds = {**same_names(RolloutProbabilityParams), "input_perturbation_gamma": "ip_noise_gamma"}
    inputs = (Port("noisy", "NoisyInput"), Port("model", "Model", optional=True), Port("schedule", "Schedule"))
    outputs = (Port("noisy", "NoisyInput"),)

    def run(self, ctx, noisy: NoisyInput, schedule, model=None):
        p: InputPerturbationParams = self.params
        prob = rollout_probability(p, ctx.step)
        n = len(noisy.x)
        g, mine, n_global = ctx.batch_generator(self.id), ctx.local_slice(n), n * ctx.world_size
        rolled = (torch.rand(n_global, generator=g)[mine] < prob).to(noisy.x.device)
        xi = torch.randn((n_global, *noisy.x.shape[1:]), generator=g)[mine].to(noisy.x.device, noisy.x.dtype)
        perturbed = schedule.add_noise(noisy.x0, noisy.noise + p.input_perturbation_gamma * xi, noisy.level)
        x = torch.where(rolled.reshape(-1, *[1] * (noisy.x.dim() - 1)), perturbed, noisy.x)
        ctx.log("rollout/p", prob)
        ctx.log("rollout/samples", int(rolled.sum()), reduce="sum")
        ctx.log("rollout/model_evals", 0, reduce="sum")
        return {"noisy": noisy.with_input(x, rolled, rolled.long())}
