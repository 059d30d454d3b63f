"""The exposure-bias probe: exact on the forward process, sensitive to drift, and harmless to training."""

from __future__ import annotations

import io
import math

import pytest
import torch
from pydantic import ValidationError
from rich.console import Console
from rollgraph.graph.train import Trainer
from rollgraph.stages.config import build_config
from rollgraph.stages.probe import (
    ProbeParams,
    exposure_bias_probe,
    probe_levels,
    sliced_wasserstein,
)
from rollgraph.stages.schedule import make_schedule

from tests.conftest import read_metrics, tiny_config


def gaussian_fn(schedule, mu: torch.Tensor, c: torch.Tensor, scale: float = 1.0, bias: float = 0.0):
    """The exact model for data x0 ~ N(mu, diag(c²)) (its prediction times ``scale`` plus ``bias``: a wrong model).

    x = a·x0 + s·eps is Gaussian, so E[x0 | x] = mu + a·c²/(a²c² + s²)·(x - a·mu) and E[eps | x] = s/(a²c² + s²)·(x - a·mu);
    every prediction type is linear in (x0, eps), so ``schedule.target`` of the two is the exact prediction."""

    def fn(x, level, idx):
        a, s = (v.reshape(-1, *[1] * (x.dim() - 1)).to(x.dtype) for v in schedule.alpha_sigma(level.double()))
        var = a * a * c * c + s * s
        d = x - a * mu
        return scale * schedule.target(mu + a * c * c / var * d, s / var * d, level.to(x.dtype)) + bias

    return fn


def gaussian_data(m: int, dim: int = 64, seed: int = 0):
    """2m samples (start set + independent reference set) of a Gaussian with per-element mean and scale."""
    g = torch.Generator().manual_seed(seed)
    mu = 0.5 * torch.randn(1, dim, generator=g, dtype=torch.float64)
    c = 0.1 + 0.4 * torch.rand(1, dim, generator=g, dtype=torch.float64)
    return mu, c, mu + c * torch.randn(2 * m, dim, generator=g, dtype=torch.float64)


def increasing(values) -> bool:
    return all(a < b for a, b in zip(values, values[1:], strict=False))


M, DIM = 500, 64
BAND = 4 / math.sqrt(M * DIM)  # 4 standard deviations of spread(G)/spread(R) - 1 for m samples of DIM independent elements
# Steps at which each solver's own error sits below BAND (measured). DDPM needs more: its last step jumps from the
# last noisy timestep straight to clean data, and a one-step jump there returns the posterior mean E[x0 | x_t], whose
# spread is too small (-4.7 % with unipc at 48 steps on this data): the probe shows that solver error, as it should.
STEPS = {("flow", "rk4"): 12, ("flow", "unipc"): 48, ("flow", "dpm"): 48, ("flow", "euler"): 192,
         ("ddpm", "rk4"): 12, ("ddpm", "unipc"): 192, ("ddpm", "dpm"): 192, ("ddpm", "euler"): 384}
FAST = {("flow", s) for s in ("rk4", "unipc", "dpm", "euler")} | {("ddpm", "rk4")}
CASES = [pytest.param(pt, sampler, marks=() if ("flow" if pt == "flow_matching" else "ddpm", sampler) in FAST
                      else pytest.mark.slow)
         for pt in ("flow_matching", "epsilon", "v_prediction") for sampler in ("euler", "unipc", "dpm", "rk4")]


@pytest.mark.parametrize("prediction_type, sampler", CASES)
def test_exact_model_reads_zero_within_the_finite_sample_band(prediction_type, sampler):
    schedule = make_schedule(prediction_type)
    steps = STEPS["flow" if prediction_type == "flow_matching" else "ddpm", sampler]
    mu, c, x0 = gaussian_data(M, DIM)
    result = exposure_bias_probe(gaussian_fn(schedule, mu, c), schedule, x0, num_steps=steps, sampler=sampler, seed=1)
    assert result.samples == M and len(result.variance_error) == steps
    assert max(abs(v) for v in result.variance_error) < BAND, result.variance_error
    assert max(abs(v) for v in result.variance_floor) < BAND  # the forward process itself, the same band
    summary = result.summary()
    assert summary["swd"] < 1.1 * summary["swd_floor"], summary  # as far from R as an independent forward draw is


def test_the_final_ddpm_jump_to_clean_data_is_visible():
    """A coarse DDPM grid: the last step returns E[x0 | x_t] (too little spread); the probe must say so."""
    schedule = make_schedule("epsilon")
    mu, c, x0 = gaussian_data(M, DIM)
    result = exposure_bias_probe(gaussian_fn(schedule, mu, c), schedule, x0, num_steps=12, sampler="unipc", seed=1)
    assert result.variance_error[-1] < -BAND and max(abs(v) for v in result.variance_error[:-1]) < BAND


