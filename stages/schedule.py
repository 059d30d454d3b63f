"""Noise schedules: how a clean sample x0 and noise eps mix at a noise *level*, per sample.

Every schedule writes the noisy sample as x = a(level)·x0 + s(level)·eps and converts any model
prediction to (x0, eps), so the solvers and the rollout are written once for every prediction type.

* Flow matching (diffusers' convention, Lipman et al. 2023 / Esser et al. 2024): level = sigma in [0, 1],
  a = 1 - sigma, s = sigma, target velocity v = eps - x0; the model sees timestep sigma·T.
  Timestep shift (SD3): sigma' = shift·u / (1 + (shift - 1)·u) for u in [0, 1].
* DDPM family (Ho et al. 2020): level = t in {0 .. T-1} (fractional t interpolates alpha_bar linearly);
  a = sqrt(alpha_bar_t), s = sqrt(1 - alpha_bar_t); prediction_type epsilon, v_prediction
  (v = a·eps - s·x0, Salimans & Ho 2022) or sample (x0). The level -1 means clean data (a = 1, s = 0),
  used as the final level of a sampling path.

The rollout measures its steps on an explicit *grid* of ``grid_steps`` steps over the whole schedule
(see ``rollout_path``): one step moves the grid coordinate u by 1/grid_steps.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
from torch import Tensor

FLOW = "flow_matching"
DDPM_TYPES = ("epsilon", "v_prediction", "sample")
PREDICTION_TYPES = (FLOW, *DDPM_TYPES)


class Schedule(ABC):
    """Base class; see the module docstring for the conventions."""

    prediction_type: str
    num_train_timesteps: int
    clean_level: float

    # -- mixing -------------------------------------------------------------------------------
    @abstractmethod
    def alpha_sigma(self, level: Tensor) -> tuple[Tensor, Tensor]:
        """(a, s) with x = a·x0 + s·eps at each level."""

    @abstractmethod
    def model_timestep(self, level: Tensor) -> Tensor:
        """The timestep value the denoiser is conditioned on."""

    def add_noise(self, x0: Tensor, eps: Tensor, level: Tensor) -> Tensor:
        a, s = self.alpha_sigma(level)
        return _bc(a, x0) * x0 + _bc(s, x0) * eps

    def to_x0_eps(self, pred: Tensor, x: Tensor, level: Tensor) -> tuple[Tensor, Tensor]:
        """Convert a prediction (of this schedule's prediction_type) at x to (x0, eps)."""
        a, s = (_bc(c, x) for c in self.alpha_sigma(level))
        kind = self.prediction_type
        if kind == FLOW:  # v = eps - x0, x = (1-s) x0 + s eps
            return x - s * pred, x + a * pred
        if kind == "epsilon":
            return (x - s * pred) / a.clamp_min(1e-8), pred
        if kind == "v_prediction":  # v = a eps - s x0, a^2 + s^2 = 1
            return a * x - s * pred, s * x + a * pred
        if kind == "sample":
            return pred, (x - a * pred) / s.clamp_min(1e-8)
        raise ValueError(kind)

    def target(self, x0: Tensor, eps: Tensor, level: Tensor) -> Tensor:
        """The clean-trajectory training target for this prediction type."""
        kind = self.prediction_type
        if kind == FLOW:
            return eps - x0
        if kind == "epsilon":
            return eps
        if kind == "sample":
            return x0
        a, s = (_bc(c, x0) for c in self.alpha_sigma(level))
        return a * eps - s * x0

    # -- levels -------------------------------------------------------------------------------
    @abstractmethod
    def grid_coordinate(self, level: Tensor) -> Tensor:
        """Map a level to u in [0, 1] (0 clean, 1 noisiest) on which grids are uniform."""

    @abstractmethod
    def level_at(self, u: Tensor) -> Tensor:
        """Inverse of grid_coordinate."""

    def sample_training_levels(self, n: int, generator: torch.Generator, method: str = "uniform",
                               logit_mean: float = 0.0, logit_std: float = 1.0) -> Tensor:
        """Draw n training levels: u uniform, or logit-normal u = sigmoid(N(mean, std)); mapped by level_at."""
        if method == "uniform":
            u = torch.rand(n, generator=generator, dtype=torch.float64)
        elif method == "logit_normal":
            z = torch.randn(n, generator=generator, dtype=torch.float64)
            if logit_mean != 0.0 or logit_std != 1.0:  # 0 + 1·z is z: two tensor ops saved per step, same bits
                z = logit_mean + logit_std * z
            u = torch.sigmoid(z)
        else:
            raise ValueError(f"unknown timestep sampling {method!r}")
        return self._training_level(u)

    def _training_level(self, u: Tensor) -> Tensor:
        return self.level_at(u).float()

    def sampling_levels(self, num_steps: int) -> Tensor:
        """The inference path: num_steps + 1 levels from the noisiest to clean (u = 1 - j/num_steps)."""
        u = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)
        levels = self.level_at(u)
        levels[-1] = self.clean_level
        return levels.float()

    def rollout_path(self, target: Tensor, k: Tensor, grid_steps: int) -> Tensor:
        """Per-sample rollout paths, shape (B, max k + 1).

        Sample i starts at the level k_i grid steps noisier than its target (u_src = min(u_t + k_i/N, 1))
        and takes k_i equal steps in u down to the target; path[i, k_i] == target[i] exactly, and
        entries past k_i repeat the target (they are never used).
        """
        k = k.long()
        kmax = int(k.max()) if k.numel() else 0
        u_t = self.grid_coordinate(target.double())
        u_src = (u_t + k.double() / grid_steps).clamp(max=1.0)
        j = torch.arange(kmax + 1, dtype=torch.float64, device=target.device)
        frac = (j[None, :] / k.clamp_min(1).double()[:, None]).clamp(max=1.0)
        u = u_src[:, None] - frac * (u_src - u_t)[:, None]
        path = self.level_at(u).to(target.dtype)
        path[torch.arange(len(k)), k] = target  # exact target level despite round-off
        return torch.where(j[None, :] >= k[:, None], target[:, None], path)

    @abstractmethod
    def level_from_lambda(self, lam: Tensor) -> Tensor:
        """Invert the log signal-to-noise ratio lambda = log(a / s)."""

    def lambda_(self, level: Tensor) -> Tensor:
        a, s = self.alpha_sigma(level)
        return torch.log(a) - torch.log(s)


