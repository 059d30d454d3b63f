"""First-order solver: DDIM (eta = 0) / flow-matching Euler, in data-prediction form.

Song, Meng & Ermon, "Denoising Diffusion Implicit Models", ICLR 2021 (arXiv 2010.02502), eq. 12 with
sigma_t = 0; for flow matching the Euler step of diffusers' ``FlowMatchEulerDiscreteScheduler``.

With (x0_hat, eps_hat) the model's prediction at x and level l converted by the schedule::

    x_next = a(l_next)·x0_hat + s(l_next)·eps_hat

* flow matching (a = 1 - sigma, s = sigma, v = eps - x0): x_next = x + (sigma_next - sigma)·v;
* DDPM: DDIM with eta = 0, which is the Euler step of the probability-flow ODE in (x/a, s/a), and
  also DPM-Solver++(1) (Lu et al. 2022).

It is exact at the limits: from sigma = 1 eps_hat = x; to the clean level x_next = x0_hat.
"""

from __future__ import annotations

from rollgraph.stages.solvers.base import Solver, StepContext, StepTables, stay_where_same, zero_length
from torch import Tensor


class EulerSolver(Solver):
    name = "euler"
    evals_per_step = 1

    def tables(self, grid: StepContext) -> StepTables:
        a1, s1 = grid.alpha_sigma(grid.level(1))
        return StepTables(coefs={"a1": a1, "s1": s1}, masks={"same": zero_length(grid)}, levels={"l0": grid.level(0)})

    def step(self, x: Tensor, ctx: StepContext) -> Tensor:
        t = ctx.tables(self)
        x0, eps = ctx.evaluate(x, t.level("l0"))
        return stay_where_same(x, t.coef("a1", x) * x0 + t.coef("s1", x) * eps, t)
