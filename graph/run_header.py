"""The start-up header a run prints before its first step, so nothing is silent while data and model load.

Before setup: where the run writes, the device and precision, the process count, and the stages that will
run, in order (the every nodes with when they run). After setup: for every setup value that is a model (has a ``raw_module``), its parameter count
(trainable / total) and dtype; for every value with a ``describe()`` (the dataset says what it found), that line.
"""

from __future__ import annotations

from typing import Any

from rich.markup import escape


def _count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return str(n)


def before_setup_lines(graph, ctx, output_dir) -> list[str]:
    precision = f"{str(ctx.autocast_dtype).removeprefix('torch.')} autocast" if ctx.autocast_dtype is not None else "full precision"
    procs = f", {ctx.world_size} processes" if ctx.world_size > 1 else ""
    return [f"[bold]rollgraph run[/] → {escape(str(output_dir))}",
            f"device {ctx.device} ({precision}{procs})",
            "setup: " + " → ".join(n.id for n in graph.setup),
            "step:  " + " → ".join(n.id for n in graph.step)] + (
            ["update: " + " → ".join(n.id for n in graph.update)] if graph.update else []) + (
            ["every: " + ", ".join(_when(n) for n in graph.every)] if graph.every else [])


def _when(node) -> str:
    """``grid (every 200 steps, at the end, on request 'sample')``: when an every node runs."""
    cls = node.cls
    every = getattr(node.params, cls.interval) if cls.interval else 0
    parts = ([f"every {every} steps"] if every else []) + ([f"when {' or '.join(cls.at_end)}"] if cls.at_end else []) + (
        [f"on request '{cls.on_request}'"] if cls.on_request else [])
    if not parts:
        parts = [f"off: {cls.interval} = 0"] if cls.interval else ["when a node reading it runs"]
    return f"{node.id} ({', '.join(parts)})"


def after_setup_lines(values: dict[tuple[str, str], Any]) -> list[str]:
    lines = []
    for (node_id, _port), value in values.items():
        module = getattr(value, "raw_module", None)
        if module is not None and hasattr(module, "parameters"):
            params = list(module.parameters())
            total = sum(p.numel() for p in params)
            trainable = sum(p.numel() for p in params if p.requires_grad)
            dtype = str(params[0].dtype).removeprefix("torch.") if params else "-"
            lines.append(f"{node_id}: {type(module).__name__}, {_count(trainable)} trainable of {_count(total)} parameters ({dtype})")
        describe = getattr(value, "describe", None)
        if callable(describe) and (text := describe()):
            lines.append(f"{node_id}: {escape(text)}")
    return lines
