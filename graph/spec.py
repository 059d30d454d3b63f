"""Graph specs: pydantic nodes ``{id, type, params, inputs}``; ``inputs`` wires ``port <- "node.port"`` (a fan-in
port takes a list of references)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class NodeSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    type: str
    params: dict[str, Any] = Field(default_factory=dict)
    inputs: dict[str, str | list[str]] = Field(default_factory=dict, description='port name -> "source_node.port" (a list for a fan-in port)')

    def wires(self) -> list[tuple[str, str]]:
        """(input port, "node.port") for every reference, a fan-in port's list flattened."""
        return [(port, ref) for port, wired in self.inputs.items() for ref in ([wired] if isinstance(wired, str) else wired)]


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

    def upstream(self, node_ids: list[str]) -> GraphSpec:
        """The sub-graph that ``node_ids`` need: them and every node they read from, directly or not (a
        reference to an unknown node is left for validation to report)."""
        by_id = {n.id: n for n in self.nodes}
        keep, todo = set(node_ids), list(node_ids)
        while todo:
            node = by_id.get(todo.pop())
            for _, ref in node.wires() if node is not None else ():
                src = split_ref(ref)
                if src is not None and src[0] not in keep:
                    keep.add(src[0])
                    todo.append(src[0])
        return GraphSpec(nodes=[n for n in self.nodes if n.id in keep])


class GraphPatch(BaseModel):
    """The config's optional ``graph`` section, and the format of a recipe's fragments.

    ``include`` adds shipped fragments by name. Each entry of ``nodes`` either replaces the node with the
    same id (fields it leaves out keep the replaced node's values; a new ``type`` starts from empty params)
    or, with a new id, inserts a node. ``remove`` drops nodes by id. Rewire a consumer by listing it with new
    ``inputs``. ``extend`` appends references to a fan-in input (``{"total.terms": ["tv.loss"]}``: one more
    loss term, none disconnected). ``set`` assigns node params (``{"rollout.scheduled_sampling_sampler":
    "euler"}``, what ``--set NODE.PARAM=VALUE`` writes).
    """

    model_config = ConfigDict(extra="forbid")

    include: list[str] = Field(default_factory=list)
    nodes: list[dict[str, Any]] = Field(default_factory=list)
    remove: list[str] = Field(default_factory=list)
    extend: dict[str, list[str]] = Field(default_factory=dict)
    set: dict[str, Any] = Field(default_factory=dict)


def split_ref(ref: str) -> tuple[str, str] | None:
    """'node.port' -> ('node', 'port'); None when malformed."""
    node, sep, port = ref.partition(".")
    if not sep or not node or not port:
        return None
    return node, port
