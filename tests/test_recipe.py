"""The graph is the recipe: shipped base graph + fragments, bindings instead of name matching, --set NODE.PARAM,
flags that contradict the graph, fan-in losses, and the refusal of nodes that feed nothing."""

from __future__ import annotations

import json

import torch
from pydantic import BaseModel, ConfigDict, Field
from rollgraph.graph import Port, Stage, register_stage
from rollgraph.graph.cli import main
from rollgraph.stages.config import build_config
from rollgraph.stages.default_graph import compile_graph
from rollgraph.stages.types import Loss

from tests.conftest import read_metrics

ROLLOUT = {"scheduled_sampling_max_step_offset": 2, "scheduled_sampling_probability": 1.0}


class SharpnessParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    weight: float = Field(0.5, ge=0)
    resolution: int = 3  # shares a flat key's name but binds nothing: must stay 3
    learning_rate: float = 7.0


@register_stage
class SharpnessLoss(Stage):
    """Test-only term: weight · mean(pred^2) (logged as loss/sharp)."""

    type = "test.sharpness"
    Params = SharpnessParams
    binds = {"weight": "logit_std"}  # an arbitrary explicit binding, for the test of bindings
    inputs = (Port("prediction", "Prediction"),)
    outputs = (Port("loss", "Loss"),)

    def run(self, ctx, prediction):
        return {"loss": Loss.term("sharp", prediction.pred.pow(2).mean(), self.params.weight)}


SHARP_NODE = {"id": "sharp", "type": "test.sharpness", "inputs": {"prediction": "predict.prediction"}}


