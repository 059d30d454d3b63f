"""The step's shortcuts change no bit: where the schedule skips arithmetic that cannot change a value (shift 1,
a standard logit-normal, a broadcast done once), the result equals the general formula's exactly; the per-step
seeds computed a block ahead are the seeds derived one at a time."""

from __future__ import annotations

import torch
from rollgraph.stages.schedule import FlowMatchingSchedule, Schedule


def general_level_at(u, s):
    return s * u / (1.0 + (s - 1.0) * u)


def general_grid_coordinate(level, s):
    return level / (s - (s - 1.0) * level)


def test_shift_one_maps_are_the_general_formula_bit_for_bit():
    flow = FlowMatchingSchedule(1000, 1.0)
    u = torch.cat([torch.rand(4096, dtype=torch.float64), torch.tensor([0.0, 1.0, 1e-300, 0.5], dtype=torch.float64)])
    for x in (u, u.float()):
        assert torch.equal(flow.level_at(x), general_level_at(x, 1.0))
        assert torch.equal(flow.grid_coordinate(x), general_grid_coordinate(x, 1.0))
        assert flow.level_at(x) is not x  # a copy: callers may write into it
    assert torch.equal(flow._training_level(u), general_level_at(u, 1.0).float())


def test_standard_logit_normal_draws_what_mean_0_std_1_arithmetic_draws():
    flow = FlowMatchingSchedule(1000, 3.0)
    got = flow.sample_training_levels(512, torch.Generator().manual_seed(3), "logit_normal", 0.0, 1.0)
    z = torch.randn(512, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert torch.equal(got, general_level_at(torch.sigmoid(0.0 + 1.0 * z), 3.0).float())


def test_flow_add_noise_is_the_base_arithmetic_bit_for_bit():
    flow = FlowMatchingSchedule(1000, 1.0)
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        x0 = torch.randn(64, 3, 8, 8, generator=g).to(dtype)
        eps = torch.randn(64, 3, 8, 8, generator=g).to(dtype)
        level = torch.rand(64, generator=g)  # float32 levels: bf16/fp16 data take the base path
        assert torch.equal(flow.add_noise(x0, eps, level), Schedule.add_noise(flow, x0, eps, level)), dtype
        same = level.to(dtype)
        assert torch.equal(flow.add_noise(x0, eps, same), Schedule.add_noise(flow, x0, eps, same)), dtype


def test_step_seeds_are_derive_seed_at_every_step_across_blocks():
    """The per-step seeds computed a block ahead (``StepSeeds``) are exactly ``derive_seed``'s, in any order of
    steps (a resume jumps; the blocks are 64 steps), and the generators built from them draw what one seeded with
    ``derive_seed`` draws: the shortcut changes when seeds are computed, never which."""
    from rollgraph.graph.context import RunContext, StepSeeds, derive_seed

    seeds = StepSeeds()
    for step in (0, 1, 63, 64, 65, 127, 5, 1000, 999, 64):
        assert seeds((7, "global"), step, (0,)) == derive_seed(7, "global", step, 0)
        assert seeds((7, "noise"), step, (1, "global-batch")) == derive_seed(7, "noise", step, 1, "global-batch")
    ctx = RunContext(config=None, seed=3, step=130, micro_step=1, rank=2)
    for make, parts in ((ctx.generator, ("noise", 130, 1, 2)), (ctx.batch_generator, ("noise", 130, 1, "global-batch"))):
        expected = torch.randn(5, generator=torch.Generator().manual_seed(derive_seed(3, *parts)))
        assert torch.equal(torch.randn(5, generator=make("noise")), expected)
    ctx.seed_step_rng()
    drawn = torch.rand(3)
    torch.manual_seed(derive_seed(3, "global", 130, 2))
    assert torch.equal(drawn, torch.rand(3))
