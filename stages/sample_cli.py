"""``rollgraph sample``: the run's setup phase from a checkpoint plus its sample node; PNGs plus samples.safetensors.

Everything that can be wrong with the command line (not a run folder, no such checkpoint, an unknown sampler)
is reported before the model is loaded, as exit 2. ``samples.safetensors`` holds ``samples`` (N, C, H, W) in
[-1, 1], ``class_labels`` (N,) when the model is class-conditional, and in its metadata the ``prompts`` (a JSON
list, text-to-image families), ``checkpoint``, ``sampler``, ``steps`` and ``seed``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rollgraph.graph.checkpoint import find_checkpoint
from rollgraph.graph.errors import ConfigError, Issue
from rollgraph.graph.registry import did_you_mean
from rollgraph.graph.spec import NodeSpec
from rollgraph.stages.default_graph import compile_graph
from rollgraph.stages.offline import free_id, node_of_type, run_config, run_node
from rollgraph.stages.solvers import SOLVERS


def add_sample_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a run folder (the output_dir of `rollgraph run`, holding config.json and checkpoints/)")
    p.add_argument("--checkpoint", default="latest", metavar="latest|step-N|PATH",
                   help="which checkpoint: latest, a name in RUN_DIR/checkpoints (step-400, or just 400), or a "
                        "checkpoint folder's path (default: latest)")
    p.add_argument("--num", type=int, default=20, metavar="N", help="how many images (default: 20)")
    p.add_argument("--steps", type=int, default=20, metavar="S", help="sampler steps per image (default: 20)")
    p.add_argument("--seed", type=int, default=0, help="seed of the starting noise (default: 0)")
    p.add_argument("--sampler", default=None, metavar="NAME",
                   help=f"solver: {' | '.join(SOLVERS)} (default: the run's validation_sampler)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="folder for sample-NNNN.png, grid.png and samples.safetensors (created if needed)")


def check_sampler(name: str | None) -> None:
    if name is not None and name not in SOLVERS:
        raise ConfigError([Issue("--sampler", f"unknown sampler {name!r}{did_you_mean(name, SOLVERS)}; known: {', '.join(SOLVERS)}")])


def sample_run(run_dir: Path, checkpoint: str, num: int, steps: int, seed: int, out: Path, sampler: str | None = None) -> list[Path]:
    """Run the run graph's ``sample.generate`` node from ``checkpoint`` with the flags as its params, into a
    ``sample.export`` node writing ``out``; return the files written."""
    check_sampler(sampler)
    for flag, value in (("--num", num), ("--steps", steps)):
        if value < 1:
            raise ConfigError([Issue(flag, f"must be at least 1 (got {value})")])
    cfg = run_config(run_dir)
    ckpt = find_checkpoint(run_dir, checkpoint, "--checkpoint")
    spec = compile_graph(cfg)
    generator = node_of_type(spec, "sample.generate", run_dir)
    export = free_id(spec, "export")
    node = spec.node(generator)
    node.params.update({"validation_num_images": num, "validation_num_inference_steps": steps, "seed": seed,
                        **({"validation_sampler": sampler} if sampler else {})})
    spec.nodes.append(NodeSpec(id=export, type="sample.export", inputs={"samples": f"{generator}.samples"},
                               params={"out": str(out), "metadata": {"checkpoint": str(ckpt)}}))
    run_node(cfg, spec, export, ckpt)
    return [*(out / f"sample-{i:04d}.png" for i in range(num)), out / "grid.png", out / "samples.safetensors"]
