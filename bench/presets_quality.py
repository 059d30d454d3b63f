"""Shipped digits presets against each other, on their own model (the quickstart UNet), paired by seed.

``quickstart``, ``rollout_quickstart`` and ``reflexflow_quickstart`` are trained as shipped (their steps, batch, learning
rate, EMA; only the seed and the output folder change; validation grids and checkpoints are off), each for the same
seeds, so every preset of a seed starts from the same weights and sees the same batches and noise. Each model (its EMA
weights, as the validation grid uses) is judged at the presets' resolution by bench/digits_eval.py's measures with a
judge trained at that resolution: FD against all real digits, class adherence, diversity, and the exposure-bias probe
(stages/probe.py) on the last 296 digits. Δ: preset − quickstart, mean over seeds with a 95 % t-interval.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from rollgraph.stages.config import PRESETS_DIR, read_config_file
from rollgraph.stages.predict import model_fn_for
from rollgraph.stages.probe import exposure_bias_probe
from rollgraph.stages.rollout import eval_mode

from bench import common
from bench.common import Table
from bench.digits_eval import DigitsJudge, diversity, load_digits
from bench.quality import Cost, measure, sample
from bench.quality_report import delta, mean, ratio

NAME = "presets_quality"
PRESETS = ("quickstart", "rollout_quickstart", "reflexflow_quickstart")
SETTINGS = {"tiny": {"seeds": [0, 1], "steps": 2, "batch": 8, "per_class": 2, "probe": 16, "judge_iters": 20},
            "quick": {"seeds": [0, 1, 2], "steps": 150, "batch": None, "per_class": 30, "probe": 128, "judge_iters": 400},
            "full": {"seeds": [0, 1, 2], "steps": None, "batch": None, "per_class": 100, "probe": 296, "judge_iters": 400}}
PROBE_SEED = 7


def preset_config(name: str, seed: int, steps: int | None, batch: int | None = None) -> dict:
    cfg = {k: v for k, v in read_config_file(PRESETS_DIR / f"{name}.json").items() if not k.startswith("_")}
    cfg.update(seed=seed, validation_steps=0, checkpointing_steps=0, checkpoints_total_limit=None)
    cfg.pop("output_dir", None)
    if steps is not None:
        cfg.update(max_train_steps=steps, lr_warmup_steps=min(cfg.get("lr_warmup_steps", 0), steps // 2))
    if batch is not None:
        cfg.update(train_batch_size=batch)
    return cfg


def judge(trainer, s: dict, resolution: int) -> dict:
    digits = load_digits(resolution)
    judge_ = DigitsJudge(digits, iters=s["judge_iters"])
    model, schedule = trainer.runner.value("model", "model"), trainer.runner.value("schedule", "schedule")
    bundle = trainer.runner.value("optimizer", "optimizer")
    bundle.swap_ema()
    try:
        labels = torch.arange(10).repeat_interleave(s["per_class"])
        x = sample(model, schedule, labels)
        n = s["probe"] // 2
        x0, y = digits.images[-2 * n:], digits.labels[-2 * n:]
        with eval_mode(model.raw_module):
            probe = exposure_bias_probe(model_fn_for(model, schedule, {"class_labels": y[:n]}, nullcontext), schedule,
                                        x0[:n], x0[n:], start_u=0.6, num_steps=12, sampler="unipc", seed=PROBE_SEED)
    finally:
        bundle.swap_ema()
    return {"fd": judge_.frechet(x, digits.images), "adherence": judge_.adherence(x, labels),
            "diversity": diversity(x, labels, digits.images, digits.labels),
            **{f"probe_{k}": v for k, v in probe.summary().items()}}


def task(mode: str, seed: int, preset: str, threads: int) -> dict:
    common.set_threads(threads)
    s = SETTINGS[mode]
    cfg = preset_config(preset, seed, s["steps"], s["batch"])
    clock = Cost()
    start = time.perf_counter()
    trainer = common.train(cfg, hooks=(clock,))
    return {"preset": preset, "seed": seed, "steps": cfg["max_train_steps"], "seconds": time.perf_counter() - start,
            **judge(trainer, s, cfg["resolution"]), **measure(trainer, clock, cfg["train_batch_size"])}


def run(mode: str = "full", out_dir: Path | None = None, log=print, jobs: int = 1, partial: Path | None = None) -> list[Table]:
    s = SETTINGS[mode]
    threads = torch.get_num_threads()
    tasks = [(mode, seed, p, threads) for seed in s["seeds"] for p in reversed(PRESETS)]
    results: dict[str, list[dict]] = {p: [] for p in PRESETS}

    def collect(out: dict) -> None:
        log(f"  presets seed {out['seed']} {out['preset']}: FD {out['fd']:.2f}, {out['seconds']:.0f} s")
        results[out["preset"]].append(out)
        if partial is not None:  # a long run's finished trainings survive an interruption
            with partial.open("a") as f:
                f.write(json.dumps(out) + "\n")

    common.run_tasks(task, tasks, jobs, collect)
    return tables(s, results)


def tables(s: dict, results: dict[str, list[dict]]) -> list[Table]:
    results = {p: sorted(r, key=lambda x: x["seed"]) for p, r in results.items()}
    base = results["quickstart"]
    table = Table(f"Shipped presets on the quickstart UNet: {len(s['seeds'])} paired seeds, Δ vs quickstart with 95 % interval",
                  ["preset", "steps", "FD ↓", "Δ FD", "adherence", "Δ adherence", "diversity", "Δ diversity",
                   "probe var. err ↓", "Δ var. err", "probe SWD ↓", "Δ SWD", "forwards / step", "time / step ×quickstart"])
    for preset, runs in results.items():
        on = preset != "quickstart"

        def d(key, runs=runs, on=on):
            return delta(runs, base, key) if on else "–"

        table.add(preset, runs[0]["steps"], mean(runs, "fd"), d("fd"), mean(runs, "adherence"), d("adherence"),
                  mean(runs, "diversity"), d("diversity"), mean(runs, "probe_variance_error"), d("probe_variance_error"),
                  mean(runs, "probe_swd"), d("probe_swd"), mean(runs, "forwards"), ratio(runs, base, "seconds_per_step"))
    table.notes += [
        f"Each preset as shipped (validation and checkpoints off), EMA weights judged; {s['per_class']} samples per class "
        "(unipc, 20 steps, the same noise for every model); FD / adherence / diversity with a digits classifier trained at "
        "the presets' resolution (bench/digits_eval.py). Probe: the last 296 digits, half generated from, half the "
        "reference, 12 unipc steps from u = 0.6.",
        "time / step: median over the run, measured while other runs shared the machine (context only).",
    ]
    per_seed = Table("Shipped presets: per-seed FD", ["preset", *[f"seed {i}" for i in s["seeds"]]])
    for preset, runs in results.items():
        per_seed.add(preset, *[r["fd"] for r in runs])
    return [table, per_seed]


def main(argv=None) -> None:
    parser = common.bench_parser(__doc__)
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="training processes in parallel")
    args = parser.parse_args(argv)
    common.set_threads(args.threads)
    common.report(NAME, run(args.mode, jobs=args.jobs), args.mode)


if __name__ == "__main__":
    main()
