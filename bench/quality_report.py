"""The quality benchmark's tables (bench/quality.py runs the trainings and fills them)."""

from __future__ import annotations

import statistics

from bench.common import Table, pm
from bench.digits_eval import nn_distance


def _delta(runs: list[dict], base: list[dict], key: str) -> str:
    """Variant minus teacher forcing, paired by seed: mean ± std of the per-seed differences."""
    by_seed = {b["seed"]: b[key] for b in base}
    return pm([r[key] - by_seed[r["seed"]] for r in runs])


def _col(runs: list[dict], key: str) -> str:
    return pm([r[key] for r in runs])


def tables(s, variants, long_key, results, ft, digits, judge, shots, others, ft_class, sample_steps) -> list[Table]:
    results = {v: sorted(runs, key=lambda r: r["seed"]) for v, runs in results.items()}
    ft = {v: sorted(runs, key=lambda r: r["seed"]) for v, runs in ft.items()}
    seeds = len(s["seeds"])
    pre = Table(f"Pretraining on digits: {s['steps']} steps (unless marked), batch 64, {seeds} seed(s), mean ± std over seeds",
                ["variant", "steps", "K", "grid", "p", "ReflexFlow", "FD ↓", "Δ FD vs TF", "adherence", "NN dist to train",
                 "diversity", "probe moment err ↓", "Δ moment vs TF", "probe SWD ↓", "Δ SWD vs TF", "train s"])
    teacher = {variants[v].get(long_key, 1): runs for v, runs in results.items() if "scheduled_sampling_max_step_offset" not in variants[v]}
    for variant, runs in results.items():
        cfg = variants[variant]
        factor = cfg.get(long_key, 1)
        on = "scheduled_sampling_max_step_offset" in cfg
        tf = teacher.get(factor, runs)  # rollout variants against teacher forcing of the same length
        pre.add(variant, s["steps"] * factor, cfg.get("scheduled_sampling_max_step_offset", 0),
                cfg.get("scheduled_sampling_grid_steps") if on else "–",
                cfg.get("scheduled_sampling_probability", 0.0), bool(cfg.get("scheduled_sampling_reflexflow")),
                _col(runs, "fd"), _delta(runs, tf, "fd") if on else "–", _col(runs, "adherence"), _col(runs, "nn_train"),
                _col(runs, "diversity"), _col(runs, "probe_moment_error"), _delta(runs, tf, "probe_moment_error") if on else "–",
                _col(runs, "probe_swd"), _delta(runs, tf, "probe_swd") if on else "–", _col(runs, "seconds"))
    hx, _ = digits.held_out
    swd_floor = statistics.fmean(r["probe_swd_floor"] for r in results["teacher forcing"])
    pre.notes += [
        f"FD: Fréchet distance on a digits classifier's 64-d features, {s['per_class']} samples per class (unipc, "
        f"{sample_steps} steps, the same noise for every model) against all 1,797 real digits. Adherence: share of samples "
        f"the classifier assigns to the class they were generated for. The classifier's held-out accuracy: "
        f"{judge.held_out_accuracy:.3f}.",
        f"NN dist to train: mean L2 (pixels in [-1, 1], 64-d) to the nearest of the 1,500 training images; real held-out "
        f"images score {nn_distance(hx, digits.train[0]):.3f} (lower = closer to copying). Diversity: within-class pairwise "
        "distance over that of real digits (1 = as diverse as the data).",
        f"Probe (stages/probe.py): {min(s['probe'], len(hx))} held-out images forward-noised to u = 0.6, 12 unipc steps to "
        "clean data; moment error = mean over levels of |spread / σ − 1|, SWD = mean sliced Wasserstein-2 distance to "
        f"forward-noised data (finite-sample floor {swd_floor:.3f}); lower is better. Δ columns: variant − teacher "
        "forcing of the same length, paired by seed.",
        "K = scheduled_sampling_max_step_offset, grid = scheduled_sampling_grid_steps, p = scheduled_sampling_probability; "
        "every rollout uses the unipc sampler. 'train s' = wall seconds of the whole run on a shared machine (context only).",
    ]
    levels = [_levels(variant, runs) for variant, runs in results.items()]
    u = levels[0][1]
    moment = Table("Probe per level: moment error spread / σ − 1 (mean over seeds; 0 = the forward process)",
                   ["variant", *[f"u {x:.2f}" for x in u[:-1]]])
    swd = Table("Probe per level: sliced Wasserstein-2 to forward-noised data (mean over seeds)",
                ["variant", *[f"u {x:.2f}" for x in u]])
    for variant, _, m, d in levels:
        moment.add(variant, *m[:-1])
        swd.add(variant, *d)
    moment.notes.append("Levels visited by the sampler from u = 0.6 (u = σ for this flow-matching model). Near clean data the "
                        "spread also counts how far a trajectory ends from the x0 it started at, which even an exact model "
                        "does not return to: compare rows, not against 0.")
    few = Table(f"Few-shot fine-tune: each seed's teacher-forcing model, {s['ft_steps']} steps on 20 images of digit {ft_class}",
                ["variant", "FD (class) ↓", "Δ FD vs TF", "adherence", "Δ adherence vs TF", "NN dist to the 20",
                 "diversity", "probe moment err ↓", "probe SWD ↓"])
    tf_ft = ft["teacher forcing"]
    for variant, runs in ft.items():
        on = variant != "teacher forcing"
        few.add(variant, _col(runs, "fd"), _delta(runs, tf_ft, "fd") if on else "–", _col(runs, "adherence"),
                _delta(runs, tf_ft, "adherence") if on else "–", _col(runs, "nn_shots"), _col(runs, "diversity"),
                _col(runs, "probe_moment_error"), _col(runs, "probe_swd"))
    few.notes += [
        f"{s['ft_samples']} samples of digit {ft_class}; FD, diversity and the probe against its {len(others)} other real "
        f"images; adherence = share the classifier assigns to {ft_class}. NN dist to the 20: mean L2 to the nearest "
        f"fine-tune image (memorisation); the other real {ft_class}s score {nn_distance(others, shots):.3f}.",
        "Fine-tune: batch 20 (all shots), learning rate 5e-4 constant, rollout settings as in pretraining.",
    ]
    floor = Table("Noise floor: per-seed FD (pretraining)", ["variant", *[f"seed {i}" for i in s["seeds"]], "std"])
    for variant, runs in results.items():
        fds = [r["fd"] for r in runs]
        floor.add(variant, *fds, statistics.stdev(fds) if len(fds) > 1 else float("nan"))
    return [pre, moment, swd, few, floor]


def _levels(variant: str, runs: list[dict]):
    u = runs[0]["probe_levels"]["u"]
    m = [statistics.fmean(r["probe_levels"]["moment_error"][j] for r in runs) for j in range(len(u))]
    d = [statistics.fmean(r["probe_levels"]["swd"][j] for r in runs) for j in range(len(u))]
    return variant, u, m, d
