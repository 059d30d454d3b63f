"""Quality: does rollout (scheduled sampling) help? Paired seeds, intervals, and a fixed exposure-bias probe.

Data: scikit-learn's digits at 8×8, flow matching, class-conditional; the first 1,500 images train, the last 297
are held out. Model: the ``bench_mlp`` family (bench/mlp.py) through the real Trainer. Every variant of a seed
starts from the same initial weights and sees the same batches, levels and noise (each stage draws from its own
generator keyed by the seed), so differences are **paired by seed**; each table reports the mean difference from
teacher forcing over the seeds with a 95 % t-interval (n - 1 degrees of freedom).

(a) Pretraining from scratch, 600 steps (and the main variants again at 3× the steps): teacher forcing; input
perturbation (DDPM-IP, Ning et al. 2023, gamma 0.1: what ``ip_noise_gamma 0.1`` compiles to); rollout K 3 with the
seed's clean target; rollout K 3 with the corrected target at three floors sigma_min (0.1, 0.2, 0.5: the sweep is
reported whole, nothing is picked on these seeds); rollout K 3 + ReflexFlow. Every rollout: p 1, unipc, a 20-step grid.
(b) Few-shot fine-tune (Dreambooth-like): each seed's 600-step teacher-forcing model, 150 steps on the first 20
training images of digit 8, by each main variant.

Judged by bench/digits_eval.py (Fréchet distance on a digits classifier's features, class adherence, diversity,
nearest-neighbour distance to the training images or to the 20 shots: memorisation) and by the exposure-bias probe
(stages/probe.py, variance error and SWD on the held-out images); cost as model sample-forwards per step and wall
time per step against teacher forcing (both runs share the machine: context only).
"""

from __future__ import annotations

import functools
import os
import tempfile
import time
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
TF = "teacher forcing"
ROLLOUT = {"scheduled_sampling_max_step_offset": 3, "scheduled_sampling_probability": 1.0,
           "scheduled_sampling_sampler": "unipc", "scheduled_sampling_grid_steps": 20,
           "scheduled_sampling_reflexflow": False}
# input perturbation as a graph patch: the rollout.input_perturbation stage between noise and predict, p = 1
INPUT_PERTURBATION = {"graph": {"nodes": [
    {"id": "perturb", "type": "rollout.input_perturbation", "inputs": {"noisy": "noise.noisy", "schedule": "schedule.schedule"},
     "params": {"input_perturbation_gamma": 0.1, "scheduled_sampling_probability": 1.0}},
    {"id": "predict", "inputs": {"noisy": "perturb.noisy"}}]}}
VARIANTS = {
    TF: {},
    "input perturbation γ 0.1": INPUT_PERTURBATION,
    "rollout K 3, clean target": ROLLOUT,
    "rollout K 3, corrected σmin 0.1": {**ROLLOUT, "scheduled_sampling_target": "corrected", "scheduled_sampling_target_min_sigma": 0.1},
    "rollout K 3, corrected σmin 0.2": {**ROLLOUT, "scheduled_sampling_target": "corrected", "scheduled_sampling_target_min_sigma": 0.2},
    "rollout K 3, corrected σmin 0.5": {**ROLLOUT, "scheduled_sampling_target": "corrected", "scheduled_sampling_target_min_sigma": 0.5},
    "rollout K 3 + ReflexFlow": {**ROLLOUT, "scheduled_sampling_reflexflow": True},
}
MAIN = [TF, "input perturbation γ 0.1", "rollout K 3, clean target", "rollout K 3, corrected σmin 0.2", "rollout K 3 + ReflexFlow"]
SETTINGS = {
    "tiny": {"seeds": [0, 1], "steps": 4, "long": [], "ft_steps": 2, "per_class": 3, "ft_samples": 8, "probe": 16,
             "hidden": 32, "judge_iters": 40, "variants": MAIN},
    "quick": {"seeds": [0, 1, 2], "steps": 150, "long": [], "ft_steps": 40, "per_class": 50, "ft_samples": 100, "probe": 128,
              "hidden": 128, "judge_iters": 400, "variants": MAIN},
    "full": {"seeds": [0, 1, 2, 3, 4], "steps": 600, "long": [3], "ft_steps": 150, "per_class": 100, "ft_samples": 200,
             "probe": 296, "hidden": 128, "judge_iters": 400, "variants": list(VARIANTS)},
}
FT_CLASS = 8
GEN_SEED, PROBE_SEED, SAMPLE_STEPS = 4242, 7, 20


