"""A third-party rollgraph plugin: a total-variation loss term and a stateful stand-in for the rollout stage."""

from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field
from rollgraph.graph import Port, Stage
from rollgraph.stages.types import Loss, NoisyInput, Prediction
from safetensors.torch import load_file, save_file


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
