"""Executes a validated graph: the setup nodes once, the step nodes every micro-step, the update nodes once per
optimizer step, the every nodes after an optimizer step when due; each phase in dependency order."""

from __future__ import annotations

from typing import Any

from rollgraph.graph.context import RunContext
from rollgraph.graph.hooks import Hook, Hooks, now
from rollgraph.graph.spec import split_ref
from rollgraph.graph.validate import ResolvedGraph, ResolvedNode, check_port_value


class Runner:
    def __init__(self, graph: ResolvedGraph, ctx: RunContext, hooks: list[Hook] | tuple[Hook, ...] = ()):
        self.graph = graph
        self.ctx = ctx
        self.hooks = Hooks(hooks)
        self.stages = {n.id: n.cls(n.id, n.params) for n in graph.nodes}
        self.values: dict[tuple[str, str], Any] = {}
        self.in_step = False
        self._read_by_update = frozenset(split_ref(ref) for n in graph.update for _, ref in n.spec.wires())
        self._every_sources = _every_sources(graph.every)

    def value(self, node_id: str, port: str) -> Any:
        return self.values[(node_id, port)]

    def setup(self) -> None:
        for node in self.graph.setup:
            self._run(node)
        self.hooks.on_setup_end(self)

    def run_step(self) -> None:
        """One pass of the step graph (one micro-step). Step outputs are dropped afterwards, except those the
        update phase reads (the last micro-step's are kept for it)."""
        self.in_step = True
        try:
            for node in self.graph.step:
                self._run(node)
        finally:
            self.in_step = False
            self._drop(self.graph.step, keep=self._read_by_update)

    def run_update(self) -> None:
        """The update phase, once per optimizer step after its micro-steps; then every step and update output goes."""
        try:
            for node in self.graph.update:
                self._run(node)
        finally:
            self._drop(self.graph.step + self.graph.update)

    def due(self, step: int, requests: frozenset[str] = frozenset(), end: str | None = None) -> dict[str, frozenset[str]]:
        """The every nodes due after optimizer step ``step``, each with why: "interval" (its interval divides the
        step), "request" (a control command it answers was given), "end" (the run ends here in a state it runs at)."""
        due = {}
        for node in self.graph.every:
            cls = node.cls
            every = getattr(node.params, cls.interval) if cls.interval else 0
            why = {reason for reason, hit in (("interval", every > 0 and step % every == 0),
                                              ("request", cls.on_request is not None and cls.on_request in requests),
                                              ("end", end is not None and end in cls.at_end)) if hit}
            if why:
                due[node.id] = frozenset(why)
        return due

    def answers(self, command: str) -> bool:
        """Whether some every node runs on the control command ``command``."""
        return any(n.cls.on_request == command for n in self.graph.every)

    def run_every(self, due: dict[str, frozenset[str]], keep: bool = False) -> dict[str, Any]:
        """Run the due every nodes and the every nodes they read from, in order, each once; return their
        ``Report`` outputs merged into one dict. Their outputs are dropped afterwards, unless ``keep``."""
        if not due:
            return {}
        needed = set(due).union(*(self._every_sources[nid] for nid in due))
        report: dict[str, Any] = {}
        try:
            for node in self.graph.every:
                if node.id not in needed:
                    continue
                self.ctx.triggers = due.get(node.id, frozenset())
                self._run(node)
                for port in node.cls.outputs:
                    if port.type == "Report":
                        report.update(self.values[(node.id, port.name)] or {})
        finally:
            self.ctx.triggers = frozenset()
            if not keep:
                self._drop(self.graph.every)
        return report

    def _drop(self, nodes: list[ResolvedNode], keep: frozenset = frozenset()) -> None:
        for node in nodes:
            for port in node.cls.outputs:
                if (node.id, port.name) not in keep:
                    self.values.pop((node.id, port.name), None)

    def _run(self, node: ResolvedNode) -> None:
        inputs = {}
        for port in node.cls.inputs:
            wired = node.spec.inputs.get(port.name)
            if port.many:
                inputs[port.name] = [self.values[split_ref(ref)] for ref in wired or ()]
            else:
                inputs[port.name] = self.values[split_ref(wired)] if wired else None
        self.hooks.before_stage(self, node.id)
        start = now()
        outputs = self.stages[node.id].run(self.ctx, **inputs) or {}
        seconds = now() - start
        for port in node.cls.outputs:
            if port.name not in outputs:
                raise RuntimeError(f"node {node.id!r} ({node.cls.type}) did not return its output {port.name!r}")
            check_port_value(node.id, port.name, port.type, outputs[port.name])
            self.values[(node.id, port.name)] = outputs[port.name]
        self.hooks.after_stage(self, node.id, outputs, seconds)

    def checkpointables(self) -> dict[str, Any]:
        """Every stage or setup value that can save state (has save_state/load_state), keyed by a stable name."""
        out: dict[str, Any] = {}
        for node_id, stage in self.stages.items():
            if hasattr(stage, "save_state"):
                out[node_id] = stage
        for (node_id, port), value in self.values.items():
            if hasattr(value, "save_state"):
                single = len(self.stages[node_id].outputs) == 1
                out[node_id if single else f"{node_id}.{port}"] = value
        return out


def _every_sources(every: list[ResolvedNode]) -> dict[str, set[str]]:
    """every node id -> the every nodes it reads from, directly or not."""
    ids = {n.id for n in every}
    direct = {n.id: {split_ref(ref)[0] for _, ref in n.spec.wires()} & ids for n in every}
    closed: dict[str, set[str]] = {}
    for node in every:  # in dependency order: a source's closure is complete before its readers'
        closed[node.id] = set(direct[node.id]).union(*(closed[src] for src in direct[node.id]))
    return closed