class FlowMatchingSchedule(Schedule):
    def __init__(self, num_train_timesteps: int = 1000, shift: float = 1.0):
        self.prediction_type = FLOW
        self.num_train_timesteps = num_train_timesteps
        self.shift = float(shift)
        self.clean_level = 0.0

    def alpha_sigma(self, level):
        return 1.0 - level, level

    def add_noise(self, x0, eps, level):
        if not isinstance(level, Tensor) or level.dtype != x0.dtype:  # 1 - s must round as the base rounds it
            return super().add_noise(x0, eps, level)
        s = _bc(level, x0)  # the base's arithmetic with s broadcast once: one tensor op fewer per step
        return (1.0 - s) * x0 + s * eps

    def model_timestep(self, level):
        return level * self.num_train_timesteps

    # With shift 1 both maps are the identity, exactly (1·u / (1 + 0·u) == u in floating point): a copy is
    # returned, without the four tensor ops, which are a visible part of a small model's step.
    def grid_coordinate(self, level):
        s = self.shift
        if s == 1.0:
            return level.clone()
        return level / (s - (s - 1.0) * level)

    def level_at(self, u):
        s = self.shift
        if s == 1.0:
            return u.clone()
        return s * u / (1.0 + (s - 1.0) * u)

    def _training_level(self, u):
        return (u if self.shift == 1.0 else self.level_at(u)).float()  # .float() copies the float64 u

    def level_from_lambda(self, lam):
        return torch.sigmoid(-lam)


