"""Runner overhead: the graph runner's training step against a hand-written PyTorch loop doing the same math.

Both train the same model from the same initial weights, on the same data order, by teacher forcing with
flow matching: logit-normal sigma, x = (1 - sigma)·x0 + sigma·eps, MSE to eps - x0, AdamW, gradient
clipping at 1.0, constant learning rate. The loop draws sigma and eps for the batch at once, as one writes
it by hand; the trainer draws them per sample from generators keyed by the sample's place in the global
batch (so a run does not depend on the process count), which is part of what it costs. Mean losses are
shown as a sanity check. The loop also reads the loss as a float each step (any real loop logs it);
everything else the trainer does per step (per-stage timing, port checks, metrics, hooks) is overhead.
"in stages" is the time the trainer spends inside its stages' run() (the runner's time/* metrics), so
"runner − in stages" is the graph runner and hooks themselves.

Timing: per-step wall time (the interval between step ends, warm-up steps dropped), median over steps,
pooled over rounds that alternate trainer and loop, so load changes on a shared machine hit both.
"""

from __future__ import annotations

import time

import torch
from rollgraph.graph.context import derive_seed
from rollgraph.stages.load import InMemoryDataset
from rollgraph.stages.models import ModelParams, get_family

from bench import common
from bench import mlp as _mlp  # noqa: F401  (registers the bench_mlp family)
from bench.common import StepClock, Table
from bench.digits_eval import load_digits

TINY_UNET = {"block_out_channels": [16, 32], "layers_per_block": 1, "down_block_types": ["DownBlock2D", "DownBlock2D"],
             "up_block_types": ["UpBlock2D", "UpBlock2D"], "norm_num_groups": 8}
MODELS = {"bench_mlp": {"hidden": 128, "depth": 3}, "unet2d": TINY_UNET}
SETTINGS = {
    "tiny": {"cases": [("bench_mlp", 8)], "steps": 6, "warmup": 2, "rounds": 1},
    "quick": {"cases": [("bench_mlp", 16), ("bench_mlp", 128), ("unet2d", 16)], "steps": 25, "warmup": 3, "rounds": 2},
    "full": {"cases": [("bench_mlp", 16), ("bench_mlp", 64), ("bench_mlp", 256), ("unet2d", 16), ("unet2d", 64)],
             "steps": 40, "warmup": 4, "rounds": 10},
}
SEED = 0
STAGES = ("batch", "noise", "predict", "loss", "optimize")  # the teacher-forcing step graph's node ids
PARTS = {"loss": ("loss", "total"), "optimize": ("optimize", "update")}  # nodes timed as one section of the hand loop


def config(family: str, batch: int, steps: int) -> dict:
    return {"model_family": family, "model_architecture": MODELS[family], "resolution": 8, "train_batch_size": batch,
            "max_train_steps": steps, "learning_rate": 1e-3, "lr_scheduler": "constant", "lr_warmup_steps": 0,
            "prediction_type": "flow_matching", "timestep_sampling": "logit_normal", "seed": SEED}


def build_model(family: str, digits):
    """The family's adapter for digits at 8×8 with this benchmark's architecture, built as the trainer builds it."""
    data = InMemoryDataset(digits.images, digits.labels, None, 10, SEED)
    return get_family(family).build(ModelParams(model_family=family, model_architecture=MODELS[family]), data)


def hand_loop(cfg: dict, steps: int) -> tuple[list[float], list[float], list[dict[str, float]]]:
    """The same training, written out by hand; returns (per-step seconds, losses, per-step section seconds)."""
    digits = load_digits(8)
    torch.manual_seed(derive_seed(SEED, "init"))  # the trainer's initial weights
    module = build_model(cfg["model_family"], digits).raw_module.train()
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=cfg["learning_rate"],
                            betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    images, labels, n, bs = digits.images, digits.labels, len(digits.images), cfg["train_batch_size"]
    epoch, cursor = 0, 0
    order = torch.randperm(n, generator=torch.Generator().manual_seed(SEED * 1_000_003))
    times, losses, sections = [], [], []
    g = torch.Generator().manual_seed(SEED)
    for _ in range(steps):
        t0 = time.perf_counter()
        picked, need = [], bs
        while need:  # the trainer's epoch order: a seeded permutation per epoch
            take = min(need, n - cursor)
            picked.append(order[cursor:cursor + take])
            cursor, need = cursor + take, need - take
            if cursor == n:
                epoch, cursor = epoch + 1, 0
                order = torch.randperm(n, generator=torch.Generator().manual_seed(SEED * 1_000_003 + epoch))
        idx = torch.cat(picked)
        x0, y = images[idx], labels[idx]
        t1 = time.perf_counter()
        sigma = torch.sigmoid(torch.randn(bs, generator=g, dtype=torch.float64)).float()
        eps = torch.randn(x0.shape, generator=g)
        s = sigma.reshape(-1, 1, 1, 1)
        x = (1 - s) * x0 + s * eps
        t2 = time.perf_counter()
        out = module(x, sigma * 1000, class_labels=y)
        pred = getattr(out, "sample", out)
        t3 = time.perf_counter()
        loss = (pred.float() - (eps - x0)).pow(2).flatten(1).mean(1).mean()
        t4 = time.perf_counter()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        t5 = time.perf_counter()
        times.append(t5 - t0)
        sections.append(dict(zip(STAGES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4), strict=True)))
    return times, losses, sections


