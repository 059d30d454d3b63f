"""Render a graph spec as text, JSON or a Mermaid flowchart (ports on the edges)."""

from __future__ import annotations

import json

from rollgraph.graph.registry import registered_stages
from rollgraph.graph.spec import GraphSpec, split_ref


def render(spec: GraphSpec, fmt: str = "text") -> str:
    if fmt == "json":
        return json.dumps(spec.model_dump(), indent=1)
    if fmt == "mermaid":
        return to_mermaid(spec)
    return to_text(spec)


def to_text(spec: GraphSpec) -> str:
    stages = registered_stages()
    lines = []
    for phase in ("setup", "step"):
        lines.append(f"{phase}:")
        for node in spec.nodes:
            cls = stages.get(node.type)
            if cls is None or cls.phase != phase:
                continue
            wires = ", ".join(f"{port} ← {ref}" for port, ref in node.inputs.items())
            lines.append(f"  {node.id:<10} {node.type:<28} {wires}")
    return "\n".join(lines)


def to_mermaid(spec: GraphSpec) -> str:
    stages = registered_stages()
    lines = ["flowchart LR"]
    for phase in ("setup", "step"):
        lines.append(f"  subgraph {phase}")
        for node in spec.nodes:
            cls = stages.get(node.type)
            if cls is not None and cls.phase == phase:
                lines.append(f'    {node.id}["{node.id}<br/><small>{node.type}</small>"]')
        lines.append("  end")
    for node in spec.nodes:
        for port, ref in node.inputs.items():
            parts = split_ref(ref)
            if parts:
                lines.append(f"  {parts[0]} -- {parts[1]} → {port} --> {node.id}")
    return "\n".join(lines)
