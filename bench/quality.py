"""Quality: does rollout (scheduled sampling) or rollout + ReflexFlow give better samples than teacher forcing?

Data: scikit-learn's digits at 8×8, flow matching, class-conditional; the first 1,500 images train, the
last 297 are held out. Model: the ``bench_mlp`` family (bench/mlp.py) through the real Trainer; every
variant gets the same optimizer steps, data order and seeds, so differences are paired by seed.

Pretraining variants: teacher forcing; the seed document's basic rollout (max_step_offset 10, p 1.0,
unipc) on the repo's default grid (20 steps) without and with ReflexFlow; and one-factor changes of that
rollout: grid 1000 / 50, max_step_offset 3, p 0.5; and, to see whether an effect survives longer
training, teacher forcing and three rollouts at 3× the steps. Each trained model is judged by
bench/digits_eval.py (Fréchet distance on a digits classifier's features against all real digits, class
adherence, nearest-neighbour distance to the training set, diversity) and by the exposure-bias probe
(stages/probe.py) on the held-out images.

Few-shot fine-tune (Dreambooth-like): the teacher-forcing model of each seed is fine-tuned on the first 20
training images of one class, by teacher forcing, rollout and rollout + ReflexFlow, each with
max_step_offset 10 and 3; judged on samples of that class against the class's other real images.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from pathlib import Path

import torch
from rollgraph.stages.predict import model_fn_for
from rollgraph.stages.probe import exposure_bias_probe
from rollgraph.stages.rollout import eval_mode
from rollgraph.stages.sampling import generate

from bench import common
from bench import quality_report as report
from bench.common import Table
from bench.digits_eval import NUM_TRAIN, DigitsJudge, diversity, load_digits, nn_distance

NAME = "quality"
LONG = "_steps_factor"  # a variant trained for this many times the steps (compared with teacher forcing as long)
ROLLOUT = {"scheduled_sampling_max_step_offset": 10, "scheduled_sampling_probability": 1.0,
           "scheduled_sampling_sampler": "unipc", "scheduled_sampling_grid_steps": 20,
           "scheduled_sampling_reflexflow": False}
VARIANTS = {
    "teacher forcing": {},
    "rollout": ROLLOUT,
    "rollout + ReflexFlow": {**ROLLOUT, "scheduled_sampling_reflexflow": True},
    "rollout, grid 1000": {**ROLLOUT, "scheduled_sampling_grid_steps": 1000},
    "rollout, grid 50": {**ROLLOUT, "scheduled_sampling_grid_steps": 50},
    "rollout, K 3": {**ROLLOUT, "scheduled_sampling_max_step_offset": 3},
    "rollout, p 0.5": {**ROLLOUT, "scheduled_sampling_probability": 0.5},
    "teacher forcing, 3× steps": {LONG: 3},
    "rollout, 3× steps": {**ROLLOUT, LONG: 3},
    "rollout, K 3, 3× steps": {**ROLLOUT, "scheduled_sampling_max_step_offset": 3, LONG: 3},
    "rollout + ReflexFlow, K 3, 3× steps": {**ROLLOUT, "scheduled_sampling_max_step_offset": 3,
                                            "scheduled_sampling_reflexflow": True, LONG: 3},
    "rollout + ReflexFlow, K 3": {**ROLLOUT, "scheduled_sampling_max_step_offset": 3, "scheduled_sampling_reflexflow": True},
}
FINE_TUNE = ("teacher forcing", "rollout", "rollout + ReflexFlow", "rollout, K 3", "rollout + ReflexFlow, K 3")
SETTINGS = {
    "tiny": {"seeds": [0], "steps": 4, "ft_steps": 2, "per_class": 3, "ft_samples": 8, "probe": 12, "hidden": 32,
             "judge_iters": 40, "variants": ["teacher forcing", "rollout", "rollout + ReflexFlow"]},
    "quick": {"seeds": [0, 1], "steps": 150, "ft_steps": 40, "per_class": 50, "ft_samples": 100, "probe": 128, "hidden": 128,
              "judge_iters": 400, "variants": ["teacher forcing", "rollout", "rollout + ReflexFlow"]},
    "full": {"seeds": [0, 1, 2], "steps": 600, "ft_steps": 150, "per_class": 100, "ft_samples": 200, "probe": 297,
             "hidden": 128, "judge_iters": 400, "variants": [v for v in VARIANTS if v != "rollout + ReflexFlow, K 3"]},
}
FT_CLASS = 8
GEN_SEED, PROBE_SEED, SAMPLE_STEPS = 4242, 7, 20


def base_config(seed: int, steps: int, hidden: int) -> dict:
    return {"model_family": "bench_mlp", "model_architecture": {"hidden": hidden, "depth": 3}, "resolution": 8,
            "max_train_samples": NUM_TRAIN, "train_batch_size": 64, "max_train_steps": steps, "learning_rate": 2e-3,
            "lr_scheduler": "cosine", "lr_warmup_steps": max(1, steps // 20), "seed": seed,
            "prediction_type": "flow_matching", "timestep_sampling": "logit_normal"}


def probe(model, schedule, x0, labels, n: int) -> dict:
    fn = model_fn_for(model, schedule, {"class_labels": labels[:n]}, nullcontext)
    with eval_mode(model.raw_module):
        r = exposure_bias_probe(fn, schedule, x0[:n], start_u=0.6, num_steps=12, sampler="unipc", seed=PROBE_SEED)
    return {**{f"probe_{k}": v for k, v in r.summary().items()},
            "probe_levels": {"u": r.u, "moment_error": r.moment_error, "swd": r.swd}}


def sample(model, schedule, labels) -> torch.Tensor:
    return generate(model, schedule, len(labels), SAMPLE_STEPS, "unipc", GEN_SEED, torch.device("cpu"),
                    model.sample_shape(), cond={"class_labels": labels})


@functools.lru_cache(maxsize=1)
def context(judge_iters: int):
    """(digits, judge, shots, others): the data splits and the judge, built once per process (deterministic)."""
    digits = load_digits()
    judge = DigitsJudge(digits, iters=judge_iters)
    train_x, train_y = digits.train
    class_idx = (train_y == FT_CLASS).nonzero().squeeze(1)
    keep = torch.ones(len(digits.images), dtype=torch.bool)
    keep[class_idx[:20]] = False
    return digits, judge, train_x[class_idx[:20]], digits.images[keep & (digits.labels == FT_CLASS)]


def judge_pretrained(trainer, s: dict) -> dict:
    digits, judge, _, _ = context(s["judge_iters"])
    model, schedule = trainer.runner.value("model", "model"), trainer.runner.value("schedule", "schedule")
    labels = torch.arange(10).repeat_interleave(s["per_class"])
    x = sample(model, schedule, labels)
    hx, hy = digits.held_out
    return {"fd": judge.frechet(x, digits.images), "adherence": judge.adherence(x, labels),
            "nn_train": nn_distance(x, digits.train[0]), "diversity": diversity(x, labels, digits.images, digits.labels),
            **probe(model, schedule, hx, hy, s["probe"])}


def judge_fine_tuned(trainer, s: dict) -> dict:
    _, judge, shots, others = context(s["judge_iters"])
    model, schedule = trainer.runner.value("model", "model"), trainer.runner.value("schedule", "schedule")
    labels = torch.full((s["ft_samples"],), FT_CLASS)
    x = sample(model, schedule, labels)
    other_labels = torch.full((len(others),), FT_CLASS)
    return {"fd": judge.frechet(x, others), "adherence": judge.adherence(x, labels), "nn_shots": nn_distance(x, shots),
            "diversity": diversity(x, labels, others, other_labels), **probe(model, schedule, others, other_labels, s["probe"])}


def task(mode: str, seed: int, variant: str, threads: int) -> dict:
    """Train one pretraining variant and judge it; the teacher-forcing task also runs the seed's fine-tunes."""
    common.set_threads(threads)
    s = SETTINGS[mode]
    base = base_config(seed, s["steps"], s["hidden"])
    overrides = dict(VARIANTS[variant])
    factor = overrides.pop(LONG, 1)
    start = time.perf_counter()
    trainer = common.train({**base_config(seed, s["steps"] * factor, s["hidden"]), **overrides})
    pre = {**judge_pretrained(trainer, s), "seconds": time.perf_counter() - start, "seed": seed}
    out = {"seed": seed, "variant": variant, "pre": pre, "ft": {}}
    if variant == "teacher forcing":
        with tempfile.TemporaryDirectory(prefix="rollgraph-bench-pretrained-") as folder:
            trainer.runner.value("model", "model").save_state(Path(folder))
            for ft_variant in FINE_TUNE:
                cfg = {**base, **VARIANTS[ft_variant], "pretrained_model_name_or_path": folder, "model_architecture": None,
                       "class_filter": [FT_CLASS], "max_train_samples": 20, "train_batch_size": 20,
                       "max_train_steps": s["ft_steps"], "learning_rate": 5e-4, "lr_scheduler": "constant", "lr_warmup_steps": 0}
                out["ft"][ft_variant] = judge_fine_tuned(common.train(cfg), s)
    return out


