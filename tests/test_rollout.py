"""Scheduled sampling: the rollout stage's math, batching, ramp, swapping and end-to-end runs."""

from __future__ import annotations

import pytest
import torch
from rollgraph.graph.cli import main
from rollgraph.graph.context import RunContext
from rollgraph.stages.rollout import RolloutParams, ScheduledSamplingRollout, rollout_probability
from rollgraph.stages.schedule import make_schedule
from rollgraph.stages.solvers import solve

from tests.conftest import read_metrics
from tests.fakes import FnModel, FnModule, noisy_batch, oracle_for_constant

PREDICTION_TYPES = ["flow_matching", "epsilon", "v_prediction", "sample"]
SAMPLERS = ["euler", "unipc", "dpm", "rk4"]


def params(**kw) -> RolloutParams:
    base = {"scheduled_sampling_max_step_offset": 4, "scheduled_sampling_probability": 1.0, "scheduled_sampling_grid_steps": 20}
    return RolloutParams(**{**base, **kw})


def wavy(x, t, labels):
    """A nonlinear stand-in model whose output depends on each sample's own class label."""
    shift = 0.0 if labels is None else labels.float().reshape(-1, 1, 1, 1) * 0.1
    return torch.tanh(x) * 0.7 + shift + 1e-4 * t.reshape(-1, 1, 1, 1)


def run_stage(p, schedule, noisy, fn=wavy, step=0, seed=0):
    module = FnModule(fn)
    ctx = RunContext(config=None, seed=seed, step=step)
    out = ScheduledSamplingRollout("rollout", p).run(ctx, noisy=noisy, model=FnModel(module), schedule=schedule)["noisy"]
    return out, ctx.pop_metrics(), module.calls


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_oracle_rollout_lands_on_the_clean_trajectory(prediction_type, sampler):
    """With the exact model (all x0 equal), integrating from the noisier level with the same eps must give
    back the teacher-forcing input: the rollout moves toward *less* noise, to exactly the target level."""
    schedule = make_schedule(prediction_type)
    noisy = noisy_batch(schedule, n=8, x0_value=0.3, levels=schedule.sample_training_levels(8, torch.Generator().manual_seed(1)).clamp(max=0.9 if prediction_type == "flow_matching" else 900))
    noisy.x = noisy.x.double()
    noisy.x0, noisy.noise = noisy.x0.double(), noisy.noise.double()
    out, metrics, _ = run_stage(params(scheduled_sampling_sampler=sampler), schedule, noisy, oracle_for_constant(schedule, 0.3))
    assert metrics["rollout/samples"] > 0
    torch.testing.assert_close(out.x, noisy.x_clean.double(), atol=2e-4, rtol=1e-4)


def test_zero_probability_or_offset_leaves_inputs_untouched():
    schedule = make_schedule("flow_matching")
    noisy = noisy_batch(schedule)
    for p in (params(scheduled_sampling_probability=0.0), params(scheduled_sampling_max_step_offset=0)):
        out, metrics, calls = run_stage(p, schedule, noisy)
        assert torch.equal(out.x, noisy.x) and calls == [] and metrics["rollout/model_evals"] == 0
        assert not out.rolled_mask.any()


def test_batched_rollout_equals_one_sample_at_a_time_and_counts_evals():
    schedule = make_schedule("flow_matching", shift=3.0)
    noisy = noisy_batch(schedule, n=12)
    p = params(scheduled_sampling_max_step_offset=5, scheduled_sampling_sampler="rk4", scheduled_sampling_probability=0.6)
    out, metrics, calls = run_stage(p, schedule, noisy)
    k = out.steps
    assert k.max() > 1 and (k == 0).any()  # a mix of lengths
    # one call per evaluation, over exactly the still-active samples
    expected_calls = [int((k > j).sum()) for j in range(int(k.max())) for _ in range(4)]
    assert calls == expected_calls
    assert metrics["rollout/model_evals"] == 4 * int(k.sum()) == sum(calls)
    assert metrics["rollout/samples"] == int((k > 0).sum())
    for i in range(len(k)):
        ki = k[i:i + 1]
        if ki.item() == 0:
            assert torch.equal(out.x[i], noisy.x[i])
            continue
        path = schedule.rollout_path(noisy.level[i:i + 1], ki, 20)
        x_src = schedule.add_noise(noisy.x0[i:i + 1], noisy.noise[i:i + 1], path[:, 0])
        labels = noisy.cond["class_labels"][i:i + 1]

        def single(x, level, idx, labels=labels):
            return wavy(x, schedule.model_timestep(level), labels)

        ref = solve(single, x_src, path, ki, schedule, "rk4").x
        torch.testing.assert_close(out.x[i:i + 1], ref, atol=1e-6, rtol=1e-6)


def test_rollout_lengths_are_uniform_over_0_to_max():
    schedule = make_schedule("flow_matching")
    noisy = noisy_batch(schedule, n=64, levels=torch.linspace(0.05, 0.8, 64))  # below the clamp: no cap binds
    counts = torch.zeros(4)
    for step in range(40):
        out, _, _ = run_stage(params(scheduled_sampling_max_step_offset=3, scheduled_sampling_sampler="euler"), schedule, noisy,
                              fn=lambda x, t, y: torch.zeros_like(x), step=step)
        counts += torch.bincount(out.steps, minlength=4)
    freq = counts / counts.sum()
    assert torch.all((freq - 0.25).abs() < 0.03), freq


