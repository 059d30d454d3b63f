"""A node's params as form rows, from its stage's pydantic ``Params`` model: name, type, default, the value
the compiled node has, the flat key it binds, and the description; and a typed value read back from text."""

from __future__ import annotations

import json
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

from pydantic_core import PydanticUndefined
from rollgraph.graph.stage import Stage
from rollgraph.stages.registered_name import name_choices

COLUMNS = ["param", "type", "default", "value now", "flat key", "description"]


def type_name(annotation: Any) -> str:
    """``Literal['a', 'b']`` -> "a | b", ``int | None`` -> "int | None", ``float`` -> "float"."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return " | ".join(json.dumps(a) if not isinstance(a, str) else a for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return "None"
    if isinstance(annotation, type) and origin is None:
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def shown(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


@dataclass(frozen=True)
class ParamRow:
    name: str
    type: str
    default: str
    now: str
    flat_key: str
    description: str

    def as_list(self) -> list[str]:
        return [self.name, self.type, self.default, self.now, self.flat_key, self.description]


def param_rows(cls: type[Stage], values: dict[str, Any]) -> list[ParamRow]:
    """One row per field of ``cls.Params``; ``values`` are the compiled node's params."""
    binds = cls.bindings()
    rows = []
    for name, info in cls.Params.model_fields.items():
        default = "(required)" if info.default is PydanticUndefined and info.default_factory is None else shown(info.get_default(call_default_factory=True))
        registered = name_choices(info)  # a registry's names (solvers, plugins' included) as of now
        kind = " | ".join(registered) if registered is not None else type_name(info.annotation)
        rows.append(ParamRow(name, kind, default, shown(values[name]) if name in values else "",
                             binds.get(name, ""), info.description or ""))
    return rows


def _accepts_str(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if annotation is str:
        return True
    if origin is Literal:
        return all(isinstance(a, str) for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return any(_accepts_str(a) for a in typing.get_args(annotation) if a is not type(None))
    return False


def parse_value(cls: type[Stage], param: str, text: str) -> Any:
    """The value typed as ``text`` for ``param``: JSON (numbers, true/false, null, lists), except that a
    string param takes the text as it is. A value of the wrong type is left for validation to name."""
    text = (text or "").strip()
    info = cls.Params.model_fields.get(param)
    if info is not None and _accepts_str(info.annotation) and not (text == "null" or text.startswith(("[", "{", '"'))):
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text
