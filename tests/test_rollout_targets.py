"""Rollout options beyond the seed: the corrected target, SimpleTuner's strategy / start step / ramp shape."""

from __future__ import annotations

import math

import pytest
import torch
from rollgraph.graph.cli import main
from rollgraph.stages.rollout import RolloutParams, corrected_target, rollout_lengths, rollout_probability
from rollgraph.stages.schedule import make_schedule

from tests.conftest import read_metrics
from tests.fakes import noisy_batch
from tests.test_rollout import params, run_stage


def drifted(prediction_type, levels, seed=0):
    """A batch whose rolled-out input x̂ = x_clean + e for a known error e."""
    schedule = make_schedule(prediction_type)
    noisy = noisy_batch(schedule, n=len(levels), levels=torch.tensor(levels), seed=seed)
    e = 0.1 * torch.randn(noisy.x.shape, generator=torch.Generator().manual_seed(seed + 1))
    return schedule, noisy, noisy.x_clean + e


@pytest.mark.parametrize("prediction_type", ["flow_matching", "epsilon", "v_prediction", "sample"])
def test_corrected_target_maps_the_rolled_input_back_to_its_x0(prediction_type):
    """Above the floor the corrected target is the prediction that, at x̂, points back at the same x0: by hand,
    eps* = (x̂ - a·x0)/s and target* = target_of(x0, eps*) (flow (x̂ - x0)/σ; sample: x0 itself)."""
    levels = [0.3, 0.5, 0.9] if prediction_type == "flow_matching" else [300.0, 500.0, 900.0]
    schedule, noisy, x_hat = drifted(prediction_type, levels)
    a, s = (c.reshape(-1, 1, 1, 1) for c in schedule.alpha_sigma(noisy.level))
    eps_star = (x_hat - a * noisy.x0) / s
    expected = {"flow_matching": eps_star - noisy.x0, "epsilon": eps_star, "v_prediction": a * eps_star - s * noisy.x0,
                "sample": noisy.x0}[prediction_type]
    got = corrected_target(schedule, noisy, x_hat, min_sigma=0.0)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    if prediction_type == "flow_matching":
        torch.testing.assert_close(got, (x_hat - noisy.x0) / s, rtol=1e-5, atol=1e-5)
    # x̂ on the teacher-forcing point: the corrected target is the clean one
    torch.testing.assert_close(corrected_target(schedule, noisy, noisy.x_clean, 0.2), noisy.target)


def test_corrected_target_is_floored_below_min_sigma():
    schedule, noisy, x_hat = drifted("flow_matching", [0.05, 0.1, 0.6])
    got = corrected_target(schedule, noisy, x_hat, min_sigma=0.2)
    e = x_hat - noisy.x_clean
    denominators = torch.tensor([0.2, 0.2, 0.6]).reshape(-1, 1, 1, 1)
    torch.testing.assert_close(got, noisy.target + e / denominators)


@pytest.mark.parametrize("target", ["clean", "corrected"])
def test_stage_sets_the_target_only_for_rolled_samples_and_logs_its_size(target):
    schedule = make_schedule("flow_matching")
    noisy = noisy_batch(schedule, n=16, seed=3)
    out, metrics, _ = run_stage(params(scheduled_sampling_probability=0.5, scheduled_sampling_target=target), schedule, noisy)
    rolled = out.rolled_mask
    assert 0 < int(rolled.sum()) < 16
    assert torch.equal(out.target[~rolled], noisy.target[~rolled])  # teacher-forced samples keep theirs, to the bit
    if target == "clean":
        assert torch.equal(out.target, noisy.target)
    else:
        torch.testing.assert_close(out.target[rolled], corrected_target(schedule, noisy, out.x, 0.2)[rolled])
        assert not torch.equal(out.target[rolled], noisy.target[rolled])
    assert metrics["rollout/target_rms"] == pytest.approx(float(out.target[rolled].pow(2).mean().sqrt()), rel=1e-5)
    _, s = schedule.alpha_sigma(out.level[rolled])
    drift = ((out.x - out.x_clean)[rolled].flatten(1) / s.reshape(-1, 1)).pow(2).mean().sqrt()
    assert metrics["rollout/drift"] == pytest.approx(float(drift), rel=1e-5) and metrics["rollout/drift"] > 0


