"""snr_gamma (Min-SNR-γ, arXiv 2303.09556) and noise_offset (Crosslabs offset noise) against values by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from rollgraph.graph.cli import main
from rollgraph.graph.context import RunContext
from rollgraph.stages.loss import LossParams, MSELoss, min_snr_weight
from rollgraph.stages.noise import ForwardNoise, NoiseParams
from rollgraph.stages.schedule import make_schedule
from rollgraph.stages.types import Batch, NoisyInput, Prediction

from tests.conftest import read_metrics


class FixedMix:
    """A schedule stand-in whose (a, s) per sample are given: level i has a = A[i], s = S[i]."""

    def __init__(self, prediction_type, a, s):
        self.prediction_type, self.a, self.s = prediction_type, torch.tensor(a), torch.tensor(s)

    def alpha_sigma(self, level):
        return self.a[level.long()], self.s[level.long()]


# (a, s) = (0.8, 0.6): SNR = 16/9 > γ = 1; (0.6, 0.8): SNR = 9/16 < γ
HAND = {
    "epsilon": [9 / 16, 1.0],  # min(SNR, γ)/SNR: 1/(16/9); (9/16)/(9/16)
    "v_prediction": [9 / 25, 9 / 25],  # min(SNR, γ)/(SNR+1): 1/(25/9); (9/16)/(25/16)
    "sample": [1.0, 9 / 16],  # min(SNR, γ)
}


@pytest.mark.parametrize("kind", sorted(HAND))
def test_min_snr_weight_by_hand(kind):
    schedule = FixedMix(kind, [0.8, 0.6], [0.6, 0.8])
    got = min_snr_weight(schedule, torch.tensor([0.0, 1.0]), gamma=1.0)
    torch.testing.assert_close(got, torch.tensor(HAND[kind]))


def test_min_snr_weight_for_flow_matching_by_hand():
    # σ = 0.5: SNR = 1 ≤ 5, m = 1·0.25;  σ = 0.1: SNR = 81 > 5, m = 5·0.01;  σ = 0.8: SNR = 1/16, m = (1/16)·0.64
    got = min_snr_weight(make_schedule("flow_matching"), torch.tensor([0.5, 0.1, 0.8]), gamma=5.0)
    torch.testing.assert_close(got, torch.tensor([0.25, 0.05, 0.04]))


def test_min_snr_weight_on_the_ddpm_schedule_matches_alpha_bar():
    schedule = make_schedule("epsilon", 1000)
    t = torch.tensor([10.0, 900.0])
    ab = schedule.alphas_cumprod[t.long()]
    snr = ab / (1 - ab)
    assert float(snr[0]) > 5 > float(snr[1])  # t = 10 is clipped, t = 900 is not
    torch.testing.assert_close(min_snr_weight(schedule, t, 5.0), torch.tensor([5 / float(snr[0]), 1.0]))


def test_mse_stage_applies_the_weight_and_is_unchanged_without_it():
    schedule = FixedMix("epsilon", [0.8, 0.6], [0.6, 0.8])
    target = torch.zeros(2, 1, 2, 2)
    pred = torch.stack([torch.full((1, 2, 2), 2.0), torch.full((1, 2, 2), 1.0)])  # per-sample MSE 4 and 1
    noisy = NoisyInput(x=target, x_clean=target, level=torch.tensor([0.0, 1.0]), x0=target, noise=target, target=target)
    ctx = RunContext(config=None)
    plain = MSELoss("loss", LossParams()).run(ctx, Prediction(pred, noisy), schedule=schedule)["loss"]
    weighted = MSELoss("loss", LossParams(snr_gamma=1.0)).run(ctx, Prediction(pred, noisy), schedule=schedule)["loss"]
    assert float(plain.total) == pytest.approx((4 + 1) / 2)
    assert float(weighted.total) == pytest.approx((4 * 9 / 16 + 1 * 1.0) / 2)


def _noisy(offset, seed=3):
    batch = Batch(x0=torch.zeros(4, 3, 5, 5))
    stage = ForwardNoise("noise", NoiseParams(noise_offset=offset, timestep_sampling="uniform"))
    return stage.run(RunContext(config=None, seed=seed), batch, make_schedule("flow_matching"))["noisy"]


def test_noise_offset_adds_one_draw_per_sample_and_channel():
    plain, offset = _noisy(0.0), _noisy(0.1)
    torch.testing.assert_close(plain.level, offset.level)
    diff = offset.noise - plain.noise  # ε is drawn first: the offset noise is added on top of the same ε
    assert torch.allclose(diff, diff[:, :, :1, :1].expand_as(diff), atol=1e-6)  # constant over pixels
    # it is 0.1 · the generator's next draw after the levels and ε, shape (batch, channels, 1, 1)
    g = RunContext(config=None, seed=3).batch_generator("noise")
    make_schedule("flow_matching").sample_training_levels(4, g, "uniform")
    torch.randn((4, 3, 5, 5), generator=g)
    torch.testing.assert_close(diff, 0.1 * torch.randn((4, 3, 1, 1), generator=g).expand(4, 3, 5, 5))
    # x and the target are built from the offset noise (x0 = 0: x = σ·ε, flow target = ε − 0)
    torch.testing.assert_close(offset.target, offset.noise)
    torch.testing.assert_close(offset.x, offset.level.view(-1, 1, 1, 1) * offset.noise)


@pytest.mark.parametrize("prediction_type", ["flow_matching", "epsilon"])
def test_knobs_train_with_rollout_and_reflexflow(tiny, tmp_path, prediction_type):
    common = dict(max_train_steps=2, scheduled_sampling_max_step_offset=2, scheduled_sampling_probability=1.0,
                  prediction_type=prediction_type)
    assert main(["run", str(tiny(output_dir=str(tmp_path / "plain"), **common))]) == 0
    assert main(["run", str(tiny(output_dir=str(tmp_path / "knobs"), snr_gamma=5.0, noise_offset=0.1, **common))]) == 0
    plain, knobs = read_metrics(tmp_path / "plain"), read_metrics(tmp_path / "knobs")
    assert all(np.isfinite(m["loss"]) for m in knobs) and knobs[0]["rollout/samples"] > 0
    assert ("loss/adr" in knobs[0]) == (prediction_type == "flow_matching")
    term = "loss/fc" if prediction_type == "flow_matching" else "loss/fm"  # ReflexFlow's FC replaces loss.mse
    assert knobs[0][term] != plain[0][term]


def test_reflexflow_fc_takes_the_same_min_snr_weight_as_mse():
    from rollgraph.stages.reflexflow import FCParams, ReflexFlowFC

    from tests.fakes import FnModel, FnModule, noisy_batch

    schedule = make_schedule("flow_matching")
    noisy = noisy_batch(schedule, n=4, levels=torch.tensor([0.05, 0.3, 0.6, 0.9]))
    noisy = noisy.with_input(noisy.x + 0.1, torch.tensor([True, False, True, False]), torch.tensor([1, 0, 2, 0]))
    pred = Prediction(torch.randn(noisy.x.shape, generator=torch.Generator().manual_seed(2)), noisy)
    ctx, model = RunContext(config=None), FnModel(FnModule(lambda x, t, y: x))
    # alpha = 0, beta2 = 1: FC is the plain flow-matching loss (Parseval), so both stages must weight it alike
    fc = ReflexFlowFC("loss", FCParams(scheduled_sampling_reflexflow_alpha=0.0, snr_gamma=5.0)).run(
        ctx, prediction=pred, model=model, schedule=schedule)["loss"]
    mse = MSELoss("loss", LossParams(snr_gamma=5.0)).run(ctx, pred, schedule=schedule)["loss"]
    plain = MSELoss("loss", LossParams()).run(ctx, pred, schedule=schedule)["loss"]
    assert float(fc.total) == pytest.approx(float(mse.total), rel=1e-5)
    assert float(mse.total) != pytest.approx(float(plain.total), rel=1e-2)


def test_bad_values_exit_2_naming_the_key(tiny, capsys):
    assert main(["validate", str(tiny(snr_gamma=0))]) == 2
    assert main(["validate", str(tiny(noise_offset=-0.1))]) == 2
    err = capsys.readouterr().err
    assert "snr_gamma" in err and "noise_offset" in err
