"""The rollout's solver keys: scheduled_sampling_order and _batching reach the solver; bad values exit 2."""

from __future__ import annotations

import pytest
import torch
from rollgraph.graph.cli import main
from rollgraph.graph.context import RunContext
from rollgraph.stages.rollout import RolloutParams, ScheduledSamplingRollout
from rollgraph.stages.schedule import make_schedule
from rollgraph.stages.solvers import get_solver, solve

from tests.conftest import read_metrics
from tests.fakes import FnModel, FnModule, noisy_batch

ROLLOUT = {"scheduled_sampling_max_step_offset": 6, "scheduled_sampling_probability": 1.0}


def wavy(x, t, labels):
    return torch.tanh(1.5 * x) * 0.7 + 1e-3 * t.reshape(-1, 1, 1, 1) + 0.1 * labels.float().reshape(-1, 1, 1, 1)


def rolled(prediction_type: str, **kw):
    schedule = make_schedule(prediction_type)
    noisy = noisy_batch(schedule, n=12, levels=torch.linspace(0.05, 0.7, 12) if prediction_type == "flow_matching"
                        else torch.arange(50, 650, 50).float())
    module = FnModule(wavy)
    params = RolloutParams(**ROLLOUT, scheduled_sampling_grid_steps=50, **kw)
    out = ScheduledSamplingRollout("rollout", params).run(RunContext(config=None, seed=3), noisy=noisy,
                                                          model=FnModel(module), schedule=schedule)["noisy"]
    return out, noisy, schedule, module.calls


@pytest.mark.parametrize("prediction_type", ["flow_matching", "epsilon"])
@pytest.mark.parametrize("sampler", ["unipc", "dpm"])
def test_order_reaches_the_rollout_solver(prediction_type, sampler):
    results = {}
    for order in (1, 2, 3):
        out, noisy, schedule, _ = rolled(prediction_type, scheduled_sampling_sampler=sampler, scheduled_sampling_order=order)
        results[order] = out.x
        i = int(out.steps.argmax())  # the longest rollout, solved alone with that order
        path = schedule.rollout_path(noisy.level[i:i + 1], out.steps[i:i + 1], 50)
        x_src = schedule.add_noise(noisy.x0[i:i + 1], noisy.noise[i:i + 1], path[:, 0])
        label = noisy.cond["class_labels"][i:i + 1]
        ref = solve(lambda x, lv, idx, label=label, s=schedule: wavy(x, s.model_timestep(lv), label), x_src, path,
                    out.steps[i:i + 1], schedule, get_solver(sampler, order)).x
        torch.testing.assert_close(out.x[i:i + 1], ref, atol=1e-6, rtol=1e-6)
    assert int(out.steps.max()) >= 3  # order 3 is reached from the third step on
    assert (results[1] - results[2]).abs().max() > 1e-4 and (results[3] - results[2]).abs().max() > 1e-6
    default, *_ = rolled(prediction_type, scheduled_sampling_sampler=sampler)
    assert torch.equal(default.x, results[2])  # unset = order 2