def test_strategies_draw_the_simpletuner_distributions():
    g = torch.Generator().manual_seed(0)
    n, K = 200_000, 10
    uniform, early, late = (rollout_lengths(s, K, n, g) for s in ("uniform", "biased_early", "biased_late"))
    for k in (uniform, early, late):
        assert int(k.min()) == 0 and int(k.max()) == K
    # P(k = 0): uniform 1/11; biased_early P(U² < 0.05) = sqrt(0.05); biased_late P(1 - U² < 0.05) = 1 - sqrt(0.95)
    assert float((uniform == 0).float().mean()) == pytest.approx(1 / 11, abs=3e-3)
    assert float((early == 0).float().mean()) == pytest.approx(math.sqrt(0.05), abs=3e-3)
    assert float((late == 0).float().mean()) == pytest.approx(1 - math.sqrt(0.95), abs=3e-3)
    # means: K·E[U²] = K/3 and K·(1 - 1/3), up to the rounding
    assert float(early.float().mean()) == pytest.approx(K / 3, abs=0.05)
    assert float(late.float().mean()) == pytest.approx(2 * K / 3, abs=0.05)


def test_uniform_strategy_draws_what_the_stage_always_drew():
    """The default keeps every shipped preset's losses: the same randint call on the same generator."""
    a = rollout_lengths("uniform", 7, 64, torch.Generator().manual_seed(5))
    b = torch.randint(0, 8, (64,), generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_start_step_and_ramp_shapes():
    linear = RolloutParams(scheduled_sampling_ramp_steps=100, scheduled_sampling_prob_start=0.0, scheduled_sampling_prob_end=0.8,
                           scheduled_sampling_start_step=50)
    assert rollout_probability(linear, 0) == 0.0 and rollout_probability(linear, 49) == 0.0
    assert rollout_probability(linear, 50) == 0.0
    assert rollout_probability(linear, 75) == pytest.approx(0.2)
    assert rollout_probability(linear, 150) == pytest.approx(0.8) and rollout_probability(linear, 1000) == pytest.approx(0.8)
    cosine = linear.model_copy(update={"scheduled_sampling_ramp_shape": "cosine"})
    assert rollout_probability(cosine, 75) == pytest.approx(0.8 * (1 - math.cos(math.pi / 4)) / 2)
    assert rollout_probability(cosine, 100) == pytest.approx(0.4)
    constant = RolloutParams(scheduled_sampling_probability=0.7, scheduled_sampling_start_step=10)
    assert [rollout_probability(constant, s) for s in (0, 9, 10, 500)] == [0.0, 0.0, 0.7, 0.7]


@pytest.mark.parametrize("key, value", [("scheduled_sampling_target", "noisy"), ("scheduled_sampling_target_min_sigma", -0.1),
                                        ("scheduled_sampling_strategy", "biased"), ("scheduled_sampling_start_step", -1),
                                        ("scheduled_sampling_ramp_shape", "exp")])
def test_bad_values_exit_2_naming_the_key(tiny, capsys, key, value):
    cfg = tiny(scheduled_sampling_max_step_offset=2, scheduled_sampling_probability=1.0, **{key: value})
    for command in ("validate", "run"):
        assert main([command, str(cfg)]) == 2
        assert key in capsys.readouterr().err


@pytest.mark.parametrize("prediction_type", ["flow_matching", "epsilon", "v_prediction"])
def test_corrected_target_and_strategies_train(tiny, tmp_path, prediction_type):
    cfg = tiny(prediction_type=prediction_type, max_train_steps=3, scheduled_sampling_max_step_offset=3,
               scheduled_sampling_probability=1.0, scheduled_sampling_target="corrected",
               scheduled_sampling_strategy="biased_late", scheduled_sampling_start_step=1,
               scheduled_sampling_target_min_sigma=0.1)
    assert main(["run", str(cfg)]) == 0
    rows = read_metrics(tmp_path / "run")
    assert rows[0]["rollout/p"] == 0.0 and rows[1]["rollout/p"] == 1.0  # nothing rolled before start_step
    assert "rollout/target_rms" in rows[1] and math.isfinite(rows[-1]["loss"])
