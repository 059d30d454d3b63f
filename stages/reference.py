"""Generate the config and stage reference (Markdown) from the one schema and the one registry.

``python -m rollgraph.stages.reference`` prints it; the README embeds it between markers and a test keeps
the two in sync, so the documentation cannot drift from what the validator accepts.
"""

from __future__ import annotations

import json
import typing

from rollgraph.graph.registry import registered_stages
from rollgraph.stages.config import TrainConfig, config_sections
from rollgraph.stages.registered_name import name_choices

BEGIN, END = "<!-- reference:begin -->", "<!-- reference:end -->"


def _type_name(annotation) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in typing.get_args(annotation))
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return " \\| ".join(_type_name(a) for a in args) + " \\| null"
    if origin is not None:
        return getattr(origin, "__name__", str(origin))
    return getattr(annotation, "__name__", str(annotation))


def _range(field) -> str:
    bits = []
    for meta in field.metadata:
        for attr, sym in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            value = getattr(meta, attr, None)
            if value is not None:
                bits.append(f"{sym} {value}")
    return ", ".join(bits)


def config_reference() -> str:
    lines = []
    for title, names in config_sections():
        if names == ["graph"]:
            continue
        lines += [f"#### {title}", "", "| key | type | default | range | meaning |", "|---|---|---|---|---|"]
        for name in names:
            field = TrainConfig.model_fields[name]
            default = json.dumps(field.get_default(call_default_factory=True))
            desc = (field.description or "").replace("|", "\\|")
            choices = name_choices(field)
            kind = " \\| ".join(f"`{n}`" for n in choices) if choices is not None else _type_name(field.annotation)
            lines.append(f"| `{name}` | {kind} | `{default}` | {_range(field)} | {desc} |")
        lines.append("")
    return "\n".join(lines)


def stage_reference() -> str:
    lines = ["| type | phase | inputs | outputs | what it computes |", "|---|---|---|---|---|"]
    for tag, cls in registered_stages().items():
        if tag.startswith("test."):
            continue
        ins = ", ".join(f"`{p.name}`: {p.type}{'?' if p.optional else ''}{' (list)' if p.many else ''}" for p in cls.inputs)
        outs = ", ".join(f"`{p.name}`: {p.type}" for p in cls.outputs)
        summary = cls.summary().replace("|", "\\|")
        lines.append(f"| `{tag}` | {cls.phase} | {ins} | {outs} | {summary} |")
    return "\n".join(lines) + "\n"


def reference() -> str:
    return "\n".join([BEGIN, "", "### Config keys", "", config_reference(), "### Stages", "", stage_reference(), END])


if __name__ == "__main__":
    print(reference())
