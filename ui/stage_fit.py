"""Which registered stages fit a slot of a compiled graph, and which are loss terms.

A stage type fits node N's slot when, keeping N's wiring by port name (what a swap in the ``graph``
section does), every required input of the type is wired from an output of the same port type, and every
output of N that another node reads exists on the type with the same port type. Only stages of N's phase
are offered (a setup stage cannot stand in for a per-step one).
"""

from __future__ import annotations

from rollgraph.graph.registry import registered_stages
from rollgraph.graph.spec import GraphSpec, NodeSpec, split_ref
from rollgraph.graph.stage import Stage

SUM_TYPE = "loss.sum"
TOTAL = "total"  # the recipe's loss.sum node whose fan-in ``terms`` the loss terms join
LOSS_PORT = "Loss"


def source_type(spec: GraphSpec, ref: str) -> str | None:
    """The port type of the output ``ref`` ("node.port") points at; None if it is not resolvable."""
    parts = split_ref(ref)
    if parts is None or parts[0] not in spec.ids():
        return None
    cls = registered_stages().get(spec.node(parts[0]).type)
    port = cls.output_port(parts[1]) if cls else None
    return port.type if port else None


def consumed_outputs(spec: GraphSpec, node_id: str) -> dict[str, list[str]]:
    """output port of ``node_id`` -> the "consumer.port" inputs that read it."""
    out: dict[str, list[str]] = {}
    for node in spec.nodes:
        for port, ref in node.wires():
            parts = split_ref(ref)
            if parts and parts[0] == node_id:
                out.setdefault(parts[1], []).append(f"{node.id}.{port}")
    return out


def misfit(spec: GraphSpec, node: NodeSpec, cls: type[Stage]) -> list[str]:
    """Why stage ``cls`` cannot take ``node``'s slot (empty when it fits)."""
    reasons = []
    current = registered_stages().get(node.type)
    if current is not None and cls.phase != current.phase:
        reasons.append(f"it is a {cls.phase} stage, the slot is a {current.phase} one")
    for port in cls.inputs:
        wired = node.inputs.get(port.name)
        if wired is None:
            if not port.optional:
                reasons.append(f"its required input {port.name!r} ({port.type}) has no wire here")
            continue
        if isinstance(wired, list) != port.many:
            reasons.append(f"its input {port.name!r} {'takes' if port.many else 'does not take'} a list of wires")
            continue
        for ref in [wired] if isinstance(wired, str) else wired:
            found = source_type(spec, ref)
            if found is not None and found != port.type:
                reasons.append(f"its input {port.name!r} wants {port.type}, the wire {ref} gives {found}")
    for out_port, readers in consumed_outputs(spec, node.id).items():
        port = cls.output_port(out_port)
        current_port = current.output_port(out_port) if current else None
        if port is None:
            reasons.append(f"it has no output {out_port!r}, which {', '.join(readers)} read")
        elif current_port is not None and port.type != current_port.type:
            reasons.append(f"its output {out_port!r} is {port.type}, {', '.join(readers)} read {current_port.type}")
    return reasons


def fitting_types(spec: GraphSpec, node_id: str) -> list[str]:
    """Registered stage types (other than the node's own) that fit the node's slot."""
    node = spec.node(node_id)
    return [t for t, cls in registered_stages().items() if t != node.type and not misfit(spec, node, cls)]


def is_loss_stage(cls: type[Stage]) -> bool:
    return cls.type != SUM_TYPE and any(p.type == LOSS_PORT for p in cls.outputs)


def loss_stages() -> dict[str, type[Stage]]:
    """Every registered stage with a Loss output, except the sum the terms feed."""
    return {t: cls for t, cls in registered_stages().items() if is_loss_stage(cls)}


def loss_terms(spec: GraphSpec) -> list[str]:
    """The node ids whose loss the ``total`` node adds, in order."""
    if TOTAL not in spec.ids():
        return []
    wired = spec.node(TOTAL).inputs.get("terms", [])
    refs = [wired] if isinstance(wired, str) else wired
    return [parts[0] for parts in map(split_ref, refs) if parts]
