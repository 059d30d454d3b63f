"""The Compare tab: pick several runs, overlay one metric, and read a table of how they differ (config
keys) and what they gave (duration, it/s, final loss, exposure-bias probe), filtered and sorted. API name
for gradio_client: compare (runs, metric, filter, sort_by, descending) -> (plot, table, metric chooser)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr
from rollgraph.ui.compare import FIXED_COLUMNS, compare_table, metric_choices, overlay
from rollgraph.ui.paths import PathError, confine
from rollgraph.ui.runs import RunManager
from rollgraph.ui.watch import find_runs

DEFAULT_PICK = 4  # runs pre-selected when the tab opens with none chosen: the newest ones


class CompareActions:
    def __init__(self, manager: RunManager):
        self.runs_dir = manager.runs_dir

    def names(self) -> list[str]:
        return [str(f.relative_to(self.runs_dir)) for f in find_runs(self.runs_dir)]

    def choices(self, current: list[str] | None) -> Any:
        """The run chooser, keeping the runs still there; the newest few when none is chosen."""
        names = self.names()
        kept = [n for n in (current or []) if n in names]
        return gr.update(choices=names, value=kept or names[:DEFAULT_PICK])

    def _folders(self, names: list[str] | None) -> dict[str, Path]:
        out = {}
        for name in names or []:
            try:
                folder = confine(name, self.runs_dir)
            except PathError:
                continue  # a stale or hostile name is left out, not reported per keystroke
            if folder.is_dir():
                out[name] = folder
        return out

    def compare(self, names: list[str] | None, metric: str | None, filter_text: str = "", sort_by: str | None = "run",
                descending: bool = False) -> tuple[Any, Any, Any]:
        """API ``compare``: (overlay of ``metric`` per run, the comparison table, the metric chooser)."""
        folders = self._folders(names)
        metrics = metric_choices(folders)
        metric = metric if metric in metrics else (metrics[0] if metrics else None)
        table = compare_table(folders, filter_text or "", sort_by or "run", bool(descending))
        shown = {n: folders[n] for n in table["run"]} if len(table) else {}
        plot = overlay(shown, metric) if metric else None
        return (gr.update(value=plot, title=metric or "no metric"), gr.update(value=table),
                gr.update(choices=metrics, value=metric))


def compare_tab(manager: RunManager, tab: gr.Tab) -> dict[str, Any]:
    """Build the tab's widgets (inside the current Tab context) and wire them; returns the widgets."""
    actions = CompareActions(manager)
    w: dict[str, Any] = {}
    with gr.Row(equal_height=True):
        w["runs"] = gr.Dropdown(label="runs to compare", choices=[], multiselect=True, scale=5, elem_id="rg-compare-runs",
                                allow_custom_value=True)  # choices change at run time; compare() confines the names
        w["metric"] = gr.Dropdown(label="metric", choices=["loss"], value="loss", scale=2, elem_id="rg-compare-metric",
                                  allow_custom_value=True)
        w["refresh"] = gr.Button("↻", scale=0, min_width=50)
    w["plot"] = gr.LinePlot(x="step", y="value", color="run", title="loss", height=320, elem_id="rg-compare-plot")
    with gr.Row(equal_height=True):
        w["filter"] = gr.Textbox(label="filter rows (any cell contains)", scale=3, elem_id="rg-compare-filter")
        w["sort"] = gr.Dropdown(label="sort by", choices=FIXED_COLUMNS, value="final loss", allow_custom_value=True, scale=2,
                                elem_id="rg-compare-sort")
        w["descending"] = gr.Checkbox(label="descending", value=False, scale=1)
    w["table"] = gr.Dataframe(headers=FIXED_COLUMNS, interactive=False, wrap=True, elem_id="rg-compare-table",
                              label="runs: results, then the config keys that differ between them")
    inputs = [w["runs"], w["metric"], w["filter"], w["sort"], w["descending"]]
    outputs = [w["plot"], w["table"], w["metric"]]
    hidden = {"show_progress": "hidden", "api_visibility": "private"}
    # the public one first: Gradio names private events after their function too, and the first takes the name
    gr.on([w["runs"].input, w["metric"].input, w["filter"].submit, w["sort"].input, w["descending"].input],
          actions.compare, inputs, outputs, trigger_mode="always_last", show_progress="hidden", api_name="compare")
    tab.select(actions.choices, [w["runs"]], [w["runs"]], **hidden).then(actions.compare, inputs, outputs, **hidden)
    w["refresh"].click(actions.choices, [w["runs"]], [w["runs"]], **hidden).then(actions.compare, inputs, outputs, **hidden)
    return w
