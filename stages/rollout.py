"""Scheduled sampling ("rollout"): train on inputs the current model generated itself.

Per sample i, with the noise stage's target level t_i, clean x0_i and noise eps_i:

1. rolled_i ~ Bernoulli(p(step)) and k_i ~ Uniform{0, ..., max_step_offset} (``scheduled_sampling_strategy``
   ``uniform``; ``biased_early``: k_i = round(U²·K), short rollouts more likely; ``biased_late``: k_i =
   round((1 - U²)·K), long ones; U ~ Uniform[0, 1), as SimpleTuner draws them); k_i := 0 unless rolled.
2. The source level is k_i steps of the rollout grid noisier: u_src = min(u(t_i) + k_i / N, 1) with
   N = scheduled_sampling_grid_steps and u the schedule's grid coordinate (flow: the unshifted sigma;
   DDPM: (t + 1) / T); x_src = a(src)·x0_i + s(src)·eps_i (the same eps). Near the noisiest level
   k_i is capped at ceil((1 - u(t_i))·N), the steps that fit (a clamped source would only be subdivided).
3. k_i solver steps (``scheduled_sampling_sampler``) with the current weights, without gradient, from
   the source level down to t_i, in equal steps of u; the result replaces sample i's model input.

p(step) is 0 before ``scheduled_sampling_start_step`` S; from there it is ``scheduled_sampling_probability``, or
with ``scheduled_sampling_ramp_steps`` R > 0 a ramp from prob_start to prob_end over R steps: with
f = min((step - S)/R, 1), p = prob_start + (prob_end - prob_start)·r(f), r(f) = f (``linear``) or
(1 - cos(pi·f))/2 (``cosine``). max_step_offset = 0 or p = 0 leaves every input untouched (bit-identical
teacher forcing).

The target (``scheduled_sampling_target``). The rollout moves sample i's input from the teacher-forcing point
x_i = a·x0_i + s·eps_i to x̂_i = x_i + e_i (e_i the rollout's error; a, s at the target level t_i).

* ``clean`` (the seed's, default): keep the clean-trajectory target (flow eps - x0, epsilon eps, v a·eps - s·x0,
  sample x0). Even an exact model and solver do not bring x̂ back to x (the ODE transports the marginal, it
  re-pairs samples), so regressing this target at x̂ pulls an exact model off the true field.
* ``corrected``: the target that maps x̂ back to the same x0: write x̂ = a·x0 + s·eps*, so eps* = eps + e/s, and
  put eps* into the prediction type's target. Flow: v* = eps* - x0 = (x̂ - x0)/s = v + e/s (the direction
  ReflexFlow's ADR pushes toward); epsilon: eps* = eps + e/s; v_prediction: v* = a·eps* - s·x0 = v + a·e/s;
  sample: x0 (already the error-correcting target: unchanged). e/s blows up as s -> 0 (an audit measured a
  target RMS of 4·10³ and ×3 worse FD unfloored), so s is floored: the correction is c·e/max(s, s_min) with
  c = 1 (flow, epsilon), a (v_prediction), 0 (sample) and s_min = ``scheduled_sampling_target_min_sigma``
  (s is the noise coefficient: sigma for flow matching, sqrt(1 - alpha_bar) for DDPM). Neither target has the
  true field as its fixed point; only the quality benchmark can say which helps (README, "Does rollout help?").

Logged per step for rolled samples: ``rollout/target_rms`` (the RMS of the target they are trained on: a
blow-up shows here) and ``rollout/drift`` (RMS of e/s, how far the rollout landed from the teacher-forcing
point in units of the level's noise; 0.3–2 is typical even for an exact model).

Batched: at rollout step j only the samples with k_i > j go through the model, in one call, so the
rollout costs sum_i k_i × (evaluations per solver step) sample-forwards. While it runs, the denoiser is put
in eval mode (dropout, including LoRA dropout, is off, as at inference) and restored afterwards; LoRA
adapters stay active, so the rollout shows the errors of the model being trained.

Scheduled sampling: Bengio et al. 2015 (arXiv 1506.03099); for diffusion, e.g. Ning et al. 2023
(arXiv 2308.15321) and Li et al. 2024; this stage follows ``seed/scheduled_sampling.md``.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from rollgraph.graph import Port, Stage, register_stage, same_names
from rollgraph.stages.predict import model_fn_for
from rollgraph.stages.registered_name import SolverName
from rollgraph.stages.schedule import FLOW
from rollgraph.stages.solvers import get_solver, order_issue, solve
from rollgraph.stages.types import NoisyInput


class RolloutProbabilityParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    section: ClassVar[str] = "Scheduled sampling (rollout)"

    scheduled_sampling_probability: float = Field(0.0, ge=0, le=1, description="Chance that a batch item is rolled out (when no ramp is set)")
    scheduled_sampling_ramp_steps: int = Field(0, ge=0, description="If > 0, p ramps linearly from prob_start to prob_end over this many global steps (a warm-up)")
    scheduled_sampling_prob_start: float = Field(0.0, ge=0, le=1, description="Ramp start probability (0.0 is honoured)")
    scheduled_sampling_prob_end: float = Field(0.5, ge=0, le=1, description="Ramp end probability")
    scheduled_sampling_start_step: int = Field(0, ge=0, description="Global step before which nothing is rolled out (p = 0); the ramp starts here")
    scheduled_sampling_ramp_shape: Literal["linear", "cosine"] = Field("linear", description="Ramp shape: linear, or cosine (1 - cos(pi·f))/2, slow at both ends")


class RolloutParams(RolloutProbabilityParams):
    scheduled_sampling_max_step_offset: int = Field(0, ge=0, le=1000, description="Max rollout length k (uniform in 0..max); 0 disables rollout. Costs up to this many extra forward passes per step")
    scheduled_sampling_sampler: SolverName = Field("unipc", description="Solver for the rollout steps (rk4 costs 4 evaluations per step)")
    scheduled_sampling_grid_steps: int = Field(20, ge=1, le=100000, description="The grid a rollout step is measured on: N steps over the whole schedule (N = num_train_timesteps: one training step, as SimpleTuner; 20–50: one inference step)")
    scheduled_sampling_strategy: Literal["uniform", "biased_early", "biased_late"] = Field("uniform", description="Distribution of the rollout length k: uniform in 0..max, biased_early (round(U²·max): short rollouts), biased_late (round((1-U²)·max): long ones)")
    scheduled_sampling_target: Literal["clean", "corrected"] = Field("clean", description="Training target of rolled-out samples: clean (the clean-trajectory target, the seed's) or corrected (maps the rolled-out input back to its x0: v + e/max(σ, σ_min) for flow)")
    scheduled_sampling_target_min_sigma: float = Field(0.2, ge=0, le=1, description="Floor σ_min of the noise level in the corrected target's e/σ (unfloored it blows up near clean data)")
    scheduled_sampling_order: int | None = Field(None, ge=1, le=3, description="Solver order for unipc / dpm (1–3; unset: 2), SimpleTuner's key; euler and rk4 have fixed orders")
    scheduled_sampling_batching: Literal["shrinking", "balanced"] = Field("shrinking", description="Which samples share a rollout model call: shrinking (step j: the samples with k > j; fastest where a call costs a fixed part plus a per-sample part, as on a CPU: bench/rollout_cost.py) or balanced (every call ≈ Σk/max k samples: for a device where a call's cost grows faster than its batch); same results")

    @model_validator(mode="after")
    def _solver_order(self):
        issue = order_issue(self.scheduled_sampling_sampler, self.scheduled_sampling_order)
        if issue:
            raise ValueError(issue)
        return self


def rollout_probability(p: RolloutProbabilityParams, step: int) -> float:
    """p(step): 0 before start_step, then the constant probability or the linear / cosine ramp (module docstring)."""
    if step < p.scheduled_sampling_start_step:
        return 0.0
    if p.scheduled_sampling_ramp_steps > 0:
        frac = min((step - p.scheduled_sampling_start_step) / p.scheduled_sampling_ramp_steps, 1.0)
        if p.scheduled_sampling_ramp_shape == "cosine":
            frac = (1.0 - math.cos(math.pi * frac)) / 2.0
        return p.scheduled_sampling_prob_start + (p.scheduled_sampling_prob_end - p.scheduled_sampling_prob_start) * frac
    return p.scheduled_sampling_probability


def rollout_lengths(strategy: str, max_offset: int, n: int, generator: torch.Generator) -> torch.Tensor:
    """k ~ the strategy's distribution on {0, ..., max_offset}, n draws (module docstring)."""
    if strategy == "uniform":
        return torch.randint(0, max_offset + 1, (n,), generator=generator)
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    shaped = u.pow(2) if strategy == "biased_early" else 1.0 - u.pow(2)
    return torch.round(shaped * max_offset).long()


