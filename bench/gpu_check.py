"""GPU check: step time and peak memory of rollout against teacher forcing on an SD-sized UNet.

One command (``bench/gpu_check.sh``), under 8 minutes on one GPU: a diffusers ``UNet2DConditionModel``
built from Stable Diffusion 1.5's block configuration (320/640/1280/1280 channels, 2 layers per block,
cross-attention 768, random init, nothing downloaded), 64×64×4 latents, batch 16, bf16 autocast with
float32 weights and AdamW, DDPM epsilon prediction. Rows: teacher forcing, and rollout (p = 1, max k
= K ∈ {3, 10}, grid 20) with unipc and rk4, each with the rollout's batched calls
(``scheduled_sampling_batching`` shrinking and balanced) and one sample at a time (the reference
trainer's way), each with torch.compile off and on (inductor, dynamic shapes: rollout calls change
batch size). Each row: median step time over the timed steps, × teacher forcing (same compile
setting), peak CUDA memory, and the measured extra sample-forwards per sample.

``--smoke``: a tiny UNet at 8×8, batch 2, one timed step per row, compile with the "eager" backend (the
code path without inductor), on the CPU unless a GPU is there: tests run it (``--compile off`` in the
default suite; with compile, whose tracing takes minutes on a shared 2-core CPU, as a slow test), so the
script cannot rot. ``--compile off|on`` runs half the rows. Rows past ``--budget-s`` seconds are left out
and listed in a note; the shell script stops everything at 8 minutes.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from rollgraph.graph.context import RunContext
from rollgraph.stages.models.base import ModelAdapter
from rollgraph.stages.predict import model_fn_for
from rollgraph.stages.rollout import RolloutParams, ScheduledSamplingRollout, eval_mode, steps_available
from rollgraph.stages.schedule import make_schedule
from rollgraph.stages.solvers import solve
from rollgraph.stages.types import NoisyInput, index_cond

from bench.common import Table, write_results

SD15_UNET = dict(  # Stable Diffusion 1.5's unet/config.json block configuration
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32)
TINY_UNET = dict(
    sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8)
SETTINGS = {
    "full": {"unet": SD15_UNET, "batch": 16, "latent": 64, "tokens": 77, "warmup": 2, "steps": 3, "backend": "inductor"},
    "smoke": {"unet": TINY_UNET, "batch": 2, "latent": 8, "tokens": 4, "warmup": 0, "steps": 1, "backend": "eager"},
}
ROLLOUTS = [(0, "teacher forcing")] + [(k, sampler) for k in (3, 10) for sampler in ("unipc", "rk4")]
GRID = 20
CALLS = ("shrinking", "balanced", "one sample at a time")  # the rollout's batched calls (two batchings), the reference's


class CrossAttnUNet(ModelAdapter):
    """A text-conditioned UNet (cond: ``encoder_hidden_states``), as the sd family calls it."""

    family = "gpu-check-unet"

    def forward(self, module, x, timestep, cond):
        return module(x, timestep, encoder_hidden_states=cond["encoder_hidden_states"]).sample

    def sample_shape(self):
        config = getattr(self.raw_module, "_orig_mod", self.raw_module).config
        return (config.in_channels, config.sample_size, config.sample_size)


def build(s: dict, device: torch.device, compile_backend: str | None):
    """(adapter over the possibly compiled UNet, the UNet, AdamW): rollout and training both call the compiled module."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**s["unet"]).to(device).train()
    module = torch.compile(unet, backend=compile_backend, dynamic=True) if compile_backend else unet
    return CrossAttnUNet(module), unet, torch.optim.AdamW(unet.parameters(), lr=1e-5)


def rollout_one_at_a_time(ctx: RunContext, stage: ScheduledSamplingRollout, noisy: NoisyInput, model, schedule) -> NoisyInput:
    """The rollout stage's draws and math, but each sample integrated alone (batch size 1 per model call)."""
    p = stage.params
    n = len(noisy.x)
    g = ctx.batch_generator(stage.id)
    rolled = torch.rand(n, generator=g) < p.scheduled_sampling_probability
    k = torch.randint(0, p.scheduled_sampling_max_step_offset + 1, (n,), generator=g) * rolled
    k = torch.minimum(k, steps_available(schedule, noisy.level, p.scheduled_sampling_grid_steps))
    x = noisy.x.clone()
    evals = 0
    with eval_mode(model.raw_module):
        for i in (k > 0).nonzero().squeeze(1).tolist():
            one = torch.tensor([i], device=noisy.x.device)
            path = schedule.rollout_path(noisy.level[i:i + 1], k[i:i + 1].to(noisy.x.device), p.scheduled_sampling_grid_steps)
            x_src = schedule.add_noise(noisy.x0[i:i + 1], noisy.noise[i:i + 1], path[:, 0])
            fn = model_fn_for(model, schedule, index_cond(noisy.cond, one), ctx.autocast)
            result = solve(fn, x_src, path, k[i:i + 1], schedule, p.scheduled_sampling_sampler)
            x[i] = result.x[0].to(x.dtype)
            evals += result.model_evals
    ctx.log("rollout/model_evals", evals, reduce="sum")
    return noisy.with_input(x, (k > 0).to(x.device), k.to(x.device))


