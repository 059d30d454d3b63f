"""DPM-Solver++(2M): second-order multistep exponential integrator on the data prediction.

Lu, Zhou, Bao, Chen, Li & Zhu, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
Probabilistic Models" (arXiv 2211.01095), Algorithm 2, with the "midpoint" second-order term as in
diffusers' ``DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2)``, including
its flow mode (``use_flow_sigmas=True, prediction_type="flow_prediction"``): the same update with
a = 1 - sigma, s = sigma.

With lambda = log(a/s), h = lambda_next - lambda, m = x0_hat at the current level and m_prev the
sample's own x0_hat one step earlier (h_prev = lambda - lambda_prev)::

    x_next = (s_next/s)·x - a_next·(exp(-h) - 1)·m                          (first order, = DDIM)
             - 0.5·a_next·(exp(-h) - 1)·(h/h_prev)·(m - m_prev)              (second-order term)

Per sample, as diffusers does it: the first step is first order; the final step is first order when the
sample's own total steps < 15 (``lower_order_final``) or when it ends at the clean level (there
h = +inf; diffusers' ``final_sigmas_type="zero"``). A history point at sigma = 1 (h_prev = +inf)
makes the second-order term vanish, its limit.
"""

from __future__ import annotations

import torch
from rollgraph.stages.solvers.base import Solver, StepContext, first_order_coeffs, multistep_ok
from torch import Tensor


class DPMSolver(Solver):
    name = "dpm"
    evals_per_step = 1
    lower_order_final_below = 15  # diffusers: lower_order_final only for < 15 inference steps

    def step(self, x: Tensor, ctx: StepContext) -> Tensor:
        m0, _ = ctx.evaluate(x, ctx.level())
        ratio, c1, h = first_order_coeffs(ctx)
        x_next = ctx.coef(ratio, x) * x + ctx.coef(c1, x) * m0
        if ctx.j >= 1:
            h_prev = ctx.lam_at(0) - ctx.lam_at(-1)
            lower_final = ctx.is_last() & (ctx.total_steps() < self.lower_order_final_below)
            order2 = ~lower_final & multistep_ok(h, h_prev)
            k = torch.where(order2, 0.5 * c1 * h / h_prev, torch.zeros_like(h))
            x_next = x_next + ctx.coef(k, x) * (m0 - ctx.history("m_prev"))
        ctx.remember("m_prev", m0)
        return x_next