def corrected_target(schedule, noisy: NoisyInput, x: torch.Tensor, min_sigma: float) -> torch.Tensor:
    """target + c·e/max(s, s_min) with e = x - x_clean (module docstring); c = 1, 1, a, 0 for flow, epsilon, v, sample."""
    a, s = schedule.alpha_sigma(noisy.level.to(torch.float32))
    shape = (-1, *[1] * (x.dim() - 1))
    kind = schedule.prediction_type
    slope = a if kind == "v_prediction" else torch.ones_like(s) if kind in (FLOW, "epsilon") else torch.zeros_like(s)
    scale = (slope / s.clamp_min(max(min_sigma, 1e-6))).reshape(shape).to(x.device, x.dtype)
    return noisy.target + scale * (x - noisy.x_clean)


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
        k = rollout_lengths(p.scheduled_sampling_strategy, p.scheduled_sampling_max_step_offset, n_global, g)[mine] * rolled
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
            solver = get_solver(p.scheduled_sampling_sampler, p.scheduled_sampling_order)
            result = solve(fn, x_src, path, k, schedule, solver, p.scheduled_sampling_batching)
        moved = (k > 0).reshape(-1, *[1] * (noisy.x.dim() - 1))
        x = torch.where(moved, result.x.to(noisy.x.dtype), noisy.x)
        ctx.log("rollout/model_evals", result.model_evals, reduce="sum")
        out = noisy.with_input(x, k > 0, k)
        if p.scheduled_sampling_target == "corrected":
            out.target = torch.where(moved, corrected_target(schedule, noisy, x, p.scheduled_sampling_target_min_sigma), noisy.target)
        self._log_target(ctx, schedule, out, k > 0)
        return {"noisy": out}

    @staticmethod
    def _log_target(ctx, schedule, noisy: NoisyInput, rolled: torch.Tensor) -> None:
        _, s = schedule.alpha_sigma(noisy.level[rolled].to(torch.float32))
        error = (noisy.x[rolled] - noisy.x_clean[rolled]).flatten(1).float() / s.clamp_min(1e-6).reshape(-1, 1).to(noisy.x.device)
        ctx.log("rollout/drift", error.pow(2).mean().sqrt())
        ctx.log("rollout/target_rms", noisy.target[rolled].float().pow(2).mean().sqrt())


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
