"""Run safety: one run per folder, a run.json that follows the run, a checkpoint write killed half-way."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch
from rollgraph.graph.checkpoint import list_checkpoints
from rollgraph.graph.cli import main
from rollgraph.graph.run_folder import describe_status, is_alive, read_run

from tests.conftest import read_metrics

REPO = Path(__file__).resolve().parent.parent


def test_a_second_run_into_a_run_folder_is_refused_and_overwrite_moves_the_old_one_aside(tiny, tmp_path, capsys):
    cfg = tiny(max_train_steps=3, checkpointing_steps=1, checkpoints_total_limit=2)
    run = tmp_path / "run"
    assert main(["run", str(cfg)]) == 0
    before = (run / "metrics.jsonl").read_text()
    capsys.readouterr()

    assert main(["run", str(cfg)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "holds a run at step 3 (finished): add --resume latest to continue, or --overwrite to start over" in err
    assert (run / "metrics.jsonl").read_text() == before
    assert [s for s, _ in list_checkpoints(run)] == [2, 3]

    assert main(["validate", str(cfg)]) == 0  # valid, with a note on what run will need
    assert "--overwrite" in " ".join(capsys.readouterr().out.split())
    assert main(["run", str(cfg), "--resume", "latest", "--overwrite"]) == 2
    assert "give one of them" in capsys.readouterr().err

    assert main(["run", str(cfg), "--max_train_steps", "2", "--overwrite"]) == 0
    moved = [p for p in tmp_path.iterdir() if p.name.startswith("run.replaced-")]
    assert len(moved) == 1, "the old run is moved aside, not deleted"
    assert (moved[0] / "metrics.jsonl").read_text() == before
    assert [s for s, _ in list_checkpoints(moved[0])] == [2, 3]
    assert [m["step"] for m in read_metrics(run)] == [1, 2]  # the new run alone: no mixing
    assert [s for s, _ in list_checkpoints(run)] == [1, 2]
    assert read_run(run)["step"] == 2


def _wait_for(predicate, what: str, proc: subprocess.Popen, limit_s: float = 600.0):
    """Poll until predicate() holds; the limit only guards against a hang (it is not a speed check)."""
    deadline = time.monotonic() + limit_s
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (rc {proc.returncode}) before {what}: {proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"no {what} after {limit_s} s")
        time.sleep(0.2)


def _spawn_run(config: Path, *extra: str, script: str | None = None) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ROLLGRAPH_NO_PROGRESS": "1"}
    head = [sys.executable, "-c", script] if script else [sys.executable, "-m", "rollgraph.graph.cli"]
    return subprocess.Popen([*head, "run", str(config), *extra], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_run_json_follows_a_live_run_and_tells_when_it_died(tiny, tmp_path, capsys):
    cfg = tiny(max_train_steps=100000, logging_steps=2)
    run = tmp_path / "run"
    proc = _spawn_run(cfg)
    try:
        _wait_for(lambda: (read_run(run).get("step") or 0) >= 4, "heartbeat at step 4", proc)
        state = read_run(run)
        assert state["status"] == "running" and state["pid"] == proc.pid and state["host"] == socket.gethostname()
        assert describe_status(run).startswith(f"running at step {state['step']} (pid {proc.pid}")
        # a second trainer may not write the same folder, not even to resume it
        assert main(["run", str(cfg), "--resume", "latest"]) == 2
        assert "is being trained right now" in capsys.readouterr().err
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    step = read_run(run)["step"]
    assert step >= 4 and step % 2 == 0  # written at every logged step
    assert describe_status(run).startswith(f"died at step {step} (last seen ")
    assert main(["run", str(cfg)]) == 2
    assert f"holds a run at step {step} (died)" in " ".join(capsys.readouterr().err.split())


def test_a_heartbeat_from_another_host_is_alive_until_it_goes_stale():
    now = time.time()
    state = {"status": "running", "pid": 1, "host": "some-other-host", "heartbeat_interval": 2.0}
    assert is_alive({**state, "updated": now - 5}, now)
    assert not is_alive({**state, "updated": now - 3600}, now)
    assert not is_alive({**state, "status": "finished", "updated": now}, now)


# Runs the CLI in a child process whose first safetensors write into the step-4 checkpoint writes half the
# file and then kills the process with SIGKILL: a real death inside the checkpoint write.
DIE_INSIDE_CHECKPOINT = r"""
import os, signal, sys
import safetensors.torch as st

real_save_file = st.save_file

def save_file_then_die(tensors, filename, metadata=None):
    real_save_file(tensors, filename, metadata=metadata)
    if "/checkpoints/.step-4.tmp-" in str(filename):
        data = open(filename, "rb").read()
        open(filename, "wb").write(data[: len(data) // 2])
        os.kill(os.getpid(), signal.SIGKILL)

st.save_file = save_file_then_die
from rollgraph.graph.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_checkpoint_write_killed_half_way_leaves_the_previous_one_resumable(tiny, tmp_path):
    torch.set_num_threads(1)  # the child runs with OMP_NUM_THREADS=1; CPU kernels' reduction order depends on it
    common = dict(max_train_steps=6, checkpointing_steps=2, checkpoints_total_limit=2, use_ema=True,
                  scheduled_sampling_max_step_offset=2, scheduled_sampling_probability=0.5)
    assert main(["run", str(tiny(output_dir=str(tmp_path / "full"), **common))]) == 0
    cfg = tiny(**common)
    run = tmp_path / "run"
    proc = _spawn_run(cfg, script=DIE_INSIDE_CHECKPOINT)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert [s for s, _ in list_checkpoints(run)] == [2]  # the half-written step-4 is not a checkpoint
    assert any(p.name.startswith(".step-4.tmp-") for p in (run / "checkpoints").iterdir())
    assert describe_status(run).startswith("died at step 3")  # step 4 was computed, but neither logged nor saved

    assert main(["run", str(cfg), "--resume", "latest"]) == 0
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-4", "step-6"]  # leftovers tidied
    assert [m["loss"] for m in read_metrics(run)] == [m["loss"] for m in read_metrics(tmp_path / "full")]
    assert json.loads((run / "run.json").read_text())["status"] == "finished"


def test_start_up_header_and_a_stop_through_the_control_file_are_printed(tiny, tmp_path, capsys):
    images = tmp_path / "images"
    (images / "a").mkdir(parents=True)
    (images / "b").mkdir()
    from PIL import Image

    for i in range(3):
        Image.new("L", (10, 12), 40 * i).save(images / ("a" if i % 2 else "b") / f"img{i}.png")
    (images / "a" / "img1.txt").write_text("a caption a pixel model cannot use")
    (images / "a" / "notes.txt").write_text("no image with this name")
    run = tmp_path / "run"
    (run / "control").mkdir(parents=True)
    (run / "control" / "stop").write_text("")
    assert main(["run", str(tiny(dataset="folder", instance_data_dir=str(images), max_train_steps=50))]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert f"rollgraph run → {run}" in out
    assert "device cpu (full precision)" in out
    assert "setup: data → schedule → model → optimizer" in out and "step: batch → noise → predict → loss → total → optimize" in out
    assert "update: update" in out
    assert "model: UNet2DModel" in out and "trainable of" in out
    assert f"3 images in {images}, 1 with a .txt caption (ignored: this model is not text-conditioned)" in out
    assert "skipped 1 file(s)" in out and "a/notes.txt" in out and "2 classes" in out
    assert "stop requested (control/stop)" in out
    assert (run / "control").is_dir() and read_run(run)["status"] == "stopped"
