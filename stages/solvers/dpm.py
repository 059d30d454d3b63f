"""DPM-Solver++(2M) and (3M): multistep exponential integrators on the data prediction.

Lu, Zhou, Bao, Chen, Li & Zhu, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
Probabilistic Models" (arXiv 2211.01095), Algorithm 2 (2M, with the "midpoint" second-order term) and
its third-order multistep form, as in diffusers' ``DPMSolverMultistepScheduler(algorithm_type=
"dpmsolver++", solver_order=2 or 3)``, including its flow mode (``use_flow_sigmas=True,
prediction_type="flow_prediction"``): the same update with a = 1 - sigma, s = sigma.

With lambda = log(a/s), h = lambda_next - lambda, m0 = x0_hat at the current level and m1, m2 the
sample's own x0_hat one and two steps earlier (h_0 = lambda - lambda_1, h_1 = lambda_1 - lambda_2)::

    first order (= DDIM):   x_next = (s_next/s)·x - a_next·(exp(-h) - 1)·m0
    second order (2M):      ... - 0.5·a_next·(exp(-h) - 1)·(h/h_0)·(m0 - m1)
    third order (3M):       r0 = h_0/h, r1 = h_1/h, D1_0 = (m0 - m1)/r0, D1_1 = (m1 - m2)/r1,
                            D1 = D1_0 + r0/(r0 + r1)·(D1_0 - D1_1), D2 = (D1_0 - D1_1)/(r0 + r1),
                            x_next = first order + a_next·((exp(-h) - 1)/h + 1)·D1
                                                 - a_next·((exp(-h) - 1 + h)/h^2 - 0.5)·D2

Per sample, as diffusers does it (``order`` is the solver order, 2 by default): step j uses order
min(order, j + 1); the final step is first order when the sample's own total steps < 15
(``lower_order_final``) or when it ends at the clean level (there h = +inf; diffusers'
``final_sigmas_type="zero"``), and the step before it is at most second order when total steps < 15.
A history point at sigma = 1 (h_0 = +inf) makes the second-order term vanish, its limit; the third-order
term is used only where h, h_0 and h_1 are all finite and non-zero, else the step falls back to order 2.
"""

from __future__ import annotations

import torch
from rollgraph.stages.solvers.base import (
    OrderedSolver,
    StepContext,
    StepTables,
    first_order_coeffs,
    multistep_ok,
    stay_where_same,
    zero_length,
)
from torch import Tensor


class DPMSolver(OrderedSolver):
    name = "dpm"
    evals_per_step = 1
    orders = (1, 2, 3)
    lower_order_final_below = 15  # diffusers: lower_order_final only for < 15 inference steps

    def tables(self, grid: StepContext) -> StepTables:
        ratio, c1, h = first_order_coeffs(grid)
        masks = {"history1": grid.has_history(1), "history2": grid.has_history(2), "same": zero_length(grid)}
        if self.order == 1 or not bool(masks["history1"].any()):  # first order only: no multistep term is read
            return StepTables(coefs={"ratio": ratio, "c1": c1}, masks=masks, levels={"l0": grid.level(0)})
        j, total = grid.step_index, grid.total_steps()
        short = total < self.lower_order_final_below
        lower_final = grid.is_last() & short
        h_0 = grid.lam_at(0) - grid.lam_at(-1)
        order2 = grid.has_history(1) & ~lower_final & multistep_ok(h, h_0)
        order3 = torch.zeros_like(order2)
        coefs = {"ratio": ratio, "c1": c1}
        if self.order >= 3:
            h_1 = grid.lam_at(-1) - grid.lam_at(-2)
            finite = torch.isfinite(h_0) & torch.isfinite(h_1) & (h_0 != 0) & (h_1 != 0)
            order3 = order2 & grid.has_history(2) & ~(short & (j == total - 2)) & finite
            a1, _ = grid.alpha_sigma(grid.level(1))
            coefs.update(self._third_order_coeffs(a1, h, h_0, h_1, order3))
        coefs["k2"] = torch.where(order2 & ~order3, 0.5 * c1 * h / h_0, torch.zeros_like(h))
        return StepTables(coefs=coefs, masks=masks, levels={"l0": grid.level(0)})

    def step(self, x: Tensor, ctx: StepContext) -> Tensor:
        t = ctx.tables(self)
        m0, _ = ctx.evaluate(x, t.level("l0"))
        x_next = t.coef("ratio", x) * x + t.coef("c1", x) * m0
        if self.order >= 2 and t.any("history1"):
            m1 = ctx.history("m_prev")
            if self.order >= 3 and t.any("history2"):
                x_next = x_next + self._third_order(x, m0, m1, ctx.history("m_prev2"), t)
            x_next = x_next + t.coef("k2", x) * (m0 - m1)
            if self.order >= 3:
                ctx.remember("m_prev2", m1)
        ctx.remember("m_prev", m0)
        return stay_where_same(x, x_next, t)

    @staticmethod
    def _third_order_coeffs(a1, h, h_0, h_1, use) -> dict:
        """The 3M coefficients (module docstring), with w1 = w2 = 0 where ``use`` is False."""
        one = torch.ones_like(h)
        r0 = torch.where(use, h_0 / h, one)
        r1 = torch.where(use, h_1 / h, one)
        hs = torch.where(use, h, one)
        w1 = torch.where(use, a1 * (torch.expm1(-hs) / hs + 1.0), torch.zeros_like(h))
        w2 = torch.where(use, -a1 * ((torch.expm1(-hs) + hs) / hs**2 - 0.5), torch.zeros_like(h))
        return {"inv_r0": 1.0 / r0, "inv_r1": 1.0 / r1, "r0_share": r0 / (r0 + r1), "inv_r01": 1.0 / (r0 + r1),
                "w1": w1, "w2": w2}

    @staticmethod
    def _third_order(x, m0, m1, m2, t):
        """The 3M terms beyond first order (zero where the step is not third order: w1 = w2 = 0 there)."""
        d10 = t.coef("inv_r0", x) * (m0 - m1)
        d11 = t.coef("inv_r1", x) * (m1 - m2)
        d1 = d10 + t.coef("r0_share", x) * (d10 - d11)
        d2 = t.coef("inv_r01", x) * (d10 - d11)
        return t.coef("w1", x) * d1 + t.coef("w2", x) * d2
