"""The text-to-image families (sd, sdxl, sd3, flux) end to end on tiny real pipelines, CPU, no network.

Each family trains through the CLI with LoRA and rollout on, and its LoRA loads into the diffusers
pipeline; our sampler (own solvers, the family's text encoders) reproduces the diffusers pipeline; LoRA
checkpoints resume exactly; bad model folders fail with exit 2 before anything is written.
"""

from __future__ import annotations

import shutil

import diffusers
import numpy as np
import pytest
import torch
from rollgraph.graph.cli import main
from safetensors.torch import load_file

from tests.conftest import read_metrics
from tests.tiny_pipelines import FLOW, PIPELINES, family_config, pipeline_folder, write_config, write_images

FAMILIES = ["sd", "sdxl", "sd3", "flux"]


@pytest.fixture
def images(tmp_path):
    return write_images(tmp_path / "images", 4)


def _pipeline_images(pipe, family, lora=None, steps=2):
    if lora is not None:
        pipe.load_lora_weights(str(lora))
    kw = dict(num_inference_steps=steps, height=16, width=16, output_type="np", generator=torch.Generator().manual_seed(0))
    if FLOW[family]:
        kw["max_sequence_length"] = 16
    return pipe("a photo of sks dog", **kw).images


@pytest.mark.parametrize("family", FAMILIES)
def test_family_trains_with_rollout_and_its_lora_loads_into_diffusers(family, tmp_path, tmp_path_factory, images):
    model = pipeline_folder(tmp_path_factory, family)
    cfg = family_config(tmp_path, family, model, images, learning_rate=1e-2, caption_dropout_probability=0.5)
    assert main(["run", write_config(tmp_path / "c.json", cfg)]) == 0
    run = tmp_path / f"run-{family}"
    metrics = read_metrics(run)
    assert [m["step"] for m in metrics] == [1, 2]
    assert sum(m["rollout/model_evals"] for m in metrics) > 0 and all(np.isfinite(m["loss"]) for m in metrics)
    assert ("loss/adr" in metrics[0]) == FLOW[family]  # ReflexFlow is on by default for flow matching
    ckpt = run / "checkpoints" / "step-2"
    assert sorted(p.name for p in (ckpt / "model").iterdir()) == ["pytorch_lora_weights.safetensors"]
    assert all(p.suffix in (".safetensors", ".json") for p in ckpt.rglob("*") if p.is_file())
    assert (run / "samples" / "step-000002.png").exists()
    pipe = getattr(diffusers, PIPELINES[family]).from_pretrained(str(model))
    before = _pipeline_images(pipe, family)
    after = _pipeline_images(pipe, family, lora=ckpt / "model")
    assert np.abs(before - after).max() > 1e-3


