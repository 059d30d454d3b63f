"""Multi-process training on the CPU (gloo): real 2-process runs through the launcher, torchrun and accelerate.

Layout independence: with the same global batch (2 processes × 4 samples vs 1 × 8) the per-step losses must
match. DDP, the data sharding, the loss mean and stages drawing each micro-step's randomness for the whole
global batch and keeping their slice (``ctx.batch_generator`` / ``local_slice``) give that. Tolerances: rel 1e-5 on losses and gradient norms (float32 summation order of
the gradient all-reduce and of smaller conv batches; measured: ~1e-7); weights see _weights_close.

Run as a module (``-m tests.test_distributed run CONFIG``) it is the real CLI with the test stages registered:
the workers the launcher starts in these tests run that.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from rollgraph.graph import Port, Stage, distributed, register_stage
from rollgraph.graph.cli import _run_args, build_parser, main
from rollgraph.graph.context import RunContext
from rollgraph.stages.types import Loss
from safetensors.torch import load_file

from tests.conftest import read_metrics

ROOT = Path(__file__).resolve().parent.parent
WEIGHTS = "checkpoints/step-{}/model/diffusion_pytorch_model.safetensors"


@register_stage
class NanOnLastRank(Stage):
    """Test-only: the last rank's loss turns NaN from the third optimizer step on (the others stay finite)."""

    type = "test.nan_on_last_rank"
    inputs = (Port("loss", "Loss"),)
    outputs = (Port("loss", "Loss"),)

    def run(self, ctx, loss):
        poison = ctx.step >= 2 and ctx.rank == ctx.world_size - 1
        return {"loss": Loss(loss.total * float("nan"), loss.terms) if poison else loss}


@pytest.fixture
def workers_with_test_stages(monkeypatch):
    """``rollgraph run --num-processes N`` as shipped, except that the workers run this module (the same CLI
    plus the test-only stages above)."""
    original = distributed.launch_command

    def command(num_processes, run_args):
        cmd = original(num_processes, run_args)
        cmd[cmd.index("rollgraph.graph.cli")] = "tests.test_distributed"
        return cmd

    monkeypatch.setattr(distributed, "launch_command", command)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("ROLLGRAPH_NO_PROGRESS", "1")


def _close(a: dict, b: dict, keys=("loss", "loss/fm", "grad_norm", "lr")) -> None:
    for key in keys:
        assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-7), (key, a["step"], a[key], b[key])


def _weights_close(path_a: Path, path_b: Path) -> None:
    """Adam divides by sqrt(v): for the odd weight whose gradient is ~0 a rounding difference moves it by a
    fraction of one step (lr = 1e-3), so: every weight within 1e-4, and the mean difference below 1e-7."""
    wa, wb = load_file(str(path_a)), load_file(str(path_b))
    assert wa.keys() == wb.keys()
    diff = torch.cat([(wa[k] - wb[k]).abs().flatten() for k in wa])
    assert diff.max() < 1e-4 and diff.mean() < 1e-7, (diff.max(), diff.mean())


def test_two_processes_match_one_and_their_checkpoint_resumes_in_one(tiny, tmp_path, workers_with_test_stages):
    common = dict(max_train_steps=4, checkpointing_steps=2, gradient_accumulation_steps=2, lr_warmup_steps=1)
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["run", str(tiny(output_dir=str(one), train_batch_size=8, **common))]) == 0
    two_cfg = tiny(output_dir=str(two), train_batch_size=4, **common)
    assert main(["run", str(two_cfg), "--num-processes", "2"]) == 0

    m1, m2 = read_metrics(one), read_metrics(two)
    assert [m["step"] for m in m2] == [1, 2, 3, 4]  # one line per step: only rank 0 writes
    for a, b in zip(m1, m2, strict=True):
        _close(a, b)
    assert m1[-1]["loss"] != m1[0]["loss"]  # it did train
    # only one set of files
    assert sorted(p.name for p in two.iterdir()) == ["checkpoints", "config.json", "control", "metrics.jsonl", "run.json", "samples", "train.log"]
    assert sorted(p.name for p in (two / "checkpoints").iterdir()) == ["step-2", "step-4"]
    assert sorted(p.name for p in (two / "samples").iterdir()) == ["step-000004.png"]
    log = (two / "train.log").read_text()
    assert log.count("step 3/4 |") == 1 and log.count("checkpoint →") == 2
    status = json.loads((two / "run.json").read_text())
    assert status["status"] == "finished" and status["step"] == 4 and status["num_processes"] == 2
    trainer = json.loads((two / "checkpoints/step-2/trainer.json").read_text())
    assert trainer["world_size"] == 2 and trainer["global_batch_size"] == 8
    # the data position counts global samples: the same after 2 steps of 2 × 4 × 2 micro-steps as of 1 × 8 × 2
    assert (two / "checkpoints/step-2/data/position.json").read_text() == (one / "checkpoints/step-2/data/position.json").read_text()
    _weights_close(one / WEIGHTS.format(4), two / WEIGHTS.format(4))

    # the 2-process checkpoint at step 2 resumes in one process with the same global batch
    assert main(["run", str(two_cfg), "--train_batch_size", "8", "--resume", str(two / "checkpoints/step-2")]) == 0
    m3 = read_metrics(two)
    assert [m["step"] for m in m3] == [1, 2, 3, 4]
    for a, b in zip(m1, m3, strict=True):
        _close(a, b)
    assert "written by 2 process(es), this run has 1" in (two / "train.log").read_text()
    _weights_close(one / WEIGHTS.format(4), two / WEIGHTS.format(4))


