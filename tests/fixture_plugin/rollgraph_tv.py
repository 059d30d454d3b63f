"""A third-party rollgraph plugin: a total-variation loss term, a stateful stand-in for the rollout stage and Heun's solver."""

from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field
from rollgraph.graph import Port, Stage
from rollgraph.stages.solvers import Solver, StepContext
from rollgraph.stages.solvers.base import stay_on_zero_length
from rollgraph.stages.types import Loss, NoisyInput, Prediction
from safetensors.torch import load_file, save_file
from torch import Tensor


class TVParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tv_weight: float = Field(0.1, ge=0, description="Weight of the total-variation term")


class TotalVariation(Stage):
    """L_tv = mean|v̂[i+1, j] - v̂[i, j]| + mean|v̂[i, j+1] - v̂[i, j]| over the prediction v̂ (logged as loss/tv)."""

    type = "tv.total_variation"
    Params = TVParams
    inputs = (Port("prediction", "Prediction"),)
    outputs = (Port("loss", "Loss"),)

    def run(self, ctx, prediction: Prediction):
        v = prediction.pred
        value = (v[..., 1:, :] - v[..., :-1, :]).abs().mean() + (v[..., 1:] - v[..., :-1]).abs().mean()
        return {"loss": Loss.term("tv", value, self.params.tv_weight)}


class JitterParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    gamma: float = Field(0.1, ge=0, description="Jitter strength")
    momentum: float = Field(0.9, ge=0, le=1, description="Momentum of the running input RMS m")


class AdaptiveJitter(Stage):
    """x̂ = x + gamma·m·xi, xi ~ N(0, I), with m ← momentum·m + (1 - momentum)·rms(x) a running RMS of the inputs.

    It holds state (m), so it has save_state / load_state: the checkpoint calls them with a folder of its own."""

    type = "tv.adaptive_jitter"
    Params = JitterParams
    inputs = (Port("noisy", "NoisyInput"), Port("model", "Model", optional=True), Port("schedule", "Schedule"))
    outputs = (Port("noisy", "NoisyInput"),)

    def __init__(self, node_id, params):
        super().__init__(node_id, params)
        self.m = torch.ones(())

    def run(self, ctx, noisy: NoisyInput, schedule, model=None):
        p = self.params
        self.m = p.momentum * self.m + (1 - p.momentum) * noisy.x.detach().float().pow(2).mean().sqrt().cpu()
        xi = torch.randn(noisy.x.shape, generator=ctx.generator(self.id)).to(noisy.x)
        every = torch.ones(len(noisy.x), dtype=torch.bool, device=noisy.x.device)
        return {"noisy": noisy.with_input(noisy.x + p.gamma * self.m.to(noisy.x) * xi, every, every.long())}

    def save_state(self, directory: Path) -> None:
        save_file({"m": self.m.contiguous()}, str(directory / "jitter.safetensors"))

    def load_state(self, directory: Path) -> None:
        self.m = load_file(str(directory / "jitter.safetensors"))["m"]


STAGES = [TotalVariation, AdaptiveJitter]


class HeunSolver(Solver):
    """Heun's second-order method (Karras et al. 2022, arXiv 2206.00364, Algorithm 1), 2 evaluations per step.

    On the probability-flow ODE dy/dt = d(y, t): flow matching t = σ, y = x, d = v̂ = ε̂ - x̂0; DDPM t = ρ = s/a,
    y = x/a, d = ε̂. With h = t1 - t0: y_e = y + h·d(y, t0), y1 = y + h/2·(d(y, t0) + d(y_e, t1)); a step that
    ends at the clean level (s = 0) stays Euler, y1 = y_e, as Algorithm 1's last step does."""

    name = "heun"
    evals_per_step = 2

    def step(self, x: Tensor, ctx: StepContext) -> Tensor:
        x0, eps = ctx.evaluate(x, ctx.level(0))
        a0, s0 = ctx.alpha_sigma(ctx.level(0))
        a1, s1 = ctx.alpha_sigma(ctx.level(1))
        x_euler = ctx.coef(a1, x) * x0 + ctx.coef(s1, x) * eps  # the Euler step, in either variable
        rows = s1 != 0
        if not bool(rows.any()):
            return stay_on_zero_length(x, x_euler, ctx)
        keep = rows.to(x.device)
        x0_e, eps_e = ctx.evaluate(x_euler[keep], ctx.level(1)[rows], subset=rows)
        x_next = x_euler.clone()
        if ctx.schedule.prediction_type == "flow_matching":
            h = ctx.coef((s1 - s0)[rows], x0_e)
            x_next[keep] = x[keep] + 0.5 * h * ((eps - x0)[keep] + eps_e - x0_e)
        else:
            h = ctx.coef((s1 / a1 - s0 / a0)[rows], x0_e)
            y = x[keep] / ctx.coef(a0[rows], x0_e)
            x_next[keep] = ctx.coef(a1[rows], x0_e) * (y + 0.5 * h * (eps[keep] + eps_e))
        return stay_on_zero_length(x, x_next, ctx)
