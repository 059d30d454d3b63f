"""A checkpoint a person asked for survives rotation; ``--stop-at-step`` ends a run early without
changing its LR schedule, so stop-then-resume gives exactly the uninterrupted losses."""

from __future__ import annotations

import json

from rollgraph.graph.checkpoint import is_requested, list_checkpoints, save_checkpoint
from rollgraph.graph.cli import main

from tests.conftest import read_metrics


class _State:
    def save_state(self, folder):
        (folder / "x.json").write_text("{}")


def test_rotation_keeps_requested_checkpoints(tmp_path):
    save_checkpoint(tmp_path, 1, {"s": _State()}, {"requested": True}, total_limit=2)
    for step in (2, 4, 6):
        save_checkpoint(tmp_path, step, {"s": _State()}, {}, total_limit=2)
    kept = [step for step, _ in list_checkpoints(tmp_path)]
    assert kept == [1, 4, 6]  # two scheduled ones, plus the requested one
    assert is_requested(tmp_path / "checkpoints" / "step-1")
    assert not is_requested(tmp_path / "checkpoints" / "step-4")


def test_save_now_during_a_run_is_marked_and_kept(tiny, tmp_path):
    """control/save at the start (consumed after step 1), then scheduled saves every 2 steps, limit 1."""
    run = tmp_path / "run"
    (run / "control").mkdir(parents=True)
    (run / "control" / "save").write_text("now")
    cfg = tiny(max_train_steps=6, checkpointing_steps=2, checkpoints_total_limit=1)
    assert main(["run", str(cfg)]) == 0
    names = sorted(p.name for _, p in list_checkpoints(run))
    assert names == ["step-1", "step-6"]
    assert json.loads((run / "checkpoints" / "step-1" / "trainer.json").read_text())["requested"] is True
    assert "requested" not in json.loads((run / "checkpoints" / "step-6" / "trainer.json").read_text())


def test_stop_at_step_then_resume_matches_the_uninterrupted_run(tiny, tmp_path):
    # warm-up 1 then cosine decay over 6 steps: a run whose max_train_steps were 3 would decay faster
    common = dict(max_train_steps=6, lr_warmup_steps=1, lr_scheduler="cosine")
    full = tiny(output_dir=str(tmp_path / "full"), **common)
    assert main(["run", str(full)]) == 0
    part = tiny(output_dir=str(tmp_path / "part"), **common)
    assert main(["run", str(part), "--stop-at-step", "3"]) == 0
    status = json.loads((tmp_path / "part" / "run.json").read_text())
    assert status["status"] == "stopped" and status["step"] == 3 and status["max_train_steps"] == 6
    assert (tmp_path / "part" / "checkpoints" / "step-3" / "trainer.json").exists()
    assert main(["run", str(part), "--resume", "latest"]) == 0
    a, b = read_metrics(tmp_path / "full"), read_metrics(tmp_path / "part")
    assert [m["lr"] for m in a] == [m["lr"] for m in b]
    assert [m["loss"] for m in a] == [m["loss"] for m in b]  # bit-exact on the CPU
    assert json.loads((tmp_path / "part" / "run.json").read_text())["status"] == "finished"


def test_stop_at_step_outside_the_run_exits_2(tiny, tmp_path, capsys):
    cfg = tiny(max_train_steps=4)
    assert main(["run", str(cfg), "--stop-at-step", "9"]) == 2
    assert "--stop-at-step" in capsys.readouterr().err
    assert not (tmp_path / "run" / "run.json").exists()
    assert main(["run", str(cfg), "--stop-at-step", "2"]) == 0
    assert main(["run", str(cfg), "--resume", "latest", "--stop-at-step", "2"]) == 2
    assert "after the starting step 2" in capsys.readouterr().err
