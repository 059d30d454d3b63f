"""The ``rollgraph`` command line.

    rollgraph run CONFIG [--set key=value ...] [--resume latest|PATH] [--num-processes N] [--<config key> VALUE ...]
    rollgraph validate CONFIG [...same overrides]
    rollgraph graph CONFIG [--format text|json|mermaid]
    rollgraph probe RUN_DIR [--checkpoint latest|step-N] [--start-level U] [--steps K] [--sampler NAME]
    rollgraph sample RUN_DIR [--checkpoint latest|PATH] --num N --steps S --seed S --out DIR [--sampler NAME]
    rollgraph export-lora CHECKPOINT --format diffusers|kohya|comfyui [--out FILE]
    rollgraph presets
    rollgraph stages
    rollgraph ui [--host 127.0.0.1] [--port 7860] [--auth user:password] [--runs-dir DIR] [--presets-dir DIR]

CONFIG is a JSON file or a shipped preset name. Every config key is also a flag in the seed's spelling
(``--prediction_type flow_matching``, ``--scheduled_sampling_reflexflow=false``), generated from the
config schema. Exit codes: 0 success, 2 invalid config or graph, 1 failure while running.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rollgraph.graph.errors import ConfigError, GraphError, RunError

EXIT_OK, EXIT_RUN_FAILED, EXIT_INVALID = 0, 1, 2


def _key_help(name: str, field) -> str:
    parts = [field.description or ""]
    default = field.get_default(call_default_factory=True)
    if default is not None and name != "graph":
        parts.append(f"(default: {json.dumps(default)})")
    for meta in field.metadata:
        for attr, sym in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            if getattr(meta, attr, None) is not None:
                parts.append(f"[{sym} {getattr(meta, attr)}]")
    return " ".join(p for p in parts if p).replace("%", "%%")


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    from rollgraph.stages.config import TrainConfig, config_sections

    parser.add_argument("config", nargs="?", help="config.json path or preset name (see `rollgraph presets`)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help="override a config key (repeatable)")
    for title, names in config_sections():
        group = parser.add_argument_group(title)
        for name in names:
            group.add_argument(f"--{name}", dest=f"cfg__{name}", metavar="VALUE", default=argparse.SUPPRESS,
                               help=_key_help(name, TrainConfig.model_fields[name]))


def _overrides(args) -> dict:
    from rollgraph.stages.config import parse_value

    out = {}
    issues = []
    for item in args.sets:
        key, sep, value = item.partition("=")
        if not sep:
            from rollgraph.graph.errors import Issue

            issues.append(Issue("--set", f"{item!r} is not KEY=VALUE"))
            continue
        out[key.strip()] = parse_value(value)
    for name, value in vars(args).items():
        if name.startswith("cfg__"):
            out[name[5:]] = parse_value(value)
    if issues:
        raise ConfigError(issues)
    return out


def _load(args):
    from rollgraph.stages.config import load_config

    return load_config(args.config, _overrides(args))


def cmd_validate(args, console: Console) -> int:
    from rollgraph.graph.validate import validate_graph
    from rollgraph.stages.default_graph import compile_graph

    cfg = _load(args)
    graph = validate_graph(compile_graph(cfg))
    console.print(f"[green]valid[/]: {len(graph.setup)} setup and {len(graph.step)} step stages: "
                  + " → ".join(n.id for n in graph.step))
    return EXIT_OK


def cmd_graph(args, console: Console) -> int:
    from rollgraph.graph.render import render
    from rollgraph.graph.validate import validate_graph
    from rollgraph.stages.default_graph import compile_graph

    cfg = _load(args)
    spec = compile_graph(cfg)
    validate_graph(spec)
    print(render(spec, args.format))
    return EXIT_OK


def _run_args(args) -> list[str]:
    """The run's own command-line arguments (without --num-processes), for the processes a launcher starts."""
    out = [args.config]
    for item in args.sets:
        out += ["--set", item]
    out += [f"--{name[5:]}={value}" for name, value in vars(args).items() if name.startswith("cfg__")]
    return out + (["--resume", args.resume] if args.resume else [])


