"""Validate a graph spec before any tensor exists, collecting every fault, then order it.

Checks: duplicate ids, unknown stage types, bad params, unknown / missing ports, malformed or dangling
references, port-type mismatches, setup stages reading step outputs, cycles, and (once the rest is sound)
nodes whose outputs reach no sink (a stage with ``sink = True``): nothing runs that feeds no sink. A consumer is never
blamed for a fault of its source (e.g. a port "missing" on a node whose type is unknown).
"""

from __future__ import annotations

import graphlib
from dataclasses import dataclass, field

from pydantic import BaseModel, ValidationError
from rollgraph.graph.errors import GraphError, Issue
from rollgraph.graph.ports import port_types
from rollgraph.graph.registry import did_you_mean, registered_stages
from rollgraph.graph.spec import GraphSpec, NodeSpec, split_ref
from rollgraph.graph.stage import Stage


@dataclass
class ResolvedNode:
    spec: NodeSpec
    cls: type[Stage]
    params: BaseModel

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def phase(self) -> str:
        return self.cls.phase


PHASES = ("setup", "step", "update", "every")  # a node may read outputs of its own phase or an earlier one
GONE_BY_EVERY = ("step", "update")  # dropped after each optimizer step, before the every phase runs


@dataclass
class ResolvedGraph:
    """A valid graph, its nodes in execution order, per phase."""

    setup: list[ResolvedNode]
    step: list[ResolvedNode]
    update: list[ResolvedNode] = field(default_factory=list)
    every: list[ResolvedNode] = field(default_factory=list)

    @property
    def nodes(self) -> list[ResolvedNode]:
        return self.setup + self.step + self.update + self.every


def pydantic_issues(err: ValidationError, where: str, prefix: str = "") -> list[Issue]:
    issues = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        issues.append(Issue(where, msg, f"{prefix}{loc}" if loc else prefix.rstrip(".")))
    return issues


def validate_graph(spec: GraphSpec) -> ResolvedGraph:
    """Return the ordered graph, or raise GraphError listing every fault."""
    stages = registered_stages()
    known_types = set(port_types())
    issues: list[Issue] = []
    by_id: dict[str, NodeSpec] = {}
    for node in spec.nodes:
        if node.id in by_id:
            issues.append(Issue(node.id, "duplicate node id"))
            continue
        if "." in node.id or not node.id:
            issues.append(Issue(node.id or "<empty>", "node ids must be non-empty and contain no '.'"))
        by_id[node.id] = node

    classes: dict[str, type[Stage]] = {}
    resolved: dict[str, ResolvedNode] = {}
    for node_id, node in by_id.items():
        cls = stages.get(node.type)
        if cls is None:
            issues.append(Issue(node_id, f"unknown stage type {node.type!r}{did_you_mean(node.type, stages)}", "type"))
            continue
        classes[node_id] = cls
        if cls.phase not in PHASES:
            issues.append(Issue(node_id, f"stage {cls.type!r} declares phase {cls.phase!r}; phases: {list(PHASES)}"))
        issues += _every_issues(node_id, cls)
        for p in (*cls.inputs, *cls.outputs):
            if p.type not in known_types:
                issues.append(Issue(node_id, f"stage declares port {p.name!r} of unknown type {p.type!r}"))
        try:
            params = cls.Params.model_validate(node.params)
        except ValidationError as err:
            issues += pydantic_issues(err, node_id, "params.")
            params = None
        if params is not None:
            resolved[node_id] = ResolvedNode(node, cls, params)

    deps: dict[str, set[str]] = {nid: set() for nid in by_id}
    for node_id, cls in classes.items():
        node = by_id[node_id]
        for port_name, wired in node.inputs.items():
            port = cls.input_port(port_name)
            if port is None:
                names = [p.name for p in cls.inputs]
                issues.append(Issue(node_id, f"stage {cls.type!r} has no input {port_name!r}{did_you_mean(port_name, names)}; inputs: {names}", f"inputs.{port_name}"))
                continue
            if isinstance(wired, list) != port.many:
                want = "a list of 'node.port' references (it adds them up)" if port.many else "one 'node.port' reference"
                issues.append(Issue(node_id, f"input {port_name!r} takes {want}, got {wired!r}", f"inputs.{port_name}"))
                continue
            for ref in wired if port.many else [wired]:
                issues += _check_ref(node_id, cls, port, ref, by_id, classes, deps)
        for port in cls.inputs:
            if not port.optional and not node.inputs.get(port.name):
                issues.append(Issue(node_id, f"required input {port.name!r} ({port.type}) is not wired", f"inputs.{port.name}"))

    order: list[str] = []
    try:
        order = list(graphlib.TopologicalSorter(deps).static_order())
    except graphlib.CycleError as err:
        cycle = err.args[1]
        issues.append(Issue(cycle[0], "cycle: " + " -> ".join(cycle)))

    if not issues:
        issues += _unused(by_id, classes, deps)
    if issues:
        raise GraphError(issues)
    nodes = [resolved[nid] for nid in order]
    return ResolvedGraph(
        setup=[n for n in nodes if n.phase == "setup"],
        step=[n for n in nodes if n.phase == "step"],
        update=[n for n in nodes if n.phase == "update"],
        every=[n for n in nodes if n.phase == "every"],
    )


