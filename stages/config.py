"""The flat ``config.json``: one pydantic model composed from the sections the stages own.

Each stage family owns its section (a pydantic model whose field names are the flat keys, SimpleTuner's
spelling where one exists). ``TrainConfig`` inherits them all, so validation, CLI flags and UI forms come
from one schema. Presets are sparse: they overlay the defaults. Unknown keys are errors with a
"did you mean"; every fault is reported at once with its key.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from rollgraph.graph import ConfigError, Issue
from rollgraph.graph.checkpoint_stage import CheckpointParams
from rollgraph.graph.registry import did_you_mean
from rollgraph.graph.spec import GraphPatch
from rollgraph.graph.trackers import tracker_issue
from rollgraph.stages.dreambooth import DreamboothParams
from rollgraph.stages.load import DataParams
from rollgraph.stages.loss import LossParams
from rollgraph.stages.models import FAMILIES, LatentAdapter, ModelParams
from rollgraph.stages.models.lora import LoraParams
from rollgraph.stages.noise import NoiseParams, ScheduleParams
from rollgraph.stages.optimize import OptimizerParams
from rollgraph.stages.probe import ProbeParams
from rollgraph.stages.reflexflow import ReflexFlowParams
from rollgraph.stages.rollout import InputPerturbationKeys, RolloutParams
from rollgraph.stages.sampling import ValidationParams
from rollgraph.stages.solvers import order_issue

PRESETS_DIR = Path(__file__).resolve().parent.parent / "presets"


class RunParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    section: ClassVar[str] = "Run"

    output_dir: str = Field("runs/quickstart", description="Folder for checkpoints, samples, metrics.jsonl and train.log")
    seed: int = Field(0, ge=0, description="Seed; each stage draws from a generator derived from (seed, stage id, step, micro-step) for the whole global batch, and each process keeps its slice")
    device: Literal["auto", "cuda", "mps", "cpu"] = Field("auto", description="auto: CUDA when present, else MPS, else CPU")
    mixed_precision: Literal["auto", "no", "bf16"] = Field("auto", description="auto: bf16 autocast on CUDA, full precision elsewhere")
    logging_steps: int = Field(10, ge=1, description="Print a log line every N steps (metrics.jsonl gets every step)")
    report_to: Literal["none", "tensorboard", "wandb"] = Field("none", description="Also send every metric of metrics.jsonl and each validation grid to TensorBoard (output_dir/tensorboard) or Weights & Biases (project rollgraph; WANDB_MODE=offline keeps it local), through accelerate's trackers")


SECTIONS: tuple[type[BaseModel], ...] = (
    RunParams, CheckpointParams, DataParams, ModelParams, LoraParams, DreamboothParams, ScheduleParams, NoiseParams, OptimizerParams,
    RolloutParams, InputPerturbationKeys, ReflexFlowParams, ValidationParams, ProbeParams, LossParams,
)

# keys that only the text-to-image families (sd, sdxl, sd3, flux) use; a non-default value elsewhere is an error
TEXT_TO_IMAGE_KEYS = (*DreamboothParams.model_fields, *LoraParams.model_fields, "validation_prompt", "validation_guidance",
                      "flux_guidance_value", "aspect_buckets")


class TrainConfig(*reversed(SECTIONS)):  # type: ignore[misc]
    model_config = ConfigDict(extra="forbid")

    graph: GraphPatch | None = Field(None, description="Replace, insert or remove stage-graph nodes by id")

    def _solver_order(self):  # replaces RolloutParams' validator: checked below with the rest, all faults at once
        return self

    @model_validator(mode="after")
    def _cross_checks(self):
        issues = []
        order = order_issue(self.scheduled_sampling_sampler, self.scheduled_sampling_order)
        if order:
            issues.append(order)
        if self.scheduled_sampling_reflexflow and self.prediction_type != "flow_matching":
            issues.append(f"scheduled_sampling_reflexflow=true needs prediction_type=flow_matching (ReflexFlow is defined for "
                          f"flow matching's velocity), got {self.prediction_type!r}")
        if (self.rollout_enabled and self.prediction_type != "flow_matching"
                and self.scheduled_sampling_grid_steps > self.num_train_timesteps):
            issues.append(f"scheduled_sampling_grid_steps={self.scheduled_sampling_grid_steps} is finer than the DDPM "
                          f"schedule (num_train_timesteps={self.num_train_timesteps}): its rollout steps would round to "
                          "zero-length steps that still count in k and cost model calls; use at most num_train_timesteps")
        if (missing := tracker_issue(self.report_to)) is not None:
            issues.append(f"report_to: {missing.message}")
        if self.dataset == "folder" and not self.instance_data_dir:
            issues.append("dataset=folder needs instance_data_dir")
        issues += self._family_checks()
        if issues:
            raise ValueError("; ".join(issues))
        return self

    def _family_checks(self) -> list[str]:
        family = FAMILIES.get(self.model_family)
        if family is None:
            return [f"model_family {self.model_family!r} is unknown{did_you_mean(self.model_family, FAMILIES)}; known: {sorted(FAMILIES)}"]
        name = self.model_family
        issues = []
        if issubclass(family, LatentAdapter):
            if not self.pretrained_model_name_or_path:
                issues.append(f"model_family {name} needs pretrained_model_name_or_path (a local diffusers pipeline folder)")
            if self.dataset != "folder":
                issues.append(f"model_family {name} trains on an image folder: set dataset=folder and instance_data_dir")
            if family.flow and self.prediction_type != "flow_matching":
                issues.append(f"model_family {name} is a flow-matching model: set prediction_type=flow_matching")
            if not family.flow and self.prediction_type == "flow_matching":
                issues.append(f"model_family {name} is a DDPM model: set prediction_type to epsilon or v_prediction (what "
                              "its scheduler/scheduler_config.json says)")
            if self.num_train_timesteps != 1000:
                issues.append(f"model_family {name} was trained on a 1000-step timestep scale: num_train_timesteps must be 1000")
            if self.model_architecture:
                issues.append(f"model_architecture builds a unet2d from scratch; model_family {name} loads pretrained_model_name_or_path")
            if self.class_filter is not None:
                issues.append(f"class_filter selects labelled pixel data; model_family {name} uses captions instead")
        else:
            fields = type(self).model_fields
            changed = [k for k in TEXT_TO_IMAGE_KEYS if getattr(self, k) != fields[k].get_default(call_default_factory=True)
                       and not (k == "lora_rank" and self.lora_rank == 0)]
            if changed:
                issues.append(f"{changed} only apply to the text-to-image families (sd, sdxl, sd3, flux), not model_family {name}")
        if self.with_prior_preservation and not self.class_data_dir:
            issues.append("with_prior_preservation needs class_data_dir")
        included = self.graph is not None and "prior_preservation" in self.graph.include
        if self.class_data_dir and not self.with_prior_preservation and not included:
            issues.append("class_data_dir is only used with with_prior_preservation=true (or graph.include prior_preservation)")
        if issubclass(family, LatentAdapter) and self.lora_format != "diffusers":
            from rollgraph.stages.lora_export import format_issue

            if self.lora_rank == 0:
                issues.append(f"lora_format {self.lora_format!r} needs a LoRA (lora_rank > 0); a full fine-tune saves the diffusers model folder")
            elif self.lora_type != "lora":
                issues.append(f"lora_format {self.lora_format!r} converts plain LoRA only, not lora_type {self.lora_type!r} "
                              "(its tensors have no kohya/comfyui spelling here); the diffusers file is always written")
            elif (issue := format_issue(name, self.lora_format)) is not None:
                issues.append(f"lora_format: {issue.message}")
        if self.train_text_encoder and name not in ("sd", "sdxl"):
            issues.append(f"train_text_encoder is for model_family sd / sdxl (CLIP text encoders), not {name!r}")
        elif self.train_text_encoder and (self.lora_rank == 0 or self.lora_type not in ("lora", "dora")):
            issues.append("train_text_encoder trains a LoRA / DoRA on the text encoders: it needs lora_rank > 0 and "
                          f"lora_type lora or dora (got lora_rank={self.lora_rank}, lora_type={self.lora_type!r})")
        if self.base_model_precision != "auto" and not (issubclass(family, LatentAdapter) and self.lora_rank != 0):
            issues.append(f"base_model_precision {self.base_model_precision!r} stores the frozen weights under a LoRA: it needs "
                          "a text-to-image family (sd, sdxl, sd3, flux) with lora_rank > 0 (full fine-tuning trains every weight)")
        if self.aspect_buckets and self.exposure_bias_probe_steps:
            issues.append("exposure_bias_probe_steps compares one batch of real latents, which aspect_buckets sizes differently: "
                          "turn one of them off")
        if self.lora_rank == 0 and self.lora_type != "lora":
            issues.append(f"lora_type {self.lora_type!r} needs an adapter: lora_rank > 0 (0 is full fine-tuning)")
        if self.lora_type in ("loha", "lokr") and self.lora_dropout:
            issues.append(f"lora_dropout applies to lora_type lora / dora, not {self.lora_type!r}")
        if issubclass(family, LatentAdapter) and name != "flux" and self.flux_guidance_value != 1.0:
            issues.append("flux_guidance_value only applies to model_family flux")
        return issues

    def run_recipe(self):
        """What the trainer runs for this config (the graph, the sampler, the probe): stages/run_recipe.py."""
        from rollgraph.stages.run_recipe import DiffusionRecipe  # it imports this module

        return DiffusionRecipe(self)

    @property
    def rollout_enabled(self) -> bool:
        p = self.scheduled_sampling_probability if self.scheduled_sampling_ramp_steps == 0 else max(
            self.scheduled_sampling_prob_start, self.scheduled_sampling_prob_end)
        return self.scheduled_sampling_max_step_offset > 0 and p > 0

    @property
    def reflexflow_enabled(self) -> bool:
        if self.scheduled_sampling_reflexflow is None:
            return self.prediction_type == "flow_matching" and self.rollout_enabled
        return bool(self.scheduled_sampling_reflexflow) and self.rollout_enabled


def config_sections() -> list[tuple[str, list[str]]]:
    """(section title, field names) in display order, for CLI help and UI forms."""
    out: dict[str, list[str]] = {}
    for section in SECTIONS:
        for name in section.model_fields:
            if not any(name in names for names in out.values()):
                out.setdefault(section.section, []).append(name)
    out["Graph"] = ["graph"]
    return list(out.items())


def config_issues(err: ValidationError) -> list[Issue]:
    issues = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "config"
        if e["type"] == "extra_forbidden":
            issues.append(Issue(key, f"unknown key{did_you_mean(str(e['loc'][0]), TrainConfig.model_fields)}"))
        else:
            msg = e["msg"].removeprefix("Value error, ")
            got = e.get("input")
            suffix = f" (got {got!r})" if e["loc"] and not isinstance(got, dict) else ""
            issues.append(Issue(key, msg + suffix))
    return issues


def build_config(data: dict[str, Any]) -> TrainConfig:
    from rollgraph.stages.preflight import model_folder_defaults

    data, issues = model_folder_defaults(data)  # model_family, prediction_type, dataset from the files named
    try:
        cfg = TrainConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(issues + config_issues(err)) from None
    if issues:
        raise ConfigError(issues)
    return cfg


def resolve_preset(name_or_path: str) -> Path:
    """A config path, or the name of a shipped preset (``quickstart`` = presets/quickstart.json)."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path
    shipped = PRESETS_DIR / f"{name_or_path.removesuffix('.json')}.json"
    if shipped.exists():
        return shipped
    raise ConfigError([Issue(str(name_or_path), f"no such config file or preset{did_you_mean(name_or_path, list_presets())}; "
                                                f"presets: {list_presets()}")])


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.json"))


