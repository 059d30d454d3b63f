"""ReflexFlow: each term against hand-computed values, the extra-forward rules, the auto rules, end to end."""

from __future__ import annotations

import pytest
import torch
from rollgraph.graph.cli import main
from rollgraph.graph.context import RunContext
from rollgraph.stages.config import build_config
from rollgraph.stages.default_graph import compile_graph
from rollgraph.stages.loss import MSELoss
from rollgraph.stages.reflexflow import (
    ReflexFlowADR,
    ReflexFlowFC,
    ReflexFlowParams,
    adr_per_sample,
    fc_per_sample,
)
from rollgraph.stages.schedule import make_schedule
from rollgraph.stages.types import Loss, Prediction

from tests.conftest import read_metrics
from tests.fakes import FnModel, FnModule, noisy_batch


def test_adr_by_hand():
    x0 = torch.zeros(3, 2)
    x_hat = torch.tensor([[0.0, 1.0], [0.0, 2.0], [0.0, 1.0]])
    pred = torch.tensor([[1.0, 0.0], [0.0, 5.0], [0.0, -3.0]])  # orthogonal, parallel, opposite
    torch.testing.assert_close(adr_per_sample(pred, x_hat, x0), torch.tensor([2.0, 0.0, 4.0]))
    # 45 degrees: 2 - 2 cos(pi/4) = 2 - sqrt(2)
    got = adr_per_sample(torch.tensor([[1.0, 1.0]]), torch.tensor([[0.0, 3.0]]), torch.zeros(1, 2))
    torch.testing.assert_close(got, torch.tensor([2 - 2 ** 0.5]))


def test_fc_by_hand():
    r = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])  # (1, 1, 2, 2)
    delta = torch.ones_like(r)  # all exposure bias at the zero frequency
    # Parseval: mean |R|^2 = mean r^2 = 30/4; R_DC = sum/2 = 5; |D_DC| = 2, mean|D| = 0.5, so w_DC = 1 + 4·alpha
    torch.testing.assert_close(fc_per_sample(r, delta, 0.0), torch.tensor([7.5]))
    torch.testing.assert_close(fc_per_sample(r, delta, 1.0), torch.tensor([7.5 + 25.0]))
    torch.testing.assert_close(fc_per_sample(r, delta, 0.5), torch.tensor([7.5 + 12.5]))


def test_fc_weight_matters_on_a_real_latent_size():
    g = torch.Generator().manual_seed(0)
    residual = torch.randn(2, 4, 64, 64, generator=g)
    # exposure bias concentrated at low frequencies, as early in denoising
    delta = torch.nn.functional.interpolate(torch.randn(2, 4, 4, 4, generator=g), size=(64, 64), mode="bilinear")
    delta = delta + 0.01 * torch.randn(2, 4, 64, 64, generator=g)
    plain = fc_per_sample(residual, delta, 0.0)
    weighted = fc_per_sample(residual, delta, 1.0)
    torch.testing.assert_close(plain, residual.pow(2).flatten(1).mean(1))
    assert torch.all(weighted / plain > 1.5), weighted / plain
    # the reference trainer's weight 1 + alpha·e/||e||_1 over the whole tensor: no measurable effect
    reference = ((1 + delta / delta.abs().sum()) * residual.pow(2)).flatten(1).mean(1)
    assert torch.all((reference / plain - 1).abs() < 1e-4)


def _prediction(schedule, rolled):
    noisy = noisy_batch(schedule, n=len(rolled), seed=3)
    g = torch.Generator().manual_seed(9)
    noisy.x = noisy.x + 0.3 * torch.randn(noisy.x.shape, generator=g) * rolled.reshape(-1, 1, 1, 1)
    noisy.rolled = rolled
    pred = torch.randn(noisy.x.shape, generator=g, requires_grad=True)
    return Prediction(pred=pred, noisy=noisy)


def test_adr_stage_averages_rolled_samples_over_the_batch():
    schedule = make_schedule("flow_matching")
    rolled = torch.tensor([True, False, True, False])
    pred = _prediction(schedule, rolled)
    p = ReflexFlowParams(scheduled_sampling_reflexflow_beta1=10.0)
    out = ReflexFlowADR("adr", p).run(RunContext(config=None), prediction=pred, schedule=schedule,
                                      previous=Loss(torch.tensor(1.0), {"fm": torch.tensor(1.0)}))["loss"]
    n = pred.noisy
    by_hand = sum(adr_per_sample(pred.pred[i:i + 1], n.x[i:i + 1], n.x0[i:i + 1]) for i in (0, 2)) / 4
    torch.testing.assert_close(out.terms["adr"], by_hand.detach().squeeze())
    torch.testing.assert_close(out.total, 1.0 + 10.0 * by_hand.squeeze())
    out.total.backward()
    assert pred.pred.grad[1].abs().sum() == 0 and pred.pred.grad[0].abs().sum() > 0


