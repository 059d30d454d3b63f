"""Typed ports: a port type is a name plus the Python type the value must be an instance of."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PortType:
    name: str
    py_type: type | tuple[type, ...]
    doc: str = ""


_PORT_TYPES: dict[str, PortType] = {}


def register_port_type(name: str, py_type: type | tuple[type, ...], doc: str = "") -> PortType:
    existing = _PORT_TYPES.get(name)
    if existing is not None and existing.py_type != py_type:
        raise ValueError(f"port type {name!r} is already registered with {existing.py_type!r}")
    _PORT_TYPES[name] = PortType(name, py_type, doc)
    return _PORT_TYPES[name]


def port_type(name: str) -> PortType:
    try:
        return _PORT_TYPES[name]
    except KeyError:
        raise KeyError(f"unknown port type {name!r}; known: {sorted(_PORT_TYPES)}") from None


def port_types() -> dict[str, PortType]:
    return dict(_PORT_TYPES)


register_port_type("Report", dict, "what an every-phase node reports: merged into that step's metrics")


@dataclass(frozen=True)
class Port:
    """A named, typed input or output of a stage. An optional input may be left unwired (it is then None).

    A ``many`` input takes a list of references (fan-in, e.g. the loss terms a sum adds); the stage receives
    the list of their values, in the order listed."""

    name: str
    type: str
    doc: str = ""
    optional: bool = False
    many: bool = False
