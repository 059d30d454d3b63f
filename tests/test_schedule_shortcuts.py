"""The step's shortcuts change no bit: where the schedule skips arithmetic that cannot change a value (shift 1,
a standard logit-normal, a broadcast done once), the result equals the general formula's exactly."""

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
