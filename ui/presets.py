"""Preset files: the shipped ``presets/`` folder (read-only) and the user's own folder (read-write).

A preset is referred to as ``shipped/NAME`` or ``user/NAME``; names never carry a path, and every file
is confined to its folder. Presets are sparse JSON objects; keys starting with ``_`` are comments.
Only the user's presets can be renamed or deleted; a deleted one is moved into ``.trash/`` in the user's
folder (hidden from the list), never removed.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rollgraph.ui.paths import PathError, confine, safe_name

SHIPPED, USER = "shipped", "user"


def default_user_presets_dir() -> Path:
    return Path(os.environ.get("ROLLGRAPH_USER_PRESETS", "~/.rollgraph/presets")).expanduser()


def parse_config_text(text: str) -> tuple[dict[str, Any] | None, str | None]:
    """(config dict, None) or (None, what is wrong with the JSON text)."""
    try:
        data = json.loads(text or "{}")
    except json.JSONDecodeError as err:
        return None, f"not valid JSON: {err}"
    if not isinstance(data, dict):
        return None, "a config must be a JSON object of keys"
    return data, None


def dump_config(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False)


@dataclass
class PresetStore:
    shipped_dir: Path
    user_dir: Path

    def __post_init__(self):
        self.shipped_dir = Path(self.shipped_dir).expanduser().resolve()
        self.user_dir = Path(self.user_dir).expanduser().resolve()

    def _root(self, kind: str) -> Path:
        if kind == SHIPPED:
            return self.shipped_dir
        if kind == USER:
            return self.user_dir
        raise PathError(f"unknown preset folder {kind!r}")

    def refs(self) -> list[str]:
        out = []
        for kind in (SHIPPED, USER):
            root = self._root(kind)
            if root.is_dir():
                out += [f"{kind}/{p.stem}" for p in sorted(root.glob("*.json")) if p.is_file()]
        return out

    def choices(self) -> list[tuple[str, str]]:
        """(label, ref) pairs for a dropdown: shipped presets first, then the user's."""
        return [(f"{ref.split('/', 1)[1]}  ({'shipped' if ref.startswith(SHIPPED) else 'yours'})", ref) for ref in self.refs()]

    def path_of(self, ref: str) -> Path:
        kind, sep, name = str(ref).partition("/")
        if not sep or name != safe_name(name):
            raise PathError(f"{ref!r} is not a preset reference (shipped/NAME or user/NAME)")
        root = self._root(kind)
        return confine(root / f"{name}.json", root)

    def load(self, ref: str) -> dict[str, Any]:
        path = self.path_of(ref)
        if not path.is_file():
            raise PathError(f"no preset {ref!r}")
        data, problem = parse_config_text(path.read_text(encoding="utf-8"))
        if data is None:
            raise PathError(f"{path.name}: {problem}")
        return data

    def save(self, name: str, data: dict[str, Any], overwrite: bool = False) -> tuple[str, Path]:
        """Write ``data`` as the user's preset NAME (sanitised); returns (ref, path)."""
        stem = safe_name(name)
        self.user_dir.mkdir(parents=True, exist_ok=True)
        path = confine(self.user_dir / f"{stem}.json", self.user_dir)
        if path.exists() and not overwrite:
            raise PathError(f"a preset named {stem!r} exists already; tick 'overwrite' to replace it")
        tmp = path.with_name(f".{stem}.json.tmp")
        tmp.write_text(dump_config(data) + "\n", encoding="utf-8")
        tmp.replace(path)
        return f"{USER}/{stem}", path

    def _own(self, ref: str) -> Path:
        if not str(ref).startswith(f"{USER}/"):
            raise PathError(f"{ref!r} is a shipped preset: save a copy under your own name to change it")
        path = self.path_of(ref)
        if not path.is_file():
            raise PathError(f"no preset {ref!r}")
        return path

    def rename(self, ref: str, new_name: str) -> tuple[str, Path]:
        """Rename the user's preset ``ref`` to NEW_NAME (sanitised); returns (new ref, path)."""
        path = self._own(ref)
        stem = safe_name(new_name)
        target = confine(self.user_dir / f"{stem}.json", self.user_dir)
        if target.exists():
            raise PathError(f"a preset named {stem!r} exists already")
        path.rename(target)
        return f"{USER}/{stem}", target

    def delete(self, ref: str) -> Path:
        """Move the user's preset ``ref`` into the user folder's .trash; returns where it went."""
        path = self._own(ref)
        trash = self.user_dir / ".trash"
        trash.mkdir(exist_ok=True)
        target = trash / f"{path.stem}-{time.strftime('%Y%m%d-%H%M%S')}-{time.time_ns() % 1_000_000}.json"
        path.rename(target)
        return target
