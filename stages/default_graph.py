"""Compile a TrainConfig into its stage graph.

The default graph (rollout and ReflexFlow nodes appear only when enabled):

    setup:  data ─► model ─► optimizer            schedule
    step:   batch ─► noise ─► [rollout] ─► predict ─► loss ─► [adr] ─► optimize

With ReflexFlow, ``loss`` is the FC-reweighted flow-matching loss (loss.reflexflow_fc) instead of loss.mse.

Every node's params are filled from the flat config wherever a param name matches a config key; the
config's ``graph`` section then replaces, inserts or removes nodes by id (explicit params win).
"""

from __future__ import annotations

from typing import Any

from rollgraph.graph import ConfigError, GraphSpec, Issue, NodeSpec
from rollgraph.graph.registry import registered_stages
from rollgraph.stages.config import TrainConfig


def _default_nodes(cfg: TrainConfig) -> list[dict[str, Any]]:
    nodes = [
        {"id": "data", "type": "load.dataset"},
        {"id": "schedule", "type": "noise.schedule"},
        {"id": "model", "type": "model.load", "inputs": {"data": "data.data"}},
        {"id": "optimizer", "type": "optimize.adamw", "inputs": {"model": "model.model"}},
        {"id": "batch", "type": "load.batch", "inputs": {"data": "data.data"}},
        {"id": "noise", "type": "noise.forward", "inputs": {"batch": "batch.batch", "schedule": "schedule.schedule"}},
    ]
    noisy = "noise.noisy"
    if cfg.rollout_enabled:
        nodes.append({"id": "rollout", "type": "rollout.scheduled_sampling",
                      "inputs": {"noisy": noisy, "model": "model.model", "schedule": "schedule.schedule"}})
        noisy = "rollout.noisy"
    nodes.append({"id": "predict", "type": "predict.model", "inputs": {"noisy": noisy, "model": "model.model", "schedule": "schedule.schedule"}})
    loss = "loss.loss"
    if cfg.reflexflow_enabled:  # the FC-reweighted flow-matching loss replaces the plain MSE, plus ADR
        nodes += [
            {"id": "loss", "type": "loss.reflexflow_fc",
             "inputs": {"prediction": "predict.prediction", "model": "model.model", "schedule": "schedule.schedule"}},
            {"id": "adr", "type": "loss.reflexflow_adr",
             "inputs": {"prediction": "predict.prediction", "schedule": "schedule.schedule", "previous": loss}},
        ]
        loss = "adr.loss"
    else:
        nodes.append({"id": "loss", "type": "loss.mse", "inputs": {"prediction": "predict.prediction", "schedule": "schedule.schedule"}})
    nodes.append({"id": "optimize", "type": "optimize.step", "inputs": {"loss": loss, "optimizer": "optimizer.optimizer"}})
    return nodes


def _apply_patch(nodes: list[dict[str, Any]], cfg: TrainConfig) -> list[dict[str, Any]]:
    patch = cfg.graph
    if patch is None:
        return nodes
    issues = []
    by_id = {n["id"]: n for n in nodes}
    order = [n["id"] for n in nodes]
    for i, entry in enumerate(patch.nodes):
        node_id = entry.get("id")
        unknown = set(entry) - {"id", "type", "params", "inputs"}
        if not isinstance(node_id, str) or unknown:
            issues.append(Issue(f"graph.nodes.{i}", "each entry needs an 'id' and may have only type, params, inputs"
                                + (f"; unknown: {sorted(unknown)}" if unknown else "")))
            continue
        if node_id in by_id:
            old = by_id[node_id]
            new_type = entry.get("type", old["type"])
            kept_inputs = old.get("inputs", {})
            kept_params = old.get("params", {})
            if new_type != old["type"]:  # a swapped stage keeps the wiring of the ports it shares
                cls = registered_stages().get(new_type)
                kept_inputs = {k: v for k, v in kept_inputs.items() if cls and cls.input_port(k)}
                kept_params = {}
            by_id[node_id] = {"id": node_id, "type": new_type,
                              "params": {**kept_params, **entry.get("params", {})},
                              "inputs": {**kept_inputs, **entry.get("inputs", {})}}
        elif "type" not in entry:
            issues.append(Issue(f"graph.nodes.{i}", f"new node {node_id!r} needs a 'type'"))
        else:
            by_id[node_id] = dict(entry)
            order.append(node_id)
    for node_id in patch.remove:
        if node_id not in by_id:
            issues.append(Issue("graph.remove", f"no node {node_id!r} to remove"))
        else:
            del by_id[node_id]
            order.remove(node_id)
    if issues:
        raise ConfigError(issues)
    return [by_id[i] for i in order]


def compile_graph(cfg: TrainConfig) -> GraphSpec:
    """The config's graph, params filled from the flat config (validation is separate: validate_graph)."""
    stages = registered_stages()
    flat = cfg.model_dump()
    specs = []
    for node in _apply_patch(_default_nodes(cfg), cfg):
        cls = stages.get(node["type"])
        params = {k: flat[k] for k in cls.Params.model_fields if k in flat} if cls else {}
        params.update(node.get("params", {}))
        specs.append(NodeSpec(id=node["id"], type=node["type"], params=params, inputs=node.get("inputs", {})))
    return GraphSpec(nodes=specs)
