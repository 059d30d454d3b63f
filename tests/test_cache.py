"""The latent / text-embedding cache: reused on the next run, invalidated by image, resolution or model changes."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import torch
from PIL import Image
from rollgraph.graph.cli import main
from rollgraph.stages.cache import EmbeddingCache, model_identity

from tests.conftest import read_metrics
from tests.tiny_pipelines import family_config, pipeline_folder, write_config, write_images


def test_entries_round_trip_supersede_and_survive_corruption(tmp_path):
    cache = EmbeddingCache(tmp_path / "c")
    assert cache.get("k1") is None
    cache.put("k1", {"mean": torch.ones(2, 3)}, "latent", "/img/a.png", {"resolution": 16})
    assert torch.equal(cache.get("k1")["mean"], torch.ones(2, 3))
    cache.put("k2", {"mean": torch.zeros(2)}, "latent", "/img/a.png", {"resolution": 32})  # same image, new key
    assert not (tmp_path / "c" / "entries" / "k1.safetensors").exists() and set(cache.entries) == {"k2"}
    cache.save_manifest()
    again = EmbeddingCache(tmp_path / "c")
    assert again.entries["k2"]["resolution"] == 32 and again.get("k2") is not None
    (tmp_path / "c" / "entries" / "k2.safetensors").write_bytes(b"torn write")
    assert again.get("k2") is None and (again.hits, again.misses) == (1, 1)
    assert all(p.suffix in (".safetensors", ".json") for p in (tmp_path / "c").rglob("*") if p.is_file())


def test_model_identity_follows_configs_and_weight_files(tmp_path):
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "config.json").write_text('{"scaling_factor": 0.5}')
    (tmp_path / "vae" / "w.safetensors").write_bytes(b"x" * 10)
    first = model_identity(tmp_path, ["vae"])
    assert model_identity(tmp_path, ["vae"]) == first
    (tmp_path / "vae" / "config.json").write_text('{"scaling_factor": 0.6}')
    second = model_identity(tmp_path, ["vae"])
    assert second != first
    os.utime(tmp_path / "vae" / "w.safetensors", ns=(1, 1))
    assert model_identity(tmp_path, ["vae"]) != second
    assert model_identity(tmp_path, ["text_encoder"]) != second  # other components do not count


def _run(tmp_path, name, model, images, **overrides) -> dict:
    cfg = family_config(tmp_path, "sd", model, images, output_dir=str(tmp_path / name), max_train_steps=1,
                        validation_num_images=1, scheduled_sampling_max_step_offset=0, **overrides)
    assert main(["run", write_config(tmp_path / f"{name}.json", cfg)]) == 0
    return read_metrics(tmp_path / name)[0]


def test_the_next_run_reuses_the_cache_and_changes_invalidate_it(tmp_path, tmp_path_factory):
    model = pipeline_folder(tmp_path_factory, "sd")
    images = write_images(tmp_path / "images", 3)
    texts = 3  # the instance prompt (also the first validation prompt), "a dog", the empty prompt
    first = _run(tmp_path, "a", model, images)
    assert (first["cache/latents_encoded"], first["cache/texts_encoded"], first["cache/hits"]) == (3, texts, 0)
    second = _run(tmp_path, "b", model, images)
    assert (second["cache/latents_encoded"], second["cache/texts_encoded"], second["cache/hits"]) == (0, 0, 3 + texts)
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())["entries"]
    assert sorted(e["kind"] for e in manifest.values()) == ["latent"] * 3 + ["text"] * texts

    Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(images / "img1.png")  # one image changes
    changed = _run(tmp_path, "c", model, images)
    assert (changed["cache/latents_encoded"], changed["cache/texts_encoded"]) == (1, 0)
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())["entries"]
    assert sum(e["kind"] == "latent" for e in manifest.values()) == 3  # the stale latent was dropped

    resized = _run(tmp_path, "d", model, images, resolution=24)
    assert (resized["cache/latents_encoded"], resized["cache/texts_encoded"]) == (3, 0)

    other = tmp_path / "other-model"
    shutil.copytree(model, other)
    config = json.loads((other / "vae" / "config.json").read_text())
    (other / "vae" / "config.json").write_text(json.dumps({**config, "scaling_factor": 0.25}))
    new_vae = _run(tmp_path, "e", other, images, resolution=24)
    assert (new_vae["cache/latents_encoded"], new_vae["cache/texts_encoded"]) == (3, 0)  # text encoders unchanged
