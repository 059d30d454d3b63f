"""A recipe is a graph held as data: a base graph plus fragments (patches), with node params bound to flat keys.

A recipe file is JSON ``{"nodes": [{id, type, params?, inputs?}, ...]}``. A fragment (and the config's
``graph`` section) is a ``GraphPatch``: ``nodes`` replace a node by id (fields left out keep the replaced
node's values; a new ``type`` keeps only the wiring of the ports it shares and starts from empty params)
or insert a new one, ``remove`` drops nodes, ``extend`` appends references to a fan-in (``many``) input
(``{"total.terms": ["adr.loss"]}``), and ``set`` assigns single params (``{"rollout.max_step": 2}``).

Params of a node, lowest precedence first: the stage's ``Params`` defaults, the flat keys the stage
``binds`` (never a key merely of the same name), the recipe's and fragments' params, the ``graph``
section's params and ``set``. A flat key the user set explicitly that disagrees with a node param the
user set explicitly is an error naming both. Nothing here knows what the stages compute.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from rollgraph.graph.errors import ConfigError, Issue
from rollgraph.graph.registry import did_you_mean
from rollgraph.graph.spec import GraphPatch, GraphSpec, NodeSpec, split_ref
from rollgraph.graph.stage import Stage

Nodes = list[dict[str, Any]]


def read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError([Issue(str(path), f"cannot read {what}: {err}")]) from None


def load_recipe(path: Path) -> Nodes:
    data = read_json(path, "recipe")
    try:
        spec = GraphSpec.model_validate(data)
    except ValidationError as err:
        raise ConfigError([Issue(str(path), f"not a recipe ({{'nodes': [...]}}): {err.errors()[0]['msg']}")]) from None
    return [n.model_dump(exclude_defaults=True) | {"id": n.id, "type": n.type} for n in spec.nodes]


def load_fragment(path: Path) -> GraphPatch:
    data = read_json(path, "graph fragment")
    try:
        return GraphPatch.model_validate(data)
    except ValidationError as err:
        raise ConfigError([Issue(str(path), f"not a graph fragment: {err.errors()[0]['msg']}")]) from None


def apply_patch(nodes: Nodes, patch: GraphPatch, where: str, stages: Mapping[str, type[Stage]]) -> Nodes:
    """``nodes`` with ``patch`` applied (``set`` is left to ``bind_params``); every fault raised at once, under ``where``."""
    issues: list[Issue] = []
    by_id = {n["id"]: n for n in nodes}
    order = [n["id"] for n in nodes]
    for i, entry in enumerate(patch.nodes):
        node_id = entry.get("id")
        unknown = set(entry) - {"id", "type", "params", "inputs"}
        if not isinstance(node_id, str) or unknown:
            issues.append(Issue(f"{where}.nodes.{i}", "each entry needs an 'id' and may have only type, params, inputs"
                                + (f"; unknown: {sorted(unknown)}" if unknown else "")))
            continue
        if node_id in by_id:
            old = by_id[node_id]
            new_type = entry.get("type", old["type"])
            kept_inputs = old.get("inputs", {})
            kept_params = old.get("params", {})
            if new_type != old["type"]:  # a swapped stage keeps the wiring of the ports it shares
                cls = stages.get(new_type)
                kept_inputs = {k: v for k, v in kept_inputs.items() if cls and cls.input_port(k)}
                kept_params = {}
            by_id[node_id] = {"id": node_id, "type": new_type,
                              "params": {**kept_params, **entry.get("params", {})},
                              "inputs": {**kept_inputs, **entry.get("inputs", {})}}
        elif "type" not in entry:
            issues.append(Issue(f"{where}.nodes.{i}", f"new node {node_id!r} needs a 'type'"))
        else:
            by_id[node_id] = dict(entry)
            order.append(node_id)
    for node_id in patch.remove:
        if node_id not in by_id:
            issues.append(Issue(f"{where}.remove", f"no node {node_id!r} to remove{did_you_mean(node_id, by_id)}"))
        else:
            del by_id[node_id]
            order.remove(node_id)
    for target, refs in patch.extend.items():
        parts = split_ref(target)
        if parts is None or parts[0] not in by_id:
            issues.append(Issue(f"{where}.extend", f"{target!r} is not 'node.port' of a node in the graph"
                                + (did_you_mean(parts[0], by_id) if parts else "")))
            continue
        node = by_id[parts[0]] = {**by_id[parts[0]], "inputs": dict(by_id[parts[0]].get("inputs", {}))}
        current = node["inputs"].get(parts[1], [])
        node["inputs"][parts[1]] = [*([current] if isinstance(current, str) else current), *refs]
    if issues:
        raise ConfigError(issues)
    return [by_id[i] for i in order]


def bind_params(nodes: Nodes, flat: Mapping[str, Any], explicit_keys: set[str], user_params: Mapping[str, dict[str, Any]],
                stages: Mapping[str, type[Stage]]) -> GraphSpec:
    """The graph spec with every node's params: bound flat keys under the node's own params.

    ``user_params`` (node id -> params) are the ones the user wrote (``graph`` section, ``set``): where one of
    them binds a flat key in ``explicit_keys`` to a different value, the two contradict each other."""
    issues: list[Issue] = []
    specs = []
    for node in nodes:
        cls = stages.get(node["type"])
        params: dict[str, Any] = {}
        if cls is not None:
            for param, key in cls.bindings().items():
                if key in flat:
                    params[param] = flat[key]
            for param, value in user_params.get(node["id"], {}).items():
                key = cls.bindings().get(param)
                if key in explicit_keys and flat[key] != value:
                    issues.append(Issue(f"{node['id']}.params.{param}", f"is {value!r} here but the flat key {key} is "
                                        f"{flat[key]!r}; set one of them"))
        params.update(node.get("params", {}))
        specs.append(NodeSpec(id=node["id"], type=node["type"], params=params, inputs=node.get("inputs", {})))
    if issues:
        raise ConfigError(issues)
    return GraphSpec(nodes=specs)


def set_params(nodes: Nodes, assignments: Mapping[str, Any], where: str = "--set") -> Nodes:
    """Apply ``{"node.param": value}``; an unknown node is an error with a did-you-mean (unknown params are
    caught by validation, against the stage's Params)."""
    issues = []
    by_id = {n["id"]: n for n in nodes}
    out = {n["id"]: {**n, "params": dict(n.get("params", {}))} for n in nodes}
    for target, value in assignments.items():
        parts = split_ref(target)
        if parts is None:
            issues.append(Issue(f"{where} {target}", "expected NODE.PARAM=VALUE"))
        elif parts[0] not in by_id:
            issues.append(Issue(f"{where} {target}", f"no node {parts[0]!r} in the graph{did_you_mean(parts[0], by_id)}"))
        else:
            out[parts[0]]["params"][parts[1]] = value
    if issues:
        raise ConfigError(issues)
    return [out[n["id"]] for n in nodes]


def user_params(patch: GraphPatch | None) -> dict[str, dict[str, Any]]:
    """node id -> the params the user wrote for it in a ``graph`` section (entries and ``set``)."""
    out: dict[str, dict[str, Any]] = {}
    if patch is None:
        return out
    for entry in patch.nodes:
        if isinstance(entry.get("id"), str):
            out.setdefault(entry["id"], {}).update(entry.get("params", {}))
    for target, value in patch.set.items():
        parts = split_ref(target)
        if parts is not None:
            out.setdefault(parts[0], {})[parts[1]] = value
    return out