def test_source_level_is_k_grid_steps_noisier():
    flow = make_schedule("flow_matching")
    path = flow.rollout_path(torch.tensor([0.30, 0.98]), torch.tensor([2, 3]), grid_steps=20)
    torch.testing.assert_close(path[0, :3], torch.tensor([0.40, 0.35, 0.30]))
    assert path[1, 0] == 1.0  # clamped at the noisiest level
    ddpm = make_schedule("epsilon")
    path = ddpm.rollout_path(torch.tensor([100.0]), torch.tensor([2]), grid_steps=1000)
    assert path[0].tolist() == [102.0, 101.0, 100.0]  # the training grid: one timestep per step


def test_ramp_goes_up_from_an_explicit_zero():
    p = params(scheduled_sampling_ramp_steps=100, scheduled_sampling_prob_start=0.0, scheduled_sampling_prob_end=0.5,
               scheduled_sampling_probability=0.9)
    assert rollout_probability(p, 0) == 0.0
    assert rollout_probability(p, 50) == pytest.approx(0.25)
    assert rollout_probability(p, 100) == 0.5 and rollout_probability(p, 1000) == 0.5
    assert rollout_probability(params(scheduled_sampling_probability=0.3), 10) == 0.3


def test_rollout_runs_the_model_in_eval_mode_and_restores_train_mode():
    schedule = make_schedule("flow_matching")
    seen = []
    module = FnModule(lambda x, t, y: torch.zeros_like(x))
    module.register_forward_pre_hook(lambda m, args: seen.append(m.training))
    module.train()
    ScheduledSamplingRollout("rollout", params()).run(RunContext(config=None), noisy=noisy_batch(schedule), model=FnModel(module), schedule=schedule)
    assert seen and not any(seen) and module.training


def test_stage_with_p_zero_reproduces_teacher_forcing_bit_for_bit(tiny, tmp_path):
    assert main(["run", str(tiny(output_dir=str(tmp_path / "tf"), max_train_steps=3))]) == 0
    forced = tiny(output_dir=str(tmp_path / "ss"), max_train_steps=3, graph={"nodes": [
        {"id": "rollout", "type": "rollout.scheduled_sampling",
         "params": {"scheduled_sampling_max_step_offset": 5, "scheduled_sampling_probability": 0.0},
         "inputs": {"noisy": "noise.noisy", "model": "model.model", "schedule": "schedule.schedule"}},
        {"id": "predict", "inputs": {"noisy": "rollout.noisy"}}]})
    assert main(["run", str(forced)]) == 0
    tf, ss = read_metrics(tmp_path / "tf"), read_metrics(tmp_path / "ss")
    assert [m["loss"] for m in tf] == [m["loss"] for m in ss]
    assert all(m["rollout/p"] == 0.0 and m["rollout/model_evals"] == 0 for m in ss)


@pytest.mark.parametrize("prediction_type", ["flow_matching", "epsilon"])
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_trains_end_to_end(tiny, tmp_path, prediction_type, sampler):
    cfg = tiny(output_dir=str(tmp_path / "r"), max_train_steps=2, prediction_type=prediction_type,
               scheduled_sampling_max_step_offset=3, scheduled_sampling_probability=1.0, scheduled_sampling_sampler=sampler)
    assert main(["run", str(cfg)]) == 0
    metrics = read_metrics(tmp_path / "r")
    per_step = 4 if sampler == "rk4" else 1
    assert all(m["rollout/p"] == 1.0 for m in metrics)
    assert sum(m["rollout/model_evals"] for m in metrics) % per_step == 0
    assert sum(m["rollout/samples"] for m in metrics) > 0


def test_swapping_the_rollout_stage_through_the_graph_section(tiny, tmp_path, capsys):
    cfg = tiny(output_dir=str(tmp_path / "ip"), max_train_steps=2, scheduled_sampling_max_step_offset=2,
               scheduled_sampling_probability=1.0, scheduled_sampling_reflexflow=False,
               graph={"nodes": [{"id": "rollout", "type": "rollout.input_perturbation", "params": {"input_perturbation_gamma": 0.2}}]})
    assert main(["graph", str(cfg)]) == 0
    assert "rollout.input_perturbation" in capsys.readouterr().out
    assert main(["run", str(cfg)]) == 0
    metrics = read_metrics(tmp_path / "ip")
    assert all(m["rollout/model_evals"] == 0 and m["rollout/samples"] == 8 for m in metrics)


def test_rollout_length_is_capped_where_the_source_is_clamped():
    schedule = make_schedule("flow_matching")
    noisy = noisy_batch(schedule, n=3, levels=torch.tensor([1.0, 0.98, 0.5]))
    out, _, _ = run_stage(params(scheduled_sampling_max_step_offset=3, scheduled_sampling_sampler="euler"), schedule, noisy)
    assert out.steps[0] == 0 and out.steps[1] <= 1


@pytest.mark.parametrize("preset, reflexflow", [("rollout_quickstart", False), ("reflexflow_quickstart", True)])
def test_rollout_presets_train_a_few_steps(tmp_path, preset, reflexflow):
    out = tmp_path / preset
    assert main(["run", preset, "--output_dir", str(out), "--max_train_steps", "2", "--train_batch_size", "8",
                 "--validation_num_images", "2", "--validation_num_inference_steps", "2", "--device", "cpu"]) == 0
    metrics = read_metrics(out)
    assert all(m["rollout/p"] == 1.0 and ("loss/adr" in m) == reflexflow and ("loss/fc" in m) == reflexflow for m in metrics)
    assert sum(m["rollout/model_evals"] for m in metrics) > 0
