"""The graph model: validation (every fault kind, several at once), ordering, the runner and hooks."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ConfigDict, Field
from rollgraph.graph import GraphError, GraphSpec, NodeSpec, Port, Stage, register_port_type, register_stage
from rollgraph.graph.context import RunContext
from rollgraph.graph.hooks import Hook
from rollgraph.graph.runner import Runner
from rollgraph.graph.validate import validate_graph

register_port_type("TestInt", int)
register_port_type("TestStr", str)


class ScaleParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    factor: int = Field(2, ge=1)


@register_stage
class Source(Stage):
    type = "test.source"
    phase = "setup"
    outputs = (Port("value", "TestInt"),)

    def run(self, ctx):
        return {"value": 3}


@register_stage
class Scale(Stage):
    type = "test.scale"
    Params = ScaleParams
    inputs = (Port("x", "TestInt"), Port("bias", "TestInt", optional=True))
    outputs = (Port("y", "TestInt"),)

    def run(self, ctx, x, bias=None):
        return {"y": x * self.params.factor + (bias or 0) + ctx.step}


@register_stage
class Show(Stage):
    type = "test.show"
    sink = True
    inputs = (Port("x", "TestInt"),)
    outputs = (Port("text", "TestStr"),)

    def run(self, ctx, x):
        return {"text": f"<{x}>"}


def spec(*nodes) -> GraphSpec:
    return GraphSpec(nodes=[NodeSpec(**n) for n in nodes])


def test_valid_graph_is_ordered_by_dependencies_not_listing():
    g = validate_graph(spec(
        {"id": "show", "type": "test.show", "inputs": {"x": "b.y"}},
        {"id": "b", "type": "test.scale", "inputs": {"x": "a.y"}},
        {"id": "a", "type": "test.scale", "inputs": {"x": "src.value"}},
        {"id": "src", "type": "test.source"},
    ))
    assert [n.id for n in g.setup] == ["src"]
    assert [n.id for n in g.step] == ["a", "b", "show"]


def faults(s: GraphSpec) -> list[str]:
    with pytest.raises(GraphError) as info:
        validate_graph(s)
    return [str(i) for i in info.value.issues]


def test_every_fault_is_reported_at_once():
    found = faults(spec(
        {"id": "src", "type": "test.source"},
        {"id": "src", "type": "test.source"},                                     # duplicate id
        {"id": "typo", "type": "test.scal", "inputs": {"x": "src.value"}},        # unknown type
        {"id": "badp", "type": "test.scale", "params": {"factor": 0, "nope": 1}, "inputs": {"x": "src.value"}},
        {"id": "port", "type": "test.scale", "inputs": {"x": "src.value", "z": "src.value"}},  # unknown port
        {"id": "miss", "type": "test.scale"},                                       # missing input
        {"id": "dang", "type": "test.scale", "inputs": {"x": "ghost.y"}},          # unknown node
        {"id": "outp", "type": "test.scale", "inputs": {"x": "src.valu"}},         # unknown output
        {"id": "mism", "type": "test.scale", "inputs": {"x": "shw.text"}},         # type mismatch
        {"id": "shw", "type": "test.show", "inputs": {"x": "src.value"}},
        {"id": "ref", "type": "test.scale", "inputs": {"x": "srcvalue"}},          # malformed ref
    ))
    expected = [
        "src: duplicate node id",
        "typo.type: unknown stage type 'test.scal' (did you mean 'test.scale'?)",
        "badp.params.factor: Input should be greater than or equal to 1",
        "badp.params.nope: unknown key",
        "port.inputs.z: stage 'test.scale' has no input 'z'",
        "miss.inputs.x: required input 'x' (TestInt) is not wired",
        "dang.inputs.x: references unknown node 'ghost'",
        "outp.inputs.x: node 'src' (test.source) has no output 'valu' (did you mean 'value'?)",
        "mism.inputs.x: type mismatch: input 'x' wants TestInt, 'shw.text' gives TestStr",
        "ref.inputs.x: reference 'srcvalue' is not of the form 'node.port'",
    ]
    for e in expected:
        assert any(f.startswith(e) for f in found), (e, found)
    assert len(found) == len(expected)


def test_consumer_not_blamed_for_unknown_source_type():
    found = faults(spec(
        {"id": "a", "type": "test.nothing"},
        {"id": "b", "type": "test.show", "inputs": {"x": "a.whatever"}},
    ))
    assert len(found) == 1 and found[0].startswith("a.type: unknown stage type")


def test_cycle_is_reported():
    found = faults(spec(
        {"id": "a", "type": "test.scale", "inputs": {"x": "b.y"}},
        {"id": "b", "type": "test.scale", "inputs": {"x": "a.y"}},
    ))
    assert len(found) == 1 and "cycle" in found[0]


@register_stage
class Accumulate(Stage):
    """Test-only update stage: adds the last micro-step's value to a running total it keeps."""

    type = "test.accumulate"
    phase = "update"
    sink = True
    inputs = (Port("x", "TestInt"),)
    outputs = (Port("total", "TestInt"),)

    def __init__(self, node_id, params):
        super().__init__(node_id, params)
        self.total = 0

    def run(self, ctx, x):
        self.total += x
        return {"total": self.total}


