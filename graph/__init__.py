"""The stage graph: typed ports, the stage registry, graph specs, validation, ordering and the runner."""

from rollgraph.graph.errors import ConfigError, GraphError, Issue, RunError
from rollgraph.graph.ports import Port, PortType, port_type, register_port_type
from rollgraph.graph.registry import get_stage, register_stage, registered_stages
from rollgraph.graph.spec import GraphSpec, NodeSpec
from rollgraph.graph.stage import Stage, same_names

__all__ = [
    "ConfigError",
    "GraphError",
    "GraphSpec",
    "Issue",
    "NodeSpec",
    "Port",
    "PortType",
    "RunError",
    "Stage",
    "get_stage",
    "port_type",
    "register_port_type",
    "register_stage",
    "registered_stages",
    "same_names",
]
