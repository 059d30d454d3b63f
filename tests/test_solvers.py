"""The shared solvers: equality with diffusers' schedulers, convergence order, batching, limits.

All in float64 on the CPU. Tolerances: equality with diffusers 1e-10 max-abs (observed <= 1e-13);
per-sample batching vs one sample alone 1e-12; fitted log-log slopes within the margins below.
"""

from __future__ import annotations

from unittest import mock

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    UniPCMultistepScheduler,
)
from rollgraph.stages.schedule import DDPMSchedule, FlowMatchingSchedule
from rollgraph.stages.solvers import SOLVERS, SolveResult, call_plan, get_solver, solve

F64 = torch.float64
BETAS = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
DDPM_TYPES = ("epsilon", "v_prediction", "sample")
ALL_TYPES = ("flow_matching", *DDPM_TYPES)
# diffusers' set_timesteps under numpy 2 (np.array on a torch tensor), not ours
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy:DeprecationWarning")


def _bc(c, x):
    return c.to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))


def _schedule(ptype):
    return FlowMatchingSchedule(shift=3.0) if ptype == "flow_matching" else DDPMSchedule(ptype)


def stand_in(x, level, flow):
    """A deterministic nonlinear "model" of (x, level); DDPM levels are normalised to (t + 1)/1000."""
    u = _bc(level.double() if flow else (level.double() + 1) / 1000, x)
    return torch.tanh(1.3 * x) * (0.6 + 0.4 * torch.cos(3 * u)) - 0.3 * x * u + 0.2 * torch.sin(2 * x + u)


def _model(flow):
    return lambda xs, lv, idx: stand_in(xs, lv, flow)


