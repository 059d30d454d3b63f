"""Aspect-ratio buckets (``aspect_buckets``) for the text-to-image families.

Bucket sizes (h, w) in pixels: every pair of multiples of ``step`` (the VAE's scale × the denoiser's latent
multiple, so each bucket is a valid latent size) with h·w ≤ resolution² and the long side over the short at
most ``MAX_RATIO``, each side as large as the area allows for the other: for each side s = step, 2·step, …,
the other is ⌊resolution² / s / step⌋·step. The square resolution × resolution is always a bucket.

An image of size H × W goes to the bucket whose aspect ratio is nearest in log space, |log(W/H) − log(w/h)|,
is resized (bicubic) to cover it and center-cropped to it.

Batches: within an epoch each bucket's images are permuted, the last partial group of a bucket is filled by
repeating that bucket's first images (so every image is seen each epoch and no batch mixes sizes), the
groups of one global batch (train_batch_size × processes) are shuffled, and the epoch order is their
concatenation — a pure function of (seed, epoch, global batch size), so resume is exact.
"""

from __future__ import annotations

import math

import torch

MAX_RATIO = 2.0


def bucket_sizes(resolution: int, step: int, max_ratio: float = MAX_RATIO) -> list[tuple[int, int]]:
    area = resolution * resolution
    sizes = {(resolution, resolution)}
    side = step
    while side * side <= area * max_ratio:
        other = area // side // step * step
        if other >= step and max(side, other) / min(side, other) <= max_ratio:
            sizes.update({(side, other), (other, side)})
        side += step
    return sorted(sizes, key=lambda hw: (hw[1] / hw[0], hw))


def nearest_bucket(height: int, width: int, sizes: list[tuple[int, int]]) -> int:
    target = math.log(width / height)
    return min(range(len(sizes)), key=lambda i: abs(math.log(sizes[i][1] / sizes[i][0]) - target))


def cover_crop(height: int, width: int, bucket: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """((resized h, w), (crop top, left)) to cover the bucket and center-crop it."""
    bh, bw = bucket
    scale = max(bh / height, bw / width)
    rh, rw = max(bh, round(height * scale)), max(bw, round(width * scale))
    return (rh, rw), ((rh - bh) // 2, (rw - bw) // 2)


def bucket_order(bucket_of: torch.Tensor, group: int, generator: torch.Generator) -> torch.Tensor:
    """One epoch's sample order: groups of ``group`` samples, each from one bucket, in shuffled order."""
    chunks = []
    for b in torch.unique(bucket_of).tolist():
        members = (bucket_of == b).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        pad = (-len(members)) % group
        if pad:
            members = torch.cat([members, members.repeat(pad // len(members) + 1)[:pad]])
        chunks += list(members.split(group))
    shuffled = torch.randperm(len(chunks), generator=generator)
    return torch.cat([chunks[i] for i in shuffled.tolist()])


class Stacked:
    """Per-item tensors of several sizes, indexed like one tensor: ``x[idx]`` stacks the items of idx (all of
    one bucket)."""

    def __init__(self, items: list[torch.Tensor]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, idx: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.items[i] for i in idx.tolist()])
