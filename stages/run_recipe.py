"""What the trainer (graph/train.py, which knows no diffusion) runs for a TrainConfig: the compiled graph, the
validation sampler and the exposure-bias probe.

The hooks find their inputs by the graph's wiring, not by node ids: the trained model is the one the optimizer
node (the setup node that outputs an ``Optimizer``) reads; the schedule and the data are the setup nodes that
output a ``Schedule`` and a ``DataSource``. Renaming a node moves nothing.
"""

from __future__ import annotations

from rollgraph.graph import ConfigError, GraphSpec, Issue
from rollgraph.graph.hooks import Hook
from rollgraph.graph.spec import split_ref
from rollgraph.stages.default_graph import compile_graph
from rollgraph.stages.probe import ExposureBiasProbe, ProbeParams
from rollgraph.stages.sampling import ValidationParams, ValidationSampler


def producer(graph, port_type: str) -> str | None:
    """The one setup node with an output of ``port_type`` (None if there is none); two are an error."""
    found = [n.id for n in graph.setup for p in n.cls.outputs if p.type == port_type]
    if len(found) > 1:
        raise ConfigError([Issue("graph", f"several setup nodes give a {port_type} ({', '.join(found)}); the validation "
                                 "sampler and the probe need exactly one")])
    return found[0] if found else None


def trained_model(graph, optimizer: str | None) -> str | None:
    """The node whose Model the optimizer node reads."""
    node = next((n for n in graph.setup if n.id == optimizer), None)
    if node is None:
        return None
    refs = [split_ref(ref) for port, ref in node.spec.wires() if (p := node.cls.input_port(port)) and p.type == "Model"]
    return refs[0][0] if refs and refs[0] else None


class DiffusionRecipe:
    def __init__(self, cfg):
        self.cfg = cfg
        self.nodes: dict[str, str | None] = {}

    def graph(self) -> GraphSpec:
        return compile_graph(self.cfg)

    def wire(self, graph) -> dict[str, str | None]:
        if not self.nodes:
            optimizer = producer(graph, "Optimizer")
            self.nodes = {"model": trained_model(graph, optimizer), "schedule": producer(graph, "Schedule"),
                          "data": producer(graph, "DataSource"), "optimizer": optimizer}
        return self.nodes

    def sampler(self, graph) -> ValidationSampler | None:
        """Validation samples (every validation_steps, at the end, on request), when the graph trains a model."""
        n = self.wire(graph)
        if n["model"] is None or n["schedule"] is None:
            return None
        return ValidationSampler(ValidationParams(**{k: getattr(self.cfg, k) for k in ValidationParams.model_fields}),
                                 model_node=n["model"], schedule_node=n["schedule"], optimizer_node=n["optimizer"])

    def hooks(self, sampler) -> list[Hook]:
        """The other reporting hooks, run after the sampler's."""
        n = self.nodes
        if self.cfg.exposure_bias_probe_steps and sampler is not None and n.get("data") is not None:
            return [ExposureBiasProbe(ProbeParams(**{k: getattr(self.cfg, k) for k in ProbeParams.model_fields}),
                                      model_node=n["model"], schedule_node=n["schedule"], data_node=n["data"],
                                      optimizer_node=n["optimizer"])]
        return []
