"""UniPC: unified predictor-corrector, bh2, order 2 (or 1 or 3), data prediction (the diffusers default config).

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

Order 3 (``order=3``, diffusers' ``solver_order=3``): the general UniP-p / UniC-p of diffusers'
``multistep_uni_p_bh_update`` / ``multistep_uni_c_bh_update``. With history points k = 1, 2 (r_k = (lambda_k
- lambda_0)/h relative to the step's own start, D_k = (m_k - m_0)/r_k) and b_i = i!·phi_{i+1}(hh)/B(h)
(phi_1 = expm1(hh)/hh - 1, phi_{i+1} = phi_i/hh - 1/(i+1)!, hh = -h)::

    UniP-3:  [[1, 1], [r1, r2]]·rho = [b1, b2],                  x_next = base + c1·(rho_1·D1 + rho_2·D2)
    UniC-3:  [[1, 1, 1], [r1, r2, 1], [r1², r2², 1]]·rho = b,     x^c = base + c1·(rho_1·D1 + rho_2·D2
                                                                                   + rho_t·(m_new - m_0))

Step j's predictor order is min(order, total - j, j + 1) and its corrector's the previous predictor's,
so order 3 is used from the third step on and the last two steps step down to 2 and 1, as diffusers
(``lower_order_final``). An order-3 term whose older point is not usable (a zero or infinite interval)
falls back to the order-2 formulas below.

Orders per sample, as diffusers (order 2): the predictor is first order on the first step and on the sample's
final step (diffusers' UniPC applies ``lower_order_final`` to the last step whatever the number of
steps; its docstring says "< 15", its code does not check); the corrector is order 1 at j = 1 and order
2 after. No evaluation happens at the final level, so the final point is not corrected. Limits: a
history point at sigma = 1 (lambda = -inf) drives r1 to -inf, so rho_0·D1 -> 0 and rho_1 -> b1; an
infinite or zero step falls back to order 1. A zero-length step (two equal levels) still applies the
corrector on arrival and returns x_j^c (its predictor is base with h = 0, the identity), as diffusers does.
"""

from __future__ import annotations

import torch
from rollgraph.stages.solvers.base import (
    OrderedSolver,
    StepContext,
    StepTables,
    first_order_coeffs,
    multistep_ok,
)
from torch import Tensor


def _bh2_b(h: Tensor, n: int) -> list[Tensor]:
    """diffusers' b_1..b_n for B(h) = expm1(-h) (data prediction), per sample."""
    hh = -h
    phi = torch.expm1(hh) / hh - 1.0
    b_h = torch.expm1(hh)
    out, fact = [], 1.0
    for i in range(1, n + 1):
        out.append(phi * fact / b_h)
        fact *= i + 1
        phi = phi / hh - 1.0 / fact
    return out


def _usable(d: Tensor) -> Tensor:
    return torch.isfinite(d) & (d != 0)