class DDPMSchedule(Schedule):
    """Discrete DDPM schedule with diffusers' beta schedules (linear, scaled_linear, squaredcos_cap_v2)."""

    def __init__(self, prediction_type: str = "epsilon", num_train_timesteps: int = 1000,
                 beta_schedule: str = "scaled_linear", beta_start: float = 0.00085, beta_end: float = 0.012):
        if prediction_type not in DDPM_TYPES:
            raise ValueError(f"DDPM prediction_type must be one of {DDPM_TYPES}, got {prediction_type!r}")
        self.prediction_type = prediction_type
        self.num_train_timesteps = T = num_train_timesteps
        self.clean_level = -1.0
        if beta_schedule == "linear":
            betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
        elif beta_schedule == "scaled_linear":
            betas = torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float64) ** 2
        elif beta_schedule == "squaredcos_cap_v2":
            def f(t):
                return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
            betas = torch.tensor([min(1 - f((i + 1) / T) / f(i / T), 0.999) for i in range(T)], dtype=torch.float64)
        else:
            raise ValueError(f"unknown beta_schedule {beta_schedule!r}")
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        # index 0 is the clean level -1 (alpha_bar = 1); index t + 1 is timestep t
        self._table = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod])

    def alpha_bar(self, level: Tensor) -> Tensor:
        table = self._table.to(level.device)
        pos = (level.double() + 1.0).clamp(0, len(table) - 1)
        lo = pos.floor().long().clamp(max=len(table) - 2)
        w = pos - lo
        ab = table[lo] * (1 - w) + table[lo + 1] * w
        return ab.to(level.dtype if level.is_floating_point() else torch.float32)

    def alpha_sigma(self, level):
        ab = self.alpha_bar(level)
        return ab.sqrt(), (1.0 - ab).clamp_min(0).sqrt()

    def model_timestep(self, level):
        return level

    def grid_coordinate(self, level):
        return (level + 1.0) / self.num_train_timesteps

    def level_at(self, u):
        return u * self.num_train_timesteps - 1.0

    def _training_level(self, u):
        return (u * self.num_train_timesteps).floor().clamp(0, self.num_train_timesteps - 1).float()

    def rollout_path(self, target, k, grid_steps):
        # keep DDPM rollouts on integer timesteps, the ones the model is trained on; a grid finer than the
        # timesteps would round to repeated levels (zero-length steps that still cost calls): refused
        if grid_steps > self.num_train_timesteps:
            raise ValueError(f"scheduled_sampling_grid_steps={grid_steps} exceeds num_train_timesteps="
                             f"{self.num_train_timesteps}: DDPM rollout steps must move at least one timestep")
        return super().rollout_path(target, k, grid_steps).round().clamp(min=0)

    def sampling_levels(self, num_steps):
        # "trailing" spacing: start at T-1, equal integer strides, end clean (-1)
        T = self.num_train_timesteps
        t = torch.round(torch.linspace(T, 0, num_steps + 1, dtype=torch.float64)) - 1
        return t.float()

    def level_from_lambda(self, lam):
        # exact inverse of alpha_bar's linear interpolation: alpha_bar = sigmoid(2·lambda)
        table = self._table.to(lam.device)  # decreasing, index 0 = clean level -1
        ab = torch.sigmoid(2.0 * lam.double()).clamp(float(table[-1]), 1.0)
        inc = table.flip(0)
        idx = torch.searchsorted(inc, ab).clamp(1, len(inc) - 1)
        lo, hi = inc[idx - 1], inc[idx]
        w = ((ab - lo) / (hi - lo)).clamp(0, 1)
        pos = (len(inc) - 1) - (idx - 1 + w)  # position in the decreasing table
        return (pos - 1.0).to(lam.dtype)


def _bc(c: Tensor, like: Tensor) -> Tensor:
    """Broadcast a per-sample (B,) coefficient against a (B, ...) tensor."""
    if not isinstance(c, Tensor):
        c = torch.as_tensor(c, device=like.device)
    if c.dtype is not like.dtype or c.device != like.device:
        c = c.to(like.device, like.dtype)
    return c.reshape((-1,) + (1,) * (like.dim() - 1))


def make_schedule(prediction_type: str, num_train_timesteps: int = 1000, shift: float = 1.0,
                  beta_schedule: str = "scaled_linear", beta_start: float = 0.00085,
                  beta_end: float = 0.012) -> Schedule:
    if prediction_type == FLOW:
        return FlowMatchingSchedule(num_train_timesteps, shift)
    return DDPMSchedule(prediction_type, num_train_timesteps, beta_schedule, beta_start, beta_end)
