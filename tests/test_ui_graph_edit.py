"""The Graph tab's edit panel: swap a node's stage, add and remove loss terms, fragments, node params.

The handlers are called directly (as the UI calls them, with the raw JSON text), then once through
gradio_client; a browser check adds a loss term and sees its node in the picture. Each edit's config is
checked with check_config (what the Config tab and `rollgraph validate` use)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import gradio as gr
import pytest
from rollgraph.stages.solvers import SOLVERS
from rollgraph.ui.checks import check_config
from rollgraph.ui.graph_edit import GraphEditor
from rollgraph.ui.node_params import param_rows
from rollgraph.ui.stage_fit import fitting_types, loss_terms

from tests.conftest import tiny_config
from tests.test_ui_browser import free_port, page_and_server  # noqa: F401  (the browser fixture)

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture
def rollout_text(tmp_path) -> str:
    """A tiny flow-matching config with rollout on (and so the ReflexFlow fragment)."""
    return json.dumps(tiny_config(tmp_path, prediction_type="flow_matching", scheduled_sampling_max_step_offset=2,
                                  scheduled_sampling_probability=0.5))


def compiled(text: str):
    result = check_config(json.loads(text))
    assert result.valid, result.problems
    return result.graph


def skipped(value) -> bool:
    return value == gr.skip()


def test_swapping_the_rollout_stage_for_input_perturbation(rollout_text):
    before = compiled(rollout_text)
    offered = fitting_types(before, "rollout")
    assert "rollout.input_perturbation" in offered and "loss.mse" not in offered and "predict.model" not in offered

    text, graph_widget, message = GraphEditor().swap(rollout_text, "rollout", "rollout.input_perturbation")
    assert "rg-okmsg" in message
    data = json.loads(text)
    assert data["graph"] == {"nodes": [{"id": "rollout", "type": "rollout.input_perturbation"}]}
    assert json.loads(graph_widget) == data["graph"]  # the form's graph widget follows
    after = compiled(text)
    assert after.node("rollout").type == "rollout.input_perturbation"
    assert after.node("rollout").inputs == before.node("rollout").inputs  # the wiring of the shared ports stays
    assert after.node("predict").inputs["noisy"] == "rollout.noisy"

    # swapping back to the recipe's stage leaves no graph section behind
    back, _, _ = GraphEditor().swap(text, "rollout", "rollout.scheduled_sampling")
    assert json.loads(back) == json.loads(rollout_text)


def test_adding_a_loss_term_and_removing_it_again(rollout_text):
    editor = GraphEditor()
    before = compiled(rollout_text)
    assert loss_terms(before) == ["loss", "adr"]
    choices = editor.panel(rollout_text, "rollout")[4]["choices"]
    assert "loss.mse" in choices and "loss.sum" not in choices and "loss.reflexflow_adr" not in choices  # adr is in

    text, _, message = editor.add_loss(rollout_text, "loss.mse")
    assert "rg-okmsg" in message
    after = compiled(text)
    assert after.node("total").inputs["terms"] == ["loss.loss", "adr.loss", "mse.loss"]
    assert after.node("mse").inputs == {"prediction": "predict.prediction", "schedule": "schedule.schedule"}

    restored, _, _ = editor.remove_loss(text, "mse")
    assert json.loads(restored) == json.loads(rollout_text)
    assert compiled(restored) == before

    # a term of a fragment goes by graph.remove, and total no longer reads it
    text, _, message = editor.remove_loss(rollout_text, "adr")
    after = compiled(text)
    assert "adr" not in after.ids() and after.node("total").inputs["terms"] == ["loss.loss"]
    assert json.loads(text)["graph"]["remove"] == ["adr"]


def test_setting_a_node_param_through_the_form(rollout_text):
    editor = GraphEditor()
    before = compiled(rollout_text)
    rows = {r.name: r for r in param_rows(_stage("rollout.scheduled_sampling"), before.node("rollout").params)}
    grid = rows["scheduled_sampling_grid_steps"]
    assert grid.type == "int" and grid.flat_key == "scheduled_sampling_grid_steps" and grid.description
    assert rows["scheduled_sampling_sampler"].type == " | ".join(SOLVERS)  # the solver registry, plugins included

    text, _, message = editor.set_param(rollout_text, "rollout", "scheduled_sampling_grid_steps", "7")
    assert "rg-okmsg" in message and json.loads(text)["graph"]["set"] == {"rollout.scheduled_sampling_grid_steps": 7}
    assert before.node("rollout").params["scheduled_sampling_grid_steps"] != 7
    assert compiled(text).node("rollout").params["scheduled_sampling_grid_steps"] == 7
    text, _, _ = editor.set_param(text, "rollout", "scheduled_sampling_sampler", "euler")  # a string param takes the text
    assert compiled(text).node("rollout").params["scheduled_sampling_sampler"] == "euler"
    table = {row[0]: row for row in editor.panel(text, "rollout")[6]}
    assert table["scheduled_sampling_sampler"][3] == "euler"  # the form's "value now" column

    reset, _, _ = editor.reset_param(text, "rollout", "scheduled_sampling_grid_steps")
    assert compiled(reset).node("rollout").params["scheduled_sampling_grid_steps"] == before.node("rollout").params["scheduled_sampling_grid_steps"]


def _stage(type_tag: str):
    from rollgraph.graph.registry import registered_stages

    return registered_stages()[type_tag]


def test_an_invalid_edit_names_the_node_and_leaves_the_config_alone(rollout_text):
    editor = GraphEditor()
    text, widget, message = editor.swap(rollout_text, "rollout", "loss.mse")  # its ports do not fit the slot
    assert skipped(text) and skipped(widget)
    assert "not applied" in message and "rollout" in message and "prediction" in message

    text, widget, message = editor.set_param(rollout_text, "rollout", "scheduled_sampling_grid_steps", "0")
    assert skipped(text) and skipped(widget)
    assert "graph node rollout" in message and "scheduled_sampling_grid_steps" in message and "greater than or equal to 1" in message

    # a fragment the flat keys turn on cannot be left out here; one that contradicts them shows check_config's error
    text, _, message = editor.fragments(rollout_text, ["rollout"])
    assert skipped(text) and "reflexflow" in message
    text, _, message = editor.fragments(json.dumps(tiny_config(Path("/tmp"))), ["input_perturbation"])
    assert skipped(text) and "input_perturbation" in message and "perturbs nothing" in message


def test_the_panel_through_the_api(tmp_path, rollout_text):
    from gradio_client import Client
    from rollgraph.ui.app import launch

    demo, url = launch(port=free_port(), user_presets_dir=tmp_path / "presets", runs_dir=tmp_path / "runs", block=False)
    try:
        client = Client(url, verbose=False)
        text, _, message = client.predict(rollout_text, "rollout", "rollout.input_perturbation", api_name="/graph_swap")
        assert compiled(text).node("rollout").type == "rollout.input_perturbation" and "rollout" in message
        text, _, message = client.predict(text, "loss.mse", api_name="/graph_add_loss")
        assert "mse.loss" in compiled(text).node("total").inputs["terms"]
    finally:
        demo.run_manager.close(stop_runs=True)
        demo.close()


@pytest.mark.skipif(not Path(CHROMIUM).exists() or shutil.which(CHROMIUM) is None, reason=f"no chromium at {CHROMIUM}")
def test_the_picture_shows_a_loss_term_added_in_the_browser(page_and_server, tmp_path, rollout_text):  # noqa: F811
    page, url, _, _ = page_and_server
    page.goto(url)
    page.wait_for_selector("#rg-problems .rg-ok")  # the shipped quickstart
    upload = tmp_path / "config.json"
    upload.write_text(rollout_text)  # rollout + ReflexFlow: its loss is FC, so loss.mse can join
    with page.expect_file_chooser() as chooser:
        page.get_by_role("button", name="Import config.json").click()
    chooser.value.set_files(str(upload))
    page.get_by_role("tab", name="Graph").click()
    page.wait_for_selector('#rg-graph svg g[data-node="adr"]')
    assert page.locator('#rg-graph svg g[data-node="mse"]').count() == 0
    box, deadline = page.locator("#rg-graph-losses input"), time.monotonic() + 120
    while time.monotonic() < deadline:  # the panel re-fills after the import's JSON change
        box.click()
        if "loss.mse" in [t.strip() for t in page.locator("#rg-graph-losses [role=option]").all_inner_texts()]:
            break
        page.keyboard.press("Escape")
        page.wait_for_timeout(300)
    page.get_by_role("option", name="loss.mse").click()
    page.locator("#rg-graph-add-loss").click()
    page.wait_for_selector('#rg-graph svg g[data-node="mse"]')
    page.wait_for_selector("#rg-graph-edit-msg .rg-okmsg")
    assert '"total.terms"' in page.inner_text("#rg-json .cm-content")
    for path in (tmp_path / "graph-edit.png", Path("/tmp/ui-graph-edit.png")):
        page.screenshot(path=str(path), full_page=True)


def test_no_two_stage_boxes_of_the_picture_overlap(rollout_text):
    """The update stage (its own phase) is drawn in the step band, not on top of the setup stages."""
    import re

    from rollgraph.ui.graph_view import graph_svg

    svg, _ = graph_svg(compiled(rollout_text))
    boxes = [tuple(map(float, m)) for m in re.findall(r'<rect x="([\d.]+)" y="([\d.]+)" width="([\d.]+)" height="([\d.]+)"', svg)]
    assert len(boxes) == len(compiled(rollout_text).nodes)
    for i, (x1, y1, w1, h1) in enumerate(boxes):
        for x2, y2, w2, h2 in boxes[i + 1:]:
            assert x1 + w1 <= x2 or x2 + w2 <= x1 or y1 + h1 <= y2 or y2 + h2 <= y1, (boxes,)
