"""Executes a validated graph: the setup nodes once, the step nodes every micro-step, the update nodes once per
optimizer step, each phase in dependency order."""

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