def _launch(args, console: Console) -> int:
    """``--num-processes N``: check the config here (exit 2 before starting anything), then run N processes."""
    import torch
    from rollgraph.graph.checkpoint import find_checkpoint
    from rollgraph.graph.context import resolve_device
    from rollgraph.graph.distributed import launch_local
    from rollgraph.graph.errors import Issue
    from rollgraph.graph.validate import validate_graph
    from rollgraph.stages.default_graph import compile_graph

    cfg = _load(args)
    validate_graph(compile_graph(cfg))
    if args.resume:
        find_checkpoint(Path(cfg.output_dir), args.resume)
    device = resolve_device(cfg.device)
    if device.type == "cuda" and args.num_processes > torch.cuda.device_count():
        raise ConfigError([Issue("--num-processes", f"{args.num_processes} processes need {args.num_processes} GPUs "
                                 f"(one each); this machine has {torch.cuda.device_count()}")])
    if device.type not in ("cpu", "cuda"):
        raise ConfigError([Issue("--num-processes", f"several processes need CUDA or the CPU, not {device.type}")])
    console.print(f"starting {args.num_processes} processes on {device.type} (torch.distributed.run)")
    return launch_local(args.num_processes, _run_args(args), Path(cfg.output_dir))


def cmd_run(args, console: Console) -> int:
    from rollgraph.graph.distributed import launched_rank, launched_world_size
    from rollgraph.graph.train import Trainer

    if args.num_processes > 1 and launched_world_size() == 1:
        return _launch(args, console)
    try:
        cfg = _load(args)
        trainer = Trainer(cfg, resume=args.resume)
        out = trainer.run()
    except (ConfigError, GraphError):
        if launched_rank() == 0:
            raise
        return EXIT_INVALID  # the same on every rank: rank 0 reports it
    if launched_rank() == 0:
        console.print(f"run folder: {out}")
    return EXIT_OK


def cmd_sample(args, console: Console) -> int:
    from rollgraph.stages.sample_cli import sample_run

    paths = sample_run(Path(args.run_dir), args.checkpoint, args.num, args.steps, args.seed, Path(args.out), args.sampler)
    for p in paths:
        console.print(f"wrote {p}")
    return EXIT_OK


def cmd_probe(args, console: Console) -> int:
    from rollgraph.stages.probe_cli import probe_run

    overrides = {k: getattr(args, k) for k in ("start_level", "steps", "sampler", "samples", "projections", "batch_size")}
    print(json.dumps(probe_run(Path(args.run_dir), args.checkpoint, **overrides)))
    return EXIT_OK


def cmd_presets(args, console: Console) -> int:
    from rollgraph.stages.config import PRESETS_DIR, list_presets, read_config_file

    for name in list_presets():
        data = read_config_file(PRESETS_DIR / f"{name}.json")
        console.print(f"[bold]{name}[/]  {data.get('_description', '')}")
    return EXIT_OK


def cmd_stages(args, console: Console) -> int:
    from rollgraph.graph.registry import registered_stages

    for tag, cls in registered_stages().items():
        ins = ", ".join(f"{p.name}: {p.type}{'?' if p.optional else ''}" for p in cls.inputs)
        outs = ", ".join(f"{p.name}: {p.type}" for p in cls.outputs)
        console.print(f"[bold]{tag}[/] ({cls.phase})  ({ins}) -> ({outs})\n    {cls.summary()}")
    return EXIT_OK


def cmd_ui(args, console: Console) -> int:
    from rollgraph.ui.app import launch

    launch(host=args.host, port=args.port, auth=args.auth, runs_dir=args.runs_dir, user_presets_dir=args.presets_dir)
    return EXIT_OK


