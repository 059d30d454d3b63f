"""The exposure-bias probe: do the states the sampler produces have the distribution of the forward process?

After Ning et al., "Elucidating the Exposure Bias in Diffusion Models" (ICLR 2024, arXiv 2308.15321): exposure
bias is the gap between the states x̂_t the sampler visits and the forward-noised data x_t = a_t·x0 + s_t·eps at
the same level. An exact ODE transports the *marginal* of x_t, not each sample back to its own x0, so the
comparison is between **sets**, never sample against its own x0 (that reading scores an exact flow model 1.63 and a
×1.1-wrong model lower).

Data. Two disjoint sets of clean samples of equal size m: the start set S (``x0``) and an independent reference
set R (``x0_ref``; by default the second half of ``x0``, S its first half).

Levels u_j = u_0·(1 - j/K), j = 0..K, u the schedule's grid coordinate (flow: the unshifted sigma; DDPM (t + 1)/T,
rounded to the integer timesteps DDPM trains on; the last level is clean data). The solver
(``exposure_bias_probe_sampler``) starts from x̂_0 = a_0·x0_S + s_0·eps and takes K steps; x̂_j is the state the
model is evaluated on at level j (for UniPC the predictor's state: what the network sees), x̂_K the output.
At each level j = 1..K the probe compares three sets of m points:

* G_j = {x̂_j}, generated from S;
* R_j = {a_j·x0_R + s_j·eps'}, the forward process on the independent data R (fresh noise);
* F_j = {a_j·x0_S + s_j·eps''}, the forward process on S (fresh noise): a second, independent draw of the true
  marginal, used only for the floors.

Metrics, with spread(X) = sqrt(mean over elements of the unbiased variance across the set)::

    variance_error_j = spread(G_j) / spread(R_j) - 1     (> 0: more spread than the marginal; < 0: less)
    variance_floor_j = spread(F_j) / spread(R_j) - 1     (what finite m alone reads for an exact sampler)
    swd_j       = SW2(G_j, R_j)                          (sliced Wasserstein-2, Bonneel et al. 2015)
    swd_floor_j = SW2(F_j, R_j)

SW2(X, Y) = sqrt(mean over P random unit directions theta of W2²(theta·X, theta·Y)), the 1-D W2 by sorting; the
directions are fixed by the seed and the same at every level. Summary: the mean over levels of |variance_error_j|,
|variance_floor_j|, swd_j and swd_floor_j. An exact model with an accurate solver reads variance_error within the
finite-sample band (about ±3/sqrt(m·D_eff), D_eff the number of independent elements) and swd ≈ swd_floor; a scaled or
biased model reads more (tests/test_probe.py checks both on analytic Gaussian data, flow and DDPM, every solver).

Cost: m·K·(evaluations per solver step) sample-forwards without gradient, ``batch_size`` samples per call; memory:
one chunk's states, three (m, P) projections and two element-sized running sums per level.

The hook runs the probe every ``exposure_bias_probe_steps`` optimizer steps on rank 0, on the last
``exposure_bias_probe_samples`` samples of the training data source (the same ones every time, with the same noise;
they are held out only if the dataset leaves them out), with the EMA weights when EMA is on, and adds
``exposure_bias/...`` keys to that step's metrics (metrics.jsonl). It draws only from its own generators, so a run's
training is bit-identical with and without it. ``rollgraph probe RUN_DIR`` measures any checkpoint the same way.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field
from rollgraph.graph import Port, Stage, register_port_type, register_stage, same_names
from rollgraph.graph.context import derive_seed
from rollgraph.stages.optimize import ema_weights
from rollgraph.stages.predict import model_fn_for
from rollgraph.stages.registered_name import SolverName
from rollgraph.stages.rollout import eval_mode
from rollgraph.stages.schedule import FLOW, Schedule
from rollgraph.stages.solvers import Solver, StepContext, get_solver, solve
from torch import Tensor

PREFIX = "exposure_bias"


class ProbeParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    section: ClassVar[str] = "Exposure-bias probe"

    exposure_bias_probe_steps: int = Field(0, ge=0, description="Measure exposure bias every N optimizer steps (0: off); logged as exposure_bias/... in metrics.jsonl")
    exposure_bias_probe_samples: int = Field(256, ge=4, le=65536, description="Samples probed: the last N of the dataset, half generated from, half the independent reference (held out only if training leaves them out)")
    exposure_bias_probe_start_level: float = Field(0.6, gt=0, le=1, description="Grid coordinate u (0 clean, 1 pure noise) the data is forward-noised to before sampling")
    exposure_bias_probe_num_steps: int = Field(12, ge=1, le=1000, description="Solver steps from the start level down to clean data (12 from u = 0.6: the spacing of a 20-step inference grid)")
    exposure_bias_probe_sampler: SolverName = Field("unipc", description="Solver the probe samples with")
    exposure_bias_probe_projections: int = Field(128, ge=1, le=65536, description="Random directions of the sliced Wasserstein distance")
    exposure_bias_probe_batch_size: int = Field(64, ge=1, le=65536, description="Samples per model call while probing (memory)")


@dataclass
class ProbeResult:
    """Per-level values (index j = 1..K) and their summary; see the module docstring."""

    u: list[float] = field(default_factory=list)
    level: list[float] = field(default_factory=list)
    variance_error: list[float] = field(default_factory=list)
    variance_floor: list[float] = field(default_factory=list)
    swd: list[float] = field(default_factory=list)
    swd_floor: list[float] = field(default_factory=list)
    samples: int = 0  # m, the size of each compared set
    seconds: float = 0.0

    def summary(self) -> dict[str, float]:
        def mean(values):
            return sum(values) / len(values)

        return {"variance_error": mean([abs(v) for v in self.variance_error]),
                "variance_floor": mean([abs(v) for v in self.variance_floor]),
                "swd": mean(self.swd), "swd_floor": mean(self.swd_floor)}

    def levels(self) -> list[dict[str, float]]:
        return [{"u": u, "level": lv, "variance_error": ve, "variance_floor": vf, "swd": d, "swd_floor": df}
                for u, lv, ve, vf, d, df in zip(self.u, self.level, self.variance_error, self.variance_floor,
                                                self.swd, self.swd_floor, strict=True)]

    def to_json(self) -> dict:
        """``{"levels": [{"level", "u", "variance_error", "variance_floor", "swd", "swd_floor"}, ...], ...summary}``."""
        return {"levels": self.levels(), **self.summary(), "samples": self.samples, "seconds": round(self.seconds, 3)}

    def metrics(self, prefix: str = PREFIX) -> dict[str, float]:
        """Flat metrics: ``prefix/<summary>`` plus ``prefix/variance_error/u0.45`` and ``prefix/swd/u0.45`` per level."""
        out = {f"{prefix}/{k}": v for k, v in self.summary().items()}
        for u, ve, d in zip(self.u, self.variance_error, self.swd, strict=True):
            out[f"{prefix}/variance_error/u{u:.3g}"] = ve
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


class _SetStats:
    """Running per-element sums and the projections of a point set, filled chunk by chunk."""

    def __init__(self, theta: Tensor):
        self.theta = theta
        self.count = 0
        self.total: Tensor | float = 0.0
        self.total_sq: Tensor | float = 0.0
        self.projections: list[Tensor] = []

    def add(self, x: Tensor) -> None:
        flat = x.detach().flatten(1).double().cpu()
        self.count += flat.shape[0]
        self.total = self.total + flat.sum(0)
        self.total_sq = self.total_sq + flat.pow(2).sum(0)
        self.projections.append(flat @ self.theta)

    def spread(self) -> float:
        """sqrt(mean over elements of the unbiased variance across the set)."""
        n = self.count
        var = (self.total_sq - self.total.pow(2) / n) / (n - 1)
        return math.sqrt(max(float(var.clamp_min(0).mean()), 0.0))

    def stacked(self) -> Tensor:
        return torch.cat(self.projections)


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


def _forward_set(schedule: Schedule, x0: Tensor, level: Tensor, generator: torch.Generator, stats: _SetStats,
                 batch_size: int) -> None:
    for lo in range(0, len(x0), batch_size):
        xc = x0[lo:lo + batch_size]
        noise = torch.randn(xc.shape, generator=generator, dtype=torch.float32).to(xc.device, xc.dtype)
        stats.add(schedule.add_noise(xc, noise, level.expand(len(xc)).to(xc.device)))


@torch.no_grad()
def exposure_bias_probe(model_fn, schedule: Schedule, x0: Tensor, x0_ref: Tensor | None = None, *,
                        start_u: float = 0.6, num_steps: int = 12, sampler: str = "unipc", seed: int = 0,
                        projections: int = 128, batch_size: int | None = None) -> ProbeResult:
    """Measure exposure bias (see the module docstring): per-level set statistics of the sampler's states.

    model_fn(x_sub, level_sub, idx) -> raw prediction (schedule.prediction_type), as for ``solvers.solve``, with idx
    indexing ``x0`` (conditioning lives inside model_fn). ``x0_ref``: the independent reference data, as many
    samples as ``x0``; when None, ``x0`` is split in halves: the first is generated from, the second is the
    reference (idx then still indexes ``x0``). Deterministic for a given seed and batch size.
    """
    start = time.perf_counter()
    if x0_ref is None:
        half = x0.shape[0] // 2
        x0, x0_ref = x0[:half], x0[half:2 * half]
    m = x0.shape[0]
    if m < 2 or x0_ref.shape != x0.shape:
        raise ValueError(f"the exposure-bias probe needs two sets of >= 2 equally shaped samples, got "
                         f"{tuple(x0.shape)} and {tuple(x0_ref.shape)}")
    u, levels = probe_levels(schedule, start_u, num_steps)
    g = torch.Generator().manual_seed(seed)
    theta = _directions(x0[0].numel(), projections, g)
    gen, ref, fwd = ([_SetStats(theta) for _ in range(num_steps + 1)] for _ in range(3))
    bs = batch_size or m
    for j in range(1, num_steps + 1):
        _forward_set(schedule, x0_ref, levels[j], g, ref[j], bs)
        _forward_set(schedule, x0, levels[j], g, fwd[j], bs)
    for lo in range(0, m, bs):
        xc = x0[lo:lo + bs]
        n = len(xc)
        eps = torch.randn(xc.shape, generator=g, dtype=torch.float32).to(xc.device, xc.dtype)
        path = levels.to(xc.device)[None].expand(n, -1).contiguous()

        def chunk_fn(x, level, idx, lo=lo):
            return model_fn(x, level, idx + lo)

        final = solve(chunk_fn, schedule.add_noise(xc, eps, path[:, 0]), path,
                      torch.full((n,), num_steps, dtype=torch.long, device=xc.device), schedule,
                      _Recording(get_solver(sampler), lambda j, x: gen[j].add(x))).x
        gen[num_steps].add(final)
    result = ProbeResult(samples=m)
    for j in range(1, num_steps + 1):
        reference = ref[j].spread()
        result.u.append(float(u[j]))
        result.level.append(float(levels[j]))
        result.variance_error.append(gen[j].spread() / reference - 1.0)
        result.variance_floor.append(fwd[j].spread() / reference - 1.0)
        result.swd.append(_w2(gen[j].stacked(), ref[j].stacked()))
        result.swd_floor.append(_w2(fwd[j].stacked(), ref[j].stacked()))
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


def probe_model(model, schedule: Schedule, data, params: ProbeParams, ctx) -> ProbeResult:
    """Probe a model adapter on the last ``exposure_bias_probe_samples`` samples of ``data`` (eval mode, no grad)."""
    x0, cond = probe_samples(data, params.exposure_bias_probe_samples, ctx)
    with eval_mode(model.raw_module):
        return exposure_bias_probe(model_fn_for(model, schedule, cond, ctx.autocast), schedule, x0,
                                   start_u=params.exposure_bias_probe_start_level,
                                   num_steps=params.exposure_bias_probe_num_steps,
                                   sampler=params.exposure_bias_probe_sampler, seed=derive_seed(ctx.seed, PREFIX) % (2**31),
                                   projections=params.exposure_bias_probe_projections,
                                   batch_size=params.exposure_bias_probe_batch_size)


@register_stage
class ExposureBiasProbe(Stage):
    """Every ``exposure_bias_probe_steps`` optimizer steps, measure exposure bias (``probe_model``, the module
    docstring's set comparison) with the EMA weights when the optimizer keeps them; reports the
    ``exposure_bias/...`` metrics and outputs the whole ``ProbeResult`` (rank 0; the others report nothing)."""

    type = "probe.exposure_bias"
    phase = "every"
    interval = "exposure_bias_probe_steps"
    sink = True
    Params = ProbeParams
    binds = same_names(ProbeParams)
    inputs = (Port("model", "Model"), Port("schedule", "Schedule"), Port("data", "DataSource"),
              Port("optimizer", "Optimizer", "its EMA weights are probed when it keeps them", optional=True))
    outputs = (Port("report", "Report"), Port("result", "ProbeResult"))

    def run(self, ctx, model, schedule, data, optimizer):
        if not ctx.is_main:
            return {"report": {}, "result": None}
        with ema_weights(optimizer):
            result = probe_model(model, schedule, data, self.params, ctx)
        return {"report": result.metrics(), "result": result}


register_port_type("ProbeResult", ProbeResult, "the exposure-bias probe's per-level readings")
