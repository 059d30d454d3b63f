"""What the trainer does around the stages each step, made cheap without changing results: metrics read once
per step, the global RNG re-seeded without torch.manual_seed's per-backend cost, the control folder polled at
most once a second, metrics.jsonl written in whole lines at most a second late."""

from __future__ import annotations

import json

import torch
from rollgraph.graph.context import RunContext
from rollgraph.graph.logging_hooks import MetricsFile
from rollgraph.graph.train import Control


def test_logged_tensors_are_read_together_at_the_step_end(monkeypatch):
    """As on an accelerator (here the CPU made to behave like one): no read per metric, one per step end."""
    monkeypatch.setattr("rollgraph.graph.context.READ_AT_ONCE", ())
    ctx = RunContext(config=None)
    loss = torch.tensor(0.25, requires_grad=True) * 2
    counts = torch.tensor([3.0, 4.0]).sum()
    monkeypatch.setattr(torch.Tensor, "item", lambda self: (_ for _ in ()).throw(AssertionError("a sync per metric")))
    ctx.log("loss", loss)
    ctx.log("loss", loss * 3)
    ctx.log("evals", counts, reduce="sum")
    ctx.log("evals", torch.tensor(1, dtype=torch.int64), reduce="sum")
    ctx.log("lr", 1e-3, reduce="last")
    counts.add_(100)  # a stage changing its tensor after logging it does not change the logged value
    assert ctx.pop_metrics() == {"loss": 1.0, "evals": 8.0, "lr": 1e-3}
    assert ctx.pop_metrics() == {}


def test_cpu_tensors_are_read_when_logged():
    ctx = RunContext(config=None)
    value = torch.tensor(0.5)
    ctx.log("loss", value)
    value.add_(1)
    assert ctx.metrics["loss"] == [(0.5, "mean")] and ctx.pop_metrics() == {"loss": 0.5}


def test_seed_global_rng_draws_what_torch_manual_seed_draws():
    ctx = RunContext(config=None, seed=5)
    ctx.seed_global_rng("global", 3, 0)
    ours = torch.rand(4)
    from rollgraph.graph.context import derive_seed

    torch.manual_seed(derive_seed(5, "global", 3, 0))
    assert torch.equal(ours, torch.rand(4))


class _Console:
    def __init__(self):
        self.lines = []

    def line(self, text):
        self.lines.append(text)


class _Trainer:
    def __init__(self, folder):
        self.output_dir = folder
        self.ctx = RunContext(config=None)
        self.signal_stop = False
        self.console = _Console()
        self.runner = None

    def _and_saving(self):
        return ""


def test_the_control_folder_is_read_at_most_once_a_second(tmp_path, monkeypatch):
    clock = [100.0]
    monkeypatch.setattr("rollgraph.graph.train.time.monotonic", lambda: clock[0])
    (tmp_path / "control").mkdir()
    control = Control(_Trainer(tmp_path))
    assert control.poll() == frozenset()
    (tmp_path / "control" / "save").write_text("")
    clock[0] += 0.5
    assert control.poll() == frozenset() and (tmp_path / "control" / "save").exists()  # not read yet
    clock[0] += 0.6
    assert control.poll() == frozenset({"save"}) and not (tmp_path / "control" / "save").exists()
    control.trainer.signal_stop = True  # a signal is seen at once, whatever the clock
    assert control.poll() == frozenset({"stop"})


class _Runner:
    def __init__(self):
        self.ctx = RunContext(config=None)


def test_metrics_lines_are_whole_at_most_a_second_late_and_at_once_with_a_checkpoint(tmp_path, monkeypatch):
    clock = [0.0]
    monkeypatch.setattr("rollgraph.graph.logging_hooks.time.monotonic", lambda: clock[0])
    hook, runner, path = MetricsFile(tmp_path), _Runner(), tmp_path / "metrics.jsonl"

    def steps():
        return [json.loads(line)["step"] for line in path.read_text().splitlines()] if path.exists() else []

    hook.on_step_end(runner, {"step": 1, "loss": 1.0})
    assert steps() == [1]  # the first line at once
    for step in (2, 3):
        clock[0] += 0.3
        hook.on_step_end(runner, {"step": step, "loss": 1.0})
    assert steps() == [1]
    clock[0] += 0.5
    hook.on_step_end(runner, {"step": 4, "loss": 1.0})
    assert steps() == [1, 2, 3, 4] and path.read_text().endswith("\n")
    hook.on_step_end(runner, {"step": 5, "loss": 1.0, "checkpoint": "checkpoints/step-5"})
    assert steps() == [1, 2, 3, 4, 5]
    hook.on_step_end(runner, {"step": 6, "loss": 1.0})
    hook.on_train_end(runner, "finished")
    assert steps() == [1, 2, 3, 4, 5, 6]


def test_a_non_finite_metric_that_must_be_finite_stops_at_the_step_end_with_advice():
    import pytest
    from rollgraph.graph.errors import RunError

    ctx = RunContext(config=None, step=7)
    ctx.log("loss", torch.tensor(float("nan")), finite_or="try a lower learning_rate")
    ctx.log("grad_norm", torch.tensor(float("inf")))  # no check asked: logged as it is
    with pytest.raises(RunError, match=r"non-finite loss \(nan\) at step 7; stopping. try a lower learning_rate"):
        ctx.pop_metrics()
    ctx.log("loss", torch.tensor(2.0), finite_or="unused")
    assert ctx.pop_metrics() == {"loss": 2.0} and ctx.finite_checks == {}