def _add_export_lora(sub) -> None:
    from rollgraph.stages.lora_export import add_command  # the export-lora command lives with its stage code

    add_command(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rollgraph", description="Graph-based diffusion / flow-matching trainer with scheduled sampling and ReflexFlow.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="train", formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_config_flags(p)
    p.add_argument("--resume", metavar="latest|PATH", help="continue from the latest checkpoint in output_dir, or a step-N folder")
    p.add_argument("--num-processes", type=int, default=1, metavar="N",
                   help="train data-parallel in N local processes (one GPU each, or CPU); the global batch is "
                        "train_batch_size × N. Under torchrun / accelerate launch this flag is not needed")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("validate", help="check a config and its graph; exit 2 listing every fault")
    _add_config_flags(p)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("graph", help="print the compiled stage graph")
    _add_config_flags(p)
    p.add_argument("--format", choices=["text", "json", "mermaid"], default="text")
    p.set_defaults(func=cmd_graph)

    p = sub.add_parser("sample", help="generate images from a run's checkpoint")
    p.add_argument("run_dir")
    p.add_argument("--checkpoint", default="latest", help="latest or a step-N folder")
    p.add_argument("--num", type=int, default=20)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sampler", default=None, help="euler | unipc | dpm | rk4 (default: the run's validation_sampler)")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_sample)

    _add_export_lora(sub)

    p = sub.add_parser("probe", help="measure the exposure bias of a run's checkpoint; prints one JSON object",
                       description="Forward-noise held-out data to --start-level, sample --steps solver steps down to clean "
                                   "data with the checkpoint's model (EMA weights when the run keeps them), and compare the "
                                   "generated set with the forward process at every level: variance_error, swd, swd_floor "
                                   "(stages/probe.py). Defaults: the run's exposure_bias_probe_* settings.")
    p.add_argument("run_dir", help="a run folder (holds config.json and checkpoints/)")
    p.add_argument("--checkpoint", default="latest", help="latest, a step-N name or a step-N folder path")
    p.add_argument("--start-level", type=float, default=None, help="grid coordinate u in (0, 1] to start from (default 0.6)")
    p.add_argument("--steps", type=int, default=None, help="solver steps from the start level to clean data (default 12)")
    p.add_argument("--sampler", default=None, help="unipc | euler | dpm | rk4 (default unipc)")
    p.add_argument("--samples", type=int, default=None, help="last N samples of the run's data: half generated from, half the reference (default 256)")
    p.add_argument("--projections", type=int, default=None, help="random directions of the sliced Wasserstein distance (default 128)")
    p.add_argument("--batch-size", type=int, default=None, help="samples per model call (default 64)")
    p.set_defaults(func=cmd_probe)

    sub.add_parser("presets", help="list the shipped presets").set_defaults(func=cmd_presets)
    sub.add_parser("stages", help="list the registered stage types and their ports").set_defaults(func=cmd_stages)

    p = sub.add_parser("ui", help="start the web UI")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--auth", default=None, help="user:password (or set ROLLGRAPH_UI_AUTH)")
    p.add_argument("--runs-dir", default=None, help="folder of runs the UI starts and lists (default: ROLLGRAPH_RUNS_DIR or ./runs)")
    p.add_argument("--presets-dir", default=None, help="your presets folder (default: ROLLGRAPH_USER_PRESETS or ~/.rollgraph/presets)")
    p.set_defaults(func=cmd_ui)
    return parser


def main(argv: list[str] | None = None) -> int:
    console = Console(highlight=False)
    err_console = Console(stderr=True, highlight=False)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in ("run", "validate", "graph") and not args.config:
        parser.error(f"{args.command} needs a CONFIG (a file or preset name)")
    try:
        return args.func(args, console)
    except (ConfigError, GraphError) as err:
        err_console.print(f"[bold red]error:[/] {escape(err.render())}", soft_wrap=True)
        return EXIT_INVALID
    except RunError as err:
        err_console.print(f"[bold red]run failed:[/] {escape(str(err))}", soft_wrap=True)
        return EXIT_RUN_FAILED
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]")
        return EXIT_RUN_FAILED


if __name__ == "__main__":
    sys.exit(main())
