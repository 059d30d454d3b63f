"""``ip_noise_gamma`` (DDPM-IP input perturbation, Ning et al. 2023, arXiv 2301.11706; kohya's key name):
> 0 includes the input-perturbation fragment (probability 1, gamma bound to the key); it replaces the model
input as a rollout does, so turning both on is an error naming both keys."""

from __future__ import annotations

import pytest
import torch
from rollgraph.graph.cli import main
from rollgraph.graph.context import RunContext
from rollgraph.stages.config import build_config
from rollgraph.stages.default_graph import compile_graph
from rollgraph.stages.rollout import InputPerturbationParams, InputPerturbationRollout
from rollgraph.stages.schedule import make_schedule
from rollgraph.stages.types import NoisyInput

from tests.conftest import read_metrics


@pytest.mark.parametrize("value", [-0.1, 11, "strong"])
def test_bad_values_exit_2_naming_the_key(tiny, capsys, value):
    assert main(["validate", str(tiny(ip_noise_gamma=value))]) == 2
    assert "ip_noise_gamma" in capsys.readouterr().err


def test_with_rollout_on_it_exits_2_naming_both_keys(tiny, capsys):
    cfg = str(tiny(ip_noise_gamma=0.1, scheduled_sampling_max_step_offset=2, scheduled_sampling_probability=0.5))
    for command in ("validate", "run"):
        assert main([command, cfg]) == 2
        err = " ".join(capsys.readouterr().err.split())
        assert "ip_noise_gamma=0.1" in err and "scheduled_sampling_max_step_offset=2" in err


def test_the_fragment_is_included_with_gamma_bound_and_probability_one():
    spec = compile_graph(build_config({"ip_noise_gamma": 0.2}))
    node = spec.node("input_perturbation")
    assert node.type == "rollout.input_perturbation" and spec.node("predict").inputs["noisy"] == "input_perturbation.noisy"
    assert node.params["input_perturbation_gamma"] == 0.2 and node.params["scheduled_sampling_probability"] == 1.0
    assert "input_perturbation" not in compile_graph(build_config({})).ids()
    included = compile_graph(build_config({"graph": {"include": ["input_perturbation"],
                                                     "set": {"input_perturbation.input_perturbation_gamma": 0.3}}}))
    assert included.node("input_perturbation").params["input_perturbation_gamma"] == 0.3


@pytest.mark.parametrize("prediction_type", ["flow_matching", "epsilon", "v_prediction"])
def test_it_trains_every_sample_perturbed_for_each_prediction_type(tiny, tmp_path, prediction_type):
    common = dict(max_train_steps=2, prediction_type=prediction_type)
    assert main(["run", str(tiny(output_dir=str(tmp_path / "ip"), ip_noise_gamma=0.5, **common))]) == 0
    assert main(["run", str(tiny(output_dir=str(tmp_path / "tf"), **common))]) == 0
    ip, tf = read_metrics(tmp_path / "ip"), read_metrics(tmp_path / "tf")
    assert all(m["rollout/samples"] == 8 and m["rollout/model_evals"] == 0 and m["rollout/p"] == 1.0 for m in ip)
    assert all(torch.isfinite(torch.tensor(m["loss"])) for m in ip)
    assert ip[0]["loss"] != tf[0]["loss"]  # same seed, same levels and noise: only the input differs


@pytest.mark.parametrize("prediction_type", ["flow_matching", "epsilon"])
def test_perturbed_input_is_a_x0_plus_s_times_eps_plus_gamma_xi(prediction_type):
    schedule = make_schedule(prediction_type)
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(4, 1, 4, 4, generator=g), torch.randn(4, 1, 4, 4, generator=g)
    level = torch.tensor([0.1, 0.4, 0.7, 0.95]) if prediction_type == "flow_matching" else torch.tensor([50.0, 300.0, 600.0, 950.0])
    x = schedule.add_noise(x0, eps, level)
    noisy = NoisyInput(x=x, x_clean=x, level=level, x0=x0, noise=eps, target=schedule.target(x0, eps, level))
    ctx = RunContext(config=None, seed=5)
    stage = InputPerturbationRollout("input_perturbation", InputPerturbationParams(input_perturbation_gamma=0.3,
                                                                                  scheduled_sampling_probability=1.0))
    out = stage.run(ctx, noisy=noisy, schedule=schedule)["noisy"]
    draw = ctx.batch_generator("input_perturbation")
    torch.rand(4, generator=draw)  # the per-sample coin, drawn first
    xi = torch.randn(4, 1, 4, 4, generator=draw)
    if prediction_type == "flow_matching":
        a, s = 1 - level, level
    else:
        alpha_bar = schedule.alphas_cumprod[level.long()].float()
        a, s = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    by_hand = a.reshape(-1, 1, 1, 1) * x0 + s.reshape(-1, 1, 1, 1) * (eps + 0.3 * xi)
    torch.testing.assert_close(out.x, by_hand, atol=1e-6, rtol=1e-5)
    assert torch.equal(out.target, noisy.target) and torch.equal(out.x_clean, x) and out.rolled.all()
