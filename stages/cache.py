"""A content-addressed cache for VAE latents and text embeddings: safetensors files plus a JSON manifest.

An entry's key is a SHA-256 over everything its tensors depend on: for a latent, the image file's content
hash, the VAE's identity, the resolution, the flip and the encoder dtype; for a text embedding, the prompt,
the tokenizers' and text encoders' identity, the sequence length and the dtype. A model's identity hashes
its components' config/tokenizer files by content and its weight files by name, size and modification time
(hashing gigabytes of weights on every run would cost more than it saves). So a changed image, model or
resolution simply misses and is encoded again, and the entry it supersedes (same kind and source) is
deleted. ``manifest.json`` lists every entry with what it was made from, for people and tools; lookups go
by key, so a lost manifest costs nothing but the listing. Files are written atomically (temp + rename),
safetensors only: a cache from a stranger cannot run code.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

MANIFEST = "manifest.json"
CONFIG_SUFFIXES = (".json", ".txt", ".model", ".py")


def digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def model_identity(folder: Path, components: list[str]) -> str:
    """Identity of some components of a diffusers folder (see the module docstring)."""
    parts = []
    for name in sorted(components):
        root = folder / name
        if not root.is_dir():
            continue
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            rel = str(path.relative_to(folder))
            if path.suffix in CONFIG_SUFFIXES:
                parts.append((rel, file_digest(path)))
            else:
                st = path.stat()
                parts.append((rel, st.st_size, st.st_mtime_ns))
    return digest(parts)


class EmbeddingCache:
    """``get(key)`` / ``put(key, tensors, kind, source, info)``; ``root=None`` disables caching."""

    def __init__(self, root: Path | None, writer: bool = True):
        self.root = Path(root) if root is not None else None
        self.writer = writer  # only one process (rank 0) rewrites the manifest
        self.hits = 0
        self.misses = 0
        self.entries: dict[str, dict[str, Any]] = {}
        if self.root is not None:
            (self.root / "entries").mkdir(parents=True, exist_ok=True)
            manifest = self.root / MANIFEST
            if manifest.exists():
                try:
                    self.entries = json.loads(manifest.read_text()).get("entries", {})
                except (json.JSONDecodeError, OSError, AttributeError):
                    self.entries = {}

    def _path(self, key: str) -> Path:
        return self.root / "entries" / f"{key}.safetensors"

    def get(self, key: str) -> dict[str, torch.Tensor] | None:
        if self.root is None:
            self.misses += 1
            return None
        path = self._path(key)
        if path.exists():
            try:
                tensors = load_file(str(path))
            except (SafetensorError, OSError, ValueError):
                tensors = None  # a torn or foreign file: encode again and overwrite it
            if tensors is not None:
                self.hits += 1
                return tensors
        self.misses += 1
        return None

    def put(self, key: str, tensors: dict[str, torch.Tensor], kind: str, source: str, info: dict[str, Any]) -> None:
        if self.root is None:
            return
        path = self._path(key)
        tmp = path.with_name(f".{key}.{os.getpid()}.tmp")
        save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(tmp))
        tmp.replace(path)
        for old_key, entry in list(self.entries.items()):
            if old_key != key and entry.get("kind") == kind and entry.get("source") == source:
                self._path(old_key).unlink(missing_ok=True)  # superseded: the image or the model changed
                del self.entries[old_key]
        self.entries[key] = {"kind": kind, "source": source, "created": time.time(), **info}

    def save_manifest(self) -> None:
        if self.root is None or not self.writer:
            return
        tmp = self.root / f".{MANIFEST}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps({"version": 1, "entries": self.entries}, indent=1, sort_keys=True))
        tmp.replace(self.root / MANIFEST)