def measure(family: str, batch: int, s: dict) -> dict:
    """Rounds of one trainer run and one hand-loop run, in alternating order (ABBA); the ratio is the median over
    rounds of each round's runner / loop median step time, so a burst of load on the shared machine spoils a
    round, not the result."""
    cfg = config(family, batch, s["steps"])
    runner_times, loop_times, runner_loss, loop_loss, ratios = [], [], [], [], []
    runner_stages: dict[str, list[float]] = {k: [] for k in STAGES}
    loop_stages: dict[str, list[float]] = {k: [] for k in STAGES}

    def trainer_round() -> list[float]:
        clock = StepClock()
        common.train(cfg, hooks=[clock])
        for m in clock.metrics[s["warmup"] + 1:]:
            for k in STAGES:
                runner_stages[k].append(sum(m.get(f"time/{node}", 0.0) for node in PARTS.get(k, (k,))))
        runner_loss.extend(m["loss"] for m in clock.metrics)
        return clock.step_seconds(skip=s["warmup"])

    def loop_round() -> list[float]:
        times, losses, sections = hand_loop(cfg, s["steps"])
        for sec in sections[s["warmup"]:]:
            for k in STAGES:
                loop_stages[k].append(sec[k])
        loop_loss.extend(losses)
        return times[s["warmup"]:]

    for r in range(s["rounds"]):
        if r % 2 == 0:
            mine, theirs = trainer_round(), loop_round()
        else:
            theirs = loop_round()
            mine = trainer_round()
        runner_times += mine
        loop_times += theirs
        ratios.append(common.median(mine) / common.median(theirs))
    runner, loop = common.median(runner_times), common.median(loop_times)
    stages = {k: (common.median(runner_stages[k]) * 1e3, common.median(loop_stages[k]) * 1e3) for k in STAGES}
    return {"runner_ms": runner * 1e3, "loop_ms": loop * 1e3, "ratio": common.median(ratios), "ratios": sorted(ratios),
            "stages": stages, "stages_ms": sum(r for r, _ in stages.values()),
            "runner_loss": sum(runner_loss) / len(runner_loss), "loop_loss": sum(loop_loss) / len(loop_loss)}


def run(mode: str = "full", out_dir=None, log=print) -> list[Table]:
    s = SETTINGS[mode]
    table = Table("Runner overhead: graph runner vs a hand-written loop (same model, data, noise and math)",
                  ["model", "batch", "runner ms/step", "in stages ms", "hand loop ms/step", "ratio", "overhead %",
                   "mean loss runner / loop"])
    where = Table("Where the step time goes: median ms per stage, runner / hand loop",
                  ["model", "batch size", *STAGES, "outside stages"])
    spreads = []
    for family, batch in s["cases"]:
        r = measure(family, batch, s)
        spreads.append(f"{family} {batch}: {r['ratios'][0]:.3f}–{r['ratios'][-1]:.3f}")
        log(f"  overhead {family} batch {batch}: {r}")
        table.add(family, batch, r["runner_ms"], r["stages_ms"], r["loop_ms"], r["ratio"], (r["ratio"] - 1) * 100,
                  f"{r['runner_loss']:.3f} / {r['loop_loss']:.3f}")
        where.add(family, batch, *[f"{a:.2f} / {b:.2f}" for a, b in r["stages"].values()], f"{r['runner_ms'] - r['stages_ms']:.2f} / 0")
    table.notes += [
        f"Median per-step wall time over {s['steps'] - s['warmup'] - 1} steps × {s['rounds']} alternating round(s), digits 8×8, "
        "teacher forcing. bench_mlp: 3 residual blocks, hidden 128 (~0.3 M parameters); unet2d: diffusers UNet2DModel "
        "[16, 32] (~0.17 M parameters). Goal (issue 16): overhead ≤ 3 % of step time on the MLP at batch 16 and 64.",
        "ratio = the median over rounds of runner / hand loop (each round's median step times; rounds alternate "
        "which runs first); overhead % = (ratio − 1)·100. Per-round ratios, lowest–highest: " + "; ".join(spreads) + ".",
    ]
    where.notes.append("Runner: the runner's time/<node> (medians); hand loop: the same sections timed inline (data, noise "
                       "draw, forward, loss, backward + clip + AdamW + reading the loss). 'outside stages' = runner step − "
                       "sum of its stage medians: the graph runner, port checks and hooks.")
    return [table, where]


def main(argv=None) -> None:
    parser = common.bench_parser(__doc__)
    args = parser.parse_args(argv)
    common.set_threads(args.threads)
    tables = run(args.mode)
    common.report("overhead", tables, args.mode)


if __name__ == "__main__":
    main()