def _x(shape=(4, 3, 5, 5), seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


# -- 1. equality with diffusers on one shared grid -------------------------------------------------
_TO = torch.Tensor.to


def _to_keeping_float64(self, *args, **kwargs):
    """diffusers' DPMSolverMultistep and FlowMatchEuler ``step`` do ``sample.to(torch.float32)``, which caps
    agreement at ~1e-5; patched in for the reference run only, it keeps float64 samples in float64."""
    return self if args == (torch.float32,) and not kwargs and self.dtype == F64 else _TO(self, *args, **kwargs)


def _reference(solver, ptype, n, final, order=2):
    """A diffusers scheduler and our path (float64) on exactly its grid."""
    flow = ptype == "flow_matching"
    ours = _schedule(ptype)
    if solver == "euler" and flow:
        sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    elif solver == "euler":
        sched = DDIMScheduler(**BETAS, prediction_type=ptype, clip_sample=False, set_alpha_to_one=True,
                              timestep_spacing="trailing")
        sched.alphas_cumprod = ours.alphas_cumprod.clone()  # our float64 table
    else:
        cls = UniPCMultistepScheduler if solver == "unipc" else DPMSolverMultistepScheduler
        kw = dict(algorithm_type="dpmsolver++") if solver == "dpm" else {}
        kw["solver_order"] = order
        if flow:
            kw.update(use_flow_sigmas=True, flow_shift=3.0)
        sched = cls(**({} if flow else BETAS), prediction_type="flow_prediction" if flow else ptype,
                    final_sigmas_type=final, **kw)
    sched.set_timesteps(n)
    if flow:
        sched.sigmas = sched.sigmas.double()
        return sched, sched.sigmas.clone(), ours
    last = -1.0 if final == "zero" else 0.0  # clean level, or diffusers' sigma_min = timestep 0
    levels = torch.cat([sched.timesteps.double(), torch.tensor([last], dtype=F64)])
    if solver != "euler":
        a, s = ours.alpha_sigma(levels)
        sched.sigmas = s / a  # diffusers' sigma = s/a, in float64 from our table
    return sched, levels, ours


EQUALITY = [("euler", "flow_matching", n, "zero") for n in (8, 20)]
EQUALITY += [("euler", p, n, "zero") for p in DDPM_TYPES for n in (10, 20)]
EQUALITY += [(s, p, n, "zero") for s in ("unipc", "dpm") for p in ALL_TYPES for n in (8, 20)]
# a final level that is not clean: pins lower_order_final (dpm: only below 15 steps; unipc: always)
EQUALITY += [(s, "epsilon", n, "sigma_min") for s in ("unipc", "dpm") for n in (8, 20)]


# solver orders 1 and 3 (``scheduled_sampling_order``): diffusers' solver_order on the same grids
EQUALITY_ORDER = [(s, p, n, "zero", o) for s in ("unipc", "dpm") for p in ALL_TYPES for n in (8, 20) for o in (1, 3)]
EQUALITY_ORDER += [(s, "epsilon", n, "sigma_min", 3) for s in ("unipc", "dpm") for n in (8, 20)]


def _run_reference(solver, ptype, n, final, order=2, batching="shrinking"):
    flow = ptype == "flow_matching"
    sched, levels, schedule = _reference(solver, ptype, n, final, order)
    x = ref = _x()
    with mock.patch.object(torch.Tensor, "to", _to_keeping_float64):
        for i, t in enumerate(sched.timesteps):  # the stand-in sees the same grid level in both runs
            ref = sched.step(stand_in(ref, levels[i].expand(len(x)), flow), t, ref).prev_sample
    res = solve(_model(flow), x, levels[None].expand(len(x), -1), torch.full((len(x),), n), schedule,
                get_solver(solver, None if order == 2 else order), batching)
    assert res.calls == n and res.model_evals == n * len(x)
    return (res.x - ref).abs().max().item()


@pytest.mark.parametrize("solver,ptype,n,final", EQUALITY)
def test_matches_diffusers(solver, ptype, n, final):
    assert _run_reference(solver, ptype, n, final) < 1e-10


@pytest.mark.parametrize("solver,ptype,n,final,order", EQUALITY_ORDER)
def test_orders_match_diffusers(solver, ptype, n, final, order):
    assert _run_reference(solver, ptype, n, final, order) < 1e-10


# -- 2. convergence order on Gaussian data (exact prediction, exact ODE solution) -------------------
G = torch.Generator().manual_seed(1)
MU = torch.randn(32, generator=G, dtype=F64) * 0.5 + 0.2
C = 0.3 + 1.2 * torch.rand(32, generator=G, dtype=F64)
X0 = MU + C * torch.randn(6, 32, generator=G, dtype=F64)
EPS = torch.randn(6, 32, generator=G, dtype=F64)


def gaussian_model(schedule):
    """The exact prediction for x0 ~ N(MU, C^2): x0_hat = MU + a C^2 (x - a MU)/std^2, eps_hat = s (x - a MU)/std^2."""
    def fn(x, level, idx):
        a, s = (_bc(t, x) for t in schedule.alpha_sigma(level.double()))
        var = a * a * C * C + s * s
        x0, eps = MU + a * C * C * (x - a * MU) / var, s * (x - a * MU) / var
        return {"flow_matching": eps - x0, "epsilon": eps, "v_prediction": a * eps - s * x0, "sample": x0}[
            schedule.prediction_type]
    return fn


def gaussian_error(schedule, solver, levels):
    """Max-abs error of integrating forward-noised samples along ``levels`` against the exact ODE solution."""
    (a0, s0), (a1, s1) = (schedule.alpha_sigma(levels[[i]]) for i in (0, -1))
    x = a0 * X0 + s0 * EPS
    exact = a1 * MU + (a1**2 * C**2 + s1**2).sqrt() / (a0**2 * C**2 + s0**2).sqrt() * (x - a0 * MU)
    steps = torch.full((len(x),), len(levels) - 1)
    out = solve(gaussian_model(schedule), x, levels[None].expand(len(x), -1), steps, schedule, solver).x
    return (out - exact).abs().max().item()


def fitted_slope(schedule, solver, make_levels, ns=(16, 32, 64, 128)):
    errs = [gaussian_error(schedule, solver, make_levels(n)) for n in ns]
    lx = torch.log(torch.tensor(ns, dtype=F64))
    ly = torch.log(torch.tensor(errs, dtype=F64))
    return -(((lx - lx.mean()) * (ly - ly.mean())).sum() / ((lx - lx.mean()) ** 2).sum()).item()


def _uniform(l0, l1):
    return lambda n: torch.linspace(l0, l1, n + 1, dtype=F64)


def _lambda_uniform(schedule, t0, t1):
    def make(n):
        lam = schedule.lambda_(torch.tensor([t0, t1], dtype=F64))
        levels = schedule.level_from_lambda(torch.linspace(float(lam[0]), float(lam[1]), n + 1, dtype=F64))
        levels[0], levels[-1] = t0, t1
        return levels
    return make


# measured (fitted over 16..128 steps): flow euler 0.99, dpm 2.01, unipc 1.91, rk4 4.06;
# DDPM (uniform in lambda) euler 0.98, dpm 1.97, unipc 2.98, rk4 4.01
ORDER = {"euler": (0.85, 1.15), "dpm": (1.75, 2.25), "unipc": (1.8, 3.3), "rk4": (3.7, 4.3)}


@pytest.mark.parametrize("solver", list(SOLVERS))
@pytest.mark.parametrize("case", ["flow", "epsilon", "v_prediction"])
def test_convergence_order(solver, case):
    # flow: uniform in sigma away from the limits (test_limits_converge has those); DDPM: uniform in lambda
    schedule = FlowMatchingSchedule() if case == "flow" else DDPMSchedule(case)
    make = _uniform(0.9, 0.1) if case == "flow" else _lambda_uniform(schedule, 999.0, 0.0)
    lo, hi = ORDER[solver]
    assert lo <= fitted_slope(schedule, solver, make) <= hi


# Full paths with the infinite-lambda ends. Flow sigma 1 -> 0 uniform in sigma: the first and last steps
# stay O(1) in lambda, which costs the multistep solvers a log factor (measured: euler 0.98, unipc 2.07,
# dpm 1.64, rk4 4.15). DDPM sampling path 999 -> clean (trailing): s^2 ~ t near t = 0, so the final
# (first-order) step's error is O(1/N) for every exponential integrator, as in diffusers (measured: euler
# 0.94, unipc 1.02, dpm 1.06). rk4 never evaluates the model at the (untrained) clean level: its final step
# is second order there (measured 2.04 for every prediction type; evaluating at level -1 gave 2.92).
FLOW_LIMIT_SLOPE = {"euler": 0.85, "dpm": 1.5, "unipc": 1.8, "rk4": 3.7}


@pytest.mark.parametrize("solver", list(SOLVERS))
def test_limits_converge(solver):
    flow = FlowMatchingSchedule()
    assert fitted_slope(flow, solver, _uniform(1.0, 0.0)) >= FLOW_LIMIT_SLOPE[solver]
    for ptype in DDPM_TYPES:
        schedule = DDPMSchedule(ptype)
        slope = fitted_slope(schedule, solver, lambda n, s=schedule: s.sampling_levels(n).double())
        assert slope >= (1.8 if solver == "rk4" else 0.85)


# -- 3. batching: per-sample paths and step counts, counted calls -------------------------------------
def _assert_same_alone(res, make_fn, x, path, steps, schedule, solver):
    """Each sample solved alone (its own path prefix and conditioning) gives its batched result."""
    for i, n in enumerate(steps.tolist()):
        alone = solve(make_fn(i), x[i:i + 1], path[i:i + 1, :n + 1], steps[i:i + 1], schedule, solver)
        assert (res.x[i:i + 1] - alone.x).abs().max().item() < 1e-12


def _counting_model(flow, cond, sizes):
    def fn(xs, lv, idx):
        sizes.append(len(idx))
        assert xs.shape[0] == lv.shape[0] == idx.shape[0]
        return stand_in(xs, lv, flow) + 0.1 * _bc(cond[idx], xs)
    return fn


# targets with k = [2, 3, 2, 0, 5, 16, 1]: a start clamped to the noisiest level (sample 1), a path of equal
# levels (2), k = 0 (3), k >= 15 (5: dpm keeps order 2 on its last step)
K = [2, 3, 2, 0, 5, 16, 1]
ROLLOUT = {"flow_matching": [0.3, 0.95, 1.0, 0.5, 0.02, 0.7, 0.4],
           "epsilon": [300.0, 990.0, 999.0, 500.0, 10.0, 700.0, 40.0]}
ROLLOUT["v_prediction"] = ROLLOUT["epsilon"]


@pytest.mark.parametrize("batching", ["shrinking", "balanced"])
@pytest.mark.parametrize("solver", list(SOLVERS))
@pytest.mark.parametrize("ptype", list(ROLLOUT))
def test_batched_equals_one_by_one(solver, ptype, batching):
    flow = ptype == "flow_matching"
    schedule = FlowMatchingSchedule() if flow else DDPMSchedule(ptype)
    targets, k = torch.tensor(ROLLOUT[ptype], dtype=F64), torch.tensor(K)
    path = schedule.rollout_path(targets, k, grid_steps=20)
    x = _x((len(k), 2, 3, 3), seed=3)
    cond = torch.linspace(-1, 1, len(k), dtype=F64)
    sizes: list[int] = []
    res = solve(_counting_model(flow, cond, sizes), x, path, k, schedule, solver, batching)
    e = SOLVERS[solver].evals_per_step
    assert isinstance(res, SolveResult)
    if batching == "shrinking":
        assert sizes == [int((k > j).sum()) for j in range(int(k.max())) for _ in range(e)]
    else:  # every call carries floor or ceil(sum k / max k) samples: 29 / 16 -> 1 or 2
        assert len(sizes) == int(k.max()) * e and set(sizes) == {1, 2}
    assert res.calls == int(k.max()) * e and res.model_evals == int(k.sum()) * e == sum(sizes)
    _assert_same_alone(res, lambda i: _counting_model(flow, cond[i:i + 1], []), x, path, k, schedule, solver)
    assert torch.equal(res.x[3], x[3])  # k = 0: unchanged
    assert torch.equal(res.x[2], x[2])  # a path of equal levels (target at the noisiest level): identity
    assert torch.isfinite(res.x).all()


@pytest.mark.parametrize("steps", [[2, 3, 2, 0, 5, 16, 1], [4, 4, 4], [1, 0, 0], [10, 1, 1, 1, 9, 3, 0, 10]])
def test_balanced_call_plan(steps):
    """Each round carries floor or ceil(sum k / max k) samples; each sample takes steps 0..k-1 in order."""
    k = torch.tensor(steps)
    plan = call_plan(k, "balanced")
    assert len(plan) == int(k.max())
    lo, hi = int(k.sum()) // int(k.max()), -(-int(k.sum()) // int(k.max()))
    assert all(lo <= len(idx) <= hi for idx, _ in plan)
    seen: dict[int, list[int]] = {}
    for idx, step_index in plan:
        assert torch.equal(idx, idx.sort().values)
        for i, j in zip(idx.tolist(), step_index.tolist(), strict=True):
            seen.setdefault(i, []).append(j)
    assert seen == {i: list(range(n)) for i, n in enumerate(steps) if n}


@pytest.mark.parametrize("batching", ["shrinking", "balanced"])
@pytest.mark.parametrize("solver", list(SOLVERS))
@pytest.mark.parametrize("ptype", ["flow_matching", "epsilon"])
def test_mixed_sampling_paths(solver, ptype, batching):
    """Inference paths of different lengths in one batch, padded with the clean level."""
    flow = ptype == "flow_matching"
    schedule = FlowMatchingSchedule(shift=3.0) if flow else DDPMSchedule(ptype)
    ns = [4, 12, 0, 7]
    path = torch.stack([torch.nn.functional.pad(schedule.sampling_levels(n).double(), (0, 12 - n),
                                                value=schedule.clean_level) for n in ns])
    x, steps = _x((4, 6), seed=5), torch.tensor(ns)
    res = solve(_model(flow), x, path, steps, schedule, get_solver(solver, 3 if solver in ("unipc", "dpm") else None),
                batching)
    _assert_same_alone(res, lambda i: _model(flow), x, path, steps, schedule,
                       get_solver(solver, 3 if solver in ("unipc", "dpm") else None))
    assert torch.equal(res.x[2], x[2])


@pytest.mark.parametrize("ptype", DDPM_TYPES)
@pytest.mark.parametrize("n", [8, 400])
def test_rk4_never_evaluates_below_timestep_zero(ptype, n):
    """The clean level -1 was never trained: rk4's last step to it extrapolates its fourth slope instead
    (and is first order when even its midpoint would be below timestep 0: from t = 2 at 400 steps)."""
    schedule = DDPMSchedule(ptype)
    seen: list[float] = []

    def fn(xs, lv, idx):
        seen.append(float(lv.min()))
        return stand_in(xs, lv, False)

    path = schedule.sampling_levels(n)[None].expand(3, -1)
    res = solve(fn, _x((3, 8), seed=n), path, torch.full((3,), n), schedule, "rk4")
    assert min(seen) >= 0.0 and torch.isfinite(res.x).all()
    assert res.model_evals == 3 * (4 * (n - 1) + (3 if n == 8 else 1))


def test_unipc_zero_length_step_keeps_the_corrector():
    """Path 0.8 -> 0.5 -> 0.5 (a repeated level): the second step's evaluation corrects the first step
    (UniC-1, rho = 1/2) and the zero-length predictor then leaves the corrected x (diffusers does the same)."""
    schedule = FlowMatchingSchedule()
    x = _x((3, 5), seed=7)
    model = _model(True)
    lv = torch.tensor([0.8, 0.5], dtype=F64)
    lam = schedule.lambda_(lv)
    a1, s1 = 0.5, 0.5
    c1 = -a1 * torch.expm1(-(lam[1] - lam[0]))

    def x0_hat(xs, level):
        return schedule.to_x0_eps(model(xs, torch.full((3,), level, dtype=F64), None), xs,
                                  torch.full((3,), level, dtype=F64))[0]

    m_a = x0_hat(x, 0.8)
    x1 = (s1 / 0.8) * x + c1 * m_a
    expected = x1 + c1 * 0.5 * (x0_hat(x1, 0.5) - m_a)
    res = solve(model, x, torch.tensor([0.8, 0.5, 0.5], dtype=F64)[None].expand(3, -1), torch.full((3,), 2), schedule,
                "unipc")
    assert (res.x - expected).abs().max() < 1e-12 and (res.x - x1).abs().max() > 1e-3


def test_solver_orders():
    assert (get_solver("unipc").order, get_solver("dpm", 3).order, get_solver("unipc", 1).order) == (2, 3, 1)
    with pytest.raises(ValueError, match="order must be one of \\[1, 2, 3\\] for dpm"):
        get_solver("dpm", 4)
    with pytest.raises(ValueError, match="fixed order"):
        get_solver("rk4", 2)


# -- 4. the infinite-lambda ends: no nan/inf, in float64 and float32 ----------------------------------
@pytest.mark.parametrize("solver", list(SOLVERS))
@pytest.mark.parametrize("ptype", ALL_TYPES)
def test_no_nan_from_sigma_one_to_clean(solver, ptype):
    flow = ptype == "flow_matching"
    schedule = _schedule(ptype)
    for n in (1, 2, 6):
        path = schedule.sampling_levels(n)[None].expand(3, -1)  # flow: exactly 1 -> 0; DDPM: 999 -> -1
        assert path[0, -1] == schedule.clean_level and (not flow or path[0, 0] == 1.0)
        x = _x((3, 8), seed=n)
        r64, r32 = (solve(_model(flow), x.to(dt), path, torch.full((3,), n), schedule, solver).x
                    for dt in (F64, torch.float32))
        assert r64.dtype == F64 and r32.dtype == torch.float32
        # the stand-in is no denoiser (1/a(999) ~ 15 amplifies it), so only: finite, no 1/s blow-up
        assert torch.isfinite(r64).all() and torch.isfinite(r32).all() and r64.abs().max() < 1e3
        assert (r32.double() - r64).abs().max() < 1e-5 * (1 + r64.abs().max())


# -- registry --------------------------------------------------------------------------------------
def test_registry():
    assert list(SOLVERS) == ["euler", "unipc", "dpm", "rk4"]
    assert {n: get_solver(n).evals_per_step for n in SOLVERS} == {"euler": 1, "unipc": 1, "dpm": 1, "rk4": 4}
    assert all(get_solver(n).name == n for n in SOLVERS)
    with pytest.raises(KeyError, match="euler, unipc, dpm, rk4"):
        get_solver("heun")
    schedule = FlowMatchingSchedule()
    with pytest.raises(ValueError, match="steps"):
        solve(lambda *a: a[0], _x((2, 3)), torch.zeros(2, 3), torch.tensor([3, 1]), schedule, "euler")
    x = _x((2, 3))
    res = solve(_model(True), x, torch.ones(2, 1), torch.zeros(2, dtype=torch.long), schedule, get_solver("dpm"))
    assert torch.equal(res.x, x) and res.x is not x and (res.calls, res.model_evals) == (0, 0)