def run(mode: str = "full", out_dir: Path | None = None, log=print, jobs: int = 1) -> list[Table]:
    s = SETTINGS[mode]
    threads = torch.get_num_threads()
    # the longest runs first, so the pool's workers finish together
    order = sorted(s["variants"], key=lambda v: -VARIANTS[v].get(LONG, 1))
    tasks = [(mode, seed, v, threads) for v in order for seed in s["seeds"]]
    results: dict[str, list[dict]] = {v: [] for v in s["variants"]}
    ft: dict[str, list[dict]] = {v: [] for v in FINE_TUNE}

    def collect(out: dict) -> None:
        log(f"  quality seed {out['seed']} {out['variant']}: FD {out['pre']['fd']:.2f}, {out['pre']['seconds']:.0f} s")
        results[out["variant"]].append(out["pre"])
        for v, r in out["ft"].items():
            ft[v].append({**r, "seed": out["seed"]})

    if jobs > 1:
        with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            for out in pool.map(task, *zip(*tasks, strict=True)):
                collect(out)
    else:
        for t in tasks:
            collect(task(*t))
    digits, judge, shots, others = context(s["judge_iters"])
    return report.tables(s, VARIANTS, LONG, results, ft, digits, judge, shots, others, FT_CLASS, SAMPLE_STEPS)


def main(argv=None) -> None:
    parser = common.bench_parser(__doc__)
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="training processes in parallel")
    args = parser.parse_args(argv)
    common.set_threads(args.threads)
    tables_ = run(args.mode, jobs=args.jobs)
    common.report(NAME, tables_, args.mode)


if __name__ == "__main__":
    main()