@pytest.mark.parametrize("sampler", ["unipc", "rk4"])
def test_balanced_batching_gives_the_same_rollout_in_even_calls(sampler):
    shrink, _, _, shrink_calls = rolled("flow_matching", scheduled_sampling_sampler=sampler)
    balance, _, _, balance_calls = rolled("flow_matching", scheduled_sampling_sampler=sampler,
                                          scheduled_sampling_batching="balanced")
    k = shrink.steps
    assert torch.equal(k, balance.steps)
    torch.testing.assert_close(balance.x, shrink.x, atol=1e-6, rtol=1e-6)
    assert len(balance_calls) == len(shrink_calls) and sum(balance_calls) == sum(shrink_calls)
    even = -(-int(k.sum()) // int(k.max()))
    assert max(balance_calls) == even < max(shrink_calls)


def test_bad_order_or_fine_ddpm_grid_exit_2_naming_the_key(tiny, capsys):
    cases = [
        (dict(scheduled_sampling_order=4), ["scheduled_sampling_order"]),
        (dict(**ROLLOUT, scheduled_sampling_order=2, scheduled_sampling_sampler="rk4"), ["scheduled_sampling_order", "rk4"]),
        (dict(**ROLLOUT, scheduled_sampling_order=1, scheduled_sampling_sampler="euler", prediction_type="epsilon",
              scheduled_sampling_grid_steps=1001), ["scheduled_sampling_order", "euler", "scheduled_sampling_grid_steps=1001"]),
        (dict(**ROLLOUT, scheduled_sampling_batching="even"), ["scheduled_sampling_batching"]),
    ]
    for overrides, words in cases:
        for cmd in ("validate", "run"):
            assert main([cmd, str(tiny(**overrides))]) == 2
            err = capsys.readouterr().err
            assert all(w in err for w in words), err
    # the same grid is fine for flow matching (continuous sigma) and for DDPM at N = T
    assert main(["validate", str(tiny(**ROLLOUT, scheduled_sampling_grid_steps=1001))]) == 0
    assert main(["validate", str(tiny(**ROLLOUT, prediction_type="epsilon", scheduled_sampling_grid_steps=1000))]) == 0
    assert main(["validate", str(tiny(graph={"nodes": [{"id": "rollout", "type": "rollout.scheduled_sampling", "params": {
        "scheduled_sampling_order": 3, "scheduled_sampling_sampler": "rk4", "scheduled_sampling_max_step_offset": 2},
        "inputs": {"noisy": "noise.noisy", "model": "model.model", "schedule": "schedule.schedule"}},
        {"id": "predict", "inputs": {"noisy": "rollout.noisy"}}]}))]) == 2
    assert "scheduled_sampling_order" in capsys.readouterr().err


def test_ddpm_rollout_path_refuses_a_grid_finer_than_the_timesteps():
    schedule = make_schedule("epsilon", num_train_timesteps=100)
    with pytest.raises(ValueError, match="scheduled_sampling_grid_steps=200"):
        schedule.rollout_path(torch.tensor([10.0]), torch.tensor([2]), grid_steps=200)
    assert schedule.rollout_path(torch.tensor([10.0]), torch.tensor([2]), grid_steps=100)[0].tolist() == [12.0, 11.0, 10.0]


@pytest.mark.parametrize("prediction_type", ["flow_matching", "epsilon", "v_prediction"])
def test_order_3_balanced_rollout_trains(tiny, tmp_path, prediction_type):
    cfg = tiny(output_dir=str(tmp_path / "o3"), max_train_steps=2, prediction_type=prediction_type, **ROLLOUT,
               scheduled_sampling_sampler="dpm", scheduled_sampling_order=3, scheduled_sampling_batching="balanced")
    assert main(["run", str(cfg)]) == 0
    metrics = read_metrics(tmp_path / "o3")
    assert sum(m["rollout/model_evals"] for m in metrics) > 0 and all(torch.isfinite(torch.tensor(m["loss"])) for m in metrics)


def test_resume_is_exact_with_balanced_order_3_rollout(tiny, tmp_path):
    common = dict(ROLLOUT, scheduled_sampling_sampler="unipc", scheduled_sampling_order=3,
                  scheduled_sampling_batching="balanced", scheduled_sampling_probability=0.7)
    full = tiny(output_dir=str(tmp_path / "full"), max_train_steps=4, **common)
    assert main(["run", str(full)]) == 0
    part = tiny(output_dir=str(tmp_path / "part"), max_train_steps=2, checkpointing_steps=2, **common)
    assert main(["run", str(part)]) == 0
    assert main(["run", str(part), "--max_train_steps", "4", "--resume", "latest"]) == 0
    a = [m["loss"] for m in read_metrics(tmp_path / "full")]
    b = [m["loss"] for m in read_metrics(tmp_path / "part")]
    assert len(a) == len(b) == 4 and a == b  # bit-exact on the CPU
    assert sum(m["rollout/model_evals"] for m in read_metrics(tmp_path / "full")) > 0