def _every_issues(node_id: str, cls: type[Stage]) -> list[Issue]:
    """An ``interval`` must name an int param; the when-attributes belong to ``every`` stages only."""
    if cls.phase != "every":
        if cls.interval or cls.at_end or cls.on_request:
            return [Issue(node_id, f"stage {cls.type!r} sets interval/at_end/on_request but its phase is {cls.phase!r}, not 'every'")]
        return []
    field_info = cls.Params.model_fields.get(cls.interval) if cls.interval else None
    if cls.interval and (field_info is None or field_info.annotation is not int):
        return [Issue(node_id, f"stage {cls.type!r} declares interval {cls.interval!r}, which is not an int param of its Params")]
    return []


def _check_ref(node_id: str, cls: type[Stage], port, ref: str, by_id: dict[str, NodeSpec],
               classes: dict[str, type[Stage]], deps: dict[str, set[str]]) -> list[Issue]:
    where = f"inputs.{port.name}"
    parts = split_ref(ref) if isinstance(ref, str) else None
    if parts is None:
        return [Issue(node_id, f"reference {ref!r} is not of the form 'node.port'", where)]
    src_id, src_port = parts
    if src_id not in by_id:
        return [Issue(node_id, f"references unknown node {src_id!r}{did_you_mean(src_id, by_id)}", where)]
    deps[node_id].add(src_id)
    src_cls = classes.get(src_id)
    if src_cls is None:
        return []  # the source's own fault is already reported
    out = src_cls.output_port(src_port)
    if out is None:
        names = [p.name for p in src_cls.outputs]
        return [Issue(node_id, f"node {src_id!r} ({src_cls.type}) has no output {src_port!r}{did_you_mean(src_port, names)}; outputs: {names}", where)]
    issues = []
    if out.type != port.type:
        issues.append(Issue(node_id, f"type mismatch: input {port.name!r} wants {port.type}, {ref!r} gives {out.type}", where))
    if cls.phase == "every" and src_cls.phase in GONE_BY_EVERY:
        issues.append(Issue(node_id, f"every stage cannot read {src_cls.phase} output {ref!r} (a step's values are gone "
                                     "when the every phase runs); read setup or every outputs", where))
    elif PHASES.index(src_cls.phase) > PHASES.index(cls.phase):
        issues.append(Issue(node_id, f"{cls.phase} stage cannot read {src_cls.phase} output {ref!r}", where))
    return issues


def _unused(by_id: dict[str, NodeSpec], classes: dict[str, type[Stage]], deps: dict[str, set[str]]) -> list[Issue]:
    """Nodes whose outputs reach no sink: they would run for nothing (a branch a patch disconnected)."""
    sinks = [nid for nid, cls in classes.items() if cls.sink]
    if not sinks:
        return [Issue("graph", "no sink: nothing consumes the graph's results (e.g. no optimizer step)")]
    feeding, todo = set(sinks), list(sinks)
    while todo:
        for src in deps[todo.pop()]:
            if src not in feeding:
                feeding.add(src)
                todo.append(src)
    return [Issue(nid, f"its outputs reach no sink ({', '.join(sinks)}): nothing uses what it computes; wire it "
                       "into the graph or remove it") for nid in by_id if nid not in feeding]
