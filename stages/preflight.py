"""Everything about a config that can be checked before training, for ``validate`` and ``run`` alike (exit 2).

Two parts:

- ``model_folder_defaults(data)`` fills keys the user left out from what the files already say: ``model_family``
  from the pipeline class in ``model_index.json``, ``prediction_type`` from ``scheduler/scheduler_config.json``
  (a ``FlowMatch*`` scheduler means flow_matching, otherwise its ``prediction_type``, diffusers' default
  ``epsilon``), and ``dataset: folder`` when ``instance_data_dir`` is set. A value the user gave always wins;
  one that contradicts the folder is an error naming both sides.
- ``preflight_issues(cfg)`` checks the paths a run will open: the model folder (its family, components,
  prediction type, resolution, LoRA targets: the family's own weight-free preflight), and the image folders
  (they exist, hold images, and every image's header decodes). Every fault is collected, then reported at once.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rollgraph.graph.errors import ConfigError, Issue


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def folder_family(folder: Path) -> tuple[str | None, str | None]:
    """(pipeline class name, model_family) from a diffusers pipeline folder's model_index.json; (None, None) when
    the folder has no readable model_index.json, (name, None) when no registered family loads that pipeline."""
    from rollgraph.stages.models import FAMILIES, LatentAdapter

    index = _read_json(folder / "model_index.json")
    if index is None:
        return None, None
    name = index.get("_class_name")
    family = next((f.family for f in FAMILIES.values() if issubclass(f, LatentAdapter) and name in f.pipeline_classes), None)
    return name, family


def folder_prediction_type(folder: Path) -> str | None:
    """What the model in a pipeline folder was trained to predict, from scheduler/scheduler_config.json."""
    sched = _read_json(folder / "scheduler" / "scheduler_config.json")
    if sched is None:
        return None
    if "FlowMatch" in str(sched.get("_class_name", "")):
        return "flow_matching"
    return sched.get("prediction_type", "epsilon")


def model_folder_defaults(data: dict[str, Any]) -> tuple[dict[str, Any], list[Issue]]:
    """``data`` (the keys a user gave: preset + overrides) with the defaults the files imply filled in, and the
    contradictions between given values and those files."""
    data = dict(data)
    issues: list[Issue] = []
    if data.get("instance_data_dir"):
        if "dataset" not in data:
            data["dataset"] = "folder"
        elif data["dataset"] != "folder":
            issues.append(Issue("dataset", f"dataset is {data['dataset']!r} but instance_data_dir is set "
                                           f"({data['instance_data_dir']}): an image folder means dataset=folder; drop one"))
    path = data.get("pretrained_model_name_or_path")
    if not isinstance(path, str) or not path:
        return data, issues
    folder = Path(path).expanduser()
    pipeline, family = folder_family(folder)
    if family is not None:
        given = data.get("model_family")
        if given is None:
            data["model_family"] = family
        elif given != family:
            issues.append(Issue("model_family", f"{folder} holds a {pipeline}, which is model_family {family!r}, not "
                                                f"{given!r} (model_index.json): leave model_family out to use the folder's, "
                                                "or point pretrained_model_name_or_path at a matching pipeline"))
    if pipeline is not None:
        trained = folder_prediction_type(folder)
        given = data.get("prediction_type")
        if trained is not None and given is None:
            data["prediction_type"] = trained
        elif trained is not None and given != trained:
            issues.append(Issue("prediction_type", f"the model in {folder} was trained with prediction_type {trained!r} "
                                                   f"(scheduler/scheduler_config.json), not {given!r}: leave "
                                                   "prediction_type out to use the folder's"))
    return data, issues


def image_folder_issues(key: str, value: str | None) -> list[Issue]:
    """The folder exists, holds images, and each image's header decodes (PIL reads only the header here)."""
    from PIL import Image, UnidentifiedImageError
    from rollgraph.stages.load import IMAGE_SUFFIXES, list_images

    if not value:
        return []
    root = Path(value).expanduser()
    if not root.is_dir():
        return [Issue(key, f"{root} does not exist or is not a folder")]
    paths = list_images(root)
    if not paths:
        return [Issue(key, f"{root} contains no images ({', '.join(IMAGE_SUFFIXES)})")]
    bad = []
    for p in paths:
        try:
            with Image.open(p) as im:
                _ = im.size
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
            bad.append(f"{p} ({err})")
    if bad:
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        return [Issue(key, f"{len(bad)} of {len(paths)} images cannot be read: {'; '.join(bad[:5])}{more}")]
    return []


def preflight_issues(cfg) -> list[Issue]:
    """Every fault in the files a run of ``cfg`` would open, without loading weights or images."""
    from rollgraph.stages.models import FAMILIES, LatentAdapter
    from rollgraph.stages.models.base import local_model_folder

    issues: list[Issue] = []
    family = FAMILIES.get(cfg.model_family)
    try:
        if family is not None and issubclass(family, LatentAdapter):
            family.preflight(cfg, cfg.resolution)
        elif cfg.pretrained_model_name_or_path:
            local_model_folder(cfg.pretrained_model_name_or_path)
    except ConfigError as err:
        issues += err.issues
    if cfg.dataset == "folder" or (family is not None and issubclass(family, LatentAdapter)):
        issues += image_folder_issues("instance_data_dir", cfg.instance_data_dir)
    if cfg.with_prior_preservation or cfg.class_data_dir:  # the flag or graph.include prior_preservation
        issues += image_folder_issues("class_data_dir", cfg.class_data_dir)
    return issues


def check_preflight(cfg) -> None:
    """Raise ConfigError (exit 2) listing every preflight fault."""
    issues = preflight_issues(cfg)
    if issues:
        raise ConfigError(issues)
