"""Executes a validated graph: the setup nodes once, the step nodes every micro-step, the update nodes once per
optimizer step, the every nodes after an optimizer step when due; each phase in dependency order.

The wiring is resolved once, when the runner is built (value keys, output types), and the runner times each
step and update stage itself (``stage_seconds``), so a step costs a dict lookup per port, not a hook call per
stage; ``before_stage`` / ``after_stage`` hooks are called only when some hook has them.
"""

from __future__ import annotations

from time import perf_counter
from typing import Any

from rollgraph.graph.context import RunContext
from rollgraph.graph.hooks import Hook, Hooks
from rollgraph.graph.ports import port_type
from rollgraph.graph.spec import split_ref
from rollgraph.graph.validate import ResolvedGraph, ResolvedNode


class _Plan:
    """One node's resolved wiring: where each input comes from and what each output must be."""

    __slots__ = ("id", "stage", "single", "many", "unwired", "outputs", "keys", "time_key")

    def __init__(self, node: ResolvedNode, stage):
        self.id = node.id
        self.time_key = f"time/{node.id}"
        self.stage = stage
        self.single: list[tuple[str, tuple[str, str]]] = []  # (port, value key): most inputs
        self.many: list[tuple[str, list[tuple[str, str]]]] = []  # (port, value keys) of a many port
        self.unwired: list[str] = []  # optional ports left unwired: None
        for port in node.cls.inputs:
            wired = node.spec.inputs.get(port.name)
            if port.many:
                self.many.append((port.name, [split_ref(ref) for ref in wired or ()]))
            elif wired:
                self.single.append((port.name, split_ref(wired)))
            else:
                self.unwired.append(port.name)
        self.outputs = [(p.name, (node.id, p.name), p.type, port_type(p.type).py_type) for p in node.cls.outputs]
        self.keys = [key for _, key, _, _ in self.outputs]


class Runner:
    def __init__(self, graph: ResolvedGraph, ctx: RunContext, hooks: list[Hook] | tuple[Hook, ...] = ()):
        self.graph = graph
        self.ctx = ctx
        self.hooks = Hooks(hooks)
        self.stages = {n.id: n.cls(n.id, n.params) for n in graph.nodes}
        self.values: dict[tuple[str, str], Any] = {}
        self.stage_seconds: dict[str, float] = {}  # time/<node> of step and update stages, since pop_stage_seconds
        self._plans = {n.id: _Plan(n, self.stages[n.id]) for n in graph.nodes}
        self._step = [self._plans[n.id] for n in graph.step]
        self._update = [self._plans[n.id] for n in graph.update]
        self._read_by_update = frozenset(split_ref(ref) for n in graph.update for _, ref in n.spec.wires())
        self._step_drop = [k for p in self._step for k in p.keys if k not in self._read_by_update]
        self._update_drop = [k for p in self._step + self._update for k in p.keys]
        self._every_sources = _every_sources(graph.every)
        self._when = [(n.id, getattr(n.params, n.cls.interval) if n.cls.interval else 0, n.cls.on_request, n.cls.at_end)
                      for n in graph.every]
        self._intervals = tuple(every for _, every, _, _ in self._when if every)
        self._watched = self.hooks.overrides("before_stage") or self.hooks.overrides("after_stage")

    def value(self, node_id: str, port: str) -> Any:
        return self.values[(node_id, port)]

    def setup(self) -> None:
        for node in self.graph.setup:
            self._run(self._plans[node.id])
        self.hooks.on_setup_end(self)

    def run_step(self) -> None:
        """One pass of the step graph (one micro-step). Step outputs are dropped afterwards, except those the
        update phase reads (the last micro-step's are kept for it)."""
        try:
            for plan in self._step:
                self._run(plan, timed=True)
        finally:
            for key in self._step_drop:
                self.values.pop(key, None)

    def run_update(self) -> None:
        """The update phase, once per optimizer step after its micro-steps; then every step and update output goes."""
        try:
            for plan in self._update:
                self._run(plan, timed=True)
        finally:
            for key in self._update_drop:
                self.values.pop(key, None)

    def pop_stage_seconds(self) -> dict[str, float]:
        """Seconds spent in each step and update stage since the last call (micro-steps summed), keyed
        ``time/<node id>``."""
        out, self.stage_seconds = self.stage_seconds, {}
        return out

    def due(self, step: int, requests: frozenset[str] = frozenset(), end: str | None = None) -> dict[str, frozenset[str]]:
        """The every nodes due after optimizer step ``step``, each with why: "interval" (its interval divides the
        step), "request" (a control command it answers was given), "end" (the run ends here in a state it runs at)."""
        if not requests and end is None and all(step % every for every in self._intervals):
            return {}  # most steps
        due = {}
        for node_id, every, on_request, at_end in self._when:
            why = []
            if every and step % every == 0:
                why.append("interval")
            if requests and on_request in requests:
                why.append("request")
            if end is not None and end in at_end:
                why.append("end")
            if why:
                due[node_id] = frozenset(why)
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
                self._run(self._plans[node.id])
                for port in node.cls.outputs:
                    if port.type == "Report":
                        report.update(self.values[(node.id, port.name)] or {})
        finally:
            self.ctx.triggers = frozenset()
            if not keep:
                for node in self.graph.every:
                    for key in self._plans[node.id].keys:
                        self.values.pop(key, None)
        return report

    def _run(self, plan: _Plan, timed: bool = False) -> None:
        values = self.values
        inputs = {}
        for name, key in plan.single:
            inputs[name] = values[key]
        for name, keys in plan.many:
            inputs[name] = [values[key] for key in keys]
        for name in plan.unwired:
            inputs[name] = None
        if self._watched:
            self.hooks.before_stage(self, plan.id)
        start = perf_counter()
        outputs = plan.stage.run(self.ctx, **inputs) or {}
        seconds = perf_counter() - start
        if timed:
            self.stage_seconds[plan.time_key] = self.stage_seconds.get(plan.time_key, 0.0) + seconds
        for name, key, type_name, py_type in plan.outputs:
            if name not in outputs:
                raise RuntimeError(f"node {plan.id!r} ({type(plan.stage).type}) did not return its output {name!r}")
            value = outputs[name]
            if value is not None and not isinstance(value, py_type):
                raise TypeError(f"node {plan.id!r} output {name!r} should be {type_name} ({py_type}), got {type(value).__name__}")
            values[key] = value
        if self._watched:
            self.hooks.after_stage(self, plan.id, outputs, seconds)

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
