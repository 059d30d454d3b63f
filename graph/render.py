"""Render a graph spec as text, JSON (each node with its phase) or a Mermaid flowchart (ports on the edges).

Pass the spec in execution order (``ordered``) to print exactly what runs, in order."""

from __future__ import annotations

import json

from rollgraph.graph.registry import registered_stages
from rollgraph.graph.spec import GraphSpec, split_ref
from rollgraph.graph.validate import PHASES


def ordered(spec: GraphSpec, graph) -> GraphSpec:
    """``spec``'s nodes in the execution order of its validated ``graph`` (a ResolvedGraph)."""
    return GraphSpec(nodes=[n.spec for n in graph.nodes])


def _refs(wired) -> list[str]:
    return [wired] if isinstance(wired, str) else list(wired)


def render(spec: GraphSpec, fmt: str = "text") -> str:
    if fmt == "json":
        stages = registered_stages()
        nodes = [{"id": n.id, "type": n.type, "phase": stages[n.type].phase if n.type in stages else None,
                  "params": n.params, "inputs": n.inputs} for n in spec.nodes]
        return json.dumps({"nodes": nodes}, indent=1)
    if fmt == "mermaid":
        return to_mermaid(spec)
    return to_text(spec)


def to_text(spec: GraphSpec) -> str:
    stages = registered_stages()
    lines = []
    for phase in PHASES:
        if not any(stages.get(n.type) is not None and stages[n.type].phase == phase for n in spec.nodes):
            continue
        lines.append(f"{phase}:")
        for node in spec.nodes:
            cls = stages.get(node.type)
            if cls is None or cls.phase != phase:
                continue
            wires = ", ".join(f"{port} ← {' + '.join(_refs(ref))}" for port, ref in node.inputs.items())
            lines.append(f"  {node.id:<10} {node.type:<28} {wires}")
    return "\n".join(lines)


def to_mermaid(spec: GraphSpec) -> str:
    stages = registered_stages()
    lines = ["flowchart LR"]
    for phase in PHASES:
        lines.append(f"  subgraph {phase}")
        for node in spec.nodes:
            cls = stages.get(node.type)
            if cls is not None and cls.phase == phase:
                lines.append(f'    {node.id}["{node.id}<br/><small>{node.type}</small>"]')
        lines.append("  end")
    for node in spec.nodes:
        for port, wired in node.inputs.items():
            for ref in _refs(wired):
                parts = split_ref(ref)
                if parts:
                    lines.append(f"  {parts[0]} -- {parts[1]} → {port} --> {node.id}")
    return "\n".join(lines)
