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
  is ``schedule.level_from_lambda(-log rho_mid)``, the end points are the path's own levels.

The clean level (DDPM level -1, rho = 0) is never a training level (timesteps are 0 .. T-1), so the
model is never evaluated there: on a step that ends at it (only ever the last step of an inference path,
never of a rollout), the fourth slope is extrapolated linearly from the start and the midpoint,
k4 = 2·k3 - k1, which gives y1 = y + h·(k2 + 2·k3)/3: an explicit second-order Runge-Kutta step
(sum b = 1, sum b·c = 1/2; local error O(h^3)), with no fourth model call. Measured on Gaussian data along the
trailing sampling path 999 -> clean, the global error then falls as N^-2.0 (16..128 steps; classical RK4
evaluated at level -1 gave N^-2.9, every exponential integrator here N^-1.0). Where even the midpoint
would fall below timestep 0 (rho_0 < 2·rho(t=0): a final step from t <= 2, i.e. > ~300 sampling steps),
that step is first order, y1 = y + h·k1 (x_clean = x0_hat at the start, DDIM's final step), with one call.

Each stage is one batched model call over the active samples that need it.
"""

from __future__ import annotations

import torch
from rollgraph.stages.schedule import FLOW
from rollgraph.stages.solvers.base import Solver, StepContext, StepTables, stay_where_same, zero_length
from torch import Tensor


class RK4Solver(Solver):
    name = "rk4"
    evals_per_step = 4

    def tables(self, grid: StepContext) -> StepTables:
        masks = {"same": zero_length(grid)}
        if grid.schedule.prediction_type == FLOW:
            s0, s1 = grid.level(0), grid.level(1)
            levels = {"s0": s0, "s1": s1, "mid": grid.round_level(0.5 * (s0 + s1))}
            return StepTables(coefs={"h": s1 - s0}, masks=masks, levels=levels)
        l0, l1 = grid.level(0), grid.level(1)
        a0, s0 = grid.alpha_sigma(l0)
        a1, s1 = grid.alpha_sigma(l1)
        rho0, rho1 = s0 / a0, s1 / a1
        rho_mid = 0.5 * (rho0 + rho1)
        l_mid = grid.round_level(grid.schedule.level_from_lambda(-torch.log(rho_mid)).double())
        a_mid, _ = grid.alpha_sigma(l_mid)
        clean = s1 == 0  # ends at the clean level: no model call there (see the module docstring)
        first_order = clean & (l_mid < 0)  # even the midpoint is below timestep 0
        masks.update(clean=clean, not_clean=~clean, first_order=first_order, not_first_order=~first_order,
                     every=torch.ones_like(clean))
        return StepTables(coefs={"a0": a0, "a1": a1, "a_mid": a_mid, "h": rho1 - rho0}, masks=masks,
                          levels={"l0": l0, "l1": l1, "l_mid": l_mid})

    def step(self, x: Tensor, ctx: StepContext) -> Tensor:
        t = ctx.tables(self)
        x_next = self._flow_step(x, ctx, t) if ctx.schedule.prediction_type == FLOW else self._vp_step(x, ctx, t)
        return stay_where_same(x, x_next, t)

    @staticmethod
    def _flow_step(x: Tensor, ctx: StepContext, t) -> Tensor:
        def f(xs: Tensor, level: str) -> Tensor:
            x0, eps = ctx.evaluate(xs, t.level(level))
            return eps - x0

        h = t.coef("h", x)
        k1 = f(x, "s0")
        k2 = f(x + 0.5 * h * k1, "mid")
        k3 = f(x + 0.5 * h * k2, "mid")
        k4 = f(x + h * k3, "s1")
        return x + h / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4)

    @staticmethod
    def _vp_step(x: Tensor, ctx: StepContext, t) -> Tensor:
        y = x / t.coef("a0", x)
        h = t.coef("h", x)

        def f(ys: Tensor, level: str, a: str, rows: str) -> Tensor:
            """eps_hat at the active samples ``rows`` (all of them when every row is included)."""
            if t.all(rows):
                return ctx.evaluate(t.coef(a, ys) * ys, t.level(level))[1]
            subset = t.rows(rows)
            out = torch.zeros_like(ys)
            keep = subset.to(ys.device)
            sub = ys[keep]
            out[keep] = ctx.evaluate(t.coef(a, ys)[keep] * sub, t.level(level)[subset], subset=subset)[1].to(ys.dtype)
            return out

        k1 = f(y, "l0", "a0", "every")
        if t.all("first_order"):
            return t.coef("a1", x) * (y + h * k1)
        k2 = f(y + 0.5 * h * k1, "l_mid", "a_mid", "not_first_order")
        k3 = f(y + 0.5 * h * k2, "l_mid", "a_mid", "not_first_order")
        if t.any("clean"):
            k4 = torch.where(t.mask("clean", x), 2.0 * k3 - k1, f(y + h * k3, "l1", "a1", "not_clean"))
        else:
            k4 = f(y + h * k3, "l1", "a1", "every")
        y1 = y + h / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
        if t.any("first_order"):
            y1 = torch.where(t.mask("first_order", x), y + h * k1, y1)
        return t.coef("a1", x) * y1
