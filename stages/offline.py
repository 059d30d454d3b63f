"""Run one every-phase node of a run's graph from a checkpoint, outside training: what ``rollgraph sample`` and
``rollgraph probe`` do.

The run's graph is compiled from its config.json, patched by the command (its flags become node params), and cut
down to the node and what it reads (``GraphSpec.upstream``): the every nodes before it and the setup nodes they
need, no training step. The setup phase runs, the checkpoint's state is loaded into it as a resume would, and
the node runs once (with ``ctx.triggers = {"request"}``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from rollgraph.graph import ConfigError, GraphSpec, Issue
from rollgraph.graph.checkpoint import load_checkpoint
from rollgraph.graph.context import RunContext, resolve_device
from rollgraph.graph.runner import Runner
from rollgraph.graph.validate import validate_graph
from rollgraph.stages.config import TrainConfig, build_config


def run_config(run_dir: Path) -> TrainConfig:
    config_path = run_dir / "config.json"
    if not config_path.exists():
        raise ConfigError([Issue(str(run_dir), "not a run folder (no config.json)")])
    return build_config(json.loads(config_path.read_text()))


def node_of_type(spec: GraphSpec, stage_type: str, run_dir: Path) -> str:
    """The id of the run graph's one node of ``stage_type``."""
    found = [n.id for n in spec.nodes if n.type == stage_type]
    if len(found) != 1:
        what = "no" if not found else f"{len(found)} ({', '.join(found)})"
        raise ConfigError([Issue(str(run_dir), f"the run's graph has {what} {stage_type!r} node(s); this command needs exactly one")])
    return found[0]


def free_id(spec: GraphSpec, wanted: str) -> str:
    ids, name, n = set(spec.ids()), wanted, 1
    while name in ids:
        n += 1
        name = f"{wanted}{n}"
    return name


def run_node(cfg: TrainConfig, spec: GraphSpec, node_id: str, checkpoint: Path) -> tuple[Runner, dict, int]:
    """Set up ``spec.upstream([node_id])``, load ``checkpoint`` into it, run the node; (runner, its report, step).
    The node's outputs stay in ``runner.values``."""
    graph = validate_graph(spec.upstream([node_id]))
    ctx = RunContext(config=cfg, device=resolve_device(cfg.device), seed=cfg.seed)
    if ctx.device.type == "cuda" and cfg.mixed_precision in ("auto", "bf16"):
        ctx.autocast_dtype = torch.bfloat16
    torch.manual_seed(0)  # the setup's initial weights are overwritten by the checkpoint; fixed for repeatability
    runner = Runner(graph, ctx)
    runner.setup()
    ctx.step = load_checkpoint(checkpoint, runner.checkpointables())["step"]
    report = runner.run_every({node_id: frozenset({"request"})}, keep=True)
    return runner, report, ctx.step

