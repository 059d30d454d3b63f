"""Runner overhead: the graph runner's training step against a hand-written PyTorch loop doing the same math.

Both train the same model from the same initial weights, on the same data order, by teacher forcing with
flow matching: logit-normal sigma, x = (1 - sigma)·x0 + sigma·eps, MSE to eps - x0, AdamW, gradient
clipping at 1.0, constant learning rate. The loop draws sigma and eps from the generator the trainer's noise
stage uses (one per step, seeded from the run's seed and the step, so a resumed run needs no RNG state), so the
two compute bit-identical losses, which the benchmark checks. The loop also reads the loss as a float each
step (any real loop logs it); everything else the trainer does per step (per-stage timing, port checks,
metrics, the global RNG's per-step seed, hooks) is overhead. "in stages" is the time the trainer spends
inside its stages' run() (the runner's time/* metrics), so "runner − in stages" is the graph runner and hooks
themselves.

Timing: CPU time per step (the interval between step ends, warm-up steps dropped), averaged over the steps of
a round; rounds alternate trainer and loop (ABBA) and the ratio is the median of the rounds' ratios.
"""

from __future__ import annotations

import time
from statistics import mean

import torch
from rollgraph.graph.context import derive_seed
from rollgraph.graph.hooks import Hook
from rollgraph.stages.load import InMemoryDataset
from rollgraph.stages.models import ModelParams, get_family

from bench import common
from bench import mlp as _mlp  # noqa: F401  (registers the bench_mlp family)
from bench.common import Table
from bench.digits_eval import load_digits

TINY_UNET = {"block_out_channels": [16, 32], "layers_per_block": 1, "down_block_types": ["DownBlock2D", "DownBlock2D"],
             "up_block_types": ["UpBlock2D", "UpBlock2D"], "norm_num_groups": 8}
MODELS = {"bench_mlp": {"hidden": 128, "depth": 3}, "unet2d": TINY_UNET}
SETTINGS = {
    "tiny": {"cases": [("bench_mlp", 8)], "steps": 6, "warmup": 2, "rounds": 1},
    "quick": {"cases": [("bench_mlp", 16), ("bench_mlp", 128), ("unet2d", 16)], "steps": 40, "warmup": 4, "rounds": 2},
    "full": {"cases": [("bench_mlp", 16), ("bench_mlp", 64), ("bench_mlp", 256), ("unet2d", 16), ("unet2d", 64)],
             "steps": 200, "warmup": 5, "rounds": 5},
}
SEED = 0
STAGES = ("batch", "noise", "predict", "loss", "optimize")  # the teacher-forcing step graph's node ids
PARTS = {"loss": ("loss", "total"), "optimize": ("optimize", "update")}  # nodes timed as one section of the hand loop


def config(family: str, batch: int, steps: int) -> dict:
    return {"model_family": family, "model_architecture": MODELS[family], "resolution": 8, "train_batch_size": batch,
            "max_train_steps": steps, "learning_rate": 1e-3, "lr_scheduler": "constant", "lr_warmup_steps": 0,
            "prediction_type": "flow_matching", "timestep_sampling": "logit_normal", "seed": SEED}


def build_model(family: str, digits, architecture: dict | None = None):
    """The family's adapter for the digits (at their resolution) with this benchmark's architecture (or
    ``architecture``), built as the trainer builds it."""
    data = InMemoryDataset(digits.images, digits.labels, None, 10, SEED)
    arch = architecture if architecture is not None else MODELS[family]
    return get_family(family).build(ModelParams(model_family=family, model_architecture=arch), data)