def train_step(ctx, model, unet, opt, schedule, x0, ehs, stage, one_at_a_time: bool) -> int:
    """One training step (optionally with rollout); returns the rollout's sample-forwards."""
    g = torch.Generator().manual_seed(ctx.step)
    noise = torch.randn(x0.shape, generator=g).to(x0.device)
    level = schedule.sample_training_levels(len(x0), g).to(x0.device)
    x = schedule.add_noise(x0, noise, level)
    noisy = NoisyInput(x=x, x_clean=x, level=level, x0=x0, noise=noise, target=schedule.target(x0, noise, level),
                       cond={"encoder_hidden_states": ehs})
    evals = 0
    if stage is not None:
        if one_at_a_time:
            noisy = rollout_one_at_a_time(ctx, stage, noisy, model, schedule)
        else:
            noisy = stage.run(ctx, noisy=noisy, model=model, schedule=schedule)["noisy"]
        evals = int(sum(v for v, _ in ctx.metrics.get("rollout/model_evals", [])))
        ctx.metrics.clear()
    with ctx.autocast():
        pred = model(noisy.x, schedule.model_timestep(noisy.level), noisy.cond)
    loss = torch.nn.functional.mse_loss(pred.float(), noisy.target.float())
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return evals


def measure(s, device, model, unet, opt, schedule, k: int, sampler: str, calls: str) -> dict:
    """calls: "shrinking" or "balanced" (the rollout stage's batching) or "one sample at a time"."""
    one_at_a_time = calls == "one sample at a time"
    batch, latent = s["batch"], s["latent"]
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(batch, 4, latent, latent, generator=g).to(device)
    ehs = torch.randn(batch, s["tokens"], s["unet"]["cross_attention_dim"], generator=g).to(device)
    stage = None
    if k:
        stage = ScheduledSamplingRollout("rollout", RolloutParams(
            scheduled_sampling_max_step_offset=k, scheduled_sampling_probability=1.0, scheduled_sampling_sampler=sampler,
            scheduled_sampling_grid_steps=GRID, scheduled_sampling_batching="shrinking" if one_at_a_time else calls))
    autocast = torch.bfloat16 if device.type == "cuda" else None
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times, evals = [], []
    for step in range(s["warmup"] + s["steps"]):
        ctx = RunContext(config=None, device=device, seed=0, step=step, autocast_dtype=autocast)
        start = time.perf_counter()
        e = train_step(ctx, model, unet, opt, schedule, x0, ehs, stage, one_at_a_time)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= s["warmup"]:
            times.append(time.perf_counter() - start)
            evals.append(e)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return {"step": statistics.median(times), "peak_gb": peak, "evals": statistics.fmean(evals) / batch}


def run(mode: str = "full", device: str | None = None, budget_s: float = 420.0, compile_modes: str = "both",
        log=print, save=None) -> list[Table]:
    """The table; ``save(tables)`` is called after every row, so a run stopped by the time limit keeps its rows."""
    s = SETTINGS[mode]
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    schedule = make_schedule("epsilon")
    name = "SD-1.5 UNet2DConditionModel (random init)" if mode == "full" else "tiny UNet2DConditionModel (smoke)"
    gpu = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    table = Table(f"GPU check: rollout vs teacher forcing ({name}, {s['latent']}×{s['latent']} latents, batch {s['batch']}, "
                  f"{'bf16 autocast' if dev.type == 'cuda' else 'float32'}, {gpu})",
                  ["rollout", "sampler", "calls", "torch.compile", "step ms", "× TF", "peak GB", "extra evals / sample"])
    start, skipped = time.perf_counter(), []
    backends = {"both": (None, s["backend"]), "off": (None,), "on": (s["backend"],)}[compile_modes]
    for backend in backends:
        model, unet, opt = build(s, dev, backend)
        tf_ms = float("nan")
        for k, sampler in ROLLOUTS:
            for calls in (("shrinking",) if k == 0 else CALLS):
                label = ("teacher forcing" if k == 0 else f"K {k}", sampler if k else "–",
                         "batched" if k == 0 else calls, backend or "off")
                if time.perf_counter() - start > budget_s:
                    skipped.append(" / ".join(label))
                    continue
                r = measure(s, dev, model, unet, opt, schedule, k, sampler, calls)
                ms = r["step"] * 1e3
                tf_ms = ms if k == 0 else tf_ms
                log(f"  {' | '.join(label)}: {ms:.1f} ms, peak {r['peak_gb']:.2f} GB")
                table.add(*label, ms, ms / tf_ms, r["peak_gb"], r["evals"])
                if save:
                    save([table])
        del model, unet, opt
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    table.notes.append(f"Median over {s['steps']} step(s) after {s['warmup']} warm-up step(s) (compilation happens there); "
                       "p = 1, rollout max k = K on a 20-step grid, DDPM epsilon, AdamW; × TF against teacher forcing with "
                       "the same compile setting; peak GB: torch.cuda.max_memory_allocated over the row's steps (nan on "
                       f"the CPU). Total {time.perf_counter() - start:.0f} s.")
    if skipped:
        table.notes.append(f"Left out past the {budget_s:.0f} s budget: {'; '.join(skipped)}.")
    return [table]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny UNet, one step per row (CPU unless a GPU is there)")
    parser.add_argument("--device", default=None, help="cuda / cpu (default: cuda when present)")
    parser.add_argument("--budget-s", type=float, default=420.0, help="stop starting new rows after this many seconds")
    parser.add_argument("--compile", choices=("both", "off", "on"), default="both", help="torch.compile rows to run")
    parser.add_argument("--out", type=Path, default=None, help="folder for gpu_check.md / .json (default bench/results)")
    args = parser.parse_args(argv)
    mode = "smoke" if args.smoke else "full"
    def save(tables):
        return write_results("gpu_check", tables, args.out, meta={"mode": mode})

    tables = run(mode, args.device, args.budget_s, args.compile, save=save)
    for t in tables:
        print(t.to_markdown())
    print(f"written: {save(tables)}")


if __name__ == "__main__":
    main()
