"""What the Config tab does: load, edit (form and raw JSON kept in sync), validate, save, import, export.

The raw JSON text is the source of truth: a widget edit writes the keys whose widgets disagree with it,
a JSON edit re-fills the widgets, and every JSON change re-validates and redraws the graph.
"""

from __future__ import annotations

import tempfile
from html import escape
from pathlib import Path
from typing import Any

import gradio as gr
from rollgraph.ui.checks import CheckResult, check_config
from rollgraph.ui.forms import FIELDS, SECTIONS, mark_updates, sections_with, set_key, widget_values
from rollgraph.ui.graph_view import graph_html
from rollgraph.ui.paths import PathError
from rollgraph.ui.presets import PresetStore, dump_config, parse_config_text

MAX_IMPORT_BYTES = 1_000_000


def problems_html(result: CheckResult | None, parse_error: str | None = None) -> str:
    if parse_error:
        return f'<div class="rg-problems rg-bad"><b>config.json</b>: {escape(parse_error)}</div>'
    if result is None or result.valid:
        return '<div class="rg-problems rg-ok">✔ valid: the config and its stage graph check out</div>'
    n = len(result.problems)
    items = "".join(f"<li><code>{escape(p.key)}</code>: {escape(p.message)}</li>" for p in result.problems)
    return f'<div class="rg-problems rg-bad"><b>{n} problem{"s" if n != 1 else ""}</b><ul>{items}</ul></div>'


def _message(text: str, ok: bool = True) -> str:
    return f'<div class="{"rg-okmsg" if ok else "rg-bad"}">{escape(text)}</div>'