@pytest.mark.parametrize("prediction_type", ["flow_matching", "epsilon"])
def test_reading_grows_monotonically_with_a_scale_error(prediction_type):
    """The audit's case: the old own-x0 moment error scored a ×1.1 model *better* than the exact one."""
    schedule = make_schedule(prediction_type)
    mu, c, x0 = gaussian_data(M, DIM)
    readings = [exposure_bias_probe(gaussian_fn(schedule, mu, c, scale=k), schedule, x0, num_steps=12, sampler="rk4",
                                    seed=1).summary() for k in (1.0, 1.05, 1.1, 1.2)]
    variance = [r["variance_error"] for r in readings]
    swd = [r["swd"] for r in readings]
    assert variance[0] < BAND / 2 and increasing(variance), variance
    assert increasing(swd), swd


@pytest.mark.parametrize("prediction_type", ["flow_matching", "epsilon"])
def test_swd_grows_monotonically_with_a_constant_bias(prediction_type):
    schedule = make_schedule(prediction_type)
    mu, c, x0 = gaussian_data(M, DIM)
    swd = [exposure_bias_probe(gaussian_fn(schedule, mu, c, bias=b), schedule, x0, num_steps=12, sampler="rk4",
                               seed=1).summary()["swd"] for b in (0.0, 0.05, 0.1, 0.2)]
    assert increasing(swd), swd


def test_an_explicit_reference_set_equals_the_split():
    schedule = make_schedule("flow_matching")
    mu, c, x0 = gaussian_data(64, 8)
    fn = gaussian_fn(schedule, mu, c, scale=1.1)
    split = exposure_bias_probe(fn, schedule, x0, num_steps=4, seed=2)
    explicit = exposure_bias_probe(fn, schedule, x0[:64], x0[64:], num_steps=4, seed=2)
    assert split.to_json()["levels"] == explicit.to_json()["levels"]
    with pytest.raises(ValueError):
        exposure_bias_probe(fn, schedule, x0[:64], x0[:10], num_steps=4)


def test_chunks_see_their_own_samples():
    """Each sample's own constant c_i (its 'conditioning', looked up by idx): the generated set lands exactly on the
    reference's constants only if every chunk passes the right indices into the start set."""
    schedule = make_schedule("flow_matching")
    c = torch.linspace(-0.6, 0.6, 10, dtype=torch.float64).repeat(6)  # start and reference halves: the same classes
    x0 = c.reshape(-1, 1, 1, 1).expand(-1, 1, 3, 3).clone()

    def fn(x, level, idx):
        a, s = (v.reshape(-1, 1, 1, 1).to(x.dtype) for v in schedule.alpha_sigma(level.double()))
        ci = c[idx].reshape(-1, 1, 1, 1)
        return (x - a * ci) / s.clamp_min(1e-12) - ci

    result = exposure_bias_probe(fn, schedule, x0, num_steps=5, sampler="euler", batch_size=7)
    assert result.swd[-1] < 1e-6 and abs(result.variance_error[-1]) < 1e-6


def test_levels_are_equal_steps_in_u_down_to_clean():
    flow = make_schedule("flow_matching", shift=3.0)
    u, levels = probe_levels(flow, 0.6, 12)
    torch.testing.assert_close(u, torch.linspace(0.6, 0.0, 13, dtype=torch.float64))
    torch.testing.assert_close(levels[:-1], flow.level_at(u[:-1]).float())
    assert levels[-1] == 0.0
    ddpm = make_schedule("epsilon")
    _, t = probe_levels(ddpm, 0.5, 5)
    assert t.tolist() == [499.0, 399.0, 299.0, 199.0, 99.0, -1.0]


