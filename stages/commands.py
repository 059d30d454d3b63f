"""The training commands of ``rollgraph`` (run, validate, graph, sample, probe, export-lora, presets), registered into the engine's
command line through the ``rollgraph.commands`` entry point (graph/commands.py).

CONFIG is a JSON file or a shipped preset name. Every config key is also a flag in the seed's spelling
(``--prediction_type flow_matching``, ``--scheduled_sampling_reflexflow=false``), generated from the
config schema; ``--set KEY=VALUE`` sets a key, ``--set NODE.PARAM=VALUE`` a node's param.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from rich.console import Console
from rollgraph.graph.checkpoint import find_checkpoint
from rollgraph.graph.cli import EXIT_INVALID, EXIT_OK, _run_args
from rollgraph.graph.commands import Command
from rollgraph.graph.context import resolve_device
from rollgraph.graph.distributed import launch_local, launched_rank, launched_world_size
from rollgraph.graph.errors import ConfigError, GraphError, Issue
from rollgraph.graph.render import ordered, render
from rollgraph.graph.run_folder import describe_status, holds_run, prepare_output_dir
from rollgraph.graph.train import Trainer
from rollgraph.graph.validate import validate_graph
from rollgraph.stages import lora_export, probe_cli
from rollgraph.stages.config import (
    PRESETS_DIR,
    TrainConfig,
    config_sections,
    list_presets,
    load_config,
    parse_value,
    read_config_file,
)
from rollgraph.stages.default_graph import compile_graph
from rollgraph.stages.preflight import check_preflight
from rollgraph.stages.registered_name import name_choices
from rollgraph.stages.sample_cli import add_sample_flags, sample_run


def _key_help(name: str, field) -> str:
    parts = [field.description or ""]
    default = field.get_default(call_default_factory=True)
    if default is not None and name != "graph":
        parts.append(f"(default: {json.dumps(default)})")
    if (names := name_choices(field)) is not None:
        parts.append(f"[one of: {', '.join(names)}]")
    for meta in field.metadata:
        for attr, sym in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            if getattr(meta, attr, None) is not None:
                parts.append(f"[{sym} {getattr(meta, attr)}]")
    return " ".join(p for p in parts if p).replace("%", "%%")


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="config.json path or preset name (see `rollgraph presets`)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, or a node's param with NODE.PARAM=VALUE (repeatable)")
    for title, names in config_sections():
        group = parser.add_argument_group(title)
        for name in names:
            group.add_argument(f"--{name}", dest=f"cfg__{name}", metavar="VALUE", default=argparse.SUPPRESS,
                               help=_key_help(name, TrainConfig.model_fields[name]))


def _overrides(args) -> dict:
    """Config keys from ``--set KEY=VALUE`` and ``--<key> VALUE``; ``--set NODE.PARAM=VALUE`` (a dotted key) goes
    to the graph section's ``set`` and reaches any node's param, plugins' included."""
    out: dict = {}
    node_params: dict = {}
    issues = []
    for item in args.sets:
        key, sep, value = item.partition("=")
        if not sep:
            issues.append(Issue("--set", f"{item!r} is not KEY=VALUE or NODE.PARAM=VALUE"))
            continue
        (node_params if "." in key else out)[key.strip()] = parse_value(value)
    for name, value in vars(args).items():
        if name.startswith("cfg__"):
            out[name[5:]] = parse_value(value)
    if issues:
        raise ConfigError(issues)
    if node_params:
        out["graph.set"] = node_params
    return out


def _load(args):
    return load_config(args.config, _overrides(args))


def _preflight(cfg):
    """What validate and run both check before training (exit 2): the graph, then the files it will open
    (model folder, image folders). Returns the validated graph."""
    graph = validate_graph(compile_graph(cfg))
    check_preflight(cfg)
    return graph


def cmd_validate(args, console: Console) -> int:
    cfg = _load(args)
    graph = _preflight(cfg)
    console.print(f"[green]valid[/]: {len(graph.setup)} setup, {len(graph.step)} step and {len(graph.update)} update stages: "
                  + " → ".join(n.id for n in graph.step))
    if holds_run(Path(cfg.output_dir)):
        console.print(f"note: output_dir {cfg.output_dir} already holds a run ({describe_status(Path(cfg.output_dir))}): "
                      "`run` needs --resume latest to continue it, or --overwrite to start over")
    return EXIT_OK


def cmd_graph(args, console: Console) -> int:
    cfg = _load(args)
    spec = compile_graph(cfg)
    print(render(ordered(spec, validate_graph(spec)), args.format))
    return EXIT_OK


