"""The command registry: ``rollgraph <command>`` subcommands come from the ``rollgraph.commands`` entry-point group.

The engine's command line (graph/cli.py) knows no command that needs stages or the UI: the package that
implements one registers it (``rollgraph.stages.commands``, ``rollgraph.ui.command``; a third party the
same way). An entry point names a ``Command`` or a list of them.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points

from rollgraph.graph.registry import registered_stages

ENTRY_POINT_GROUP = "rollgraph.commands"


@dataclass(frozen=True)
class Command:
    """A subcommand: ``configure`` adds its arguments to its parser; ``run(args, console)`` returns the exit code."""

    name: str
    help: str
    run: Callable[..., int]
    configure: Callable[[argparse.ArgumentParser], None] = lambda parser: None
    order: int = 100  # position in ``rollgraph --help``
    needs_config: bool = False  # the positional CONFIG must be given
    parser_kwargs: dict = field(default_factory=dict)


_COMMANDS: dict[str, Command] = {}
_loaded = False


def register_command(command: Command) -> Command:
    existing = _COMMANDS.get(command.name)
    if existing is not None and existing != command:
        raise ValueError(f"command {command.name!r} is registered twice")
    _COMMANDS[command.name] = command
    return command


def registered_commands() -> list[Command]:
    global _loaded
    if not _loaded:
        _loaded = True
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            obj = ep.load()
            for command in obj if isinstance(obj, (list, tuple)) else [obj]:
                register_command(command)
    return sorted(_COMMANDS.values(), key=lambda c: (c.order, c.name))


def cmd_stages(args, console) -> int:
    for tag, cls in registered_stages().items():
        ins = ", ".join(f"{p.name}: {p.type}{'?' if p.optional else ''}{'[]' if p.many else ''}" for p in cls.inputs)
        outs = ", ".join(f"{p.name}: {p.type}" for p in cls.outputs)
        console.print(f"[bold]{tag}[/] ({cls.phase})  ({ins}) -> ({outs})\n    {cls.summary()}")
    return 0


# the engine's own command; registered here, not in graph/cli.py, which also runs as __main__ (python -m)
register_command(Command("stages", "list the registered stage types and their ports", cmd_stages, order=60))
