"""The Graph tab's edit panel (above the picture): choose a node, swap its stage for one that fits, include
fragments, add or remove loss terms, set the node's params; the outcome of each edit is shown next to it.

The handlers are ``GraphEditor``'s; they write the Config tab's raw JSON (and its form's ``graph`` widget),
whose change event redraws the picture and re-fills this panel. API names: graph_swap, graph_add_loss,
graph_remove_loss, graph_fragments, graph_set_param, graph_reset_param.
"""

from __future__ import annotations

from typing import Any

import gradio as gr
from rollgraph.stages.default_graph import FRAGMENTS
from rollgraph.ui.graph_edit import GraphEditor
from rollgraph.ui.node_params import COLUMNS


def graph_panel() -> dict[str, Any]:
    p: dict[str, Any] = {}
    with gr.Accordion("Edit the graph", open=True, elem_id="rg-graph-edit"):
        p["msg"] = gr.HTML(elem_id="rg-graph-edit-msg")
        with gr.Row(equal_height=True):
            p["node"] = gr.Dropdown(label="node", choices=[], scale=1, elem_id="rg-graph-node", allow_custom_value=True)
            p["info"] = gr.HTML(elem_id="rg-graph-node-info")
        with gr.Row(equal_height=True):
            p["type"] = gr.Dropdown(label="swap its stage for (registered stages whose ports fit this slot)", choices=[], scale=3,
                                    elem_id="rg-graph-swap-type", allow_custom_value=True)
            p["swap"] = gr.Button("Swap stage", scale=1, elem_id="rg-graph-swap")
        with gr.Row(equal_height=True):
            p["fragments"] = gr.CheckboxGroup(list(FRAGMENTS), label="fragments included (those the flat keys turn on stay on)",
                                              scale=3, elem_id="rg-graph-fragments")
            p["apply_fragments"] = gr.Button("Apply fragments", scale=1, elem_id="rg-graph-apply-fragments")
        with gr.Row(equal_height=True):
            p["terms"] = gr.Dropdown(label="loss terms of total", choices=[], scale=2, elem_id="rg-graph-terms", allow_custom_value=True)
            p["remove"] = gr.Button("Remove term", scale=1, elem_id="rg-graph-remove-loss")
            p["losses"] = gr.Dropdown(label="loss stage to add", choices=[], scale=2, elem_id="rg-graph-losses", allow_custom_value=True)
            p["add"] = gr.Button("Add term", scale=1, elem_id="rg-graph-add-loss")
        p["table"] = gr.Dataframe(headers=COLUMNS, interactive=False, elem_id="rg-graph-params", wrap=True,
                                  label="the node's params (from its stage's Params; flat key: the config key it takes its value from)")
        with gr.Row(equal_height=True):
            p["param"] = gr.Dropdown(label="param", choices=[], scale=2, elem_id="rg-graph-param", allow_custom_value=True)
            p["value"] = gr.Textbox(label="value (JSON; text for a string param)", scale=3, elem_id="rg-graph-param-value")
            p["set"] = gr.Button("Set", scale=1, elem_id="rg-graph-set-param")
            p["reset"] = gr.Button("Reset to default", scale=1, elem_id="rg-graph-reset-param")
    return p


def wire_graph_panel(p: dict[str, Any], editor: GraphEditor, json_box: gr.Code, graph_widget: Any, demo: gr.Blocks) -> None:
    """Connect the panel to the raw JSON (``json_box``) and the form's ``graph`` widget."""
    hidden = {"show_progress": "hidden", "api_visibility": "private"}
    edited = [json_box, graph_widget, p["msg"]]
    p["swap"].click(editor.swap, [json_box, p["node"], p["type"]], edited, api_name="graph_swap")
    p["add"].click(editor.add_loss, [json_box, p["losses"]], edited, api_name="graph_add_loss")
    p["remove"].click(editor.remove_loss, [json_box, p["terms"]], edited, api_name="graph_remove_loss")
    p["apply_fragments"].click(editor.fragments, [json_box, p["fragments"]], edited, api_name="graph_fragments")
    p["set"].click(editor.set_param, [json_box, p["node"], p["param"], p["value"]], edited, api_name="graph_set_param")
    p["reset"].click(editor.reset_param, [json_box, p["node"], p["param"]], edited, api_name="graph_reset_param")
    shown = [p["node"], p["type"], p["fragments"], p["terms"], p["losses"], p["param"], p["table"], p["info"]]
    json_box.change(editor.panel, [json_box, p["node"], p["param"]], shown, trigger_mode="always_last", **hidden)
    p["node"].input(editor.panel, [json_box, p["node"]], shown, **hidden)
    p["param"].input(editor.param_value, [json_box, p["node"], p["param"]], [p["value"]], **hidden)
    demo.load(editor.panel, [json_box, p["node"]], shown, **hidden)
