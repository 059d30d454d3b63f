"""What the trainer (graph/train.py, which knows no diffusion) runs for a TrainConfig: the compiled graph, the
validation sampler and the exposure-bias probe."""

from __future__ import annotations

from rollgraph.graph import GraphSpec
from rollgraph.graph.hooks import Hook
from rollgraph.stages.default_graph import compile_graph
from rollgraph.stages.probe import ExposureBiasProbe, ProbeParams
from rollgraph.stages.sampling import ValidationParams, ValidationSampler


class DiffusionRecipe:
    def __init__(self, cfg):
        self.cfg = cfg

    def graph(self) -> GraphSpec:
        return compile_graph(self.cfg)

    def sampler(self, graph) -> ValidationSampler | None:
        """Validation samples (every validation_steps, at the end, on request), when the graph has a model."""
        if not any(n.id == "model" for n in graph.setup):
            return None
        return ValidationSampler(ValidationParams(**{k: getattr(self.cfg, k) for k in ValidationParams.model_fields}))

    def hooks(self, sampler) -> list[Hook]:
        """The other reporting hooks, run after the sampler's."""
        if self.cfg.exposure_bias_probe_steps and sampler is not None:
            return [ExposureBiasProbe(ProbeParams(**{k: getattr(self.cfg, k) for k in ProbeParams.model_fields}))]
        return []
