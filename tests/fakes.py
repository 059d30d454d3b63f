"""Test doubles: a model adapter around any function, and an oracle for point-mass data."""

from __future__ import annotations

import torch
from rollgraph.stages.models.base import ModelAdapter
from rollgraph.stages.types import NoisyInput


class FnModule(torch.nn.Module):
    """Calls fn(x, timestep, class_labels); records the batch size of every call."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn
        self.calls: list[int] = []
        self.weight = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x, timestep, labels=None):
        self.calls.append(len(x))
        return self.fn(x, timestep, labels) + 0.0 * self.weight


class FnModel(ModelAdapter):
    family = "test-fn"

    def forward(self, module, x, timestep, cond):
        return module(x, timestep, cond.get("class_labels"))

    def sample_shape(self):
        return (1, 4, 4)


def oracle_for_constant(schedule, c: float):
    """The exact prediction when every x0 equals the constant c (the ODE then has a closed form)."""

    def fn(x, timestep, labels):
        level = timestep / schedule.num_train_timesteps if schedule.prediction_type == "flow_matching" else timestep
        a, s = schedule.alpha_sigma(level)
        a = a.reshape(-1, *[1] * (x.dim() - 1)).to(x.dtype)
        s = s.reshape(-1, *[1] * (x.dim() - 1)).to(x.dtype)
        x0 = torch.full_like(x, c)
        eps = (x - a * x0) / s
        return schedule.target(x0, eps, level.to(x.dtype))

    return fn


def noisy_batch(schedule, n=6, shape=(1, 4, 4), seed=0, x0_value=None, levels=None) -> NoisyInput:
    g = torch.Generator().manual_seed(seed)
    x0 = torch.full((n, *shape), float(x0_value)) if x0_value is not None else torch.randn(n, *shape, generator=g)
    noise = torch.randn(n, *shape, generator=g)
    if levels is None:
        levels = schedule.sample_training_levels(n, g)
    x = schedule.add_noise(x0, noise, levels)
    return NoisyInput(x=x, x_clean=x, level=levels, x0=x0, noise=noise, target=schedule.target(x0, noise, levels),
                      cond={"class_labels": torch.arange(n) % 3})
