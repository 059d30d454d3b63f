"""Solver coefficient tables: computed once per solve, each round reading its own samples' rows.

A solver's per-(sample, step) coefficients are computed on ``StepContext.every_step()`` once per solve and
gathered per round (stages/solvers/base.py, "Cost"). These tests pin that down: the rows a round reads are
the ones its own per-round computation would give (against a solver written the per-round way, as a third
party may write one), whatever the batching, and the tables are built once, not once per round.
"""

from __future__ import annotations

import pytest
import torch
from rollgraph.stages.schedule import make_schedule
from rollgraph.stages.solvers import Solver, StepContext, get_solver, solve
from rollgraph.stages.solvers.base import stay_on_zero_length
from torch import Tensor


class PerRoundEuler(Solver):
    """DDIM / flow Euler written without tables: each round computes its coefficients from ctx.level."""

    name = "per-round-euler"

    def step(self, x: Tensor, ctx: StepContext) -> Tensor:
        x0, eps = ctx.evaluate(x, ctx.level())
        a1, s1 = ctx.alpha_sigma(ctx.level(1))
        return stay_on_zero_length(x, ctx.coef(a1, x) * x0 + ctx.coef(s1, x) * eps, ctx)  # the per-round helper


def model(x, level, idx):
    u = level.reshape(-1, *[1] * (x.dim() - 1)).to(x.dtype)
    return torch.tanh(1.3 * x) * (0.6 + 0.4 * torch.cos(3 * u)) + 0.05 * idx.reshape(-1, 1, 1, 1).to(x.dtype)


def rollout_batch(schedule, n=24, kmax=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    level = schedule.sample_training_levels(n, g, "logit_normal")
    level[:2] = torch.tensor([1.0, 0.99])  # clamped sources: zero-length steps
    k = torch.randint(0, kmax + 1, (n,), generator=g)
    k[0], k[-1] = kmax, 0
    path = schedule.rollout_path(level, k, 20)
    return torch.randn(n, 1, 3, 3, generator=g, dtype=torch.float64), path, k


@pytest.mark.parametrize("batching", ["shrinking", "balanced"])
def test_table_rows_match_the_per_round_computation(batching):
    schedule = make_schedule("flow_matching", shift=3.0)
    x, path, k = rollout_batch(schedule)
    tabled = solve(model, x, path, k, schedule, get_solver("euler"), batching)
    per_round = solve(model, x, path, k, schedule, PerRoundEuler(), batching)
    assert torch.equal(tabled.x, per_round.x)
    assert (tabled.calls, tabled.model_evals) == (per_round.calls, per_round.model_evals) == (int(k.max()), int(k.sum()))
    assert not torch.equal(tabled.x[k > 0], x[k > 0])  # the rollout moved them


@pytest.mark.parametrize("sampler", ["euler", "unipc", "dpm", "rk4"])
def test_tables_are_built_once_per_solve(sampler, monkeypatch):
    schedule = make_schedule("epsilon")
    x, path, k = rollout_batch(schedule, kmax=6)
    path = path.round().clamp(min=0)
    solver = get_solver(sampler)
    built = []
    original = type(solver).tables
    monkeypatch.setattr(type(solver), "tables", lambda self, grid: built.append(len(grid.idx)) or original(self, grid))
    result = solve(model, x, path, k, schedule, solver)
    assert result.calls == int(k.max()) * solver.evals_per_step
    assert built == [len(k) * (path.shape[1] - 1)]  # one table, every (sample, step) pair
