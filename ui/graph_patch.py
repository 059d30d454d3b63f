"""Edits of a config dict's ``graph`` section (the patch on the shipped recipe), as the graph panel makes them.

Each function returns a new config dict and leaves its argument alone; none validates (the panel checks
the result with ``check_config`` before writing it). Empty parts of the section are dropped, so an edit
undone leaves the config as it was.
"""

from __future__ import annotations

import copy
from typing import Any

from rollgraph.graph.registry import registered_stages
from rollgraph.graph.spec import GraphSpec, split_ref
from rollgraph.ui.stage_fit import LOSS_PORT, TOTAL, loss_terms

# where a new loss term's inputs come from, by port type (the recipe's node ids)
LOSS_SOURCES = {"Prediction": "predict.prediction", "Schedule": "schedule.schedule", "Model": "model.model"}
TERMS = f"{TOTAL}.terms"


class PatchError(ValueError):
    """An edit that cannot be written (the message names the node)."""


def _section(data: dict[str, Any]) -> dict[str, Any]:
    graph = data.get("graph")
    return copy.deepcopy(graph) if isinstance(graph, dict) else {}


def _with(data: dict[str, Any], graph: dict[str, Any]) -> dict[str, Any]:
    """``data`` with ``graph`` as its section, empty parts dropped (no section at all when empty)."""
    graph = {k: v for k, v in graph.items() if v not in ([], {}, None)}
    out = {k: v for k, v in data.items() if k != "graph"}
    if graph:
        out["graph"] = graph
    return out


def _entry(graph: dict[str, Any], node_id: str) -> dict[str, Any] | None:
    return next((e for e in graph.get("nodes", []) if isinstance(e, dict) and e.get("id") == node_id), None)


def without_entry(data: dict[str, Any], node_id: str) -> dict[str, Any]:
    """``data`` without the section's ``nodes`` entry for ``node_id`` (to see what the recipe alone makes of it)."""
    graph = _section(data)
    graph["nodes"] = [e for e in graph.get("nodes", []) if not (isinstance(e, dict) and e.get("id") == node_id)]
    return _with(data, graph)


def swap_type(data: dict[str, Any], node_id: str, new_type: str, recipe_type: str | None = None) -> dict[str, Any]:
    """Put stage ``new_type`` in ``node_id``'s slot. Params (and ``set`` entries) the new stage lacks are
    dropped; back to ``recipe_type`` (what the node is without this section's entry), a bare entry goes."""
    cls = registered_stages().get(new_type)
    if cls is None:
        raise PatchError(f"{node_id}: no registered stage {new_type!r}")
    graph = _section(data)
    entry = _entry(graph, node_id)
    if entry is None:
        entry = {"id": node_id}
        graph.setdefault("nodes", []).append(entry)
    entry["type"] = new_type
    fields = cls.Params.model_fields
    if "params" in entry:
        entry["params"] = {k: v for k, v in entry["params"].items() if k in fields}
    if "inputs" in entry:
        entry["inputs"] = {k: v for k, v in entry["inputs"].items() if cls.input_port(k)}
    graph["set"] = {k: v for k, v in graph.get("set", {}).items()
                    if (split_ref(k) or ("", ""))[0] != node_id or split_ref(k)[1] in fields}
    if new_type == recipe_type and not entry.get("params") and not entry.get("inputs"):
        graph["nodes"] = [e for e in graph["nodes"] if e is not entry]
    return _with(data, graph)


def new_node_id(spec: GraphSpec, stage_type: str) -> str:
    """A free node id from the stage's name (``loss.reflexflow_adr`` -> ``reflexflow_adr``)."""
    base = stage_type.rsplit(".", 1)[-1]
    taken, name, n = set(spec.ids()), base, 2
    while name in taken:
        name, n = f"{base}_{n}", n + 1
    return name


