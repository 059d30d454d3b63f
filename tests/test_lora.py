"""LoRA through peft: target checks, diffusers-format checkpoints, resume, eval-mode rollout, bad targets."""

from __future__ import annotations

import pytest
import torch
from rollgraph.graph import ConfigError, RunError
from rollgraph.graph.cli import main
from rollgraph.stages.models import get_family
from rollgraph.stages.models.lora import LORA_FILE, check_targets
from rollgraph.stages.predict import ModelStageParams
from rollgraph.stages.rollout import eval_mode

from tests.tiny_pipelines import family_config, pipeline_folder, write_config, write_images


def _adapter(tmp_path_factory, family="sd", **overrides):
    params = dict(model_family=family, pretrained_model_name_or_path=str(pipeline_folder(tmp_path_factory, family)),
                  prediction_type="flow_matching" if family in ("sd3", "flux") else "epsilon", lora_rank=4)
    return get_family(family).build(ModelStageParams(**{**params, **overrides}))


def _randomise_lora(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g))


def test_every_user_target_must_match_but_family_defaults_need_only_one():
    net = torch.nn.ModuleDict({"attn": torch.nn.ModuleDict({"to_q": torch.nn.Linear(2, 2), "to_k": torch.nn.Linear(2, 2)})})
    check_targets(net, ["to_q", "attn.to_k"], "unet")
    with pytest.raises(ConfigError) as info:
        check_targets(net, ["to_q", "to_qq"], "unet")
    assert "['to_qq'] match no Linear/Conv2d layer of the unet" in info.value.render()
    check_targets(net, ["to_q", "to_add_out"], "unet", each=False)
    with pytest.raises(ConfigError):
        check_targets(net, ["proj", "to_add_out"], "unet", each=False)


def test_only_adapter_weights_train_and_start_as_the_base_model(tmp_path_factory):
    model = _adapter(tmp_path_factory, "sd3")
    trainable = [n for n, p in model.raw_module.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert len(model.trainable_parameters()) == len(trainable)
    base = _adapter(tmp_path_factory, "sd3", lora_rank=0)
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([500.0, 100.0])
    cond = {"prompt_embeds": torch.randn(2, 5, 64), "pooled_prompt_embeds": torch.randn(2, 64)}
    torch.testing.assert_close(model.no_grad_call(x, t, cond), base.no_grad_call(x, t, cond))  # B starts at zero


@pytest.mark.parametrize("family", ["sd", "flux"])
def test_lora_checkpoint_round_trip(family, tmp_path, tmp_path_factory):
    a = _adapter(tmp_path_factory, family)
    _randomise_lora(a.raw_module)
    a.save_state(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [LORA_FILE]
    b = _adapter(tmp_path_factory, family)
    b.load_state(tmp_path)
    sa, sb = dict(a.raw_module.named_parameters()), dict(b.raw_module.named_parameters())
    assert all(torch.equal(sa[k], sb[k]) for k in sa if "lora_" in k)
    wrong = _adapter(tmp_path_factory, family, lora_rank=2)
    with pytest.raises(RunError, match="do not fit this model"):
        wrong.load_state(tmp_path)


def test_lora_dropout_is_off_in_eval_mode_and_gradient_checkpointing_keeps_grads(tmp_path_factory):
    model = _adapter(tmp_path_factory, "sd", lora_dropout=0.5, gradient_checkpointing=True)
    _randomise_lora(model.raw_module)
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([10.0, 900.0])
    cond = {"prompt_embeds": torch.randn(2, 16, 32)}
    model.raw_module.train()
    with eval_mode(model.raw_module):  # what the rollout does
        assert torch.equal(model.no_grad_call(x, t, cond), model.no_grad_call(x, t, cond))
    assert model.raw_module.training
    torch.manual_seed(0)
    model(x, t, cond).pow(2).mean().backward()
    grads = [p.grad for p in model.trainable_parameters()]
    assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0


def test_a_lora_target_matching_nothing_exits_2_before_anything_is_written(tmp_path, tmp_path_factory, capsys):
    images = write_images(tmp_path / "images", 2)
    cfg = family_config(tmp_path, "sdxl", pipeline_folder(tmp_path_factory, "sdxl"), images,
                        lora_target_modules=["to_q", "to_qkv"])
    assert main(["run", write_config(tmp_path / "c.json", cfg)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "lora_target_modules" in err and "['to_qkv'] match no Linear/Conv2d layer of the unet" in err
    assert not (tmp_path / "run-sdxl").exists() and not (tmp_path / "cache").exists()


def test_lora_and_prompt_keys_are_rejected_for_unet2d(tiny, capsys):
    assert main(["validate", str(tiny(lora_rank=8, instance_prompt="a dog"))]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "['instance_prompt', 'lora_rank'] only apply to the text-to-image families" in err


def test_bf16_placement_keeps_the_adapter_in_float32(tmp_path_factory):
    model = _adapter(tmp_path_factory, "flux")
    model.place("cpu", torch.bfloat16)  # what LoadModel does when bf16 autocast is on (CUDA)
    dtypes = {n: p.dtype for n, p in model.raw_module.named_parameters()}
    assert all((d == torch.float32) == ("lora_" in n) for n, d in dtypes.items())
    x, t = torch.randn(1, 4, 8, 8), torch.tensor([300.0])
    cond = {"prompt_embeds": torch.randn(1, 16, 32), "pooled_prompt_embeds": torch.randn(1, 32)}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, t, cond)
    out.float().pow(2).mean().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.trainable_parameters())
