"""Dreambooth prior preservation as the ``prior_preservation`` graph fragment: the class images have their own data,
batch, noise, predict and loss nodes, and L = L_instance + λ·L_prior (Ruiz et al. 2023, arXiv 2208.12242, eq. 2)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from rollgraph.graph.cli import main
from rollgraph.graph.context import RunContext
from rollgraph.graph.stage import NoParams
from rollgraph.stages.load import BatchStageParams
from rollgraph.stages.loss import LossParams, MSELoss, SumLoss, min_snr_weight
from rollgraph.stages.prior_preservation import ClassImagesParams, LoadClassImages, PriorLoss, PriorLossParams
from rollgraph.stages.schedule import DDPMSchedule
from rollgraph.stages.types import NoisyInput, Prediction

from tests.conftest import read_metrics
from tests.tiny_pipelines import FLOW, family_config, pipeline_folder, write_config, write_images

FAMILIES = ["sd", "sdxl", "sd3", "flux"]
FRAGMENT = ["class_data", "class_batch", "class_noise", "class_predict", "prior_loss"]


@pytest.fixture
def images(tmp_path):
    return write_images(tmp_path / "images", 4)


@pytest.fixture
def classes(tmp_path):
    return write_images(tmp_path / "class", 3, captions=True, seed=1)


def _prediction(pred, target, level=None) -> Prediction:
    pred, target = torch.tensor(pred), torch.tensor(target)
    level = torch.zeros(len(pred)) if level is None else torch.tensor(level)
    noisy = NoisyInput(x=pred, x_clean=pred, level=level, x0=pred, noise=pred, target=target)
    return Prediction(pred, noisy)


def test_the_total_is_the_instance_mse_plus_lambda_times_the_class_mse_by_hand():
    ctx = RunContext(config=None, output_dir=None)
    # instance: per-sample mse (1 + 1)/2 = 1 and (0 + 4)/2 = 2, mean 1.5; class: (4 + 0)/2 = 2 and (9 + 1)/2 = 5, mean 3.5
    instance = MSELoss("loss", LossParams()).run(ctx, _prediction([[0.0, 0.0], [1.0, 1.0]], [[1.0, 1.0], [1.0, 3.0]]))["loss"]
    prior = PriorLoss("prior_loss", PriorLossParams(prior_loss_weight=0.25)).run(
        ctx, _prediction([[0.0, 0.0], [0.0, 1.0]], [[2.0, 0.0], [3.0, 0.0]]))["loss"]
    total = SumLoss("total", NoParams()).run(ctx, terms=[instance, prior])["loss"]
    assert total.total.item() == 1.5 + 0.25 * 3.5
    assert {k: v.item() for k, v in total.terms.items()} == {"fm": 1.5, "prior": 3.5}  # logged unweighted


def test_the_prior_term_keeps_min_snr_weighting():
    ctx = RunContext(config=None, output_dir=None)
    schedule = DDPMSchedule("epsilon")
    level = [50.0, 900.0]  # SNR above and below γ = 5
    pred = _prediction([[0.0, 0.0], [0.0, 0.0]], [[1.0, 1.0], [2.0, 2.0]], level)
    prior = PriorLoss("prior_loss", PriorLossParams(prior_loss_weight=2.0, snr_gamma=5.0)).run(ctx, pred, schedule)["loss"]
    a, s = (c.double() for c in schedule.alpha_sigma(torch.tensor(level)))
    snr = (a / s) ** 2
    m = torch.minimum(snr, torch.tensor(5.0, dtype=torch.float64)) / snr
    assert bool(snr[0] > 5 > snr[1]) and torch.allclose(m.float(), min_snr_weight(schedule, torch.tensor(level), 5.0))
    expected = 2.0 * float((m * torch.tensor([1.0, 4.0], dtype=torch.float64)).mean())
    assert prior.total.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_family_trains_with_class_images_in_their_own_branch(family, tmp_path, tmp_path_factory, images, classes, capsys):
    cfg = family_config(tmp_path, family, pipeline_folder(tmp_path_factory, family), images, with_prior_preservation=True,
                        class_data_dir=str(classes), prior_loss_weight=0.5)
    path = write_config(tmp_path / "c.json", cfg)
    assert main(["graph", path, "--format", "json"]) == 0
    nodes = {n["id"]: n for n in json.loads(capsys.readouterr().out)["nodes"]}
    assert set(FRAGMENT) <= set(nodes) and nodes["total"]["inputs"]["terms"][-1] == "prior_loss.loss"
    assert nodes["class_predict"]["inputs"]["noisy"] == "class_noise.noisy"  # teacher forcing: the rollout is the instances'
    assert nodes["predict"]["inputs"]["noisy"] == "rollout.noisy"
    assert nodes["class_batch"]["params"]["train_batch_size"] == cfg["train_batch_size"]
    assert main(["run", path]) == 0
    assert "class_data: 3 images" in " ".join(capsys.readouterr().out.split())
    run = tmp_path / f"run-{family}"
    for m in read_metrics(run):
        terms = m["loss/fc"] + 10.0 * m["loss/adr"] if FLOW[family] else m["loss/fm"]  # ReflexFlow on for flow families
        assert np.isfinite(m["loss/prior"]) and m["loss/prior"] > 0
        assert m["loss"] == pytest.approx(terms + 0.5 * m["loss/prior"], rel=1e-5)
    assert json.loads((run / "checkpoints/step-2/class_data/position.json").read_text()) == {"epoch": 1, "cursor": 1}


def test_resume_restores_the_class_images_position_exactly(tmp_path, tmp_path_factory, images, classes):
    model = pipeline_folder(tmp_path_factory, "sd")
    common = dict(with_prior_preservation=True, class_data_dir=str(classes), validation_num_images=1)
    full = family_config(tmp_path, "sd", model, images, output_dir=str(tmp_path / "full"), max_train_steps=4, **common)
    assert main(["run", write_config(tmp_path / "full.json", full)]) == 0
    part = family_config(tmp_path, "sd", model, images, output_dir=str(tmp_path / "part"), max_train_steps=2,
                         checkpointing_steps=2, **common)
    path = write_config(tmp_path / "part.json", part)
    assert main(["run", path]) == 0
    assert main(["run", path, "--max_train_steps", "4", "--resume", "latest"]) == 0
    keys = ("loss", "loss/fm", "loss/prior")
    assert [[m[k] for k in keys] for m in read_metrics(tmp_path / "full")] == \
        [[m[k] for k in keys] for m in read_metrics(tmp_path / "part")]


def test_class_captions_take_caption_dropout_and_reach_a_trained_text_encoder(tmp_path, tmp_path_factory, classes):
    folder = pipeline_folder(tmp_path_factory, "sd")
    params = ClassImagesParams(class_data_dir=str(classes), resolution=16, train_batch_size=3, model_family="sd",
                               pretrained_model_name_or_path=str(folder), cache_dir=str(tmp_path / "cache"),
                               train_text_encoder=True)
    ctx = RunContext(config=None, output_dir=None)
    data = LoadClassImages("class_data", params).run(ctx)["data"]
    assert data.captions == ["a photo number 0", "a photo number 1", "a photo number 2"]
    x0, cond = data.batch(torch.arange(3), None, ctx, "class_batch", BatchStageParams(caption_dropout_probability=1.0))
    assert x0.shape == (3, 4, 8, 8) and "loss_weight" not in cond
    assert "input_ids" in cond  # token ids: the adapted text encoders encode the class captions each step
    assert torch.equal(cond["prompt_embeds"], data.null_row["prompt_embeds"].expand(3, -1, -1))


def test_graph_include_works_with_class_data_dir(tmp_path, tmp_path_factory, images, classes, capsys):
    cfg = family_config(tmp_path, "sd", pipeline_folder(tmp_path_factory, "sd"), images, class_data_dir=str(classes),
                        graph={"include": ["prior_preservation"]})
    assert main(["graph", write_config(tmp_path / "c.json", cfg), "--format", "json"]) == 0
    ids = [n["id"] for n in json.loads(capsys.readouterr().out)["nodes"]]
    assert set(FRAGMENT) <= set(ids)


CONTRADICTIONS = {
    "no class folder": (dict(with_prior_preservation=True), "with_prior_preservation needs class_data_dir"),
    "included, flag false": (dict(with_prior_preservation=False, class_data_dir="CLASSES", graph={"include": ["prior_preservation"]}),
                             "graph.include: includes prior_preservation but with_prior_preservation is false"),
    "included, no class folder": (dict(graph={"include": ["prior_preservation"]}),
                                  "graph.include: includes prior_preservation, which needs class_data_dir"),
    "fragment removed": (dict(with_prior_preservation=True, class_data_dir="CLASSES",
                              graph={"remove": ["prior_loss", "class_predict"]}),
                         "graph.remove: removes class_predict, prior_loss of the prior_preservation fragment"),
    "class folder without the fragment": (dict(class_data_dir="CLASSES"), "class_data_dir is only used with with_prior_preservation=true"),
}


@pytest.mark.parametrize("command", ["validate", "run"])
@pytest.mark.parametrize("case", list(CONTRADICTIONS))
def test_contradictions_exit_2_naming_both(case, command, tmp_path, tmp_path_factory, images, classes, capsys):
    overrides, message = CONTRADICTIONS[case]
    overrides = {k: str(classes) if v == "CLASSES" else v for k, v in overrides.items()}
    cfg = family_config(tmp_path, "sd", pipeline_folder(tmp_path_factory, "sd"), images, **overrides)
    assert main([command, write_config(tmp_path / "c.json", cfg)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert message in err, err
    assert not (tmp_path / "run-sd").exists()