def test_update_phase_runs_after_the_micro_steps_on_the_last_ones_outputs():
    g = validate_graph(spec(
        {"id": "acc", "type": "test.accumulate", "inputs": {"x": "a.y"}},
        {"id": "a", "type": "test.scale", "inputs": {"x": "src.value"}},
        {"id": "src", "type": "test.source"},
    ))
    assert [n.id for n in g.step] == ["a"] and [n.id for n in g.update] == ["acc"]
    ctx = RunContext(config=None)
    runner = Runner(g, ctx)
    runner.setup()
    for micro in range(3):
        ctx.step = micro  # a's output changes with the step counter: 6, 7, 8
        runner.run_step()
    assert ("a", "y") in runner.values  # kept for the update phase
    runner.run_update()
    assert runner.stages["acc"].total == 8 and ("a", "y") not in runner.values and ("acc", "total") not in runner.values
    found = faults(spec(
        {"id": "src", "type": "test.source"},
        {"id": "acc", "type": "test.accumulate", "inputs": {"x": "src.value"}},
        {"id": "late", "type": "test.show", "inputs": {"x": "acc.total"}},
    ))
    assert found == ["late.inputs.x: step stage cannot read update output 'acc.total'"]


def test_setup_stage_may_not_read_step_outputs():
    @register_stage
    class SetupConsumer(Stage):
        type = "test.setup_consumer"
        phase = "setup"
        inputs = (Port("x", "TestInt"),)

    found = faults(spec(
        {"id": "src", "type": "test.source"},
        {"id": "s", "type": "test.scale", "inputs": {"x": "src.value"}},
        {"id": "c", "type": "test.setup_consumer", "inputs": {"x": "s.y"}},
    ))
    assert found == ["c.inputs.x: setup stage cannot read step output 's.y'"]


class Recorder(Hook):
    def __init__(self):
        self.events = []

    def before_stage(self, runner, node_id):
        self.events.append(("before", node_id))

    def after_stage(self, runner, node_id, outputs, seconds):
        self.events.append(("after", node_id, dict(outputs)))


def test_runner_runs_setup_once_and_step_graph_each_time_with_hooks():
    g = validate_graph(spec(
        {"id": "src", "type": "test.source"},
        {"id": "a", "type": "test.scale", "params": {"factor": 5}, "inputs": {"x": "src.value"}},
        {"id": "b", "type": "test.scale", "inputs": {"x": "a.y", "bias": "src.value"}},
        {"id": "show", "type": "test.show", "inputs": {"x": "b.y"}},
    ))
    rec = Recorder()
    ctx = RunContext(config=None)
    runner = Runner(g, ctx, [rec])
    runner.setup()
    assert rec.events == [("before", "src"), ("after", "src", {"value": 3})]
    runner.run_step()
    assert rec.events[-1] == ("after", "show", {"text": "<33>"})  # (3*5)*2 + 3
    ctx.step = 1
    runner.run_step()
    assert rec.events[-1] == ("after", "show", {"text": "<36>"})  # (3*5+1)*2 + 3 + 1
    assert ("src", "value") in runner.values and ("show", "text") not in runner.values


