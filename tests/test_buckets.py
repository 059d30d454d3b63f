"""aspect_buckets: bucket sizes by hand, nearest bucket, one bucket per batch, SDXL time ids, cache, exact resume."""

from __future__ import annotations

import numpy as np
import torch
from rollgraph.graph.cli import main
from rollgraph.stages.buckets import bucket_order, bucket_sizes, cover_crop, nearest_bucket

from tests.conftest import read_metrics
from tests.tiny_pipelines import family_config, pipeline_folder, write_config

# (height, width) of the test images: two landscape 3:2, one portrait 2:3, two square-ish
SHAPES = [(20, 30), (24, 36), (30, 20), (22, 22), (21, 20)]


def _images(folder):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate(SHAPES):
        Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(folder / f"img{i}.png")
    return folder


def test_bucket_sizes_by_hand():
    # resolution 16, step 4: area 256; side 8 -> 32 (ratio 4, out); 12 -> 256/12 = 21 -> 20; 16 -> 16; 20 -> 12
    assert bucket_sizes(16, 4) == [(20, 12), (16, 16), (12, 20)]
    sizes = bucket_sizes(1024, 64)
    assert (1024, 1024) in sizes and (768, 1344) in sizes and (1344, 768) in sizes  # 1024²/768 = 1365 -> 1344
    assert all(h % 64 == 0 and w % 64 == 0 and h * w <= 1024 * 1024 and max(h, w) / min(h, w) <= 2 for h, w in sizes)


def test_nearest_bucket_and_cover_crop():
    sizes = bucket_sizes(16, 4)
    assert sizes[nearest_bucket(20, 30, sizes)] == (12, 20)  # 3:2 landscape -> 12×20 (5:3)
    assert sizes[nearest_bucket(30, 20, sizes)] == (20, 12)
    assert sizes[nearest_bucket(21, 20, sizes)] == (16, 16)
    # 20×30 to cover 12×20: scale max(12/20, 20/30) = 0.667 -> 13×20, crop 1 row: top (13-12)//2 = 0
    assert cover_crop(20, 30, (12, 20)) == ((13, 20), (0, 0))
    assert cover_crop(30, 20, (20, 12)) == ((20, 13), (0, 0))


def test_epoch_order_groups_one_bucket_per_batch_and_sees_every_sample():
    bucket_of = torch.tensor([0, 0, 1, 2, 2, 2, 0])
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    order = bucket_order(bucket_of, 2, g1)
    assert torch.equal(order, bucket_order(bucket_of, 2, g2))  # a pure function of the generator's seed
    groups = order.view(-1, 2)
    assert all(len(set(bucket_of[g].tolist())) == 1 for g in groups)
    assert set(order.tolist()) == set(range(7)) and len(order) == 10  # buckets of 3, 1, 3 padded to 4, 2, 4


def test_sdxl_trains_on_buckets_with_its_time_ids_and_resumes_exactly(tmp_path, tmp_path_factory):
    images = _images(tmp_path / "images")
    cfg = family_config(tmp_path, "sdxl", pipeline_folder(tmp_path_factory, "sdxl"), images, aspect_buckets=True,
                        max_train_steps=4, checkpointing_steps=2)
    path = write_config(tmp_path / "c.json", cfg)
    assert main(["run", path]) == 0
    straight = read_metrics(tmp_path / "run-sdxl")
    assert all(np.isfinite(m["loss"]) for m in straight) and straight[0]["cache/latents_encoded"] == len(SHAPES)
    assert main(["run", path, "--resume", str(tmp_path / "run-sdxl" / "checkpoints" / "step-2")]) == 0
    assert [m["loss"] for m in read_metrics(tmp_path / "run-sdxl")] == [m["loss"] for m in straight]

    from types import SimpleNamespace

    from rollgraph.graph.context import RunContext
    from rollgraph.stages.latent_data import load_latent_dataset
    from rollgraph.stages.load import DatasetStageParams
    from rollgraph.stages.models import get_family

    params = DatasetStageParams(**{k: v for k, v in cfg.items() if k in DatasetStageParams.model_fields})
    data = load_latent_dataset(RunContext(config=None), params, get_family("sdxl"))
    assert data.sample_hw == (8, 8)  # validation stays square: resolution 16 / VAE scale 2
    ctx = RunContext(config=None)
    for _ in range(3):
        idx = data.next_indices(2)
        x0, cond = data.batch(idx, None, ctx, "batch", SimpleNamespace(caption_dropout_probability=0.0))
        for i, row in zip(idx.tolist(), cond["add_time_ids"], strict=True):
            h, w = SHAPES[i]
            bh, bw = 2 * x0.shape[-2], 2 * x0.shape[-1]  # latent -> pixels
            (_, _), (top, left) = cover_crop(h, w, (bh, bw))
            assert row.tolist() == [h, w, top, left, bh, bw]
    rerun = main(["run", path, "--output_dir", str(tmp_path / "again")])
    assert rerun == 0 and read_metrics(tmp_path / "again")[0]["cache/latents_encoded"] == 0  # the bucket latents were cached


def test_buckets_are_refused_where_they_cannot_apply(tiny, capsys):
    assert main(["validate", str(tiny(aspect_buckets=True))]) == 2
    assert "aspect_buckets" in " ".join(capsys.readouterr().err.split())


def test_flux_trains_on_buckets_with_rollout_and_reflexflow(tmp_path, tmp_path_factory):
    images = _images(tmp_path / "images")
    cfg = family_config(tmp_path, "flux", pipeline_folder(tmp_path_factory, "flux"), images, aspect_buckets=True,
                        random_flip=True, max_train_steps=3)
    assert main(["run", write_config(tmp_path / "c.json", cfg)]) == 0
    metrics = read_metrics(tmp_path / "run-flux")
    assert all(np.isfinite(m["loss"]) for m in metrics) and "loss/adr" in metrics[0]
    assert sum(m["rollout/samples"] for m in metrics) > 0