class HandLoop:
    """The same training, written out by hand: ``step(i)`` runs optimizer step i and returns its loss and the
    wall seconds of its sections (data, noise draw, forward, loss, backward + clip + AdamW + reading the loss)."""

    def __init__(self, cfg: dict):
        digits = load_digits(8)
        torch.manual_seed(derive_seed(SEED, "init"))  # the trainer's initial weights
        self.module = build_model(cfg["model_family"], digits).raw_module.train()
        self.opt = torch.optim.AdamW([p for p in self.module.parameters() if p.requires_grad], lr=cfg["learning_rate"],
                                     betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
        self.images, self.labels, self.bs = digits.images, digits.labels, cfg["train_batch_size"]
        self.epoch, self.cursor = 0, 0
        self.order = self._epoch_order(0)

    def _epoch_order(self, epoch: int) -> torch.Tensor:  # the trainer's: a seeded permutation per epoch
        return torch.randperm(len(self.images), generator=torch.Generator().manual_seed(SEED * 1_000_003 + epoch))

    def step(self, step: int) -> tuple[float, dict[str, float]]:
        module, opt, n, bs = self.module, self.opt, len(self.images), self.bs
        t0 = time.perf_counter()
        picked, need = [], bs
        while need:
            take = min(need, n - self.cursor)
            picked.append(self.order[self.cursor:self.cursor + take])
            self.cursor, need = self.cursor + take, need - take
            if self.cursor == n:
                self.epoch, self.cursor = self.epoch + 1, 0
                self.order = self._epoch_order(self.epoch)
        idx = torch.cat(picked)
        x0, y = self.images[idx], self.labels[idx]
        t1 = time.perf_counter()
        g = torch.Generator().manual_seed(derive_seed(SEED, "noise", step, 0, "global-batch"))  # the trainer's draws
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
        value = float(loss.detach())
        t5 = time.perf_counter()
        return value, dict(zip(STAGES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4), strict=True))


class Interleaved(Hook):
    """Runs one hand-loop step at each trainer step end, so the two take turns step by step and every change of
    load on the shared machine hits both alike. Records CPU seconds: each trainer step (from the end of the
    loop step before it to its own end, so the trainer's other hooks count as the trainer's) and each loop step."""

    def __init__(self, loop: HandLoop):
        self.loop = loop
        self.runner_seconds: list[float] = []
        self.runner_walls: list[float] = []  # the same intervals in wall time
        self.loop_seconds: list[float] = []
        self.metrics: list[dict] = []
        self.loop_losses: list[float] = []
        self.loop_sections: list[dict[str, float]] = []
        self._resumed: tuple[float, float] | None = None

    def on_step_end(self, runner, metrics):
        end, wall = time.process_time(), time.perf_counter()
        if self._resumed is not None:
            self.runner_seconds.append(end - self._resumed[0])
            self.runner_walls.append(wall - self._resumed[1])
        self.metrics.append(metrics)
        start = time.process_time()
        loss, sections = self.loop.step(len(self.loop_losses))
        self._resumed = (time.process_time(), time.perf_counter())
        self.loop_seconds.append(self._resumed[0] - start)
        self.loop_losses.append(loss)
        self.loop_sections.append(sections)


def measure(family: str, batch: int, s: dict) -> dict:
    """Rounds of one trainer run with the hand loop interleaved step by step (``Interleaved``). A round's ratio
    is the trainer's mean CPU time per step over the loop's (a mean, so a cost paid every few hundred steps, like
    writing metrics.jsonl, counts in full); the result is the median over rounds. Both must compute
    bit-identical losses: the comparison is of the same work."""
    cfg = config(family, batch, s["steps"])
    runner_means, loop_means, ratios, identical = [], [], [], []
    runner_stages: dict[str, list[float]] = {k: [] for k in STAGES}
    loop_stages: dict[str, list[float]] = {k: [] for k in STAGES}
    runner_losses, loop_losses, runner_steps = [], [], []
    for _ in range(s["rounds"]):
        clock = Interleaved(HandLoop(cfg))
        common.train(cfg, hooks=[clock])
        # the last trainer step also runs the end-of-run nodes (final checkpoint and sample grid): not per-step work
        mine, theirs = mean(clock.runner_seconds[s["warmup"]:-1]), mean(clock.loop_seconds[s["warmup"] + 1:-1])
        runner_means.append(mine)
        loop_means.append(theirs)
        ratios.append(mine / theirs)
        for m, sec in zip(clock.metrics[s["warmup"] + 1:], clock.loop_sections[s["warmup"] + 1:], strict=True):
            for k in STAGES:
                runner_stages[k].append(sum(m.get(f"time/{node}", 0.0) for node in PARTS.get(k, (k,))))
                loop_stages[k].append(sec[k])
        losses = [m["loss"] for m in clock.metrics]
        identical.append(losses == clock.loop_losses)
        runner_losses += losses
        loop_losses += clock.loop_losses
        runner_steps += clock.runner_walls[s["warmup"]:-1]
    stages = {k: (common.median(runner_stages[k]) * 1e3, common.median(loop_stages[k]) * 1e3) for k in STAGES}
    return {"runner_ms": common.median(runner_means) * 1e3, "loop_ms": common.median(loop_means) * 1e3,
            "ratio": common.median(ratios), "ratios": sorted(ratios), "stages": stages,
            "stages_ms": sum(r for r, _ in stages.values()), "runner_step_ms": common.median(runner_steps) * 1e3,
            "identical": all(identical), "runner_loss": mean(runner_losses), "loop_loss": mean(loop_losses)}