def graph_json(capsys, *args) -> dict:
    capsys.readouterr()
    assert main(["graph", *args, "--format", "json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_graph_prints_the_whole_recipe_in_execution_order_with_phases(capsys):
    nodes = graph_json(capsys, "reflexflow_quickstart")["nodes"]
    ids = [n["id"] for n in nodes]
    assert ids.index("noise") < ids.index("rollout") < ids.index("predict") < ids.index("adr") < ids.index("total") < ids.index("optimize")
    phases = {n["id"]: n["phase"] for n in nodes}
    assert phases["model"] == phases["data"] == "setup" and phases["rollout"] == phases["optimize"] == "step"
    assert [n["id"] for n in nodes if n["phase"] == "setup"] == ids[:4]  # setup runs first
    by_id = {n["id"]: n for n in nodes}
    assert by_id["total"]["inputs"]["terms"] == ["loss.loss", "adr.loss"]
    assert by_id["loss"]["type"] == "loss.reflexflow_fc"  # the FC-reweighted flow-matching loss replaces loss.mse
    assert by_id["predict"]["inputs"]["noisy"] == "rollout.noisy"
    plain = [n["id"] for n in graph_json(capsys, "quickstart")["nodes"]]
    assert "rollout" not in plain and "adr" not in plain


def test_params_come_only_from_declared_bindings():
    spec = compile_graph(build_config({"logit_std": 2.0, "resolution": 16, "learning_rate": 0.01,
                                       "graph": {"nodes": [SHARP_NODE], "extend": {"total.terms": ["sharp.loss"]}}}))
    assert spec.node("sharp").params == {"weight": 2.0}  # resolution / learning_rate are not its keys
    assert "learning_rate" not in spec.node("noise").params and spec.node("noise").params["logit_std"] == 2.0
    assert spec.node("optimizer").params["learning_rate"] == 0.01


def test_set_node_param_reaches_a_plugin_node_and_unknown_targets_exit_2(tiny, tmp_path, capsys):
    graph = {"nodes": [SHARP_NODE], "extend": {"total.terms": ["sharp.loss"]}}
    cfg = str(tiny(graph=graph, max_train_steps=2))
    nodes = {n["id"]: n for n in graph_json(capsys, cfg, "--set", "sharp.weight=0.25")["nodes"]}
    assert nodes["sharp"]["params"]["weight"] == 0.25
    assert main(["validate", cfg, "--set", "sharpp.weight=1"]) == 2
    assert "no node 'sharpp' in the graph (did you mean 'sharp'?)" in capsys.readouterr().err
    assert main(["validate", cfg, "--set", "sharp.wieght=1"]) == 2
    assert "sharp.params.wieght: unknown key" in " ".join(capsys.readouterr().err.split())
    assert main(["run", cfg, "--set", "sharp.weight=0"]) == 0
    metrics = read_metrics(tmp_path / "run")
    assert all(m["loss"] == m["loss/fm"] and m["loss/sharp"] > 0 for m in metrics)  # weight 0: logged, not added


def test_adding_a_term_keeps_every_other_term(tiny, tmp_path):
    """The patch that adds a term to a teacher-forcing config adds it to a ReflexFlow config without dropping ADR / FC."""
    cfg = tiny(**ROLLOUT, prediction_type="flow_matching", max_train_steps=2,
               graph={"nodes": [SHARP_NODE], "extend": {"total.terms": ["sharp.loss"]}, "set": {"sharp.weight": 0.5}})
    assert main(["run", str(cfg)]) == 0
    for m in read_metrics(tmp_path / "run"):
        assert {"loss/adr", "loss/fc", "loss/sharp"} <= set(m)
        by_hand = m["loss/fc"] + 10 * m["loss/adr"] + 0.5 * m["loss/sharp"]
        assert abs(m["loss"] - by_hand) <= 1e-5 * abs(by_hand)


def test_a_disconnected_branch_is_refused_naming_its_nodes(tiny, capsys):
    """The old way of adding a term (rewire the optimizer to the new node) now leaves loss, ADR and FC feeding
    nothing: refused, each named, instead of running them for nothing."""
    cfg = tiny(**ROLLOUT, graph={"nodes": [SHARP_NODE, {"id": "optimize", "inputs": {"loss": "sharp.loss"}}]})
    assert main(["validate", str(cfg)]) == 2
    err = capsys.readouterr().err
    for node in ("loss", "adr", "total"):
        assert f"{node}: its outputs reach no sink (update, grid, probe, checkpoint)" in err


def test_flags_that_contradict_the_graph_exit_2_naming_both(tiny, capsys):
    cases = [
        (dict(scheduled_sampling_reflexflow=True), ["scheduled_sampling_reflexflow", "no ReflexFlow nodes", "scheduled sampling is off"]),
        (dict(**ROLLOUT, graph={"remove": ["rollout"], "nodes": [{"id": "predict", "inputs": {"noisy": "noise.noisy"}}]}),
         ["graph.remove", "removes the rollout node", "scheduled_sampling_max_step_offset=2"]),
        (dict(**ROLLOUT, graph={"set": {"rollout.scheduled_sampling_probability": 0.5}}),
         ["rollout.params.scheduled_sampling_probability", "flat key scheduled_sampling_probability is 1.0"]),
        (dict(graph={"include": ["reflexflow"]}), ["adr: ReflexFlow's terms act on rolled-out samples", "no rollout node"]),
        (dict(graph={"include": ["rollout"]}), ["rollout: this rollout node never rolls a sample out"]),
        (dict(graph={"include": ["rolout"]}), ["graph.include", "did you mean 'rollout'"]),
        (dict(**ROLLOUT, scheduled_sampling_reflexflow=False, graph={"include": ["reflexflow"]}),
         ["scheduled_sampling_reflexflow: is false but the graph section includes ReflexFlow nodes (adr, loss)"]),
        (dict(graph={"include": ["input_perturbation"]}), ["input_perturbation: this node perturbs nothing: ip_noise_gamma is 0"]),
    ]
    for overrides, needles in cases:
        capsys.readouterr()
        cfg = str(tiny(**overrides))
        for command in ("validate", "run"):
            assert main([command, cfg]) == 2, (overrides, command)
            err = " ".join(capsys.readouterr().err.split())
            assert all(n in err for n in needles), (overrides, err)


def test_included_rollout_fragment_takes_the_params_the_user_gives_it(tiny, tmp_path):
    cfg = tiny(max_train_steps=2, graph={"include": ["rollout"], "set": {"rollout.scheduled_sampling_max_step_offset": 2,
                                                                        "rollout.scheduled_sampling_probability": 1.0}})
    assert main(["run", str(cfg)]) == 0
    assert all(m["rollout/p"] == 1.0 and m["rollout/samples"] > 0 for m in read_metrics(tmp_path / "run"))


def test_sum_stage_adds_weighted_terms_in_order_and_refuses_duplicate_names():
    import pytest
    from rollgraph.graph import RunError
    from rollgraph.stages.loss import SumLoss

    a, b = torch.tensor(1.5, requires_grad=True), torch.tensor(2.0, requires_grad=True)
    out = SumLoss("total", None).run(None, [Loss.term("a", a), Loss.term("b", b, 10.0)])["loss"]
    assert out.total.item() == 21.5 and set(out.terms) == {"a", "b"} and out.terms["b"].item() == 2.0
    out.total.backward()
    assert a.grad.item() == 1.0 and b.grad.item() == 10.0
    with pytest.raises(RunError, match="both named"):
        SumLoss("total", None).run(None, [Loss.term("a", a), Loss.term("a", b)])


def test_renaming_the_model_node_keeps_validation_samples(tiny, tmp_path, capsys):
    """The sample and probe nodes read the model through their ports: a rename that forgets them is refused,
    naming each reader, instead of samples silently disappearing; rewired, samples and checkpoints follow."""
    rename = {"remove": ["model"], "nodes": [
        {"id": "net", "type": "model.load", "inputs": {"data": "data.data"}},
        {"id": "optimizer", "inputs": {"model": "net.model"}},
        {"id": "predict", "inputs": {"model": "net.model"}}]}
    assert main(["validate", str(tiny(graph=rename))]) == 2
    err = " ".join(capsys.readouterr().err.split())
    for reader in ("samples", "probe"):
        assert f"{reader}.inputs.model: references unknown node 'model'" in err
    rename["nodes"] += [{"id": "samples", "inputs": {"model": "net.model"}}, {"id": "probe", "inputs": {"model": "net.model"}}]
    assert main(["run", str(tiny(max_train_steps=2, validation_steps=1, graph=rename))]) == 0
    run = tmp_path / "run"
    assert (run / "samples" / "step-000001.png").exists() and (run / "samples" / "step-000002.png").exists()
    assert (run / "checkpoints" / "step-2" / "net").is_dir()
    # `rollgraph sample` runs the same graph's setup and sample node: the renamed model node loads from "net"
    assert main(["sample", str(run), "--num", "3", "--steps", "2", "--out", str(tmp_path / "s")]) == 0
    assert (tmp_path / "s" / "samples.safetensors").exists() and (tmp_path / "s" / "sample-0002.png").exists()