def test_batch_draws_do_not_depend_on_the_rank_layout():
    def draws(rank, world_size, n):
        ctx = RunContext(config=None, seed=3, step=5, micro_step=1, rank=rank, world_size=world_size)
        return torch.randn((n * world_size, 4), generator=ctx.batch_generator("noise"))[ctx.local_slice(n)]

    whole = draws(0, 1, 8)
    assert torch.equal(torch.cat([draws(0, 2, 4), draws(1, 2, 4)]), whole)
    assert torch.equal(torch.cat([draws(r, 4, 2) for r in range(4)]), whole)
    assert not torch.equal(whole[0], whole[1])


def test_gradients_sync_only_on_the_accumulation_boundary(tmp_path):
    """DDP's all-reduce runs once per optimizer step: counted with a communication hook (1-rank gloo group)."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        ddp = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(3, 2))
        calls = []

        def count(state, bucket):
            calls.append(bucket.index())
            fut = torch.futures.Future()
            fut.set_result(bucket.buffer())
            return fut

        ddp.register_comm_hook(None, count)
        ctx = RunContext(config=None, accumulation_steps=3)
        for step in range(2):
            for micro in range(3):
                ctx.micro_step = micro
                with distributed.gradient_sync(ctx, [ddp]):
                    ddp(torch.ones(2, 3)).sum().backward()
                assert len(calls) == step + (micro == 2)
    finally:
        torch.distributed.destroy_process_group()


def test_launcher_arguments_and_invalid_config(tiny, capsys):
    args = build_parser().parse_args(["run", "cfg.json", "--set", "seed=3", "--learning_rate", "2e-4",
                                      "--resume", "latest", "--num-processes", "2"])
    child = build_parser().parse_args(["run", *_run_args(args)])
    assert child.sets == ["seed=3"] and child.cfg__learning_rate == "2e-4" and child.resume == "latest"
    assert child.num_processes == 1
    assert distributed.launch_command(2, ["c.json"])[-3:] == ["rollgraph.graph.cli", "run", "c.json"]
    # a bad config is reported before any process starts
    assert main(["run", str(tiny()), "--num-processes", "2", "--learning_rate", "-1"]) == 2
    assert "learning_rate" in capsys.readouterr().err


@pytest.mark.slow
def test_nan_on_one_rank_stops_every_rank_and_keeps_the_checkpoint(tiny, tmp_path, workers_with_test_stages):
    graph = {"nodes": [{"id": "poison", "type": "test.nan_on_last_rank", "inputs": {"loss": "total.loss"}},
                       {"id": "optimize", "inputs": {"loss": "poison.loss"}}]}
    cfg = tiny(train_batch_size=4, max_train_steps=5, checkpointing_steps=1, graph=graph)
    assert main(["run", str(cfg), "--num-processes", "2"]) == 1
    run = tmp_path / "run"
    status = json.loads((run / "run.json").read_text())
    assert status["status"] == "failed" and "non-finite loss (nan) at step 3" in status["error"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-1", "step-2"]
    assert [m["step"] for m in read_metrics(run)] == [1, 2]


@pytest.mark.slow
def test_accelerate_launch_with_rollout_and_a_stop_command(tiny, tmp_path):
    """``accelerate launch`` (``--multi_gpu`` starts several processes; on a CPU-only machine they use gloo)
    with rollout and ReflexFlow on; a stop command is seen by both ranks at step 1."""
    run = tmp_path / "run"
    (run / "control").mkdir(parents=True)
    (run / "control" / "stop").touch()
    cfg = tiny(train_batch_size=4, max_train_steps=20, scheduled_sampling_max_step_offset=2,
               scheduled_sampling_probability=1.0, scheduled_sampling_sampler="euler")
    env = {**os.environ, "ROLLGRAPH_NO_PROGRESS": "1"}
    accelerate = Path(sys.executable).with_name("accelerate")
    proc = subprocess.run([str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "rollgraph.graph.cli", "run", str(cfg)],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    status = json.loads((run / "run.json").read_text())
    assert status["status"] == "stopped" and status["step"] == 1 and status["num_processes"] == 2
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-1"]
    (metrics,) = read_metrics(run)
    assert {"loss/adr", "loss/fc", "rollout/samples", "rollout/model_evals"} <= set(metrics)
    assert 0 <= metrics["rollout/samples"] <= 8  # counted over the global batch (2 × 4)
    assert proc.stdout.count("run folder:") == 1


if __name__ == "__main__":  # a worker of the tests above: the real CLI with the test-only stages registered
    sys.exit(main(sys.argv[1:]))
