"""UniPC: unified predictor-corrector, bh2, order 2, data prediction (the diffusers default config).

Zhao, Bai, Rao, Zhou & Lu, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of
Diffusion Models", NeurIPS 2023 (arXiv 2302.04867), Algorithms 2 (UniP-p) and 3 (UniC-p) with
B(h) = expm1(-h) ("bh2"); matches diffusers' ``UniPCMultistepScheduler`` defaults (solver_order=2,
predict_x0=True, solver_type="bh2", lower_order_final=True, corrector on every step) and its flow mode
(``use_flow_sigmas=True, prediction_type="flow_prediction"``: a = 1 - sigma, s = sigma).

Notation for the step l_j -> l_{j+1}: lambda = log(a/s), h = lambda_{j+1} - lambda_j, m_j = x0_hat from
the model at the *uncorrected* x_j, c1 = -a_{j+1}·expm1(-h) = -a_{j+1}·B(h)::

    base(x, m) = (s_{j+1}/s_j)·x + c1·m                                                (DDIM)

Corrector UniC (step j >= 1, re-doing the step j-1 -> j with the new evaluation m_j; h = lambda_j -
lambda_{j-1}, r1 = (lambda_{j-2} - lambda_{j-1})/h, D1 = (m_{j-2} - m_{j-1})/r1)::

    x_j^c = base(x_{j-1}^c, m_{j-1}) + c1·(rho_0·D1 + rho_1·(m_j - m_{j-1}))
    order 1 (j = 1): rho_1 = 1/2;  order 2: [[1, 1], [r1, 1]]·rho = [b1, b2] with hh = -h, phi = expm1(hh),
    b1 = (phi/hh - 1)/phi,  b2 = 2·((phi/hh - 1)/hh - 1/2)/phi

Predictor UniP (the corrector's order-2 coefficient rho_p = 1/2, so UniP-2 = DPM-Solver++(2M))::

    x_{j+1} = base(x_j^c, m_j) + 0.5·c1·(h/h_prev)·(m_j - m_{j-1}),   h_prev = lambda_j - lambda_{j-1}

Orders per sample, as diffusers: the predictor is first order on the first step and on the sample's
final step (diffusers' UniPC applies ``lower_order_final`` to the last step whatever the number of
steps; its docstring says "< 15", its code does not check); the corrector is order 1 at j = 1 and order
2 after. No evaluation happens at the final level, so the final point is not corrected. Limits: a
history point at sigma = 1 (lambda = -inf) drives r1 to -inf, so rho_0·D1 -> 0 and rho_1 -> b1; an
infinite or zero step falls back to order 1.
"""

from __future__ import annotations

import torch
from rollgraph.stages.solvers.base import Solver, StepContext, first_order_coeffs, multistep_ok
from torch import Tensor


class UniPCSolver(Solver):
    name = "unipc"
    evals_per_step = 1

    def step(self, x: Tensor, ctx: StepContext) -> Tensor:
        m0, _ = ctx.evaluate(x, ctx.level())
        m1 = ctx.history("m1")
        if ctx.j >= 1:
            x = self._correct(x, m0, m1, ctx)
        ratio, c1, h = first_order_coeffs(ctx)
        x_next = ctx.coef(ratio, x) * x + ctx.coef(c1, x) * m0
        if ctx.j >= 1:
            h_prev = ctx.lam_at(0) - ctx.lam_at(-1)
            order2 = ~ctx.is_last() & multistep_ok(h, h_prev)
            k = torch.where(order2, 0.5 * c1 * h / h_prev, torch.zeros_like(h))
            x_next = x_next + ctx.coef(k, x) * (m0 - m1)
        ctx.remember("m2", m1)
        ctx.remember("m1", m0)
        ctx.remember("x_last", x)
        return x_next

    @staticmethod
    def _correct(x: Tensor, m0: Tensor, m1: Tensor, ctx: StepContext) -> Tensor:
        """UniC for the step j-1 -> j, using m0 = x0_hat at the predicted x_j."""
        ratio, c1, h = first_order_coeffs(ctx, src=-1)
        corrected = ctx.coef(ratio, x) * ctx.history("x_last") + ctx.coef(c1, x) * m1
        k_t = 0.5 * c1
        if ctx.j >= 2:
            h_pp = ctx.lam_at(-1) - ctx.lam_at(-2)
            ok = multistep_ok(h, h_pp)
            r1 = -h_pp / h
            hh = -h
            phi = torch.expm1(hh)
            b1 = (phi / hh - 1.0) / phi
            b2 = 2.0 * ((phi / hh - 1.0) / hh - 0.5) / phi
            rho0 = (b1 - b2) / (1.0 - r1)
            rho1 = b1 - rho0
            k_2 = torch.where(ok, c1 * rho0 / r1, torch.zeros_like(h))
            k_t = torch.where(ok, c1 * rho1, k_t)
            corrected = corrected + ctx.coef(k_2, x) * (ctx.history("m2") - m1)
        corrected = corrected + ctx.coef(k_t, x) * (m0 - m1)
        same = ctx.level(-1) == ctx.level(0)
        return torch.where(ctx.coef(same, x).bool(), x, corrected)