def test_runner_rejects_an_output_of_the_wrong_type():
    @register_stage
    class Liar(Stage):
        type = "test.liar"
        sink = True
        outputs = (Port("value", "TestInt"),)

        def run(self, ctx):
            return {"value": "not an int"}

    runner = Runner(validate_graph(spec({"id": "l", "type": "test.liar"})), RunContext(config=None))
    with pytest.raises(TypeError, match="'l' output 'value' should be TestInt"):
        runner.run_step()


def test_generators_differ_by_stage_and_step_and_repeat_exactly():
    ctx = RunContext(config=None, seed=7)
    a1 = ctx.generator("a").initial_seed()
    assert a1 == ctx.generator("a").initial_seed()
    assert a1 != ctx.generator("b").initial_seed()
    ctx.step = 1
    assert a1 != ctx.generator("a").initial_seed()


@register_stage
class Total(Stage):
    type = "test.total"
    inputs = (Port("parts", "TestInt", many=True),)
    outputs = (Port("sum", "TestInt"),)

    def run(self, ctx, parts):
        return {"sum": sum(parts)}


def test_a_node_whose_outputs_reach_no_sink_is_refused_by_name():
    found = faults(spec(
        {"id": "src", "type": "test.source"},
        {"id": "a", "type": "test.scale", "inputs": {"x": "src.value"}},
        {"id": "dead", "type": "test.scale", "inputs": {"x": "a.y"}},     # feeds nothing
        {"id": "deader", "type": "test.scale", "inputs": {"x": "dead.y"}},  # nor does its consumer
        {"id": "show", "type": "test.show", "inputs": {"x": "a.y"}},
    ))
    assert sorted(f.split(":")[0] for f in found) == ["dead", "deader"]
    assert all("reach no sink (show)" in f for f in found)
    assert faults(spec({"id": "src", "type": "test.source"})) == [
        "graph: no sink: nothing consumes the graph's results (e.g. no optimizer step)"]


def test_fan_in_port_takes_a_list_and_receives_the_values_in_order():
    g = validate_graph(spec(
        {"id": "src", "type": "test.source"},
        {"id": "a", "type": "test.scale", "params": {"factor": 5}, "inputs": {"x": "src.value"}},
        {"id": "b", "type": "test.scale", "inputs": {"x": "src.value"}},
        {"id": "t", "type": "test.total", "inputs": {"parts": ["a.y", "b.y", "src.value"]}},
        {"id": "show", "type": "test.show", "inputs": {"x": "t.sum"}},
    ))
    rec = Recorder()
    runner = Runner(g, RunContext(config=None), [rec])
    runner.setup()
    runner.run_step()
    assert rec.events[-1] == ("after", "show", {"text": "<24>"})  # 15 + 6 + 3
    found = faults(spec(
        {"id": "src", "type": "test.source"},
        {"id": "t", "type": "test.total", "inputs": {"parts": "src.value"}},              # not a list
        {"id": "u", "type": "test.total", "inputs": {"parts": ["src.value", "t.nope"]}},  # a bad ref in the list
        {"id": "v", "type": "test.total", "inputs": {"parts": []}},                        # nothing wired
        {"id": "show", "type": "test.show", "inputs": {"x": "u.sum"}},
    ))
    assert found == [
        "t.inputs.parts: input 'parts' takes a list of 'node.port' references (it adds them up), got 'src.value'",
        "u.inputs.parts: node 't' (test.total) has no output 'nope'; outputs: ['sum']",
        "v.inputs.parts: required input 'parts' (TestInt) is not wired",
    ]
