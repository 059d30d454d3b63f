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
    import rollgraph.graph.checkpoint_stage  # noqa: F401  (the engine's own stage)

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


class Registry(dict):
    """name -> object for one kind (model families, solvers, ...): the built-ins register in code, third parties
    through the entry-point group ``group`` (entry-point name = registered name). Reading it loads those entry
    points first; ``lookup`` raises KeyError with a did-you-mean."""

    def __init__(self, kind: str, group: str):
        super().__init__()
        self.kind, self.group = kind, group
        self._loaded = False

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for ep in entry_points(group=self.group):
            obj = ep.load()
            if not isinstance(obj, ModuleType):  # a module registers its objects when imported
                dict.setdefault(self, ep.name, obj)

    def lookup(self, name: str):
        self._load()
        if dict.__contains__(self, name):
            return dict.__getitem__(self, name)
        raise KeyError(f"unknown {self.kind} {name!r}{did_you_mean(name, self)}; known: {', '.join(self)}")

    def __getitem__(self, name):
        self._load()
        return dict.__getitem__(self, name)

    def __contains__(self, name) -> bool:
        self._load()
        return dict.__contains__(self, name)

    def __iter__(self):
        self._load()
        return dict.__iter__(self)

    def __len__(self) -> int:
        self._load()
        return dict.__len__(self)

    def get(self, name, default=None):
        self._load()
        return dict.get(self, name, default)

    def keys(self):
        self._load()
        return dict.keys(self)

    def values(self):
        self._load()
        return dict.values(self)

    def items(self):
        self._load()
        return dict.items(self)
