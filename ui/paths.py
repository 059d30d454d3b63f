"""Path confinement: every file the UI reads or writes must lie inside a configured folder.

Paths are resolved (symlinks followed, ``..`` collapsed) before the check, so neither ``../`` nor a
symlink pointing outside can escape. Preset names typed by a user become safe file names.
"""

from __future__ import annotations

import re
from pathlib import Path

_UNSAFE = re.compile(r"[^\w.-]+")  # \w: letters and digits of any script (Zoë, 日本), and _


class PathError(ValueError):
    """A path outside the folder it must stay in, or a name that cannot be made safe."""


def confine(path: str | Path, root: str | Path) -> Path:
    """The resolved ``path`` (relative paths are taken relative to ``root``), or PathError when it is
    not ``root`` itself or inside it."""
    base = Path(root).expanduser().resolve()
    candidate = Path(path).expanduser()
    if not candidate.is_absolute():
        candidate = base / candidate
    resolved = candidate.resolve()
    if resolved != base and base not in resolved.parents:
        raise PathError(f"{path} is outside {base}")
    return resolved


def is_inside(path: str | Path, root: str | Path) -> bool:
    try:
        confine(path, root)
    except PathError:
        return False
    return True


def safe_name(name: str, max_len: int = 80) -> str:
    """A file stem made only of letters (any script), digits, '.', '_' and '-', never starting with a dot, so it
    cannot name a parent folder, a hidden file or a path: ``../../etc/x`` becomes ``etc_x``."""
    stem = str(name).strip()
    if stem.lower().endswith(".json"):
        stem = stem[:-5]
    stem = _UNSAFE.sub("_", stem)
    stem = re.sub(r"_{2,}", "_", stem).lstrip("._-").rstrip("._-")
    stem = re.sub(r"\.{2,}", ".", stem)[:max_len].rstrip("._-")
    if not stem:
        raise PathError(f"{name!r} has no usable characters for a file name (use letters, digits, '.', '_', '-')")
    return stem