def test_fc_stage_runs_the_clean_forward_only_for_rolled_samples():
    """L_fc = (1/B)·[sum over plain samples of their MSE + beta2·sum over rolled ones of FC]: one flow-matching term."""
    schedule = make_schedule("flow_matching")
    rolled = torch.tensor([False, True, True, False, False])
    pred = _prediction(schedule, rolled)
    module = FnModule(lambda x, t, y: 0.5 * x)
    ctx = RunContext(config=None)
    p = ReflexFlowParams(scheduled_sampling_reflexflow_alpha=2.0, scheduled_sampling_reflexflow_beta2=3.0)
    out = ReflexFlowFC("fc", p).run(ctx, prediction=pred, model=FnModel(module), schedule=schedule)["loss"]
    assert module.calls == [2]
    assert ctx.pop_metrics()["reflexflow/clean_evals"] == 2
    n = pred.noisy
    idx = torch.tensor([1, 2])
    delta = pred.pred[idx].detach() - 0.5 * n.x_clean[idx]
    fc = fc_per_sample(pred.pred[idx] - n.target[idx], delta, 2.0)
    plain = (pred.pred - n.target).pow(2).flatten(1).mean(1)
    by_hand = (plain[0] + plain[3] + plain[4] + 3.0 * fc.sum()) / 5
    torch.testing.assert_close(out.terms["fc"], by_hand.detach())
    torch.testing.assert_close(out.total, by_hand)
    # nothing rolled out: no extra forward at all, and the loss is the plain MSE to the bit
    module.calls.clear()
    none = _prediction(schedule, torch.zeros(5, dtype=torch.bool))
    out = ReflexFlowFC("fc", p).run(RunContext(config=None), prediction=none, model=FnModel(module), schedule=schedule)["loss"]
    mse = MSELoss("loss", MSELoss.Params()).run(RunContext(config=None), prediction=none)["loss"]
    assert module.calls == [] and torch.equal(out.total, mse.total)


def test_fc_with_alpha_zero_is_the_plain_flow_matching_loss_rolled_samples_counted_once():
    schedule = make_schedule("flow_matching")
    pred = _prediction(schedule, torch.tensor([True, False, True, True]))
    p = ReflexFlowParams(scheduled_sampling_reflexflow_alpha=0.0)
    out = ReflexFlowFC("fc", p).run(RunContext(config=None), prediction=pred, model=FnModel(FnModule(lambda x, t, y: x)),
                                    schedule=schedule)["loss"]
    mse = MSELoss("loss", MSELoss.Params()).run(RunContext(config=None), prediction=pred)["loss"]
    torch.testing.assert_close(out.total, mse.total)


def test_fft_never_mixes_samples_of_a_flat_batch():
    """A (B, D) batch (an MLP's flat samples): each sample's FC term depends on that sample alone."""
    g = torch.Generator().manual_seed(1)
    r, d = torch.randn(3, 16, generator=g), torch.randn(3, 16, generator=g)
    together = fc_per_sample(r, d, 1.0)
    alone = torch.cat([fc_per_sample(r[i:i + 1], d[i:i + 1], 1.0) for i in range(3)])
    torch.testing.assert_close(together, alone)
    spec = torch.fft.fft(r[0], norm="ortho")
    mag = torch.fft.fft(d[0], norm="ortho").abs()
    torch.testing.assert_close(together[0], ((1 + mag / mag.mean()) * spec.abs().pow(2)).mean())


def test_stages_refuse_non_flow_schedules():
    from rollgraph.graph import RunError

    schedule = make_schedule("epsilon")
    pred = _prediction(schedule, torch.tensor([True]))
    with pytest.raises(RunError, match="flow_matching"):
        ReflexFlowADR("adr", ReflexFlowParams()).run(RunContext(config=None), prediction=pred, schedule=schedule)


def test_graph_has_reflexflow_nodes_exactly_when_enabled():
    on = {"scheduled_sampling_max_step_offset": 2, "scheduled_sampling_probability": 1.0}
    ids = [n.id for n in compile_graph(build_config(on)).nodes]
    assert ids[-3:] == ["loss", "adr", "optimize"]
    assert compile_graph(build_config(on)).node("loss").type == "loss.reflexflow_fc"
    for off in ({**on, "scheduled_sampling_reflexflow": False}, {**on, "prediction_type": "v_prediction"}, {}):
        assert "adr" not in [n.id for n in compile_graph(build_config(off)).nodes]


def test_end_to_end_terms_add_up_and_alpha_zero_equals_rollout_only(tiny, tmp_path):
    common = dict(max_train_steps=3, scheduled_sampling_max_step_offset=3, scheduled_sampling_probability=1.0)
    assert main(["run", str(tiny(output_dir=str(tmp_path / "rf"), **common))]) == 0
    for m in read_metrics(tmp_path / "rf"):
        assert m["loss"] == pytest.approx(m["loss/fc"] + 10.0 * m["loss/adr"], rel=1e-5)
        assert "loss/fm" not in m and m["reflexflow/clean_evals"] == m["rollout/samples"]
    assert main(["run", str(tiny(output_dir=str(tmp_path / "off"), scheduled_sampling_reflexflow=False, **common))]) == 0
    assert main(["run", str(tiny(output_dir=str(tmp_path / "zero"), scheduled_sampling_reflexflow_beta1=0.0,
                                 scheduled_sampling_reflexflow_alpha=0.0, **common))]) == 0
    off, zero = read_metrics(tmp_path / "off"), read_metrics(tmp_path / "zero")
    assert "loss/adr" not in off[0]
    # Parseval: the same loss up to float rounding (FFT vs direct sum), so rollout alone and not twice
    assert [m["loss"] for m in zero] == pytest.approx([m["loss"] for m in off], rel=1e-4)