def test_sliced_wasserstein_of_a_shift():
    """Shifting a set by c·(1, ..., 1) in D dims moves every projection theta by c·sum(theta); E[(sum theta)^2] = 1."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(500, 16, generator=g)
    assert sliced_wasserstein(a, a.clone(), 64, torch.Generator().manual_seed(1)) == 0.0
    d = sliced_wasserstein(a, a + 0.5, 4000, torch.Generator().manual_seed(1))
    assert d == pytest.approx(0.5, rel=0.06)
    with pytest.raises(ValueError):
        sliced_wasserstein(a, a[:10], 8, g)


def test_metrics_keys():
    schedule = make_schedule("flow_matching")
    mu, c, x0 = gaussian_data(8, 4)
    result = exposure_bias_probe(gaussian_fn(schedule, mu, c), schedule, x0, num_steps=4)
    metrics = result.metrics()
    assert {"exposure_bias/variance_error", "exposure_bias/variance_floor", "exposure_bias/swd", "exposure_bias/swd_floor",
            "exposure_bias/seconds", "exposure_bias/variance_error/u0.45", "exposure_bias/swd/u0",
            "exposure_bias/variance_error/u0"} <= set(metrics)
    assert all(math.isfinite(v) for v in metrics.values())
    as_json = result.to_json()
    assert [lv["u"] for lv in as_json["levels"]] == pytest.approx([0.45, 0.3, 0.15, 0.0])
    assert set(as_json["levels"][0]) == {"u", "level", "variance_error", "variance_floor", "swd", "swd_floor"}
    assert as_json["swd"] == pytest.approx(sum(lv["swd"] for lv in as_json["levels"]) / 4)


def test_params_are_off_by_default_and_range_checked():
    assert ProbeParams().exposure_bias_probe_steps == 0
    for bad in ({"exposure_bias_probe_steps": -1}, {"exposure_bias_probe_start_level": 0.0},
                {"exposure_bias_probe_start_level": 1.5}, {"exposure_bias_probe_samples": 3},
                {"exposure_bias_probe_sampler": "heun"}, {"exposure_bias_unknown": 1}):
        with pytest.raises(ValidationError):
            ProbeParams(**bad)


def _train(tmp_path, name, **probe):
    cfg = build_config(tiny_config(tmp_path, output_dir=str(tmp_path / name), max_train_steps=4, use_ema=True,
                                   scheduled_sampling_max_step_offset=2, scheduled_sampling_probability=0.5, **probe))
    Trainer(cfg, console=Console(file=io.StringIO())).run()
    return read_metrics(tmp_path / name)


def test_probe_node_logs_every_n_steps_and_leaves_training_untouched(tmp_path):
    with_probe = _train(tmp_path, "probe", exposure_bias_probe_steps=2, exposure_bias_probe_samples=12,
                        exposure_bias_probe_num_steps=3)
    without = _train(tmp_path, "plain")
    assert [m["loss"] for m in with_probe] == [m["loss"] for m in without]
    logged = [m["step"] for m in with_probe if "exposure_bias/variance_error" in m]
    assert logged == [2, 4]
    for m in with_probe:
        for key, value in m.items():
            if key.startswith("exposure_bias/"):
                assert math.isfinite(value), key
    assert not any(k.startswith("exposure_bias/") for m in without for k in m)


def test_probe_metrics_reach_metrics_jsonl_every_n_steps(tiny, tmp_path):
    from rollgraph.graph.cli import main

    from tests.conftest import read_metrics

    cfg = tiny(max_train_steps=4, exposure_bias_probe_steps=2, exposure_bias_probe_samples=8, exposure_bias_probe_num_steps=3)
    assert main(["run", str(cfg)]) == 0
    rows = read_metrics(tmp_path / "run")
    probed = [r["step"] for r in rows if "exposure_bias/variance_error" in r]
    assert probed == [2, 4]
    assert all(r["exposure_bias/swd"] > 0 for r in rows if "exposure_bias/swd" in r)


def test_probe_command_measures_a_checkpoint_as_the_training_hook_did(tiny, tmp_path, capsys):
    """`rollgraph probe` rebuilds the run's setup phase from a checkpoint (EMA weights swapped in): the same numbers
    the in-training hook logged at that step, printed as one JSON object."""
    import json

    from rollgraph.graph.cli import main

    cfg = tiny(max_train_steps=4, use_ema=True, exposure_bias_probe_steps=4, exposure_bias_probe_samples=16,
               exposure_bias_probe_num_steps=3, prediction_type="v_prediction")
    assert main(["run", str(cfg)]) == 0
    logged = read_metrics(tmp_path / "run")[-1]
    capsys.readouterr()
    assert main(["probe", str(tmp_path / "run"), "--checkpoint", "latest"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["step"] == 4 and out["ema"] is True and out["samples"] == 8 and len(out["levels"]) == 3
    assert out["variance_error"] == pytest.approx(logged["exposure_bias/variance_error"], rel=1e-9)
    assert out["swd"] == pytest.approx(logged["exposure_bias/swd"], rel=1e-9)
    assert out["levels"][-1]["level"] == -1.0  # DDPM's clean level
    assert main(["probe", str(tmp_path / "run"), "--steps", "2", "--sampler", "euler"]) == 0
    assert len(json.loads(capsys.readouterr().out)["levels"]) == 2
    assert main(["probe", str(tmp_path / "run"), "--sampler", "heun"]) == 2
    assert "--sampler" in capsys.readouterr().err
    assert main(["probe", str(tmp_path / "nothing")]) == 2
