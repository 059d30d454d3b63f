"""The text-to-image dataset: VAE latents and text embeddings, encoded once through the cache (setup).

For model families that train on latents (sd, sdxl, sd3, flux), ``load.dataset`` calls
``load_latent_dataset``: it checks the model folder first (``preflight``: nothing heavy is loaded before a
bad folder, family or LoRA target is reported), collects the Dreambooth pool (stages/dreambooth.py), then
looks every image and prompt up in the cache (stages/cache.py) and loads the family's VAE and text
encoders only if something is missing. Each image is center-cropped and resized like the pixel loader;
with ``random_flip`` its mirror image is encoded too (flipping a latent is not flipping the image).

A batch sample is x0 = mean + std·ε (a fresh draw from the VAE posterior, as diffusers' training scripts
do), its caption's embeddings (or the empty prompt's, with probability ``caption_dropout_probability``),
and the family's per-image conditioning (SDXL time ids). Text embeddings are stored once per distinct caption.
The class images of prior preservation are a second ``LatentDataset`` of their own (stages/prior_preservation.py).
"""

from __future__ import annotations

from pathlib import Path

import torch
from rollgraph.stages.cache import EmbeddingCache, digest, file_digest, model_identity
from rollgraph.stages.dreambooth import collect_items, validation_prompts
from rollgraph.stages.load import InMemoryDataset, crop_box, load_image
from rollgraph.stages.types import Cond

TEXT_CHUNK = 8


class LatentDataset(InMemoryDataset):
    def __init__(self, means, stds, flipped, prompt_index, text_rows: Cond, image_cond: Cond, captions,
                 validation: list[str], seed, rank=0, world_size=1, bucket_of: torch.Tensor | None = None,
                 group: int = 1, sample_hw: tuple[int, int] | None = None):
        self.bucket_of, self.group = bucket_of, group  # read by _epoch_order, which the base __init__ calls
        super().__init__(means, None, captions, 0, seed, rank, world_size)
        self.sample_hw = sample_hw or tuple(means.shape[-2:])  # latent size of validation samples
        self.stds, self.flipped = stds, flipped
        self.prompt_index, self.text_rows, self.image_cond = prompt_index, text_rows, image_cond
        self.row_of = {}  # filled by load_latent_dataset: text -> row
        self.validation_prompts = validation
        self.validation_rows: Cond = {}
        self.null_row: Cond = {}

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        if self.bucket_of is None:
            return super()._epoch_order(epoch)
        from rollgraph.stages.buckets import bucket_order

        return bucket_order(self.bucket_of, self.group, torch.Generator().manual_seed(self.seed * 1_000_003 + epoch))

    def next_indices(self, batch_size: int) -> torch.Tensor:
        if self.bucket_of is not None and batch_size * self.world_size != self.group:
            from rollgraph.graph import RunError

            raise RunError(f"aspect_buckets groups the data in global batches of {self.group}, but a batch of "
                           f"{batch_size} × {self.world_size} processes was asked for")
        return super().next_indices(batch_size)

    def select_rows(self, texts: list[str]) -> Cond:
        idx = torch.tensor([self.row_of[t] for t in texts], dtype=torch.long)
        return {k: v[idx] for k, v in self.text_rows.items()}

    def batch(self, idx, flip, ctx, node_id, params):
        mean, std = self.images[idx], self.stds[idx]
        if flip is not None and self.flipped is not None:
            f = flip.reshape(-1, 1, 1, 1)
            mean = torch.where(f, self.flipped[0][idx], mean)
            std = torch.where(f, self.flipped[1][idx], std)
        eps = torch.randn(mean.shape, generator=ctx.generator(node_id, "latent"))
        x0 = mean + std * eps
        rows = self.prompt_index[idx]
        p = getattr(params, "caption_dropout_probability", 0.0)
        if p > 0:
            drop = torch.rand(len(idx), generator=ctx.generator(node_id, "caption")) < p
            rows = torch.where(drop, torch.full_like(rows, self.row_of[""]), rows)
        cond = {k: v[rows] for k, v in self.text_rows.items()}
        cond.update({k: v[idx] for k, v in self.image_cond.items()})
        return x0, {k: v.to(ctx.device) for k, v in cond.items()}


class _LazyEncoders:
    """Loads the family's VAE and text encoders on first use only (a fully cached run never loads them)."""

    def __init__(self, family, folder, device, dtype):
        self.args = (family, folder, device, dtype)
        self.value = None

    def get(self):
        if self.value is None:
            from rollgraph.stages.models.encoders import PipelineEncoders

            self.value = PipelineEncoders(*self.args)
        return self.value

    def close(self):
        if self.value is not None:
            self.value.close()
            self.value = None


