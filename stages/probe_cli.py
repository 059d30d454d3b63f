"""``rollgraph probe RUN_DIR``: measure the exposure bias of any checkpoint of a run, printed as one JSON object.

The run's own graph is compiled from its config.json and only its setup phase runs (data, schedule, model,
optimizer: no training step); the checkpoint's state is loaded into it as a resume would, the EMA weights are
swapped in when the run keeps them, and ``probe_model`` measures (stages/probe.py), on the last
``--samples`` samples of the run's data source, with the run's seed.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from pydantic import ValidationError
from rollgraph.graph.checkpoint import find_checkpoint, load_checkpoint
from rollgraph.graph.context import RunContext, resolve_device
from rollgraph.graph.errors import ConfigError, Issue
from rollgraph.graph.runner import Runner
from rollgraph.graph.validate import validate_graph
from rollgraph.stages.config import build_config
from rollgraph.stages.probe import ProbeParams, probe_model
from rollgraph.stages.run_recipe import DiffusionRecipe
from rollgraph.stages.solvers import SOLVERS

# CLI flag -> ProbeParams field
FLAGS = {"start_level": "exposure_bias_probe_start_level", "steps": "exposure_bias_probe_num_steps",
         "sampler": "exposure_bias_probe_sampler", "samples": "exposure_bias_probe_samples",
         "projections": "exposure_bias_probe_projections", "batch_size": "exposure_bias_probe_batch_size"}


def probe_params(cfg, overrides: dict) -> ProbeParams:
    """The run's probe settings with the command line's overrides; a bad value is exit 2 naming the flag."""
    values = {k: getattr(cfg, k) for k in ProbeParams.model_fields}
    values.update({FLAGS[k]: v for k, v in overrides.items() if v is not None})
    try:
        return ProbeParams(**values)
    except ValidationError as err:
        flag_of = {v: k for k, v in FLAGS.items()}
        raise ConfigError([Issue("--" + flag_of.get(str(e["loc"][0]), str(e["loc"][0])).replace("_", "-"),
                                 f"{e['msg']} (got {e.get('input')!r})") for e in err.errors()]) from None


def probe_run(run_dir: Path, checkpoint: str = "latest", **overrides) -> dict:
    config_path = run_dir / "config.json"
    if not config_path.exists():
        raise ConfigError([Issue(str(run_dir), "not a run folder (no config.json)")])
    cfg = build_config(json.loads(config_path.read_text()))
    params = probe_params(cfg, overrides)
    ckpt = find_checkpoint(run_dir, checkpoint, "--checkpoint")
    recipe = DiffusionRecipe(cfg)
    graph = validate_graph(recipe.graph())
    nodes = recipe.wire(graph)  # the trained model, schedule, data and optimizer, found by the wiring
    ctx = RunContext(config=cfg, device=resolve_device(cfg.device), seed=cfg.seed)
    if ctx.device.type == "cuda" and cfg.mixed_precision in ("auto", "bf16"):
        ctx.autocast_dtype = torch.bfloat16
    runner = Runner(graph, ctx)
    runner.setup()
    step = load_checkpoint(ckpt, runner.checkpointables())["step"]
    bundle = runner.values.get((nodes["optimizer"], "optimizer"))
    ema = getattr(bundle, "ema", None) is not None
    if ema:
        bundle.swap_ema()
    result = probe_model(runner.value(nodes["model"], "model"), runner.value(nodes["schedule"], "schedule"),
                         runner.value(nodes["data"], "data"), params, ctx)
    return {"run": str(run_dir), "checkpoint": str(ckpt), "step": step, "ema": ema,
            "sampler": params.exposure_bias_probe_sampler, "start_level": params.exposure_bias_probe_start_level,
            "num_steps": params.exposure_bias_probe_num_steps, **result.to_json()}


def configure(p) -> None:
    """The ``rollgraph probe`` arguments."""
    p.add_argument("run_dir", help="a run folder (holds config.json and checkpoints/)")
    p.add_argument("--checkpoint", default="latest", help="latest, a step-N name or a step-N folder path")
    p.add_argument("--start-level", type=float, default=None, help="grid coordinate u in (0, 1] to start from (default 0.6)")
    p.add_argument("--steps", type=int, default=None, help="solver steps from the start level to clean data (default 12)")
    p.add_argument("--sampler", default=None, help=f"{' | '.join(SOLVERS)} (default unipc)")
    p.add_argument("--samples", type=int, default=None,
                   help="last N samples of the run's data: half generated from, half the reference (default 256)")
    p.add_argument("--projections", type=int, default=None, help="random directions of the sliced Wasserstein distance (default 128)")
    p.add_argument("--batch-size", type=int, default=None, help="samples per model call (default 64)")


def cmd_probe(args, console) -> int:
    overrides = {k: getattr(args, k) for k in FLAGS}
    print(json.dumps(probe_run(Path(args.run_dir), args.checkpoint, **overrides)))
    return 0


DESCRIPTION = ("Forward-noise held-out data to --start-level, sample --steps solver steps down to clean data with the "
               "checkpoint's model (EMA weights when the run keeps them), and compare the generated set with the forward "
               "process at every level: variance_error, swd, swd_floor (stages/probe.py). Defaults: the run's "
               "exposure_bias_probe_* settings.")