def run(mode: str = "full", out_dir=None, log=print) -> list[Table]:
    s = SETTINGS[mode]
    table = Table("Runner overhead: graph runner vs a hand-written loop (same model, data, noise and math)",
                  ["model", "batch", "runner ms/step", "in stages ms", "hand loop ms/step", "ratio", "overhead %",
                   "mean loss runner / loop", "bit-identical losses"])
    where = Table("Where the step time goes: median ms per stage, runner / hand loop",
                  ["model", "batch size", *STAGES, "outside stages"])
    spreads = []
    for family, batch in s["cases"]:
        r = measure(family, batch, s)
        spreads.append(f"{family} {batch}: {r['ratios'][0]:.3f}–{r['ratios'][-1]:.3f}")
        log(f"  overhead {family} batch {batch}: {r}")
        table.add(family, batch, r["runner_ms"], r["stages_ms"], r["loop_ms"], r["ratio"], (r["ratio"] - 1) * 100,
                  f"{r['runner_loss']:.4f} / {r['loop_loss']:.4f}", r["identical"])
        where.add(family, batch, *[f"{a:.2f} / {b:.2f}" for a, b in r["stages"].values()],
                  f"{r['runner_step_ms'] - r['stages_ms']:.2f} / 0")
    table.notes += [
        f"Mean CPU time per step over {s['steps'] - s['warmup'] - 2} steps (warm-up and the last step, which also runs the "
        f"end-of-run nodes, left out), in {s['rounds']} round(s); digits 8×8, teacher forcing. bench_mlp: 3 residual blocks, "
        "hidden 128 (~0.3 M parameters); unet2d: diffusers UNet2DModel [16, 32] (~0.17 M parameters). Goal (issue 16): "
        "overhead ≤ 3 % of step time on the MLP at batch 16 and 64.",
        "Each round is one trainer run with the hand loop interleaved: one loop step at every trainer step end, so a change "
        "of load on the shared machine hits both alike. runner and hand-loop ms/step: the median over rounds of each "
        "round's mean CPU time per step (one thread, so CPU time is the work done; a mean, so costs paid every few hundred "
        "steps, like writing metrics.jsonl, count). 'in stages': the sum of the runner's median time/<node>, in wall "
        "time (so under load it can exceed the CPU times beside it). "
        "ratio = the median over rounds of runner / hand loop; overhead % = (ratio − 1)·100. Per-round ratios, "
        "lowest–highest: " + "; ".join(spreads) + ".",
        "The hand loop draws its noise from the trainer's per-step generator, so both compute the same losses bit for bit "
        "(checked every step of every round: the last column): the ratio compares the same work.",
    ]
    where.notes.append("Wall time. Runner: the runner's time/<node> (medians); hand loop: the same sections timed inline (data, "
                       "noise draw, forward, loss, backward + clip + AdamW + reading the loss). 'outside stages' = the runner's "
                       "median step − the sum of its stage medians: the graph runner, port checks, metrics, the global RNG's seed and hooks.")
    return [table, where]


def main(argv=None) -> None:
    parser = common.bench_parser(__doc__)
    args = parser.parse_args(argv)
    common.set_threads(args.threads)
    tables = run(args.mode)
    common.report("overhead", tables, args.mode)


if __name__ == "__main__":
    main()
