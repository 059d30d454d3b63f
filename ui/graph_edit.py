"""What the graph panel does: swap a node's stage, add or remove a loss term, include or exclude a fragment,
set a node's params; each as an edit of the raw JSON's ``graph`` section.

The raw JSON stays the source of truth. Every edit is checked with ``check_config`` (the validation the
rest of the config gets) before it is written: one that adds a problem is refused, the JSON is left as it
was and the problems are shown next to the panel, each naming its node or key. An edit returns
[json text, the form's ``graph`` widget, message]; the JSON's change event then redraws the picture and
re-fills the panel (``panel``).
"""

from __future__ import annotations

from html import escape
from typing import Any

import gradio as gr
from rollgraph.graph.errors import ConfigError
from rollgraph.graph.registry import registered_stages
from rollgraph.graph.spec import GraphSpec
from rollgraph.stages.config import build_config
from rollgraph.stages.default_graph import FRAGMENTS, included_fragments
from rollgraph.ui.checks import CheckResult, Problem, check_config
from rollgraph.ui.forms import FIELDS, widget_values
from rollgraph.ui.graph_patch import (
    PatchError,
    add_loss,
    remove_loss,
    set_fragment,
    set_param,
    swap_type,
    unset_param,
    without_entry,
)
from rollgraph.ui.node_params import param_rows, parse_value
from rollgraph.ui.presets import dump_config, parse_config_text
from rollgraph.ui.stage_fit import fitting_types, loss_stages, loss_terms, misfit

GRAPH_WIDGET = [f.name for f in FIELDS].index("graph")


def _ok(text: str) -> str:
    return f'<div class="rg-okmsg" id="rg-graph-edit-ok">{escape(text)}</div>'


def _refused(what: str, problems: list[Problem] | list[str]) -> str:
    items = "".join(f"<li><code>{escape(p.key)}</code>: {escape(p.message)}</li>" if isinstance(p, Problem)
                    else f"<li>{escape(p)}</li>" for p in problems)
    return f'<div class="rg-bad rg-graph-refused"><b>not applied: {escape(what)}</b><ul>{items}</ul></div>'


def _new_problems(before: CheckResult, after: CheckResult) -> list[Problem]:
    seen = {(p.key, p.message) for p in before.problems}
    return [p for p in after.problems if (p.key, p.message) not in seen]


