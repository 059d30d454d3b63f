"""The exposure-bias probe: how far do the states the sampler produces drift from the forward-noised data?

After Ning et al., "Elucidating the Exposure Bias in Diffusion Models" (ICLR 2024, arXiv 2308.15321):
take n held-out clean samples x0_i, forward-noise them to a start level, run the inference solver from
there down to clean data, and at every level the solver visits compare its states with the true marginal.

Levels: u_j = u_0·(1 - j/K), j = 0..K (u the schedule's grid coordinate: flow matching the unshifted
sigma, DDPM (t + 1)/T; DDPM levels are rounded to integer timesteps and the last one is the clean level).
Start: x_0 = a(u_0)·x0 + s(u_0)·eps with a fixed eps. The solver (``exposure_bias_probe_sampler``) takes K
steps; x̂_j is the state the model is evaluated on at level j (for UniPC the predictor's state, before the
corrector: what the network sees), and x̂_K the final output. At every level j = 1..K:

* moment error (Ning et al.'s variance comparison; flow matching: x̂ - (1 - sigma)·x0 against sigma)::

      spread_j = sqrt(mean over samples and elements of (x̂_j - a_j·x0)^2)
      moment_error_j = spread_j / (s_j·rms(eps)) - 1    (0 on the forward process; > 0: more noise left
                                                         than the level says; undefined at s = 0)

  rms(eps) (= 1 up to finite-n noise) makes the forward process itself score exactly 0.

* distribution distance: the sliced Wasserstein-2 distance between {x̂_j} and the forward-noised
  set {a_j·x0 + s_j·eps'} (fresh eps'), over P random unit directions theta (fixed seed, the same at every level)::

      SWD_j = sqrt(mean_theta W2^2(theta·x̂_j, theta·x_ref))   (1-D W2 by sorting; Bonneel et al. 2015)

  ``swd_floor_j`` is the same distance between two independent forward-noised sets: what finite n alone gives.

Summary: ``moment_error`` = mean_j |moment_error_j| over the levels with s_j > 0, ``swd`` and ``swd_floor``
the means over all K levels. Even an exact velocity field does not return a trajectory to the x0 it
started from (it transports the marginal, not each sample), so the moment error of a perfect model is
not 0 for real data: compare methods relatively (same seeds, same held-out data); the SWD, which an
exact model drives to its floor, is the distribution-level check.

Cost: n·K·(evaluations per solver step) sample-forwards without gradient, ``exposure_bias_probe_batch_size``
samples per call; memory: one chunk's states plus the (n, P) projections per level.

The hook runs the probe every ``exposure_bias_probe_steps`` optimizer steps on rank 0, on the last
``exposure_bias_probe_samples`` samples of the training data source (the same ones every time, with the
same noise; they are held out only if the dataset leaves them out), with the EMA weights when EMA is on, and
adds ``exposure_bias/...`` keys to that step's metrics (metrics.jsonl). It draws only from its own
generators, so a run's training is bit-identical with and without it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from rollgraph.graph.context import derive_seed
from rollgraph.graph.hooks import Hook
from rollgraph.stages.predict import model_fn_for
from rollgraph.stages.rollout import eval_mode
from rollgraph.stages.schedule import FLOW, Schedule
from rollgraph.stages.solvers import Solver, StepContext, get_solver, solve
from torch import Tensor

PREFIX = "exposure_bias"


class ProbeParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    section: ClassVar[str] = "Exposure-bias probe"

    exposure_bias_probe_steps: int = Field(0, ge=0, description="Measure exposure bias every N optimizer steps (0: off); logged as exposure_bias/... in metrics.jsonl")
    exposure_bias_probe_samples: int = Field(256, ge=2, le=65536, description="Samples probed: the last N of the dataset (held out only if training leaves them out)")
    exposure_bias_probe_start_level: float = Field(0.6, gt=0, le=1, description="Grid coordinate u (0 clean, 1 pure noise) the data is forward-noised to before sampling")
    exposure_bias_probe_num_steps: int = Field(12, ge=1, le=1000, description="Solver steps from the start level down to clean data (12 from u = 0.6: the spacing of a 20-step inference grid)")
    exposure_bias_probe_sampler: Literal["unipc", "euler", "dpm", "rk4"] = Field("unipc", description="Solver the probe samples with")
    exposure_bias_probe_projections: int = Field(128, ge=1, le=65536, description="Random directions of the sliced Wasserstein distance")
    exposure_bias_probe_batch_size: int = Field(64, ge=1, le=65536, description="Samples per model call while probing (memory)")


@dataclass
class ProbeResult:
    """Per-level values (index j = 1..K) and their summary; see the module docstring."""

    u: list[float] = field(default_factory=list)
    level: list[float] = field(default_factory=list)
    sigma: list[float] = field(default_factory=list)  # s(level): the true spread
    spread: list[float] = field(default_factory=list)
    moment_error: list[float] = field(default_factory=list)  # nan at the clean level
    swd: list[float] = field(default_factory=list)
    swd_floor: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> dict[str, float]:
        moments = [abs(m) for m, s in zip(self.moment_error, self.sigma, strict=True) if s > 0]
        return {"moment_error": sum(moments) / len(moments) if moments else float("nan"),
                "swd": sum(self.swd) / len(self.swd), "swd_floor": sum(self.swd_floor) / len(self.swd_floor)}

    def metrics(self, prefix: str = PREFIX) -> dict[str, float]:
        """Flat metrics: ``prefix/<summary>`` plus ``prefix/moment_error/u0.45`` and ``prefix/swd/u0.45`` per level."""
        out = {f"{prefix}/{k}": v for k, v in self.summary().items()}
        for u, s, m, d in zip(self.u, self.sigma, self.moment_error, self.swd, strict=True):
            if s > 0:
                out[f"{prefix}/moment_error/u{u:.3g}"] = m
            out[f"{prefix}/swd/u{u:.3g}"] = d
        out[f"{prefix}/seconds"] = self.seconds
        return out


def probe_levels(schedule: Schedule, start_u: float, num_steps: int) -> tuple[Tensor, Tensor]:
    """(u, levels), each (K + 1,): K equal steps in u from start_u to 0, the last level clean."""
    u = torch.linspace(start_u, 0.0, num_steps + 1, dtype=torch.float64)
    levels = schedule.level_at(u)
    if schedule.prediction_type != FLOW:
        levels = levels.round().clamp(0, schedule.num_train_timesteps - 1)  # the integer timesteps DDPM trains on
    levels[-1] = schedule.clean_level
    return u, levels.float()


def _w2(pa: Tensor, pb: Tensor) -> float:
    """sqrt(mean over directions of the 1-D W2^2) between two equally sized sets of projections (n, P)."""
    return float((pa.sort(dim=0).values - pb.sort(dim=0).values).pow(2).mean().sqrt())


def _directions(dim: int, projections: int, generator: torch.Generator) -> Tensor:
    theta = torch.randn(dim, projections, generator=generator, dtype=torch.float64)
    return theta / theta.norm(dim=0, keepdim=True)


def sliced_wasserstein(a: Tensor, b: Tensor, projections: int, generator: torch.Generator) -> float:
    """Sliced Wasserstein-2 distance between two equally sized point sets (n, ...) along random unit directions."""
    a, b = a.flatten(1).double().cpu(), b.flatten(1).double().cpu()
    if a.shape != b.shape:
        raise ValueError(f"sliced_wasserstein needs equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
    theta = _directions(a.shape[1], projections, generator)
    return _w2(a @ theta, b @ theta)


class _Recording(Solver):
    """Wraps a solver and hands the state each step starts from, from step 1 on, to ``record(j, x)``."""

    name = "recording"

    def __init__(self, inner: Solver, record):
        self.inner = inner
        self.evals_per_step = inner.evals_per_step
        self.record = record

    def step(self, x: Tensor, ctx: StepContext) -> Tensor:
        if ctx.j >= 1:  # every sample takes every step, so x is the whole chunk at level j
            self.record(ctx.j, x)
        return self.inner.step(x, ctx)


@torch.no_grad()
def exposure_bias_probe(model_fn, schedule: Schedule, x0: Tensor, *, start_u: float = 0.6, num_steps: int = 12,
                        sampler: str = "unipc", seed: int = 0, projections: int = 128,
                        batch_size: int | None = None) -> ProbeResult:
    """Run the probe (see the module docstring) on clean samples x0 (n, ...), ``batch_size`` samples per model call.

    model_fn(x_sub, level_sub, idx) -> raw prediction, as for ``solvers.solve``, with idx indexing x0 (the
    conditioning lives inside model_fn). Only per-level sums and the (n, projections) projections are kept,
    never the states themselves. Deterministic for a given seed and batch size.
    """
    start = time.perf_counter()
    n, dim = x0.shape[0], x0[0].numel()
    if n < 2:
        raise ValueError("the exposure-bias probe needs at least 2 samples")
    u, levels = probe_levels(schedule, start_u, num_steps)
    coeffs = [tuple(float(c[0]) for c in schedule.alpha_sigma(levels[j:j + 1].double())) for j in range(num_steps + 1)]
    g = torch.Generator().manual_seed(seed)
    theta = _directions(dim, projections, g)
    sq, gen, ref, ref2 = [0.0] * (num_steps + 1), *([[] for _ in range(num_steps + 1)] for _ in range(3))
    eps_sq = 0.0
    bs = batch_size or n
    for lo in range(0, n, bs):
        xc = x0[lo:lo + bs]
        m = len(xc)

        def record(j: int, x_hat: Tensor, xc=xc, m=m) -> None:
            a, _ = coeffs[j]
            sq[j] += float((x_hat.double() - a * xc.double()).pow(2).sum())
            gen[j].append(x_hat.flatten(1).double().cpu() @ theta)
            level = levels[j].expand(m).to(xc.device)
            for out in (ref, ref2):
                noise = torch.randn(xc.shape, generator=g).to(xc.device, xc.dtype)
                out[j].append(schedule.add_noise(xc, noise, level).flatten(1).double().cpu() @ theta)

        eps = torch.randn(xc.shape, generator=g).to(xc.device, xc.dtype)
        eps_sq += float(eps.double().pow(2).sum())
        path = levels.to(xc.device)[None].expand(m, -1).contiguous()

        def chunk_fn(x, level, idx, lo=lo):
            return model_fn(x, level, idx + lo)

        final = solve(chunk_fn, schedule.add_noise(xc, eps, path[:, 0]), path,
                      torch.full((m,), num_steps, dtype=torch.long, device=xc.device), schedule,
                      _Recording(get_solver(sampler), record)).x
        record(num_steps, final)
    eps_rms = math.sqrt(eps_sq / (n * dim))
    result = ProbeResult()
    for j in range(1, num_steps + 1):
        s = coeffs[j][1]
        spread = math.sqrt(sq[j] / (n * dim))
        result.u.append(float(u[j]))
        result.level.append(float(levels[j]))
        result.sigma.append(s)
        result.spread.append(spread)
        result.moment_error.append(spread / (s * eps_rms) - 1.0 if s > 0 else float("nan"))
        result.swd.append(_w2(torch.cat(gen[j]), torch.cat(ref[j])))
        result.swd_floor.append(_w2(torch.cat(ref2[j]), torch.cat(ref[j])))
    result.seconds = time.perf_counter() - start
    return result


def probe_samples(data, n: int, ctx) -> tuple[Tensor, dict[str, Tensor]]:
    """The last n samples of a data source and their conditioning, on ctx.device."""
    total = len(data)
    idx = torch.arange(max(total - n, 0), total)
    if hasattr(data, "batch"):  # the data source's own batching (latent datasets draw their latents there)
        x0, cond = data.batch(idx, None, ctx, "exposure_bias_probe", None)
    else:
        x0, labels = data.images[idx], getattr(data, "labels", None)
        cond = {"class_labels": labels[idx]} if labels is not None else {}
    return x0.to(ctx.device), {k: v.to(ctx.device) for k, v in cond.items()}


class ExposureBiasProbe(Hook):
    """Every exposure_bias_probe_steps optimizer steps, add the probe's ``exposure_bias/...`` metrics (rank 0)."""

    def __init__(self, params: ProbeParams, model_node: str = "model", schedule_node: str = "schedule",
                 data_node: str = "data", optimizer_node: str = "optimizer"):
        self.params = params
        self.nodes = (model_node, schedule_node, data_node, optimizer_node)

    def on_step_end(self, runner, metrics):
        every = self.params.exposure_bias_probe_steps
        if every and runner.ctx.step % every == 0 and runner.ctx.is_main:
            metrics.update(self.measure(runner))

    def measure(self, runner) -> dict[str, float]:
        ctx, p = runner.ctx, self.params
        model_node, schedule_node, data_node, optimizer_node = self.nodes
        model = runner.value(model_node, "model")
        schedule = runner.value(schedule_node, "schedule")
        x0, cond = probe_samples(runner.value(data_node, "data"), p.exposure_bias_probe_samples, ctx)
        bundle = runner.values.get((optimizer_node, "optimizer"))
        bundle = bundle if hasattr(bundle, "swap_ema") else None
        if bundle is not None:
            bundle.swap_ema()
        try:
            with eval_mode(model.raw_module):
                result = exposure_bias_probe(model_fn_for(model, schedule, cond, ctx.autocast), schedule, x0,
                                             start_u=p.exposure_bias_probe_start_level, num_steps=p.exposure_bias_probe_num_steps,
                                             sampler=p.exposure_bias_probe_sampler, seed=derive_seed(ctx.seed, PREFIX) % (2**31),
                                             projections=p.exposure_bias_probe_projections,
                                             batch_size=p.exposure_bias_probe_batch_size)
        finally:
            if bundle is not None:
                bundle.swap_ema()
        return result.metrics()
