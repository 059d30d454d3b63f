"""The stage registry: maps a ``type`` tag to its class. Built-ins register on import; third-party
packages register through the ``rollgraph.stages`` entry-point group (never through an import path
written in a preset, so a preset cannot make us import arbitrary code)."""

from __future__ import annotations

import difflib
from importlib.metadata import entry_points
from types import ModuleType

from rollgraph.graph.stage import Stage

ENTRY_POINT_GROUP = "rollgraph.stages"

_REGISTRY: dict[str, type[Stage]] = {}
_entry_points_loaded = False


def register_stage(cls: type[Stage]) -> type[Stage]:
    """Class decorator: add a stage class under its ``type`` tag."""
    if not cls.type:
        raise ValueError(f"{cls.__name__} has no `type` tag")
    existing = _REGISTRY.get(cls.type)
    if existing is not None and existing is not cls:
        raise ValueError(f"stage type {cls.type!r} is registered twice ({existing.__name__}, {cls.__name__})")
    _REGISTRY[cls.type] = cls
    return cls


def _load_entry_points() -> None:
    """Load the ``rollgraph.stages`` entry points: a stage class, a list of them, or a module whose import
    registers its stages (the built-ins are the entry point ``builtin = rollgraph.stages``)."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        obj = ep.load()
        if isinstance(obj, ModuleType):
            continue  # importing it registered its stages
        classes = obj if isinstance(obj, (list, tuple)) else [obj]
        for cls in classes:
            register_stage(cls)


def registered_stages() -> dict[str, type[Stage]]:
    _load_entry_points()
    return dict(sorted(_REGISTRY.items()))


def get_stage(type_tag: str) -> type[Stage]:
    stages = registered_stages()
    if type_tag in stages:
        return stages[type_tag]
    close = difflib.get_close_matches(type_tag, stages, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise KeyError(f"unknown stage type {type_tag!r}{hint}")


def did_you_mean(name: str, choices) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