def encode_texts(texts: list[str], family, folder: Path, cache: EmbeddingCache, encoders: _LazyEncoders,
                 max_length: int | None, dtype) -> Cond:
    """One row per text (stacked in order), from the cache or the family's text encoders."""
    identity = model_identity(folder, [*family.text_components, *family.optional_components])
    keys = [digest("text", family.family, identity, max_length, str(dtype), t) for t in texts]
    rows: list[Cond | None] = [cache.get(k) for k in keys]
    todo = [i for i, r in enumerate(rows) if r is None]
    for start in range(0, len(todo), TEXT_CHUNK):
        chunk = todo[start:start + TEXT_CHUNK]
        out = encoders.get().prompts([texts[i] for i in chunk], max_length)
        for j, i in enumerate(chunk):
            rows[i] = {k: v[j:j + 1] for k, v in out.items()}
            cache.put(keys[i], rows[i], "text", f"{family.family}:{texts[i]}", {"prompt": texts[i], "max_length": max_length})
    return {k: torch.cat([r[k] for r in rows]) for k in rows[0]}


def encode_images(items, family, folder: Path, resolution: int, flips: tuple[bool, ...], cache: EmbeddingCache,
                  encoders: _LazyEncoders, batch_size: int, buckets: list[tuple[int, int]] | None = None) -> dict:
    """{flip: (means, stds)} for every item, from the cache or the VAE; with buckets (one (h, w) per item) the
    latents have the item's bucket size and come as ``Stacked`` per-item lists."""
    from rollgraph.stages.buckets import Stacked

    identity = model_identity(folder, ["vae"])
    hashes = [file_digest(item.path) for item in items]
    sizes = buckets or [None] * len(items)
    out: dict[bool, tuple] = {}
    for flip in flips:
        keys = [digest("latent", h, identity, resolution, flip, "center-crop") if size is None else
                digest("latent", h, identity, list(size), flip, "bucket-crop") for h, size in zip(hashes, sizes, strict=True)]
        found = [cache.get(k) for k in keys]
        todo = [i for i, f in enumerate(found) if f is None]
        for size in dict.fromkeys(sizes[i] for i in todo):  # one VAE batch holds one size
            same = [i for i in todo if sizes[i] == size]
            for start in range(0, len(same), batch_size):
                chunk = same[start:start + batch_size]
                pixels = torch.stack([load_image(items[i].path, resolution, 3, size) for i in chunk])
                mean, std = encoders.get().pixels(pixels.flip(-1) if flip else pixels)
                for j, i in enumerate(chunk):
                    found[i] = {"mean": mean[j], "std": std[j]}
                    cache.put(keys[i], found[i], "latent", f"{items[i].path.resolve()}{':flip' if flip else ''}",
                              {"resolution": list(size) if size else resolution, "image_sha256": hashes[i]})
        if buckets is None:
            out[flip] = (torch.stack([f["mean"] for f in found]), torch.stack([f["std"] for f in found]))
        else:
            out[flip] = (Stacked([f["mean"] for f in found]), Stacked([f["std"] for f in found]))
    return out


def image_sizes(items) -> list[tuple[int, int]]:
    from PIL import Image

    sizes = []
    for item in items:
        with Image.open(item.path) as im:
            sizes.append((im.size[1], im.size[0]))
    return sizes


def image_conditioning(items, family, resolution: int, buckets: list[tuple[int, int]] | None = None) -> Cond:
    """The family's per-image conditioning (SDXL: original size, crop top-left, target size)."""
    from rollgraph.stages.buckets import cover_crop

    rows = []
    for (h, w), bucket in zip(image_sizes(items), buckets or [None] * len(items), strict=True):
        if bucket is None:
            left, top, side = crop_box(w, h)
            scale = resolution / side
            rows.append(family.image_cond((h, w), (round(top * scale), round(left * scale)), (resolution, resolution)))
        else:
            rows.append(family.image_cond((h, w), cover_crop(h, w, bucket)[1], bucket))
    return {k: torch.stack([r[k] for r in rows]) for k in rows[0]} if rows and rows[0] else {}


