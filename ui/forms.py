"""The config form, generated from the config schema (``TrainConfig`` and ``config_sections()``).

One widget per config key, grouped by section (the keys people change first pulled into an open
"Essentials" section at the top), labelled in words with the key itself, its description, default and
range as help text: Literal fields and names of registry entries (solvers) become dropdowns, bools checkboxes, ints and floats number
boxes, strings text boxes, and lists, dicts and the graph patch JSON text. Nothing here is a second
hand-kept list of keys: a new key in a stage's params section appears in the form by itself.

Each widget edits exactly one key of the raw JSON (``set_key``), so a sparse preset stays sparse. Range
checks are left to the schema (widgets carry no min/max), so a bad value reaches the validator and its
message appears under the widget.
"""

from __future__ import annotations

import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

import gradio as gr
from rollgraph.stages.config import TrainConfig, config_sections
from rollgraph.stages.registered_name import name_choices

UNSET = "(unset)"
_BOUNDS = (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<"))
ESSENTIALS = "Essentials"
ESSENTIAL_KEYS = ("max_train_steps", "learning_rate", "train_batch_size", "validation_steps", "checkpointing_steps", "seed")
OPEN_SECTIONS = (ESSENTIALS, "Data", "Scheduled sampling (rollout)", "ReflexFlow (flow matching)")
_WORDS = {"lr": "LR", "ema": "EMA", "lora": "LoRA", "vae": "VAE", "adam": "Adam", "8bit": "8-bit", "swd": "SWD",
          "fc": "FC", "dir": "folder", "num": "number of", "prob": "probability", "reflexflow": "ReflexFlow"}


def label_for(name: str) -> str:
    """A key in words: ``max_train_steps`` -> "Max train steps", ``use_8bit_adam`` -> "Use 8-bit Adam"."""
    words = [_WORDS.get(w, w) for w in name.split("_")]
    text = " ".join(words)
    return text[:1].upper() + text[1:]


def _display(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _unwrap(annotation) -> tuple[Any, bool]:
    """(inner annotation, optional) for ``X | None``; unions of several types stay as they are."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return inner[0], len(inner) < len(args)
    return annotation, False


@dataclass
class FieldSpec:
    name: str
    section: str
    kind: str  # choice | bool | int | float | text | json
    default: Any
    optional: bool
    description: str
    bounds: str
    choices: dict[str, Any] = field(default_factory=dict)  # widget value -> config value

    @classmethod
    def from_schema(cls, name: str, section: str) -> FieldSpec:
        info = TrainConfig.model_fields[name]
        inner, optional = _unwrap(info.annotation)
        choices: dict[str, Any] = {}
        registered = name_choices(info)  # a plugin's solver is a choice too: the registry is read now
        if registered is not None:
            kind, choices = "choice", {v: v for v in registered}
        elif typing.get_origin(inner) is Literal:
            kind, choices = "choice", {_display(v): v for v in typing.get_args(inner)}
        elif inner is bool:
            kind = "choice" if optional else "bool"
            if optional:
                choices = {"true": True, "false": False}
        elif inner in (int, float, str):
            kind = {int: "int", float: "float", str: "text"}[inner]
        else:
            kind = "json"
        bounds = ", ".join(f"{sym} {getattr(m, attr)}" for m in info.metadata for attr, sym in _BOUNDS
                           if getattr(m, attr, None) is not None)
        default = info.get_default(call_default_factory=True)
        return cls(name, section, kind, default, optional, info.description or "", bounds, choices)

    @property
    def info(self) -> str:
        parts = [f"{self.name}: {self.description}" if self.description else self.name]
        parts.append("default: " + ("unset" if self.default is None else _display(self.default)))
        if self.bounds:
            parts.append("range: " + self.bounds)
        return " · ".join(parts)

    def component(self, value: Any) -> gr.components.Component:
        common = {"label": label_for(self.name), "info": self.info, "elem_id": f"rg-f-{self.name}", "elem_classes": ["rg-field"]}
        shown = self.to_widget(value)
        if self.kind == "choice":
            options = ([UNSET] if self.optional else []) + list(self.choices)
            return gr.Dropdown(choices=options, value=shown, interactive=True, **common)
        if self.kind == "bool":
            return gr.Checkbox(value=shown, interactive=True, **common)
        if self.kind in ("int", "float") and not self.optional:
            return gr.Number(value=shown, precision=0 if self.kind == "int" else None, interactive=True, **common)
        if self.kind in ("int", "float"):  # a Number box cannot be empty (it sends 0), and empty means unset here
            return gr.Textbox(value=shown, placeholder="unset", interactive=True, **common)
        if self.kind == "json":
            common["elem_classes"] = ["rg-field", "rg-mono"]
            return gr.Textbox(value=shown, lines=2, max_lines=12, interactive=True, **common)
        return gr.Textbox(value=shown, interactive=True, **common)

    def to_widget(self, value: Any) -> Any:
        """The widget's value showing config value ``value`` (None when it cannot be shown)."""
        if self.kind == "choice":
            if value is None:
                return UNSET if self.optional else None
            for shown, v in self.choices.items():
                if type(v) is type(value) and v == value:
                    return shown
            return None
        if self.kind == "bool":
            return value if isinstance(value, bool) else bool(self.default)
        if self.kind in ("int", "float"):
            number = value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
            return number if not self.optional else ("" if value is None else str(value))
        if value is None:
            return ""
        if self.kind == "text" or isinstance(value, str):
            return value if isinstance(value, str) else json.dumps(value)
        return json.dumps(value)

    def from_widget(self, shown: Any) -> tuple[bool, Any]:
        """(present, config value); not present means: leave the key out (its default applies)."""
        if shown is None or shown == "" or shown == UNSET:
            return False, None
        if self.kind == "choice":
            return (True, self.choices[shown]) if shown in self.choices else (True, shown)
        if self.kind == "bool":
            return True, bool(shown)
        if self.kind in ("int", "float"):
            try:
                number = float(shown)
            except (TypeError, ValueError):
                return True, str(shown)  # the validator reports it next to this field
            return True, (int(round(number)) if self.kind == "int" and number.is_integer() else number)
        if self.kind == "json":
            try:
                return True, json.loads(shown)
            except json.JSONDecodeError:
                return True, shown  # kept as text: the validator reports it next to this field
        return True, str(shown)


FIELDS: list[FieldSpec] = [FieldSpec.from_schema(n, ESSENTIALS) for n in ESSENTIAL_KEYS] + [
    FieldSpec.from_schema(n, title) for title, names in config_sections() for n in names if n not in ESSENTIAL_KEYS]
FIELD_NAMES = [f.name for f in FIELDS]
SECTIONS = list(dict.fromkeys(f.section for f in FIELDS))


def effective_values(data: dict[str, Any]) -> dict[str, Any]:
    """Each key's value once the preset overlays the defaults."""
    return {f.name: data.get(f.name, f.default) for f in FIELDS}


def widget_values(data: dict[str, Any]) -> list[Any]:
    values = effective_values(data)
    return [f.to_widget(values[f.name]) for f in FIELDS]


def set_key(data: dict[str, Any], spec: FieldSpec, shown: Any) -> dict[str, Any]:
    """``data`` with key ``spec.name`` set from its widget: left out when empty or when it equals the
    default and the preset did not list it (presets stay sparse); order and comments kept."""
    out = dict(data)
    present, value = spec.from_widget(shown)
    if not present or (spec.name not in data and value == spec.default):
        out.pop(spec.name, None)
    else:
        out[spec.name] = value
    return out


@dataclass
class Form:
    widgets: list[gr.components.Component]
    accordions: dict[str, gr.Accordion]


def build_form(data: dict[str, Any]) -> Form:
    """Render the form (inside the current Blocks context) showing ``data``."""
    values = effective_values(data)
    widgets, accordions = [], {}
    for section in SECTIONS:
        specs = [f for f in FIELDS if f.section == section]
        with gr.Accordion(section, open=section in OPEN_SECTIONS, elem_classes=["rg-section"]) as acc:
            row: list[FieldSpec] = []
            for spec in specs + [None]:
                if spec is None or spec.kind == "json" or len(row) == 2:
                    if row:
                        with gr.Row(equal_height=False):
                            widgets += [f.component(values[f.name]) for f in row]
                    row = []
                if spec is not None and spec.kind == "json":
                    widgets.append(spec.component(values[spec.name]))
                elif spec is not None:
                    row.append(spec)
        accordions[section] = acc
    return Form(widgets, accordions)


def mark_updates(by_field: dict[str, list], shown: dict[str, str]) -> tuple[list[Any], dict[str, str]]:
    """Widget updates putting each field's problems under it (and clearing fixed ones), only where
    something changed; returns (updates in FIELDS order, the new {field: message} shown)."""
    now = {name: "; ".join(p.message for p in problems) for name, problems in by_field.items() if name in FIELD_NAMES}
    updates = []
    for spec in FIELDS:
        old, new = shown.get(spec.name), now.get(spec.name)
        if old == new:
            updates.append(gr.skip())
        elif new is None:
            classes = ["rg-field", "rg-mono"] if spec.kind == "json" else ["rg-field"]
            updates.append(gr.update(info=spec.info, elem_classes=classes))
        else:
            classes = ["rg-field", "rg-invalid"] + (["rg-mono"] if spec.kind == "json" else [])
            updates.append(gr.update(info=f"✖ {new}  —  {spec.info}", elem_classes=classes))
    return updates, now


def sections_with(by_field: dict[str, list]) -> set[str]:
    return {f.section for f in FIELDS if f.name in by_field}
