"""The web UI's API through gradio_client (validate, save, start, stop, resume, queue), plus the pure
helpers behind it: path confinement, the schema-generated form, the graph picture, the log's HTML.

One server on a free localhost port serves the module; runs are real `rollgraph run` processes on a
tiny config, waited for by polling files on disk (no wall-clock assertions)."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from gradio_client import Client
from rollgraph.stages.config import PRESETS_DIR, TrainConfig
from rollgraph.ui.ansi import ansi_to_html
from rollgraph.ui.app import launch, parse_auth
from rollgraph.ui.checks import check_config
from rollgraph.ui.forms import FIELDS, set_key, widget_values
from rollgraph.ui.graph_view import graph_html
from rollgraph.ui.paths import PathError, confine, safe_name
from rollgraph.ui.runs import resolve_output_dir

from tests.conftest import tiny_config

WAIT = 240.0  # generous: only how long to keep polling, never an assertion about speed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, what: str, timeout: float = WAIT, every: float = 0.3):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"gave up waiting for {what}")


def status_of(folder: Path) -> str | None:
    try:
        return json.loads((folder / "run.json").read_text()).get("status")
    except (OSError, json.JSONDecodeError):
        return None


def metric_rows(folder: Path) -> list[dict]:
    path = folder / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def chosen(update) -> str:
    """The value of a dropdown update as gradio_client returns it."""
    return update["value"] if isinstance(update, dict) else update


def ui_tiny(runs: Path, name: str, **overrides) -> dict:
    cfg = tiny_config(runs, max_train_steps=200, **overrides)
    cfg["output_dir"] = str(runs / name)
    return cfg


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("ui")
    runs, user = root / "runs", root / "presets"
    demo, url = launch(port=free_port(), user_presets_dir=user, runs_dir=runs, block=False)
    try:
        yield {"url": url, "client": Client(url, verbose=False), "runs": runs, "user": user, "demo": demo}
    finally:
        demo.run_manager.close(stop_runs=True)
        demo.close()


# --- the API ---------------------------------------------------------------------------------------

def test_api_lists_the_named_endpoints(server):
    names = server["client"].view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert {"/validate", "/save", "/start", "/stop", "/resume", "/save_now", "/sample_now"} <= set(names)


def test_validate_names_every_bad_key(server):
    client = server["client"]
    html, summary = client.predict(json.dumps(tiny_config(server["runs"])), api_name="/validate")
    assert summary == {"valid": True, "problems": []} and "valid" in html

    bad = {"resolution": 4, "learning_rate": 2.0, "scheduled_sampling_probabilty": 0.5, "device": "tpu"}
    html, summary = client.predict(json.dumps(bad), api_name="/validate")
    keys = {p["key"] for p in summary["problems"]}
    assert not summary["valid"]
    assert {"resolution", "learning_rate", "scheduled_sampling_probabilty", "device"} <= keys
    assert any("did you mean" in p["message"] and "scheduled_sampling_probability" in p["message"] for p in summary["problems"])
    for key in keys:
        assert key in html

    graph_bad = {"graph": {"nodes": [{"id": "rollout", "type": "rollout.no_such_stage",
                                      "inputs": {"noisy": "noise.noisy"}}]}}
    _, summary = client.predict(json.dumps(graph_bad), api_name="/validate")
    assert any(p["key"].startswith("graph node rollout") for p in summary["problems"]), summary

    _, summary = client.predict("{not json", api_name="/validate")
    assert not summary["valid"] and "JSON" in summary["problems"][0]["message"]


def test_save_keeps_hostile_names_inside_the_presets_folder(server):
    client, user = server["client"], server["user"]
    shipped_before = sorted(p.name for p in PRESETS_DIR.iterdir())
    cfg = {"resolution": 8, "_description": "mine"}
    message, _ = client.predict("../../etc/x", json.dumps(cfg), False, api_name="/save")
    saved = list(user.glob("*.json"))
    assert [p.name for p in saved] == ["etc_x.json"], message
    assert json.loads(saved[0].read_text()) == cfg
    assert not (user.parent.parent / "etc").exists()

    message, _ = client.predict("etc_x", json.dumps({"resolution": 12}), False, api_name="/save")
    assert "exists already" in message and json.loads(saved[0].read_text()) == cfg
    client.predict("etc_x", json.dumps({"resolution": 12}), True, api_name="/save")
    assert json.loads(saved[0].read_text()) == {"resolution": 12}

    message, _ = client.predict("../..", "{}", False, api_name="/save")
    assert "not saved" in message
    assert sorted(p.name for p in PRESETS_DIR.iterdir()) == shipped_before


def test_start_refuses_invalid_configs_and_folders_outside_the_runs_folder(server):
    client, runs = server["client"], server["runs"]
    message, _ = client.predict(json.dumps({"resolution": 4, "output_dir": str(runs / "bad")}), api_name="/start")
    assert "not started" in message and "resolution" in message
    message, _ = client.predict(json.dumps(tiny_config(runs, output_dir="/tmp/elsewhere-rollgraph")), api_name="/start")
    assert "not started" in message and "outside" in message
    assert not (runs / "bad").exists() and not Path("/tmp/elsewhere-rollgraph").exists()


def test_start_queue_stop_and_resume(server):
    client, runs = server["client"], server["runs"]
    first = runs / "tiny"
    message, watched = client.predict(json.dumps(ui_tiny(runs, "tiny")), api_name="/start")
    assert "starting" in message and chosen(watched) == "tiny"

    # a second run waits for the first; asking for the same folder gives it a fresh one
    message, second_name = client.predict(json.dumps(ui_tiny(runs, "tiny")), api_name="/start")
    assert "queued" in message and chosen(second_name) == "tiny-2"
    second = runs / "tiny-2"

    wait_for(lambda: len(metric_rows(first)) >= 2, "the first run's steps")
    assert not (second / "run.json").exists()
    assert "removed" in client.predict("tiny-2", api_name="/stop")

    assert "checkpoint requested" in client.predict("tiny", api_name="/save_now")
    wait_for(lambda: (first / "checkpoints").is_dir() and any((first / "checkpoints").iterdir()), "the save-now checkpoint")
    assert "sample grid requested" in client.predict("tiny", api_name="/sample_now")
    wait_for(lambda: list((first / "samples").glob("*.png")) if (first / "samples").is_dir() else [], "the sample-now grid")
    assert "stop requested" in client.predict("tiny", api_name="/stop")
    wait_for(lambda: status_of(first) == "stopped", "the run to stop")
    stopped_at = json.loads((first / "run.json").read_text())["step"]
    assert stopped_at < 200
    assert (first / "checkpoints" / f"step-{stopped_at}" / "trainer.json").exists()
    assert "step" in (first / "console.log").read_text()
    wait_for(lambda: server["demo"].run_manager.active() is None, "the process to exit")
    assert not (second / "run.json").exists()  # cancelled: never started
    assert "not running" in client.predict("tiny", api_name="/stop")

    checkpoint = f"tiny/checkpoints/step-{stopped_at}"
    message, _ = client.predict(checkpoint, stopped_at + 2, api_name="/resume")
    assert "resuming" in message
    wait_for(lambda: status_of(first) == "finished" and json.loads((first / "run.json").read_text())["step"] == stopped_at + 2,
             "the resumed run to finish")
    steps = [r["step"] for r in metric_rows(first)]
    assert steps == list(range(1, stopped_at + 3))
    assert "resuming from" in (first / "console.log").read_text()

    message, _ = client.predict("../../outside/checkpoints/step-1", None, api_name="/resume")
    assert "outside" in message


def test_failed_run_is_reported_with_its_error(server):
    """A run that dies (here: an image folder with no images) shows its error in the watch view."""
    runs = server["runs"]
    empty = runs / "empty-images"
    empty.mkdir(parents=True)
    cfg = ui_tiny(runs, "broken", dataset="folder", instance_data_dir=str(empty))
    message, name = server["client"].predict(json.dumps(cfg), api_name="/start")
    assert chosen(name) == "broken", message
    manager = server["demo"].run_manager
    job = wait_for(lambda: (j := manager.job_for(runs / "broken")) and j.state == "exited" and j, "the broken run to exit")
    assert job.returncode != 0
    from rollgraph.ui.run_actions import RunActions

    html = RunActions(manager).status_html(runs / "broken")
    assert "rg-error" in html and ("failed" in html or "exited with code" in html)


def test_login_is_required_when_auth_is_set(tmp_path):
    demo, url = launch(port=free_port(), auth="ann:s3cret", user_presets_dir=tmp_path / "p", runs_dir=tmp_path / "r", block=False)
    try:
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(url.rstrip("/") + "/config", timeout=30)
        assert err.value.code in (401, 403)
        client = Client(url, auth=("ann", "s3cret"), verbose=False)
        _, summary = client.predict("{}", api_name="/validate")
        assert summary["valid"]
    finally:
        demo.run_manager.close()
        demo.close()
    assert parse_auth(None) is None
    with pytest.raises(ValueError):
        parse_auth("no-colon")


# --- helpers -------------------------------------------------------------------------------------

def test_paths_are_confined(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    assert confine("a/b", root) == root / "a" / "b"
    for hostile in ("../x", str(tmp_path / "x"), "a/../../x"):
        with pytest.raises(PathError):
            confine(hostile, root)
    (root / "link").symlink_to(tmp_path)
    with pytest.raises(PathError):
        confine("link/x", root)
    assert safe_name("../../etc/x") == "etc_x"
    assert safe_name("my preset.json") == "my_preset"
    with pytest.raises(PathError):
        safe_name("../..")
    runs = tmp_path / "runs"
    assert resolve_output_dir("runs/quickstart", runs) == (runs / "quickstart").resolve()
    with pytest.raises(PathError):
        resolve_output_dir("/etc/x", runs)


def test_form_is_generated_from_the_schema_and_round_trips():
    assert [f.name for f in FIELDS] == [n for n in TrainConfig.model_fields if n in {f.name for f in FIELDS}]
    assert {f.name for f in FIELDS} == set(TrainConfig.model_fields)
    kinds = {f.name: f.kind for f in FIELDS}
    assert kinds["prediction_type"] == "choice" and kinds["use_ema"] == "bool" and kinds["resolution"] == "int"
    assert kinds["learning_rate"] == "float" and kinds["model_architecture"] == "json" and kinds["graph"] == "json"
    by_name = {f.name: f for f in FIELDS}
    assert "≥ 8" in by_name["resolution"].info and "default: 16" in by_name["resolution"].info

    # widgets showing the defaults write nothing back: a sparse preset stays sparse
    data = {"_description": "x", "resolution": 8}
    for spec, shown in zip(FIELDS, widget_values(data), strict=True):
        assert set_key(data, spec, shown) == data, spec.name
    edited = set_key(data, by_name["scheduled_sampling_reflexflow"], "false")
    assert edited["scheduled_sampling_reflexflow"] is False and list(edited)[:2] == ["_description", "resolution"]
    assert "scheduled_sampling_reflexflow" not in set_key(edited, by_name["scheduled_sampling_reflexflow"], "(unset)")
    assert set_key(data, by_name["model_architecture"], "{bad")["model_architecture"] == "{bad"  # reported, not lost
    assert set_key(data, by_name["max_train_samples"], "") == data
    assert set_key(data, by_name["max_train_samples"], "20")["max_train_samples"] == 20


def test_problems_attach_to_their_fields():
    result = check_config({"scheduled_sampling_reflexflow": True, "prediction_type": "epsilon",
                           "scheduled_sampling_max_step_offset": -1})
    fields = result.by_field()
    assert "scheduled_sampling_max_step_offset" in fields
    assert result.problems and all(p.fields for p in result.problems)


def test_graph_picture_shows_rollout_and_reflexflow_when_enabled():
    off = check_config({})
    on = check_config({"scheduled_sampling_max_step_offset": 3, "scheduled_sampling_probability": 0.5})
    html_off, html_on = graph_html(off.graph), graph_html(on.graph)
    assert 'data-node="rollout"' not in html_off and "rollout: <b>off" in html_off
    for node in ("rollout", "adr", "loss", "predict", "optimize"):
        assert f'data-node="{node}"' in html_on
    assert "<svg" in html_on and "NoisyInput" in html_on
    hostile = check_config({"graph": {"nodes": [{"id": "<script>", "type": "x"}]}})
    assert hostile.graph is not None and not hostile.valid
    html = graph_html(hostile.graph, hostile.by_node())
    assert "<script>" not in html and "&lt;script&gt;" in html


def test_log_colours_become_escaped_html():
    html = ansi_to_html("\x1b[1mstep 1/2\x1b[0m | loss \x1b[36m0.5\x1b[0m\n<img src=x onerror=alert(1)>")
    assert "font-weight: bold" in html and "color: #" in html
    assert "<img" not in html and "&lt;img" in html
