"""``rollgraph probe RUN_DIR``: measure the exposure bias of any checkpoint of a run, printed as one JSON object.

The run's own graph is compiled from its config.json; its probe node runs once from the checkpoint, after the
setup phase it needs (data, schedule, model, optimizer: no training step; see stages/offline.py). It swaps in
the EMA weights when the run keeps them and measures (``probe_model``, stages/probe.py) on the last ``--samples``
samples of the run's data source, with the run's seed.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import ValidationError
from rollgraph.graph.checkpoint import find_checkpoint
from rollgraph.graph.errors import ConfigError, Issue
from rollgraph.graph.spec import split_ref
from rollgraph.stages.default_graph import compile_graph
from rollgraph.stages.offline import node_of_type, run_config, run_node
from rollgraph.stages.probe import ProbeParams
from rollgraph.stages.solvers import SOLVERS

# CLI flag -> ProbeParams field
FLAGS = {"start_level": "exposure_bias_probe_start_level", "steps": "exposure_bias_probe_num_steps",
         "sampler": "exposure_bias_probe_sampler", "samples": "exposure_bias_probe_samples",
         "projections": "exposure_bias_probe_projections", "batch_size": "exposure_bias_probe_batch_size"}


def probe_params(values: dict, overrides: dict) -> ProbeParams:
    """The run's probe settings with the command line's overrides; a bad value is exit 2 naming the flag."""
    values = dict(values)
    values.update({FLAGS[k]: v for k, v in overrides.items() if v is not None})
    try:
        return ProbeParams(**values)
    except ValidationError as err:
        flag_of = {v: k for k, v in FLAGS.items()}
        raise ConfigError([Issue("--" + flag_of.get(str(e["loc"][0]), str(e["loc"][0])).replace("_", "-"),
                                 f"{e['msg']} (got {e.get('input')!r})") for e in err.errors()]) from None


def probe_run(run_dir: Path, checkpoint: str = "latest", **overrides) -> dict:
    """Run the run graph's ``probe.exposure_bias`` node from ``checkpoint``, the flags overriding its params."""
    cfg = run_config(run_dir)
    spec = compile_graph(cfg)
    probe = node_of_type(spec, "probe.exposure_bias", run_dir)
    node = spec.node(probe)
    params = probe_params({**{k: getattr(cfg, k) for k in ProbeParams.model_fields}, **node.params}, overrides)
    ckpt = find_checkpoint(run_dir, checkpoint, "--checkpoint")
    node.params = params.model_dump()
    runner, _, step = run_node(cfg, spec, probe, ckpt)
    result = runner.value(probe, "result")
    optimizer = next((ref for port, ref in node.wires() if port == "optimizer"), None)
    ema = optimizer is not None and getattr(runner.value(*split_ref(optimizer)), "ema", None) is not None
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
