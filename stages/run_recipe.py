"""What the trainer (graph/train.py, which knows no diffusion) runs for a TrainConfig: the compiled graph. Its
every-phase nodes (samples, probe, checkpoints) are part of the recipe (stages/recipes/base.json), wired by ports."""

from __future__ import annotations

from rollgraph.graph import GraphSpec
from rollgraph.stages.default_graph import compile_graph


class DiffusionRecipe:
    def __init__(self, cfg):
        self.cfg = cfg

    def graph(self) -> GraphSpec:
        return compile_graph(self.cfg)
