"""Compile a TrainConfig into its stage graph: the shipped recipe, the fragments the config includes, bindings.

The recipe is data (``stages/recipes/``): ``base.json`` is teacher forcing,

    setup:  data ─► model ─► optimizer            schedule
    step:   batch ─► noise ─► predict ─► loss ─► total ─► optimize

and each optional part is a fragment, a patch of that graph:

- ``rollout`` (scheduled sampling): inserted between noise and predict; included when the flat rollout keys
  can roll out (``scheduled_sampling_max_step_offset`` > 0 and a probability > 0).
- ``reflexflow``: the FC-reweighted flow-matching loss replaces ``loss`` (loss.mse -> loss.reflexflow_fc) and the
  ADR term joins the sum; included when ``scheduled_sampling_reflexflow`` is true, or unset with flow matching
  and the rollout fragment included.
- ``input_perturbation`` (DDPM-IP): between noise and predict, probability 1; included when
  ``ip_noise_gamma`` > 0. It and the rollout both replace the model input, so the two together are an error.
- ``prior_preservation`` (Dreambooth): the class images' own data, batch, noise, predict and loss nodes, their term
  (weight ``prior_loss_weight``) appended to ``total``; included when ``with_prior_preservation`` is true
  (stages/prior_preservation.py).

The config's ``graph`` section may ``include`` fragments by name, then patches the result (see
rollgraph.graph.recipe). Node params come from the flat keys each stage ``binds``, then the node's own
params. A flag that contradicts the compiled graph is an error naming both, never a silent no-op.
"""

from __future__ import annotations

from pathlib import Path

from rollgraph.graph import ConfigError, GraphSpec, Issue
from rollgraph.graph.recipe import (
    apply_patch,
    bind_params,
    load_fragment,
    load_recipe,
    set_params,
    user_params,
)
from rollgraph.graph.registry import did_you_mean, registered_stages
from rollgraph.stages.config import TrainConfig

RECIPES = Path(__file__).resolve().parent / "recipes"
FRAGMENTS = ("rollout", "reflexflow", "input_perturbation", "prior_preservation")
PRIOR_NODES = ("class_data", "class_batch", "class_noise", "class_predict", "prior_loss")  # stages/recipes/prior_preservation.json
REFLEXFLOW_TYPES = "loss.reflexflow_"  # ReflexFlow's loss stages, whatever their node ids
ROLLOUT_KEYS = ("scheduled_sampling_max_step_offset", "scheduled_sampling_probability", "scheduled_sampling_ramp_steps",
                "scheduled_sampling_prob_start", "scheduled_sampling_prob_end")


def can_roll_out(p) -> bool:
    """Whether rollout params (flat keys or a node's) ever roll a sample out."""
    prob = p.scheduled_sampling_probability if p.scheduled_sampling_ramp_steps == 0 else max(
        p.scheduled_sampling_prob_start, p.scheduled_sampling_prob_end)
    return p.scheduled_sampling_max_step_offset > 0 and prob > 0


def included_fragments(cfg: TrainConfig) -> list[str]:
    """The fragments the flat keys ask for, then the ones the ``graph`` section includes, in that order."""
    names = [name for name, on in (("rollout", cfg.rollout_enabled), ("reflexflow", cfg.reflexflow_enabled),
                                   ("input_perturbation", cfg.ip_noise_gamma > 0),
                                   ("prior_preservation", cfg.with_prior_preservation)) if on]
    asked = cfg.graph.include if cfg.graph is not None else []
    unknown = [n for n in asked if n not in FRAGMENTS]
    if unknown:
        raise ConfigError([Issue("graph.include", f"no fragment {n!r}{did_you_mean(n, FRAGMENTS)}; fragments: {list(FRAGMENTS)}")
                           for n in unknown])
    return names + [n for n in asked if n not in names]


def _flag_issues(cfg: TrainConfig) -> list[Issue]:
    issues = []
    if cfg.graph is not None and "prior_preservation" in cfg.graph.include:
        if "with_prior_preservation" in cfg.model_fields_set and not cfg.with_prior_preservation:
            issues.append(Issue("graph.include", "includes prior_preservation but with_prior_preservation is false; drop one "
                                                 "of the two"))
        if not cfg.class_data_dir:
            issues.append(Issue("graph.include", "includes prior_preservation, which needs class_data_dir (the class images)"))
    if cfg.ip_noise_gamma > 0 and cfg.rollout_enabled:
        issues.append(Issue("ip_noise_gamma", f"ip_noise_gamma={cfg.ip_noise_gamma} (input perturbation) and scheduled "
                            f"sampling (scheduled_sampling_max_step_offset={cfg.scheduled_sampling_max_step_offset}) both "
                            "replace the model input; use one of them"))
    return issues


