"""The quality benchmark's tables (bench/quality.py runs the trainings and fills them).

Every Δ is variant − teacher forcing, paired by seed (same initial weights, batches, levels and noise), written
``mean [lo, hi]``: the mean over seeds and its 95 % t-interval, mean ± t(0.975, n − 1)·sd/√n. An interval that
excludes 0 is a difference these seeds resolve; one that includes 0 is not.
"""

from __future__ import annotations

import math
import statistics

from scipy import stats

from bench.common import Table, fmt
from bench.digits_eval import nn_distance


def paired_interval(values: list[float]) -> tuple[float, float, float]:
    """(mean, lo, hi): the 95 % t-interval of the mean of paired differences (nan bounds for one seed)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, float("nan"), float("nan")
    half = stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def delta(runs: list[dict], base: list[dict], key: str) -> str:
    by_seed = {b["seed"]: b[key] for b in base}
    mean, lo, hi = paired_interval([r[key] - by_seed[r["seed"]] for r in runs])
    return f"{fmt(mean)} [{fmt(lo)}, {fmt(hi)}]"


def mean(runs: list[dict], key: str) -> float:
    return statistics.fmean(r[key] for r in runs)


def ratio(runs: list[dict], base: list[dict], key: str) -> float:
    return mean(runs, key) / mean(base, key)


COLUMNS = ["variant", "steps", "FD ↓", "Δ FD", "adherence", "Δ adherence", "diversity", "Δ diversity", "NN dist",
           "Δ NN dist", "probe var. err ↓", "Δ var. err", "probe SWD ↓", "Δ SWD", "forwards / step", "time / step ×TF"]


def comparison(title: str, runs_by_variant: dict[str, list[dict]], steps: dict[str, int], tf_of: dict[str, list[dict]]) -> Table:
    table = Table(title, COLUMNS)
    for variant, runs in runs_by_variant.items():
        tf = tf_of[variant]
        on = runs is not tf

        def d(key, runs=runs, tf=tf, on=on):
            return delta(runs, tf, key) if on else "–"

        table.add(variant, steps[variant], mean(runs, "fd"), d("fd"), mean(runs, "adherence"), d("adherence"),
                  mean(runs, "diversity"), d("diversity"), mean(runs, "nn"), d("nn"), mean(runs, "probe_variance_error"),
                  d("probe_variance_error"), mean(runs, "probe_swd"), d("probe_swd"), mean(runs, "forwards"),
                  ratio(runs, tf, "seconds_per_step"))
    return table


def tables(s, results, ft, tf_name, ft_class, digits, judge, shots, others, sample_steps) -> list[Table]:
    results = {k: sorted(v, key=lambda r: r["seed"]) for k, v in results.items()}
    ft = {k: sorted(v, key=lambda r: r["seed"]) for k, v in ft.items()}
    n = len(s["seeds"])
    out = []
    for factor in sorted({f for _, f in results}):
        group = {v: runs for (v, f), runs in results.items() if f == factor}
        tf = group[tf_name]
        table = comparison(f"Pretraining on digits, {s['steps'] * factor} steps: {n} paired seeds, Δ vs teacher forcing "
                           "with 95 % interval", group, dict.fromkeys(group, s["steps"] * factor), dict.fromkeys(group, tf))
        out.append(table)
    hx, _ = digits.held_out
    tf_runs = results[tf_name, 1]
    out[0].notes += [
        f"FD: Fréchet distance on a digits classifier's 64-d features, {s['per_class']} samples per class (unipc, "
        f"{sample_steps} steps, the same noise for every model) against all 1,797 real digits. Adherence: share of samples "
        f"the classifier assigns to the class they were generated for (classifier held-out accuracy "
        f"{judge.held_out_accuracy:.3f}). Diversity: within-class pairwise distance over that of real digits (1 = as diverse "
        f"as the data). NN dist: mean L2 (pixels in [-1, 1]) to the nearest of the 1,500 training images; real held-out "
        f"images score {nn_distance(hx, digits.train[0]):.3f} (lower = closer to copying).",
        f"Probe (stages/probe.py): {s['probe'] // 2} held-out images forward-noised to u = 0.6 and sampled with 12 unipc "
        f"steps, against {s['probe'] // 2} other held-out images forward-noised to each level; var. err = mean over levels "
        f"of |spread(generated) / spread(reference) − 1|, SWD = mean sliced Wasserstein-2 (finite-sample floors "
        f"{mean(tf_runs, 'probe_variance_floor'):.3f} and {mean(tf_runs, 'probe_swd_floor'):.3f}); lower is better.",
        "Rollout: K = scheduled_sampling_max_step_offset 3, p 1, unipc, grid 20. Input perturbation: x = a·x0 + s·(eps + "
        "0.1·xi) for every sample (ip_noise_gamma 0.1). forwards / step: model sample-forwards per step (batch 64 + "
        "rollout evaluations + ReflexFlow's clean pass). time / step ×TF: median step time over teacher forcing's, "
        "measured while other runs shared the machine (context only).",
    ]
    few = comparison(f"Few-shot fine-tune: each seed's teacher-forcing model, {s['ft_steps']} steps on 20 images of digit "
                     f"{ft_class}: {n} paired seeds", ft, dict.fromkeys(ft, s["ft_steps"]), dict.fromkeys(ft, ft[tf_name]))
    few.notes += [
        f"{s['ft_samples']} samples of digit {ft_class}; FD, diversity and the probe against its {len(others)} other real "
        f"images; NN dist: mean L2 to the nearest of the 20 fine-tune images (memorisation; the other real {ft_class}s "
        f"score {nn_distance(others, shots):.3f}). Batch 20 (all shots), learning rate 5e-4 constant.",
    ]
    out.append(few)
    u = tf_runs[0]["probe_levels"]["u"]
    for key, what in (("variance_error", "variance error spread(generated) / spread(reference) − 1"),
                      ("swd", "sliced Wasserstein-2 to the reference")):
        table = Table(f"Probe per level, {s['steps']} steps: {what} (mean over seeds)", ["variant", *[f"u {x:.2f}" for x in u]])
        for (variant, factor), runs in results.items():
            if factor == 1:
                table.add(variant, *[statistics.fmean(r["probe_levels"][key][j] for r in runs) for j in range(len(u))])
        if key == "swd":
            table.add("floor (two forward draws)",
                      *[statistics.fmean(r["probe_levels"]["swd_floor"][j] for r in tf_runs) for j in range(len(u))])
        out.append(table)
    floor = Table("Noise floor: per-seed FD (pretraining)", ["variant", *[f"seed {i}" for i in s["seeds"]], "std"])
    for (variant, factor), runs in results.items():
        fds = [r["fd"] for r in runs]
        floor.add(f"{variant}" + (f", {factor}× steps" if factor > 1 else ""), *fds,
                  statistics.stdev(fds) if len(fds) > 1 else float("nan"))
    out.append(floor)
    return out
