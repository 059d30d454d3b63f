"""Training end to end on the CPU: metrics, checkpoints, exact resume, samples, failures."""

from __future__ import annotations

import json

import torch
from rollgraph.graph import Port, Stage, register_stage
from rollgraph.graph.cli import main
from rollgraph.stages.config import load_config
from rollgraph.stages.types import Loss
from safetensors.torch import load_file

from tests.conftest import read_metrics


def test_run_writes_metrics_checkpoints_and_samples(tiny, tmp_path):
    cfg = tiny(max_train_steps=4, checkpointing_steps=2, checkpoints_total_limit=1, validation_steps=2)
    assert main(["run", str(cfg)]) == 0
    run = tmp_path / "run"
    metrics = read_metrics(run)
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    for m in metrics:
        assert {"step", "loss", "lr", "time", "loss/fm", "grad_norm"} <= set(m)
        assert m["loss"] > 0
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert ckpts == ["step-4"]  # total limit 1: step-2 was removed
    files = [p for p in (run / "checkpoints" / "step-4").rglob("*") if p.is_file()]
    assert files and all(p.suffix in (".safetensors", ".json") for p in files)
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["step-000002.png", "step-000004.png"]
    status = json.loads((run / "run.json").read_text())
    assert status["status"] == "finished" and status["step"] == 4 and status["sample"].endswith("step-000004.png")
    # the checkpoint's model folder is a plain diffusers folder
    from diffusers import UNet2DModel

    UNet2DModel.from_pretrained(str(run / "checkpoints" / "step-4" / "model"))


def test_resume_gives_exactly_the_uninterrupted_losses(tiny, tmp_path):
    common = dict(max_train_steps=6, use_ema=True, gradient_accumulation_steps=2, lr_warmup_steps=2, lr_scheduler="cosine",
                  scheduled_sampling_max_step_offset=2, scheduled_sampling_probability=0.5)
    full = tiny(output_dir=str(tmp_path / "full"), **common)
    assert main(["run", str(full)]) == 0
    part = tiny(output_dir=str(tmp_path / "part"), checkpointing_steps=3, **{**common, "max_train_steps": 3})
    assert main(["run", str(part)]) == 0
    assert main(["run", str(part), "--max_train_steps", "6", "--resume", "latest"]) == 0
    a = [m["loss"] for m in read_metrics(tmp_path / "full")]
    b = [m["loss"] for m in read_metrics(tmp_path / "part")]
    assert len(b) == 6
    assert a == b  # bit-exact on the CPU
    wa = load_file(str(tmp_path / "full/checkpoints/step-6/model/diffusion_pytorch_model.safetensors"))
    wb = load_file(str(tmp_path / "part/checkpoints/step-6/model/diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_without_checkpoint_exits_2(tiny, capsys):
    assert main(["run", str(tiny()), "--resume", "latest"]) == 2
    assert "no checkpoint" in capsys.readouterr().err


@register_stage
class PoisonAfterStep2(Stage):
    """Test-only: turns the loss into NaN from the third optimizer step on."""

    type = "test.poison_loss"
    inputs = (Port("loss", "Loss"),)
    outputs = (Port("loss", "Loss"),)

    def run(self, ctx, loss):
        return {"loss": Loss(loss.total * float("nan"), loss.terms) if ctx.step >= 2 else loss}


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(tiny, tmp_path, capsys):
    cfg = tiny(max_train_steps=2, checkpointing_steps=1)
    assert main(["run", str(cfg)]) == 0
    run = tmp_path / "run"
    before = (run / "checkpoints/step-2/model/diffusion_pytorch_model.safetensors").read_bytes()
    poisoned = tiny(max_train_steps=5, graph={"nodes": [
        {"id": "poison", "type": "test.poison_loss", "inputs": {"loss": "total.loss"}},
        {"id": "optimize", "inputs": {"loss": "poison.loss"}}]})
    assert main(["run", str(poisoned), "--resume", "latest"]) == 1
    err = capsys.readouterr().err
    assert "non-finite loss (nan) at step 3" in err
    assert (run / "checkpoints/step-2/model/diffusion_pytorch_model.safetensors").read_bytes() == before
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-1", "step-2"]
    status = json.loads((run / "run.json").read_text())
    assert status["status"] == "failed" and "non-finite" in status["error"]


def test_sample_command_writes_pngs_and_tensor(tiny, tmp_path):
    assert main(["run", str(tiny(max_train_steps=2, use_ema=True))]) == 0
    out = tmp_path / "samples"
    assert main(["sample", str(tmp_path / "run"), "--num", "3", "--steps", "4", "--seed", "1", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.glob("sample-*.png")) == ["sample-0000.png", "sample-0001.png", "sample-0002.png"]
    t = load_file(str(out / "samples.safetensors"))["samples"]
    assert t.shape == (3, 1, 8, 8) and t.min() >= -1 and t.max() <= 1


def test_stop_command_checkpoints_and_marks_stopped(tiny, tmp_path):
    run = tmp_path / "run"
    (run / "control").mkdir(parents=True)
    (run / "control" / "stop").write_text("")
    assert main(["run", str(tiny(max_train_steps=50))]) == 0
    status = json.loads((run / "run.json").read_text())
    assert status["status"] == "stopped" and status["step"] == 1
    assert (run / "checkpoints" / "step-1" / "trainer.json").exists()


def test_quickstart_preset_runs_a_few_steps(tmp_path):
    cfg = load_config("quickstart")
    assert cfg.prediction_type == "flow_matching" and cfg.dataset == "digits"
    assert main(["run", "quickstart", "--output_dir", str(tmp_path / "qs"), "--max_train_steps", "2",
                 "--validation_num_images", "4", "--validation_num_inference_steps", "2", "--device", "cpu"]) == 0
    assert (tmp_path / "qs" / "samples" / "step-000002.png").exists()


def test_fused_adamw_trains_and_8bit_adam_is_refused_on_the_cpu(tiny, tmp_path, capsys):
    assert main(["run", str(tiny(max_train_steps=2, adam_fused=True))]) == 0
    assert main(["run", str(tiny(output_dir=str(tmp_path / "b"), use_8bit_adam=True))]) == 2
    assert "use_8bit_adam" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