def add_loss(data: dict[str, Any], spec: GraphSpec, stage_type: str) -> tuple[dict[str, Any], str]:
    """Insert a loss node of ``stage_type`` wired from the prediction (and schedule / model where it has such
    inputs) and add it to ``total.terms``; (new config, its node id)."""
    cls = registered_stages().get(stage_type)
    loss_port = next((p.name for p in cls.outputs if p.type == LOSS_PORT), None) if cls else None
    if loss_port is None:
        raise PatchError(f"{stage_type}: not a registered stage with a {LOSS_PORT} output")
    node_id = new_node_id(spec, stage_type)
    inputs = {}
    for port in cls.inputs:
        source = LOSS_SOURCES.get(port.type)
        if source is not None and split_ref(source)[0] in spec.ids():
            inputs[port.name] = source
        elif not port.optional:
            raise PatchError(f"{node_id} ({stage_type}): nothing to wire its required input {port.name!r} ({port.type}) "
                             f"from; the panel wires {', '.join(f'{t} <- {s}' for t, s in LOSS_SOURCES.items())}")
    graph = _section(data)
    graph.setdefault("nodes", []).append({"id": node_id, "type": stage_type, "inputs": inputs})
    extend = graph.setdefault("extend", {})
    extend[TERMS] = [*extend.get(TERMS, []), f"{node_id}.{loss_port}"]
    return _with(data, graph), node_id


def remove_loss(data: dict[str, Any], spec: GraphSpec, node_id: str) -> dict[str, Any]:
    """Drop loss term ``node_id``: one this section inserted goes with its entry, its ``extend`` and ``set``;
    one of the recipe or a fragment is removed (``graph.remove``) and ``total``'s terms are rewritten without it."""
    if node_id not in loss_terms(spec):
        raise PatchError(f"{node_id}: not a term of {TERMS}")
    graph = _section(data)
    extend = graph.get("extend", {})
    refs = [r for r in extend.get(TERMS, []) if (split_ref(r) or ("",))[0] == node_id]
    entry = _entry(graph, node_id)
    if refs and entry is not None and "type" in entry:  # inserted here
        graph["nodes"] = [e for e in graph["nodes"] if e is not entry]
        extend[TERMS] = [r for r in extend[TERMS] if r not in refs]
        graph["extend"] = {k: v for k, v in extend.items() if v}
        graph["set"] = {k: v for k, v in graph.get("set", {}).items() if (split_ref(k) or ("",))[0] != node_id}
        return _with(data, graph)
    wired = spec.node(TOTAL).inputs.get("terms", [])
    kept = [r for r in ([wired] if isinstance(wired, str) else wired) if (split_ref(r) or ("",))[0] != node_id]
    own = extend.get(TERMS, [])
    total = _entry(graph, TOTAL)
    if total is None:
        total = {"id": TOTAL}
        graph.setdefault("nodes", []).append(total)
    total["inputs"] = {**total.get("inputs", {}), "terms": [r for r in kept if r not in own]}
    graph["remove"] = [*graph.get("remove", []), node_id]
    return _with(data, graph)


def set_fragment(data: dict[str, Any], name: str, on: bool) -> dict[str, Any]:
    """Add ``name`` to, or drop it from, the section's ``include``."""
    graph = _section(data)
    include = [n for n in graph.get("include", []) if n != name]
    graph["include"] = [*include, name] if on else include
    return _with(data, graph)


def set_param(data: dict[str, Any], node_id: str, param: str, value: Any) -> dict[str, Any]:
    """``graph.set["node.param"] = value``."""
    graph = _section(data)
    graph["set"] = {**graph.get("set", {}), f"{node_id}.{param}": value}
    return _with(data, graph)


def unset_param(data: dict[str, Any], node_id: str, param: str) -> dict[str, Any]:
    """Forget the value this section gives ``node_id``'s ``param`` (its ``set`` entry and its entry's params)."""
    graph = _section(data)
    graph["set"] = {k: v for k, v in graph.get("set", {}).items() if k != f"{node_id}.{param}"}
    entry = _entry(graph, node_id)
    if entry is not None and "params" in entry:
        entry["params"] = {k: v for k, v in entry["params"].items() if k != param}
        if not entry["params"]:
            del entry["params"]
    return _with(data, graph)
