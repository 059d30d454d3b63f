"""The ``rollgraph`` command line.

    rollgraph run CONFIG [--set key=value | --set node.param=value ...] [--resume latest|PATH] [--overwrite] [--stop-at-step N] [--num-processes N] [--<config key> VALUE ...]
    rollgraph validate CONFIG [...same overrides]
    rollgraph graph CONFIG [--format text|json|mermaid]
    rollgraph probe RUN_DIR [--checkpoint latest|step-N] [--start-level U] [--steps K] [--sampler NAME]
    rollgraph sample RUN_DIR [--checkpoint latest|PATH] --num N --steps S --seed S --out DIR [--sampler NAME]
    rollgraph export-lora CHECKPOINT --format diffusers|kohya|comfyui [--out FILE]
    rollgraph presets
    rollgraph stages
    rollgraph ui [--host 127.0.0.1] [--port 7860] [--auth user:password] [--runs-dir DIR] [--presets-dir DIR]

The engine's command line: it knows no command that needs stages or the UI. Those register themselves
through the ``rollgraph.commands`` entry-point group (graph/commands.py): run, validate, graph, sample,
presets from ``rollgraph.stages.commands``, ui from ``rollgraph.ui.command``. CONFIG is a JSON file or a
shipped preset name. Exit codes: 0 success, 2 invalid config or graph, 1 failure while running.
"""

from __future__ import annotations

import argparse
import re
import sys

from rich.console import Console
from rich.markup import escape
from rollgraph.graph.commands import registered_commands
from rollgraph.graph.errors import ConfigError, GraphError, RunError

EXIT_OK, EXIT_RUN_FAILED, EXIT_INVALID = 0, 1, 2


def _run_args(args) -> list[str]:
    """The run's own command-line arguments (without --num-processes), for the processes a launcher starts."""
    out = [args.config]
    for item in args.sets:
        out += ["--set", item]
    out += [f"--{name[5:]}={value}" for name, value in vars(args).items() if name.startswith("cfg__")]
    out += ["--resume", args.resume] if args.resume else []  # --overwrite: done here, before the launch
    return out + (["--stop-at-step", str(args.stop_at_step)] if args.stop_at_step is not None else [])


class Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (the full usage of ``run`` is ~70 lines) and a did-you-mean for a
    mistyped flag or command."""

    def error(self, message: str):
        self.exit(EXIT_INVALID, f"{self.prog}: error: {message}{self.suggestion(message)} (see `{self.prog} --help`)\n")

    def suggestion(self, message: str) -> str:
        from rollgraph.graph.registry import did_you_mean

        choice = re.match(r"argument \S+: invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if choice:
            return did_you_mean(choice.group(1), re.findall(r"[\w.-]+", choice.group(2)))
        if message.startswith("unrecognized arguments:"):
            flags = [tok.split("=")[0] for tok in message.split(":", 1)[1].split() if tok.startswith("--")]
            known = [opt for action in self._actions for opt in action.option_strings]
            return "".join(did_you_mean(flag, known) for flag in flags)
        return ""

    def subparser(self, command: str) -> argparse.ArgumentParser:
        actions = [a for a in self._actions if isinstance(a, argparse._SubParsersAction)]
        return actions[0].choices[command] if actions and command in actions[0].choices else self


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="rollgraph", description="Graph-based diffusion / flow-matching trainer with scheduled sampling and ReflexFlow.")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in registered_commands():
        p = sub.add_parser(command.name, help=command.help, **command.parser_kwargs)
        command.configure(p)
        p.set_defaults(func=command.run, needs_config=command.needs_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    console = Console(highlight=False)
    err_console = Console(stderr=True, highlight=False)
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # reported by the command's own parser, which knows its flags (for the did-you-mean)
        parser.subparser(args.command).error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.needs_config and not args.config:
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