@pytest.mark.parametrize("family", FAMILIES)
def test_our_sampler_reproduces_the_diffusers_pipeline(family, tmp_path_factory):
    """Euler on our grid = the pipeline with DDIM (trailing) / FlowMatchEuler on the same sigmas, with
    classifier-free guidance (sd, sdxl, sd3) or Flux's guidance embedding: text encoding, conditioning,
    packing, timestep scale and VAE decoding all agree."""
    from types import SimpleNamespace

    from rollgraph.stages.latent_data import prepare_sampling
    from rollgraph.stages.models import get_family
    from rollgraph.stages.predict import ModelStageParams
    from rollgraph.stages.sampling import generate
    from rollgraph.stages.schedule import make_schedule

    folder, steps = pipeline_folder(tmp_path_factory, family), 3
    ptype = "flow_matching" if FLOW[family] else "epsilon"
    model = get_family(family).build(ModelStageParams(model_family=family, pretrained_model_name_or_path=str(folder),
                                                      lora_rank=0, prediction_type=ptype, flux_guidance_value=3.5))
    model.place("cpu")
    prepare_sampling(model, SimpleNamespace(validation_prompt="a cat", instance_prompt=None, cache_dir=None,
                                            tokenizer_max_length=8, resolution=16), torch.device("cpu"), None)
    guidance = 1.0 if family == "flux" else 4.0
    ours = generate(model, make_schedule(ptype, 1000, 3.0 if FLOW[family] else 1.0), 1, steps, "euler", 0,
                    torch.device("cpu"), model.sample_shape(), guidance=guidance)
    noise = torch.randn(1, *model.sample_shape(), generator=torch.Generator().manual_seed(0))
    pipe = getattr(diffusers, PIPELINES[family]).from_pretrained(str(folder))
    kw = dict(num_inference_steps=steps, height=16, width=16, output_type="pt", guidance_scale=guidance, latents=noise)
    if family in ("sd", "sdxl"):
        pipe.scheduler = diffusers.DDIMScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing",
                                                             set_alpha_to_one=True, clip_sample=False)
    elif family == "sd3":
        kw.update(sigmas=list(np.linspace(1, 0, steps + 1)[:-1]), max_sequence_length=8)
    else:
        kw.update(latents=diffusers.FluxPipeline._pack_latents(noise, 1, 4, 8, 8), guidance_scale=3.5, max_sequence_length=8)
    theirs = pipe("a cat", **kw).images
    assert ours.shape == theirs.shape == (1, 3, 16, 16)
    torch.testing.assert_close(ours * 0.5 + 0.5, theirs.clamp(0, 1), atol=1e-3, rtol=0)