def base_config(seed: int, steps: int, hidden: int) -> dict:
    return {"model_family": "bench_mlp", "model_architecture": {"hidden": hidden, "depth": 3}, "resolution": 8,
            "max_train_samples": NUM_TRAIN, "train_batch_size": 64, "max_train_steps": steps, "learning_rate": 2e-3,
            "lr_scheduler": "cosine", "lr_warmup_steps": max(1, steps // 20), "seed": seed,
            "prediction_type": "flow_matching", "timestep_sampling": "logit_normal"}


def probe(model, schedule, x0, labels, n: int) -> dict:
    """The probe on n held-out images: the first half generated from, the second half the reference."""
    fn = model_fn_for(model, schedule, {"class_labels": labels[:n // 2]}, nullcontext)
    with eval_mode(model.raw_module):
        r = exposure_bias_probe(fn, schedule, x0[:n // 2], x0[n // 2:2 * (n // 2)], start_u=0.6, num_steps=12,
                                sampler="unipc", seed=PROBE_SEED)
    return {**{f"probe_{k}": v for k, v in r.summary().items()},
            "probe_levels": {"u": r.u, "variance_error": r.variance_error, "swd": r.swd, "swd_floor": r.swd_floor}}


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


class Cost(common.StepClock):
    """Step times plus model sample-forwards per step: the batch's prediction, rollout evaluations, FC's clean pass."""

    def forwards_per_step(self, batch: int) -> float:
        per = [batch + m.get("rollout/model_evals", 0) + m.get("reflexflow/clean_evals", 0) for m in self.metrics]
        return sum(per) / len(per)


def measure(trainer, clock: Cost, batch: int) -> dict:
    times = clock.step_seconds(skip=min(2, max(len(clock.times) - 2, 0)))  # warm-up steps out, when there are enough
    return {"seconds_per_step": common.median(times), "forwards": clock.forwards_per_step(batch)}


def judge_pretrained(trainer, s: dict) -> dict:
    digits, judge, _, _ = context(s["judge_iters"])
    model, schedule = trainer.runner.value("model", "model"), trainer.runner.value("schedule", "schedule")
    labels = torch.arange(10).repeat_interleave(s["per_class"])
    x = sample(model, schedule, labels)
    hx, hy = digits.held_out
    return {"fd": judge.frechet(x, digits.images), "adherence": judge.adherence(x, labels),
            "nn": nn_distance(x, digits.train[0]), "diversity": diversity(x, labels, digits.images, digits.labels),
            **probe(model, schedule, hx, hy, s["probe"])}


def judge_fine_tuned(trainer, s: dict) -> dict:
    _, judge, shots, others = context(s["judge_iters"])
    model, schedule = trainer.runner.value("model", "model"), trainer.runner.value("schedule", "schedule")
    labels = torch.full((s["ft_samples"],), FT_CLASS)
    x = sample(model, schedule, labels)
    other_labels = torch.full((len(others),), FT_CLASS)
    return {"fd": judge.frechet(x, others), "adherence": judge.adherence(x, labels), "nn": nn_distance(x, shots),
            "diversity": diversity(x, labels, others, other_labels),
            **probe(model, schedule, others, other_labels, min(s["probe"], len(others)))}


def train_and_judge(config: dict, judge, s: dict) -> tuple[dict, object]:
    clock = Cost()
    trainer = common.train(config, hooks=(clock,))
    return {**judge(trainer, s), **measure(trainer, clock, config["train_batch_size"])}, trainer


def task(mode: str, seed: int, variant: str, factor: int, threads: int) -> dict:
    """Train one pretraining variant and judge it; the 1× teacher-forcing task also runs the seed's fine-tunes."""
    common.set_threads(threads)
    s = SETTINGS[mode]
    base = base_config(seed, s["steps"], s["hidden"])
    start = time.perf_counter()
    pre, trainer = train_and_judge({**base_config(seed, s["steps"] * factor, s["hidden"]), **VARIANTS[variant]},
                                   judge_pretrained, s)
    out = {"seed": seed, "variant": variant, "factor": factor, "pre": {**pre, "seed": seed,
                                                                       "seconds": time.perf_counter() - start}, "ft": {}}
    if variant == TF and factor == 1:
        with tempfile.TemporaryDirectory(prefix="rollgraph-bench-pretrained-") as folder:
            trainer.runner.value("model", "model").save_state(Path(folder))
            for ft_variant in MAIN:
                cfg = {**base, **VARIANTS[ft_variant], "pretrained_model_name_or_path": folder, "model_architecture": None,
                       "class_filter": [FT_CLASS], "max_train_samples": 20, "train_batch_size": 20,
                       "max_train_steps": s["ft_steps"], "learning_rate": 5e-4, "lr_scheduler": "constant", "lr_warmup_steps": 0}
                out["ft"][ft_variant] = {**train_and_judge(cfg, judge_fine_tuned, s)[0], "seed": seed}
    return out


def run(mode: str = "full", out_dir: Path | None = None, log=print, jobs: int = 1) -> list[Table]:
    s = SETTINGS[mode]
    threads = torch.get_num_threads()
    runs = [(v, 1) for v in s["variants"]] + [(v, f) for f in s["long"] for v in MAIN]
    # the longest runs first, so the pool's workers finish together
    tasks = [(mode, seed, v, f, threads) for v, f in sorted(runs, key=lambda r: -r[1]) for seed in s["seeds"]]
    results: dict[tuple[str, int], list[dict]] = {r: [] for r in runs}
    ft: dict[str, list[dict]] = {v: [] for v in MAIN}

    def collect(out: dict) -> None:
        log(f"  quality seed {out['seed']} {out['variant']} ×{out['factor']}: FD {out['pre']['fd']:.2f}, "
            f"{out['pre']['seconds']:.0f} s")
        results[out["variant"], out["factor"]].append(out["pre"])
        for v, r in out["ft"].items():
            ft[v].append(r)

    common.run_tasks(task, tasks, jobs, collect)
    digits, judge, shots, others = context(s["judge_iters"])
    return report.tables(s, results, ft, TF, FT_CLASS, digits, judge, shots, others, SAMPLE_STEPS)


def main(argv=None) -> None:
    parser = common.bench_parser(__doc__)
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="training processes in parallel")
    args = parser.parse_args(argv)
    common.set_threads(args.threads)
    tables_ = run(args.mode, jobs=args.jobs)
    common.report(NAME, tables_, args.mode)


if __name__ == "__main__":
    main()
