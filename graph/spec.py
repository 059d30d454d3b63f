"""Graph specs: pydantic nodes ``{id, type, params, inputs}``; ``inputs`` wires ``port <- "node.port"``."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class NodeSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    type: str
    params: dict[str, Any] = Field(default_factory=dict)
    inputs: dict[str, str] = Field(default_factory=dict, description='port name -> "source_node.port"')


class GraphSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    nodes: list[NodeSpec]

    def node(self, node_id: str) -> NodeSpec:
        for node in self.nodes:
            if node.id == node_id:
                return node
        raise KeyError(node_id)

    def ids(self) -> list[str]:
        return [n.id for n in self.nodes]


class GraphPatch(BaseModel):
    """The config's optional ``graph`` section.

    Each entry of ``nodes`` either replaces the node with the same id (fields it leaves out keep the
    replaced node's values; a new ``type`` starts from empty params) or, with a new id, inserts a node.
    ``remove`` drops nodes by id. Rewire a consumer by listing it with new ``inputs``.
    """

    model_config = ConfigDict(extra="forbid")

    nodes: list[dict[str, Any]] = Field(default_factory=list)
    remove: list[str] = Field(default_factory=list)


def split_ref(ref: str) -> tuple[str, str] | None:
    """'node.port' -> ('node', 'port'); None when malformed."""
    node, sep, port = ref.partition(".")
    if not sep or not node or not port:
        return None
    return node, port