def test_resume_from_a_lora_checkpoint_is_exact(tmp_path, tmp_path_factory, images):
    model = pipeline_folder(tmp_path_factory, "flux")
    common = dict(max_train_steps=4, lora_dropout=0.1, scheduled_sampling_probability=0.5, validation_num_images=1)
    full = family_config(tmp_path, "flux", model, images, output_dir=str(tmp_path / "full"), **common)
    assert main(["run", write_config(tmp_path / "full.json", full)]) == 0
    part = family_config(tmp_path, "flux", model, images, output_dir=str(tmp_path / "part"), checkpointing_steps=2,
                         **{**common, "max_train_steps": 2})
    path = write_config(tmp_path / "part.json", part)
    assert main(["run", path]) == 0
    assert main(["run", path, "--max_train_steps", "4", "--resume", "latest"]) == 0
    assert [m["loss"] for m in read_metrics(tmp_path / "full")] == [m["loss"] for m in read_metrics(tmp_path / "part")]
    a = load_file(str(tmp_path / "full/checkpoints/step-4/model/pytorch_lora_weights.safetensors"))
    b = load_file(str(tmp_path / "part/checkpoints/step-4/model/pytorch_lora_weights.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # `rollgraph sample` from the LoRA checkpoint: the base from its folder, the LoRA loaded on top, as the run
    # sampled it: with the run's seed and validation settings, the final validation grid's very pixels
    out = tmp_path / "samples"
    assert main(["sample", str(tmp_path / "full"), "--num", "1", "--steps", str(full.get("validation_num_inference_steps", 20)),
                 "--seed", str(full.get("seed", 0)), "--out", str(out)]) == 0
    from PIL import Image

    assert np.array_equal(np.asarray(Image.open(out / "grid.png")),
                          np.asarray(Image.open(tmp_path / "full" / "samples" / "step-000004.png")))


def test_full_fine_tuning_saves_a_diffusers_model_and_samples(tmp_path, tmp_path_factory, images, capsys):
    model = pipeline_folder(tmp_path_factory, "sd3")
    cfg = family_config(tmp_path, "sd3", model, images, lora_rank=0, max_train_steps=1, use_ema=True)
    assert main(["run", write_config(tmp_path / "c.json", cfg)]) == 0
    ckpt = tmp_path / "run-sd3" / "checkpoints" / "step-1" / "model"
    trained = diffusers.SD3Transformer2DModel.from_pretrained(str(ckpt))
    base = diffusers.SD3Transformer2DModel.from_pretrained(str(model), subfolder="transformer")
    assert any(not torch.equal(p, q) for p, q in zip(trained.parameters(), base.parameters(), strict=True))
    out = tmp_path / "samples"
    assert main(["sample", str(tmp_path / "run-sd3"), "--num", "2", "--steps", "2", "--out", str(out)]) == 0
    assert load_file(str(out / "samples.safetensors"))["samples"].shape == (2, 3, 16, 16)
    assert (out / "grid.png").exists()


def _broken(tmp_path, tmp_path_factory, case):
    sd = pipeline_folder(tmp_path_factory, "sd")
    if case == "not a diffusers folder":
        return "sd", tmp_path / "empty", "not a diffusers pipeline folder (no model_index.json)"
    if case == "hub id":
        return "sd", "someone/some-model", "no download possible"
    if case == "family mismatch":
        return "sdxl", sd, "holds a StableDiffusionPipeline, which is model_family 'sd', not 'sdxl'"
    if case == "missing text encoder":
        copy = tmp_path / "sdxl-copy"
        shutil.copytree(pipeline_folder(tmp_path_factory, "sdxl"), copy)
        shutil.rmtree(copy / "text_encoder_2")
        return "sdxl", copy, "text_encoder_2 (model_index.json lists it, but there is no text_encoder_2/ folder)"
    if case == "prediction type":
        return "sd", sd, "trained with prediction_type 'epsilon'"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["not a diffusers folder", "hub id", "family mismatch", "missing text encoder", "prediction type"])
def test_bad_model_folders_exit_2_before_anything_is_written(case, tmp_path, tmp_path_factory, images, capsys):
    (tmp_path / "empty").mkdir()
    family, folder, message = _broken(tmp_path, tmp_path_factory, case)
    extra = {"prediction_type": "v_prediction"} if case == "prediction type" else {}
    cfg = family_config(tmp_path, family, folder, images, **extra)
    assert main(["run", write_config(tmp_path / "c.json", cfg)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert message in err
    assert not (tmp_path / f"run-{family}").exists() and not (tmp_path / "cache").exists()


def test_uncaptioned_images_without_instance_prompt_exit_2(tmp_path, tmp_path_factory, images, capsys):
    cfg = family_config(tmp_path, "sd", pipeline_folder(tmp_path_factory, "sd"), images, instance_prompt=None)
    assert main(["run", write_config(tmp_path / "c.json", cfg)]) == 2
    assert "instance_prompt" in capsys.readouterr().err


@pytest.mark.parametrize("family", ["sdxl", "flux"])
def test_any_subset_of_a_batch_is_evaluated_with_its_own_conditioning(family, tmp_path_factory):
    """What the rollout relies on: the model on samples idx with index_cond(cond, idx) equals the full-batch
    output at idx (Flux packs latents and builds position ids per call; SDXL adds time ids)."""
    from rollgraph.stages.models import get_family
    from rollgraph.stages.predict import ModelStageParams
    from rollgraph.stages.types import index_cond

    params = ModelStageParams(model_family=family, lora_rank=4, prediction_type="flow_matching" if FLOW[family] else "epsilon",
                              pretrained_model_name_or_path=str(pipeline_folder(tmp_path_factory, family)))
    model = get_family(family).build(params)
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(4, 4, 8, 8, generator=g), torch.tensor([900.0, 500.0, 100.0, 10.0])
    width = 64 if family == "sdxl" else 32
    cond = {"prompt_embeds": torch.randn(4, 16, width, generator=g), "pooled_prompt_embeds": torch.randn(4, 32, generator=g)}
    if family == "sdxl":
        cond["add_time_ids"] = torch.tensor([[16.0, 16, 0, 0, 16, 16], [20, 24, 0, 2, 16, 16]]).repeat(2, 1)
    full = model.no_grad_call(x, t, cond)
    idx = torch.tensor([3, 1])
    torch.testing.assert_close(model.no_grad_call(x[idx], t[idx], index_cond(cond, idx)), full[idx], atol=1e-5, rtol=1e-4)
