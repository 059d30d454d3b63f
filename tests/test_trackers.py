"""report_to: TensorBoard event files and an offline wandb run hold every metric of metrics.jsonl and the grids."""

from __future__ import annotations

import json

import pytest
from rollgraph.graph.cli import main

from tests.conftest import read_metrics

RUN = dict(max_train_steps=4, validation_steps=2, scheduled_sampling_max_step_offset=2, scheduled_sampling_probability=1.0)


def test_tensorboard_events_hold_every_metric_and_each_grid(tiny, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert main(["run", str(tiny(report_to="tensorboard", **RUN))]) == 0
    run = tmp_path / "run"
    metrics = read_metrics(run)
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0}).Reload()
    numeric = {k for m in metrics for k, v in m.items() if k != "step" and isinstance(v, (int, float))}
    assert {"loss", "lr", "loss/adr", "rollout/samples"} <= numeric and numeric <= set(events.Tags()["scalars"])
    for key in numeric:
        logged = {e.step: e.value for e in events.Scalars(key)}
        expected = {m["step"]: m[key] for m in metrics if key in m}
        assert logged.keys() == expected.keys()
        assert all(logged[s] == pytest.approx(v, rel=1e-6, abs=1e-30) for s, v in expected.items())
    images = events.Images("validation")
    assert [e.step for e in images] == [2, 4]  # the grid at step 2 and the final one
    assert all(e.width > 0 and e.height > 0 for e in images)


def _wandb_history(path):
    """The history rows of an offline run's .wandb file. The file is wandb's record log (a 7-byte header
    ":W&B", magic, version; then 32 KiB blocks of records, each with a 7-byte header: crc32, length, type
    full/first/middle/last) of protobuf ``Record``s; this wandb has no Python reader for it."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data, pos, rows, pending = path.read_bytes(), 7, [], b""
    while pos + 7 <= len(data):
        room = 32768 - pos % 32768
        if room < 7:  # the rest of a block too small for a header is padding
            pos += room
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # full, last
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            if record.WhichOneof("record_type") == "history":
                rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item})
    return rows


def test_wandb_offline_run_holds_every_metric_and_each_grid(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    assert main(["run", str(tiny(report_to="wandb", **RUN))]) == 0
    run = tmp_path / "run"
    metrics = read_metrics(run)
    [offline] = list((run / "wandb").glob("offline-run-*"))
    rows = _wandb_history(next(offline.glob("run-*.wandb")))
    by_step: dict[int, dict] = {}
    for row in rows:
        by_step.setdefault(row["_step"], {}).update(row)
    assert sorted(by_step) == [m["step"] for m in metrics]
    for m in metrics:
        logged = by_step[m["step"]]
        for key, value in m.items():
            if key not in ("step", "sample", "checkpoint"):
                assert logged[key] == pytest.approx(value, rel=1e-9, abs=1e-30), key
    assert [s for s, row in sorted(by_step.items()) if row.get("validation/_type") == "images/separated"] == [2, 4]
    assert len(list((offline / "files" / "media" / "images").glob("validation_*.png"))) == 2


def test_a_missing_tracker_package_exits_2_naming_the_key(tiny, capsys, monkeypatch):
    monkeypatch.setitem(__import__("rollgraph.graph.trackers", fromlist=["PACKAGES"]).PACKAGES, "wandb", ("no_such_wandb",))
    assert main(["validate", str(tiny(report_to="wandb"))]) == 2
    assert "report_to: 'wandb' needs the 'no_such_wandb' package" in " ".join(capsys.readouterr().err.split())
    assert main(["validate", str(tiny(report_to="mlflow"))]) == 2
    assert "report_to" in capsys.readouterr().err


def test_a_run_failing_before_training_writes_no_tracker_files(tiny, tmp_path):
    empty = tmp_path / "no-images"
    empty.mkdir()  # refused by the preflight check that validate and run share (exit 2), before any setup
    assert main(["run", str(tiny(report_to="tensorboard", dataset="folder", instance_data_dir=str(empty), num_channels=3))]) == 2
    assert not (tmp_path / "run").exists()
