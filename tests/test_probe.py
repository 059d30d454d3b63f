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
    ExposureBiasProbe,
    ProbeParams,
    exposure_bias_probe,
    probe_levels,
    sliced_wasserstein,
)
from rollgraph.stages.schedule import make_schedule

from tests.conftest import read_metrics, tiny_config


def point_mass_fn(schedule, c: float, scale: float = 1.0):
    """The exact model for data that is the constant c everywhere (times ``scale``: a biased model).
    At the clean level (s = 0, where RK4's last stage evaluates) eps is 0/0; the guard makes it 0."""

    def fn(x, level, idx):
        a, s = (v.reshape(-1, *[1] * (x.dim() - 1)).to(x.dtype) for v in schedule.alpha_sigma(level.double()))
        eps = (x - a * c) / s.clamp_min(1e-12)
        return scale * schedule.target(torch.full_like(x, c), eps, level.to(x.dtype))

    return fn


@pytest.mark.parametrize("prediction_type", ["flow_matching", "epsilon"])
@pytest.mark.parametrize("sampler", ["euler", "unipc", "rk4"])
def test_exact_model_shows_no_exposure_bias(prediction_type, sampler):
    """With point-mass data the exact ODE keeps every sample on a(l)·x0 + s(l)·eps: spread = s at every level."""
    schedule = make_schedule(prediction_type)
    x0 = torch.full((64, 1, 4, 4), 0.3, dtype=torch.float64)
    result = exposure_bias_probe(point_mass_fn(schedule, 0.3), schedule, x0, start_u=0.6, num_steps=6, sampler=sampler, seed=1)
    assert len(result.moment_error) == 6 and result.sigma[-1] == 0 and math.isnan(result.moment_error[-1])
    assert max(abs(m) for m in result.moment_error[:-1]) < 2e-3
    # the generated states are as far from the forward-noised set as two forward-noised sets are from each other
    for swd, floor in zip(result.swd[:-1], result.swd_floor[:-1], strict=True):
        assert swd < 2.5 * floor + 1e-3
    if sampler != "rk4":  # RK4's last stage evaluates at s = 0, where a point-mass oracle's eps is 0/0
        assert result.swd[-1] < 1e-3  # every sample lands on the constant


def test_a_biased_model_shows_more_exposure_bias():
    schedule = make_schedule("flow_matching")
    x0 = torch.full((1024, 1, 4, 4), -0.2)
    exact = exposure_bias_probe(point_mass_fn(schedule, -0.2), schedule, x0, num_steps=8, seed=3).summary()
    biased = exposure_bias_probe(point_mass_fn(schedule, -0.2, scale=1.3), schedule, x0, num_steps=8, seed=3).summary()
    assert exact["moment_error"] < 1e-4 and biased["moment_error"] > 0.15
    assert exact["swd"] == pytest.approx(exact["swd_floor"], rel=0.1)
    assert biased["swd"] > 2 * exact["swd"] and biased["swd_floor"] == exact["swd_floor"]
    # same seed: the same result, to the bit
    again = exposure_bias_probe(point_mass_fn(schedule, -0.2, scale=1.3), schedule, x0, num_steps=8, seed=3).summary()
    assert again == biased


def test_chunks_see_their_own_samples():
    """Each sample's own constant c_i (its 'conditioning', looked up by idx): exact only if every chunk passes
    the right indices into the full set."""
    schedule = make_schedule("flow_matching")
    c = torch.linspace(-0.6, 0.6, 30, dtype=torch.float64)
    x0 = c.reshape(-1, 1, 1, 1).expand(-1, 1, 3, 3).clone()

    def fn(x, level, idx):
        a, s = (v.reshape(-1, 1, 1, 1).to(x.dtype) for v in schedule.alpha_sigma(level.double()))
        ci = c[idx].reshape(-1, 1, 1, 1)
        return (x - a * ci) / s.clamp_min(1e-12) - ci

    result = exposure_bias_probe(fn, schedule, x0, num_steps=5, sampler="euler", batch_size=7)
    assert max(abs(m) for m in result.moment_error[:-1]) < 1e-6
    assert result.swd[-1] < 1e-6


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
    metrics = exposure_bias_probe(point_mass_fn(schedule, 0.1), schedule, torch.full((8, 1, 2, 2), 0.1), num_steps=4).metrics()
    assert {"exposure_bias/moment_error", "exposure_bias/swd", "exposure_bias/swd_floor", "exposure_bias/seconds",
            "exposure_bias/moment_error/u0.45", "exposure_bias/swd/u0"} <= set(metrics)
    assert "exposure_bias/moment_error/u0" not in metrics  # undefined at the clean level
    assert all(math.isfinite(v) for v in metrics.values())


def test_params_are_off_by_default_and_range_checked():
    assert ProbeParams().exposure_bias_probe_steps == 0
    for bad in ({"exposure_bias_probe_steps": -1}, {"exposure_bias_probe_start_level": 0.0},
                {"exposure_bias_probe_start_level": 1.5}, {"exposure_bias_probe_samples": 1},
                {"exposure_bias_probe_sampler": "heun"}, {"exposure_bias_unknown": 1}):
        with pytest.raises(ValidationError):
            ProbeParams(**bad)


def _train(tmp_path, name, hooks=()):
    cfg = build_config(tiny_config(tmp_path, output_dir=str(tmp_path / name), max_train_steps=4, use_ema=True,
                                   scheduled_sampling_max_step_offset=2, scheduled_sampling_probability=0.5))
    Trainer(cfg, console=Console(file=io.StringIO()), extra_hooks=tuple(hooks)).run()
    return read_metrics(tmp_path / name)


def test_hook_logs_every_n_steps_and_leaves_training_untouched(tmp_path):
    probe = ExposureBiasProbe(ProbeParams(exposure_bias_probe_steps=2, exposure_bias_probe_samples=12,
                                          exposure_bias_probe_num_steps=3))
    with_probe = _train(tmp_path, "probe", [probe])
    without = _train(tmp_path, "plain")
    assert [m["loss"] for m in with_probe] == [m["loss"] for m in without]
    logged = [m["step"] for m in with_probe if "exposure_bias/moment_error" in m]
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
    probed = [r["step"] for r in rows if "exposure_bias/moment_error" in r]
    assert probed == [2, 4]
    assert all(r["exposure_bias/swd"] > 0 for r in rows if "exposure_bias/swd" in r)