class ConfigActions:
    def __init__(self, store: PresetStore):
        self.store = store
        self.export_root = Path(tempfile.mkdtemp(prefix="rollgraph-export-"))

    # --- loading ----------------------------------------------------------------------------------
    def initial(self) -> tuple[str | None, dict[str, Any]]:
        refs = self.store.refs()
        ref = "shipped/quickstart" if "shipped/quickstart" in refs else (refs[0] if refs else None)
        try:
            return ref, (self.store.load(ref) if ref else {})
        except PathError:
            return ref, {}

    def load_preset(self, ref: str) -> list[Any]:
        """[json text, message, *widget values, pending form edits (cleared)] for preset ``ref``."""
        try:
            data = self.store.load(ref)
        except PathError as err:
            return [gr.skip(), _message(str(err), ok=False)] + [gr.skip()] * (len(FIELDS) + 1)
        return [dump_config(data), _message(f"loaded {ref}")] + widget_values(data) + [{}]

    def load_text(self, text: str) -> list[Any]:
        """[json text, message, *widget values, pending (cleared)] for a config given as JSON text (a past run's)."""
        data, problem = parse_config_text(text)
        if data is None:
            return [gr.skip(), _message(problem, ok=False)] + [gr.skip()] * (len(FIELDS) + 1)
        return [dump_config(data), _message("loaded the run's config")] + widget_values(data) + [{}]

    def import_file(self, path: str | None) -> list[Any]:
        if not path:
            return [gr.skip(), gr.skip()] + [gr.skip()] * (len(FIELDS) + 1)
        file = Path(path)
        if file.stat().st_size > MAX_IMPORT_BYTES:
            return [gr.skip(), _message("that file is too large for a config", ok=False)] + [gr.skip()] * (len(FIELDS) + 1)
        data, problem = parse_config_text(file.read_text(encoding="utf-8", errors="replace"))
        if data is None:
            return [gr.skip(), _message(f"{file.name}: {problem}", ok=False)] + [gr.skip()] * (len(FIELDS) + 1)
        return [dump_config(data), _message(f"imported {file.name}; save it as a preset to keep it")] + widget_values(data) + [{}]

    def export_file(self, text: str) -> Any:
        data, problem = parse_config_text(text)
        if data is None:
            raise gr.Error(f"cannot export: {problem}")
        folder = Path(tempfile.mkdtemp(dir=self.export_root))
        path = folder / "config.json"
        path.write_text(dump_config(data) + "\n", encoding="utf-8")
        return gr.update(value=str(path), visible=True)

    # --- syncing form and JSON --------------------------------------------------------------------
    @staticmethod
    def _apply(data: dict[str, Any], shown: list[Any] | dict[str, Any]) -> dict[str, Any]:
        """``data`` with every widget that disagrees with it written in (``shown``: all widget values in
        FIELDS order, or {key: widget value} for some)."""
        values = shown if isinstance(shown, dict) else {spec.name: v for spec, v in zip(FIELDS, shown, strict=True)}
        current = dict(zip((f.name for f in FIELDS), widget_values(data), strict=True))
        new = data
        for spec in FIELDS:
            if spec.name in values and values[spec.name] != current[spec.name]:
                new = set_key(new, spec, values[spec.name])
        return new

    def form_to_json(self, *args: Any) -> list[Any]:
        """[json text, pending edits, message]. While the raw JSON does not parse, a form edit is kept as
        pending (compared with the last JSON that parsed) and written in once the JSON parses again."""
        *shown, text, last_good, pending = args
        data, problem = parse_config_text(text)
        if data is None:
            base, _ = parse_config_text(last_good)
            now = dict(zip((f.name for f in FIELDS), shown, strict=True))
            before = dict(zip((f.name for f in FIELDS), widget_values(base or {}), strict=True))
            pending = {**(pending or {}), **{k: v for k, v in now.items() if v != before[k]}}
            keys = ", ".join(pending) or "none"
            return [gr.skip(), pending, _message(f"the raw JSON does not parse ({problem}); kept your form edits ({keys}): "
                                                 "they are written into it once it parses", ok=False)]
        new = self._apply(data, shown)
        return [gr.skip() if new == data else dump_config(new), gr.skip(), gr.skip()]

    def json_to_form(self, text: str, *args: Any) -> list[Any]:
        """[json text, pending, *widget values]: the widgets follow the JSON; once it parses again, the form
        edits made while it did not are written into it."""
        *shown, pending = args
        data, _ = parse_config_text(text)
        if data is None:
            return [gr.skip(), gr.skip()] + [gr.skip()] * len(FIELDS)
        if pending:
            data = self._apply(data, pending)
        values = widget_values(data)
        widgets = [gr.skip() if new == old else new for new, old in zip(values, shown, strict=True)]
        return [dump_config(data) if pending else gr.skip(), {} if pending else gr.skip()] + widgets

    # --- validation -------------------------------------------------------------------------------
    def check_text(self, text: str) -> tuple[CheckResult | None, str | None]:
        data, problem = parse_config_text(text)
        return (None, problem) if data is None else (check_config(data), None)

    def validate(self, text: str) -> tuple[str, dict[str, Any]]:
        """API ``validate``: (HTML list of problems, {"valid": bool, "problems": [{"key", "message"}]})."""
        result, problem = self.check_text(text)
        if result is None:
            return problems_html(None, problem), {"valid": False, "problems": [{"key": "config", "message": problem}]}
        return problems_html(result), result.summary()

    def refresh(self, text: str, shown: dict[str, str] | None) -> list[Any]:
        """[problems HTML, graph HTML, marks state, *accordion updates, *widget updates]."""
        result, problem = self.check_text(text)
        if result is None:
            updates, marks = mark_updates({}, shown or {})
            graph = graph_html(None, note=problem)
            return [problems_html(None, problem), graph, marks] + [gr.skip()] * len(SECTIONS) + updates
        by_field = result.by_field()
        updates, marks = mark_updates(by_field, shown or {})
        opened = sections_with(by_field)
        accordions = [gr.update(open=True) if s in opened else gr.skip() for s in SECTIONS]
        if result.graph is not None:
            note = "invalid graph: see the problems" if result.problems else ""
            graph = graph_html(result.graph, result.by_node(), note)
        else:
            graph = graph_html(None, note="the config has errors (see the Config tab)")
        return [problems_html(result), graph, marks] + accordions + updates

    # --- saving -----------------------------------------------------------------------------------
    def save(self, name: str, text: str, overwrite: bool = False) -> tuple[str, Any]:
        """API ``save``: write the editor's config as the user's preset NAME (sanitised). Saving an
        invalid config is allowed (a draft) but says so."""
        data, problem = parse_config_text(text)
        if data is None:
            return _message(f"not saved: {problem}", ok=False), gr.skip()
        try:
            ref, path = self.store.save(name or "", data, overwrite=bool(overwrite))
        except PathError as err:
            return _message(f"not saved: {err}", ok=False), gr.skip()
        result = check_config(data)
        note = "" if result.valid else f" (it has {len(result.problems)} problem(s): it will not run until fixed)"
        return _message(f"saved {path}{note}"), gr.update(choices=self.store.choices(), value=ref)

    def rename_preset(self, ref: str | None, new_name: str | None) -> tuple[str, Any]:
        """API ``rename_preset``: (message, preset chooser on the renamed preset)."""
        try:
            new_ref, path = self.store.rename(ref or "", new_name or "")
        except (PathError, OSError) as err:
            return _message(f"not renamed: {err}", ok=False), gr.skip()
        return _message(f"renamed {ref} → {path.name}"), gr.update(choices=self.store.choices(), value=new_ref)

    def delete_preset(self, ref: str | None) -> tuple[str, Any]:
        """API ``delete_preset``: move the user's preset into its folder's .trash; (message, preset chooser)."""
        try:
            target = self.store.delete(ref or "")
        except (PathError, OSError) as err:
            return _message(f"not deleted: {err}", ok=False), gr.skip()
        return _message(f"moved {ref} to {target} (move it back to restore it)"), gr.update(choices=self.store.choices())

    def preset_choices(self) -> Any:
        return gr.update(choices=self.store.choices())