def _launch(args, console: Console) -> int:
    """``--num-processes N``: check the config here (exit 2 before starting anything), then run N processes."""
    cfg = _load(args)
    _preflight(cfg)
    device = resolve_device(cfg.device)
    if device.type == "cuda" and args.num_processes > torch.cuda.device_count():
        raise ConfigError([Issue("--num-processes", f"{args.num_processes} processes need {args.num_processes} GPUs "
                                 f"(one each); this machine has {torch.cuda.device_count()}")])
    if device.type not in ("cpu", "cuda"):
        raise ConfigError([Issue("--num-processes", f"several processes need CUDA or the CPU, not {device.type}")])
    _claim_output_dir(args, cfg, console)  # before find_checkpoint, which tidies the folder: refuses a live run
    if args.resume:
        find_checkpoint(Path(cfg.output_dir), args.resume)
    console.print(f"starting {args.num_processes} processes on {device.type} (torch.distributed.run)")
    return launch_local(args.num_processes, _run_args(args), Path(cfg.output_dir))


def _claim_output_dir(args, cfg, console: Console) -> None:
    """Refuse to start into a folder holding another run; with --overwrite move that run aside first."""
    moved = prepare_output_dir(Path(cfg.output_dir), args.resume, args.overwrite)
    if moved is not None:
        console.print(f"--overwrite: the previous run in {cfg.output_dir} was moved to {moved}")


def cmd_run(args, console: Console) -> int:
    if args.num_processes > 1 and launched_world_size() == 1:
        return _launch(args, console)
    try:
        cfg = _load(args)
        _preflight(cfg)
        if launched_rank() == 0:  # before the Trainer, whose find_checkpoint tidies the folder: refuses a live run
            _claim_output_dir(args, cfg, console)
        out = Trainer(cfg, resume=args.resume, stop_at_step=args.stop_at_step).run()
    except (ConfigError, GraphError):
        if launched_rank() == 0:
            raise
        return EXIT_INVALID  # the same on every rank: rank 0 reports it
    if launched_rank() == 0:
        console.print(f"run folder: {out}")
    return EXIT_OK


def cmd_sample(args, console: Console) -> int:
    paths = sample_run(Path(args.run_dir), args.checkpoint, args.num, args.steps, args.seed, Path(args.out), args.sampler)
    for p in paths:
        console.print(f"wrote {p}")
    return EXIT_OK


def cmd_presets(args, console: Console) -> int:
    for name in list_presets():
        data = read_config_file(PRESETS_DIR / f"{name}.json")
        console.print(f"[bold]{name}[/]  {data.get('_description', '')}")
    return EXIT_OK


def _configure_run(p: argparse.ArgumentParser) -> None:
    _add_config_flags(p)
    p.add_argument("--resume", metavar="latest|step-N|PATH",
                   help="continue from the latest checkpoint in output_dir, from output_dir/checkpoints/step-N, or a checkpoint folder")
    p.add_argument("--overwrite", action="store_true",
                   help="output_dir holds a finished, stopped or dead run: move it aside to a sibling folder "
                        "(NAME.replaced-DATE-TIME, nothing deleted) and start over")
    p.add_argument("--stop-at-step", type=int, default=None, metavar="N",
                   help="end this run at step N with a checkpoint (status stopped), keeping max_train_steps and so the "
                        "LR schedule of the whole run; resume later to continue")
    p.add_argument("--num-processes", type=int, default=1, metavar="N",
                   help="train data-parallel in N local processes (one GPU each, or CPU); the global batch is "
                        "train_batch_size × N. Under torchrun / accelerate launch this flag is not needed")


def _configure_graph(p: argparse.ArgumentParser) -> None:
    _add_config_flags(p)
    p.add_argument("--format", choices=["text", "json", "mermaid"], default="text")


def _configure_sample(p: argparse.ArgumentParser) -> None:
    add_sample_flags(p)


COMMANDS = [
    Command("run", "train", cmd_run, _configure_run, order=10, needs_config=True,
            parser_kwargs={"formatter_class": argparse.RawDescriptionHelpFormatter}),
    Command("validate", "check a config and its graph; exit 2 listing every fault", cmd_validate, _add_config_flags,
            order=20, needs_config=True),
    Command("graph", "print the compiled recipe (the whole stage graph) in execution order", cmd_graph, _configure_graph,
            order=30, needs_config=True),
    Command("sample", "generate images from a run's checkpoint", cmd_sample, _configure_sample, order=40),
    Command("probe", "measure the exposure bias of a run's checkpoint; prints one JSON object", probe_cli.cmd_probe,
            probe_cli.configure, order=45, parser_kwargs={"description": probe_cli.DESCRIPTION}),
    Command("export-lora", "write a checkpoint's LoRA in kohya / comfyui naming (see lora_format)", lora_export.run_command,
            lora_export.configure, order=48),
    Command("presets", "list the shipped presets", cmd_presets, order=50),
]
