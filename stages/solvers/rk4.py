"""Classical 4-stage Runge-Kutta on the probability-flow ODE (4 model evaluations per step).

Kutta (1901); for diffusion, the probability-flow ODE of Song et al., "Score-Based Generative Modeling
through Stochastic Differential Equations", ICLR 2021 (arXiv 2011.13456), written in the variables of
Karras et al., "Elucidating the Design Space of Diffusion-Based Generative Models", NeurIPS 2022
(arXiv 2206.00364). diffusers has no RK4 scheduler.

For dy/dt = f(y, t), from t0 with step h = t1 - t0 and t_mid = t0 + h/2::

    k1 = f(y, t0)              k2 = f(y + h/2·k1, t_mid)
    k3 = f(y + h/2·k2, t_mid)  k4 = f(y + h·k3, t1)
    y1 = y + h/6·(k1 + 2·k2 + 2·k3 + k4)

* flow matching: t = sigma, y = x, f = v_hat = eps_hat - x0_hat (x = (1 - sigma)·x0 + sigma·eps), well
  defined on the whole of [0, 1], the sigma = 1 start and the sigma = 0 end included;
* DDPM (variance preserving): t = rho = s/a, y = x/a, f = eps_hat(a·y, level(rho)); the midpoint level
  is ``schedule.level_from_lambda(-log rho_mid)``, the end points are the path's own levels. At the clean
  level (rho = 0) eps_hat is what the model gives for epsilon and v_prediction (v = eps there); a
  sample-prediction model cannot give eps at s = 0 (eps = (x - a·x0)/s), so that stage reuses the
  slope k3 (the clean level is only ever the end of an inference path, never of a rollout).

Each of the four stages is one batched model call over the active samples.
"""

from __future__ import annotations

import torch
from rollgraph.stages.schedule import FLOW
from rollgraph.stages.solvers.base import Solver, StepContext
from torch import Tensor


class RK4Solver(Solver):
    name = "rk4"
    evals_per_step = 4

    def step(self, x: Tensor, ctx: StepContext) -> Tensor:
        if ctx.schedule.prediction_type == FLOW:
            return self._flow_step(x, ctx)
        return self._vp_step(x, ctx)

    @staticmethod
    def _flow_step(x: Tensor, ctx: StepContext) -> Tensor:
        s0, s1 = ctx.level(0), ctx.level(1)
        mid = ctx.round_level(0.5 * (s0 + s1))

        def f(xs: Tensor, level: Tensor) -> Tensor:
            x0, eps = ctx.evaluate(xs, level)
            return eps - x0

        h = ctx.coef(s1 - s0, x)
        k1 = f(x, s0)
        k2 = f(x + 0.5 * h * k1, mid)
        k3 = f(x + 0.5 * h * k2, mid)
        k4 = f(x + h * k3, s1)
        return x + h / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4)

    @staticmethod
    def _vp_step(x: Tensor, ctx: StepContext) -> Tensor:
        l0, l1 = ctx.level(0), ctx.level(1)
        a0, s0 = ctx.alpha_sigma(l0)
        a1, s1 = ctx.alpha_sigma(l1)
        rho0, rho1 = s0 / a0, s1 / a1
        rho_mid = 0.5 * (rho0 + rho1)
        l_mid = ctx.round_level(ctx.schedule.level_from_lambda(-torch.log(rho_mid)).double())
        a_mid, _ = ctx.alpha_sigma(l_mid)

        def f(ys: Tensor, level: Tensor, a: Tensor) -> Tensor:
            return ctx.evaluate(ctx.coef(a, ys) * ys, level)[1]

        h = ctx.coef(rho1 - rho0, x)
        y = x / ctx.coef(a0, x)
        k1 = f(y, l0, a0)
        k2 = f(y + 0.5 * h * k1, l_mid, a_mid)
        k3 = f(y + 0.5 * h * k2, l_mid, a_mid)
        k4 = f(y + h * k3, l1, a1)
        if ctx.schedule.prediction_type == "sample":
            k4 = torch.where(ctx.coef(s1 == 0, x).bool(), k3, k4)
        return ctx.coef(a1, x) * (y + h / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4))