class UniPCSolver(OrderedSolver):
    name = "unipc"
    evals_per_step = 1
    orders = (1, 2, 3)

    def _predictor_order(self, grid: StepContext, back: int = 0) -> Tensor:
        """diffusers' this_order for step j - back: min(order, total - (j - back), j - back + 1)."""
        j = grid.step_index - back
        return torch.minimum(torch.minimum(torch.full_like(j, self.order), grid.total_steps() - j), j + 1)

    def tables(self, grid: StepContext) -> StepTables:
        ratio, c1, h = first_order_coeffs(grid)
        if not bool(grid.has_history(1).any()):  # one step per sample: neither corrector nor multistep term is read
            return StepTables(coefs={"ratio": ratio, "c1": c1}, masks={"corrected": grid.has_history(1)},
                              levels={"l0": grid.level(0)})
        corrector_coefs, corrector_masks = self._corrector_tables(grid)
        coefs = {"ratio": ratio, "c1": c1, **corrector_coefs}
        masks = {"corrected": grid.has_history(1), "c_same": grid.level(-1) == grid.level(0), **corrector_masks}
        order3 = torch.zeros_like(masks["corrected"])
        if self.order >= 2:
            p = self._predictor_order(grid)
            h_prev = grid.lam_at(0) - grid.lam_at(-1)
            ok = multistep_ok(h, h_prev)
            order3 = (p >= 3) & ok & _usable(h_prev) & _usable(grid.lam_at(-1) - grid.lam_at(-2))
            order2 = (p >= 2) & ok & ~order3
            if self.order >= 3:
                coefs.update(self._predict3_coeffs(grid, c1, h, order3))
            coefs["p_k"] = torch.where(order2, 0.5 * c1 * h / h_prev, torch.zeros_like(h))
        masks["p_order3"] = order3
        return StepTables(coefs=coefs, masks=masks, levels={"l0": grid.level(0)})

    def step(self, x: Tensor, ctx: StepContext) -> Tensor:
        t = ctx.tables(self)
        m0, _ = ctx.evaluate(x, t.level("l0"))
        m1 = ctx.history("m1")
        if t.any("corrected"):
            xc = self._correct(x, m0, m1, ctx, t)
            x = xc if t.all("corrected") else torch.where(t.mask("corrected", x), xc, x)
        x_next = t.coef("ratio", x) * x + t.coef("c1", x) * m0
        if self.order >= 2 and t.any("corrected"):
            if t.any("p_order3"):
                x_next = x_next + (t.coef("p3_k1", x) * (m1 - m0) + t.coef("p3_k2", x) * (ctx.history("m2") - m0))
            x_next = x_next + t.coef("p_k", x) * (m0 - m1)
        if self.order >= 3:
            ctx.remember("m3", ctx.history("m2"))
        ctx.remember("m2", m1)
        ctx.remember("m1", m0)
        ctx.remember("x_last", x)
        return x_next

    @staticmethod
    def _predict3_coeffs(grid, c1, h, use) -> dict:
        """UniP-3's coefficients on (m_{j-1} - m_j) and (m_{j-2} - m_j) (zero where ``use`` is False)."""
        one = torch.ones_like(h)
        hs = torch.where(use, h, one)
        r1 = torch.where(use, (grid.lam_at(-1) - grid.lam_at(0)) / hs, -one)
        r2 = torch.where(use, (grid.lam_at(-2) - grid.lam_at(0)) / hs, -2 * one)
        b1, b2 = _bh2_b(hs, 2)
        rho1 = (b2 - r2 * b1) / (r1 - r2)
        rho2 = b1 - rho1
        zero = torch.zeros_like(h)
        return {"p3_k1": torch.where(use, c1 * rho1 / r1, zero), "p3_k2": torch.where(use, c1 * rho2 / r2, zero)}

    def _corrector_tables(self, grid: StepContext) -> tuple[dict, dict]:
        """UniC's coefficients and masks for the step j-1 -> j (module docstring)."""
        ratio, c1, h = first_order_coeffs(grid, src=-1)
        k_t = 0.5 * c1
        q = self._predictor_order(grid, back=1)  # the corrector's order: the previous step's predictor's
        h_pp = grid.lam_at(-1) - grid.lam_at(-2)
        ok = (q >= 2) & multistep_ok(h, h_pp)
        order3 = (q >= 3) & ok & _usable(h_pp) & _usable(grid.lam_at(-2) - grid.lam_at(-3))
        ok2 = ok & ~order3
        r1 = -h_pp / h
        hh = -h
        phi = torch.expm1(hh)
        b1 = (phi / hh - 1.0) / phi
        b2 = 2.0 * ((phi / hh - 1.0) / hh - 0.5) / phi
        rho0 = (b1 - b2) / (1.0 - r1)
        rho1 = b1 - rho0
        coefs = {"c_ratio": ratio, "c_c1": c1, "c_k2": torch.where(ok2, c1 * rho0 / r1, torch.zeros_like(h))}
        k_t = torch.where(ok2, c1 * rho1, k_t)
        if self.order >= 3:
            k_2, k_3, k3_t = self._correct3_coeffs(grid, c1, h, order3)
            k_t = torch.where(order3, k3_t, k_t)
            coefs.update({"c3_k2": k_2, "c3_k3": k_3})
        coefs["c_kt"] = k_t
        return coefs, {"c_ok2": ok2, "c_order3": order3}

    def _correct(self, x: Tensor, m0: Tensor, m1: Tensor, ctx: StepContext, t) -> Tensor:
        """UniC for the step j-1 -> j, using m0 = x0_hat at the predicted x_j (m1: x0_hat at x_{j-1})."""
        corrected = t.coef("c_ratio", x) * ctx.history("x_last") + t.coef("c_c1", x) * m1
        if t.any("c_ok2"):
            corrected = corrected + t.coef("c_k2", x) * (ctx.history("m2") - m1)
        if t.any("c_order3"):
            corrected = (corrected + t.coef("c3_k2", x) * (ctx.history("m2") - m1)
                         + t.coef("c3_k3", x) * (ctx.history("m3") - m1))
        corrected = corrected + t.coef("c_kt", x) * (m0 - m1)
        return torch.where(t.mask("c_same", x), x, corrected)

    @staticmethod
    def _correct3_coeffs(grid: StepContext, c1: Tensor, h: Tensor, use: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """UniC-3's coefficients on (m_{j-2} - m_{j-1}), (m_{j-3} - m_{j-1}) and (m_j - m_{j-1})."""
        one = torch.ones_like(h)
        hs = torch.where(use, h, one)
        r1 = torch.where(use, (grid.lam_at(-2) - grid.lam_at(-1)) / hs, -one)
        r2 = torch.where(use, (grid.lam_at(-3) - grid.lam_at(-1)) / hs, -2 * one)
        cols = torch.stack([r1, r2, one], dim=1)  # (n, 3): the system's columns
        R = torch.stack([cols**0, cols, cols**2], dim=1)  # rows: powers 0, 1, 2
        b = torch.stack(_bh2_b(hs, 3), dim=1)
        rho = torch.linalg.solve(R, b)
        zero = torch.zeros_like(h)
        return (torch.where(use, c1 * rho[:, 0] / r1, zero), torch.where(use, c1 * rho[:, 1] / r2, zero),
                torch.where(use, c1 * rho[:, 2], zero))