class GraphEditor:
    """The panel's handlers; each takes the raw JSON text first."""

    @staticmethod
    def _parse(text: str) -> tuple[dict[str, Any] | None, CheckResult | None, str]:
        data, problem = parse_config_text(text)
        if data is None:
            return None, None, _refused("the raw JSON does not parse", [problem])
        return data, check_config(data), ""

    def _commit(self, before: dict[str, Any], checked: CheckResult, after: dict[str, Any], what: str) -> list[Any]:
        """Write ``after`` if it adds no problem to ``before``'s; else refuse, naming the problems."""
        result = check_config(after)
        added = _new_problems(checked, result)
        if added:
            return [gr.skip(), gr.skip(), _refused(what, added)]
        note = "" if result.valid else f" (the config still has {len(result.problems)} earlier problem(s))"
        return [dump_config(after), widget_values(after)[GRAPH_WIDGET], _ok(f"{what}{note}")]

    def _edit(self, text: str, what: str, change) -> list[Any]:
        data, checked, refusal = self._parse(text)
        if data is None:
            return [gr.skip(), gr.skip(), refusal]
        if checked.graph is None:
            return [gr.skip(), gr.skip(), _refused(what, ["the config has errors outside the graph; fix them first (Config tab)"]
                                                   + [f"{p.key}: {p.message}" for p in checked.problems])]
        try:
            after = change(data, checked.graph)
        except PatchError as err:
            return [gr.skip(), gr.skip(), _refused(what, [str(err)])]
        return self._commit(data, checked, after, what)

    # --- the edits --------------------------------------------------------------------------------
    def swap(self, text: str, node_id: str | None, new_type: str | None) -> list[Any]:
        """API ``graph_swap``: put registered stage ``new_type`` in ``node_id``'s slot."""
        what = f"{node_id}: stage {new_type}"

        def change(data: dict[str, Any], spec: GraphSpec) -> dict[str, Any]:
            if node_id not in spec.ids():
                raise PatchError(f"{node_id}: no such node in the graph")
            cls = registered_stages().get(new_type or "")
            if cls is None:
                raise PatchError(f"{node_id}: no registered stage {new_type!r}")
            reasons = misfit(spec, spec.node(node_id), cls)
            if reasons:
                raise PatchError(f"{node_id}: {new_type} does not fit this slot: " + "; ".join(reasons))
            recipe = check_config(without_entry(data, node_id)).graph
            recipe_type = recipe.node(node_id).type if recipe is not None and node_id in recipe.ids() else None
            return swap_type(data, node_id, new_type, recipe_type)

        return self._edit(text, what, change)

    def add_loss(self, text: str, stage_type: str | None) -> list[Any]:
        """API ``graph_add_loss``: a new loss term of ``stage_type`` in ``total.terms``."""
        return self._edit(text, f"add loss term {stage_type}", lambda data, spec: add_loss(data, spec, stage_type or "")[0])

    def remove_loss(self, text: str, node_id: str | None) -> list[Any]:
        """API ``graph_remove_loss``: drop loss term ``node_id``."""
        return self._edit(text, f"remove loss term {node_id}", lambda data, spec: remove_loss(data, spec, node_id or ""))

    def fragments(self, text: str, wanted: list[str] | None) -> list[Any]:
        """API ``graph_fragments``: include exactly the fragments ``wanted`` (those the flat keys turn on stay)."""
        wanted = list(wanted or [])

        def change(data: dict[str, Any], spec: GraphSpec) -> dict[str, Any]:
            unknown = [n for n in wanted if n not in FRAGMENTS]
            if unknown:
                raise PatchError(f"graph.include: no fragment {unknown[0]!r}; fragments: {list(FRAGMENTS)}")
            by_keys = included_fragments(build_config({k: v for k, v in data.items() if k != "graph" and not k.startswith("_")}))
            forced = [n for n in by_keys if n not in wanted]
            if forced:
                raise PatchError(f"fragment {forced[0]}: the flat keys include it ({_why(forced[0])}); "
                                 "change them in the Config tab to leave it out")
            for name in FRAGMENTS:
                data = set_fragment(data, name, name in wanted and name not in by_keys)
            return data

        try:
            return self._edit(text, f"fragments {', '.join(wanted) or 'none'}", change)
        except ConfigError as err:  # the flat keys themselves do not build; check_config reports them too
            return [gr.skip(), gr.skip(), _refused("fragments", [f"{i.where}: {i.message}" for i in err.issues])]

    def set_param(self, text: str, node_id: str | None, param: str | None, value: str | None) -> list[Any]:
        """API ``graph_set_param``: ``graph.set["node.param"]`` = the value typed (JSON, or text for a string param)."""
        def change(data: dict[str, Any], spec: GraphSpec) -> dict[str, Any]:
            cls = self._stage(spec, node_id)
            if param not in cls.Params.model_fields:
                raise PatchError(f"{node_id}: {cls.type} has no param {param!r}")
            return set_param(data, node_id, param, parse_value(cls, param, value or ""))

        return self._edit(text, f"{node_id}.{param} = {value}", change)

    def reset_param(self, text: str, node_id: str | None, param: str | None) -> list[Any]:
        """API ``graph_reset_param``: drop the graph section's value for ``node.param`` (back to its default or flat key)."""
        return self._edit(text, f"{node_id}.{param} back to its default", lambda data, spec: unset_param(data, node_id or "", param or ""))

    @staticmethod
    def _stage(spec: GraphSpec, node_id: str | None):
        if node_id not in spec.ids():
            raise PatchError(f"{node_id}: no such node in the graph")
        cls = registered_stages().get(spec.node(node_id).type)
        if cls is None:
            raise PatchError(f"{node_id}: its stage {spec.node(node_id).type!r} is not registered")
        return cls

    # --- what the panel shows ---------------------------------------------------------------------
    def panel(self, text: str, node_id: str | None, param: str | None = None) -> list[Any]:
        """[node chooser, stage types that fit, fragments, loss terms, losses to add, param chooser, param table, node info]."""
        data, problem = parse_config_text(text)
        result = check_config(data) if data is not None else None
        if result is None or result.graph is None:
            why = problem or "the config has errors outside the graph (see the Config tab)"
            return [gr.skip()] * 7 + [f'<div class="rg-bad">{escape(why)}</div>']
        spec = result.graph
        node_id = node_id if node_id in spec.ids() else next((n for n in ("rollout", "loss") if n in spec.ids()), spec.ids()[0])
        node = spec.node(node_id)
        cls = registered_stages().get(node.type)
        terms = loss_terms(spec)
        term_types = {spec.node(t).type for t in terms if t in spec.ids()}
        try:
            fragments = included_fragments(result.config)
        except ConfigError:
            fragments = []
        rows = [r.as_list() for r in param_rows(cls, node.params)] if cls else []
        params = [r[0] for r in rows]
        info = (f'<div class="rg-node-info"><b>{escape(node_id)}</b>: <code>{escape(node.type)}</code> '
                f'({escape(cls.phase if cls else "unknown stage")}) — {escape(cls.summary() if cls else "")}</div>')
        return [gr.update(choices=spec.ids(), value=node_id),
                gr.update(choices=fitting_types(spec, node_id), value=None),
                gr.update(value=fragments),
                gr.update(choices=terms, value=None),
                gr.update(choices=[t for t in loss_stages() if t not in term_types], value=None),
                gr.update(choices=params, value=param if param in params else None),
                rows,
                info]

    def param_value(self, text: str, node_id: str | None, param: str | None) -> Any:
        """The value box for ``param``: its current value, with its type, default and description as help."""
        data, _ = parse_config_text(text)
        spec = check_config(data).graph if data is not None else None
        if spec is None or node_id not in spec.ids() or not param:
            return gr.skip()
        cls = registered_stages().get(spec.node(node_id).type)
        row = next((r for r in param_rows(cls, spec.node(node_id).params) if r.name == param), None) if cls else None
        if row is None:
            return gr.skip()
        bound = f" · flat key {row.flat_key}" if row.flat_key else ""
        return gr.update(value=row.now, info=f"{row.type} · default {row.default}{bound} · {row.description}")


def _why(fragment: str) -> str:
    return {"rollout": "scheduled_sampling_max_step_offset > 0 with a probability > 0",
            "reflexflow": "scheduled_sampling_reflexflow, or flow matching with rollout",
            "input_perturbation": "ip_noise_gamma > 0"}.get(fragment, "")

