"""The every phase: nodes due by interval, at the end of a run and on request, each once per step, with the every
nodes they read from; what they may read; and the trainer running the shipped recipe's every nodes."""

from __future__ import annotations

import json

from pydantic import BaseModel, ConfigDict, Field
from rollgraph.graph import GraphError, GraphSpec, NodeSpec, Port, Stage, register_stage
from rollgraph.graph.cli import main
from rollgraph.graph.context import RunContext
from rollgraph.graph.runner import Runner
from rollgraph.graph.validate import validate_graph

from tests.conftest import read_metrics
from tests.test_graph import spec  # noqa: F401  (registers the test.* stages and port types)


class EveryParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    every_n: int = Field(0, ge=0)


@register_stage
class Measure(Stage):
    """Reads a setup value; counts its own runs."""

    type = "test.measure"
    phase = "every"
    inputs = (Port("x", "TestInt"),)
    outputs = (Port("value", "TestInt"),)

    def run(self, ctx, x):
        self.runs = getattr(self, "runs", 0) + 1
        return {"value": x + ctx.step}


@register_stage
class ReportIt(Stage):
    type = "test.report"
    phase = "every"
    interval = "every_n"
    at_end = ("finished",)
    on_request = "poke"
    sink = True
    Params = EveryParams
    inputs = (Port("value", "TestInt"),)
    outputs = (Port("report", "Report"),)

    def run(self, ctx, value):
        return {"report": {f"{self.id}/value": value, f"{self.id}/why": ",".join(sorted(ctx.triggers))}}


def graph(**params):
    return validate_graph(GraphSpec(nodes=[NodeSpec(**n) for n in (
        {"id": "src", "type": "test.source"},
        {"id": "m", "type": "test.measure", "inputs": {"x": "src.value"}},
        {"id": "r", "type": "test.report", "params": params, "inputs": {"value": "m.value"}},
        {"id": "show", "type": "test.show", "inputs": {"x": "src.value"}},
    )]))


def test_due_by_interval_end_and_request_and_run_once_with_their_sources():
    g = graph(every_n=3)
    assert [n.id for n in g.every] == ["m", "r"]
    runner = Runner(g, RunContext(config=None))
    runner.setup()
    assert runner.due(2) == {}
    assert runner.due(3) == {"r": frozenset({"interval"})}
    assert runner.due(4, frozenset({"poke"})) == {"r": frozenset({"request"})}
    assert runner.due(6, frozenset({"poke"}), end="finished") == {"r": frozenset({"interval", "request", "end"})}
    assert runner.due(5, end="stopped") == {}  # r runs at the end of a finished run only
    runner.ctx.step = 6
    report = runner.run_every(runner.due(6, frozenset({"poke"}), end="finished"))
    assert report == {"r/value": 9, "r/why": "end,interval,request"}
    assert runner.stages["m"].runs == 1  # once, though due three ways; m ran because r reads it
    assert ("m", "value") not in runner.values and runner.ctx.triggers == frozenset()
    assert runner.run_every({}) == {} and runner.stages["m"].runs == 1  # nothing due: nothing runs


def test_zero_interval_is_never_due_by_interval():
    runner = Runner(graph(every_n=0), RunContext(config=None))
    assert all(runner.due(step) == {} for step in range(1, 20))


def test_every_nodes_read_only_setup_and_every_outputs():
    try:
        validate_graph(GraphSpec(nodes=[NodeSpec(**n) for n in (
            {"id": "src", "type": "test.source"},
            {"id": "s", "type": "test.scale", "inputs": {"x": "src.value"}},
            {"id": "show", "type": "test.show", "inputs": {"x": "s.y"}},
            {"id": "r", "type": "test.report", "inputs": {"value": "s.y"}},
        )]))
    except GraphError as err:
        text = str(err)
    else:
        raise AssertionError("an every node reading a step output was accepted")
    assert "r.inputs.value: every stage cannot read step output 's.y'" in " ".join(text.split())


def test_when_attributes_need_the_every_phase_and_an_int_interval():
    @register_stage
    class Misplaced(Stage):
        type = "test.misplaced_interval"
        sink = True
        interval = "every_n"
        Params = EveryParams

    @register_stage
    class BadInterval(Stage):
        type = "test.bad_interval"
        phase = "every"
        sink = True
        interval = "nope"
        Params = EveryParams

    try:
        validate_graph(GraphSpec(nodes=[NodeSpec(id="a", type="test.misplaced_interval"),
                                        NodeSpec(id="b", type="test.bad_interval")]))
    except GraphError as err:
        text = " ".join(str(err).split())
    assert "a: stage 'test.misplaced_interval' sets interval/at_end/on_request but its phase is 'step'" in text
    assert "b: stage 'test.bad_interval' declares interval 'nope', which is not an int param" in text


def test_trainer_runs_samples_probe_and_checkpoints_as_every_nodes(tiny, tmp_path, capsys):
    """validation_steps 2, exposure_bias_probe_steps 3, checkpointing_steps 2 over 4 steps: grids at 2 and 4 (the end,
    once), the probe at 3, checkpoints at 2 and 4, each reported in that step's metrics line."""
    cfg = tiny(max_train_steps=4, validation_steps=2, checkpointing_steps=2, exposure_bias_probe_steps=3,
               exposure_bias_probe_samples=8, exposure_bias_probe_num_steps=2)
    assert main(["run", str(cfg)]) == 0
    run = tmp_path / "run"
    rows = {r["step"]: r for r in read_metrics(run)}
    assert [s for s, r in rows.items() if "sample" in r] == [2, 4]
    assert [s for s, r in rows.items() if "checkpoint" in r] == [2, 4]
    assert [s for s, r in rows.items() if "exposure_bias/swd" in r] == [3]
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["step-000002.png", "step-000004.png"]
    assert json.loads((run / "run.json").read_text())["sample"] == rows[4]["sample"]
    header = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("every: "))
    for when in ("checkpoint (every 2 steps, when finished or stopped, on request 'save')", "probe (every 3 steps)",
                 "samples (when a node reading it runs)", "grid (every 2 steps, when finished, on request 'sample')"):
        assert when in header


def test_removing_the_checkpoint_node_writes_no_checkpoint_and_says_so(tiny, tmp_path, capsys):
    assert main(["run", str(tiny(max_train_steps=2, graph={"remove": ["checkpoint"]}))]) == 0
    assert not (tmp_path / "run" / "checkpoints").exists()
    assert "this graph has no checkpoint node" in capsys.readouterr().out


def test_a_graph_without_sample_nodes_answers_sample_requests_with_a_message(tiny, tmp_path, capsys):
    run = tmp_path / "run"
    (run / "control").mkdir(parents=True)
    (run / "control" / "sample").write_text("")
    cfg = tiny(max_train_steps=2, graph={"remove": ["samples", "grid"]})
    assert main(["run", str(cfg), "--overwrite"]) == 0
    out = capsys.readouterr().out
    assert "sample requested, but no node of this graph answers it" in out
    assert not (run / "samples").exists()