def assign_buckets(items, family, folder: Path, resolution: int) -> list[tuple[int, int]]:
    """Each item's bucket (h, w) in pixels (stages/buckets.py)."""
    from rollgraph.stages.buckets import bucket_sizes, nearest_bucket

    step = family.vae_scale_factor(folder) * family.latent_multiple(family.denoiser_config(folder))
    sizes = bucket_sizes(resolution, step)
    return [sizes[nearest_bucket(h, w, sizes)] for h, w in image_sizes(items)]


def load_latent_dataset(ctx, params, family, items=None, seed: int | None = None) -> LatentDataset:
    """The instance images (``items`` None: the model folder is checked first, and the validation prompts are
    encoded too), or the given ``items`` (the class images; their epoch order is drawn from ``seed``)."""
    instance = items is None
    folder = family.preflight(params, params.resolution) if instance else family.check_folder(params)
    items = collect_items(params) if instance else items
    root = Path(params.cache_dir) if params.cache_dir else (ctx.output_dir / "cache" if ctx.output_dir else None)
    cache = EmbeddingCache(root, writer=ctx.is_main)
    dtype = ctx.autocast_dtype or torch.float32
    encoders = _LazyEncoders(family, folder, ctx.device, dtype)
    try:
        flips = (False, True) if params.random_flip else (False,)
        buckets = assign_buckets(items, family, folder, params.resolution) if getattr(params, "aspect_buckets", False) else None
        latents = encode_images(items, family, folder, params.resolution, flips, cache, encoders, params.vae_batch_size, buckets)
        image_misses = cache.misses
        captions = [item.caption for item in items]
        prompts = validation_prompts(params, captions) if instance else []
        texts = list(dict.fromkeys([*captions, *prompts, ""]))
        max_length = params.tokenizer_max_length or family.default_max_length
        rows = encode_texts(texts, family, folder, cache, encoders, max_length, dtype)
        if getattr(params, "train_text_encoder", False):  # the adapted encoders encode token ids at each step
            rows.update(family.token_rows(folder, texts))
        cache.save_manifest()
    finally:
        encoders.close()
    row_of = {t: i for i, t in enumerate(texts)}
    bucket_kw = {}
    if buckets is not None:
        index = {size: i for i, size in enumerate(dict.fromkeys(buckets))}
        side = params.resolution // family.vae_scale_factor(folder)
        bucket_kw = dict(bucket_of=torch.tensor([index[b] for b in buckets]), group=params.train_batch_size * ctx.world_size,
                         sample_hw=(side, side))
    data = LatentDataset(latents[False][0], latents[False][1], latents.get(True),
                         torch.tensor([row_of[c] for c in captions], dtype=torch.long), rows,
                         image_conditioning(items, family, params.resolution, buckets),
                         captions, prompts, ctx.seed if seed is None else seed, ctx.rank, ctx.world_size,
                         **bucket_kw)
    data.row_of = row_of
    data.validation_rows = data.select_rows(prompts)
    data.null_row = data.select_rows([""])
    ctx.log("cache/latents_encoded", image_misses, reduce="sum")
    ctx.log("cache/texts_encoded", cache.misses - image_misses, reduce="sum")
    ctx.log("cache/hits", cache.hits, reduce="sum")
    return data


def prepare_sampling(model, cfg, device, cache_root: Path | None) -> None:
    """Ready a latent model to sample outside a run's graph (no data stage): encode the validation prompts and
    set the sample size (``rollgraph sample`` runs the run's own data node instead)."""
    from rollgraph.graph import ConfigError, Issue

    prompts = validation_prompts(cfg, [])
    if not prompts:
        raise ConfigError([Issue("validation_prompt", "the run has no validation_prompt or instance_prompt to sample with")])
    family, folder = type(model), model.folder
    encoders = _LazyEncoders(family, folder, device, torch.float32)
    cache = EmbeddingCache(Path(cfg.cache_dir) if cfg.cache_dir else cache_root)
    try:
        texts = list(dict.fromkeys([*prompts, ""]))
        rows = encode_texts(texts, family, folder, cache, encoders, cfg.tokenizer_max_length or family.default_max_length,
                            torch.float32)
        if getattr(cfg, "train_text_encoder", False):
            rows.update(family.token_rows(folder, texts))
        cache.save_manifest()
    finally:
        encoders.close()
    pick = {t: i for i, t in enumerate(texts)}
    side = cfg.resolution // model.vsf
    model.set_validation(prompts, {k: v[[pick[p] for p in prompts]] for k, v in rows.items()},
                         {k: v[[pick[""]]] for k, v in rows.items()}, (side, side))
