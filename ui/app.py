"""The rollgraph web UI (Gradio): edit presets, see the stage graph, run and stop training, watch it.

    rollgraph ui [--host 127.0.0.1] [--port 7860] [--auth user:password]

Folders: shipped presets (read-only), the user's presets (``ROLLGRAPH_USER_PRESETS``, default
``~/.rollgraph/presets``) and the runs folder (``ROLLGRAPH_RUNS_DIR``, default ``./runs``); the UI reads
and writes files only inside them. Runs are separate processes (see ``runs.py``): closing the page or
the UI leaves them training. API names for gradio_client: validate, save, start, resume, stop,
save_now, sample_now, rename_run, delete_run (moves the run into RUNS/.trash), compare, rename_preset,
delete_preset (moves it into the presets folder's .trash), and the graph panel's graph_swap, graph_add_loss,
graph_remove_loss, graph_fragments, graph_set_param, graph_reset_param.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from html import escape
from pathlib import Path
from typing import Any

import gradio as gr
from rollgraph.stages.config import PRESETS_DIR
from rollgraph.ui.compare_tab import compare_tab
from rollgraph.ui.config_actions import ConfigActions
from rollgraph.ui.forms import FIELDS, SECTIONS, build_form
from rollgraph.ui.graph_edit import GraphEditor
from rollgraph.ui.graph_tab import graph_panel, wire_graph_panel
from rollgraph.ui.presets import PresetStore, default_user_presets_dir, dump_config, parse_config_text
from rollgraph.ui.run_actions import RUN_COLUMNS, RunActions
from rollgraph.ui.runs import RunManager
from rollgraph.ui.style import CSS, THEME

AUTH_ENV = "ROLLGRAPH_UI_AUTH"


def default_runs_dir() -> Path:
    return Path(os.environ.get("ROLLGRAPH_RUNS_DIR", "runs")).expanduser().resolve()


def parse_auth(value: str | None) -> tuple[str, str] | None:
    """``user:password`` -> (user, password); None or empty -> no login."""
    if not value:
        return None
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise ValueError("auth must be user:password (both non-empty)")
    return user, password


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _config_tab(cfg: ConfigActions) -> dict[str, Any]:
    ref, data = cfg.initial()
    c: dict[str, Any] = {}
    with gr.Row(equal_height=True):
        c["preset"] = gr.Dropdown(choices=cfg.store.choices(), value=ref, label="preset", scale=3, elem_id="rg-preset",
                                  allow_custom_value=True)  # choices change at run time; load() checks the name
        c["reload"] = gr.Button("↻ list", scale=0, min_width=70)
        c["import"] = gr.UploadButton("Import config.json", file_types=[".json"], type="filepath", scale=1)
        c["export"] = gr.Button("Export config.json", scale=1)
    c["export_file"] = gr.File(label="config.json to download", visible=False, interactive=False)
    c["load_msg"] = gr.HTML()
    with gr.Row():
        with gr.Column(scale=3):
            form = build_form(data)
        with gr.Column(scale=2, elem_id="rg-side"):
            c["problems"] = gr.HTML(elem_id="rg-problems")
            c["validate"] = gr.Button("Validate", variant="secondary", elem_id="rg-validate")
            c["summary"] = gr.JSON(visible=False)
            c["json"] = gr.Code(value=dump_config(data), language="json", lines=22, max_lines=40, wrap_lines=True,
                                label="config.json (raw; kept in sync with the form)", elem_id="rg-json")
            with gr.Group():
                with gr.Row(equal_height=True):
                    c["save_name"] = gr.Textbox(label="save as preset", placeholder="my-preset", scale=3, elem_id="rg-save-name")
                    c["overwrite"] = gr.Checkbox(label="overwrite", value=False, scale=1)
                with gr.Row(equal_height=True):
                    c["save"] = gr.Button("Save preset", elem_id="rg-save", scale=2)
                    c["rename"] = gr.Button("Rename chosen preset to this name", elem_id="rg-rename-preset", scale=2)
                    c["delete"] = gr.Button("Delete chosen preset", variant="stop", elem_id="rg-delete-preset", scale=1)
            c["save_msg"] = gr.HTML()
    c["widgets"], c["accordions"] = form.widgets, [form.accordions[s] for s in SECTIONS]
    return c


def _train_tab(runs: RunActions) -> dict[str, Any]:
    t: dict[str, Any] = {}
    with gr.Row(equal_height=True):
        t["start"] = gr.Button("▶ Start run (config from the Config tab)", variant="primary", scale=3, elem_id="rg-start")
        t["stop"] = gr.Button("■ Stop (checkpoint, then end)", variant="stop", scale=2, elem_id="rg-stop")
        t["save_now"] = gr.Button("Save now", scale=1, elem_id="rg-save-now")
        t["sample_now"] = gr.Button("Sample now", scale=1, elem_id="rg-sample-now")
    t["msg"] = gr.HTML(elem_id="rg-run-msg")
    with gr.Row(equal_height=True):
        t["watch"] = gr.Dropdown(choices=runs.watch_choices(), value=runs.default_watch(), allow_custom_value=True,
                                 label="watching run (folder in the runs folder)", scale=4, elem_id="rg-watch")
        t["refresh"] = gr.Button("↻", scale=0, min_width=50)
    with gr.Accordion("Resume from a checkpoint", open=False) as t["resume_box"]:
        with gr.Row(equal_height=True):
            t["checkpoint"] = gr.Dropdown(choices=runs.checkpoint_choices(), label="checkpoint", scale=3, elem_id="rg-checkpoint",
                                          allow_custom_value=True)
            t["until"] = gr.Textbox(label="stop at step (optional)", placeholder="empty: train on to max_train_steps", scale=2,
                                    info="the LR schedule stays the run's own; resume again later to go on", elem_id="rg-stop-at")
            t["resume"] = gr.Button("Resume", scale=1, elem_id="rg-resume")
    t["status"] = gr.HTML(elem_id="rg-status")
    t["progress"] = gr.HTML(elem_id="rg-progress")
    with gr.Row():
        t["loss_plot"] = gr.LinePlot(x="step", y="value", color="series", title="loss", height=280, elem_id="rg-loss-plot")
        t["rollout_plot"] = gr.LinePlot(x="step", y="value", color="series", title="rollout and exposure bias", height=280, visible=False,
                                        elem_id="rg-rollout-plot")
        # p lives in [0, 1]: on the counts' axis (samples, k) it would be a flat line at the bottom
        t["p_plot"] = gr.LinePlot(x="step", y="value", color="series", title="rollout probability p", height=280, visible=False,
                                  y_lim=[0, 1], elem_id="rg-p-plot")
    t["log"] = gr.HTML(label="log", elem_id="rg-log")
    t["gallery"] = gr.Gallery(label="validation sample grids (newest first)", columns=1, height="auto", object_fit="contain",
                              elem_id="rg-gallery", elem_classes=["rg-grids"], visible=False)
    t["queue"] = gr.HTML(elem_id="rg-queue")
    return t


def _runs_tab(runs: RunActions) -> dict[str, Any]:
    r: dict[str, Any] = {}
    with gr.Row(equal_height=True):
        r["select"] = gr.Dropdown(label="run", choices=[], scale=4, elem_id="rg-runs-select", allow_custom_value=True)
        r["refresh"] = gr.Button("↻ list runs", scale=1)
        r["watch"] = gr.Button("Watch in Train tab", scale=1)
        r["load"] = gr.Button("Load its config into the editor", scale=1)
    with gr.Row(equal_height=True):
        r["new_name"] = gr.Textbox(label="rename the chosen run to", placeholder="new folder name", scale=3, elem_id="rg-run-new-name")
        r["rename"] = gr.Button("Rename", scale=1, elem_id="rg-run-rename")
        r["trash"] = gr.Button("Move to trash (RUNS/.trash)", variant="stop", scale=1, elem_id="rg-run-trash")
    r["msg"] = gr.HTML(elem_id="rg-runs-msg")
    r["table"] = gr.Dataframe(headers=RUN_COLUMNS, interactive=False, elem_id="rg-runs-table", show_search="search",
                              label="past runs (click a row to choose it; click a header to sort)")
    r["info"] = gr.HTML()
    with gr.Row():
        r["plot"] = gr.LinePlot(x="step", y="value", color="series", title="loss", height=240)
        r["config"] = gr.Code(language="json", label="config.json", interactive=False, lines=12, max_lines=24)
    r["gallery"] = gr.Gallery(label="sample grids (newest first)", columns=1, height="auto", object_fit="contain",
                              elem_id="rg-runs-gallery", elem_classes=["rg-grids"])
    return r


def build_app(presets_dir: str | Path = PRESETS_DIR, user_presets_dir: str | Path | None = None,
              runs_dir: str | Path | None = None, manager: RunManager | None = None) -> gr.Blocks:
    """The Blocks app; ``demo.run_manager`` is its RunManager (close it when done)."""
    store = PresetStore(Path(presets_dir), Path(user_presets_dir) if user_presets_dir else default_user_presets_dir())
    manager = manager or RunManager(Path(runs_dir) if runs_dir else default_runs_dir())
    cfg, runs = ConfigActions(store), RunActions(manager)
    hidden = {"show_progress": "hidden", "api_visibility": "private"}
    with gr.Blocks(title="rollgraph") as demo:
        gr.HTML(f'<div class="rg-header"><b>rollgraph</b> — graph trainer with scheduled sampling and ReflexFlow'
                f'<span class="rg-muted"> · your presets: {escape(str(store.user_dir))} · runs: {escape(str(manager.runs_dir))}</span></div>')
        marks, seen = gr.State({}), gr.State({})
        with gr.Tabs() as tabs:
            with gr.Tab("Config", id="config"):
                c = _config_tab(cfg)
            with gr.Tab("Graph", id="graph"):
                panel = graph_panel()
                graph = gr.HTML(elem_id="rg-graph")
            with gr.Tab("Train", id="train"):
                t = _train_tab(runs)
            with gr.Tab("Runs", id="runs") as runs_tab:
                r = _runs_tab(runs)
            with gr.Tab("Compare", id="compare") as compare:
                compare_tab(manager, compare)
        widgets = c["widgets"]
        refresh_out = [c["problems"], graph, marks, *c["accordions"], *widgets]
        pending, last_good = gr.State({}), gr.State(c["json"].value)  # form edits made while the raw JSON is broken
        editor_out = [c["json"], c["load_msg"], *widgets, pending]

        # presets, import, export
        c["preset"].input(cfg.load_preset, [c["preset"]], editor_out, **hidden)
        c["reload"].click(cfg.preset_choices, None, [c["preset"]], **hidden)
        c["import"].upload(cfg.import_file, [c["import"]], editor_out, **hidden)
        c["export"].click(cfg.export_file, [c["json"]], [c["export_file"]], **hidden)
        # form <-> JSON; every JSON change re-validates and redraws the graph
        # blur as well: a text box's input event does not fire for every way of changing it (e.g. a
        # mouse paste); form_to_json only writes keys whose widget disagrees with the JSON, so it is idempotent
        text_boxes = [w for w in widgets if isinstance(w, gr.Textbox)]
        gr.on([w.input for w in widgets] + [w.blur for w in text_boxes], cfg.form_to_json, [*widgets, c["json"], last_good, pending],
              [c["json"], pending, c["load_msg"]], trigger_mode="always_last", **hidden)
        c["json"].input(cfg.json_to_form, [c["json"], *widgets, pending], [c["json"], pending, *widgets], trigger_mode="always_last", **hidden)
        c["json"].change(lambda text: text if parse_config_text(text)[0] is not None else gr.skip(), [c["json"]], [last_good], **hidden)
        c["json"].change(cfg.refresh, [c["json"], marks], refresh_out, trigger_mode="always_last", **hidden)
        c["validate"].click(cfg.validate, [c["json"]], [c["problems"], c["summary"]], api_name="validate") \
            .then(cfg.refresh, [c["json"], marks], refresh_out, **hidden)
        c["save"].click(cfg.save, [c["save_name"], c["json"], c["overwrite"]], [c["save_msg"], c["preset"]], api_name="save")
        c["rename"].click(cfg.rename_preset, [c["preset"], c["save_name"]], [c["save_msg"], c["preset"]], api_name="rename_preset")
        c["delete"].click(cfg.delete_preset, [c["preset"]], [c["save_msg"], c["preset"]], api_name="delete_preset")
        wire_graph_panel(panel, GraphEditor(), c["json"], widgets[[f.name for f in FIELDS].index("graph")], demo)

        # runs
        run_msg = [t["msg"], t["watch"]]
        t["start"].click(runs.start, [c["json"]], run_msg, api_name="start")
        t["resume"].click(runs.resume, [t["checkpoint"], t["until"]], run_msg, api_name="resume")
        for cmd in ("stop", "save_now", "sample_now"):
            t[cmd].click(runs.command(cmd.split("_")[0]), [t["watch"]], [t["msg"]], api_name=cmd)
        t["refresh"].click(runs.refresh_choices, [t["watch"]], [t["watch"], t["checkpoint"]], **hidden)
        t["resume_box"].expand(lambda: gr.update(choices=runs.checkpoint_choices()), None, [t["checkpoint"]], **hidden)
        live = [t["status"], t["progress"], t["log"], t["loss_plot"], t["rollout_plot"], t["p_plot"], t["gallery"], t["queue"], seen]
        timer = gr.Timer(1.0)
        timer.tick(runs.tick, [t["watch"], seen], live, **hidden)
        t["watch"].change(runs.tick, [t["watch"], gr.State({})], live, **hidden)

        # past runs
        runs_tab.select(runs.runs_table, [r["select"]], [r["table"], r["select"]], **hidden)
        r["refresh"].click(runs.runs_table, [r["select"]], [r["table"], r["select"]], **hidden)
        r["table"].select(runs.pick_from_table, None, [r["select"]], **hidden)
        r["rename"].click(runs.rename, [r["select"], r["new_name"]], [r["msg"], r["table"], r["select"]], api_name="rename_run")
        r["trash"].click(runs.trash, [r["select"]], [r["msg"], r["table"], r["select"]], api_name="delete_run")
        r["select"].change(runs.run_details, [r["select"]], [r["config"], r["info"], r["gallery"], r["plot"]], **hidden)
        r["watch"].click(lambda name: (gr.update(choices=runs.watch_choices(), value=name), gr.Tabs(selected="train")),
                         [r["select"]], [t["watch"], tabs], **hidden)
        r["load"].click(cfg.load_text, [r["config"]], editor_out, **hidden).then(lambda: gr.Tabs(selected="config"), None, [tabs], **hidden)

        demo.load(cfg.refresh, [c["json"], marks], refresh_out, **hidden)
        # a page opened later watches the active run (else the newest), not the one newest when the UI started
        demo.load(runs.refresh_choices, None, [t["watch"], t["checkpoint"]], **hidden)
    demo.run_manager = manager
    return demo


def launch(host: str = "127.0.0.1", port: int = 7860, auth: str | None = None, *, presets_dir: str | Path = PRESETS_DIR,
           user_presets_dir: str | Path | None = None, runs_dir: str | Path | None = None, block: bool = True):
    """Serve the UI. ``auth`` is ``user:password`` (else the environment variable ROLLGRAPH_UI_AUTH).
    With ``block=False`` it returns (demo, url) at once, for tests; close both with ``demo.close()`` and
    ``demo.run_manager.close()``."""
    credentials = parse_auth(auth or os.environ.get(AUTH_ENV))
    if not is_loopback(host) and credentials is None:
        print(f"warning: serving on {host} without a login; anyone who can reach it can start runs "
              f"(use --auth user:password or {AUTH_ENV})", file=sys.stderr)
    demo = build_app(presets_dir, user_presets_dir, runs_dir)
    demo.queue(default_concurrency_limit=8)
    _, url, _ = demo.launch(server_name=host, server_port=port, auth=credentials, prevent_thread_lock=not block,
                            theme=THEME, css=CSS, allowed_paths=[str(demo.run_manager.runs_dir)], ssr_mode=False,
                            show_error=True, max_file_size="2mb", quiet=not block, footer_links=["api", "settings"])
    if block:
        demo.run_manager.close()
        print("UI closed; runs already started keep training (stop one with OUTPUT_DIR/control/stop)", file=sys.stderr)
        return None
    return demo, url
