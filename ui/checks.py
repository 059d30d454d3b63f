"""Validate a config the way ``rollgraph validate`` does, returning every problem tied to a form field.

The config is checked by the same code the CLI uses (``build_config``: the pydantic schema and its cross
checks), then compiled and its graph validated (``compile_graph`` + ``validate_graph``). Each problem
names its key path; ``field`` is the top-level config key whose form widget shows it.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from rollgraph.graph.errors import ConfigError, GraphError
from rollgraph.graph.spec import GraphSpec
from rollgraph.graph.validate import validate_graph
from rollgraph.stages.config import TrainConfig, build_config
from rollgraph.stages.default_graph import compile_graph


@dataclass(frozen=True)
class Problem:
    key: str  # the key path or "graph node X" the message belongs to
    message: str
    fields: tuple[str, ...] = ()  # top-level config keys whose widgets show it
    node: str | None = None  # the graph node it concerns, for the graph picture

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class CheckResult:
    problems: list[Problem]
    config: TrainConfig | None = None
    graph: GraphSpec | None = None

    @property
    def valid(self) -> bool:
        return not self.problems

    def by_field(self) -> dict[str, list[Problem]]:
        out: dict[str, list[Problem]] = {}
        for p in self.problems:
            for f in p.fields:
                out.setdefault(f, []).append(p)
        return out

    def by_node(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for p in self.problems:
            if p.node:
                out.setdefault(p.node, []).append(p.message)
        return out

    def summary(self) -> dict[str, Any]:
        return {"valid": self.valid, "problems": [{"key": p.key, "message": p.message} for p in self.problems]}


def _fields_of(key: str, message: str) -> tuple[str, ...]:
    top = key.split(".", 1)[0]
    if top in TrainConfig.model_fields:
        return (top,)
    # a cross-key check ("config: x=true needs y=z"): show it at every key it names
    named = [f for f in TrainConfig.model_fields if re.search(rf"\b{re.escape(f)}\b", message)]
    return tuple(named)


def config_problems(err: ConfigError) -> list[Problem]:
    return [Problem(i.where if not i.field else f"{i.where}.{i.field}", i.message, _fields_of(i.where, i.message))
            for i in err.issues]


def graph_problems(err: GraphError) -> list[Problem]:
    out = []
    for i in err.issues:
        where = f"graph node {i.where}" + (f" ({i.field})" if i.field else "")
        out.append(Problem(where, i.message, ("graph",), node=i.where))
    return out


def check_config(data: dict[str, Any]) -> CheckResult:
    """Every problem of a config dict (keys starting with '_' are comments and ignored)."""
    clean = {k: v for k, v in data.items() if not str(k).startswith("_")}
    try:
        cfg = build_config(clean)
    except ConfigError as err:
        return CheckResult(config_problems(err))
    try:
        spec = compile_graph(cfg)
    except ConfigError as err:
        return CheckResult(config_problems(err), cfg)
    try:
        validate_graph(spec)
    except GraphError as err:
        return CheckResult(graph_problems(err), cfg, spec)
    return CheckResult([], cfg, spec)