def _graph_issues(cfg: TrainConfig, spec: GraphSpec) -> list[Issue]:
    """Flags that the compiled graph contradicts (after the ``graph`` section's patch)."""
    ids = set(spec.ids())
    reflexflow = sorted(n.id for n in spec.nodes if n.type.startswith(REFLEXFLOW_TYPES))
    explicit = cfg.model_fields_set
    issues = []
    rollout_flags = ", ".join(f"{k}={getattr(cfg, k)}" for k in ROLLOUT_KEYS if k in explicit) or "the defaults"
    if cfg.scheduled_sampling_reflexflow and not reflexflow:
        why = ("scheduled sampling is off (" + rollout_flags + ")") if "rollout" not in ids else "the graph section removed them"
        issues.append(Issue("scheduled_sampling_reflexflow", f"is true but the graph has no ReflexFlow nodes ({REFLEXFLOW_TYPES}*): {why}"))
    if cfg.scheduled_sampling_reflexflow is False and reflexflow:
        issues.append(Issue("scheduled_sampling_reflexflow", "is false but the graph section includes ReflexFlow nodes "
                            f"({', '.join(reflexflow)}); drop one of the two"))
    users = user_params(cfg.graph)
    if "input_perturbation" in ids and cfg.ip_noise_gamma == 0 and "input_perturbation_gamma" not in users.get("input_perturbation", {}):
        issues.append(Issue("input_perturbation", "this node perturbs nothing: ip_noise_gamma is 0 (set ip_noise_gamma > 0 "
                            "or the node's input_perturbation_gamma)"))
    for node_id in reflexflow:
        if "rollout" not in ids:
            issues.append(Issue(node_id, "ReflexFlow's terms act on rolled-out samples, but the graph has no rollout node "
                                f"(scheduled sampling: {rollout_flags})"))
    if cfg.rollout_enabled and "rollout" not in ids:
        issues.append(Issue("graph.remove", f"removes the rollout node that the flat keys turn on ({rollout_flags})"))
    if cfg.with_prior_preservation and (gone := [n for n in PRIOR_NODES if n not in ids]):
        issues.append(Issue("graph.remove", f"removes {', '.join(gone)} of the prior_preservation fragment that "
                                            "with_prior_preservation=true turns on"))
    if cfg.ip_noise_gamma > 0 and "input_perturbation" not in ids:
        issues.append(Issue("graph.remove", f"removes the input_perturbation node that ip_noise_gamma={cfg.ip_noise_gamma} turns on"))
    stages = registered_stages()
    for node in spec.nodes:
        cls = stages.get(node.type)
        if node.type != "rollout.scheduled_sampling" or cls is None:
            continue
        try:
            params = cls.Params.model_validate(node.params)
        except ValueError:
            continue  # validation reports the bad params
        written = set(users.get(node.id, {})) | {p for p, k in cls.bindings().items() if k in explicit}
        causes = {"scheduled_sampling_max_step_offset"} if params.scheduled_sampling_max_step_offset == 0 else set(ROLLOUT_KEYS[1:])
        if not can_roll_out(params) and not causes & written:  # a deliberate p = 0 is teacher forcing, not a no-op
            issues.append(Issue(node.id, "this rollout node never rolls a sample out (scheduled_sampling_max_step_offset "
                                f"{params.scheduled_sampling_max_step_offset}, probability {params.scheduled_sampling_probability}): "
                                "set the scheduled_sampling_* keys or the node's params"))
    return issues


def compile_graph(cfg: TrainConfig) -> GraphSpec:
    """The config's graph with every node's params (validation is separate: validate_graph)."""
    issues = _flag_issues(cfg)
    if issues:
        raise ConfigError(issues)
    stages = registered_stages()
    nodes = load_recipe(RECIPES / "base.json")
    for name in included_fragments(cfg):
        nodes = apply_patch(nodes, load_fragment(RECIPES / f"{name}.json"), f"fragment {name}", stages)
    if cfg.graph is not None:
        nodes = apply_patch(nodes, cfg.graph, "graph", stages)
        nodes = set_params(nodes, cfg.graph.set, "graph.set")
    spec = bind_params(nodes, cfg.model_dump(), cfg.model_fields_set, user_params(cfg.graph), stages)
    issues = _graph_issues(cfg, spec)
    if issues:
        raise ConfigError(issues)
    return spec