def read_config_file(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError([Issue(str(path), f"not valid JSON: {err}")]) from None
    except OSError as err:
        raise ConfigError([Issue(str(path), f"cannot read: {err}")]) from None
    if not isinstance(data, dict):
        raise ConfigError([Issue(str(path), "a config must be a JSON object of keys")])
    return data


def parse_value(text: str) -> Any:
    """A command-line value: JSON when it parses (numbers, true/false, null, lists, dicts), else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        low = text.lower()
        return {"true": True, "false": False, "none": None}.get(low, text)


def load_config(name_or_path: str | None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """The config file (or preset) with ``overrides``; the override ``"graph.set"`` ({"node.param": value}, from
    ``--set NODE.PARAM=VALUE``) is merged into the graph section's ``set``."""
    data = read_config_file(resolve_preset(name_or_path)) if name_or_path else {}
    data = {k: v for k, v in data.items() if not k.startswith("_")}  # "_description" etc. are comments
    overrides = dict(overrides or {})
    node_params = overrides.pop("graph.set", None)
    data.update(overrides)
    if node_params:
        graph = dict(data.get("graph") or {}) if isinstance(data.get("graph") or {}, dict) else data["graph"]
        if isinstance(graph, dict):
            graph["set"] = {**graph.get("set", {}), **node_params}
            data["graph"] = graph
    return build_config(data)


def config_json(cfg: TrainConfig) -> dict[str, Any]:
    return cfg.model_dump(mode="json", exclude_none=False)
